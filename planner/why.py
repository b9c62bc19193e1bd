"""`planner why`: explain the last realise, or the next one, from the store's records.

The I/O around the pure core in `planner.causes`: run records and preimages from the store,
the fresh plan for `--dry-run`, recipe files and lines for each cause; also `diff` of two
preimages and `why-depends` (the dependency path from one node to another).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import attrs

from .causes import (SCHEMA_VERSION, CauseReport, Change, Explanation, NodeState, classify, compare_pins,  # noqa: F401
                     diff_preimages, explain, fmt_value, render, short_value)
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


def _pins_of(rec: Optional[RunRecord]) -> dict:
    return rec.pins if rec is not None else {}


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

    store = Store.for_reading(store_root)
    runs = runs_of(store, set_name)
    if not runs:
        raise PlannerError(f"no recorded realise of set {set_name!r} in {store_root}")
    if run_id is None:
        run_id, rec = runs[0]
    else:
        raw = store.run(run_id)
        if raw is None or raw.get("set") != set_name:
            raise PlannerError(f"no run {run_id} of set {set_name!r}")
        rec = RunRecord.from_json(raw)
    prev_rec: Optional[RunRecord]
    if against is None:
        earlier = [(i, r) for i, r in runs if i < run_id]
        against, prev_rec = earlier[0] if earlier else (None, None)
    else:
        raw_prev = store.run(against)
        prev_rec = RunRecord.from_json(raw_prev) if raw_prev is not None else None
    current = _states_from_run(store, rec)
    previous = _states_from_run(store, prev_rec)
    checks = [(c.node, c.differing) for c in rec.checks if not c.ok]
    exp = explain(set_name, current, previous, run=run_id, against=against, checks=checks,
                  repacked=compare_pins(_pins_of(prev_rec), rec.pins) if _pins_of(prev_rec) else ())
    if not exp.built and not exp.failures:
        busy = next((i for i, r in runs if i < run_id and any(n.action in ("built", "failed") for n in r.nodes)), None)
        exp = attrs.evolve(exp, last_rebuild=busy)
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
    """Why the next realise would build what it would build (nothing is built). A lock the
    realise would refuse as stale is refused here too, with the same line."""
    from . import planning
    from .store import Store

    planned = planning.load(root, set_name, sandboxed=sandbox, check_lock=True)
    with Store.or_empty(store_root) as store:  # no store yet is an empty one: none is made
        exp, current = _explain_next(planned, store, set_name)
    return _select(attrs.evolve(exp, causes=locate(exp.causes, planned.rs)), node, current)


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
    previous = _states_from_run(store, prev_rec)
    prev_by_id = {s.id: s for s in previous}
    current = []
    for nid in closure:
        pn = p.nodes[nid]
        r = v.known.get(nid)
        valid = nid in valid_ids or nid not in needed
        reason = "valid in the store" if nid in valid_ids else "not needed: what depends on it is valid" \
            if valid else ("output missing from the store" if r is not None else
                           "never built" if nid not in prev_by_id else "inputs changed")
        current.append(NodeState(id=nid, name=pn.name, variant=pn.variant.label(), key=pn.key,
                                 action="reused" if valid else "would-build", reason=reason,
                                 seconds=durations.get(nid, pn.estimate), deps=dict(pn.deps),
                                 preimage=pn.preimage.to_json()))
    exp = explain(set_name, current, previous, run=prev_id, dry_run=True,
                  repacked=compare_pins(_pins_of(prev_rec), lock_pins(lk)) if _pins_of(prev_rec) else ())
    return exp, current


# -- diff and why-depends --------------------------------------------------------------------

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
            lines.append(f"{' ' * indent}{path}: {short_value(fmt_value(ch.old))} -> {short_value(fmt_value(ch.new))}{label}")

    show(changes, 2, 0)
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
