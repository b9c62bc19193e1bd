"""One build command run: its output copied to the log, its timeout, the processes of running
builds (to cancel them), and which [resources] limit a failed build ran into."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
from pathlib import Path
from typing import Optional

from . import limits as limits_mod
from .limits import Limits

LOG_TAIL_LINES = 20


def tail_of(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class Running:
    """Processes of builds in flight, so Ctrl-C can stop them all cleanly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.cancelled = False

    def add(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(p)
            if self.cancelled:
                self._kill(p)

    def remove(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(p)

    @staticmethod
    def _kill(p: subprocess.Popen) -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for p in self._procs:
                self._kill(p)


def open_log(path: Path, mode: str = "wb"):
    """A build log opened for writing as a new file, never through a link: the store's logs/
    may be shared, and a link planted under a log's name would take the log (and its truncation)
    to any file this user may write."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:  # ELOOP (a link), EISDIR, ENXIO (a FIFO or socket): not ours to write through
        os.unlink(path)
        fd = os.open(path, flags | os.O_EXCL, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, mode)


def read_log(path: Path) -> str:
    """A stored build log, read as the regular file it must be: never through a link (to a
    file of this user's, printed) nor from a FIFO (the read would wait for a writer)."""
    from .errors import StoreError

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot read this log: {exc.strerror} (a link or a special file is no log of "
                         "the store's)", where=str(path)) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError("not a regular file: no log of the store's", where=str(path))
        return f.read().decode(errors="replace")


class CpuPool:
    """The CPUs this process may run on, handed to running builds: each build is started bound
    to `[resources] cores` of them (the least used first), so ninja, Rust, Go and Python 3.13,
    which count the CPUs they may run on (sched_getaffinity) rather than nproc's answer, see
    the recipe's cores, not this machine's or the caller's `taskset`. A machine with fewer
    CPUs than a recipe asks for binds it to all of them (a difference the key cannot remove)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._use: dict[int, int] = {}

    def take(self, cores: int) -> Optional[set[int]]:
        if not hasattr(os, "sched_setaffinity"):
            return None
        with self._lock:
            if not self._use:
                self._use = dict.fromkeys(sorted(os.sched_getaffinity(0)), 0)
            chosen = set(sorted(self._use, key=lambda c: (self._use[c], c))[:max(1, cores)])
            for c in chosen:
                self._use[c] += 1
            return chosen

    def give_back(self, cpus: Optional[set[int]]) -> None:
        if cpus:
            with self._lock:
                for c in cpus:
                    self._use[c] -= 1


CPUS = CpuPool()
# The mode a build's new files get: a build that records modes (tar, zip) must not record the
# caller's umask (Nix's builds run with 022 too).
BUILD_UMASK = 0o022


def _start(argv: list[str], cpus: Optional[set[int]], **popen) -> subprocess.Popen:
    """Popen, the child bound to `cpus`: a new process inherits the CPU mask of the thread that
    forks it, so this thread's mask is set for the fork and then restored."""
    if cpus is None:
        return subprocess.Popen(argv, umask=BUILD_UMASK, **popen)
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return subprocess.Popen(argv, umask=BUILD_UMASK, **popen)
    finally:
        os.sched_setaffinity(0, mine)


def run_logged(argv: list[str], proc_env: Optional[dict[str, str]], cwd: Path, log_path: Path, log_head: bytes,
               running: Running, *, sandboxed: bool, group: Optional["limits_mod.BuildCgroup"],
               timeout: Optional[float], cores: int = 1) -> tuple[int, bool]:
    """Run the build's command with its output in the log: (exit status, whether it timed out)."""
    cpus = CPUS.take(cores)
    try:
        return _run_logged(argv, proc_env, cwd, log_path, log_head, running, sandboxed=sandboxed, group=group,
                           timeout=timeout, cpus=cpus)
    finally:
        CPUS.give_back(cpus)


def _run_logged(argv: list[str], proc_env: Optional[dict[str, str]], cwd: Path, log_path: Path, log_head: bytes,
                running: Running, *, sandboxed: bool, group: Optional["limits_mod.BuildCgroup"],
                timeout: Optional[float], cpus: Optional[set[int]]) -> tuple[int, bool]:
    # A NUL ends an argument where bubblewrap's arguments are written: one inside a value (an
    # env value, a path) would start arguments of its own (`--bind / /x`). Recipes are refused
    # such values when they load; this holds for every other way one gets here.
    bad = next((a for a in [*argv, *(f"{k}={v}" for k, v in (proc_env or {}).items())] if "\0" in a), None)
    if bad is not None:
        raise ValueError(f"a build argument or environment value holds a NUL byte: {bad.split(chr(0))[0][:60]!r}…")
    args_fd = None
    if sandboxed:
        # bwrap reads its arguments from a file descriptor, so the real paths of the store and
        # the build directory are not on its command line (visible in the sandbox as /proc/1/cmdline).
        # An anonymous memory file: nothing to write to disk and remove again for each node.
        split = argv.index("--")
        args_fd = os.memfd_create("bwrap-args", 0)
        try:
            os.write(args_fd, b"".join(a.encode() + b"\0" for a in argv[1:split]))
            os.lseek(args_fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(args_fd)
            raise
        argv = [argv[0], "--args", str(args_fd)] + argv[split:]
    if group is not None:
        argv = group.wrap(argv)
    timed_out = False
    with open_log(log_path, "wb") as log:
        log.write(log_head)
        log.flush()
        # A sandboxed build writes into a pipe that the planner copies to the log: its
        # /proc/self/fd/1 then names no host path.
        pipe_r, pipe_w = os.pipe() if sandboxed else (None, None)
        try:
            proc = _start(argv, cpus, stdout=pipe_w if pipe_w is not None else log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, env=proc_env if proc_env is not None else {"PATH": "/usr/bin:/bin"},
                          cwd=cwd, start_new_session=True, pass_fds=(args_fd,) if args_fd is not None else ())
        except BaseException:
            if pipe_r is not None:
                os.close(pipe_r)
            raise
        finally:
            if args_fd is not None:
                os.close(args_fd)
            if pipe_w is not None:
                os.close(pipe_w)
        copier = None
        if pipe_r is not None:
            copier = threading.Thread(target=_copy_log, args=(pipe_r, log), daemon=True)
            copier.start()
        running.add(proc)
        try:
            try:
                rc = proc.wait(timeout=timeout or None)
            except subprocess.TimeoutExpired:
                timed_out = True
                Running._kill(proc)  # the sandbox's pid namespace dies with bubblewrap
                if group is not None:
                    group.kill_all()
                rc = proc.wait()
        finally:
            running.remove(proc)
            if copier is not None:
                copier.join(10)
    return rc, timed_out


def _copy_log(fd: int, log) -> None:
    try:
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                return
            log.write(data)
    except (OSError, ValueError):  # the log closed under a build's stray writer, or a full disk
        pass
    finally:
        os.close(fd)


_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory", "Out of memory",
                 "memory exhausted")
# RLIMIT_NPROC counts threads too: Python says "can't start new thread" when it refuses one.
_FORK_SIGNS = ("fork: retry", "fork: Resource temporarily unavailable", "can't fork", "Cannot fork",
               "BlockingIOError: [Errno 11]", "Resource temporarily unavailable", "can't start new thread")


def limit_hit(limits: Limits, group: Optional["limits_mod.BuildCgroup"], tail: str) -> Optional[str]:
    """Which limit a failed build ran into, as far as can be told: the cgroup's counters, else the
    log's last lines (an rlimit makes an allocation or a fork fail; the build reports it)."""
    mem = f"it ran out of its [resources] memory = {limits_mod.format_size(limits.memory)}"
    procs = f"it reached its [resources] processes = {limits.processes}"
    if group is not None and group.oom_killed():
        return mem + " (the whole build, a cgroup limit)"
    if group is not None and group.pids_refused():
        return procs
    if "No space left on device" in tail and ("/tmp/" in tail or "/dev/shm/" in tail):
        return f"its /tmp and /dev/shm hold [resources] tmp = {limits_mod.format_size(limits.tmp)} each"
    if any(s in tail for s in _MEMORY_SIGNS):
        return mem + " (per process, RLIMIT_DATA)"
    if any(s in tail for s in _FORK_SIGNS):
        return procs
    return None


def shell_argv(script: str, limits: Optional[Limits]) -> tuple[list[str], bytes]:
    """The `shell` builder without the runtime: `bash -euo pipefail -c SCRIPT`, started by a shell
    that waits for it, so bash keeps the pid it had under the runtime (tools that embed their
    pid write the same bytes); and the runtime's first log line. With `limits`, a bash sets
    them on itself and execs the step (dash's ulimit has no process count): the same pid."""
    head = ("+ " + " ".join(["bash", "-euo", "pipefail", "-c", script]) + "\n").encode()
    if limits is None:
        return ["/bin/sh", "-c", 'bash -euo pipefail -c "$1"; exit $?', "sh", script], head
    inner = limits_mod.shell_prefix(limits) + ' || exit 125; exec bash -euo pipefail -c "$1"'
    return ["/bin/sh", "-c", 'bash -c "$2" bash "$1"; exit $?', "sh", script, inner], head
