"""Safe unpacking of source archives: tar (plain, gz, bz2, xz), zip/wheel and Debian `.deb`.

An archive is untrusted input. Every member is checked before anything is written, and the
result is assembled in a temporary directory next to `dest` that is renamed into place only
when the whole archive has been read and checked, so a rejected archive leaves nothing behind.

What is rejected (as `UnsafeArchive`, naming the member):
- absolute member names and names with a `..` component;
- symlinks whose target is absolute or resolves (through the archive's other symlinks)
  outside the final root;
- hardlinks to anything but a regular file extracted earlier from the same archive;
- device, fifo and other special members;
- members that would be written through a symlink, or that change the kind of an
  existing member (a file over a directory, anything over a symlink);
- names longer than PATH_MAX or with a component longer than NAME_MAX, link targets the
  kernel would not store, and extended tar headers over a MiB (read before any check);
- archives that would unpack to more members or bytes than `UnpackLimits` allows.

What is normalised: files are 0644, or 0755 when the owner-executable bit is set; directories
are 0755; owners and times are not restored. That is exactly what tree hash v1 sees.
"""

from __future__ import annotations

import enum
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections import deque
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import attrs

from .errors import FetchError, UnsafeArchive, UnsafeTree, shown
from .debfile import AR_MAGIC, deb_member, open_ar_tar, read_ar
from .zstdstream import ZSTD_MAGIC
from .safetree import NAME_MAX, PATH_MAX, byte_len
from .tarbounds import BoundedTarInfo, HeaderRefused, normalise_name, one_line, read_errors, size_text

__all__ = ["safe_extract", "UnpackLimits"]

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# Linux gives up after 40 symlink hops (MAXSYMLINKS); an archive needing more is hostile.
_MAX_LINK_HOPS = 40
_COPY_CHUNK = 1 << 20
@attrs.frozen
class UnpackLimits:
    """What one archive may unpack to. Unpacking happens at lock and prefetch time, on the
    user's disk, and a few KiB of bzip2 or an overlapping zip can stand for terabytes or
    millions of inodes.

    Bytes: at most `ratio` times the archive's own size, but never less than `floor` nor more
    than `bytes`. Source text compresses 5-20 times and deflate cannot pass ~1032; a larger
    ratio over more than a GiB is a bomb (bzip2 or xz of zeros, zip entries sharing data).
    Sizes are the members' declared ones: tarfile and zipfile never yield more than that.
    """

    members: int = 1_000_000
    bytes: int = 64 << 30
    ratio: int = 200
    floor: int = 1 << 30

    def max_bytes(self, archive_size: int) -> int:
        return min(self.bytes, max(self.floor, self.ratio * archive_size))

    def describe(self) -> str:
        return (f"at most {self.ratio} times the archive's size, at least {size_text(self.floor)}, "
                f"at most {size_text(self.bytes)}")


# -- members: one neutral model for tar and zip ---------------------------------------------


class _Kind(enum.Enum):
    FILE = "file"
    DIR = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@attrs.frozen
class _Member:
    name: str  # normalised: relative, '/'-separated, no '.', '..' or empty components
    kind: _Kind
    executable: bool = False
    target: str = ""  # symlink target as stored; hardlink target normalised like `name`
    size: int = 0  # a FILE's declared size: what its stream yields, no more
    # Returns a readable stream of a FILE's bytes; only valid while iterating.
    open: Callable[[], BinaryIO] | None = None


def _checked_name(raw: str, *, where: str, what: str = "member") -> str:
    # Lengths first: the other checks would split or quote a megabyte name.
    if byte_len(raw) > PATH_MAX:
        raise UnsafeArchive(f"{what} {shown(raw)}: name longer than {PATH_MAX} bytes", where=where)
    if raw.startswith("/"):
        raise UnsafeArchive(f"{what} {shown(raw)} has an absolute path", where=where)
    parts = raw.split("/")
    if ".." in parts:
        raise UnsafeArchive(f"{what} {shown(raw)} has a '..' component", where=where)
    if "\0" in raw:
        raise UnsafeArchive(f"{what} {shown(raw)} has a NUL byte in its name", where=where)
    if any(byte_len(p) > NAME_MAX for p in parts):
        raise UnsafeArchive(f"{what} {shown(raw)}: a path component longer than {NAME_MAX} bytes", where=where)
    return normalise_name(raw)


def _checked_target(name: str, target: str, *, where: str) -> str:
    """A symlink target the kernel will store (shorter than PATH_MAX, no NUL)."""
    if byte_len(target) >= PATH_MAX:
        raise UnsafeArchive(f"symlink {shown(name)}: target longer than {PATH_MAX - 1} bytes", where=where)
    if "\0" in target:
        raise UnsafeArchive(f"symlink {shown(name)} has a NUL byte in its target", where=where)
    return target


def _tar_members(tar: tarfile.TarFile, *, where: str) -> Iterator[_Member]:
    for info in tar:
        name = _checked_name(info.name, where=where)
        if info.isreg():  # includes contiguous and sparse files
            yield _Member(name, _Kind.FILE, bool(info.mode & stat.S_IXUSR), size=info.size,
                          open=lambda info=info: tar.extractfile(info))  # type: ignore[misc]
        elif info.isdir():
            yield _Member(name, _Kind.DIR)
        elif info.issym():
            yield _Member(name, _Kind.SYMLINK, target=_checked_target(info.name, info.linkname, where=where))
        elif info.islnk():
            target = _checked_name(info.linkname, where=where, what=f"hardlink {shown(info.name)} ->")
            yield _Member(name, _Kind.HARDLINK, target=target)
        elif info.ischr() or info.isblk():
            raise UnsafeArchive(f"member {shown(info.name)} is a device node", where=where)
        elif info.isfifo():
            raise UnsafeArchive(f"member {shown(info.name)} is a fifo", where=where)
        else:
            raise UnsafeArchive(f"member {shown(info.name)} has unsupported tar type {info.type!r}", where=where)


def _zip_members(zf: zipfile.ZipFile, *, where: str) -> Iterator[_Member]:
    for info in zf.infolist():
        # Only archives made on Unix carry meaningful mode bits in the high half of external_attr.
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        fmt = stat.S_IFMT(mode)
        name = _checked_name(info.filename, where=where)
        if info.is_dir() or fmt == stat.S_IFDIR:
            yield _Member(name, _Kind.DIR)
        elif fmt == stat.S_IFLNK:
            # The target is the member's data, which may inflate to gigabytes: one byte past
            # the longest target the kernel stores is enough to refuse it.
            with zf.open(info) as data:
                raw = data.read(PATH_MAX)
            target = raw.decode("utf-8", "surrogateescape")
            yield _Member(name, _Kind.SYMLINK, target=_checked_target(info.filename, target, where=where))
        elif fmt in (0, stat.S_IFREG):
            yield _Member(name, _Kind.FILE, bool(mode & stat.S_IXUSR), size=info.file_size,
                          open=lambda info=info: zf.open(info))  # type: ignore[misc]
        else:
            raise UnsafeArchive(f"member {shown(info.filename)} is not a file, directory or symlink "
                                f"(mode {oct(mode)})", where=where)


# -- writing ----------------------------------------------------------------------------------


class _Tree:
    """The tree being written under `root`, tracked in memory so that checks never follow links."""

    def __init__(self, root: Path, where: str, limits: UnpackLimits, archive_size: int) -> None:
        from .safetree import Tree

        self.root = root
        self.where = where
        self.tree = Tree(root, where=where)
        self.kinds: dict[str, _Kind] = {"": _Kind.DIR}
        self.links: dict[str, str] = {}
        self.limits = limits
        self.max_bytes = limits.max_bytes(archive_size)
        self.members = 0
        self.bytes = 0

    def check_totals(self, members: int, size: int, at: str | None = None) -> None:
        """Refuse before writing what would take the archive past its limits."""
        if members > self.limits.members:
            raise UnsafeArchive(f"more than {self.limits.members:,} members: refused", where=self.where)
        if size > self.max_bytes:
            member = f" (at member {shown(at)})" if at is not None else ""
            raise UnsafeArchive(f"unpacks to more than {size_text(self.max_bytes)}{member}: refused "
                                f"({self.limits.describe()})", where=self.where)

    def _count(self, m: _Member) -> None:
        if m.size < 0:  # a GNU sparse map can still declare one: it would subtract from the count
            raise UnsafeArchive(f"member {shown(m.name)} has a negative size", where=self.where)
        self.members += 1
        self.bytes += m.size
        self.check_totals(self.members, self.bytes, m.name)

    def _ensure_parents(self, name: str, member: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            kind = self.kinds.get(parent)
            if kind is None:
                self.tree.mkdir(parent)
                self.kinds[parent] = _Kind.DIR
            elif kind is _Kind.SYMLINK:
                raise UnsafeArchive(f"member {shown(member)} would be written through symlink {shown(parent)}",
                                    where=self.where)
            elif kind is not _Kind.DIR:
                raise UnsafeArchive(f"member {shown(member)} needs {shown(parent)} to be a directory, "
                                    f"but it is a file", where=self.where)

    def _clear_for(self, name: str, kind: _Kind) -> None:
        """Make room for a duplicate member, the way tar does, unless that is unsafe."""
        old = self.kinds.get(name)
        if old is None:
            return
        if old is _Kind.SYMLINK:
            raise UnsafeArchive(f"member {shown(name)} would overwrite a symlink of the same name",
                                where=self.where)
        if old is _Kind.DIR or kind is _Kind.DIR:
            if old is kind:
                return
            raise UnsafeArchive(f"member {shown(name)} appears both as a {old.value} and as a {kind.value}",
                                where=self.where)
        self.tree.remove(name)  # a file replaced by a later member of the same name

    def add(self, m: _Member) -> None:
        self._count(m)
        if m.name == "":
            if m.kind is not _Kind.DIR:
                raise UnsafeArchive(f"a {m.kind.value} member names the archive root", where=self.where)
            return
        self._ensure_parents(m.name, m.name)
        if m.kind is _Kind.DIR:
            self._clear_for(m.name, m.kind)
            if m.name not in self.kinds:
                self.tree.mkdir(m.name)
        elif m.kind is _Kind.FILE:
            self._clear_for(m.name, m.kind)
            assert m.open is not None
            self._write_file(m)
        elif m.kind is _Kind.SYMLINK:
            self._clear_for(m.name, m.kind)
            if not m.target:
                raise UnsafeArchive(f"symlink {shown(m.name)} has an empty target", where=self.where)
            if m.target.startswith("/"):
                raise UnsafeArchive(f"symlink {shown(m.name)} -> {shown(m.target)} has an absolute target",
                                    where=self.where)
            self.tree.symlink(m.name, m.target, replace=False)
            self.links[m.name] = m.target
        else:
            if self.kinds.get(m.target) is not _Kind.FILE:
                raise UnsafeArchive(f"hardlink {shown(m.name)} -> {shown(m.target)} does not point to a regular "
                                    f"file extracted earlier", where=self.where)
            self._clear_for(m.name, _Kind.FILE)
            self.tree.hardlink(m.name, m.target)
            m = attrs.evolve(m, kind=_Kind.FILE)
        self.kinds[m.name] = m.kind

    def _write_file(self, m: _Member) -> None:
        src = m.open()  # type: ignore[misc]
        try:
            # O_EXCL|O_NOFOLLOW: never write into something that exists, least of all a link.
            self.tree.write(m.name, src, executable=m.executable, replace=False)
        finally:
            src.close()

    def single_root(self) -> str | None:
        """The one top-level directory, when it is the only top-level entry."""
        top = {name.split("/", 1)[0] for name in self.kinds if name}
        if len(top) == 1:
            (only,) = top
            if self.kinds.get(only) is _Kind.DIR:
                return only
        return None

    def check_links(self, root: str) -> None:
        """Every symlink under `root` must resolve inside `root`, given all the archive's links.

        Done once the whole archive is known: a later member can turn a harmless-looking link
        into an escape (`a -> d/l/..` followed by `d/l -> ..`).
        """
        prefix = root + "/" if root else ""
        links = {n[len(prefix):]: t for n, t in self.links.items() if n.startswith(prefix)}
        for name, target in sorted(links.items()):
            escapes = _link_escapes(name, target, links)
            if escapes:
                what = "is part of a symlink loop" if escapes == "loop" else "points outside the archive"
                raise UnsafeArchive(f"symlink {shown(prefix + name)} -> {shown(target)} {what}", where=self.where)


def _link_escapes(name: str, target: str, links: dict[str, str]) -> "bool | str":
    """Whether following `name -> target` leaves the root, expanding links inside the tree.

    Components are resolved as the kernel would: each prefix that is itself a link is replaced
    by its target before the next component (`..` included) is applied.
    """
    if target.startswith("/"):
        return True
    stack = name.split("/")[:-1]
    todo = deque(target.split("/"))
    hops = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
            continue
        stack.append(part)
        current = "/".join(stack)
        if current in links:
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return "loop"  # the kernel would refuse it (ELOOP), and so do we
            inner = links[current]
            if inner.startswith("/"):
                return True
            stack.pop()
            todo.extendleft(reversed(inner.split("/")))
    return False


# -- entry point ------------------------------------------------------------------------------


def _sniff(archive: Path) -> str:
    try:
        with open(archive, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise FetchError(f"cannot read archive: {one_line(e)}", where=str(archive)) from None
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head == AR_MAGIC:
        return "deb"
    if head.startswith(ZSTD_MAGIC):
        return "tar.zst"
    return "tar"


def _extract_into(archive: Path, tree: _Tree, kind: str) -> None:
    where = tree.where
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                # The central directory tells it all up front: refuse before writing anything.
                infos = zf.infolist()
                tree.check_totals(len(infos), sum(i.file_size for i in infos if not i.is_dir()))
                for m in _zip_members(zf, where=where):
                    tree.add(m)
        elif kind == "deb":
            with open(archive, "rb") as f:
                data = deb_member(read_ar(f, where=where), "data.tar", where=where)
                with open_ar_tar(f, data, where=where) as tar:
                    for m in _tar_members(tar, where=where):
                        tree.add(m)
        elif kind == "tar.zst":
            _extract_zstd_tar(archive, tree)
        else:
            try:
                tar = tarfile.open(archive, mode="r:*", tarinfo=BoundedTarInfo)
            except tarfile.ReadError:
                raise FetchError("not a tar, zip or .deb archive", where=where) from None
            with tar:
                for m in _tar_members(tar, where=where):
                    tree.add(m)
    except FetchError:
        raise
    except HeaderRefused as e:
        raise UnsafeArchive(str(e), where=where) from None
    except UnsafeTree as e:
        # The writer's own refusals (a full disk while making a directory): a FetchError like
        # the rest, so that callers name the input it came as.
        raise FetchError(e.message, where=where) from None
    except read_errors() as e:
        raise FetchError(f"cannot unpack this {kind} archive: {one_line(e)}", where=where) from None


def _extract_zstd_tar(archive: Path, tree: "_Tree") -> None:
    """A .tar.zst, streamed through the host's zstd (members in order, as a .deb's)."""
    from .zstdstream import ZstdReader

    with open(archive, "rb") as f:
        reader = ZstdReader(f, tree.where, FetchError)
        complete = False
        try:
            try:
                tar = tarfile.open(fileobj=reader.stdout, mode="r|", tarinfo=BoundedTarInfo)
            except tarfile.ReadError:
                raise FetchError("zstd-compressed, but not a tar inside", where=tree.where) from None
            with tar:
                for m in _tar_members(tar, where=tree.where):
                    tree.add(m)
            complete = True
        finally:
            reader.close(check=complete)


def safe_extract(archive: Path, dest: Path, *, strip_single_root: bool = True,
                 limits: UnpackLimits = UnpackLimits()) -> None:
    """Unpack `archive` (tar[.gz|.bz2|.xz|.zst], zip/whl or .deb data) to `dest`, which must not exist.

    The format is recognised by content, not by name. With `strip_single_root`, a tar or zip
    holding exactly one top-level directory and nothing else is unpacked so that this directory
    becomes `dest` (tree hash v1's rule for archives); a .deb's data is never stripped, as it is
    a file system image rooted at /. `limits` bound the members and bytes it may unpack to.
    On any error nothing is left at `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    where = str(archive)
    if os.path.lexists(dest):
        raise FetchError(f"cannot unpack {archive.name}: destination already exists", where=str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpack", dir=dest.parent))
    try:
        kind = _sniff(archive)
        tree = _Tree(tmp, where, limits, os.stat(archive).st_size)
        try:
            _extract_into(archive, tree, kind)
        finally:
            tree.tree.close()
        # A .deb's data is a file system rooted at /: its lone `usr` is not a wrapper directory.
        root = tree.single_root() if strip_single_root and kind != "deb" else None
        tree.check_links(root or "")
        if root is not None:
            os.rename(tmp / root, dest)
        else:
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
            os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
