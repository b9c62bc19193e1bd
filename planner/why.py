"""`planner why`: explain the last realise, or the next one, from the store's records.

The I/O around the pure core in `planner.causes`: run records and preimages from the store,
the fresh plan for `--dry-run`, recipe files and lines for each cause; also `diff` of two
preimages and `why-depends` (the dependency path from one node to another).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import attrs

from .causes import (SCHEMA_VERSION, CauseReport, Change, Explanation, NodeState, changed_pins,  # noqa: F401
                     classify, compare_pins, diff_preimages, explain, fmt_value, not_built_in, render,
                     short_value)
from .errors import PlannerError
from .runs import RunRecord, runs_of


def _states_from_run(store, rec: Optional[RunRecord]) -> list[NodeState]:
    if rec is None:
        return []
    return [NodeState(id=n.id, name=n.name, variant=n.variant, key=n.key, action=n.action, reason=n.reason,
                      seconds=n.seconds, deps=rec.deps.get(n.id, {}), preimage=store.preimage(n.key),
                      digest=n.digest, previous_digest=n.previous_digest, cutoff=n.cutoff,
                      miss=(n.miss.category, n.miss.detail) if n.miss is not None else None)
            for n in rec.nodes]


def _latest_states(store, runs: list[tuple[int, RunRecord]], upto: Optional[int]) -> list[NodeState]:
    """Each node's state in the latest of the runs numbered `upto` or lower (`runs` newest
    first), newest run first. A partial run (--target, --variant, --platform) records only
    some nodes: the others are compared with their own last record, not called new or matched
    with another variant of their recipe."""
    if upto is None:
        return []
    seen: set[str] = set()
    out: list[NodeState] = []
    for i, rec in runs:
        if i > upto:
            continue
        fresh = [n for n in rec.nodes if n.id not in seen]
        seen.update(n.id for n in fresh)
        out += [attrs.evolve(st, run=i) for st in _states_from_run(store, attrs.evolve(rec, nodes=fresh))]
    return out


def _pins_of(rec: Optional[RunRecord]) -> dict:
    return rec.pins if rec is not None else {}


@attrs.frozen
class RecipeFiles:
    """Where a set's causes are written: its set.toml, each recipe's file, each patch's file
    (relative to the project root). Made from the loaded set, or, when the set does not load
    (a recipe broken since the run), from every recipe file that still parses."""

    root: Path
    set_toml: Path
    recipes: dict[str, str]  # recipe name -> its file
    patches: dict[str, dict[str, str]]  # recipe name -> patch label -> the patch's file

    @classmethod
    def of_set(cls, rs) -> "RecipeFiles":
        return cls(rs.root, rs.folder / "set.toml", {n: r.file for n, r in rs.recipes.items()},
                   {n: {p.label: p.file for p in r.patches if p.file} for n, r in rs.recipes.items()})

    @classmethod
    def scan(cls, root: Path, set_name: str) -> "RecipeFiles":
        from .recipes.model import Patch
        from .recipes.parse import loads

        root = root.resolve()
        folder = root / "recipes" / set_name
        recipes: dict[str, str] = {}
        patches: dict[str, dict[str, str]] = {}
        from .recipes.sets import recipe_file_names

        for path in (folder / n for n in recipe_file_names(folder)) if folder.is_dir() else ():
            try:
                data = loads(path.read_text())
                name = data["name"]
                if not isinstance(name, str):
                    continue
                found = {}
                for p in data.get("patches") or ():
                    patch = Patch(file=p.get("file"), url=p.get("url"), name=p.get("name"))
                    if isinstance(patch.file, str):
                        found[patch.label] = patch.file
            except Exception:  # noqa: BLE001 - a broken file: its causes go without a location
                continue
            recipes[name] = str(path.relative_to(root))
            patches[name] = found
        return cls(root, folder / "set.toml", recipes, patches)


def locate(causes: list[CauseReport], files: Optional[RecipeFiles]) -> list[CauseReport]:
    """Fill in the file and line each cause comes from."""
    from .recipes import line_of

    def text_of(path: Path) -> Optional[str]:
        try:
            return path.read_text() if path.is_file() else None
        except (OSError, UnicodeDecodeError):
            return None

    out = []
    for r in causes:
        c = r.cause
        file = line = None
        if files is not None:
            path: Optional[Path] = None
            key = ""
            if c.kind == "epoch" or (c.kind in ("variant", "cuda-variant", "sandbox") and not c.recipe):
                if c.kind != "sandbox":  # (a choice of the command line: no file)
                    path = files.set_toml
                    key = {"epoch": "source-date-epoch", "platform": "platforms"}.get(
                        c.field if c.kind == "variant" else c.kind, "cuda")
                    if c.kind == "cuda-variant":
                        key = c.field
                    elif c.kind == "variant" and c.field == "cuda":
                        key = _cuda_variant_named(files.set_toml, c.new) or "cuda"
            elif c.recipe in files.recipes:
                path = files.root / files.recipes[c.recipe]
                key = {"source": "source", "input": c.field, "patch": "patches", "env": c.field,
                       "setting": c.field.split(".")[-1], "script": "script", "version": "version",
                       "deps": "deps", "host-package": "", "builder": "builder", "variant": "axes",
                       "sandbox": "impure"}.get(c.kind, c.field.split(".")[-1])
            text = text_of(path) if path is not None else None
            if path is not None and text is not None:
                file = str(path.relative_to(files.root))
                line = line_of(text, key) if key else None
            if c.kind == "patch":
                patch_file = files.patches.get(c.recipe, {}).get(c.field)
                if patch_file:
                    out.append(attrs.evolve(r, cause=attrs.evolve(c, file=patch_file, line=None, recipe_file=file,
                                                                  recipe_line=line)))
                    continue
        out.append(attrs.evolve(r, cause=attrs.evolve(c, file=file, line=line)))
    return out


def _cuda_variant_named(set_toml: Path, archs: Optional[str]) -> Optional[str]:
    """The [cuda] variant of set.toml whose arch list is now `archs` ('+'-joined, as a cause
    holds it): the line that changed, rather than the table's."""
    if not archs:
        return None
    from .builders.cuda_archs import normalise_archs
    from .recipes.parse import loads

    try:
        cuda = loads(set_toml.read_text()).get("cuda") or {}
    except Exception:  # noqa: BLE001 - the location is best effort
        return None
    want = archs.split("+")
    for name, value in sorted(cuda.items()):
        lists = value.values() if isinstance(value, dict) else [value]
        try:
            if any(list(normalise_archs(v)) == want for v in lists):
                return name
        except Exception:  # noqa: BLE001
            continue
    return None


def _closure(states: list[NodeState], node: str) -> Optional[set[str]]:
    """The ids of `node` (an id or a recipe name) and of everything below it; None if no state is it."""
    by_id = {s.id: s for s in states}
    targets = [s.id for s in states if node in (s.id, s.name)]
    if not targets:
        return None
    want: set[str] = set()
    stack = list(targets)
    while stack:
        n = stack.pop()
        if n in want or n not in by_id:
            continue
        want.add(n)
        stack.extend(by_id[n].deps.values())
    return want


def _select(exp: Explanation, node: Optional[str], states: list[NodeState], *, what: str,
            recipes: Iterable[str] = ()) -> Explanation:
    """Only what reaches `node` (by id or name): its closure's rebuilt and reused nodes, the
    causes that reach it with their nodes, dependents and cost within it. `what` names the run
    explained, for the error; `recipes`: the set's recipe names (one outside the closure of the
    target is named as such)."""
    if not node:
        return exp
    want = _closure(states, node)
    if want is None:
        if node in set(recipes):
            raise PlannerError(f"{node} is a recipe of set {exp.set!r} but not in what {what} builds (the closure "
                               "of the set's target); `planner realise SET --target NAME` builds it")
        from .suggest import unknown

        raise unknown("node", node, {s.name for s in states}, where=what)
    by_id = {s.id: s for s in states}
    causes = []
    for r in exp.causes:
        nodes = [n for n in r.nodes if n in want]
        dependents = [n for n in r.dependents if n in want]
        if nodes or dependents:
            causes.append(attrs.evolve(r, nodes=nodes, dependents=dependents,
                                       cost=sum(by_id[n].seconds for n in nodes + dependents if n in by_id)))
    return attrs.evolve(exp, causes=causes, built=[b for b in exp.built if b in want],
                        failures=[f for f in exp.failures if f.node in want],
                        cutoff=[c for c in exp.cutoff if c.node in want],
                        unexplained=[u for u in exp.unexplained if u.node in want],
                        cache_misses=[m for m in exp.cache_misses if m.node in want],
                        nondeterministic=[n for n in exp.nondeterministic if n.node in want],
                        reused=sum(s.action == "reused" for s in states if s.id in want),
                        total_cost=sum(by_id[b].seconds for b in exp.built if b in want))


def explain_run(root: Path, set_name: str, store_root: Path, *, run_id: Optional[int] = None,
                against: Optional[int] = None, node: Optional[str] = None) -> Explanation:
    """Why the last realise of `set_name` (or run `run_id`) built what it built."""
    from .store import Store

    store = Store.for_reading(store_root)
    try:
        runs = runs_of(store, set_name)
        if not runs:
            raise PlannerError(f"no recorded realise of set {set_name!r} in {store_root}")
        if run_id is None:
            run_id, rec = runs[0]
        else:
            rec = _run_of(store, runs, run_id, set_name, "--run")
        prev_rec: Optional[RunRecord]
        if against is None:
            earlier = [(i, r) for i, r in runs if i < run_id]
            against, prev_rec = earlier[0] if earlier else (None, None)
        elif against == run_id:
            raise PlannerError(f"--against {against} is the run explained: name another run of set {set_name!r}")
        else:
            prev_rec = _run_of(store, runs, against, set_name, "--against")
        current = _states_from_run(store, rec)
        previous = _latest_states(store, runs, against)
        checks = [(c.node, c.differing) for c in rec.checks if not c.ok]
        prev_pins = _pins_of(prev_rec)
        exp = explain(set_name, current, previous, run=run_id, against=against, checks=checks,
                      repacked=compare_pins(prev_pins, rec.pins) if prev_pins else (),
                      lock_changes=changed_pins(prev_pins, rec.pins) if prev_rec is not None else ())
    finally:
        store.close()
    files, notes = _recipe_files(root, set_name)
    exp = attrs.evolve(exp, causes=locate(exp.causes, files), notes=notes)
    exp = _select(exp, node, current, what=f"run {run_id}", recipes=files.recipes)
    if not exp.built and not exp.failures:
        # Nothing rebuilt (a no-op): the latest earlier run that rebuilt something of what
        # was asked about is what "why did it rebuild?" usually means.
        want = _closure(current, node) if node else None
        busy = next((i for i, r in runs if i < run_id and any(
            n.action in ("built", "failed") and (want is None or n.id in want) for n in r.nodes)), None)
        exp = attrs.evolve(exp, last_rebuild=busy)
    return exp


def _run_of(store, runs: list, run_id: int, set_name: str, option: str) -> RunRecord:
    raw = store.run(run_id)
    if raw is None or raw.get("set") != set_name:
        known = [str(i) for i, _r in runs][:12]
        raise PlannerError(f"{option} {run_id}: no run {run_id} of set {set_name!r}"
                           + (f" (its runs: {', '.join(known)}{', …' if len(runs) > 12 else ''})" if known else ""))
    return RunRecord.from_json(raw)


def _recipe_files(root: Path, set_name: str) -> tuple[RecipeFiles, list[str]]:
    """Where the set's causes are written, and a note when the set does not load (a recipe
    broken since the run): then from each recipe file that still parses."""
    from .recipes import load_set

    try:
        return RecipeFiles.of_set(load_set(root, set_name)), []
    except PlannerError as exc:
        return RecipeFiles.scan(root, set_name), [f"the recipes do not load now ({exc.line()}): a cause of a "
                                                  "recipe that does not parse has no file and line"]


def explain_next(root: Path, set_name: str, store_root: Path, *, node: Optional[str] = None,
                 sandbox: bool = True) -> Explanation:
    """Why the next realise would build what it would build (nothing is built). A lock the
    realise would refuse as stale is refused here too, with the same line."""
    from . import planning
    from .store import Store

    planned = planning.load(root, set_name, sandboxed=sandbox, check_lock=True)
    with Store.or_empty(store_root) as store:  # no store yet is an empty one: none is made
        exp, current = _explain_next(planned, store, set_name)
    exp = attrs.evolve(exp, causes=locate(exp.causes, RecipeFiles.of_set(planned.rs)))
    return _select(exp, node, current, what="the next realise", recipes=planned.rs.recipes)


def _explain_next(planned, store, set_name: str) -> tuple[Explanation, list[NodeState]]:
    """The explanation of what the next realise would build, from `store`, and the node states."""
    from . import planning
    from .runs import lock_pins

    lk, p = planned.lock, planned.plan
    v = planning.validity(p, store, p.roots)  # as realise decides: nothing below a valid output
    closure, valid_ids, needed = v.closure, v.valid, v.needed
    if planned.deferred:
        planning.stale_outside(planned, set(closure))  # (an edited patch: realise refuses it)
    durations = store.durations(set_name)
    runs = runs_of(store, set_name)
    prev_id, prev_rec = runs[0] if runs else (None, None)
    previous = _latest_states(store, runs, prev_id)
    prev_by_id = {s.id: s for s in previous}
    # A node's cost is its last build's time; a node whose id is new (its variant changed)
    # has none, and the last time of its recipe's build is a better guess than its estimate.
    recipe_seconds = {s.name: s.seconds for s in previous if s.action == "built" and s.seconds}
    current = []
    for nid in closure:
        pn = p.nodes[nid]
        r = v.known.get(nid)
        valid = nid in valid_ids or nid not in needed
        before = prev_by_id.get(nid)
        reason = "valid in the store" if nid in valid_ids else "not needed: what depends on it is valid" \
            if valid else ("output missing from the store" if r is not None else
                           "never built" if before is None else
                           (not_built_in(before) if before.key == pn.key else None) or "inputs changed")
        current.append(NodeState(id=nid, name=pn.name, variant=pn.variant.label(), key=pn.key,
                                 action="reused" if valid else "would-build", reason=reason,
                                 seconds=durations.get(nid, recipe_seconds.get(pn.name, pn.estimate)),
                                 deps=dict(pn.deps),
                                 preimage=pn.preimage.to_json()))
    pins = lock_pins(lk)
    exp = explain(set_name, current, previous, run=prev_id, dry_run=True,
                  repacked=compare_pins(_pins_of(prev_rec), pins) if _pins_of(prev_rec) else (),
                  lock_changes=changed_pins(_pins_of(prev_rec), pins) if prev_rec is not None else ())
    return exp, current


# -- diff and why-depends --------------------------------------------------------------------

def refuse_several_sets(name: Optional[str], runs, set_name: Optional[str], command: str) -> None:
    """Without --set, a node id or recipe name recorded in runs of several sets is not resolved
    to whichever set ran last: comparing set v's node with set w's is a change no one made."""
    if name is None or set_name is not None:
        return
    sets = sorted({r.set for _i, r in runs for n in r.nodes if name in (n.id, n.name)})
    if len(sets) > 1:
        raise PlannerError(f"{name!r} is a node of the runs of {len(sets)} sets ({', '.join(sets)}): name one "
                           f"with --set SET (planner {command} {name} --set {sets[0]})")


def _refuse_ambiguous(name: Optional[str], runs, set_name: Optional[str]) -> None:
    """A recipe name that is several nodes (a platform or CUDA variant each) is not resolved to
    whichever the runs list first: the user names one by its id."""
    if name is None or any(name == n.id for _i, r in runs for n in r.nodes):
        return
    ids = sorted({n.id for _i, r in runs for n in r.nodes if n.name == name})
    if len(ids) > 1:
        of = f" of set {set_name!r}" if set_name else ""
        raise PlannerError(f"{name!r} names {len(ids)} nodes{of}: {', '.join(ids)}; name one by its id "
                           f"(planner diff {ids[0]!r})")


def diff_keys(store_root: Path, a: str, b: Optional[str] = None, set_name: Optional[str] = None
              ) -> tuple[dict, dict, list[Change], tuple[str, str]]:
    """Field-level diff of two nodes' preimages, and the labels of both sides. A and B are keys,
    or node ids/names resolved against the recorded runs (B in the last, A in the one before).
    Without B: node A's key in its latest run against its previous different key, like
    comparing a derivation with the one it replaced."""
    from .store import Store

    store = Store.for_reading(store_root)
    try:
        runs = runs_of(store, set_name)

        def find(name: str, rec: RunRecord) -> Optional[str]:
            return next((n.key for n in rec.nodes if name in (n.id, n.name)), None)

        def names() -> set[str]:
            return {x for _i, r in runs for n in r.nodes for x in (n.id, n.name)}

        for name in (a, b):
            if name is not None and store.preimage(name) is None:  # (a key names one node)
                refuse_several_sets(name, runs, set_name, "diff")
            _refuse_ambiguous(name, runs, set_name)

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

    store = Store.for_reading(store_root)
    lines = [f"{pa.get('name')} {a} -> {pb.get('name')} {b}: {len(changes)} field(s) differ"]

    def show(changes: list[Change], indent: int, depth: int, name: str) -> None:
        # `name`: the recipe whose preimage these changes are of; a change found down a
        # dependency is that dependency's own, not the top node's.
        for ch in changes:
            path = ".".join(ch.path)
            if ch.path[0] == "deps" and ch.old and ch.new and depth < 8:
                lines.append(f"{' ' * indent}{path}: dependency changed")
                da, db = store.preimage(str(ch.old)), store.preimage(str(ch.new))
                if da and db:
                    show(diff_preimages(da, db), indent + 2, depth + 1, str(db.get("name")))
                continue
            cause = classify(ch, name)
            label = f"  [root cause: {cause.describe()}]" if cause else ""
            lines.append(f"{' ' * indent}{path}: {short_value(fmt_value(ch.old))} -> {short_value(fmt_value(ch.new))}{label}")

    show(changes, 2, 0, str(pb.get("name")))
    store.close()
    return "\n".join(lines)


def why_depends(root: Path, set_name: str, a: str, b: str, *, sandbox: bool = True) -> list[tuple[str, str]]:
    """Shortest dependency path from A down to B: [(node id, mount of the next step)]."""
    import networkx as nx

    from . import planning

    p = planning.load(root, set_name, sandboxed=sandbox).plan
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
