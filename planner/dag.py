"""Walks over a derivation graph: closures, what a realise needs, dependents, the critical path.

Pure and standard library only. They read nothing but `nodes` (dependencies first), each
node's `deps` (mount -> node id) and `estimate`, so a full `graph.Plan` and the cached table
of `planner plan` (`plantable.PlanTable`) share them, and a warm plan need not import the
planner that made the plan.
"""

from __future__ import annotations

from typing import Iterable


class Dag:
    """Mixed into a class with `nodes: dict[str, node]` in topological order."""

    __slots__ = ()

    def dependents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for dep in node.deps.values():
                out[dep].append(node.id)
        return out

    def closure(self, ids: Iterable[str]) -> list[str]:
        """Ids of the given nodes and everything they need, in topological order."""
        want: set[str] = set()
        stack = list(ids)
        while stack:
            n = stack.pop()
            if n in want:
                continue
            want.add(n)
            stack.extend(self.nodes[n].deps.values())
        return [n for n in self.nodes if n in want]

    def needed(self, roots: Iterable[str], valid: Iterable[str]) -> set[str]:
        """What realising `roots` has to build or fetch: every node reached from them without
        passing through a valid one. Below a valid output nothing has to be present (an output
        is self-contained; run-time needs are roots of their own)."""
        done, want = set(valid), set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n in want or n in done:
                continue
            want.add(n)
            stack.extend(self.nodes[n].deps.values())
        return want


def critical_path(dag: Dag, durations: dict[str, float]) -> dict[str, float]:
    """For each node, the longest expected time from its start to the end of the build."""
    dependents = dag.dependents()
    remaining: dict[str, float] = {}
    for nid in reversed(list(dag.nodes)):
        node = dag.nodes[nid]
        own = durations.get(nid, node.estimate)
        remaining[nid] = own + max((remaining[d] for d in dependents[nid]), default=0.0)
    return remaining
