#!/usr/bin/env python3
"""Scale-out: speed-up of a wide graph of sleeping shell builders on a Dask cluster of N workers.

    python3 bench/scale.py [--workers 1,2,4,8,16] [--width 64] [--seconds 1.0]

The graph is `width` independent leaves that each sleep `seconds` in the sandbox, under one
`top` node that depends on all of them. For each N, a fresh local Dask cluster of N worker
processes (1 thread, `arch_amd64=1`, `MEMORY=4e9` each, own worker store) builds the graph
through the real path: the planner schedules, workers build in bubblewrap, push signed entries
to Debian's docker-registry on 127.0.0.1, and the planner fetches every output back into a
fresh store. Wall time is measured from the first submission to the last output in the
planner's store (cluster start-up excluded). It prints one row per N:

    speed-up   = T(1 worker) / T(N workers)
    efficiency = speed-up / N                       target: >= 0.85

`ideal` is ceil(width / N) * seconds (sleeps only). Nothing is asserted. Use a width of at
least 4 N so the last wave does not dominate, and N no larger than the machine's cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_one(tmp: Path, registry: str, n: int, width: int, seconds: float, signer, trusted) -> tuple[float, int]:
    from planner.cache import BinaryCache
    from planner.executors import DaskExecutor, realise_closure
    from tests.support.scale_project import dask_cluster, prepare, wide_set

    base = tmp / f"n{n}"
    proj = wide_set(base, width=width, seconds=seconds)
    workers = {f"w{i:02d}": {"arch_amd64": 1, "MEMORY": 4e9} for i in range(n)}
    with dask_cluster(base, workers) as (_cluster, client):
        cache = BinaryCache(f"oci://{registry}/bench-scale-n{n}", trusted=trusted, signer=signer)
        p = prepare(proj, store=base / "planner-store")
        # PLANNER_BENCH_SANDBOX=off where bubblewrap cannot run (some GPU hosts' VMs).
        ex = DaskExecutor(client, cache, sandboxed=os.environ.get("PLANNER_BENCH_SANDBOX", "on") != "off")
        start = time.monotonic()
        res = realise_closure(p.plan, p.store, resolver=p.resolver, lock=p.lock, decls=p.decls, executor=ex)
        wall = time.monotonic() - start
        if res.failed:
            raise SystemExit(f"N={n}: failed: {next(iter(res.failed.values()))}")
        built = sum(1 for o in res.nodes.values() if o.action == "built")
        p.close()
        cache.close()
    return wall, built


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (1 is always measured)")
    ap.add_argument("--width", type=int, default=0, help="leaves (default: max(32, 8 x the largest N))")
    ap.add_argument("--seconds", type=float, default=1.0, help="sleep of each leaf")
    args = ap.parse_args()
    ns = sorted({1, *(int(x) for x in args.workers.split(",") if x.strip())})
    width = args.width or max(32, 8 * max(ns))

    from planner.cache import Signer, TrustedKeys, generate_key
    from tests.support.registry import start_registry, stop

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmpdir:
        tmp = Path(tmpdir)
        proc, registry = start_registry(tmp / "registry")
        try:
            pub = generate_key(tmp / "bench.sec", "bench-1")
            signer, trusted = Signer.from_file(tmp / "bench.sec"), TrustedKeys([pub])
            print(f"wide graph: {width} leaves x {args.seconds:g} s sleep + 1 top node; "
                  f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; registry {registry}", flush=True)
            rows = []
            for n in ns:
                wall, built = run_one(tmp, registry, n, width, args.seconds, signer, trusted)
                rows.append((n, wall, built))
                print(f"  N={n}: {wall:.2f} s ({built} built; load average {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            stop(proc)
    t1 = rows[0][1]
    print()
    print(f"{'workers':>7}  {'width':>5}  {'ideal s':>7}  {'wall s':>7}  {'speed-up':>8}  {'efficiency':>10}  target >= 0.85")
    for n, wall, _built in rows:
        ideal = math.ceil(width / n) * args.seconds
        speedup = t1 / wall
        eff = speedup / n
        verdict = "" if n == 1 else ("ok" if eff >= 0.85 else "BELOW")
        print(f"{n:>7}  {width:>5}  {ideal:>7.1f}  {wall:>7.2f}  {speedup:>8.2f}  {eff:>10.2f}  {verdict}")


if __name__ == "__main__":
    main()
