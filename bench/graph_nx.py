#!/usr/bin/env python3
"""networkx vs the hand-written graph code, on the random DAG shape of bench/plan.py.

    python3 bench/graph_nx.py [--nodes 10000] [--seed 0]

Measures, in one process and one run: the import of networkx; cycle search (recipes.find_cycle
vs networkx.find_cycle on a DiGraph built from the same map); the critical path (a
hand-written longest-path pass in topological order vs networkx.dag_longest_path); and
topological generations (networkx only). Prints seconds and ratios; asserts nothing. Decides
where the planner uses networkx: not on the planning path that every `plan`/`realise` pays.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    names = [f"n{i:05d}" for i in range(args.nodes)]
    edges = {n: sorted({names[rnd.randrange(i)] for _ in range(rnd.randint(1, 3))}) if i else []
             for i, n in enumerate(names)}
    secs = {n: rnd.uniform(1, 60) for n in names}

    from planner.recipes import find_cycle

    t = time.perf_counter()
    assert find_cycle(edges) is None
    hand_cycle = time.perf_counter() - t

    t = time.perf_counter()
    import networkx as nx
    nx_import = time.perf_counter() - t

    t = time.perf_counter()
    g = nx.DiGraph()
    g.add_nodes_from(names)
    for n, ds in edges.items():
        for d in ds:
            g.add_edge(d, n)
    nx_build = time.perf_counter() - t
    t = time.perf_counter()
    try:
        nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        pass
    nx_cycle = time.perf_counter() - t

    t = time.perf_counter()
    finish: dict[str, float] = {}
    for n in names:  # topological already, as Plan.nodes is
        finish[n] = secs[n] + max((finish[d] for d in edges[n]), default=0.0)
    hand_cp = time.perf_counter() - t

    t = time.perf_counter()
    for n in names:
        for d in edges[n]:
            g.edges[d, n]["w"] = secs[n]
    nx.dag_longest_path(g, weight="w")
    nx_cp = time.perf_counter() - t

    t = time.perf_counter()
    gens = list(nx.topological_generations(g))
    nx_gens = time.perf_counter() - t

    print(f"{args.nodes} nodes, {sum(map(len, edges.values()))} edges, {len(gens)} generations")
    print(f"import networkx            {nx_import * 1000:8.1f} ms")
    print(f"cycle search  hand {hand_cycle * 1000:7.1f} ms   networkx {nx_cycle * 1000:7.1f} ms "
          f"(+ {nx_build * 1000:.1f} ms to build the DiGraph)  ratio {(nx_cycle + nx_build) / hand_cycle:.1f}x")
    print(f"critical path hand {hand_cp * 1000:7.1f} ms   networkx {nx_cp * 1000:7.1f} ms  ratio {nx_cp / hand_cp:.1f}x")
    print(f"generations   networkx {nx_gens * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
