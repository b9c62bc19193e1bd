#!/usr/bin/env python3
"""Scheduler quality: makespan of random 200-node DAGs of known durations against the lower bound.

    python3 bench/schedule.py [--nodes 200] [--jobs 2,8] [--seed 1]

Each node is a shell builder that sleeps a known 0.05-0.3 s (declared as its `estimate`, so
the critical-path priority knows it); a `top` target depends on every sink. For each -j it
realises the set into a fresh store through the Python API and measures the makespan from the
scheduler's start (the "plan" progress event) to the end of the realise. It prints

    raw ratio      = makespan / max(critical path, total work / workers)   (sleeps only)
    adjusted ratio = makespan / max(critical path', total work' / workers, total overhead / cores)

where ' adds the per-node overhead (sandbox start, runtime, hashing, store commit) measured
separately by realising 40 independent `true` nodes with -j 1, and a third ratio whose bound
uses each node's own time inside build() in the same run (overhead under contention at -j N
included), with the workers' busy fraction. Target: <= 1.05. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.project import Project  # noqa: E402


def random_dag(n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, float]]:
    rng = random.Random(seed)
    deps: dict[str, list[str]] = {}
    dur: dict[str, float] = {}
    names = [f"n{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        k = rng.randint(0, min(3, i))
        deps[name] = sorted(rng.sample(names[:i], k))
        dur[name] = rng.randint(50, 300) / 1000
    used = {d for ds in deps.values() for d in ds}
    deps["top"] = [x for x in names if x not in used]
    dur["top"] = 0.0
    return deps, dur


def write(tmp: Path, deps: dict[str, list[str]], dur: dict[str, float]) -> Project:
    proj = Project.empty(tmp, target="top")
    for name, ds in deps.items():
        ms = int(round(dur[name] * 1000))
        script = f"sleep {dur[name]:.3f}\necho {name} > $out/{name}.txt" if ms else f"echo {name} > $out/{name}.txt"
        proj.recipe(name, deps=ds, script=script, estimate=f"{max(ms, 1)}ms")
    proj.lock()
    return proj


def critical_path(deps: dict[str, list[str]], dur: dict[str, float]) -> float:
    finish: dict[str, float] = {}
    for name in deps:  # written in topological order (top last)
        finish[name] = dur[name] + max((finish[d] for d in deps[name]), default=0.0)
    return max(finish.values())


def realise_timed(proj: Project, jobs: int) -> tuple[float, float, list]:
    from planner.realise import RealiseOptions, realise

    marks: dict[str, float] = {}

    def progress(kind: str, data: object) -> None:
        if kind == "plan":
            marks["start"] = time.perf_counter()

    t0 = time.perf_counter()
    res = realise(proj.root, proj.set, proj.store, RealiseOptions(jobs=jobs, use_plan_cache=False),
                  progress=progress)
    end = time.perf_counter()
    if res.failures:
        sys.exit("build failed: " + res.failures[0])
    return end - marks["start"], end - t0, res.nodes


def overhead_per_node(tmp: Path, count: int = 40) -> float:
    proj = Project.empty(tmp, target="top")
    names = [f"o{i:02d}" for i in range(count)]
    for name in names:
        proj.recipe(name, script=f"echo {name} > $out/{name}.txt")
    proj.recipe("top", deps=names, script="true > $out/x")
    proj.lock()
    makespan, _, _ = realise_timed(proj, 1)
    return makespan / (count + 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--jobs", default="2,8")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    deps, dur = random_dag(args.nodes, args.seed)
    total = sum(dur.values())
    cp = critical_path(deps, dur)
    with tempfile.TemporaryDirectory(prefix="bench-sched-") as tmp:
        over = overhead_per_node(Path(tmp) / "overhead")
        print(f"{args.nodes} nodes + top, {sum(len(d) for d in deps.values())} edges, seed {args.seed}, {cores} cores")
        print(f"total work {total:.2f} s, critical path {cp:.2f} s (sleeps only)")
        print(f"per-node overhead (sandbox + runtime + store), measured with -j 1 on 40 `true` nodes: "
              f"{over * 1000:.1f} ms")
        dur_o = {k: v + over for k, v in dur.items()}
        total_o, cp_o = sum(dur_o.values()), critical_path(deps, dur_o)
        print(f"{'-j':>3} {'makespan s':>10} {'bound s':>8} {'raw':>6} {'bound+ovh1 s':>12} {'adj1':>6} "
              f"{'ovh in run ms':>13} {'bound+ovhN s':>12} {'adjN':>6} {'util':>6}  wall s")
        for j in [int(x) for x in args.jobs.split(",")]:
            proj = write(Path(tmp) / f"j{j}", deps, dur)
            makespan, wall, nodes = realise_timed(proj, j)
            if {n.action for n in nodes} != {"built"}:
                sys.exit(f"expected every node built, got {sorted({n.action for n in nodes})}")
            bound = max(cp, total / j)
            bound_o = max(cp_o, total_o / j, over * len(dur) / cores)
            # Per-node overhead as it was in this very run (contention included): each node's
            # time inside build() less its sleep.
            actual = {n.id: n.seconds for n in nodes}
            bound_n = max(critical_path(deps, actual), sum(actual.values()) / j)
            ovh_n = (sum(actual.values()) - total) / len(actual)
            util = sum(actual.values()) / (makespan * j)
            print(f"{j:>3} {makespan:10.2f} {bound:8.2f} {makespan / bound:6.3f} {bound_o:12.2f} "
                  f"{makespan / bound_o:6.3f} {ovh_n * 1000:13.1f} {bound_n:12.2f} {makespan / bound_n:6.3f} "
                  f"{util:6.3f}  {wall:.2f}")
        print("raw: sleeps only; adj1: + the -j 1 overhead per node; adjN: + each node's overhead as measured "
              "in the same run (sandbox contention at -j N charged to the node, not the scheduler); "
              "util: worker busy fraction. Target ratio <= 1.05.")


if __name__ == "__main__":
    main()
