"""Applying image layers to a directory, the way a container runtime does (whiteouts included)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..safetree import Tree, checked_rel


def apply_layer(blob: "Path | BinaryIO", root: Tree) -> None:
    """Apply one image layer to `root` the way a container runtime does: later layers replace
    earlier entries, `.wh.NAME` deletes NAME, `.wh..wh..opq` empties its directory. Nothing is
    written, linked or deleted through a symlink (an earlier layer's `etc -> /etc` stays a
    link, and a member under it is refused), no member escapes, times/owners/special files are
    not kept."""
    import tarfile

    where = root.where
    with tarfile.open(fileobj=blob, mode="r:*") as tf:  # type: ignore[call-overload]
        for m in tf:
            name = "/".join(checked_rel(m.name.lstrip("/"), where=where, what="layer member"))
            if not name:
                continue
            parent, base = os.path.split(name)
            if base == ".wh..wh..opq":
                root.empty_dir(parent)
                continue
            if base.startswith(".wh."):
                if parent:
                    root.mkdir(parent)
                root.remove(f"{parent}/{base[4:]}" if parent else base[4:])
                continue
            if m.isdir():
                st = root.lstat(name)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    root.remove(name)
                root.mkdir(name)
                root.chmod(name, 0o755)
            elif m.isreg():
                src = tf.extractfile(m)
                assert src is not None
                root.write(name, src, executable=bool(m.mode & 0o100))
            elif m.issym():
                root.symlink(name, m.linkname)
            elif m.islnk():
                target = "/".join(checked_rel(m.linkname.lstrip("/"), where=where, what="hardlink target"))
                root.hardlink(name, target)
            # devices and fifos are not part of a build root: skipped
