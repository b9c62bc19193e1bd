#!/usr/bin/env python3
"""planner against Nix on Nix's home ground: the same DAG, both tools, interleaved, one run.

    python3 bench/vs_nix.py [--only noop,build,plan,verify,hash] [--runs N] [--quick]
                            [--anchors DIR] [--plan-sizes 10000,100000] [--nix-plan-max 10000]

Not part of CI: it needs Debian's Nix (`apt-get install -y nix-bin`) run as root in
single-user mode with the options of the shared anchors (`ANCHORS/nix/lib.sh options`: no
substituters, sandbox on, the host's /bin/sh bound in). Without Nix it says so, then measures
the planner side alone (absolute times, no ratios).

The DAG is the anchors' one: `ANCHORS/nix/gen.py N WIDTH --salt S` for Nix and
`ANCHORS/gen_planner.py N WIDTH ROOT --salt S` for planner (one `shell` recipe per node plus
`top`), so both build N + 1 identical trivial steps. Every measure alternates the two tools
(which goes first alternates too) and prints planner's and Nix's min/median/max and the ratio
of medians (planner / Nix: below 1 means planner is faster), with the CPU time (user + sys of
the process and its children, from wait4) beside the wall time, since the machine may be
shared. Measures:

  noop    `planner realise` vs `nix-build` with all 201 nodes valid, fresh process each
  build   cold sandboxed build of a new-salt DAG, -j 2: wall per node (N + 1 nodes)
  plan    plan/instantiate 10k nodes (WIDTH 100): cold (new salt: no parse cache, no .drv
          files yet), warm (the same files again), one edited (node 5's script changed: ~96%
          of the DAG builds on it) and top edited (node N-10: a few build on it);
          `planner plan` vs `nix-instantiate`; then planner alone up to the largest
          --plan-sizes with peak RSS (linearity)
  verify  `planner store verify` vs `nix-store --verify --check-contents`, on stores with the
          same number of entries (the planner store is built to Nix's path count)
  hash    `planner hash DIR` vs `nix-hash --type sha256 DIR`, 1 GiB in 80 files

Everything it creates is removed at the end: its temp folder, and exactly the Nix store paths
its DAGs made (never a global garbage collection). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOALS = {  # planner / Nix, the goals
    "noop": 1.0, "build per node": 0.75, "plan 10k warm": 1.0, "verify": 1.0, "hash": 1 / 1.9,
}
ABSOLUTE_GOALS = {"plan 10k cold": 1.0}  # seconds, the planner's median: the one absolute goal


class Sample:
    __slots__ = ("wall", "cpu", "maxrss_mib", "rc", "out", "err")

    def __init__(self, wall: float, cpu: float, maxrss_mib: float, rc: int, out: str, err: str) -> None:
        self.wall, self.cpu, self.maxrss_mib, self.rc, self.out, self.err = wall, cpu, maxrss_mib, rc, out, err


def run(argv: list[str], *, env: dict | None = None, cwd: Path | None = None, check: bool = True) -> Sample:
    """Run argv once; wall time, and CPU and peak RSS of it and its waited-for children."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        _pid, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        s = Sample(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, p.returncode,
                   out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if check and s.rc != 0:
        sys.exit(f"failed ({s.rc}): {' '.join(argv)}\n{s.out[-2000:]}\n{s.err[-2000:]}")
    return s


# -- the two tools ---------------------------------------------------------------------------

class Nix:
    def __init__(self, anchors: Path, tmp: Path) -> None:
        self.gen = anchors / "nix" / "gen.py"
        self.opts = subprocess.run(["bash", str(anchors / "nix" / "lib.sh"), "options"], check=True,
                                   capture_output=True, text=True).stdout.split("\n")[:-1]
        self.env = dict(os.environ, NIX_REMOTE="local")
        self.tmp = tmp
        self.tops: list[str] = []

    @staticmethod
    def missing() -> str | None:
        need = [t for t in ("nix-build", "nix-instantiate", "nix-store", "nix-hash") if not shutil.which(t)]
        if need:
            return f"Nix is not installed ({', '.join(need)} missing): apt-get install -y nix-bin"
        if os.geteuid() != 0:
            return "Nix runs here as root in single-user mode (a local store in /nix): run as root"
        return None

    def dag(self, n: int, width: int, salt: str) -> Path:
        f = self.tmp / f"dag-{n}-{salt}.nix"
        subprocess.run([sys.executable, str(self.gen), str(n), str(width), "--salt", salt, "-o", str(f)], check=True)
        # Record the top .drv first (read-only: writes nothing), so cleanup finds everything.
        top = run(["nix-instantiate", *self.opts, "--readonly-mode", str(f)], env=self.env).out.strip()
        self.tops.append(top)
        return f

    def edit(self, f: Path, node: int) -> None:
        """Change one node (its index, which its output records): it and all above it change."""
        text = f.read_text()
        old = f'mk "anchor-n{node}" {node} ['
        assert old in text, old
        f.write_text(text.replace(old, f'mk "anchor-n{node}" {node + 1_000_000} [', 1))
        top = run(["nix-instantiate", *self.opts, "--readonly-mode", str(f)], env=self.env).out.strip()
        self.tops.append(top)

    def build(self, f: Path, jobs: int = 2) -> Sample:
        return run(["nix-build", *self.opts, f"-j{jobs}", "--no-out-link", str(f)], env=self.env)

    def instantiate(self, f: Path, readonly: bool = False) -> Sample:
        return run(["nix-instantiate", *self.opts, *(["--readonly-mode"] if readonly else []), str(f)], env=self.env)

    def verify(self) -> Sample:
        return run(["nix-store", "--verify", "--check-contents"], env=self.env)

    def store_paths(self) -> int:
        p = run(["nix", "--extra-experimental-features", "nix-command", "path-info", "--all"], env=self.env)
        return len(p.out.split())

    def valid_tops(self) -> list[str]:
        return [t for t in self.tops if os.path.exists(t)]

    def hash(self, d: Path) -> Sample:
        return run(["nix-hash", "--type", "sha256", str(d)], env=self.env)

    def cleanup(self) -> int:
        """Delete exactly the paths this run's DAGs created: outputs, then .drv files, referrers first."""
        tops = self.valid_tops()
        if not tops:
            return 0
        # In chunks: an edited 10k DAG's .drv files overflow one command line.
        drvs = list(dict.fromkeys(p for i in range(0, len(tops), 500)
                                  for p in run(["nix-store", "-qR", *tops[i:i + 500]], env=self.env).out.split()))
        outs = [p for p in dict.fromkeys(q for i in range(0, len(drvs), 2000)
                                         for q in run(["nix-store", "-q", "--outputs", *drvs[i:i + 2000]],
                                                      env=self.env).out.split())
                if os.path.exists(p)]
        doomed = outs[::-1] + drvs[::-1]
        for i in range(0, len(doomed), 2000):
            run(["nix-store", "--delete", *doomed[i:i + 2000]], env=self.env, check=False)
        self.tops.clear()
        return len(doomed)


class Planner:
    def __init__(self, anchors: Path, tmp: Path, tree: Path | None = None) -> None:
        self.gen = anchors / "gen_planner.py"
        exe = Path(sys.executable).parent / "planner"
        self.argv = [str(exe)] if exe.exists() and tree is None else [sys.executable, "-m", "planner.entry"]
        self.env = dict(os.environ, PLANNER_CACHE=str(tmp / "parse-cache"))
        self.env.pop("PLANNER_STORE", None)
        self.tree = tree or REPO
        if tree is not None:  # another checkout (say, main before a change), same interpreter
            self.env["PYTHONPATH"] = str(tree)
        # As installed: with bytecode. An environment that forbids writing it (some shells set
        # PYTHONDONTWRITEBYTECODE) makes every run compile every module it imports.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(self.tree / "planner")], check=False,
                       stdout=subprocess.DEVNULL, env=self.env)
        self.tmp = tmp

    def dag(self, n: int, width: int, salt: str) -> Path:
        root = self.tmp / f"planner-{n}-{salt}"
        subprocess.run([sys.executable, str(self.gen), str(n), str(width), str(root), "--salt", salt],
                       check=True, stdout=subprocess.DEVNULL)
        # Nix builds these with the host's /bin/sh; planner likewise with the host's /usr (a set
        # without a build root must say so since every set has one by default).
        set_toml = root / "recipes" / "synth" / "set.toml"
        if "build-root" not in set_toml.read_text():
            with open(set_toml, "a") as f:
                f.write('build-root = "host"\n')
        self.lock(root)
        return root

    LOCK = """
import sys, types
from pathlib import Path
from planner import lock as lockmod
root = Path(sys.argv[1])
rs = types.SimpleNamespace(name="synth", root=root, folder=root / "recipes" / "synth", recipes={})
lk = lockmod.Lock(set="synth", recipes=lockmod.recipes_digest(rs), source_date_epoch=1700000000, inputs={})
lockmod.write_atomic(root / "lockfiles" / "synth.lock", lockmod.to_toml(lk))
"""

    def lock(self, root: Path) -> None:
        """The lockfile (no sources: only the recipes checksum), written without loading the
        set, so that no parse cache is filled before a cold measurement; by the planner measured."""
        subprocess.run([sys.executable, "-c", self.LOCK, str(root)], check=True, env=self.env)

    def cli(self, root: Path, store: Path, *args: str, check: bool = True) -> Sample:
        return run([*self.argv, "--root", str(root), "--store", str(store), *args], env=self.env, cwd=root,
                   check=check)

    def realise(self, root: Path, store: Path, jobs: int = 2) -> Sample:
        return self.cli(root, store, "realise", "synth", "-j", str(jobs))

    def plan(self, root: Path, store: Path) -> Sample:
        return self.cli(root, store, "plan", "synth")

    @staticmethod
    def edit(root: Path, node: int) -> None:
        """The same change as `Nix.edit`: the node's index in the line its script writes."""
        f = root / "recipes" / "synth" / f"n{node}.toml"
        text = f.read_text()
        old = f'node {node} salt'
        assert old in text, old
        f.write_text(text.replace(old, f'node {node + 1_000_000} salt', 1))


# -- reporting -------------------------------------------------------------------------------

ROWS: list[tuple] = []


def fmt(v: float, unit: str) -> str:
    return f"{v * 1000:.1f} ms" if unit == "ms" else f"{v:.3f} s" if unit == "s" else f"{v:.1f} {unit}"


def report(name: str, ours: list[float], theirs: list[float] | None, unit: str, *,
           cpu: tuple[list[float], list[float] | None] | None = None, note: str = "") -> None:
    mo = statistics.median(ours)
    line = f"{name:<26} planner {fmt(mo, unit):>10} (min {fmt(min(ours), unit)}, max {fmt(max(ours), unit)})"
    ratio = None
    if theirs:
        mt = statistics.median(theirs)
        ratio = mo / mt
        line += f" | Nix {fmt(mt, unit):>10} (min {fmt(min(theirs), unit)}, max {fmt(max(theirs), unit)})"
        line += f" | ratio {ratio:.2f}x (min/min {min(ours) / min(theirs):.2f}, max/max {max(ours) / max(theirs):.2f})"
        goal = GOALS.get(name)
        if goal is not None:
            line += f" goal <= {goal:.2f}x: {'met' if ratio <= goal else 'NOT met'}"
    if name in ABSOLUTE_GOALS:
        line += f" goal <= {ABSOLUTE_GOALS[name]:g} s: {'met' if mo <= ABSOLUTE_GOALS[name] else 'NOT met'}"
    if cpu and cpu[1]:
        line += f" | CPU ratio {statistics.median(cpu[0]) / statistics.median(cpu[1]):.2f}x"
    if cpu:  # the steadier figure on a loaded machine: the medians themselves, and the planner's spread
        c = cpu[0]
        line += f" | CPU planner {fmt(statistics.median(c), unit)} ({fmt(min(c), unit)}-{fmt(max(c), unit)})"
        if cpu[1]:
            line += f" Nix {fmt(statistics.median(cpu[1]), unit)}"
    if note:
        line += f" | {note}"
    print(line, flush=True)
    ROWS.append((name, mo, statistics.median(theirs) if theirs else None, ratio, unit))


def interleave(runs: int, first, second) -> None:
    """Call first() and second() `runs` times each, alternating which goes first."""
    for i in range(runs):
        if i % 2 == 0:
            first(), second()
        else:
            second(), first()


# -- measures --------------------------------------------------------------------------------

def measure_noop(pl: Planner, nix: Nix | None, runs: int, salt: str) -> tuple[Path, Path]:
    root = pl.dag(200, 20, salt)
    store = pl.tmp / "store-noop"
    first = pl.realise(root, store)
    output = first.out.strip().splitlines()[-1]
    f = None
    if nix:
        f = nix.dag(200, 20, salt)
        nix.build(f)
    ours, theirs, c_ours, c_theirs = [], [], [], []

    def p() -> None:
        s = pl.realise(root, store)
        if s.out.strip().splitlines()[-1] != output or "built" in s.err:
            sys.exit(f"planner: not a no-op: {s.out!r} {s.err!r}")
        ours.append(s.wall)
        c_ours.append(s.cpu)

    def n() -> None:
        s = nix.build(f)
        theirs.append(s.wall)
        c_theirs.append(s.cpu)

    p()  # the first no-op run rewrites nothing, but fills the page cache like Nix's did
    ours.clear(), c_ours.clear()
    if nix:
        interleave(runs, p, n)
    else:
        for _ in range(runs):
            p()
    report("noop", ours, theirs or None, "ms", cpu=(c_ours, c_theirs or None),
           note="201 built nodes, fresh process")
    return root, store


def measure_build(pl: Planner, nix: Nix | None, runs: int, salt: str, store: Path, n: int = 200) -> None:
    ours, theirs, c_ours, c_theirs = [], [], [], []
    for r in range(runs):
        root = pl.dag(n, 20, f"{salt}-b{r}")
        f = nix.dag(n, 20, f"{salt}-b{r}") if nix else None

        def p() -> None:
            s = pl.realise(root, store)
            if f"{n + 1} built" not in s.err:
                sys.exit(f"planner: expected {n + 1} builds: {s.err[-500:]}")
            ours.append(s.wall / (n + 1))
            c_ours.append(s.cpu / (n + 1))

        def x() -> None:
            s = nix.build(f)
            theirs.append(s.wall / (n + 1))
            c_theirs.append(s.cpu / (n + 1))

        for g in ((p, x) if r % 2 == 0 else (x, p)) if nix else (p,):
            subprocess.run(["sync"])
            g()
    report("build per node", ours, theirs or None, "ms", cpu=(c_ours, c_theirs or None),
           note=f"cold sandboxed build of {n + 1} trivial nodes, -j 2, wall / node")


def measure_plan(pl: Planner, nix: Nix | None, runs: int, salt: str, sizes: list[int], nix_max: int) -> None:
    store = pl.tmp / "store-plan"
    for n in sizes:
        cold, warm, c_cold, c_warm, rss = [], [], [], [], []
        ncold, nwarm, nro, c_ncold, c_nwarm = [], [], [], [], []
        edited, c_edited, nedited, c_nedited = [], [], [], []
        tedited, c_tedited, ntedited, c_ntedited = [], [], [], []
        top = n - 10  # a node near the top of the DAG: few recipes build on it
        with_nix = nix is not None and n <= nix_max
        k = runs if n <= 10000 else 1
        for r in range(k):
            root = pl.dag(n, 100, f"{salt}-p{n}-{r}")
            f = nix.dag(n, 100, f"{salt}-p{n}-{r}") if with_nix else None

            def p() -> None:
                s = pl.plan(root, store)
                cold.append(s.wall), c_cold.append(s.cpu), rss.append(s.maxrss_mib)
                s = pl.plan(root, store)
                warm.append(s.wall), c_warm.append(s.cpu), rss.append(s.maxrss_mib)
                # One recipe edited low in the DAG: it and almost every node above it re-planned.
                pl.edit(root, 5)
                time.sleep(0.2)
                s = pl.plan(root, store)
                edited.append(s.wall), c_edited.append(s.cpu), rss.append(s.maxrss_mib)
                # One recipe edited near the top: it and the few above it re-planned.
                pl.edit(root, top)
                time.sleep(0.2)
                s = pl.plan(root, store)
                tedited.append(s.wall), c_tedited.append(s.cpu), rss.append(s.maxrss_mib)

            def x() -> None:
                nro.append(nix.instantiate(f, readonly=True).wall)
                subprocess.run(["sync"])
                s = nix.instantiate(f)
                ncold.append(s.wall), c_ncold.append(s.cpu)
                s = nix.instantiate(f)
                nwarm.append(s.wall), c_nwarm.append(s.cpu)
                nix.edit(f, 5)
                s = nix.instantiate(f)
                nedited.append(s.wall), c_nedited.append(s.cpu)
                nix.edit(f, top)
                s = nix.instantiate(f)
                ntedited.append(s.wall), c_ntedited.append(s.cpu)

            subprocess.run(["sync"])
            for g in ((p, x) if r % 2 == 0 else (x, p)) if with_nix else (p,):
                g()
        label = f"plan {n // 1000}k"
        report(f"{label} cold", cold, ncold or None, "s", cpu=(c_cold, c_ncold or None),
               note=f"peak RSS {max(rss):.0f} MiB" + (f"; Nix read-only eval {statistics.median(nro):.3f} s"
                                                      if nro else ""))
        report(f"{label} warm", warm, nwarm or None, "s", cpu=(c_warm, c_nwarm or None),
               note=f"{statistics.median(warm) / (n + 1) * 1e6:.1f} us/node; planner: the cached plan table")
        report(f"{label} one edited", edited, nedited or None, "s", cpu=(c_edited, c_nedited or None),
               note="node 5 changed: planner re-plans it and the ~96% of nodes built on it")
        report(f"{label} top edited", tedited, ntedited or None, "s", cpu=(c_tedited, c_ntedited or None),
               note=f"node {top} changed: planner re-plans it and the few nodes built on it")


def measure_verify(pl: Planner, nix: Nix | None, runs: int, salt: str) -> None:
    if nix and nix.store_paths() < 402:  # run alone (--only verify): give Nix's store the noop DAG's paths
        nix.build(nix.dag(200, 20, f"{salt}-vn"))
    count = nix.store_paths() if nix else 402
    root = pl.dag(count - 1, 20, f"{salt}-v")  # count - 1 nodes + top = count entries
    store = pl.tmp / "store-verify"
    pl.realise(root, store)
    ours, theirs, c_ours, c_theirs = [], [], [], []

    def p() -> None:
        s = pl.cli(root, store, "store", "verify")
        ours.append(s.wall), c_ours.append(s.cpu)

    def x() -> None:
        s = nix.verify()
        theirs.append(s.wall), c_theirs.append(s.cpu)

    if nix:
        interleave(runs, p, x)
    else:
        for _ in range(runs):
            p()
    report("verify", ours, theirs or None, "ms", cpu=(c_ours, c_theirs or None),
           note=f"{count} entries each (Nix: every valid path in /nix/store)")


def measure_hash(pl: Planner, nix: Nix | None, runs: int, total: int) -> None:
    d = pl.tmp / "hash-tree"
    rng = random.Random(1)
    block = os.urandom(1 << 20)
    sizes, left = [], total
    while left > 0:  # 80 files for 1 GiB: some big, most small, like an unpacked wheel set
        s = min(left, rng.choice([64 << 10, 1 << 20, 8 << 20, 32 << 20]))
        sizes.append(s)
        left -= s
    for i, s in enumerate(sizes):
        p = d / f"d{i % 7}" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as fh:
            for off in range(0, s, len(block)):
                fh.write(block[:min(len(block), s - off)])
    subprocess.run(["cat", *map(str, sorted(d.rglob("*.bin")))], stdout=subprocess.DEVNULL)
    ours, theirs, c_ours, c_theirs = [], [], [], []

    def p() -> None:
        s = run([*pl.argv, "hash", str(d)], env=pl.env)
        ours.append(s.wall), c_ours.append(s.cpu)

    def x() -> None:
        s = nix.hash(d)
        theirs.append(s.wall), c_theirs.append(s.cpu)

    if nix:
        interleave(runs, p, x)
    else:
        for _ in range(runs):
            p()
    report("hash", ours, theirs or None, "s", cpu=(c_ours, c_theirs or None),
           note=f"{total / 2**30:.2f} GiB in {len(sizes)} files, page cache warm")
    shutil.rmtree(d)


def find_anchors(arg: str | None) -> Path:
    cands = [Path(arg)] if arg else [REPO.parent / "shared" / "anchors", REPO.parent.parent / "shared" / "anchors"]
    for c in cands:
        if (c / "gen_planner.py").is_file() and (c / "nix" / "gen.py").is_file():
            return c.resolve()
    sys.exit("the shared anchors (gen_planner.py, nix/gen.py, nix/lib.sh) were not found: pass --anchors DIR")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="noop,verify,build,plan,hash")
    ap.add_argument("--runs", type=int, default=0, help="timed runs per tool of the fast measures (default 15)")
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds of the cold builds and plans (default 3)")
    ap.add_argument("--quick", action="store_true", help="fewer runs, 1k-node plans, 256 MiB hash")
    ap.add_argument("--anchors", default=os.environ.get("PLANNER_ANCHORS"))
    ap.add_argument("--plan-sizes", default="10000,100000")
    ap.add_argument("--nix-plan-max", type=int, default=10000, help="largest plan size Nix also runs")
    ap.add_argument("--hash-mib", type=int, default=1024)
    ap.add_argument("--planner-tree", default=None, help="measure the planner of this checkout (e.g. a "
                    "`git archive` of an older commit) with this interpreter, instead of the installed one")
    a = ap.parse_args()
    only = set(a.only.split(","))
    anchors = find_anchors(a.anchors)
    why = Nix.missing()
    where = Path(a.planner_tree).resolve() / "planner" if a.planner_tree else Path(__import__("planner").__file__).parent
    print(f"bench/vs_nix.py: planner {where} ({sys.executable}) vs Nix, anchors {anchors}; "
          f"{os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f} at start")
    if why:
        print(f"NOTE: {why}. Only planner's side is measured: absolute times, no ratios. "
              "(This benchmark is not part of CI.)")
    else:
        v = subprocess.run(["nix-store", "--version"], capture_output=True, text=True).stdout.strip()
        print(f"{v}; options: {' '.join(subprocess.run(['bash', str(anchors / 'nix' / 'lib.sh'), 'options'], capture_output=True, text=True).stdout.split())}")
    fast, slow = (a.runs or (7 if a.quick else 15)), (a.rounds or (1 if a.quick else 3))
    sizes = [1000] if a.quick else [int(x) for x in a.plan_sizes.split(",")]
    salt = f"vs{os.getpid()}{random.randrange(1 << 20)}"
    tmp = Path(tempfile.mkdtemp(prefix="vs-nix-"))
    nix = None if why else Nix(anchors, tmp)
    pl = Planner(anchors, tmp, Path(a.planner_tree).resolve() if a.planner_tree else None)
    try:
        if "noop" in only or "build" in only:
            root, store = measure_noop(pl, nix, fast, salt)
        if "verify" in only:
            measure_verify(pl, nix, fast, salt)
        if "build" in only:
            measure_build(pl, nix, slow, salt, store)
        if nix:
            nix.cleanup()  # before plans: keep Nix's store as small as planner's
        if "plan" in only:
            measure_plan(pl, nix, slow, salt, sizes, a.nix_plan_max)
        if "hash" in only:
            measure_hash(pl, nix, fast if not a.quick else 3, (256 if a.quick else a.hash_mib) << 20)
    finally:
        if nix:
            print(f"removed {nix.cleanup()} Nix store paths this run created")
        from planner.store import remove_tree

        remove_tree(tmp)  # store entries are read-only
    print(f"load {os.getloadavg()[0]:.2f} at end")
    print("\n| measure | planner | Nix | ratio |\n|---|---|---|---|")
    for name, mo, mt, ratio, unit in ROWS:
        print(f"| {name} | {fmt(mo, unit)} | {fmt(mt, unit) if mt is not None else '-'} | "
              f"{f'{ratio:.2f}x' if ratio is not None else '-'} |")


if __name__ == "__main__":
    main()
