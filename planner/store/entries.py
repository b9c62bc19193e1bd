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
from ..safetree import kind_of

ENTRY_NAME = re.compile(r"([0-9a-z]{32})-(.+)\Z")


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
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):  # a file, a link, a FIFO (whose open would wait), a socket
        path.unlink()
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


# Every file, folder and link of an entry gets this mtime, as Nix gives each store path's files
# 1: a build must not learn when (or after what) its inputs were fetched, checked out or built,
# and a tar or zip of them must not record it. 1980-01-01, not 1: a zip cannot hold an earlier
# date (nixpkgs sets SOURCE_DATE_EPOCH to it for wheels for the same reason).
STORE_MTIME_NS = 315532800 * 10**9


def make_read_only(path: Path, *, keep_top_writable: bool = False) -> None:
    """Normalise an entry and make it read-only: 0555 dirs and executables, 0444 files, every
    mtime STORE_MTIME_NS, no extended attributes (a build's `user.*` or ACL would reach its
    dependents unhashed).

    With `keep_top_writable` the top directory stays 0755: renaming a directory into another
    parent rewrites its `..`, which needs write permission on it (only root bypasses that), so
    the store makes the top read-only after the rename. Anything but files, folders and links,
    a top that is a link, and a tree past MAX_DEPTH or MAX_PATH, is refused (StoreError naming
    its place in the output, not the temporary folder)."""
    top = os.lstat(path)  # never followed: a FIFO would block the walk, a link lead out of the store
    if not (stat.S_ISDIR(top.st_mode) or stat.S_ISREG(top.st_mode)):
        raise StoreError(f"output is {kind_of(top.st_mode)}, not a file or folder")
    if stat.S_ISREG(top.st_mode):
        _drop_xattrs(os.fspath(path))
        os.chmod(path, 0o555 if top.st_mode & stat.S_IXUSR else 0o444)
        os.utime(path, ns=(STORE_MTIME_NS, STORE_MTIME_NS), follow_symlinks=False)
        return
    times = (STORE_MTIME_NS, STORE_MTIME_NS)
    base = os.fspath(path)
    for rel, dirnames, filenames, dirfd in _walk(path, "output"):
        here = f"{base}/{rel}" if rel else base
        for d in dirnames:  # (a build may leave a folder it cannot read: the walk must enter it)
            if not stat.S_ISLNK(os.lstat(d, dir_fd=dirfd).st_mode):
                os.chmod(d, 0o755, dir_fd=dirfd)
            else:
                os.utime(d, ns=times, dir_fd=dirfd, follow_symlinks=False)
        for f in filenames:
            st = os.lstat(f, dir_fd=dirfd)
            if not stat.S_ISLNK(st.st_mode):
                if not stat.S_ISREG(st.st_mode):
                    raise StoreError(f"output holds {kind_of(st.st_mode)}, not a file, folder or link: "
                                     f"{_shown(rel + '/' + f if rel else f)}")
                _drop_xattrs(f"{here}/{f}")
                os.chmod(f, 0o555 if st.st_mode & stat.S_IXUSR else 0o444, dir_fd=dirfd)
            os.utime(f, ns=times, dir_fd=dirfd, follow_symlinks=False)
        _drop_xattrs(dirfd)
        # (a folder made read-only before the walk enters it: its owner may still read it)
        os.fchmod(dirfd, 0o755 if keep_top_writable and not rel else 0o555)
        # Set before its children are: a child's mode, time or attributes leave the folder's
        # mtime as it is (only adding, removing or renaming a name changes it).
        os.utime(dirfd, ns=times)


def _drop_xattrs(target: "str | int") -> None:
    """Remove a file's or folder's extended attributes (a path, never followed, or a folder's
    descriptor). A `security.*` label the system gives every file (SELinux) is not the build's
    and cannot be removed by it: kept; any other that cannot be removed refuses the output."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:  # a file system without extended attributes
        return
    for name in names:
        if name.startswith("security."):
            continue
        try:
            os.removexattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            raise StoreError(f"output holds an extended attribute {name!r} the store cannot remove "
                             f"({exc.strerror})") from None


def entry_dirs(root: Path) -> list[str]:
    """Names under the store root that look like entries (`<32 base32 key>-<name>`)."""
    try:
        return sorted(n for n in os.listdir(root) if ENTRY_NAME.match(n))
    except OSError:
        return []


