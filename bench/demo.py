"""Cold `planner realise demo` on this machine: wall time, and the share spent in nvcc.

Realises the demo into an empty store (inputs fetched through pip's configured index and
cache, as a user with local package mirrors would), then reports the wall time against the
3-minute target and how much of the build time went to the CUDA nodes (nvcc).

Usage: python bench/demo.py [-j N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="planner-bench-demo-") as tmp:
        store = Path(tmp) / "store"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "planner.cli", "--root", str(REPO), "--store", str(store),
                               "realise", "demo", "-j", str(args.jobs), "--json"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"realise failed:\n{proc.stderr}")
        result = json.loads(proc.stdout)
        t1 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "planner.cli", "--root", str(REPO), "--store", str(store),
                        "realise", "demo"], capture_output=True, check=True)
        noop = time.perf_counter() - t1
    nodes = result["nodes"]
    build_total = sum(n["seconds"] for n in nodes)
    nvcc = sum(n["seconds"] for n in nodes if n["name"] == "int4qat")
    by_name: dict[str, float] = {}
    for n in nodes:
        by_name[n["name"]] = by_name.get(n["name"], 0.0) + n["seconds"]
    print(f"cold realise of demo, -j {args.jobs}: {wall:.1f} s wall (target <= 180 s: {wall / 180:.2f} of budget)")
    print(f"  {len(nodes)} nodes; summed build time {build_total:.1f} s; fetch + plan + overhead "
          f"{max(0.0, wall - build_total / max(1, args.jobs)):.1f} s (approx.)")
    print(f"  nvcc (int4qat nodes): {nvcc:.1f} s = {100 * nvcc / build_total:.0f}% of build time, "
          f"{100 * nvcc / wall:.0f}% of wall")
    for name, secs in sorted(by_name.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<16} {secs:6.1f} s")
    print(f"  then a no-op realise: {noop * 1000:.0f} ms")
    if result.get("digest"):
        print(f"  image index digest {result['digest']}")


if __name__ == "__main__":
    main()
