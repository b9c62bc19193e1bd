"""Writing and reading trees that hostile content shares, without ever following its links.

Every in-process writer (archive unpacking, the Debian root filesystem, the CUDA toolkit merge,
image layers, wheel installs, `image-rootfs`, `prebuilt-wheel`) works through a `Tree`: a
directory opened once with O_DIRECTORY|O_NOFOLLOW, below which each path is walked one
component at a time with `openat(O_NOFOLLOW|O_DIRECTORY)`. A symlink met on the way, whoever
planted it (an earlier layer, a dependency's output, a base image), is refused with one line
naming it; nothing is created, written, linked, chmod-ed or deleted through it. The last
component is written with O_CREAT|O_EXCL|O_NOFOLLOW after removing what was there (by unlink,
which never follows), so a link planted where a file is expected is replaced, not written
through.

Reading is the same: `Tree.open_file` opens a regular file below the root and nothing else (no
link, fifo or device), `Tree.walk` lists entries by lstat. The trees are store outputs or build
staging folders, owned by this process: nothing else writes them while they are open.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import BinaryIO, Iterator, Optional

from .errors import UnsafeTree, clip, shown

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
# What an in-process reader takes whole into memory (a wheel's METADATA, an image manifest or
# config, a dpkg status file): anything larger is hostile, not metadata.
MAX_METADATA = 16 << 20
_HEX = frozenset("0123456789abcdef")
# Linux's bounds, checked before the kernel's ENAMETOOLONG, whose text carries the whole name:
# a component of a path, a whole path (of an archive member), and a symlink target (shorter).
NAME_MAX = 255
PATH_MAX = 4096


def byte_len(name: str) -> int:
    """Length in bytes of a name as the file system gets it (undecodable bytes count one)."""
    try:
        return len(name.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate no decoding made: never a file name anyway
        return len(name.encode("utf-8", "surrogatepass"))


def read_limited(f, *, what: str, where: str, limit: int = MAX_METADATA) -> bytes:
    """At most `limit` bytes from a file object or an iterable of chunks (a streamed HTTP body);
    one clear error when there is more: what the planner reads whole must not be unbounded."""
    if hasattr(f, "read"):
        data = f.read(limit + 1)
    else:
        parts, n = [], 0
        for chunk in f:
            parts.append(chunk)
            n += len(chunk)
            if n > limit:
                break
        data = b"".join(parts)
    if len(data) > limit:
        raise UnsafeTree(f"{what} is larger than {_size(limit)}, refused", where=where)
    return data


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def checked_rel(rel: str, *, where: str, what: str = "path") -> list[str]:
    """The components of a relative '/'-separated path; refuses absolute paths, '..', NUL and
    components longer than NAME_MAX."""
    if "\0" in rel:
        raise UnsafeTree(f"{what} {shown(rel)} has a NUL byte", where=where)
    if rel.startswith("/"):
        raise UnsafeTree(f"{what} {shown(rel)} is absolute", where=where)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeTree(f"{what} {shown(rel)} has a '..' component", where=where)
    if any(byte_len(p) > NAME_MAX for p in parts):
        raise UnsafeTree(f"{what} {shown(rel)} has a component longer than {NAME_MAX} bytes", where=where)
    return parts


def has_control(text: str) -> bool:
    """A NUL or other control character (a newline, an escape sequence): what would split or
    rewrite every line that prints the text."""
    return any(c < " " or c == "\x7f" for c in text)


def kind_of(mode: int) -> str:
    """What a file is, for a message: `a symbolic link`, `a fifo`, `a folder`, ..."""
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
            else "a file" if stat.S_ISREG(mode) else "a fifo" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device")


def plain_name(name: str, *, where: str, what: str = "file name") -> str:
    """A single path component: no separator, not '.' or '..', at most NAME_MAX bytes, no NUL or
    other control character (an escape sequence would reach the terminal in every line that
    names the file)."""
    if (not name or "/" in name or "\\" in name or name in (".", "..") or has_control(name)
            or byte_len(name) > NAME_MAX):
        raise UnsafeTree(f"{what} {name!r} is not a plain file name", where=where)
    return name


def blob_hex(digest: object, where: str) -> str:
    """The hex of an OCI `sha256:<64 hex>` digest, which becomes a file name: checked first."""
    if (not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71
            or not set(digest[7:]) <= _HEX):
        raise UnsafeTree(f"digest {str(digest)[:100]!r} is not sha256:<64 hex digits>", where=where)
    return digest[7:]


def regular_files(path: "os.PathLike[str] | str", *, where: str) -> list["os.PathLike[str]"]:
    """`path` itself when it is a regular file, else the regular files directly inside it,
    sorted; links, fifos and devices are left out (never followed, never opened)."""
    from pathlib import Path

    path = Path(path)
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        return [path]
    if not stat.S_ISDIR(st.st_mode):
        return []
    with Tree(path, where=where) as tree:
        return [path / rel for rel, st in tree.walk() if "/" not in rel and stat.S_ISREG(st.st_mode)]


class Tree:
    """A directory, held by descriptor; every operation is relative to it and follows no link."""

    def __init__(self, path: "os.PathLike[str] | str", *, where: str, create: bool = False) -> None:
        self.path = os.fspath(path)
        self.where = where
        if create:
            os.makedirs(self.path, mode=0o755, exist_ok=True)
        try:
            self.fd = os.open(self.path, _DIR_FLAGS)
        except OSError as e:
            raise UnsafeTree(f"cannot open {self.path} as a directory: {e.strerror}", where=where) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Tree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- walking ---------------------------------------------------------------------------

    def _refuse(self, shown: str, what: str) -> UnsafeTree:
        return UnsafeTree(f"{what} /{shown}", where=self.where)

    def dir_fd(self, parts: list[str], *, create: bool, purpose: str = "would be written through") -> int:
        """A new descriptor of the directory `parts` below the root (the caller closes it)."""
        fd = os.dup(self.fd)
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    raise UnsafeTree(f"/{'/'.join(parts[:i + 1])} does not exist", where=self.where) from None
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    os.close(fd)
                    raise UnsafeTree(f"cannot make /{'/'.join(parts[:i + 1])}: {e.strerror}", where=self.where) from None
                os.fchmod(nxt, 0o755)  # not the umask's choice
            except OSError as e:
                os.close(fd)
                shown = "/".join(parts[:i + 1])
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    kind = "symlink" if self._is_link(parts[:i + 1]) else "file"
                    raise self._refuse(f"{shown}", f"{purpose} the {kind}") from None
                raise UnsafeTree(f"cannot open /{shown}: {e.strerror}", where=self.where) from None
            os.close(fd)
            fd = nxt
        return fd

    def _is_link(self, parts: list[str]) -> bool:
        try:
            pfd = self.dir_fd(parts[:-1], create=False)
        except UnsafeTree:
            return False
        try:
            return stat.S_ISLNK(os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False).st_mode)
        finally:
            os.close(pfd)

    def _split(self, rel: str, what: str = "path") -> tuple[list[str], str]:
        parts = checked_rel(rel, where=self.where, what=what)
        if not parts:
            raise UnsafeTree(f"{what} {rel!r} names the root itself", where=self.where)
        return parts[:-1], parts[-1]

    # -- queries ---------------------------------------------------------------------------

    def lstat(self, rel: str) -> Optional[os.stat_result]:
        """lstat of `rel`, None when absent; the parents must be real directories."""
        parents, base = self._split(rel)
        try:
            pfd = self.dir_fd(parents, create=False, purpose="would be read through")
        except UnsafeTree as e:
            if "does not exist" in e.message:
                return None
            raise
        try:
            return os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(pfd)

    def open_file(self, rel: str) -> BinaryIO:
        """A regular file below the root, for reading; a link, fifo or device is refused."""
        parents, base = self._split(rel)
        pfd = self.dir_fd(parents, create=False, purpose="would be read through")
        try:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._refuse(rel, "would read through the symlink") from None
            raise UnsafeTree(f"cannot read /{rel}: {e.strerror}", where=self.where) from None
        finally:
            os.close(pfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeTree(f"/{rel} is not a regular file", where=self.where)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def read_bytes(self, rel: str, *, limit: int) -> bytes:
        """A regular file's bytes, refusing more than `limit` (readers must not be unbounded)."""
        with self.open_file(rel) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise UnsafeTree(f"/{rel} is larger than {limit} bytes", where=self.where)
        return data

    def walk(self, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """Every entry below `rel` as ('a/b', lstat), parents before children, names sorted."""
        parts = checked_rel(rel, where=self.where)
        fd = self.dir_fd(parts, create=False, purpose="would be read through")
        try:
            yield from self._walk_fd(fd, "/".join(parts))
        finally:
            os.close(fd)

    def _walk_fd(self, fd: int, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        for name in sorted(os.listdir(fd)):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            rel = f"{prefix}/{name}" if prefix else name
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    yield from self._walk_fd(sub, rel)
                finally:
                    os.close(sub)

    # -- writing ---------------------------------------------------------------------------

    def mkdir(self, rel: str) -> None:
        """`rel` and its parents as real directories (0755); an existing link is refused."""
        fd = self.dir_fd(checked_rel(rel, where=self.where), create=True)
        os.close(fd)

    def _clear(self, pfd: int, base: str, rel: str, *, keep_dir: bool = False) -> None:
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(base, dir_fd=pfd)  # fd-based on Linux: never follows a link
        else:
            os.unlink(base, dir_fd=pfd)

    def write(self, rel: str, src: "BinaryIO | bytes", *, executable: bool = False, replace: bool = True) -> None:
        """A regular file 0644/0755 at `rel` from a stream or bytes; what was there is replaced
        (a directory too, when `replace`), never written through."""
        parents, base = self._split(rel)
        pfd = self.dir_fd(parents, create=True)
        mode = 0o755 if executable else 0o644
        try:
            if replace:
                self._clear(pfd, base, rel)
            try:
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                             dir_fd=pfd)
            except FileExistsError:
                raise UnsafeTree(f"/{rel} exists already", where=self.where) from None
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), mode)
                if isinstance(src, (bytes, bytearray, memoryview)):
                    out.write(src)
                else:
                    shutil.copyfileobj(src, out, _CHUNK)
        finally:
            os.close(pfd)

    def symlink(self, rel: str, target: str, *, replace: bool = True) -> None:
        """A symlink at `rel` (its target is stored, never followed here)."""
        if "\0" in target or not target:
            raise UnsafeTree(f"symlink /{clip(rel)} has an empty or NUL target", where=self.where)
        if byte_len(target) >= PATH_MAX:
            raise UnsafeTree(f"symlink /{clip(rel)}: target longer than {PATH_MAX - 1} bytes", where=self.where)
        parents, base = self._split(rel)
        pfd = self.dir_fd(parents, create=True)
        try:
            if replace:
                self._clear(pfd, base, rel)
            os.symlink(target, base, dir_fd=pfd)
        finally:
            os.close(pfd)

    def hardlink(self, rel: str, target: str) -> None:
        """`rel` as a second name of the regular file `target`, both below the root.

        The target is walked like any path, so a hardlink through a directory link (the way to
        pull /etc/shadow into an image) is refused."""
        tparents, tbase = self._split(target, "hardlink target")
        tfd = self.dir_fd(tparents, create=False, purpose="hardlink target would be reached through")
        try:
            st = os.stat(tbase, dir_fd=tfd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(tfd)
            raise UnsafeTree(f"hardlink /{rel} -> /{target}: no such file", where=self.where) from None
        if not stat.S_ISREG(st.st_mode):
            os.close(tfd)
            raise UnsafeTree(f"hardlink /{rel} -> /{target} does not name a regular file", where=self.where)
        parents, base = self._split(rel)
        try:
            pfd = self.dir_fd(parents, create=True)
            try:
                self._clear(pfd, base, rel)
                os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(pfd)
        finally:
            os.close(tfd)

    def remove(self, rel: str) -> None:
        """Delete `rel` (a file, link or whole directory) if present; never follows a link."""
        parents, base = self._split(rel)
        try:
            pfd = self.dir_fd(parents, create=False, purpose="would delete through")
        except UnsafeTree as e:
            if "does not exist" in e.message:
                return
            raise
        try:
            self._clear(pfd, base, rel)
        finally:
            os.close(pfd)

    def empty_dir(self, rel: str) -> None:
        """Delete everything inside the directory `rel` (an OCI opaque whiteout)."""
        fd = self.dir_fd(checked_rel(rel, where=self.where), create=True)
        try:
            for name in os.listdir(fd):
                self._clear(fd, name, name)
        finally:
            os.close(fd)

    def chmod(self, rel: str, mode: int) -> None:
        """chmod a file or directory below the root; a link is left alone."""
        parts = checked_rel(rel, where=self.where)
        if not parts:
            os.fchmod(self.fd, mode)
            return
        pfd = self.dir_fd(parts[:-1], create=False, purpose="would chmod through")
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return
            raise UnsafeTree(f"cannot chmod /{rel}: {e.strerror}", where=self.where) from None
        finally:
            os.close(pfd)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def copy_from(self, src: "Tree", *, into: str = "", merge: bool = True, move: bool = False) -> int:
        """Copy every entry of `src` below `into`, as it is (links copied as links, modes
        normalised to 0755/0644), merging into existing directories; returns the entry count.
        With `move`, regular files are renamed instead of copied (same file system; `src` is
        a staging folder left incomplete).

        Neither tree's links are followed: a link in `src` becomes a link here, and a link here
        where `src` has a directory is refused rather than written through."""
        prefix = "/".join(checked_rel(into, where=self.where))
        if prefix:
            self.mkdir(prefix)
        n = 0
        for rel, st in src.walk():
            dest = f"{prefix}/{rel}" if prefix else rel
            n += 1
            if stat.S_ISDIR(st.st_mode):
                existing = self.lstat(dest)
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    if not merge:
                        raise UnsafeTree(f"/{dest} exists already", where=self.where)
                    continue
                if existing is not None and stat.S_ISLNK(existing.st_mode):
                    raise self._refuse(dest, f"{src.where}: directory would be merged through the symlink")
                if existing is not None:
                    raise self._refuse(dest, f"{src.where}: a directory would replace the file")
                self.mkdir(dest)
                continue
            elif stat.S_ISLNK(st.st_mode):
                parents, base = src._split(rel)
                pfd = src.dir_fd(parents, create=False, purpose="would be read through")
                try:
                    target = os.readlink(base, dir_fd=pfd)
                finally:
                    os.close(pfd)
                self._refuse_kind_change(dest, st, src)
                self.symlink(dest, target)
                continue
            else:
                self._refuse_kind_change(dest, st, src)
            if stat.S_ISREG(st.st_mode) and move:
                self._move_in(src, rel, dest, executable=bool(st.st_mode & stat.S_IXUSR))
            elif stat.S_ISREG(st.st_mode):
                with src.open_file(rel) as f:
                    self.write(dest, f, executable=bool(st.st_mode & stat.S_IXUSR))
            else:
                raise UnsafeTree(f"/{rel} is not a file, directory or symlink", where=src.where)
        return n

    def _refuse_kind_change(self, dest: str, st: os.stat_result, src: "Tree") -> None:
        """Merging trees: a file may replace a file, but nothing replaces a symlink or a
        directory of the other kind (the result would depend on the merge order, and a link
        there was planted by an earlier tree)."""
        old = self.lstat(dest)
        if old is None or stat.S_IFMT(old.st_mode) == stat.S_IFMT(st.st_mode):
            if old is not None and stat.S_ISLNK(old.st_mode):
                raise self._refuse(dest, f"{src.where}: would replace the symlink")
            return
        kind = "symlink" if stat.S_ISLNK(old.st_mode) else "directory" if stat.S_ISDIR(old.st_mode) else "file"
        raise self._refuse(dest, f"{src.where}: would replace the {kind}")

    def _move_in(self, src: "Tree", rel: str, dest: str, *, executable: bool) -> None:
        sparents, sbase = src._split(rel)
        parents, base = self._split(dest)
        sfd = src.dir_fd(sparents, create=False, purpose="would be read through")
        try:
            pfd = self.dir_fd(parents, create=True)
            try:
                self._clear_for_move(pfd, base)
                os.chmod(sbase, 0o755 if executable else 0o644, dir_fd=sfd)  # a regular file: lstat said so
                os.rename(sbase, base, src_dir_fd=sfd, dst_dir_fd=pfd)  # replaces a link, never follows it
            finally:
                os.close(pfd)
        finally:
            os.close(sfd)

    def _clear_for_move(self, pfd: int, base: str) -> None:
        """rename() replaces a file or link but not a directory: remove that first."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(base, dir_fd=pfd)
