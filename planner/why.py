"""`planner why`: the root causes of every rebuild, the propagation folded, the cost.

The core is pure: it compares node states (key, preimage, what happened) of two runs, or of
a fresh plan and the last run. Each node's changed preimage fields are classified into root
causes (a source, a patch, an environment variable, a variant axis, …); a changed dependency
is not a cause but propagation, so each rebuilt node inherits the causes of the dependencies
that changed under it. I/O (run records, preimages, recipe lines) lives in `explain_*` at the
bottom.

`why --json` schema (version `SCHEMA_VERSION`; fields are only ever added within a version):

    schema            int, this version
    set               str
    run, against      int | null: the run explained and the run it is compared with
    dry_run           bool: true when explaining what the next realise would do
    built             [node id]: rebuilt (or, dry run, would be rebuilt), failed ones excluded
    failures          [{node, reason}]: nodes whose build failed in that run
    reused            int: nodes reused
    total_cost        float seconds spent rebuilding
    causes            [{cause, nodes, dependents, cost}], most far-reaching first
        cause         {kind, recipe, field, old, new, description, lock_entry, file, line,
                       recipe_file, recipe_line}
            kind      source | input | patch | env | setting | script | builder | variant |
                      host-package | epoch | version | deps | image | sandbox | new |
                      attestation | format
            file      str | null: the file to look at, relative to the project (the recipe, the
                      set.toml, or for a patch the patch file itself)
            line      int | null: the line in `file` (null for a patch file)
            recipe_file, recipe_line   where the recipe declares it (set for patches, whose
                      `file` is the patch)
            lock_entry  str | null: the `[inputs."ID"]` table of lockfiles/SET.lock
        nodes         [node id] rebuilt because their own inputs changed this way
        dependents    [node id] rebuilt because something below them did
    cutoff            [{node, rebuilt_deps}]: reused although dependencies rebuilt (same bytes)
    unexplained       [{node, reason}]: rebuilt with unchanged inputs (evicted, forced)
    nondeterministic  [{node, old_digest, new_digest, files}]
    repacked          [{lock_entry, old_sha256, new_sha256, tree}]
    cache_misses      [{node, category, detail}]
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import attrs

from .errors import PlannerError

SCHEMA_VERSION = 1


@attrs.frozen
class NodeState:
    id: str
    name: str
    variant: str
    key: str
    action: str  # built | reused | would-build | failed | skipped | checked
    reason: str = ""
    seconds: float = 0.0
    deps: dict[str, str] = attrs.field(factory=dict)  # mount -> node id
    preimage: Optional[dict] = None
    digest: Optional[str] = None
    previous_digest: Optional[str] = None


@attrs.frozen
class Change:
    path: tuple[str, ...]
    old: object
    new: object


@attrs.frozen
class Cause:
    kind: str  # source, input, patch, env, setting, script, builder, variant, host-package, epoch, version, …
    recipe: str
    field: str
    old: Optional[str]
    new: Optional[str]
    lock_entry: Optional[str] = None
    file: Optional[str] = None
    line: Optional[int] = None
    recipe_file: Optional[str] = None  # where the recipe declares a patch whose `file` is the patch
    recipe_line: Optional[int] = None

    @property
    def ident(self) -> tuple:
        return (self.kind, self.recipe, self.field, self.old, self.new)

    def describe(self) -> str:
        what = {
            "source": f"source of {self.recipe}",
            "input": f"input {self.field} of {self.recipe}",
            "patch": f"patch {self.field} of {self.recipe}",
            "env": f"environment variable {self.field} of {self.recipe}",
            "setting": f"build setting {self.field} of {self.recipe}",
            "script": f"build script of {self.recipe}",
            "builder": f"builder of {self.recipe} ({self.field})",
            "variant": f"variant axis {self.field} of {self.recipe}",
            "host-package": f"host package {self.field} (used by {self.recipe})",
            "epoch": "SOURCE_DATE_EPOCH",
            "version": f"version of {self.recipe}",
            "deps": f"dependencies of {self.recipe} ({self.field})",
            "image": f"image setting {self.field} of {self.recipe}",
            "sandbox": f"sandbox of {self.recipe}",
            "resources": f"[resources] {self.field} of {self.recipe}",
            "new": f"{self.recipe} is new" if self.recipe else "first recorded realise: nothing earlier to compare with",
            "attestation": f"attestation inputs of {self.recipe} ({self.field}; the image bytes do not depend on them)",
            "format": "planner derivation format",
        }.get(self.kind, f"{self.kind} {self.field} of {self.recipe}")
        if self.old is None and self.new is None:
            return what
        return f"{what}: {_short(self.old)} -> {_short(self.new)}"


@attrs.frozen
class CauseReport:
    cause: Cause
    nodes: list[str]  # rebuilt because of this change in their own inputs
    dependents: list[str]  # rebuilt because something below them changed
    cost: float


@attrs.frozen
class Unexplained:
    node: str
    reason: str


@attrs.frozen
class Failure:
    node: str
    reason: str


@attrs.frozen
class Cutoff:
    node: str
    rebuilt_deps: list[str]


@attrs.frozen
class Nondeterministic:
    node: str
    old_digest: Optional[str]
    new_digest: Optional[str]
    files: list[str] = attrs.field(factory=list)


@attrs.frozen
class Repacked:
    lock_entry: str
    old_sha256: Optional[str]
    new_sha256: Optional[str]
    tree: Optional[str]


@attrs.frozen
class CacheMissReport:
    node: str
    category: str  # never-built, evicted, unsigned, untrusted, bad-signature, unreachable, near-miss, absent
    detail: str


@attrs.frozen
class Explanation:
    set: str
    run: Optional[int]
    against: Optional[int]
    dry_run: bool
    causes: list[CauseReport]
    cutoff: list[Cutoff]
    unexplained: list[Unexplained]
    nondeterministic: list[Nondeterministic]
    repacked: list[Repacked]
    built: list[str]
    reused: int
    total_cost: float
    cache_misses: list[CacheMissReport] = attrs.field(factory=list)
    failures: list[Failure] = attrs.field(factory=list)

    def to_json(self) -> dict:
        d = attrs.asdict(self)
        d["schema"] = SCHEMA_VERSION
        for c in d["causes"]:
            c["cost"] = round(c["cost"], 3)
            c["cause"]["description"] = next(r.cause.describe() for r in self.causes
                                             if r.cause.ident == (c["cause"]["kind"], c["cause"]["recipe"],
                                                                  c["cause"]["field"], c["cause"]["old"],
                                                                  c["cause"]["new"]))
        d["total_cost"] = round(self.total_cost, 3)
        return d


def _short(v: object) -> str:
    if v is None:
        return "(none)"
    s = v if isinstance(v, str) else repr(v)
    if s.startswith("blake3:") and len(s) > 20:
        return s[:19] + "…"
    return s if len(s) <= 60 else s[:57] + "…"


# -- pure core -------------------------------------------------------------------------------

_MISSING = object()


def diff_preimages(old: dict, new: dict) -> list[Change]:
    """Leaf-level differences between two preimages. Patches compare by name."""
    out: list[Change] = []

    def walk(a: object, b: object, path: tuple[str, ...]) -> None:
        if path == ("patches",) and isinstance(a, list) and isinstance(b, list):
            pa = {p["name"]: p for p in a}
            pb = {p["name"]: p for p in b}
            for name in sorted(pa.keys() | pb.keys()):
                if pa.get(name) != pb.get(name):
                    out.append(Change(("patches", name), pa.get(name, {}).get("tree"), pb.get(name, {}).get("tree")))
            if [p["name"] for p in a if p["name"] in pb] != [p["name"] for p in b if p["name"] in pa]:
                out.append(Change(("patches", "(order)"), [p["name"] for p in a], [p["name"] for p in b]))
            return
        if isinstance(a, dict) and isinstance(b, dict) and path[:1] != ("variant",):
            for k in sorted(a.keys() | b.keys()):
                walk(a.get(k, _MISSING), b.get(k, _MISSING), path + (k,))
            return
        if isinstance(a, dict) and isinstance(b, dict):  # variant: one change per axis
            for k in sorted(a.keys() | b.keys()):
                if a.get(k) != b.get(k):
                    out.append(Change(path + (k,), a.get(k), b.get(k)))
            return
        if a != b:
            out.append(Change(path, None if a is _MISSING else a, None if b is _MISSING else b))

    walk(old, new, ())
    return out


def _fmt(v: object) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, list):
        return "+".join(str(x) for x in v) if all(isinstance(x, str) for x in v) else repr(v)
    return v if isinstance(v, str) else repr(v)


def classify(change: Change, recipe: str) -> Optional[Cause]:
    """The root cause a preimage change stands for, or None for propagation (a changed dep)."""
    p = change.path
    old, new = _fmt(change.old), _fmt(change.new)
    head = p[0]
    if head == "deps":
        if change.old is not None and change.new is not None:
            return None  # propagation
        return Cause("deps", recipe, p[1] if len(p) > 1 else "", "absent" if change.old is None else "present",
                     "absent" if change.new is None else "present")
    if head == "inputs":
        name = p[1]
        kind = "source" if name == "source" else "input"
        return Cause(kind, recipe, name, old, new, lock_entry=f"{recipe}/{name}")
    if head == "patches":
        name = p[1]
        return Cause("patch", recipe, name, old, new,
                     lock_entry=None if name == "(order)" else f"{recipe}/patch/{name}")
    if head == "env":
        return Cause("env", recipe, p[1], old, new)
    if head == "builder":
        if len(p) > 1 and p[1] == "settings":
            return Cause("setting", recipe, ".".join(p[2:]) or "settings", old, new)
        if len(p) > 1 and p[1] == "script":
            return Cause("script", recipe, "script", old, new)
        return Cause("builder", recipe, ".".join(p[1:]), old, new)
    if head == "variant":
        return Cause("variant", recipe, p[1], old, new)
    if head == "host":
        return Cause("host-package", recipe, p[1], old, new)
    if head == "source_date_epoch":
        return Cause("epoch", "", "source-date-epoch", old, new)
    if head == "version":
        return Cause("version", recipe, "version", old, new)
    if head in ("image", "platforms", "cuda_variants"):
        return Cause("image", recipe, ".".join(p), old, new)
    if head == "impure":
        return Cause("sandbox", recipe, "impure", old, new)
    if head == "resources":
        return Cause("resources", recipe, ".".join(p[1:]), old, new)
    if head == "attest":
        return Cause("attestation", recipe, ".".join(p[1:]), old, new)
    return Cause(head, recipe, ".".join(p), old, new)


def _nearest(prev_by_name: dict[str, list[NodeState]], node: NodeState, current: dict) -> Optional[NodeState]:
    """The previous node of the same recipe whose variant differs least (a variant change),
    preferring nodes that no longer exist: those are the ones this node replaced."""
    cands = prev_by_name.get(node.name, [])
    if not cands:
        return None
    mine = set(node.variant.split(", "))
    return max(cands, key=lambda c: (c.id not in current, len(mine & set(c.variant.split(", "))), c.id))


def explain(set_name: str, current: list[NodeState], previous: list[NodeState], *, run: Optional[int] = None,
            against: Optional[int] = None, dry_run: bool = False, repacked: Iterable[Repacked] = (),
            checks: Iterable[tuple[str, list[str]]] = ()) -> Explanation:
    cur = {n.id: n for n in current}
    prev = {n.id: n for n in previous}
    prev_by_name: dict[str, list[NodeState]] = {}
    for n in previous:
        prev_by_name.setdefault(n.name, []).append(n)
    changed_actions = ("built", "would-build", "failed", "checked")

    own: dict[str, list[Cause]] = {}
    memo: dict[str, dict[tuple, Cause]] = {}

    def causes_of(nid: str) -> dict[tuple, Cause]:
        if nid in memo:
            return memo[nid]
        memo[nid] = {}
        node = cur[nid]
        before = prev.get(nid) or _nearest(prev_by_name, node, cur)
        found: dict[tuple, Cause] = {}
        mine: list[Cause] = []
        if before is None:
            # With no earlier run at all, one cause says so instead of one per node.
            mine.append(Cause("new", "", "first realise", None, None) if not previous
                        else Cause("new", node.name, "recipe", None, None))
        elif before.key != node.key and before.preimage is not None and node.preimage is not None:
            for ch in diff_preimages(before.preimage, node.preimage):
                c = classify(ch, node.name)
                if c is not None:
                    mine.append(c)
                elif ch.path[0] == "deps":
                    dep_id = node.deps.get(ch.path[1])
                    if dep_id in cur:
                        found.update(causes_of(dep_id))
        # Attestation inputs (the lock digest an SBOM names) change with every lock edit; they
        # are a cause only when nothing that shapes the image's bytes changed.
        real = [c for c in mine if c.kind != "attestation"]
        if real or found:
            mine = real
        elif len(mine) > 1:
            mine = [Cause("attestation", node.name, "lock", None, None)]
        for c in mine:
            found[c.ident] = c
        own[nid] = mine
        memo[nid] = found
        return found

    rebuilt = [n.id for n in current if n.action in changed_actions]
    reports: dict[tuple, dict] = {}
    unexplained: list[Unexplained] = []
    for nid in rebuilt:
        node = cur[nid]
        allc = causes_of(nid)
        if not allc:
            before = prev.get(nid)
            if before is not None and before.key == node.key:
                unexplained.append(Unexplained(nid, node.reason or "rebuilt although its inputs did not change"))
            else:
                unexplained.append(Unexplained(nid, node.reason or "no earlier record to compare with"))
            continue
        direct = {c.ident for c in own.get(nid, [])}
        for ident, c in allc.items():
            r = reports.setdefault(ident, {"cause": c, "nodes": [], "dependents": [], "cost": 0.0})
            (r["nodes"] if ident in direct else r["dependents"]).append(nid)
            r["cost"] += node.seconds

    cutoff = []
    for n in current:
        if n.action == "reused" and n.reason.startswith("early cutoff"):
            rebuilt_deps = sorted({d for d in n.deps.values() if d in cur and cur[d].action in changed_actions})
            cutoff.append(Cutoff(n.id, rebuilt_deps))
    nondet = [Nondeterministic(n.id, n.previous_digest, n.digest) for n in current
              if n.previous_digest is not None and n.previous_digest != n.digest]
    for node_id, files in checks:
        nondet.append(Nondeterministic(node_id, cur[node_id].digest if node_id in cur else None, None, list(files)))
    misses = []
    for nid in rebuilt:
        reason = cur[nid].reason
        if "cache miss: " in reason:
            category, _, detail = reason.split("cache miss: ", 1)[1].partition(": ")
            misses.append(CacheMissReport(nid, category, detail))
    ordered = sorted(reports.values(), key=lambda r: (-(len(r["nodes"]) + len(r["dependents"])), -r["cost"],
                                                        r["cause"].ident))
    return Explanation(
        set=set_name, run=run, against=against, dry_run=dry_run,
        causes=[CauseReport(r["cause"], r["nodes"], r["dependents"], r["cost"]) for r in ordered],
        cutoff=cutoff, unexplained=unexplained, nondeterministic=nondet, repacked=list(repacked),
        built=[n for n in rebuilt if cur[n].action != "failed"], reused=sum(n.action == "reused" for n in current),
        failures=[Failure(n, cur[n].reason) for n in rebuilt if cur[n].action == "failed"],
        total_cost=sum(cur[n].seconds for n in rebuilt),
        cache_misses=misses,
    )


def compare_pins(old: dict, new: dict) -> list[Repacked]:
    """Lock entries whose fetched bytes changed while their unpacked content did not."""
    out = []
    for id_ in sorted(old.keys() & new.keys()):
        for plat in sorted(old[id_].keys() & new[id_].keys()):
            (osha, otree), (nsha, ntree) = old[id_][plat], new[id_][plat]
            if osha != nsha and otree == ntree:
                out.append(Repacked(id_ if plat == "any" else f"{id_} [{plat}]", osha, nsha, ntree))
    return out


# -- text ------------------------------------------------------------------------------------

def render(exp: Explanation, *, expand: bool = False, node: Optional[str] = None) -> str:
    lines = []
    head = f"planner why {exp.set}"
    if exp.dry_run:
        head += " --dry-run: what the next realise would do"
        if exp.run is not None:
            head += f", compared with run {exp.run}"
    elif exp.run is not None:
        head += f": run {exp.run}" + (f" compared with run {exp.against}" if exp.against is not None else "")
    if node:
        head += f" (causes reaching {node})"
    lines.append(head)
    verb = "would build" if exp.dry_run else "built"
    failed = f", {len(exp.failures)} failed" if exp.failures else ""
    lines.append(f"{len(exp.built)} {verb}{failed}, {exp.reused} reused; rebuild cost {_dur(exp.total_cost)}")
    for f in exp.failures:
        lines.append(f"FAILED {f.node}: {f.reason}  (`planner log {f.node}` prints its log)")
    if not exp.built and not exp.failures:
        lines.append("nothing " + ("will be" if exp.dry_run else "was") + " rebuilt")
    if exp.causes:
        lines.append("root causes:")
        for i, r in enumerate(exp.causes, 1):
            c = r.cause
            lines.append(f"  {i}. {c.describe()}")
            where = []
            if c.file:
                where.append(f"{c.file}:{c.line}" if c.line else c.file)
                if c.recipe_file:
                    where[-1] += f" ({c.recipe_file}:{c.recipe_line})" if c.recipe_line else f" ({c.recipe_file})"
            if c.lock_entry:
                where.append(f'lockfiles/{exp.set}.lock [inputs."{c.lock_entry}"]')
            if where:
                lines.append("     " + " · ".join(where))
            first = r.nodes[0] if r.nodes else (r.dependents[0] if r.dependents else "")
            others = len(r.nodes) - 1 if r.nodes else 0
            deps = len(r.dependents) - (0 if r.nodes else 1)
            verb2 = "rebuilds" if exp.dry_run else "rebuilt"
            parts = [f"{verb2} {first}"]
            if others:
                same_recipe = len({n.split("[")[0] for n in r.nodes}) == 1
                noun = "other variant" if same_recipe else "other node"
                parts.append(f"{others} {noun}{'s' if others > 1 else ''}")
            parts.append(f"{deps} dependent{'s' if deps != 1 else ''}")
            lines.append(f"     -> {' and '.join(parts)} · cost {_dur(r.cost)}")
            if expand:
                for n in r.nodes[1:]:
                    lines.append(f"        also {n}")
                for n in r.dependents:
                    lines.append(f"        dependent {n}")
    for u in exp.unexplained:
        lines.append(f"rebuilt without an input change: {u.node}: {u.reason}")
    for m in exp.cache_misses:
        lines.append(f"cache miss: {m.node}: {m.category}" + (f" ({m.detail})" if m.detail else ""))
    for c in exp.cutoff:
        lines.append(f"early cutoff: {c.node} reused; {', '.join(c.rebuilt_deps) or 'its dependencies'} "
                     f"rebuilt to identical output")
    for n in exp.nondeterministic:
        files = f" (differs in {', '.join(n.files[:5])})" if n.files else ""
        lines.append(f"NON-DETERMINISTIC: {n.node}: same inputs, different output {_short(n.old_digest)} -> "
                     f"{_short(n.new_digest)}{files}")
    for rp in exp.repacked:
        lines.append(f"re-packed upstream, same content: {rp.lock_entry} (sha256 {rp.old_sha256[:12] if rp.old_sha256 else '?'}… -> "
                     f"{rp.new_sha256[:12] if rp.new_sha256 else '?'}…, tree unchanged): no rebuild")
    return "\n".join(lines)


def _dur(s: float) -> str:
    from .planview import format_duration

    return format_duration(s, precise=True)


# -- I/O: run records, preimages, recipe locations -------------------------------------------

def _states_from_run(store, rec: dict) -> list[NodeState]:
    deps = rec.get("deps", {})
    out = []
    for n in rec.get("nodes", []):
        d = deps.get(n["id"], {})
        out.append(NodeState(id=n["id"], name=n["name"], variant=n["variant"], key=n["key"], action=n["action"],
                             reason=n.get("reason", ""), seconds=n.get("seconds", 0.0),
                             deps=d if isinstance(d, dict) else {}, preimage=store.preimage(n["key"]),
                             digest=n.get("digest"), previous_digest=n.get("previous_digest")))
    return out


def _runs_of(store, set_name: str) -> list[tuple[int, dict]]:
    return [(i, r) for i, r in store.runs(limit=200) if r.get("set") == set_name]


def locate(causes: list[CauseReport], rs) -> list[CauseReport]:
    """Fill in the recipe file and line each cause comes from."""
    from .recipes import line_of

    out = []
    for r in causes:
        c = r.cause
        file = line = None
        if rs is not None:
            if c.kind in ("epoch",) or (c.kind == "variant" and c.field in ("cuda", "platform")):
                path = rs.folder / "set.toml"
                key = {"epoch": "source-date-epoch", "cuda": "cuda", "platform": "platforms"}.get(
                    c.field if c.kind == "variant" else c.kind, c.field)
            elif c.recipe in rs.recipes:
                path = rs.root / rs.recipes[c.recipe].file
                key = {"source": "source", "input": c.field, "patch": "patches", "env": c.field,
                       "setting": c.field.split(".")[-1], "script": "script", "version": "version",
                       "deps": "deps", "host-package": "", "builder": "builder"}.get(c.kind, c.field.split(".")[-1])
            else:
                path, key = None, ""
            if path is not None and path.is_file():
                file = str(path.relative_to(rs.root))
                line = line_of(path.read_text(), key) if key else None
            if c.kind == "patch":
                recipe = rs.recipes.get(c.recipe)
                p = next((p for p in recipe.patches if p.label == c.field), None) if recipe else None
                if p is not None and p.file:
                    out.append(attrs.evolve(r, cause=attrs.evolve(c, file=p.file, line=None, recipe_file=file,
                                                                  recipe_line=line)))
                    continue
        out.append(attrs.evolve(r, cause=attrs.evolve(c, file=file, line=line)))
    return out


def _select(exp: Explanation, node: Optional[str], states: list[NodeState]) -> Explanation:
    """Only the causes that reach `node` (by id or name) and the nodes below it."""
    if not node:
        return exp
    by_id = {s.id: s for s in states}
    targets = [s.id for s in states if node in (s.id, s.name)]
    if not targets:
        from .suggest import unknown

        raise unknown("node", node, {s.name for s in states}, where="this run")
    want: set[str] = set()
    stack = list(targets)
    while stack:
        n = stack.pop()
        if n in want or n not in by_id:
            continue
        want.add(n)
        stack.extend(by_id[n].deps.values())
    causes = [r for r in exp.causes if set(r.nodes + r.dependents) & want]
    return attrs.evolve(exp, causes=causes, built=[b for b in exp.built if b in want],
                        failures=[f for f in exp.failures if f.node in want],
                        cutoff=[c for c in exp.cutoff if c.node in want],
                        unexplained=[u for u in exp.unexplained if u.node in want],
                        total_cost=sum(by_id[b].seconds for b in exp.built if b in want))


def explain_run(root: Path, set_name: str, store_root: Path, *, run_id: Optional[int] = None,
                against: Optional[int] = None, node: Optional[str] = None) -> Explanation:
    """Why the last realise of `set_name` (or run `run_id`) built what it built."""
    from .store import Store

    store = Store(store_root)
    runs = _runs_of(store, set_name)
    if not runs:
        raise PlannerError(f"no recorded realise of set {set_name!r} in {store_root}")
    if run_id is None:
        run_id, rec = runs[0]
    else:
        rec = store.run(run_id)
        if rec is None or rec.get("set") != set_name:
            raise PlannerError(f"no run {run_id} of set {set_name!r}")
    if against is None:
        earlier = [(i, r) for i, r in runs if i < run_id]
        against, prev_rec = earlier[0] if earlier else (None, {"nodes": []})
    else:
        prev_rec = store.run(against) or {"nodes": []}
    current = _states_from_run(store, rec)
    previous = _states_from_run(store, prev_rec)
    checks = [(c["node"], c["differing"]) for c in rec.get("checks", []) if not c["ok"]]
    exp = explain(set_name, current, previous, run=run_id, against=against, checks=checks,
                  repacked=compare_pins(prev_rec.get("pins", {}), rec.get("pins", {})) if prev_rec.get("pins") else ())
    store.close()
    exp = attrs.evolve(exp, causes=locate(exp.causes, _load_set(root, set_name)))
    return _select(exp, node, current)


def _load_set(root: Path, set_name: str):
    from .recipes import load_set

    try:
        return load_set(root, set_name)
    except PlannerError:
        return None


def explain_next(root: Path, set_name: str, store_root: Path, *, node: Optional[str] = None,
                 sandbox: bool = True) -> Explanation:
    """Why the next realise would build what it would build (nothing is built)."""
    from . import lock as lockmod
    from .graph import plan as make_plan
    from .host import detect_host
    from .realise import _pins
    from .recipes import load_set
    from .store import Store

    rs = load_set(root, set_name)
    lk = lockmod.read(rs.lockfile)
    p = make_plan(rs, lk, detect_host(sandbox))
    store = Store(store_root)
    closure = p.closure(p.roots)
    durations = store.durations(set_name)
    by_key = store.realisations([p.nodes[n].key for n in closure])
    runs = _runs_of(store, set_name)
    prev_id, prev_rec = runs[0] if runs else (None, {"nodes": []})
    previous = _states_from_run(store, prev_rec)
    prev_by_id = {s.id: s for s in previous}
    valid_ids = {nid for nid in closure if (r := by_key.get(p.nodes[nid].key)) is not None
                 and store.lookup(r.build_key) is not None}
    needed = p.needed(p.roots, valid_ids)  # as realise decides: nothing below a valid output
    current = []
    for nid in closure:
        pn = p.nodes[nid]
        r = by_key.get(pn.key)
        valid = nid in valid_ids or nid not in needed
        reason = "valid in the store" if nid in valid_ids else "not needed: what depends on it is valid" \
            if valid else ("output missing from the store" if r is not None else
                           "never built" if nid not in prev_by_id else "inputs changed")
        current.append(NodeState(id=nid, name=pn.name, variant=pn.variant.label(), key=pn.key,
                                 action="reused" if valid else "would-build", reason=reason,
                                 seconds=durations.get(nid, pn.estimate), deps=dict(pn.deps),
                                 preimage=pn.preimage))
    exp = explain(set_name, current, previous, run=prev_id, dry_run=True,
                  repacked=compare_pins(prev_rec.get("pins", {}), _pins(lk)) if prev_rec.get("pins") else ())
    store.close()
    exp = attrs.evolve(exp, causes=locate(exp.causes, rs))
    return _select(exp, node, current)


# -- diff and why-depends --------------------------------------------------------------------

def diff_keys(store_root: Path, a: str, b: Optional[str] = None, set_name: Optional[str] = None
              ) -> tuple[dict, dict, list[Change], tuple[str, str]]:
    """Field-level diff of two nodes' preimages, and the labels of both sides. A and B are keys,
    or node ids/names resolved against the recorded runs (B in the last, A in the one before).
    Without B: node A's key in its latest run against its previous different key, like
    comparing a derivation with the one it replaced."""
    from .store import Store

    store = Store(store_root)
    try:
        runs = [(i, r) for i, r in store.runs(limit=200) if set_name is None or r.get("set") == set_name]

        def find(name: str, rec: dict) -> Optional[str]:
            for n in rec.get("nodes", []):
                if name in (n["id"], n["name"]):
                    return n["key"]
            return None

        def names() -> set[str]:
            return {x for _i, r in runs for n in r.get("nodes", []) for x in (n["id"], n["name"])}

        if b is None:
            history = [(i, k) for i, r in runs if (k := find(a, r))]
            if not history and store.preimage(a) is None:
                from .suggest import unknown

                raise unknown("node", a, names(), where="recorded runs" + (f" of set {set_name!r}" if set_name else ""))
            if not history:
                raise PlannerError(f"{a!r} is a key: name a second key to compare it with")
            new_run, kb = history[0]
            older = next(((i, k) for i, k in history if k != kb), None)
            if older is None:
                pb = store.preimage(kb) or {}
                return pb, pb, [], (f"{a}@run{new_run}", f"{a}@run{new_run} (the same key in all "
                                                          f"{len(history)} recorded runs)")
            old_run, ka = older
            pa, pb = store.preimage(ka), store.preimage(kb)
            if pa is None or pb is None:
                raise PlannerError(f"the preimage of {a!r} in run {old_run if pa is None else new_run} is not in "
                                   "the store index")
            return pa, pb, diff_preimages(pa, pb), (f"{a}@run{old_run}", f"{a}@run{new_run}")
        pa, pb = store.preimage(a), store.preimage(b)
        if pa is None or pb is None:
            recs = [r for _i, r in runs]
            if pa is None and pb is None and a == b and len(recs) >= 2:
                ka, kb = find(a, recs[1]), find(b, recs[0])
            else:
                ka = a if pa is not None else next((k for r in recs if (k := find(a, r))), None)
                kb = b if pb is not None else next((k for r in recs if (k := find(b, r))), None)
            pa = store.preimage(ka) if ka else None
            pb = store.preimage(kb) if kb else None
        for name, pre in ((a, pa), (b, pb)):
            if pre is None:
                from .suggest import did_you_mean

                raise PlannerError(f"no preimage for {name!r}: not a key, nor a node of a recorded run"
                                   f"{did_you_mean(name, names())}")
        return pa, pb, diff_preimages(pa, pb), (a, b)
    finally:
        store.close()


def render_diff(a: str, b: str, pa: dict, pb: dict, changes: list[Change], store_root: Path) -> str:
    """Changes with dependency changes followed down to the root (like nix-diff, but named)."""
    from .store import Store

    store = Store(store_root)
    lines = [f"{pa.get('name')} {a} -> {pb.get('name')} {b}: {len(changes)} field(s) differ"]

    def show(changes: list[Change], indent: int, depth: int) -> None:
        for ch in changes:
            path = ".".join(ch.path)
            if ch.path[0] == "deps" and ch.old and ch.new and depth < 8:
                lines.append(f"{' ' * indent}{path}: dependency changed")
                da, db = store.preimage(str(ch.old)), store.preimage(str(ch.new))
                if da and db:
                    show(diff_preimages(da, db), indent + 2, depth + 1)
                continue
            cause = classify(ch, str(pb.get("name")))
            label = f"  [root cause: {cause.describe()}]" if cause else ""
            lines.append(f"{' ' * indent}{path}: {_short(_fmt(ch.old))} -> {_short(_fmt(ch.new))}{label}")

    show(changes, 2, 0)
    store.close()
    return "\n".join(lines)


def why_depends(root: Path, set_name: str, a: str, b: str, *, sandbox: bool = True) -> list[tuple[str, str]]:
    """Shortest dependency path from A down to B: [(node id, mount of the next step)]."""
    import networkx as nx

    from . import lock as lockmod
    from .graph import plan as make_plan
    from .host import detect_host
    from .recipes import load_set

    rs = load_set(root, set_name)
    p = make_plan(rs, lockmod.read(rs.lockfile), detect_host(sandbox))
    g = nx.DiGraph()
    for node in p.nodes.values():
        g.add_node(node.id)
        for mount, dep in node.deps.items():
            g.add_edge(node.id, dep, via=mount)
        for req in node.requires:
            for other in p.nodes.values():
                if other.name == req and (node.variant.platform is None or other.variant.platform in
                                          (None, node.variant.platform)):
                    g.add_edge(node.id, other.id, via=f"requires {req}")

    def ids(x: str) -> list[str]:
        found = [n for n in p.nodes if x in (n, p.nodes[n].name)]
        if not found:
            from .suggest import unknown

            raise unknown("node", x, {n.name for n in p.nodes.values()}, where=f"set {set_name!r}")
        return found

    best: Optional[list[str]] = None
    for sa in ids(a):
        for sb in ids(b):
            try:
                path = nx.shortest_path(g, sa, sb)
            except nx.NetworkXNoPath:
                continue
            if best is None or len(path) < len(best):
                best = path
    if best is None:
        raise PlannerError(f"{a} does not depend on {b}")
    return [(best[i], g.edges[best[i], best[i + 1]]["via"] if i + 1 < len(best) else "") for i in range(len(best))]
