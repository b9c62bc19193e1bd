"""Store path sizes and closure sizes, like `nix path-info -rS`.

A path's size counts each file's bytes once (hard links once) plus symlink targets; a node's
closure is the node's output and the outputs of everything it was built from, each counted
once. Pure over the run record; the one I/O function measures a path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import attrs

from .runs import RunRecord


@attrs.frozen
class NodeSize:
    id: str
    path: str
    size: int  # this output alone
    closure: int  # this output and every output it was built from
    closure_paths: int  # how many outputs that closure holds


def path_size(path: Path) -> int:
    """Bytes of a store path: regular files (hard links once) and symlink targets."""
    total = 0
    seen: set[tuple[int, int]] = set()
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not os.path.isdir(path) or os.path.islink(path):
        return st.st_size
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def closure_of(node: str, deps: dict[str, Iterable[str]]) -> list[str]:
    """The node and everything below it, each once."""
    out: list[str] = []
    seen: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        out.append(n)
        stack.extend(deps.get(n, ()))
    return out


def node_sizes(record: RunRecord, measure: Callable[[Path], int] = path_size) -> list[NodeSize]:
    """Per node of a run record with an output in the store: its size and closure size."""
    paths = {n.id: n.path for n in record.nodes if n.path}
    deps = {nid: list(d.values()) for nid, d in record.deps.items()}
    own = {nid: measure(Path(p)) for nid, p in paths.items()}
    out = []
    for nid, p in paths.items():
        below = {paths[d] for d in closure_of(nid, deps) if d in paths}
        by_path = {paths[d]: own[d] for d in paths if paths[d] in below}
        out.append(NodeSize(nid, p, own[nid], sum(by_path.values()), len(by_path)))
    return out


def human(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, like nix path-info -h)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"
