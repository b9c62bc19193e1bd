#!/usr/bin/env python3
"""Scale-out: speed-up of a wide graph of sleeping shell builders on a Dask cluster of N workers.

    python3 bench/scale.py [--workers 1,2,4,8,16] [--width 64] [--seconds 1.0]

The graph is `width` independent leaves that each sleep `seconds` in the sandbox, under one
`top` node that depends on all of them. For each N, a fresh local Dask cluster of N worker
processes (1 thread, `arch_amd64=1`, `MEMORY=4e9` each, own worker store) builds the graph
through `planner.realise.realise`: the planner plans and schedules, workers build in
bubblewrap and push signed entries to Debian's docker-registry on 127.0.0.1, and the planner
fetches the target's output into a fresh store (`--download toplevel`, the default; `--download
all` fetches every leaf too, as before). Wall time is that of the realise call, planning
included, cluster start-up excluded. It prints one row per N:

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


def run_one(tmp: Path, registry: str, n: int, width: int, seconds: float, signer, trusted,
            download: str, oversubscribe: float) -> tuple[float, int]:
    from planner.cache import BinaryCache
    from planner.executors import DaskExecutor
    from tests.support.scale_project import dask_cluster, realise_on, wide_set

    base = tmp / f"n{n}-{download}"
    proj = wide_set(base, width=width, seconds=seconds)
    workers = {f"w{i:02d}": {"arch_amd64": 1, "MEMORY": 4e9} for i in range(n)}
    with dask_cluster(base, workers) as (_cluster, client):
        cache = BinaryCache(f"oci://{registry}/bench-scale-n{n}-{download}", trusted=trusted, signer=signer)
        # PLANNER_BENCH_SANDBOX=off where bubblewrap cannot run (some GPU hosts' VMs).
        ex = DaskExecutor(client, cache, sandboxed=os.environ.get("PLANNER_BENCH_SANDBOX", "on") != "off",
                          oversubscribe=oversubscribe)
        profile = os.environ.get("PLANNER_BENCH_PROFILE") == str(n)  # diagnose one N: cProfile the realise call
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        start, t0 = time.monotonic(), time.time()
        res, nodes = realise_on(proj, ex, store=base / "planner-store", download=download)
        wall = time.monotonic() - start
        if profile:
            import pstats

            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
        if res.failures:
            raise SystemExit(f"N={n}: failed: {res.failures[0]}")
        built = sum(1 for o in nodes.values() if o.action == "built")
        print("    " + phase_summary(ex.timings, n, wall), flush=True)
        print("    " + timeline(ex.timings, t0, wall), flush=True)
        cache.close()
    return wall, built


def timeline(timings: list[dict], t0: float, wall: float) -> str:
    """Where the wall time goes: until the first task starts on a worker (planning, runnable
    checks, submission), the mean idle gap between one worker's consecutive tasks, the last
    task (the `top` join), and from its end to the realise's return."""
    tasks = sorted((t["worker_started"], t["worker_ended"], t.get("worker"), t["node"])
                   for t in timings if "worker_ended" in t)
    if not tasks:
        return "(no timeline)"
    by_worker: dict = {}
    for st, en, w, _ in tasks:
        by_worker.setdefault(w, []).append((st, en))
    gaps = [b[0] - a[1] for runs in by_worker.values() for a, b in zip(runs, runs[1:])]
    last = max(tasks, key=lambda t: t[1])
    top = next(t for t in timings if t["node"] == last[3])
    detail = ", ".join(f"{k} {v:.3f}" for k, v in sorted(top.items())
                       if isinstance(v, float) and not k.endswith(("_started", "_ended", "_at")))
    if "submitted_at" in top:
        detail += (f"; submitted->started {top['worker_started'] - top['submitted_at']:.3f}, "
                   f"ended->result {top['result_at'] - top['worker_ended']:.3f}, "
                   f"submitted {top['submitted_at'] - t0:.2f} s after the start and "
                   f"{top['submitted_at'] - max(t[1] for t in tasks if t[3] != last[3]):.3f} s after the previous "
                   f"task ended")
    return (f"timeline: first task after {tasks[0][0] - t0:.2f} s; mean gap between a worker's tasks "
            f"{sum(gaps) / max(1, len(gaps)):.3f} s; last task {last[3]} {last[1] - last[0]:.2f} s "
            f"({detail}); returned {t0 + wall - last[1]:.2f} s after it")


def phase_summary(timings: list[dict], n: int, wall: float) -> str:
    """Mean seconds per node: planner-side submit/wait/fetch, worker-side phases, and the gap
    between the planner's wait and the worker's own time (Dask dispatch and result delivery);
    `busy` is the workers' task time over N x wall."""
    if not timings:
        return "(no timings)"
    def mean(key):
        vals = [t[key] for t in timings if isinstance(t.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else 0.0
    task = [t["worker_ended"] - t["worker_started"] for t in timings if "worker_ended" in t]
    gap = [t["wait"] - d for t, d in zip([t for t in timings if "worker_ended" in t], task)]
    parts = [f"{k} {mean(k):.3f}" for k in ("submit", "wait", "fetch", "worker_setup", "worker_fetch",
                                            "worker_build", "worker_push")]
    parts.append(f"dispatch+return {sum(gap) / max(1, len(gap)):.3f}")
    parts.append(f"busy {sum(task) / (n * wall):.2f}")
    return "per node: " + ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (1 is measured too)")
    ap.add_argument("--width", type=int, default=0, help="leaves (default: max(32, 8 x the largest N))")
    ap.add_argument("--seconds", type=float, default=1.0, help="sleep of each leaf")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip N=1 (diagnostics only: no speed-up or efficiency is printed)")
    ap.add_argument("--oversubscribe", type=float, default=2.0,
                    help="builds in flight per worker thread (DaskExecutor's oversubscribe)")
    ap.add_argument("--download", choices=["toplevel", "all"], default="toplevel",
                    help="which outputs the planner fetches back (as `planner realise --download`)")
    args = ap.parse_args()
    ns = sorted({*([] if args.no_baseline else [1]), *(int(x) for x in args.workers.split(",") if x.strip())})
    width = args.width or max(32, 8 * max(ns))

    from planner.cache import Signer, TrustedKeys, generate_key
    from tests.support.registry import start_registry, stop

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmpdir:
        tmp = Path(tmpdir)
        proc, registry = start_registry(tmp / "registry")
        try:
            pub = generate_key(tmp / "bench.sec", "bench-1")
            signer, trusted = Signer.from_file(tmp / "bench.sec"), TrustedKeys([pub])
            print(f"wide graph: {width} leaves x {args.seconds:g} s sleep + 1 top node; download {args.download}; oversubscribe {args.oversubscribe:g}; "
                  f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; registry {registry}", flush=True)
            rows = []
            for n in ns:
                wall, built = run_one(tmp, registry, n, width, args.seconds, signer, trusted, args.download,
                                      args.oversubscribe)
                rows.append((n, wall, built))
                print(f"  N={n}: {wall:.2f} s ({built} built; load average {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            stop(proc)
    if args.no_baseline:
        return
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
