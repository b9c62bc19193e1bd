"""Run one program as process 1 of a PID namespace of its own, with a temporary folder of its own.

nvcc names its temporary files `tmpxft_<its pid>_<n>…`, where n is the first number whose name is
free in $TMPDIR, and that name ends up in the objects it writes. A build that runs several nvcc
at once (ninja under MAX_JOBS) gives each whichever pid the scheduling leaves free, and they share
one temporary folder, so two builds of the same inputs differ in those bytes. As process 1 of its
own namespace, with an empty tmpfs mounted at one fixed path in a mount namespace of its own as
$TMPDIR, every nvcc has the same pid and finds the same names free, and its children (cudafe++,
cicc, ptxas) get the same pids after it, whatever runs beside it. /tmp itself is left alone: a
build may compile files it wrote there.

The sandbox drops every capability, so the namespaces come with a user namespace of their own
that maps the build's uid and gid onto themselves: files keep their owner.

Standard library only, and self-contained: `wrapper_script` writes this module's own text as
an executable, run by the root filesystem's Python inside the sandbox.
"""

from __future__ import annotations

import os
import signal
import sys

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
_PR_SET_PDEATHSIG = 1


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def enter(tmpdir: str) -> tuple[bool, str | None]:
    """Make this process's next child process 1 of a new PID namespace, with an empty tmpfs at
    `tmpdir` as its TMPDIR. Returns whether the PID namespace exists (then the program must run
    in a child: this process's own pid does not change) and why not all of it could be made."""
    ctypes, libc = _libc()
    uid, gid = os.getuid(), os.getgid()

    def failed(what: str) -> str:
        return f"{what}: {os.strerror(ctypes.get_errno())}"

    os.makedirs(tmpdir, exist_ok=True)
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNS) != 0:
        return False, failed("unshare")
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError as exc:
        return True, f"mapping the ids: {exc.strerror}"
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return True, failed("making / private")
    if libc.mount(b"tmpfs", os.fsencode(tmpdir), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=1777") != 0:
        return True, failed(f"mounting a tmpfs at {tmpdir}")
    os.environ["TMPDIR"] = tmpdir
    return True, None


def exec_as_process_one(argv: list[str], tmpdir: str) -> None:
    """Run argv as process 1 of a new PID namespace (see `enter`) and exit with its status; where
    no namespace can be made, exec it directly (`works()` is asked once before a build relies on
    this, and says why)."""
    created, _ = enter(tmpdir)
    if not created:
        os.execv(argv[0], argv)
    pid = os.fork()
    if pid == 0:
        try:
            _, libc = _libc()
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)

    def stop(signum, frame):
        # Process 1 ignores signals it has no handler for: a build tool's SIGTERM would not stop it.
        os.kill(pid, signal.SIGKILL)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # die of the same signal, as the program did (a build tool reports it so)
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def works(tmpdir: str) -> str | None:
    """None if a child can run as process 1 of its own PID namespace with its own `tmpdir`
    here, else why not."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            created, problem = enter(tmpdir)
            if problem is None:
                child = os.fork()
                if child == 0:
                    os._exit(0 if os.getpid() == 1 and not os.listdir(tmpdir) else 3)
                _, status = os.waitpid(child, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    problem = "the child was not process 1 or its folder was not empty"
            os.write(write, (problem or "").encode())
            os._exit(0)
        finally:
            os._exit(4)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        problem = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return problem or "the probe failed"
    return problem or None


def wrapper_script(program: str, python: str, tmpdir: str) -> str:
    """An executable's text that runs `program` with its arguments as process 1, with an empty
    `tmpdir` of its own as TMPDIR."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    return (f"#!{python} -IS\n{source}\n\n"
            f"if __name__ == '__main__':\n    exec_as_process_one([{program!r}, *sys.argv[1:]], {tmpdir!r})\n")
