"""Image rebuild after an attestation-only lock change, with and without the store's layer cache.

    python3 bench/layer_cache.py [--store STORE] [--rounds N]

STORE: a store the demo was realised into (copied first, never changed); without it the demo is
realised into a scratch store first (minutes). Each round edits base-probe's source (a recipe
of the demo set the image is not built from) and locks, which changes only the image's
`attest`, then realises: once with `cache/layers/` emptied first (what every such rebuild cost
before the cache), once with it; the order alternates by round. Prints the image node's build
seconds and the whole `realise` wall time, min / median / max, and the ratio of medians.
Asserts nothing; run it under `nice -n 19` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def planner(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "planner.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"planner {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-layercache-"))
    try:
        proj, store = work / "proj", work / "store"
        for sub in ("recipes", "patches", "lockfiles"):
            shutil.copytree(REPO / sub, proj / sub)
        if args.store:
            subprocess.run(["cp", "-a", str(args.store), str(store)], check=True)
            shutil.rmtree(store / "plans", ignore_errors=True)
        else:
            planner("--root", str(proj), "--store", str(store), "realise", "demo", "-j", "2")
        times: dict[str, list[tuple[float, float]]] = {"without cache": [], "with cache": []}
        edit = 0
        for r in range(args.rounds):
            order = ["without cache", "with cache"] if r % 2 == 0 else ["with cache", "without cache"]
            for mode in order:
                edit += 1
                (proj / "recipes/demo/src/base-probe/README.bench").write_text(f"edit {edit}\n")
                planner("--root", str(proj), "--store", str(store), "lock", "demo")
                if mode == "without cache":
                    shutil.rmtree(store / "cache" / "layers", ignore_errors=True)
                start = time.monotonic()
                res = json.loads(planner("--root", str(proj), "--store", str(store), "realise", "demo",
                                         "--json").stdout)
                wall = time.monotonic() - start
                built = [n for n in res["nodes"] if n["action"] == "built"]
                assert [n["name"] for n in built] == ["image"], [n["name"] for n in built]
                times[mode].append((built[0]["seconds"], wall))
                print(f"round {r + 1} {mode}: image {built[0]['seconds']:.2f} s, realise {wall:.2f} s "
                      f"({res['digest']})", flush=True)
        for i, what in ((0, "image node build"), (1, "realise wall")):
            meds = {}
            for mode, xs in times.items():
                v = [x[i] for x in xs]
                meds[mode] = statistics.median(v)
                print(f"{what}, {mode}: min {min(v):.2f} / median {meds[mode]:.2f} / max {max(v):.2f} s")
            print(f"{what}: with ÷ without = {meds['with cache'] / meds['without cache']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
