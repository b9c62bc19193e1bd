"""What reading any archive member shares, for tar and zip (`planner.archive`) and `.deb`s
(`planner.debfile`): tar headers bounded before tarfile reads them, the errors a damaged
archive raises, and how a member name and an error read in one line."""

from __future__ import annotations

import lzma
import tarfile
import zipfile
import zlib

from .errors import shown

# tarfile reads a PAX or GNU long-name header whole before anything can look at the name in
# it: a few KiB of gzip can declare a gigabyte one. A real one holds a path or two and times.
_MAX_EXT_HEADER = 1 << 20
_EXT_HEADER_TYPES = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                               tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE})
# What reading a damaged archive raises: truncated streams, bad CRCs, encrypted zip members,
# decompressor errors, a full disk.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, RuntimeError, ValueError, lzma.LZMAError, zlib.error)


def read_errors() -> tuple[type[BaseException], ...]:
    return _READ_ERRORS


def size_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def normalise_name(raw: str) -> str:
    """Member name without '.' and empty components; '' for the archive root itself."""
    return "/".join(p for p in raw.split("/") if p not in ("", "."))


class HeaderRefused(Exception):
    """Raised from inside tarfile, which knows no file name; turned into UnsafeArchive by the
    caller that does. Not an OSError or TarError, so tarfile passes it on unchanged."""


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's member header, refusing before anything is read what no real archive has:
    an extended header (PAX, GNU long name or link) over _MAX_EXT_HEADER, and a negative size
    (GNU base-256 allows one; it would subtract from the unpacked-bytes count).

    _proc_member is the hook tarfile documents for subclasses; the headers after an extended
    one are read through the same class, so they are bounded too."""

    def _proc_member(self, tarfile_: tarfile.TarFile):  # type: ignore[override]
        if self.size < 0:
            raise HeaderRefused(f"tar member {shown(self.name)} has a negative size")
        if self.type in _EXT_HEADER_TYPES and self.size > _MAX_EXT_HEADER:
            raise HeaderRefused(f"extended tar header of {self.size} bytes (a name or link target "
                                 f"over {size_text(_MAX_EXT_HEADER)}): refused")
        return super()._proc_member(tarfile_)
