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
  existing member (a file over a directory, anything over a symlink).

What is normalised: files are 0644, or 0755 when the owner-executable bit is set; directories
are 0755; owners and times are not restored. That is exactly what tree hash v1 sees.
"""

from __future__ import annotations

import enum
import io
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections import deque
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import attrs

from .errors import FetchError, UnsafeArchive
from .safetree import read_limited

__all__ = ["safe_extract", "open_deb_control", "ArMember", "read_ar"]

_AR_MAGIC = b"!<arch>\n"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# Linux gives up after 40 symlink hops (MAXSYMLINKS); an archive needing more is hostile.
_MAX_LINK_HOPS = 40
_COPY_CHUNK = 1 << 20


# -- ar (the container of a .deb) ------------------------------------------------------------


@attrs.frozen
class ArMember:
    name: str
    offset: int  # of the member's data within the ar file
    size: int


def read_ar(f: BinaryIO, *, where: str) -> list[ArMember]:
    """Member table of a System V / GNU `ar` archive (the format of `.deb` files).

    Only what a .deb needs: short names (GNU's trailing `/` stripped) and BSD `#1/len` long
    names. GNU long-name tables are not used by dpkg, so they are rejected.
    """
    f.seek(0)
    if f.read(8) != _AR_MAGIC:
        raise FetchError("not an ar archive (bad magic)", where=where)
    members: list[ArMember] = []
    while True:
        header = f.read(60)
        if not header:
            return members
        if len(header) != 60 or header[58:60] != b"`\n":
            raise FetchError(f"truncated or corrupt ar header after {len(members)} members", where=where)
        raw_name = header[0:16].decode("ascii", "replace").rstrip()
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise FetchError(f"corrupt ar member size for {raw_name!r}", where=where) from None
        offset = f.tell()
        if raw_name.startswith("#1/"):
            # BSD: the real name is the first N bytes of the data.
            name_len = int(raw_name[3:])
            name = f.read(name_len).rstrip(b"\0").decode("utf-8", "replace")
            offset += name_len
            size -= name_len
        elif raw_name.startswith("/") and raw_name not in ("/", "//"):
            raise FetchError(f"GNU long-name ar member {raw_name!r} is not supported", where=where)
        else:
            name = raw_name[:-1] if raw_name.endswith("/") and raw_name != "/" else raw_name
        members.append(ArMember(name=name, offset=offset, size=size))
        # Member data is padded to an even length.
        f.seek(offset + size + (offset + size) % 2)
        if f.tell() > _file_size(f):
            raise FetchError(f"ar member {name!r} runs past the end of the file", where=where)


def _file_size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


class _Slice(io.RawIOBase):
    """A read-only, seekable window onto part of a file: one ar member, without copying it."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self._f = f
        self._start = offset
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _open_ar_tar(f: BinaryIO, member: ArMember, *, where: str) -> tarfile.TarFile:
    view = io.BufferedReader(_Slice(f, member.offset, member.size), buffer_size=_COPY_CHUNK)
    if member.name.endswith(".zst"):
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise FetchError(f"{member.name} is zstd-compressed and the zstandard module is not installed",
                             where=where) from None
        stream = zstandard.ZstdDecompressor().stream_reader(view)
        return tarfile.open(fileobj=stream, mode="r|")  # zstd stream is not seekable
    try:
        return tarfile.open(fileobj=view, mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FetchError(f"member {member.name} is not a readable tar: {_one_line(e)}", where=where) from None


def _deb_member(members: list[ArMember], prefix: str, *, where: str) -> ArMember:
    found = [m for m in members if m.name.startswith(prefix)]
    if len(found) != 1:
        names = ", ".join(m.name for m in members) or "nothing"
        raise FetchError(f"expected one {prefix}* member in the .deb, found {names}", where=where)
    return found[0]


def open_deb_control(deb: Path) -> dict[str, str]:
    """The fields of a .deb's `control` file (Package, Version, Architecture, Depends, ...).

    Continuation lines are joined with newlines, as deb822 defines them.
    """
    where = str(deb)
    with open(deb, "rb") as f:
        member = _deb_member(read_ar(f, where=where), "control.tar", where=where)
        with _open_ar_tar(f, member, where=where) as tar:
            for info in tar:
                if _normalise_name(info.name) == "control" and info.isreg():
                    data = tar.extractfile(info)
                    assert data is not None
                    raw = read_limited(data, what="control file", where=where)  # a small .deb may inflate
                    return parse_deb822(raw.decode("utf-8", "replace"))
    raise FetchError("no control file in control.tar", where=where)


def parse_deb822(text: str) -> dict[str, str]:
    """One deb822 paragraph: `Field: value` lines, continuation lines start with blank space."""
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first paragraph
            continue
        if line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if sep:
            last = key.strip()
            fields[last] = value.strip()
    return fields


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
    # Returns a readable stream of a FILE's bytes; only valid while iterating.
    open: Callable[[], BinaryIO] | None = None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _normalise_name(raw: str) -> str:
    """Member name without '.' and empty components; '' for the archive root itself."""
    return "/".join(p for p in raw.split("/") if p not in ("", "."))


def _checked_name(raw: str, *, where: str, what: str = "member") -> str:
    if raw.startswith("/"):
        raise UnsafeArchive(f"{what} {raw!r} has an absolute path", where=where)
    if ".." in raw.split("/"):
        raise UnsafeArchive(f"{what} {raw!r} has a '..' component", where=where)
    if "\0" in raw:
        raise UnsafeArchive(f"{what} {raw!r} has a NUL byte in its name", where=where)
    return _normalise_name(raw)


def _tar_members(tar: tarfile.TarFile, *, where: str) -> Iterator[_Member]:
    for info in tar:
        name = _checked_name(info.name, where=where)
        if info.isreg():  # includes contiguous and sparse files
            yield _Member(name, _Kind.FILE, bool(info.mode & stat.S_IXUSR),
                          open=lambda info=info: tar.extractfile(info))  # type: ignore[misc]
        elif info.isdir():
            yield _Member(name, _Kind.DIR)
        elif info.issym():
            yield _Member(name, _Kind.SYMLINK, target=info.linkname)
        elif info.islnk():
            target = _checked_name(info.linkname, where=where, what=f"hardlink {info.name!r} ->")
            yield _Member(name, _Kind.HARDLINK, target=target)
        elif info.ischr() or info.isblk():
            raise UnsafeArchive(f"member {info.name!r} is a device node", where=where)
        elif info.isfifo():
            raise UnsafeArchive(f"member {info.name!r} is a fifo", where=where)
        else:
            raise UnsafeArchive(f"member {info.name!r} has unsupported tar type {info.type!r}", where=where)


def _zip_members(zf: zipfile.ZipFile, *, where: str) -> Iterator[_Member]:
    for info in zf.infolist():
        # Only archives made on Unix carry meaningful mode bits in the high half of external_attr.
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        fmt = stat.S_IFMT(mode)
        name = _checked_name(info.filename, where=where)
        if info.is_dir() or fmt == stat.S_IFDIR:
            yield _Member(name, _Kind.DIR)
        elif fmt == stat.S_IFLNK:
            target = zf.read(info).decode("utf-8", "surrogateescape")
            yield _Member(name, _Kind.SYMLINK, target=target)
        elif fmt in (0, stat.S_IFREG):
            yield _Member(name, _Kind.FILE, bool(mode & stat.S_IXUSR),
                          open=lambda info=info: zf.open(info))  # type: ignore[misc]
        else:
            raise UnsafeArchive(f"member {info.filename!r} is not a file, directory or symlink "
                                f"(mode {oct(mode)})", where=where)


# -- writing ----------------------------------------------------------------------------------


class _Tree:
    """The tree being written under `root`, tracked in memory so that checks never follow links."""

    def __init__(self, root: Path, where: str) -> None:
        from .safetree import Tree

        self.root = root
        self.where = where
        self.tree = Tree(root, where=where)
        self.kinds: dict[str, _Kind] = {"": _Kind.DIR}
        self.links: dict[str, str] = {}

    def _ensure_parents(self, name: str, member: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            kind = self.kinds.get(parent)
            if kind is None:
                self.tree.mkdir(parent)
                self.kinds[parent] = _Kind.DIR
            elif kind is _Kind.SYMLINK:
                raise UnsafeArchive(f"member {member!r} would be written through symlink {parent!r}",
                                    where=self.where)
            elif kind is not _Kind.DIR:
                raise UnsafeArchive(f"member {member!r} needs {parent!r} to be a directory, "
                                    f"but it is a file", where=self.where)

    def _clear_for(self, name: str, kind: _Kind) -> None:
        """Make room for a duplicate member, the way tar does, unless that is unsafe."""
        old = self.kinds.get(name)
        if old is None:
            return
        if old is _Kind.SYMLINK:
            raise UnsafeArchive(f"member {name!r} would overwrite a symlink of the same name", where=self.where)
        if old is _Kind.DIR or kind is _Kind.DIR:
            if old is kind:
                return
            raise UnsafeArchive(f"member {name!r} appears both as a {old.value} and as a {kind.value}",
                                where=self.where)
        self.tree.remove(name)  # a file replaced by a later member of the same name

    def add(self, m: _Member) -> None:
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
                raise UnsafeArchive(f"symlink {m.name!r} has an empty target", where=self.where)
            if m.target.startswith("/"):
                raise UnsafeArchive(f"symlink {m.name!r} -> {m.target!r} has an absolute target", where=self.where)
            self.tree.symlink(m.name, m.target, replace=False)
            self.links[m.name] = m.target
        else:
            if self.kinds.get(m.target) is not _Kind.FILE:
                raise UnsafeArchive(f"hardlink {m.name!r} -> {m.target!r} does not point to a regular "
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
                raise UnsafeArchive(f"symlink {prefix + name!r} -> {target!r} {what}", where=self.where)


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
        raise FetchError(f"cannot read archive: {_one_line(e)}", where=str(archive)) from None
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head == _AR_MAGIC:
        return "deb"
    return "tar"


def _extract_into(archive: Path, tree: _Tree, kind: str) -> None:
    where = tree.where
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for m in _zip_members(zf, where=where):
                    tree.add(m)
        elif kind == "deb":
            with open(archive, "rb") as f:
                data = _deb_member(read_ar(f, where=where), "data.tar", where=where)
                with _open_ar_tar(f, data, where=where) as tar:
                    for m in _tar_members(tar, where=where):
                        tree.add(m)
        else:
            try:
                tar = tarfile.open(archive, mode="r:*")
            except tarfile.ReadError:
                raise FetchError("not a tar, zip or .deb archive", where=where) from None
            with tar:
                for m in _tar_members(tar, where=where):
                    tree.add(m)
    except FetchError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, RuntimeError, ValueError,
            lzma.LZMAError, zlib.error) as e:
        # Truncated streams, bad CRCs, encrypted zip members, decompressor errors, a full disk.
        raise FetchError(f"cannot unpack this {kind} archive: {_one_line(e)}", where=where) from None


def safe_extract(archive: Path, dest: Path, *, strip_single_root: bool = True) -> None:
    """Unpack `archive` (tar[.gz|.bz2|.xz], zip/whl or .deb data) to `dest`, which must not exist.

    The format is recognised by content, not by name. With `strip_single_root`, a tar or zip
    holding exactly one top-level directory and nothing else is unpacked so that this directory
    becomes `dest` (tree hash v1's rule for archives); a .deb's data is never stripped, as it is
    a file system image rooted at /. On any error nothing is left at `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    where = str(archive)
    if os.path.lexists(dest):
        raise FetchError(f"cannot unpack {archive.name}: destination already exists", where=str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpack", dir=dest.parent))
    try:
        tree = _Tree(tmp, where)
        kind = _sniff(archive)
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
