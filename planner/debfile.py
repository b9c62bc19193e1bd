"""Debian packages: the `ar` container of a `.deb`, its members as tar streams, and its
control file. A `.deb` comes from a mirror or a lockfile's URL: every header is untrusted."""

from __future__ import annotations

import contextlib

import io
import os
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

import attrs

from .errors import FetchError, PlannerError, UnsafeArchive, shown
from .safetree import PATH_MAX, read_limited
from .tarbounds import BoundedTarInfo, HeaderRefused, normalise_name, one_line, read_errors

AR_MAGIC = b"!<arch>\n"
_COPY_CHUNK = 1 << 20
# A .deb has three members (and perhaps a signature); more is no package. A BSD long name is
# read whole, so it is bounded like any path.
_AR_MAX_MEMBERS = 1024

@attrs.frozen
class ArMember:
    name: str
    offset: int  # of the member's data within the ar file
    size: int


def read_ar(f: BinaryIO, *, where: str) -> list[ArMember]:
    """Member table of a System V / GNU `ar` archive (the format of `.deb` files).

    Only what a .deb needs: short names (GNU's trailing `/` stripped) and BSD `#1/len` long
    names. GNU long-name tables are not used by dpkg, so they are rejected. Every number in a
    header is checked (plain decimal digits, the member inside the file) before it is used:
    a header is untrusted input like the rest.
    """
    f.seek(0)
    if f.read(8) != AR_MAGIC:
        raise FetchError("not an ar archive (bad magic)", where=where)
    end = os.fstat(f.fileno()).st_size
    members: list[ArMember] = []
    while True:
        header = f.read(60)
        if not header:
            return members
        if len(header) != 60 or header[58:60] != b"`\n":
            raise FetchError(f"truncated or corrupt ar header after {len(members)} members", where=where)
        if len(members) == _AR_MAX_MEMBERS:
            raise FetchError(f"more than {_AR_MAX_MEMBERS} ar members: not a Debian package", where=where)
        raw_name = header[0:16].decode("ascii", "replace").rstrip()
        size = _ar_number(header[48:58], f"size of ar member {shown(raw_name)}", where)
        offset = f.tell()
        if offset + size > end:
            raise FetchError(f"ar member {shown(raw_name)} runs past the end of the file ({size} bytes from "
                             f"offset {offset}, the file has {end})", where=where)
        if raw_name.startswith("#1/"):
            # BSD: the real name is the first N bytes of the data.
            name_len = _ar_number(header[3:16], f"BSD name length of ar member {shown(raw_name)}", where)
            if name_len > min(size, PATH_MAX):
                bound = f"its size ({size})" if name_len > size else f"{PATH_MAX} bytes"
                raise FetchError(f"BSD name length {name_len} of ar member {shown(raw_name)} is more than {bound}",
                                 where=where)
            name = f.read(name_len).rstrip(b"\0").decode("utf-8", "replace")
            offset += name_len
            size -= name_len
        elif raw_name.startswith("/") and raw_name not in ("/", "//"):
            raise FetchError(f"GNU long-name ar member {shown(raw_name)} is not supported", where=where)
        else:
            name = raw_name[:-1] if raw_name.endswith("/") and raw_name != "/" else raw_name
        members.append(ArMember(name=name, offset=offset, size=size))
        # Member data is padded to an even length (a missing last pad byte reads as the end).
        f.seek(offset + size + (offset + size) % 2)


def _ar_number(field: bytes, what: str, where: str) -> int:
    """A decimal field of an ar header: digits only, so no sign, blank, '_' or other digit
    that int() would take."""
    digits = field.strip(b" ")
    if not digits.isdigit():  # bytes.isdigit: ASCII 0-9 only, and False when empty
        raise FetchError(f"corrupt ar header: {what} is {shown(digits.decode('ascii', 'replace'))}, "
                         f"not a decimal number", where=where)
    return int(digits)


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


@contextlib.contextmanager
def open_ar_tar(f: BinaryIO, member: ArMember, *, where: str) -> Iterator[tarfile.TarFile]:
    """A .deb member's tar (gzip, xz, bzip2, none; zstd through the host's zstd, as Ubuntu's)."""
    view = io.BufferedReader(_Slice(f, member.offset, member.size), buffer_size=_COPY_CHUNK)
    if member.name.endswith(".zst"):
        from .zstdstream import ZstdReader

        reader = ZstdReader(view, where, FetchError)
        complete = False
        try:
            with tarfile.open(fileobj=reader.stdout, mode="r|", tarinfo=BoundedTarInfo) as tar:
                yield tar  # (a zstd stream is not seekable: members in order)
            while reader.stdout.read(_COPY_CHUNK):  # (a reader done early: zstd ends as it would)
                pass
            complete = True
        finally:
            reader.close(check=complete)
        return
    try:
        tar = tarfile.open(fileobj=view, mode="r:*", tarinfo=BoundedTarInfo)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FetchError(f"member {member.name} is not a readable tar: {one_line(e)}", where=where) from None
    with tar:
        yield tar


def deb_member(members: list[ArMember], prefix: str, *, where: str) -> ArMember:
    found = [m for m in members if m.name.startswith(prefix)]
    if len(found) != 1:
        names = ", ".join(m.name for m in members) or "nothing"
        raise FetchError(f"expected one {prefix}* member in the .deb, found {names}", where=where)
    return found[0]


def open_deb_control(deb: Path) -> dict[str, str]:
    """The fields of a .deb's `control` file (Package, Version, Architecture, Depends, ...).

    Continuation lines are joined with newlines, as deb822 defines them. Whatever is wrong
    with the file is one typed error naming it: it came from a mirror.
    """
    where = str(deb)
    try:
        return _read_control(deb, where)
    except PlannerError:
        raise
    except HeaderRefused as e:
        raise UnsafeArchive(str(e), where=where) from None
    except read_errors() as e:
        raise FetchError(f"cannot read the .deb's control file: {one_line(e)}", where=where) from None


def _read_control(deb: Path, where: str) -> dict[str, str]:
    with open(deb, "rb") as f:
        member = deb_member(read_ar(f, where=where), "control.tar", where=where)
        with open_ar_tar(f, member, where=where) as tar:
            for info in tar:
                if normalise_name(info.name) == "control" and info.isreg():
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
