"""The pure core of `planner why`: root causes of every rebuild, the propagation folded, the cost.

It compares node states (key, preimage, what happened) of two runs, or of a fresh plan and the
last run. Each node's changed preimage fields are classified into root causes (a source, a
patch, an environment variable, a variant axis, …); a changed dependency is not a cause but
propagation, so each rebuilt node inherits the causes of the dependencies that changed under
it. Outcomes (early cutoff, a cache miss and its class) are read from typed fields. No I/O:
`planner.why` reads run records, preimages and recipe lines and calls this.

`why --json` schema (version `SCHEMA_VERSION`; fields are only ever added within a version):

    schema            int, this version
    set               str
    run, against      int | null: the run explained and the run it is compared with
    dry_run           bool: true when explaining what the next realise would do
    built             [node id]: rebuilt (or, dry run, would be rebuilt), failed ones excluded
    failures          [{node, reason}]: nodes whose build failed in that run
    last_rebuild      int | null: when that run rebuilt nothing, the latest earlier run that
                      built or failed something (what `planner why SET --run N` explains)
    notes             [str]: what could not be said, and why (the recipes could not be read:
                      causes without file and line)
    reused            int: nodes reused
    total_cost        float seconds spent rebuilding
    causes            [{cause, nodes, dependents, cost}], most far-reaching first
        cause         {kind, recipe, field, old, new, description, lock_entry, file, line,
                       recipe_file, recipe_line}
            kind      source | input | patch | env | setting | script | builder | variant |
                      cuda-variant | host-package | epoch | version | deps | image | sandbox |
                      resources | new | attestation | format
            recipe    str: "" for a cause of the whole set (set.toml, the command line)
            file      str | null: the file to look at, relative to the project (the recipe, the
                      set.toml, or for a patch the patch file itself)
            line      int | null: the line in `file` (null for a patch file)
            recipe_file, recipe_line   where the recipe declares it (set for patches, whose
                      `file` is the patch)
            lock_entry  str | null: the `[inputs."ID"]` table of lockfiles/SET.lock
        nodes         [node id] rebuilt because their own inputs changed this way
        dependents    [node id] rebuilt because something below them did
        cost          float seconds of those nodes' builds (a node two causes reach counts in
                      both: the causes' costs may add up to more than total_cost)
    cutoff            [{node, rebuilt_deps}]: reused although dependencies rebuilt (same bytes)
    unexplained       [{node, reason}]: rebuilt with unchanged inputs (evicted, forced)
    nondeterministic  [{node, old_digest, new_digest, files}]
    repacked          [{lock_entry, old_sha256, new_sha256, tree}]
    cache_misses      [{node, category, detail}]
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import attrs

from .changes import Cause, Change, classify, diff_preimages, fmt_value, short_value  # noqa: F401


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
    cutoff: bool = False  # reused: dependencies rebuilt to identical outputs
    miss: Optional[tuple[str, str]] = None  # (category, detail) when the binary caches missed
    run: Optional[int] = None  # the run this state was recorded in (an earlier state's)


def not_built_in(before: Optional[NodeState]) -> Optional[str]:
    """Why a node with unchanged inputs is built again: its earlier record failed or was
    skipped (a dependency failed), so no output of those inputs was ever made."""
    if before is None or before.action not in ("failed", "skipped"):
        return None
    where = f" in run {before.run}" if before.run is not None else " in the run compared with"
    return ("its build failed" if before.action == "failed" else "skipped") + where


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
    category: str  # never-built, evicted, unsigned, untrusted, bad-signature, bad-entry, unreachable, near-miss, absent
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
    # When the run explained rebuilt nothing (a no-op): the latest earlier run that built or
    # failed something, which is what "why did it rebuild?" usually asks about.
    last_rebuild: Optional[int] = None
    notes: list[str] = attrs.field(factory=list)  # what the explanation could not say, and why

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


def _nearest(prev_by_name: dict[str, list[NodeState]], node: NodeState, current: dict) -> Optional[NodeState]:
    """The previous node of the same recipe whose variant differs least (a variant change),
    preferring nodes that no longer exist: those are the ones this node replaced; then the
    most recently recorded (`previous` lists the newest runs' nodes first). Only for a node
    whose own id has no earlier record."""
    cands = prev_by_name.get(node.name, [])
    if not cands:
        return None
    mine = set(node.variant.split(", "))
    age = {id(c): i for i, c in enumerate(cands)}
    return max(cands, key=lambda c: (c.id not in current, len(mine & set(c.variant.split(", "))), -age[id(c)], c.id))


_CHANGED = ("built", "would-build", "failed", "checked")


def _order_key(c: Cause) -> tuple:
    """A cause by its recipe's name, then what of it changed (old or new may be None)."""
    return tuple("" if x is None else str(x) for x in (c.recipe, c.kind, c.field, c.old, c.new))


class _CauseFinder:
    """Root causes per node: its own changed preimage fields, and (memoised) those of the
    dependencies that changed under it."""

    def __init__(self, current: list[NodeState], previous: list[NodeState], lock_changes: Sequence[str] = ()
                 ) -> None:
        self.lock_changes = list(lock_changes)
        self.cur = {n.id: n for n in current}
        self.prev = {n.id: n for n in previous}
        self.prev_by_name: dict[str, list[NodeState]] = {}
        for n in previous:
            self.prev_by_name.setdefault(n.name, []).append(n)
        self.first_run = not previous
        self.own: dict[str, list[Cause]] = {}
        self.memo: dict[str, dict[tuple, Cause]] = {}

    def of(self, nid: str) -> dict[tuple, Cause]:
        if nid in self.memo:
            return self.memo[nid]
        self.memo[nid] = {}
        node = self.cur[nid]
        before = self.prev.get(nid) or _nearest(self.prev_by_name, node, self.cur)
        found: dict[tuple, Cause] = {}
        mine: list[Cause] = []
        if before is None:
            # With no earlier run at all, one cause says so instead of one per node.
            mine.append(Cause("new", "", "first realise", None, None) if self.first_run
                        else Cause("new", node.name, "recipe", None, None))
        elif before.key != node.key and before.preimage is not None and node.preimage is not None:
            for ch in diff_preimages(before.preimage, node.preimage):
                c = classify(ch, node.name)
                if c is not None:
                    mine.append(c)
                elif ch.path[0] == "deps":
                    dep_id = node.deps.get(ch.path[1])
                    if dep_id in self.cur and not self._same_output(dep_id):
                        found.update(self.of(dep_id))
        # What a dependency's change explains is not this node's own cause: a recipe's new axis
        # that its dependents inherit, or an image's CUDA variants (set.toml's [cuda], which
        # its CUDA nodes' arch lists already name).
        below = {(c.kind, c.field, c.old, c.new) for c in found.values()}
        below_cuda = any(c.kind == "variant" and c.field == "cuda" for c in found.values())
        mine = [c for c in mine if not (c.kind == "variant" and c.recipe and (c.kind, c.field, c.old, c.new) in below)
                and not (c.kind == "cuda-variant" and below_cuda)]
        # Attestation inputs (the lock digest an SBOM names) change with every lock edit; they
        # are a cause only when nothing that shapes the image's bytes changed, and then the
        # lock entries that changed are what to name.
        real = [c for c in mine if c.kind != "attestation"]
        if real or found:
            mine = real
        elif mine:
            changed = self.lock_changes
            what = ("lock entries " + ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3
                                                                 else "")) if changed else "lock"
            mine = [Cause("attestation", node.name, what, None, None, lock_entry=changed[0] if changed else None)]
        for c in mine:
            found[c.ident] = c
        self.own[nid] = mine
        self.memo[nid] = found
        return found

    def _same_output(self, nid: str) -> bool:
        """The dependency was rebuilt to the bytes it had before (early cutoff): what changed
        in it did not reach what depends on it, so its causes are not theirs. Unknown (a dry
        run, no earlier digest) is not the same."""
        now, before = self.cur[nid].digest, self.prev.get(nid)
        return now is not None and before is not None and before.digest == now

    def _command_line(self, rebuilt: list[str]) -> dict[tuple, Cause]:
        """The same sandbox change in several recipes at once is one choice of the command line
        (`realise --sandbox off`), not an edit of each recipe: their causes mapped to one."""
        recipes: dict[tuple, set[str]] = {}
        for nid in rebuilt:
            for c in self.of(nid).values():
                if c.kind == "sandbox" and c.recipe:
                    recipes.setdefault((c.old, c.new), set()).add(c.recipe)
        out: dict[tuple, Cause] = {}
        for nid in rebuilt:
            for c in self.of(nid).values():
                if c.kind == "sandbox" and c.recipe and len(recipes[c.old, c.new]) > 1:
                    out[c.ident] = Cause("sandbox", "", "sandbox", c.old, c.new)
        return out

    def reports(self, rebuilt: list[str]) -> tuple[list[CauseReport], list[Unexplained]]:
        """Each root cause once, with the nodes it rebuilt directly and through dependencies."""
        reports: dict[tuple, dict] = {}
        unexplained: list[Unexplained] = []
        canon = self._command_line(rebuilt)
        for nid in rebuilt:
            node = self.cur[nid]
            allc = {}
            for c in self.of(nid).values():
                c = canon.get(c.ident, c)
                allc[c.ident] = c
            if not allc:
                before = self.prev.get(nid)
                same = before is not None and before.key == node.key
                unexplained.append(Unexplained(nid, (not_built_in(before) if same else None) or node.reason or (
                    "rebuilt although its inputs did not change" if same else "no earlier record to compare with")))
                continue
            direct = {canon.get(c.ident, c).ident for c in self.own.get(nid, [])}
            for ident, c in allc.items():
                r = reports.setdefault(ident, {"cause": c, "nodes": [], "dependents": [], "cost": 0.0})
                (r["nodes"] if ident in direct else r["dependents"]).append(nid)
                r["cost"] += node.seconds
        # Most far-reaching first, then by name: not by cost, which is timing and would order
        # the same causes differently from one run to the next.
        ordered = sorted(reports.values(), key=lambda r: (-(len(r["nodes"]) + len(r["dependents"])),
                                                            _order_key(r["cause"])))
        return [CauseReport(r["cause"], r["nodes"], r["dependents"], r["cost"]) for r in ordered], unexplained


def _outcomes(current: list[NodeState], rebuilt: list[str], checks: Iterable[tuple[str, list[str]]]
              ) -> tuple[list[Cutoff], list[Nondeterministic], list[CacheMissReport]]:
    """What the typed outcomes say: early cutoffs, non-determinism, cache misses."""
    cur = {n.id: n for n in current}
    cutoff = [Cutoff(n.id, sorted({d for d in n.deps.values() if d in cur and cur[d].action in _CHANGED}))
              for n in current if n.action == "reused" and n.cutoff]
    nondet = [Nondeterministic(n.id, n.previous_digest, n.digest) for n in current
              if n.previous_digest is not None and n.previous_digest != n.digest]
    for node_id, files in checks:
        nondet.append(Nondeterministic(node_id, cur[node_id].digest if node_id in cur else None, None, list(files)))
    misses = [CacheMissReport(nid, *cur[nid].miss) for nid in rebuilt if cur[nid].miss is not None]
    return cutoff, nondet, misses


def explain(set_name: str, current: list[NodeState], previous: list[NodeState], *, run: Optional[int] = None,
            against: Optional[int] = None, dry_run: bool = False, repacked: Iterable[Repacked] = (),
            checks: Iterable[tuple[str, list[str]]] = (), lock_changes: Sequence[str] = ()) -> Explanation:
    """`lock_changes`: the lock entries whose pins differ between the two sides (an image
    rebuilt for its attestation alone names them)."""
    finder = _CauseFinder(current, previous, lock_changes)
    rebuilt = [n.id for n in current if n.action in _CHANGED]
    causes, unexplained = finder.reports(rebuilt)
    cutoff, nondet, misses = _outcomes(current, rebuilt, checks)
    return Explanation(
        set=set_name, run=run, against=against, dry_run=dry_run, causes=causes,
        cutoff=cutoff, unexplained=unexplained, nondeterministic=nondet, repacked=list(repacked),
        built=[n for n in rebuilt if finder.cur[n].action != "failed"],
        reused=sum(n.action == "reused" for n in current),
        failures=[Failure(n, finder.cur[n].reason) for n in rebuilt if finder.cur[n].action == "failed"],
        total_cost=sum(finder.cur[n].seconds for n in rebuilt),
        cache_misses=misses,
    )


def changed_pins(old: dict, new: dict) -> list[str]:
    """Lock entries added, removed or pinned anew between two runs' pins (id -> platform -> pin)."""
    return sorted(id_ for id_ in old.keys() | new.keys() if old.get(id_) != new.get(id_))


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
        lines.append("nothing " + ("will be" if exp.dry_run else "was") + " rebuilt"
                     + (f"; the last run that rebuilt something is run {exp.last_rebuild}: `planner why {exp.set} "
                        f"--run {exp.last_rebuild}`" if exp.last_rebuild is not None else ""))
    failed_ids = {f.node for f in exp.failures}
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
            # What failed is counted apart: "rebuilt" names only what was built.
            nodes = [n for n in r.nodes if n not in failed_ids]
            dependents = [n for n in r.dependents if n not in failed_ids]
            failed = [n for n in r.nodes + r.dependents if n in failed_ids]
            first = nodes[0] if nodes else (dependents[0] if dependents else "")
            others = len(nodes) - 1 if nodes else 0
            deps = len(dependents) - (1 if dependents and not nodes else 0)  # (the first is named)
            parts = [f"{'rebuilds' if exp.dry_run else 'rebuilt'} {first}"] if first else []
            if others:
                same_recipe = len({n.split("[")[0] for n in nodes}) == 1
                noun = "other variant" if same_recipe else "other node"
                parts.append(f"{others} {noun}{'s' if others > 1 else ''}")
            if deps:
                parts.append(f"{deps} dependent{'s' if deps != 1 else ''}")
            text = " and ".join(parts)
            if failed:
                text += ("; " if text else "") + f"{len(failed)} failed ({', '.join(failed[:3])}" + \
                    (", …)" if len(failed) > 3 else ")")
            lines.append(f"     -> {text} · cost {_dur(r.cost)}")
            if expand:
                for n in r.nodes[1:]:
                    lines.append(f"        also {n}")
                for n in r.dependents:
                    lines.append(f"        dependent {n}")
    for u in exp.unexplained:
        lines.append(f"{'would rebuild' if exp.dry_run else 'rebuilt'} without an input change: {u.node}: {u.reason}")
    for m in exp.cache_misses:
        lines.append(f"cache miss: {m.node}: {m.category}" + (f" ({m.detail})" if m.detail else ""))
    for c in exp.cutoff:
        lines.append(f"early cutoff: {c.node} reused; {', '.join(c.rebuilt_deps) or 'its dependencies'} "
                     f"rebuilt to identical output")
    for n in exp.nondeterministic:
        files = f" (differs in {', '.join(n.files[:5])})" if n.files else ""
        lines.append(f"NON-DETERMINISTIC: {n.node}: same inputs, different output {short_value(n.old_digest)} -> "
                     f"{short_value(n.new_digest)}{files}")
    for note in exp.notes:
        lines.append(f"note: {note}")
    for rp in exp.repacked:
        lines.append(f"re-packed upstream, same content: {rp.lock_entry} (sha256 {rp.old_sha256[:12] if rp.old_sha256 else '?'}… -> "
                     f"{rp.new_sha256[:12] if rp.new_sha256 else '?'}…, tree unchanged): no rebuild")
    return "\n".join(lines)


def _dur(s: float) -> str:
    from .durations import format_duration

    return format_duration(s, precise=True)
