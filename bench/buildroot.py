#!/usr/bin/env python3
"""Per-node sandbox start-up in the set's build root against the host's /usr, in one run.

    python3 bench/buildroot.py --store STORE [--runs 30]

STORE holds a realised demo (its build root). Alternates the same bubblewrap sandbox that a
`shell` node gets (sandbox.command: generated /etc, CPU list, /build, cleared environment)
running `python3 -c pass` (the in-sandbox runtime's interpreter start) with `/` = the build
root and with the host's /usr, and prints both medians and their ratio. The issue's bound:
at most 1.10. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    from planner import sandbox

    roots = sorted(p for p in args.store.iterdir() if p.name.endswith("-buildroot-12") and p.is_dir())
    if not roots:
        sys.exit(f"no build root in {args.store}: realise demo --target buildroot into it first")
    times: dict[str, list[float]] = {"build root": [], "host /usr": []}
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) / "b"
        for sub in ("src", "out", "home", "tmp"):
            (build / sub).mkdir(parents=True, exist_ok=True)
        for i in range(args.runs * 2):
            which = "build root" if i % 2 == 0 else "host /usr"
            argv = sandbox.command(["/usr/bin/python3", "-c", "pass"], build_dir=build, mounts=[],
                                   env={"SOURCE_DATE_EPOCH": "0"},
                                   build_root=roots[0] if which == "build root" else None)
            start = time.perf_counter()
            subprocess.run(argv, check=True, env={"PATH": "/usr/bin:/bin"})
            times[which].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>10}: median {v * 1000:.1f} ms over {args.runs} runs")
    print(f"ratio build root / host: {med['build root'] / med['host /usr']:.2f} (bound 1.10)")


if __name__ == "__main__":
    main()
