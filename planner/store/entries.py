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


# An output deeper or with longer paths than this is refused: the store's walks (modes, the tree
# hash) and every tool that later reads the tree (tar, rsync, a registry's layer) handle it, and
# the planner's own checks run in bounded recursion and never reach PATH_MAX.
MAX_DEPTH = 256
MAX_PATH = 3072  # bytes of a path inside an output: the store's own path still fits in PATH_MAX


def _raise(exc: OSError) -> None:
    raise exc


def _walk(path: Path, what: str):
    """os.fwalk of a tree, top down, by descriptors (no path grows past PATH_MAX), refusing a
    tree deeper than MAX_DEPTH or holding a path longer than MAX_PATH: (relative folder,
    dirnames, filenames, its descriptor)."""
    top = os.fspath(path)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top, onerror=_raise):
        rel = dirpath[len(top) + 1:]
        depth = rel.count("/") + 1 if rel else 0
        if dirnames and depth >= MAX_DEPTH:
            raise StoreError(f"{what} nests deeper than {MAX_DEPTH} directories (at {_shown(rel)})")
        for name in dirnames + filenames:
            if len(rel) + 1 + len(name.encode("utf-8", "surrogateescape")) > MAX_PATH:
                raise StoreError(f"{what} holds a path longer than {MAX_PATH} bytes ({_shown(rel + '/' + name)})")
        yield rel, dirnames, filenames, dirfd


def _shown(rel: str) -> str:
    return repr(rel if len(rel) <= 80 else rel[:40] + "…" + rel[-30:])


def _make_writable(path: Path) -> None:
    # Each folder made writable (and enterable) from its parent, before the walk opens it.
    for _rel, dirnames, _files, dirfd in os.fwalk(os.fspath(path), onerror=_raise):
        os.fchmod(dirfd, 0o755)
        for d in dirnames:
            if not stat.S_ISLNK(os.lstat(d, dir_fd=dirfd).st_mode):
                os.chmod(d, 0o755, dir_fd=dirfd)


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) tree or file, however deep or long its paths (a failed
    build's output is whatever the build left)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    try:
        _make_writable(path)
        shutil.rmtree(path)
    except (OSError, RecursionError):
        # Deeper than Python's recursion, or a folder the walk could not open: coreutils
        # walk any depth without recursion (fts). Refused only if they fail too.
        import subprocess

        subprocess.run(["chmod", "-R", "u+rwx", "--", os.fspath(path)], capture_output=True)
        done = subprocess.run(["rm", "-rf", "--", os.fspath(path)], capture_output=True, text=True)
        if done.returncode != 0 or os.path.lexists(path):
            raise StoreError(f"cannot remove: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}",
                             where=path.name) from None


def make_read_only(path: Path, *, keep_top_writable: bool = False) -> None:
    """Normalise permissions and make an entry read-only: 0555 dirs and executables, 0444 files.

    With `keep_top_writable` the top directory stays 0755: renaming a directory into another
    parent rewrites its `..`, which needs write permission on it (only root bypasses that), so
    the store makes the top read-only after the rename. Anything but files, folders and links,
    and a tree past MAX_DEPTH or MAX_PATH, is refused (StoreError naming its place in the
    output, not the temporary folder)."""
    if path.is_symlink():
        return
    if path.is_file():
        mode = os.lstat(path).st_mode
        os.chmod(path, 0o555 if mode & stat.S_IXUSR else 0o444)
        return
    for rel, dirnames, filenames, dirfd in _walk(path, "output"):
        for d in dirnames:  # (a build may leave a folder it cannot read: the walk must enter it)
            if not stat.S_ISLNK(os.lstat(d, dir_fd=dirfd).st_mode):
                os.chmod(d, 0o755, dir_fd=dirfd)
        for f in filenames:
            st = os.lstat(f, dir_fd=dirfd)
            if stat.S_ISLNK(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                kind = "a fifo" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) \
                    else "a device"
                raise StoreError(f"output holds {kind}, not a file, folder or link: {_shown(rel + '/' + f if rel else f)}")
            os.chmod(f, 0o555 if st.st_mode & stat.S_IXUSR else 0o444, dir_fd=dirfd)
        # (a folder made read-only before the walk enters it: its owner may still read it)
        os.fchmod(dirfd, 0o755 if keep_top_writable and not rel else 0o555)


def entry_dirs(root: Path) -> list[str]:
    """Names under the store root that look like entries (`<32 base32 key>-<name>`)."""
    try:
        return sorted(n for n in os.listdir(root) if ENTRY_NAME.match(n))
    except OSError:
        return []


