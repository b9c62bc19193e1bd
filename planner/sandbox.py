"""The build sandbox: bubblewrap command lines with fixed paths and a cleared environment.

Inside, a build sees only: the /usr of the set's build root (pinned .debs) read-only, or in a
set without one the host's (with /usr/local hidden, so host-local toolkits cannot leak in), a
generated /etc, its own /build (source, output, HOME, TMPDIR),
its inputs, dependencies and toolchains read-only at fixed paths, and nothing of the store's
real location, the user's home or the network. Every build starts in a fresh pid namespace
with the same command line, so tools that embed pids (nvcc's tmpxft_<pid>) write the same bytes.
"""

from __future__ import annotations

import os
import stat
import shutil
from pathlib import Path
from typing import Optional

import attrs

from .errors import SandboxError

BUILD_DIR = "/build"
BUILD_UID = 1000
BUILD_GID = 1000

# The only variables a build sees besides the ones its recipe declares.
BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": f"{BUILD_DIR}/home",
    "TMPDIR": f"{BUILD_DIR}/tmp",
    "TZ": "UTC",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "USER": "build",
    "TERM": "dumb",
}

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nbuild:x:1000:1000:build:/build/home:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
_GROUP = "root:x:0:\nbuild:x:1000:\nnogroup:x:65534:\n"


@attrs.frozen
class Mount:
    source: Path
    dest: str
    writable: bool = False


def bwrap_path() -> Optional[str]:
    return shutil.which("bwrap")


def require_bwrap() -> str:
    path = bwrap_path()
    if path is None:
        raise SandboxError("bubblewrap (bwrap) is not installed: install it (apt-get install bubblewrap) "
                           "or pass --sandbox=off, which marks every output impure")
    return path


_ETC = {
    "passwd": _PASSWD,
    "group": _GROUP,
    "hostname": "build\n",
    "hosts": "127.0.0.1 localhost build\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}


def _ours(path: Path, kind) -> bool:
    """`path` is of `kind` (S_ISDIR, S_ISREG), not a link, and this user's: what the store's tmp/
    shares between builds is bound into sandboxes, and a store's tmp/ may be shared with users
    who could plant a link to /etc/shadow under the name."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return kind(st.st_mode) and st.st_uid == os.geteuid()


def etc_dir(build_dir: Path) -> Path:
    """A minimal /etc for the sandbox, beside the build directories. Every build binds the same
    read-only files, so they are written once (named by their content) and renamed into place
    whole: written per build they cost each node six file creations and deletions."""
    import zlib

    blob = "".join(f"{k}\0{v}\0" for k, v in sorted(_ETC.items())).encode()
    etc = build_dir.parent / f"etc-{zlib.crc32(blob):08x}"
    if _ours(etc, stat.S_ISDIR):
        return etc
    if os.path.lexists(etc):  # not ours (a link another user of the store planted): a private one
        etc = build_dir / "etc"
    tmp = build_dir.parent / f"{etc.name}.{os.getpid()}.{build_dir.name}"
    tmp.mkdir()
    for name, text in _ETC.items():
        (tmp / name).write_text(text)
    try:
        os.rename(tmp, etc)
    except OSError:  # another build put it there first
        shutil.rmtree(tmp, ignore_errors=True)
        if not etc.is_dir():
            raise
    return etc


def cpus_file(build_dir: Path, cores: int) -> Path:
    """The CPU list that stands in for /sys/devices/system/cpu/{online,possible,present}: one
    file per core count beside the shared /etc, written once and renamed into place whole."""
    path = build_dir.parent / f"cpus-{cores}"
    if _ours(path, stat.S_ISREG):
        return path
    if os.path.lexists(path):  # not ours: a private one, in the build's own folder
        path = build_dir / f"cpus-{cores}"
    tmp = build_dir.parent / f"{path.name}.{os.getpid()}.{build_dir.name}"
    tmp.write_text(cpu_list(cores))
    os.replace(tmp, path)  # the same bytes whoever wins
    return path


def cpu_list(cores: int) -> str:
    """The kernel's CPU list format for `cores` CPUs: "0\n", "0-3\n"."""
    if cores < 1:
        raise SandboxError(f"a build needs at least one core, not {cores}")
    return "0\n" if cores == 1 else f"0-{cores - 1}\n"


def cores_env(cores: int) -> dict[str, str]:
    """What tells a build how many cores it has: the recipe's `[resources] cores`, never the
    machine's. coreutils' nproc honours OMP_NUM_THREADS; glibc's sysconf (Python's
    os.cpu_count(), make, ninja) reads the CPU list the sandbox puts under /sys."""
    return {"NIX_BUILD_CORES": str(cores), "OMP_NUM_THREADS": str(cores)}


def command(argv: list[str], *, build_dir: Path, mounts: list[Mount], env: dict[str, str],
            rootfs: Optional[Path] = None, build_root: Optional[Path] = None, cwd: str = f"{BUILD_DIR}/src",
            cores: int = 1, tmp_size: int = 1 << 30) -> list[str]:
    """The bwrap argv that runs `argv` sandboxed. Paths inside are fixed; only sources vary.
    `rootfs`: a target root filesystem (a pulled image) whole; `build_root`: the set's build
    root; neither: the host's /usr. `tmp_size`: bytes of /tmp and of /dev/shm, each a tmpfs
    (unbounded, a tmpfs may take half the machine's memory)."""
    bwrap = require_bwrap()
    etc = etc_dir(build_dir)
    cpus = cpus_file(build_dir, cores)
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
           "--uid", str(BUILD_UID), "--gid", str(BUILD_GID), "--hostname", "build"]
    generated_etc = ("passwd", "group", "hostname", "hosts", "nsswitch.conf")
    if rootfs is not None:
        # bwrap's own root is a tmpfs: bind the image's top-level entries one by one so that
        # /build, /inputs and friends can still be created beside them.
        for entry in sorted(os.listdir(rootfs)):
            src = os.path.join(rootfs, entry)
            if entry in ("proc", "dev", "tmp", "sys", "build", "inputs", "deps", "toolchains", "run"):
                continue
            if os.path.islink(src):
                cmd += ["--symlink", os.readlink(src), f"/{entry}"]
            elif entry == "etc" and os.path.isdir(src):
                cmd += ["--dir", "/etc"]
                for e in sorted(os.listdir(src)):
                    if e in generated_etc:
                        continue
                    es = os.path.join(src, e)
                    if os.path.islink(es):
                        cmd += ["--symlink", os.readlink(es), f"/etc/{e}"]
                    else:
                        cmd += ["--ro-bind", es, f"/etc/{e}"]
            elif os.path.isdir(src):
                cmd += ["--ro-bind", src, f"/{entry}"]
    else:
        # The set's build root (pinned .debs, assembled by the planner) or, in a set without
        # one, the host: only /usr, its merged-/usr links and the loader's /etc files. A few
        # mounts, not one per entry of /etc: the start-up of every node pays for each.
        base = str(build_root) if build_root is not None else "/"
        cmd += ["--ro-bind", os.path.join(base, "usr"), "/usr"]
        if build_root is None:
            cmd += ["--tmpfs", "/usr/local"]
        for link in ("bin", "lib", "lib64", "sbin"):
            src = os.path.join(base, link)
            if os.path.islink(src):
                cmd += ["--symlink", os.readlink(src), f"/{link}"]
            elif os.path.isdir(src):
                cmd += ["--ro-bind", src, f"/{link}"]
        cmd += ["--dir", "/etc"]
        for keep in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives"):
            if os.path.exists(os.path.join(base, "etc", keep)):
                cmd += ["--ro-bind", os.path.join(base, "etc", keep), f"/etc/{keep}"]
    for name in generated_etc:
        cmd += ["--ro-bind", str(etc / name), f"/etc/{name}"]
    size = str(tmp_size)
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp",
            "--size", size, "--perms", "1777", "--tmpfs", "/dev/shm"]
    # No real /sys: only the CPU count the recipe declares (sysconf(_SC_NPROCESSORS_*) reads it).
    cmd += ["--dir", "/sys/devices/system/cpu"]
    for name in ("online", "possible", "present"):
        cmd += ["--ro-bind", str(cpus), f"/sys/devices/system/cpu/{name}"]
    cmd += ["--bind", str(build_dir), BUILD_DIR]
    for m in sorted(mounts, key=lambda m: m.dest):
        cmd += ["--bind" if m.writable else "--ro-bind", str(m.source), m.dest]
    full_env = dict(BASE_ENV)
    full_env.update(env)
    for k, v in sorted(full_env.items()):
        cmd += ["--setenv", k, v]
    cmd += ["--chdir", cwd, "--"]
    return cmd + argv


def unsandboxed_env(env: dict[str, str], build_dir: Path) -> dict[str, str]:
    """`--sandbox=off`: same variables, real paths. The output is recorded as impure."""
    full = {k: v.replace(BUILD_DIR, str(build_dir)) for k, v in BASE_ENV.items()}
    full["PATH"] = "/usr/bin:/bin"
    full.update({k: v.replace(BUILD_DIR, str(build_dir)) for k, v in env.items()})
    return full
