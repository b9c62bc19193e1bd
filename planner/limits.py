"""What bounds one sandboxed build: memory, the size of its /tmp, its process count and its time.

The recipe's `[resources]` table says how much; this module says how it is enforced on this
machine, and why:

- Inside the sandbox, always: RLIMIT_DATA (per process: heap and private writable mappings, not
  the address space, so CUDA's and Go's large reservations still work) and RLIMIT_NPROC. Set by
  the first process inside (the runtime, or the shell step's wrapper), after bubblewrap made the
  sandbox's user namespace: RLIMIT_NPROC then counts the sandbox's own processes only, not every
  process of the user running the planner on this host. The kernel does not apply RLIMIT_NPROC
  to processes whose real user is root, which is what the sandbox's user maps to when root runs
  the planner.
- On the host, where this process may create cgroups: one cgroup per build with the memory limit
  for the whole process tree (page cache and /tmp included) and the process limit (the root case
  above). cgroup v2 where its memory and pids controllers are delegated to this process's cgroup;
  else the v1 hierarchies, which only root can write.

None of this enters a key (as in Nix): a limit decides whether a build succeeds, never what a
successful build writes.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import threading
from pathlib import Path
from typing import Optional

import attrs

DEFAULT_TMP = 1 << 30
DEFAULT_PROCESSES = 4096
CGROUP_FS = Path("/sys/fs/cgroup")


@attrs.frozen
class Limits:
    memory: int  # bytes: per process (rlimit) and for the whole build (cgroup, where in force)
    tmp: int = DEFAULT_TMP  # bytes of the sandbox's /tmp and /dev/shm (each a tmpfs)
    processes: int = DEFAULT_PROCESSES  # processes and threads at once
    timeout: float = 0.0  # seconds of wall-clock time; 0: none

    def to_json(self) -> dict:
        return {"memory": self.memory, "tmp": self.tmp, "processes": self.processes, "timeout": self.timeout,
                "files": open_files()}


# Open files per process inside a build, soft and hard: a build must not see (or depend on) the
# caller's `ulimit -n` (1024 for one user, 20000 for another). Lower where this machine's hard
# limit is lower, which only root could raise.
OPEN_FILES = 4096


def open_files() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)


@attrs.frozen
class Enforcement:
    """How this machine enforces limits, for `planner show` and the docs."""

    cgroup: Optional[str]  # "v2" or "v1", or None: rlimits only
    why: str

    def describe(self) -> str:
        if self.cgroup is None:
            return f"rlimits inside the sandbox (RLIMIT_DATA per process, RLIMIT_NPROC); no cgroup: {self.why}"
        return (f"cgroup {self.cgroup} per build (memory of the whole build, pids) and rlimits inside the sandbox "
                f"(RLIMIT_DATA per process, RLIMIT_NPROC): {self.why}")


def format_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def format_seconds(s: float) -> str:
    return f"{s:g} s"


def describe_limits(limits: Limits) -> str:
    """One line for `planner show`: the limits, that they are not in the key, and how they are enforced here."""
    t = format_seconds(limits.timeout) if limits.timeout else "none"
    return (f"limits (not part of the key): memory {format_size(limits.memory)}, tmp {format_size(limits.tmp)}, "
            f"processes {limits.processes}, timeout {t}; enforced by {enforcement().describe()}")


# -- inside the sandbox ------------------------------------------------------------------------

def shell_prefix(limits: Limits) -> str:
    """bash's way of setting the limits on itself (hard and soft, so the build cannot raise them)."""
    return f"ulimit -d {max(1, limits.memory >> 10)} -u {limits.processes} -n {open_files()}"


# -- on the host: cgroups ----------------------------------------------------------------------

def _own_cgroups() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for c in parts[1].split(",") if parts[1] else [""]:
            out[c] = parts[2]
    return out


def _v2_root() -> Optional[Path]:
    for cand in (CGROUP_FS, CGROUP_FS / "unified"):
        if (cand / "cgroup.controllers").is_file():
            return cand
    return None


@functools.lru_cache(maxsize=1)
def enforcement() -> Enforcement:
    return _probe()[0]


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[Enforcement, dict[str, Path]]:
    """How limits are enforced here, and the parent folder per controller for build cgroups."""
    own = _own_cgroups()
    v2 = _v2_root()
    reasons = []
    if v2 is not None and "" in own:
        mine = v2 / own[""].lstrip("/")
        try:
            delegated = set((mine / "cgroup.subtree_control").read_text().split())
        except OSError:
            delegated = set()
        if {"memory", "pids"} <= delegated and os.access(mine, os.W_OK):
            return Enforcement("v2", f"memory and pids are delegated to {mine}"), {"": mine}
        reasons.append(f"cgroup v2 at {v2} does not delegate memory and pids to this process's cgroup "
                       f"(its subtree has {' '.join(sorted(delegated)) or 'no controllers'})")
    parents = {}
    for c in ("memory", "pids"):
        d = CGROUP_FS / c / own.get(c, "/").lstrip("/")
        if c in own and (d / "cgroup.procs").is_file() and os.access(d, os.W_OK):
            parents[c] = d
    if len(parents) == 2:
        return Enforcement("v1", "the v1 memory and pids hierarchies are writable (root)"), parents
    reasons.append("the v1 memory and pids hierarchies are not writable by this user" if os.geteuid() != 0
                   else "no writable v1 memory and pids hierarchies")
    if os.geteuid() == 0:
        reasons.append("the process count is not bounded (RLIMIT_NPROC does not apply to root)")
    return Enforcement(None, "; ".join(reasons)), {}


def _remove_orphans(parent: Path) -> None:
    """Empty cgroups of planners that were killed before they could remove them
    (`planner-<pid>-<build>`, the pid gone). Their builds died with them (--die-with-parent)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        if not n.startswith("planner-"):
            continue
        pid = n.split("-")[1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its planner still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            os.rmdir(parent / n)
        except OSError:
            pass  # not empty after all, or gone


class BuildCgroup:
    """One build's cgroup(s), with that build's limits; kept for the process's next build
    (`acquire`, `release`) and removed when the process ends or keeps enough of them."""

    def __init__(self, name: str, limits: Limits) -> None:
        enf, parents = _probe()
        self.version = enf.cgroup
        self.dirs: dict[str, Path] = {}
        for c, parent in parents.items():
            _remove_orphans(parent)
            d = parent / name
            d.mkdir(exist_ok=True)
            self.dirs[c] = d
        try:
            self.set_limits(limits)
        except OSError:
            self.remove()
            raise

    def set_limits(self, limits: Limits) -> None:
        """The limits of the build about to start in it, and the counters as they stand: what
        happened before (an earlier build's OOM kill) is not this build's."""
        if self.version == "v2":
            d = self.dirs[""]
            (d / "memory.max").write_text(str(limits.memory))
            (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
            (d / "pids.max").write_text(str(limits.processes))
        elif self.version == "v1":
            (self.dirs["memory"] / "memory.limit_in_bytes").write_text(str(limits.memory))
            (self.dirs["pids"] / "pids.max").write_text(str(limits.processes))
        self._oom_before = self._oom_kills()
        self._refused_before = self._pids_refused()

    def pids(self) -> set[int]:
        out: set[int] = set()
        for f in self.procs_files():
            try:
                out.update(int(p) for p in Path(f).read_text().split())
            except (OSError, ValueError):
                pass
        return out

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` started from inside the cgroup(s): a shell joins them, then execs it (same pid)."""
        # (PWD unset: the shell exports it, the build's cwd on the host, a path into the store,
        # and bubblewrap hands its environment to the sandbox's first process)
        return (["/bin/sh", "-c", 'n=$1; shift; while [ "$n" -gt 0 ]; do echo 0 > "$1" || exit 126; shift; '
                 'n=$((n-1)); done; unset PWD OLDPWD; exec "$@"', "sh", str(len(self.dirs))] + self.procs_files()
                + argv)

    def _counter(self, controller: str, file: str, field: str) -> int:
        d = self.dirs.get(controller if self.version == "v1" else "")
        if d is None:
            return 0
        try:
            for line in (d / file).read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == field:
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0

    def _oom_kills(self) -> int:
        return self._counter("memory", "memory.events" if self.version == "v2" else "memory.oom_control", "oom_kill")

    def _pids_refused(self) -> int:
        return self._counter("pids", "pids.events", "max")

    def oom_killed(self) -> bool:
        return self._oom_kills() > self._oom_before

    def pids_refused(self) -> bool:
        return self._pids_refused() > self._refused_before

    def kill(self) -> set[int]:
        """SIGKILL to every process in it now; returns them (empty: the cgroup was empty)."""
        import signal

        pids = self.pids()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def kill_all(self) -> None:
        for _ in range(100):
            if not self.kill():
                return
            import time

            time.sleep(0.01)

    def remove(self) -> None:
        import time

        self.kill_all()
        # A pid namespace is torn down after its first process is reaped: the cgroup stays busy
        # for a moment. What is still left then goes at the next build (_remove_orphans).
        for d in self.dirs.values():
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


# -- cgroups kept between builds ---------------------------------------------------------------
#
# Made and removed for every build, a cgroup cost a small build about 10 ms: rmdir waits until
# the sandbox's pid namespace is torn down, which takes a moment after bubblewrap exits, and
# every removed memory cgroup lingers in the kernel while pages are still charged to it. So a
# process keeps the cgroups of its finished builds and gives the next build one that is empty
# again, its limits set anew; what a build leaves in it (processes of a namespace being torn
# down) is killed when the build ends, and a cgroup not yet empty waits for a later build.

KEEP = 16  # idle cgroups a process keeps at most
_idle: list[BuildCgroup] = []
_idle_lock = threading.Lock()
_made = itertools.count()


def acquire(limits: Limits) -> BuildCgroup:
    """A cgroup for one build, with its limits: an empty one of this process's, else a new one."""
    found = None
    with _idle_lock:
        for i, group in enumerate(_idle):
            if not group.pids():
                found = _idle.pop(i)
                break
    if found is not None:
        try:
            found.set_limits(limits)
            return found
        except OSError:  # (a memory limit below what is still charged to it: a new one instead)
            found.remove()
    return BuildCgroup(f"planner-{os.getpid()}-{next(_made)}", limits)


def release(group: BuildCgroup) -> None:
    """After its build: what is still in it killed, kept for a later build, or removed."""
    group.kill()
    with _idle_lock:
        if len(_idle) < KEEP:
            _idle.append(group)
            return
    group.remove()


def remove_idle() -> None:
    """Remove the cgroups this process keeps (at exit; one killed first leaves them to
    `_remove_orphans` of the next planner)."""
    with _idle_lock:
        groups = list(_idle)
        _idle.clear()
    for group in groups:
        group.remove()


def _forget_idle_in_child() -> None:
    # A forked child must not build in its parent's cgroups, nor remove them at its exit.
    global _idle_lock
    _idle.clear()
    _idle_lock = threading.Lock()


atexit.register(remove_idle)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_idle_in_child)
