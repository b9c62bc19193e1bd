#!/usr/bin/env python3
"""Wall time of a no-op `planner realise` against a bare interpreter start, in one run.

    python3 bench/noop.py [--runs 15]

Writes the small diamond set of shell nodes (tests/support/project.py) into a temporary
folder, realises it once, then alternates `python -m planner.cli realise` (nothing to do) and
`python -c pass` (same interpreter, sys.executable) --runs times each and prints both medians
and the difference: the planner's own no-op cost. Target: <= 100 ms. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.project import Project  # noqa: E402


CPU: dict[str, list[float]] = {}


def timed(argv: list[str], env: dict[str, str], label: str = "") -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds; the child's user+sys CPU seconds go to CPU[label] (robust on a busy machine)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(label, []).append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return wall, p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    env = dict(os.environ)
    env.pop("PLANNER_STORE", None)
    with tempfile.TemporaryDirectory(prefix="bench-noop-") as tmp:
        proj = Project.diamond(Path(tmp))
        proj.lock()
        first = proj.cli("realise", "-j", "2")
        if first.returncode != 0:
            sys.exit(f"first realise failed: {first.stderr}")
        output = first.stdout.strip().splitlines()[-1]
        argv = proj.cli_argv("realise", proj.set, "-j", "2")
        consoles = [c for c in (Path(sys.executable).parent / "planner",) if c.exists()]
        console_argv = ([str(consoles[0])] + argv[3:]) if consoles else None
        timed(argv, env)  # warm the page cache
        noop, bare, console = [], [], []
        for _ in range(args.runs):
            s, p = timed(argv, env, "noop")
            if p.returncode != 0 or p.stdout.strip().splitlines()[-1] != output or "built" in p.stderr:
                sys.exit(f"not a no-op: rc={p.returncode} stdout={p.stdout!r} stderr={p.stderr!r}")
            noop.append(s)
            s, p = timed([sys.executable, "-c", "pass"], env, "bare")
            bare.append(s)
            if console_argv:
                s, p = timed(console_argv, env)
                if p.returncode == 0:
                    console.append(s)
        m_noop, m_bare = statistics.median(noop), statistics.median(bare)
        print(f"runs: {args.runs} each, interpreter {sys.executable}")
        print(f"no-op `python -m planner.cli realise` median: {m_noop * 1000:7.1f} ms  "
              f"(min {min(noop) * 1000:.1f}, max {max(noop) * 1000:.1f})")
        print(f"`python -c pass` median:                      {m_bare * 1000:7.1f} ms  "
              f"(min {min(bare) * 1000:.1f}, max {max(bare) * 1000:.1f})")
        print(f"difference (planner's own no-op cost):        {(m_noop - m_bare) * 1000:7.1f} ms  "
              f"(target <= 100 ms: {'met' if m_noop - m_bare <= 0.1 else 'NOT met'})")
        print(f"ratio no-op / bare interpreter:               x{m_noop / m_bare:.2f}")
        c_noop, c_bare = statistics.median(CPU["noop"]), statistics.median(CPU["bare"])
        print(f"CPU (user+sys) medians: no-op {c_noop * 1000:.1f} ms, bare {c_bare * 1000:.1f} ms, "
              f"difference {(c_noop - c_bare) * 1000:.1f} ms (less sensitive to a busy machine); "
              f"load average {os.getloadavg()[0]:.2f}")
        if console:
            m_c = statistics.median(console)
            print(f"no-op via the `planner` console script median: {m_c * 1000:6.1f} ms "
                  f"(difference {(m_c - m_bare) * 1000:.1f} ms)")
        # Where the time goes: import cost of what a no-op loads.
        p = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], capture_output=True, text=True,
                           env=env, cwd=REPO)
        rows = []
        for line in p.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                parts = [x.strip() for x in line[len("import time:"):].split("|")]
                if parts[1].isdigit():
                    rows.append((int(parts[1]), parts[2]))
        rows.sort(reverse=True)
        print("largest cumulative imports in a no-op (us):",
              ", ".join(f"{name.strip()} {us}" for us, name in rows[:6]))


if __name__ == "__main__":
    main()
