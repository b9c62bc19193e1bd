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

TABLE_VERSION = 1


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


def from_planned(planned) -> PlanTable:
    """The table of a plan (pure)."""
    p = planned.plan
    requires = runtime_edges(p)
    blocked = p.blocked()
    nodes = {}
    for nid, node in p.nodes.items():
        by, via = blocked.get(nid, (None, None))
        nodes[nid] = TableNode(nid, node.name, node.variant.label(), node.variant.platform, node.key, node.builder,
                               node.estimate, dict(node.deps), requires[nid], node.impure,
                               sorted({ref.decl for ref in node.inputs.values() if not ref.locked}), by, via)
    from .planning import host_root_warning

    return PlanTable(p.set, nodes, tuple(p.targets), tuple(p.roots),
                     tuple(host_root_warning(planned) + stale_warnings(planned)))


def runtime_edges(p) -> dict[str, list[str]]:
    """For each node, the nodes its `requires` name, resolved for its platform and CUDA variant
    (a node without that axis serves every consumer)."""
    by_name: dict[str, list] = {}
    for n in p.nodes.values():
        by_name.setdefault(n.name, []).append(n)
    out: dict[str, list[str]] = {}
    for n in p.nodes.values():
        found = []
        for req in n.requires:
            for other in by_name.get(req, []):
                v, w = n.variant, other.variant
                if w.platform not in (None, v.platform) and v.platform is not None:
                    continue
                if w.cuda is not None and v.cuda is not None and w.cuda != v.cuda:
                    continue
                found.append(other.id)
        out[n.id] = sorted(set(found))
    return out


def stale_warnings(planned) -> list[str]:
    """A stale lock: the keys shown are the old lock's."""
    from . import lock as lockmod

    rs = planned.rs
    stale = [pr for pr in lockmod.check(rs, planned.lock, deep=False) if not pr.message.startswith("unlocked")]
    if not stale:
        return []
    more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
    return [f"{rs.lockfile.relative_to(rs.root)} is stale: {stale[0].line()}{more}; the keys shown "
            f"are the old lock's until `planner lock {planned.set_name}`"]


def _rows(t: PlanTable) -> dict:
    return {"set": t.set, "targets": list(t.targets), "roots": list(t.roots), "warnings": list(t.warnings),
            "nodes": [(n.id, n.name, n.variant, n.platform, n.key, n.builder, n.estimate, n.deps, n.requires,
                       n.impure, n.unlocked, n.blocked_by, n.blocked_via) for n in t.nodes.values()]}


def _table(rows: dict) -> PlanTable:
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

    # The machine too (a home folder shared between an amd64 and an arm64 machine): a plan's
    # variants carry the host platform.
    return (TABLE_VERSION, __version__, os.uname().machine, root, set_name, target or "", bool(sandboxed))


def cached(root: Path, set_name: str, target: Optional[str], sandboxed: bool) -> Optional[PlanTable]:
    """The cached table, if no file planning read has changed since it was written."""
    from .plancache import files_unchanged

    root_s = os.path.realpath(root)
    try:
        with open(_path(root_s, set_name, target, sandboxed), "rb") as f:
            data = marshal.loads(f.read())  # load(f) reads the file a few bytes at a time
        if data["identity"] != _identity(root_s, set_name, target, sandboxed) or not files_unchanged(data["files"]):
            return None
        return _table(data["table"])
    except (OSError, ValueError, EOFError, TypeError, KeyError, IndexError):
        return None  # no cache, or one this planner cannot read: plan as usual


def save(table: PlanTable, planned, started_ns: int, target: Optional[str], sandboxed: bool) -> None:
    """Cache `table`, planned from files read after `started_ns` (time.time_ns()). Not cached
    when any of them changed since shortly before that: the plan may hold the old content under
    the new signature."""
    from .plancache import signatures, watched_files

    rs = planned.rs
    files = signatures(watched_files(rs, rs.lockfile), started_ns)
    if files is None:
        return
    root_s = os.fspath(rs.root)
    path = _path(root_s, rs.name, target, sandboxed)
    data = {"identity": _identity(root_s, rs.name, target, sandboxed), "files": files, "table": _rows(table)}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            marshal.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the next plan its time


def now_ns() -> int:
    return time.time_ns()
