#!/usr/bin/env python3
"""Planning cost on synthetic recipe sets of 1,000, 10,000 and 100,000 shell nodes.

    python3 bench/plan.py [--sizes 1000,10000,100000] [--seed 0] [--profile-size 10000]

For each size: writes a random DAG of `shell` recipes (each node depends on 1-3 uniformly
chosen earlier nodes; one target depends on every sink) into a temporary project, locks it
(no sources, so locking is only the recipes checksum), then in a fresh subprocess times
load_set + lock read + graph.plan with a fixed HostInfo and reports the subprocess's peak RSS.
Prints seconds, µs per node and the growth ratios 10k/1k and 100k/10k (1.0 per 10x = linear
would be a ratio of 10). Each size runs twice: cold (an empty recipe parse cache: every TOML
file parsed and validated) and warm (the parse cache of the first run, as every later plan of
an unchanged or slightly edited set sees it). Then profiles one size with cProfile.
Target: <= 1 s for 10,000 nodes. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from planner import lock as lockmod
from planner.graph import plan
from planner.host import HostInfo
from planner.recipes import load_set
t_import = time.perf_counter()
root, name, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
profile = mode.startswith("profile")

def work():
    ta = time.perf_counter()
    rs = load_set(root, name)
    tb = time.perf_counter()
    lk = lockmod.read(rs.lockfile)
    tc = time.perf_counter()
    p = plan(rs, lk, HostInfo(platform="linux/amd64", packages={}))
    td = time.perf_counter()
    return rs, p, (tb - ta, tc - tb, td - tc)

if profile:
    import cProfile, pstats, io
    pr = cProfile.Profile()
    pr.enable()
    rs, p, parts = work()
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(5)
    print(s.getvalue())
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("cumulative").print_stats(12)
    print(s.getvalue())
else:
    rs, p, parts = work()
    print(json.dumps({"load": parts[0], "lock": parts[1], "plan": parts[2], "import": t_import - t0,
                      "nodes": len(p.nodes),
                      "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_set(root: Path, n: int, seed: int) -> int:
    """A random DAG of n shell recipes plus a target over every sink; returns the DAG's depth."""
    rng = random.Random(seed)
    folder = root / "recipes" / "synth"
    folder.mkdir(parents=True)
    has_dependent = [False] * n
    depth = [0] * n
    for i in range(n):
        k = 0 if i == 0 else rng.randint(1, min(3, i))
        deps = sorted(rng.sample(range(i), k)) if k else []
        for d in deps:
            has_dependent[d] = True
        depth[i] = 1 + max((depth[d] for d in deps), default=0)
        name = f"n{i:06d}"
        lines = [f'name = "{name}"', 'version = "1.0"']
        if deps:
            lines.append("deps = [" + ", ".join(f'"n{d:06d}"' for d in deps) + "]")
        lines += ["", "[build]", 'builder = "shell"', f'script = "echo {name} > $out/{name}.txt"']
        if i % 7 == 0:
            lines += ["", "[build.env]", f'SEED = "{rng.randrange(1 << 30)}"']
        (folder / f"{name}.toml").write_text("\n".join(lines) + "\n")
    sinks = [i for i in range(n) if not has_dependent[i]]
    (folder / "top.toml").write_text(
        'name = "top"\nversion = "1.0"\ndeps = [' + ", ".join(f'"n{i:06d}"' for i in sinks) + ']\n\n'
        '[build]\nbuilder = "shell"\nscript = "true"\n')
    (folder / "set.toml").write_text('target = "top"\nsource-date-epoch = 1700000000\nplatforms = ["linux/amd64"]\nbuild-root = "host"\n')
    return 1 + max(depth)


def lock(root: Path) -> float:
    """Write the set's lockfile. With no sources it holds only the recipes checksum, so it is
    written with planner.lock's own functions without loading the set (`planner lock` would
    load every recipe, which is what is being measured, and is slow: see the profile)."""
    import types

    from planner import lock as lockmod

    t = time.perf_counter()
    folder = root / "recipes" / "synth"
    rs = types.SimpleNamespace(name="synth", root=root, folder=folder, recipes={})
    lk = lockmod.Lock(set="synth", recipes=lockmod.recipes_digest(rs), source_date_epoch=1700000000, inputs={})
    lockmod.write_atomic(root / "lockfiles" / "synth.lock", lockmod.to_toml(lk))
    return time.perf_counter() - t


def child(root: Path, mode: str = "plain") -> str:
    import os

    argv = [sys.executable, "-c", CHILD, str(root), "synth", mode]
    env = dict(os.environ, PLANNER_CACHE=str(root / ".cache"))
    p = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env)
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-3:])
        raise RuntimeError(tail)
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-size", type=int, default=10000)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        roots = {}
        print(f"{'nodes':>7} {'depth':>5} {'lock s':>7} {'load s':>7} {'plan s':>7} {'total s':>8} "
              f"{'us/node':>8} {'peak MiB':>9}")
        for n in sizes:
            root = Path(tmp) / f"p{n}"
            t = time.perf_counter()
            depth = write_set(root, n, args.seed)
            write_s = time.perf_counter() - t
            lock_s = lock(root)
            roots[n] = root
            try:
                r = json.loads(child(root))
            except RuntimeError as exc:
                print(f"{n:>7} {depth:>5} {lock_s:7.2f}  FAILED: {exc}")
                continue
            total = r["load"] + r["lock"] + r["plan"]
            r["total"] = total
            results[n] = r
            try:
                rc = json.loads(child(root, "cached"))
                r["cached_total"] = rc["load"] + rc["lock"] + rc["plan"]
                r["cached_load"] = rc["load"]
            except RuntimeError:
                r["cached_total"] = r["cached_load"] = float("nan")
            print(f"{n:>7} {depth:>5} {lock_s:7.2f} {r['load']:7.3f} {r['plan']:7.3f} {total:8.3f} "
                  f"{total / n * 1e6:8.1f} {r['maxrss_mib']:9.1f}   (write {write_s:.1f}s, "
                  f"lock read {r['lock'] * 1000:.1f} ms, import {r['import'] * 1000:.0f} ms, {r['nodes']} plan nodes)")
            print(f"{'':>7} {'':>5} {'':>7} {r['cached_load']:7.3f} {'':>7} {r['cached_total']:8.3f} "
                  f"{r['cached_total'] / n * 1e6:8.1f}   <- warm: recipes from the parse cache")
        for a, b in zip(sizes, sizes[1:]):
            if a in results and b in results:
                ra, rb = results[a], results[b]
                print(f"growth {b // 1000}k/{a // 1000}k: total x{rb['total'] / ra['total']:.2f} "
                      f"(load x{rb['load'] / ra['load']:.2f}, plan x{rb['plan'] / ra['plan']:.2f}) "
                      f"for x{b / a:.0f} nodes; peak RSS x{rb['maxrss_mib'] / ra['maxrss_mib']:.2f}")
        for a, b in zip(sizes, sizes[1:]):
            if a in results and b in results:
                print(f"growth {b // 1000}k/{a // 1000}k warm: "
                      f"x{results[b]['cached_total'] / results[a]['cached_total']:.2f}")
        if 10000 in results:
            r = results[10000]
            t = r["total"]
            w = r["cached_total"]
            print(f"target <= 1 s for 10,000 nodes: cold {t:.3f} s ({'met' if t <= 1 else 'NOT met'}: "
                  f"load_set {r['load'] / t:.0%}, graph.plan {r['plan'] / t:.0%}); "
                  f"warm {w:.3f} s ({'met' if w <= 1 else 'NOT met'})")
        if args.profile_size in roots:
            print(f"\ncProfile of load_set + lock read + plan, {args.profile_size} nodes:")
            try:
                print(child(roots[args.profile_size], "profile"))
                print(f"cProfile again, {args.profile_size} nodes, warm:")
                print(child(roots[args.profile_size], "profile"))
            except RuntimeError as exc:
                print(f"profile failed: {exc}")


if __name__ == "__main__":
    main()
