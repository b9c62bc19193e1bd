"""One store entry as a deterministic tar layer, and unpacking it safely; alias tags."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Optional

from .ref import CacheError, _CONTENT_MEMBER

def _content_kind(path: Path) -> str:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def unpack_entry(layer: Path, dest: Path, content: str) -> Path:
    """Unpack a cache layer (gzip tar) to `dest` (which must not exist); returns the content path.

    The layer's content is verified afterwards by tree hash, but unpacking itself must be safe
    on any bytes: no absolute names or `..`, nothing written through a symlink, no specials,
    no duplicates. Symlink targets are kept as they are (a root file system has absolute
    ones); they are created, never followed.
    """
    dest.mkdir(parents=True)
    kinds: dict[str, str] = {"": "dir"}

    def bad(msg: str) -> CacheError:
        return CacheError(f"unsafe cache layer: {msg}", where=str(layer))

    try:
        with tarfile.open(layer, mode="r:gz") as tar:
            for m in tar:
                name = m.name
                while name.startswith("./"):
                    name = name[2:]
                name = name.rstrip("/")
                parts = name.split("/")
                if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                    raise bad(f"member name {m.name!r}")
                if name in kinds:
                    raise bad(f"member {name!r} appears twice")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    k = kinds.get(parent)
                    if k is None:
                        os.mkdir(dest / parent, 0o755)
                        kinds[parent] = "dir"
                    elif k != "dir":
                        raise bad(f"member {name!r} is below a {k}")
                path = dest / name
                if m.isdir():
                    os.mkdir(path, 0o755)
                    os.chmod(path, 0o755)
                    kinds[name] = "dir"
                elif m.isreg():
                    mode = 0o755 if m.mode & 0o100 else 0o644
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                    with os.fdopen(fd, "wb") as out:
                        os.fchmod(out.fileno(), mode)
                        src = tar.extractfile(m)
                        assert src is not None
                        shutil.copyfileobj(src, out, 1 << 20)
                    kinds[name] = "file"
                elif m.issym():
                    os.symlink(m.linkname, path)
                    kinds[name] = "symlink"
                else:
                    raise bad(f"member {name!r} is not a file, directory or symlink")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if isinstance(e, CacheError):
            raise
        raise CacheError(f"cannot unpack cache layer: {e}", where=str(layer)) from None
    if content == "dir":
        os.chmod(dest, 0o755)
        return dest
    if set(kinds) != {"", _CONTENT_MEMBER}:
        raise bad(f"a {content} entry must hold exactly one member named {_CONTENT_MEMBER!r}")
    return dest / _CONTENT_MEMBER


def _slug(text: str, limit: int) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:limit]
    return s if s and (s[0].isalnum() or s[0] == "_") else "_" + s[: limit - 1]


def alias_prefix(name: str, version: Optional[str]) -> str:
    return f"{_slug(name, 60)}--{_slug(version or '', 30)}--"
