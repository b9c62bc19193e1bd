"""The plan as `planner plan` shows it, and its cache: a warm plan is one read.

Planning 10,000 recipes again when none of them changed costs more than a second (preimages,
their canonical JSON and BLAKE3, node construction); Nix's warm evaluation of the same graph
costs a third of that. What the view needs of a plan is small and store-independent: each
node's id, key, builder, dependencies, run-time edges and whether it is blocked, plus the
stale-lock warning. That table is cached under `$PLANNER_CACHE/plans/`, marshalled, under the
stat signature of every file planning read: the same list, and the same comparison, as the
no-op cache of `planner realise` (`plancache.watched_files`, `plancache.files_unchanged`), so any
change that could move a key is a miss. What depends on the store (valid outputs, recorded
durations) is asked of the store on every plan.
"""

from __future__ import annotations

import marshal
import os
import time
from pathlib import Path
from typing import Optional

import attrs

from .dag import Dag

TABLE_VERSION = 3


@attrs.frozen(slots=True)
class TableNode:
    """What the view needs of one plan node."""

    id: str
    name: str
    variant: str  # its label
    platform: Optional[str]
    key: str
    builder: str
    estimate: float
    deps: dict[str, str]  # mount name -> node id
    requires: list[str]  # run-time edges, resolved for its variant
    impure: bool
    unlocked: list[str]  # its own unlocked inputs
    blocked_by: Optional[str]
    blocked_via: Optional[str]


@attrs.frozen
class PlanTable(Dag):
    """A plan reduced to what `planner plan` shows. Its graph walks are `Plan`'s own
    (`planner.dag`), so `planning.validity` and `dag.critical_path` take a table as they take
    a plan."""

    set: str
    nodes: dict[str, TableNode]  # dependencies first
    targets: tuple[str, ...]
    roots: tuple[str, ...]
    warnings: tuple[str, ...]
    # What it was made from (a table made here, not one read back): the nodes' rows and the
    # lock problems, which `planner.replan` keeps for the next plan.
    rows: list = attrs.field(factory=list, eq=False, repr=False)
    problems: list = attrs.field(factory=list, eq=False, repr=False)


def from_planned(planned) -> PlanTable:
    """The table of a plan (pure)."""
    p = planned.plan
    rows = [light_row(node, p.walk.get(nid, list(node.deps.values()))) for nid, node in p.nodes.items()]
    problems = lock_problems(planned.lock_set, planned.lock)
    return finish(p.set, rows, p.targets, p.roots, warnings(planned.rs, problems), problems)


# A node as the table is made from it (a tuple: marshalled with the table for re-planning):
# what the view shows, plus what `finish` needs across nodes (the names its run-time edges
# resolve, why it cannot be built) and the order the planner's walk visited its children in.
ROW_FIELDS = ("id", "name", "variant", "key", "builder", "estimate", "deps", "requires", "impure", "unlocked",
              "unavailable", "walk")


def light_row(node, walk: list[str]) -> tuple:
    v = node.variant
    return (node.id, node.name, (v.platform, v.cuda, v.host), node.key, node.builder, node.estimate,
            dict(node.deps), list(node.requires), node.impure,
            sorted({ref.decl for ref in node.inputs.values() if not ref.locked}) if node.inputs else [],
            node.unavailable, list(walk))


def finish(set_name: str, rows: list[tuple], targets, roots, warning_lines, problems=()) -> PlanTable:
    """The table from its nodes' rows, dependencies first (pure): each node's run-time edges,
    resolved for its platform and CUDA variant (a node without that axis serves every
    consumer), and what keeps it from being built (its own unlocked input or unavailability,
    or the first found below it: `Plan.blocked`)."""
    from .derivation import Variant

    by_name: dict[str, list[tuple]] = {}
    for row in rows:
        by_name.setdefault(row[1], []).append(row)
    blocked: dict[str, tuple[str, str]] = {}
    nodes = {}
    labels: dict[tuple, str] = {}  # a plan has a few variants and many nodes
    for (nid, name, (platform, cuda, host), key, builder, estimate, deps, req, impure, unlocked, unavailable,
         _walk) in rows:
        found = []
        for r in req:
            for other in by_name.get(r, ()):
                w_platform, w_cuda = other[2][0], other[2][1]
                if w_platform not in (None, platform) and platform is not None:
                    continue
                if w_cuda is not None and cuda is not None and w_cuda != cuda:
                    continue
                found.append(other[0])
        if unavailable:
            b = blocked[nid] = (unavailable, nid)
        elif unlocked:
            b = blocked[nid] = (unlocked[0], nid)
        elif blocked:  # (most plans have nothing blocked: no walk of the deps then)
            b = next((blocked[d] for d in sorted(deps.values()) if d in blocked), None)
            if b is not None:
                blocked[nid] = b
        else:
            b = None
        by, via = b if b is not None else (None, None)
        label = labels.get((platform, cuda, host))
        if label is None:
            label = labels[platform, cuda, host] = Variant(platform, cuda, host).label()
        nodes[nid] = TableNode(nid, name, label, platform, key, builder, estimate,
                               dict(deps), sorted(set(found)) if found else [], impure, list(unlocked), by, via)
    return PlanTable(set_name, nodes, tuple(targets), tuple(roots), tuple(warning_lines), rows, list(problems))


def lock_problems(rs, lock) -> list:
    """`lock.check` of the set, shallow (what the table's stale-lock warning is made from)."""
    from . import lock as lockmod

    return lockmod.check(rs, lock, deep=False)


def warnings(rs, problems) -> list[str]:
    """The table's warnings: a set built with the host's /usr; a stale lock (the keys shown are
    the old lock's)."""
    from .planning import host_root_line

    out = host_root_line(rs)
    stale = [pr for pr in problems if not pr.message.startswith("unlocked")]
    if stale:
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        out.append(f"{rs.lockfile.relative_to(rs.root)} is stale: {stale[0].line()}{more}; the keys shown "
                   f"are the old lock's until `planner lock {rs.name}`")
    return out


def _rows(t: PlanTable) -> dict:
    return {"set": t.set, "targets": list(t.targets), "roots": list(t.roots), "warnings": list(t.warnings),
            "nodes": [(n.id, n.name, n.variant, n.platform, n.key, n.builder, n.estimate, n.deps, n.requires,
                       n.impure, n.unlocked, n.blocked_by, n.blocked_via) for n in t.nodes.values()]}


def _table(blob: bytes) -> PlanTable:
    """The table from its record as written (`write`: marshalled apart, so that a re-plan,
    which does not need the old rows, does not read them)."""
    rows = marshal.loads(blob)
    nodes = {r[0]: TableNode(*r) for r in rows["nodes"]}
    return PlanTable(rows["set"], nodes, tuple(rows["targets"]), tuple(rows["roots"]), tuple(rows["warnings"]))


# -- the cache (I/O) ---------------------------------------------------------------------------

def _path(root: str, set_name: str, target: Optional[str], sandboxed: bool) -> str:
    import zlib

    ident = f"{root}\0{set_name}\0{target or ''}\0{int(sandboxed)}".encode()
    base = os.environ.get("PLANNER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "planner")
    # Named by a checksum only (the set name may be anything a command line holds); the table
    # records whose it is (`_identity`), so a clash is a miss.
    return os.path.join(base, "plans", f"{zlib.crc32(ident):08x}{zlib.adler32(ident):08x}.table")


def _identity(root: str, set_name: str, target: Optional[str], sandboxed: bool) -> tuple:
    from . import __version__
    from .plancache import INSTALL

    # The machine too (a home folder shared between an amd64 and an arm64 machine): a plan's
    # variants carry the host platform; and the install (`plancache._identity`).
    return (TABLE_VERSION, __version__, INSTALL, os.uname().machine, root, set_name, target, bool(sandboxed))


def _load(root_s: str, set_name: str, target: Optional[str], sandboxed: bool) -> Optional[dict]:
    """The cached table's record (its files' signatures, its rows), if it is this plan's."""
    try:
        with open(_path(root_s, set_name, target, sandboxed), "rb") as f:
            data = marshal.loads(f.read())  # load(f) reads the file a few bytes at a time
        if data["identity"] != _identity(root_s, set_name, target, sandboxed):
            return None
        return data
    except (OSError, ValueError, EOFError, TypeError, KeyError, IndexError):
        return None  # no cache, or one this planner cannot read: plan as usual


def cached(root: Path, set_name: str, target: Optional[str], sandboxed: bool) -> Optional[PlanTable]:
    """The cached table, if no file planning read has changed since it was written."""
    from .plancache import files_unchanged

    data = _load(os.path.realpath(root), set_name, target, sandboxed)
    try:
        if data is None or not files_unchanged(data["files"]):
            return None
        return _table(data["table"])
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return None


def save(table: PlanTable, planned, started_ns: int, target: Optional[str], sandboxed: bool) -> None:
    """Cache `table`, planned from files read after `started_ns` (time.time_ns()). Not cached
    when any of them changed since shortly before that: the plan may hold the old content under
    the new signature. Beside it, what re-planning after an edit needs (`planner.replan`)."""
    from .plancache import signatures, watched_files

    rs = planned.rs
    files = signatures(watched_files(rs, rs.lockfile), started_ns, rs.signatures)
    if files is None:
        return
    write(os.fspath(rs.root), rs.name, target, sandboxed, files, table, state_of(planned, table))


def write(root_s: str, set_name: str, target: Optional[str], sandboxed: bool, files: dict, table: PlanTable,
          state: dict) -> None:
    """The table file (what a warm plan reads) and its re-planning state (read only after an
    edit), paired by a stamp: a state is used only with the table written with it."""
    path = _path(root_s, set_name, target, sandboxed)
    stamp = f"{time.time_ns()}.{os.getpid()}"
    data = {"identity": _identity(root_s, set_name, target, sandboxed), "files": files,
            "table": marshal.dumps(_rows(table), 2), "stamp": stamp}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for name, value in ((path + ".state", dict(state, stamp=stamp)), (path, data)):
            tmp = f"{name}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                # Version 2: no back-references. Version 4's table of every shared object cost
                # three times the writing of a freshly made table of 10,000 nodes; reading is
                # no slower, the file a third larger.
                f.write(marshal.dumps(value, 2))
            os.replace(tmp, name)
    except OSError:
        pass  # an unwritable cache only costs the next plan its time


def load_state(root_s: str, set_name: str, target: Optional[str], sandboxed: bool, stamp: str) -> Optional[dict]:
    try:
        with open(_path(root_s, set_name, target, sandboxed) + ".state", "rb") as f:
            state = marshal.loads(f.read())
        return state if state.get("stamp") == stamp else None
    except (OSError, ValueError, EOFError, TypeError, AttributeError):
        return None


def now_ns() -> int:
    return time.time_ns()


# -- what re-planning after an edit starts from (`planner.replan`) ------------------------------

STATE_VERSION = 1


def recipe_flags(r) -> tuple[bool, bool]:
    """(has local files: patches or path sources; is an image covering every variant)."""
    from .builders.registry import builder

    local = (bool(r.patches) or (r.source is not None and r.source.kind == "path")
             or any(s.kind == "path" for s in r.inputs.values()))
    return local, builder(r.build.builder).covers_variants


def state_of(planned, table: PlanTable) -> dict:
    """What re-planning needs of a plan made from scratch: every node's row (the table's
    `rows`), and per recipe (a tuple): its edges (build inputs, then run-time requires), its
    effective axes (None where the walk did not reach it), its flags, its own lock problems
    and its input declarations' ids."""
    from .builders.registry import BUILDERS
    from .lock import declarations

    rs = planned.rs
    cfg = rs.config
    decls = declarations(rs)
    problems: dict[str, list] = {n: [] for n in rs.recipes}
    ids: dict[str, list] = {n: [] for n in rs.recipes}
    for d in decls.values():
        ids[d.recipe].append(d.id)
    for pr in table.problems:
        d = decls.get(pr.id)
        if d is not None:
            problems[d.recipe].append((pr.id, pr.message))
    axes = planned.plan.axes
    recipes = {}
    plain_flags = {kind: (False, b.covers_variants) for kind, b in BUILDERS.items()}
    for n, r in rs.recipes.items():
        a = axes.get(n)
        # (most recipes have no patch and no input: their flags are their builder's)
        flags = recipe_flags(r) if r.patches or r.inputs or r.source is not None else plain_flags[r.build.builder]
        recipes[n] = (r.build_inputs() + r.requires, sorted(a) if a is not None else None, flags,
                      problems[n], ids[n])
    return {"version": STATE_VERSION, "plain": not (cfg.aliases or cfg.profiles or cfg.profile is not None),
            "rows": table.rows, "recipes": recipes}
