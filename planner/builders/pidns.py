"""Run one program as process 1 of a PID namespace of its own, with a temporary folder of its own.

nvcc names its temporary files `tmpxft_<its pid>_<n>…`, where n is the first number whose name is
free in $TMPDIR, and that name ends up in the objects it writes. A build that runs several nvcc
at once (ninja under MAX_JOBS, make -j) gives each whichever pid the scheduling leaves free, and
they share one temporary folder, so two builds of the same inputs differ in those bytes. As
process 1 of its own namespace, with an empty tmpfs mounted at one fixed path in a mount
namespace of its own as $TMPDIR, every nvcc has the same pid and finds the same names free, and
its children (cudafe++, cicc, ptxas) get the same pids after it, whatever runs beside it. /tmp
itself is left alone: a build may compile files it wrote there.

`wrap_in_place` puts the wrapper over nvcc's own file, so a build reaches it whatever path or
name it uses (torch's PYTORCH_NVCC or CUDA_HOME, a Makefile's full path, PATH); the wrapper
brings the real file back at the same path in the namespaces it makes, so nvcc runs from where
it always does (it finds its tools and records its options by its own location).

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
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000
_PR_SET_PDEATHSIG = 1


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _failed(what: str) -> str:
    import ctypes

    return f"{what}: {os.strerror(ctypes.get_errno())}"


def _own_namespaces(flags: int) -> tuple[bool, str | None]:
    """Enter a new user and mount namespace (and those in `flags`) that map this process's ids
    onto themselves, with / private. Returns whether the namespaces exist and what failed."""
    _, libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | flags) != 0:
        return False, _failed("unshare")
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError as exc:
        return True, f"mapping the ids: {exc.strerror}"
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return True, _failed("making / private")
    return True, None


def _bind(source: str, target: str) -> str | None:
    _, libc = _libc()
    if libc.mount(os.fsencode(source), os.fsencode(target), None, _MS_BIND, None) != 0:
        return _failed(f"binding {source} onto {target}")
    return None


def enter(tmpdir: str, restore: tuple[str, str] | None = None) -> tuple[bool, str | None]:
    """Make this process's next child process 1 of a new PID namespace, with an empty tmpfs at
    `tmpdir` as its TMPDIR, and `restore` (source, target) bound: the real program back at its
    own path. Returns whether the PID namespace exists (then the program must run in a child:
    this process's own pid does not change) and why not all of it could be made."""
    _, libc = _libc()
    os.makedirs(tmpdir, exist_ok=True)
    created, problem = _own_namespaces(_CLONE_NEWPID)
    if problem:
        return created, problem
    if libc.mount(b"tmpfs", os.fsencode(tmpdir), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=1777") != 0:
        return True, _failed(f"mounting a tmpfs at {tmpdir}")
    if restore is not None:
        problem = _bind(*restore)
        if problem:
            return True, problem
    os.environ["TMPDIR"] = tmpdir
    return True, None


def exec_as_process_one(argv: list[str], tmpdir: str, real: str | None = None) -> None:
    """Run argv as process 1 of a new PID namespace (see `enter`) and exit with its status.
    `real`: the program's own file, bound at argv[0] first (argv[0] is this wrapper until then).
    Where no namespace can be made, exec argv directly (a build probes first, `wrap_in_place`,
    and says why); a wrapper in place of its program fails instead, saying why."""
    created, problem = enter(tmpdir, (real, argv[0]) if real else None)
    if problem and real:
        sys.stderr.write(f"planner: cannot run {argv[0]} as process 1 of its own namespaces: {problem}\n")
        sys.exit(126)
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


def _in_child(probe) -> str | None:
    """Run `probe()` (None, or what failed) in a forked child, whose namespaces are its own."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.write(write, (probe() or "").encode())
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


def _check_process_one(tmpdir: str, restore: tuple[str, str] | None = None) -> str | None:
    created, problem = enter(tmpdir, restore)
    if problem is not None:
        return problem
    child = os.fork()
    if child == 0:
        ok = os.getpid() == 1 and not os.listdir(tmpdir)
        if restore is not None:
            real, target = (os.stat(p) for p in restore)
            ok = ok and (real.st_dev, real.st_ino) == (target.st_dev, target.st_ino)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return "the child was not process 1, its folder was not empty or its program was not restored"
    return None


def works(tmpdir: str) -> str | None:
    """None if a child can run as process 1 of its own PID namespace with its own `tmpdir`
    here, else why not."""
    return _in_child(lambda: _check_process_one(tmpdir))


def _place_wrappers(programs: list[str], folder: str, python: str, tmpdir: str) -> str | None:
    """In this process's new namespaces: each program's file bound at folder/real-N, and a
    wrapper that restores it bound over it."""
    created, problem = _own_namespaces(0)
    if problem:
        return problem
    for n, program in enumerate(programs):
        real, wrapper = os.path.join(folder, f"real-{n}"), os.path.join(folder, f"wrapper-{n}")
        open(real, "w").close()
        problem = _bind(program, real)
        if problem:
            return problem
        with open(wrapper, "w") as f:
            f.write(wrapper_script(program, python, tmpdir, real=real))
        os.chmod(wrapper, 0o755)
        problem = _bind(wrapper, program)
        if problem:
            return problem
    return None


def wrap_in_place(programs: list[str], folder: str, python: str, tmpdir: str) -> str | None:
    """From now on, every start of one of `programs` (real paths of executable files), by this
    process or anything it starts, runs it as process 1 with its own `tmpdir` (folder, a
    writable folder of the build's, holds the wrappers). Enters a user and mount namespace for
    good. Returns None, or why not, having first tried it all in a child and changed nothing."""
    os.makedirs(folder, exist_ok=True)
    os.makedirs(tmpdir, exist_ok=True)

    def probe() -> str | None:
        return (_place_wrappers(programs, folder, python, tmpdir)
                or _check_process_one(tmpdir, (os.path.join(folder, "real-0"), programs[0])))

    problem = _in_child(probe)
    if problem:
        return problem
    problem = _place_wrappers(programs, folder, python, tmpdir)
    if problem:  # the child could: what differs here is a fault, not a refusal to fall back on
        raise OSError(f"wrapping {', '.join(programs)}: {problem}")
    return None


def wrapper_script(program: str, python: str, tmpdir: str, real: str | None = None) -> str:
    """An executable's text that runs `program` with its arguments as process 1, with an empty
    `tmpdir` of its own as TMPDIR (and, given `real`, that file bound at `program` first)."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    extra = f", real={real!r}" if real else ""
    return (f"#!{python} -IS\n{source}\n\n"
            f"if __name__ == '__main__':\n    exec_as_process_one([{program!r}, *sys.argv[1:]], {tmpdir!r}{extra})\n")
