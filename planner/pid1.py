"""The native process-1 helper (builders/pid1.c) of emulated builds, compiled once per store.

An emulated build's runtime cannot make nvcc process 1 itself (qemu-user's threads keep it out of
a new user namespace; pid1.c says more), so the host gives it a static executable of its own
architecture to do it. The helper is part of the sandbox, as bubblewrap is: no output holds its
bytes, so neither its compiler nor its bytes are in any key.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

SOURCE = Path(__file__).parent / "builders" / "pid1.c"
# Where the build finds it: beside the wrappers it writes (runtime.wrap_nvcc).
IN_SANDBOX = "/build/nvcc-wrapper/pid1"


class HelperUnavailable(Exception):
    """The helper could not be compiled here: the build runs nvcc as it is, and its log says why."""


def compiled(builds: Path) -> Path:
    """The helper's executable, compiled into `builds` (the store's build folder) on first use
    and renamed into place whole; named by its source, so a changed source compiles anew."""
    source = SOURCE.read_bytes()
    path = builds / f"pid1-{zlib.crc32(source):08x}"
    if path.is_file():
        return path
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    if not cc[0]:
        raise HelperUnavailable("no C compiler (cc) to compile the native process-1 helper")
    # Builds run in threads of one process: a name of its own for each compile.
    fd, name = tempfile.mkstemp(dir=builds, prefix=f"{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        done = subprocess.run([*cc, "-static", "-O2", "-o", str(tmp), str(SOURCE)], capture_output=True,
                              text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        tmp.unlink(missing_ok=True)
        raise HelperUnavailable(f"compiling {SOURCE.name}: {exc}") from None
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise HelperUnavailable(f"{' '.join(cc)} -static could not compile {SOURCE.name}: {first}")
    os.replace(tmp, path)  # the same program whoever wins
    return path


def install(builds: Path, build_dir: Path) -> str:
    """Put the helper where a build in `build_dir` finds it; returns its path inside the sandbox."""
    helper = compiled(builds)
    target = build_dir / "nvcc-wrapper" / "pid1"
    target.parent.mkdir(exist_ok=True)
    # A copy, not a link: the build may write to its folder, and the next build's helper is this one.
    shutil.copyfile(helper, target)
    target.chmod(0o755)
    return IN_SANDBOX
