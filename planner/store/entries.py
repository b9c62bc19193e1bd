"""Store entries: what an entry is (a local output, one held by a binary cache, a realisation
of an input key), how its folder is named, and the read-only trees on disk."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import attrs

from ..errors import StoreError

ENTRY_NAME = re.compile(r"^([0-9a-z]{32})-(.+)$")


@attrs.frozen
class Entry:
    path: Path
    key: str
    digest: str
    kind: str
    name: str
    impure: bool = False


@attrs.frozen
class RemoteEntry:
    """An output known by key and digest that lives in a binary cache, not in this store.

    Bazel's "build without the bytes": a remote build's intermediate output stays in the cache
    its worker pushed it to; dependants need only its digest (for their build keys) and its
    key (for the next worker to fetch it). `path` is None: nothing local may read it."""

    key: str
    digest: str
    name: str
    cache: str  # the binary cache holding it (oci://HOST/REPO)
    kind: str = "build"
    impure: bool = False
    path: None = None


@attrs.frozen
class Realisation:
    input_key: str
    build_key: str
    digest: str


def _make_writable(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o755)
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) tree or file."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    _make_writable(path)
    shutil.rmtree(path)


def make_read_only(path: Path, *, keep_top_writable: bool = False) -> None:
    """Normalise permissions and make an entry read-only: 0555 dirs and executables, 0444 files.

    With `keep_top_writable` the top directory stays 0755: renaming a directory into another
    parent rewrites its `..`, which needs write permission on it (only root bypasses that), so
    the store makes the top read-only after the rename."""
    if path.is_symlink():
        return
    if path.is_file():
        mode = os.lstat(path).st_mode
        os.chmod(path, 0o555 if mode & stat.S_IXUSR else 0o444)
        return
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"output holds something that is not a file, dir or link: {p}")
            os.chmod(p, 0o555 if st.st_mode & stat.S_IXUSR else 0o444)
        os.chmod(dirpath, 0o755 if keep_top_writable and dirpath == str(path) else 0o555)



def entry_dirs(root: Path) -> list[str]:
    """Names under the store root that look like entries (`<32 base32 key>-<name>`)."""
    try:
        return sorted(n for n in os.listdir(root) if ENTRY_NAME.match(n))
    except OSError:
        return []


