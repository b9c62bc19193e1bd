"""Re-planning after an edit: only the edited recipes and what builds on them.

A cached plan table (`planner.plantable`) is a miss as soon as any file planning read changed.
When the only changes are recipe files of the set (edited, added, removed or renamed), most of
the plan is unchanged: a node's key depends on its recipe, its variant, the lock, the host, the
set's configuration and its build inputs' keys, so a node none of whose recipes below it
changed keeps its row. This module plans again the *dirty* recipes (the changed ones and every
recipe that names one of them, transitively, as a build input or a run-time requirement) with
the planner's own code (`graph._Planner`), reuses every other node's row, and repeats the
planner's walk in the same order, so that the table is the one a plan from scratch makes:
same nodes, keys, order, edges and warnings (`tests/test_replan.py` compares them after edits,
additions, removals and renames).

Anything else is planned from scratch, which is always right: a change to set.toml, the
lockfile, a patch or path source, the planner, the host's packages, any other file in the
recipe folder; a set with aliases or profiles; a changed recipe with local patches or path
sources (they add watched files); an image among the dirty recipes (its preimage reads its
whole closure); the build root among them; and any error (the plan from scratch reports it,
as it always does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from . import plantable
from .plantable import PlanTable, recipe_flags


# Below a few hundred unchanged recipes to read, parsing them costs less than loading the
# parse cache (all of it: one pickle).
PARSE_CACHE_FROM = 200


class _Fallback(Exception):
    """This change is not one re-planning handles: plan from scratch."""


def table_for(root: Path, set_name: str, target: Optional[str], sandboxed: bool) -> PlanTable:
    """The plan table: cached if no file planning read changed; re-planned where only recipe
    files changed; else planned from scratch. Each way caches what it made."""
    from . import planning
    from .plancache import changed_files

    root_s = os.path.realpath(root)
    data = plantable._load(root_s, set_name, target, sandboxed)
    if data is not None:
        started = plantable.now_ns()  # before the first file is read
        try:
            changed = changed_files(data["files"])
            if not changed:
                return plantable._table(data["table"])
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            data = None
    if data is not None:
        del data["table"]  # the old view's rows (never unmarshalled): not needed to re-plan
        table = replan(Path(root_s), set_name, target, sandboxed, data, changed, started)
        if table is not None:
            return table
    started = plantable.now_ns()
    planned = planning.load(root, set_name, sandboxed=sandboxed, target=target)
    table = plantable.from_planned(planned)
    plantable.save(table, planned, started, target, sandboxed)
    return table


def replan(root: Path, set_name: str, target: Optional[str], sandboxed: bool, data: dict, changed: list[str],
           started_ns: int) -> Optional[PlanTable]:
    """The plan table after an edit of recipe files alone, made from the cached one (`data`,
    the table file's record; `changed`, the files whose signature it does not hold); None when
    the change needs a plan from scratch."""
    from .errors import PlannerError
    from .gcpause import gc_paused

    try:
        with gc_paused():
            return _replan(root, set_name, target, sandboxed, data, changed, started_ns)
    except (_Fallback, PlannerError, OSError, KeyError, ValueError, TypeError, IndexError, AttributeError):
        return None


def _changes(folder_s: str, files: dict, changed: list[str]) -> tuple[set[str], set[str], set[str]]:
    """(modified, added, removed) recipe names, from the changed files; _Fallback when any
    other file changed."""
    modified: set[str] = set()
    folder_changed = False
    for f in changed:
        if f == folder_s:
            folder_changed = True
            continue
        d, base = os.path.split(f)
        if d != folder_s or not base.endswith(".toml") or base == "set.toml":
            raise _Fallback(f)
        modified.add(base[:-5])
    added: set[str] = set()
    removed: set[str] = set()
    if folder_changed:
        prefix = folder_s + os.sep
        before = {f[len(prefix):] for f in files if f.startswith(prefix) and os.sep not in f[len(prefix):]}
        now = set(os.listdir(folder_s))
        for base in sorted(now ^ before):
            if not base.endswith(".toml") or base == "set.toml":
                raise _Fallback(base)
            (added if base in now else removed).add(base[:-5])
    modified -= removed
    for name in modified:
        if not os.path.exists(os.path.join(folder_s, name + ".toml")):
            raise _Fallback(name)
    return modified, added, removed


class _Edit:
    """An edit of recipe files, checked as a plan from scratch checks the whole set: the
    changed recipes parsed and validated, their references, no new cycle. `dirty`: the changed
    recipes and everything that names one of them, transitively."""

    def __init__(self, root: Path, set_name: str, config, old: dict, modified: set[str], added: set[str],
                 removed: set[str], target: str) -> None:
        from .recipes.model import RecipeSet
        from .recipes.sets import load_recipe
        from .recipes.validate import check_recipe_references

        self.changed = changed = modified | added
        if not (modified | removed) <= set(old) or added & set(old):
            raise _Fallback("names")
        if target in removed or config.root_recipe in (changed | removed):
            raise _Fallback("target or build root")
        self.names = (set(old) - removed) | added
        folder = root / "recipes" / set_name
        self.fresh = {}
        for name in sorted(changed, key=lambda n: n + ".toml"):  # a plan's order: by file name
            r = load_recipe(folder / f"{name}.toml", root, f"recipes/{set_name}/{name}.toml")
            if any(recipe_flags(r)) or (name in old and any(old[name][2])):
                raise _Fallback("local files or image")
            self.fresh[name] = r
        self.partial = RecipeSet(name=set_name, root=root, config=config, recipes=dict(self.fresh))
        for r in self.fresh.values():
            check_recipe_references(self.partial, r, self.names)
        self.edges = edges = {n: v[0] for n, v in old.items() if n not in removed}
        for n, r in self.fresh.items():
            edges[n] = r.build_inputs() + list(r.requires)
        for es in edges.values():
            if removed.intersection(es):
                raise _Fallback("a removed recipe is named")  # the plan from scratch says where
        parents: dict[str, list[str]] = {}
        for n, es in edges.items():
            for c in es:
                parents.setdefault(c, []).append(n)
        self.dirty = _closure(changed, parents)
        if config.root_recipe in self.dirty or any(old[n][2][1] for n in self.dirty if n in old):
            raise _Fallback("build root or image dirty")
        # A new cycle passes through a changed recipe, so every recipe on it reaches a changed
        # one: it lies among the dirty recipes.
        from .recipes.validate import find_cycle

        dirty = self.dirty
        if find_cycle({n: [c for c in edges.get(n, ()) if c in dirty] for n in dirty}):
            raise _Fallback("cycle")


def _closure(start: set[str], edges: dict[str, list[str]]) -> set[str]:
    out, stack = set(start), list(start)
    while stack:
        for c in edges.get(stack.pop(), ()):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def _replan(root: Path, set_name: str, target: Optional[str], sandboxed: bool, data: dict, changed: list[str],
            started_ns: int) -> Optional[PlanTable]:
    from . import lock as lockmod
    from .host import detect_host
    from .plancache import signatures
    from .recipes.sets import load_config

    root_s = os.fspath(root)
    state = plantable.load_state(root_s, set_name, target, sandboxed, data["stamp"])
    if state is None or state.get("version") != plantable.STATE_VERSION or not state["plain"]:
        raise _Fallback("state")
    folder_s = os.fspath(root / "recipes" / set_name)
    modified, added, removed = _changes(folder_s, data["files"], changed)
    config, _text = load_config(root, set_name)
    if config.aliases or config.profiles or config.profile is not None:
        raise _Fallback("aliases")
    old: dict = state["recipes"]
    edit = _Edit(root, set_name, config, old, modified, added, removed, target or config.target)
    from .graph import expand

    lock = lockmod.read(root / "lockfiles" / f"{set_name}.lock")
    lazy = _LazySet(set_name, root, config, edit.names, edit.fresh,
                    len(edit.dirty) - len(edit.fresh) > PARSE_CACHE_FROM)
    planner = replanner(lazy, lock, detect_host(sandboxed), {row[0]: row for row in state["rows"]}, edit.dirty)
    for n, v in old.items():
        if n not in edit.dirty and n not in removed and v[1] is not None:
            planner._axes[n] = frozenset(v[1])
    plan = expand(planner, target)
    rows = [node.row if isinstance(node, _Reused) else plantable.light_row(node, planner.walk[nid])
            for nid, node in plan.nodes.items()]
    problems, own, ids = _problems(edit, old, lock)
    empty = type(edit.partial)(name=set_name, root=root, config=config, recipes={})
    table = plantable.finish(set_name, rows, plan.targets, plan.roots, plantable.warnings(empty, problems), problems)
    recipes = {}
    for n in sorted(edit.names):
        a = planner._axes.get(n)
        if n in edit.fresh:
            recipes[n] = (edit.edges[n], sorted(a) if a is not None else None, recipe_flags(edit.fresh[n]),
                          own[n], ids[n])
        else:
            o = old[n]
            recipes[n] = (o[0], sorted(a) if a is not None else o[1], o[2], o[3], o[4])
    gone = {os.path.join(folder_s, f"{n}.toml") for n in removed}
    # A file that still had its recorded signature when the change was looked for (after
    # `started_ns`) keeps it: only the changed and added ones are asked again.
    changed_set = set(changed)
    unchanged = {f: sig for f, sig in data["files"].items() if f not in changed_set}
    files = signatures([f for f in data["files"] if f not in gone]
                       + [os.path.join(folder_s, f"{n}.toml") for n in sorted(added)], started_ns, unchanged)
    if files is not None:
        plantable.write(root_s, set_name, target, sandboxed, files, table,
                        {"version": plantable.STATE_VERSION, "plain": True, "rows": rows, "recipes": recipes})
    return table


def _problems(edit: _Edit, old: dict, lock) -> tuple[list, dict, dict]:
    """The lock's problems as `lock.check(rs, lock, deep=False)` lists them: each recipe's own
    (kept, or checked again for the changed recipes) in declaration order, then the lock's as a
    whole. Also the changed recipes' own problems and every recipe's declaration ids."""
    from . import lock as lockmod

    kept = [n for n in edit.names if n not in edit.changed]
    mine = [(i, m) for n in kept for i, m in old[n][3]]
    ids = {n: list(old[n][4]) for n in kept}
    own: dict[str, list] = {n: [] for n in edit.fresh}
    decls = lockmod.declarations(edit.partial)
    for n in edit.fresh:
        ids[n] = []
    for d in decls.values():
        ids[d.recipe].append(d.id)
    for pr in lockmod.check(edit.partial, lock, deep=False):
        if pr.id in decls:
            own[decls[pr.id].recipe].append((pr.id, pr.message))
            mine.append((pr.id, pr.message))
    declared = {i for v in ids.values() for i in v}
    import attrs

    whole = attrs.evolve(lock, inputs={i: li for i, li in lock.inputs.items() if i not in declared})
    empty = attrs.evolve(edit.partial, recipes={})
    problems = [lockmod.Problem(i, m) for i, m in sorted(mine)] + lockmod.check(empty, whole, deep=False)
    return problems, own, ids


class _Reused:
    """A node kept from the cached plan: its row, and its key for the nodes built on it."""

    __slots__ = ("row", "key")

    def __init__(self, row: tuple) -> None:
        self.row = row
        self.key = row[3]


class _LazySet:
    """The recipe set as the re-planner sees it: a recipe is read when the walk reaches it (the
    changed ones are already parsed; the others come from the parse cache, or are parsed)."""

    def __init__(self, name: str, root: Path, config, names: set[str], fresh: dict, use_cache: bool) -> None:
        self.name, self.root, self.config = name, root, config
        self.recipes: dict = {}
        self._names, self._fresh, self._use_cache = names, fresh, use_cache
        self._folder_s = os.fspath(root / "recipes" / name)
        self._cache = None
        self.added = None  # the planner's hook for a recipe read

    def get(self, name: str):
        r = self.recipes.get(name)
        if r is not None:
            return r
        if name not in self._names:
            raise _Fallback(name)
        r = self._fresh.get(name)
        if r is None:
            from .recipes.sets import _ParseCache, load_recipe

            if self._cache is None and self._use_cache:
                self._cache = _ParseCache(self.root, self.name)
            # A string path: pathlib's joins cost more than the parse cache's lookup.
            path = f"{self._folder_s}/{name}.toml"
            where = f"recipes/{self.name}/{name}.toml"
            r = self._cache.get(path, self._cache.signature(path), where) if self._cache is not None else None
            if r is None:
                r = load_recipe(Path(path), self.root, where)
        if recipe_flags(r)[1]:
            raise _Fallback("image")
        self.recipes[name] = r
        self.added(r)
        return r


def replanner(rs: _LazySet, lock, host, old_rows: dict, dirty: set[str]):
    """The planner (`graph._Planner`) making only the dirty nodes: every other node its walk
    reaches is the cached plan's row, visited in the order the planner's own walk visits it.
    (graph is imported here, not with this module: a warm plan must not pay for it.)"""
    import types

    from .graph import _Planner

    p = _Planner(rs, lock, host)  # type: ignore[arg-type]
    p.old_rows, p.dirty = old_rows, frozenset(dirty)
    p.keep = types.MethodType(_keep, p)  # type: ignore[method-assign]
    rs.added = types.MethodType(_add_recipe, p)
    return p


def _add_recipe(self, r) -> None:
    """A recipe the walk read: its input declarations, for the nodes made of it."""
    if r.source is None and not r.inputs and not r.patches:
        return  # declares no input
    from .lock import declarations
    from .recipes.model import RecipeSet

    one = RecipeSet(name=self.rs.name, root=self.rs.root, config=self.rs.config, recipes={r.name: r})
    for decl in declarations(one).values():
        self._decls_of.setdefault(decl.recipe, []).append(decl)


def _keep(self, stack: list, nid: str, row) -> None:
    """The planner's walk at a kept node: its cached children first, then its row (as
    `_Planner.instantiate` makes a node after its children)."""
    if nid in self.nodes:
        return
    if row is None:
        row = self.old_rows.get(nid)
        if row is None or row[1] in self.dirty:
            raise _Fallback(nid)
        stack.append((None, nid, row))
        stack.extend(reversed([(None, c, None) for c in row[11] if c not in self.nodes]))
    else:
        self.nodes[nid] = _Reused(row)
