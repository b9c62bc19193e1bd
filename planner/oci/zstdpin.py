"""zstd from the build root: its pinned `/usr/bin/zstd`, started by the root's own dynamic loader.

Layer bytes must not depend on which zstd the host has (or whether it has one). The build root
is assembled per build platform from `.deb`s the lock pins, so its binaries run on this machine;
starting them through the root's own loader with `--library-path` set to the root's library
folders and `--inhibit-cache` loads its libc and libzstd, never the host's (whose ld.so.cache
and /etc/ld.so.conf name host folders).
"""

from __future__ import annotations

import os
import struct
import subprocess
from functools import lru_cache
from pathlib import Path

import attrs

from ..errors import OciError

_PT_INTERP = 3


@attrs.frozen
class PinnedZstd:
    argv: tuple[str, ...]  # the loader, its options and the zstd binary: prepend to zstd's arguments
    version: str


def resolve_inside(root: Path, rel: str) -> Path:
    """`rel` (a path as the root's programs see it) resolved with every symlink read as inside
    `root`: an absolute target restarts at the root, and nothing may climb above it."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if not done:
                raise OciError(f"/{rel.lstrip('/')} climbs out of the build root", where=str(root))
            done.pop()
            continue
        here = root.joinpath(*done, part)
        if here.is_symlink():
            hops += 1
            if hops > 40:
                raise OciError(f"/{rel.lstrip('/')}: too many links", where=str(root))
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


def elf_interpreter(path: Path) -> str:
    """The PT_INTERP of a little-endian ELF64 executable (amd64 and arm64 both are)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise OciError("not a little-endian ELF64 executable", where=str(path))
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(min(phnum, 64)):
            f.seek(phoff + i * phentsize)
            ph = f.read(56)
            if len(ph) < 56:
                break
            if struct.unpack_from("<I", ph, 0)[0] == _PT_INTERP:
                offset, = struct.unpack_from("<Q", ph, 8)
                size, = struct.unpack_from("<Q", ph, 32)
                if not 0 < size <= 4096:
                    break
                f.seek(offset)
                return f.read(size).split(b"\0", 1)[0].decode("ascii", "replace")
    raise OciError("has no program interpreter", where=str(path))


@lru_cache(maxsize=8)
def load(root: Path) -> PinnedZstd:
    """The build root's zstd, ready to run, and its version (`zstd -V` of that binary)."""
    root = Path(root)
    exe = resolve_inside(root, "usr/bin/zstd")
    if not exe.is_file():
        raise OciError("the build root has no /usr/bin/zstd (add zstd to it)", where=str(root))
    loader = resolve_inside(root, elf_interpreter(exe))
    if not loader.is_file():
        raise OciError(f"the build root has no {elf_interpreter(exe)}, zstd's loader", where=str(root))
    # The loader's own folder is the platform's library folder (usr/lib/<triplet>); the cross
    # toolchain's folders for the other platform are left out.
    argv = (str(loader), "--inhibit-cache", "--library-path", str(loader.parent), str(exe))
    try:
        out = subprocess.run([*argv, "-V"], capture_output=True, text=True, check=False, timeout=60,
                             env={"LC_ALL": "C"}, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise OciError(f"cannot run the build root's zstd: {exc}", where=str(exe)) from None
    import re

    m = re.search(r"v(\d+\.\d+\.\d+)", out.stdout)
    if out.returncode != 0 or not m:
        raise OciError(f"the build root's zstd did not say its version: {(out.stderr or out.stdout).strip()[:200]!r}",
                       where=str(exe))
    return PinnedZstd(argv=argv, version=m.group(1))
