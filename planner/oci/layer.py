"""Deterministic OCI layers: normalised tar → pinned compressor → blob, in one pass.

A layer's bytes are a function of the trees' content, the source date and the compressor
identity only:
- entries sorted by raw path bytes (a parent sorts before its children as it is their prefix);
- every parent directory is emitted, including the prefix's components;
- GNU tar headers (no PAX records, so no sub-second or access/change times), uid/gid 0, no
  user/group names, mtime = SOURCE_DATE_EPOCH;
- modes: directories 0755, files 0755 when owner-executable else 0644, symlinks 0777; so
  umask, setuid bits and ownership of the build never reach the image;
- hardlinks are stored as independent files (their identity depends on the build host);
- names are UTF-8 with surrogateescape, so undecodable bytes round-trip and the locale does not
  matter.

Gzip is raw deflate from the zlib Python links against, inside a gzip frame we write ourselves
(mtime 0, no name, XFL 0, OS 255): byte-identical to `gzip.GzipFile(mtime=0)` at the same level.
Deflate output is only guaranteed stable for one zlib build, so `compressor_id` includes
`zlib.ZLIB_RUNTIME_VERSION`: a host with another zlib (or zlib-ng) shows up as a different
preimage instead of a silently different digest.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import threading
import zlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Protocol, Sequence

import attrs

from ..errors import OciError
from .descriptor import MEDIA_LAYER_GZIP, MEDIA_LAYER_ZSTD, AtomicBlob, Descriptor

if TYPE_CHECKING:
    from .zlibpin import PinnedZlib
    from .zstdpin import PinnedZstd

Compression = Literal["gzip", "zstd"]

GZIP_LEVEL = 6
ZSTD_LEVEL = 3
_CHUNK = 1 << 20
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


@attrs.frozen
class LayerSource:
    """The tree (or single file/symlink) at `root` goes at `prefix` in the image."""

    root: Path = attrs.field(converter=Path)
    prefix: str = "/"


@attrs.frozen
class Layer:
    descriptor: Descriptor
    diff_id: str  # sha256 of the uncompressed tar: what the image config's rootfs lists
    compressor: str  # compressor_id(...) that produced descriptor's bytes


# ---------------------------------------------------------------------------------------------
# Tree collection


@attrs.frozen
class TarEntry:
    """One normalised tar member: what it is, its final mode, and where its bytes come from."""

    kind: Literal["dir", "file", "symlink"]
    mode: int
    source: bytes | None  # file to read (files) or None
    link: bytes = b""
    size: int = 0
    origin: str = ""  # which LayerSource root provided it, for conflict messages


_DIR_MODE = 0o755


def _norm_prefix(prefix: str) -> bytes:
    parts = [p for p in prefix.split("/") if p]
    if not prefix.startswith("/") or any(p in (".", "..") for p in parts):
        raise OciError(f"layer prefix must be an absolute path without . or ..: {prefix!r}")
    return os.fsencode("/".join(parts)) if parts else b""


def _entry_for(path: bytes, st: os.stat_result, origin: str) -> TarEntry:
    if stat.S_ISDIR(st.st_mode):
        return TarEntry("dir", _DIR_MODE, None, origin=origin)
    if stat.S_ISREG(st.st_mode):
        mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
        return TarEntry("file", mode, path, size=st.st_size, origin=origin)
    if stat.S_ISLNK(st.st_mode):
        return TarEntry("symlink", 0o777, None, link=os.readlink(path), origin=origin)
    raise OciError("not a regular file, directory or symlink", where=os.fsdecode(path))


def _add(entries: dict[bytes, TarEntry], name: bytes, entry: TarEntry) -> None:
    old = entries.get(name)
    if old is None:
        entries[name] = entry
    elif not (old.kind == "dir" and entry.kind == "dir"):
        raise OciError(
            f"provided twice in one layer (by {old.origin or 'a prefix'} and {entry.origin or 'a prefix'})",
            where="/" + os.fsdecode(name),
        )


def _add_parents(entries: dict[bytes, TarEntry], name: bytes) -> None:
    parts = name.split(b"/")[:-1]
    for i in range(1, len(parts) + 1):
        _add(entries, b"/".join(parts[:i]), TarEntry("dir", _DIR_MODE, None))


def collect_entries(sources: Sequence[LayerSource]) -> list[tuple[bytes, TarEntry]]:
    """Every path of the merged trees (relative, no leading slash), sorted by raw bytes."""
    entries: dict[bytes, TarEntry] = {}
    for src in sources:
        prefix = _norm_prefix(src.prefix)
        root = os.fsencode(src.root)
        origin = str(src.root)
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            raise OciError("layer source does not exist", where=origin) from None
        if not stat.S_ISDIR(st.st_mode):
            if not prefix:
                raise OciError("a single-file layer source needs a prefix naming the file", where=origin)
            _add_parents(entries, prefix)
            _add(entries, prefix, _entry_for(root, st, origin))
            continue
        if prefix:
            _add_parents(entries, prefix + b"/")
        stack = [(root, prefix)]
        while stack:
            d, rel = stack.pop()
            with os.scandir(d) as it:
                children = sorted(it, key=lambda e: e.name)
            for e in children:
                name = rel + b"/" + e.name if rel else e.name
                entry = _entry_for(e.path, e.stat(follow_symlinks=False), origin)
                _add(entries, name, entry)
                if entry.kind == "dir":
                    stack.append((e.path, name))
    return sorted(entries.items())


# ---------------------------------------------------------------------------------------------
# Tar writing


class _Sink(Protocol):
    def write(self, data: bytes) -> object: ...


def _tarinfo(name: bytes, entry: TarEntry, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name.decode(_ENCODING, _ERRORS))
    ti.mtime = int(mtime)  # an int: a float would need a PAX record in PAX format
    ti.mode = entry.mode
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if entry.kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = entry.link.decode(_ENCODING, _ERRORS)
    else:
        ti.type = tarfile.REGTYPE
        ti.size = entry.size
    return ti


def _copy_exact(src: bytes, size: int, out: _Sink) -> None:
    left = size
    with open(src, "rb") as f:
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise OciError("file shrank while being archived", where=os.fsdecode(src))
            out.write(chunk)
            left -= len(chunk)


def write_tar_entries(entries: Iterable[tuple[bytes, TarEntry]], out: _Sink, *, mtime: int) -> int:
    """GNU tar of `entries`, in the order given; returns the byte count (a multiple of 10240)."""
    total = 0
    for name, entry in entries:
        header = _tarinfo(name, entry, mtime).tobuf(tarfile.GNU_FORMAT, _ENCODING, _ERRORS)
        out.write(header)
        total += len(header)
        if entry.kind == "file" and entry.size:
            assert entry.source is not None
            _copy_exact(entry.source, entry.size, out)
            pad = -entry.size % tarfile.BLOCKSIZE
            out.write(tarfile.NUL * pad)
            total += entry.size + pad
    # End of archive: two zero blocks, then fill the record as GNU tar (-b20) does.
    trailer = tarfile.BLOCKSIZE * 2
    trailer += -(total + trailer) % tarfile.RECORDSIZE
    out.write(tarfile.NUL * trailer)
    return total + trailer


def write_tar(sources: Sequence[LayerSource], out: _Sink, *, source_date_epoch: int) -> int:
    return write_tar_entries(collect_entries(sources), out, mtime=source_date_epoch)


# ---------------------------------------------------------------------------------------------
# Compressors


@lru_cache(maxsize=None)
def _zstd_version() -> str:
    exe = shutil.which("zstd")
    if exe is None:
        raise OciError("zstd compression requested but the zstd command is not installed")
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"v(\d+\.\d+\.\d+)", out)
    if not m:
        raise OciError(f"cannot read the zstd version from {out.strip()!r}")
    return m.group(1)


def compressor_id(compression: Compression, level: int | None = None, *, zlib_pin: "PinnedZlib | None" = None,
                  zstd_pin: "PinnedZstd | None" = None, build_root: bool = False) -> str:
    """Identity of the exact compressor, to put in a layer's preimage.

    gzip: `gzip:zlib-<runtime version>:<level>:hdr1` ("hdr1" names our fixed gzip header);
    zstd: `zstd:cli-<version>:<level>:mt` (the CLI's multithreaded mode gives the same bytes for
    any thread count, measured with 1.5.4, but differs from --single-thread).
    With a build root both come from it (`-build-root`), and at plan time (`build_root`) its digest
    in the key stands for the version: no host tool is asked.
    """
    if compression == "gzip":
        level = GZIP_LEVEL if level is None else level
        if zlib_pin is not None:
            return f"gzip:zlib-{zlib_pin.version}-build-root:{level}:hdr1"
        if build_root:  # at plan time: the build root's bytes are in the key through its digest
            return f"gzip:zlib-build-root:{level}:hdr1"
        return f"gzip:zlib-{zlib.ZLIB_RUNTIME_VERSION}:{level}:hdr1"
    if compression == "zstd":
        level = ZSTD_LEVEL if level is None else level
        if zstd_pin is not None:
            return f"zstd:cli-{zstd_pin.version}-build-root:{level}:mt"
        if build_root:
            return f"zstd:build-root:{level}:mt"
        return f"zstd:cli-{_zstd_version()}:{level}:mt"
    raise OciError(f"unknown layer compression: {compression!r}")


def _gzip_header(level: int) -> bytes:
    # magic, CM=deflate, FLG=0 (no name, no comment), MTIME=0, XFL as RFC 1952 and Python's
    # gzip module set it (2 = best, 4 = fastest, else 0), OS=255 (unknown).
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + bytes([xfl, 0xFF])


class _GzipStream:
    def __init__(self, out: Callable[[bytes], object], level: int) -> None:
        self._out = out
        self._z = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
        self._crc = 0
        self._size = 0
        out(_gzip_header(level))

    def write(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        if chunk := self._z.compress(data):
            self._out(chunk)

    def abort(self) -> None:
        pass

    def close(self) -> None:
        self._out(self._z.flush())
        self._out(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))


class _PinnedGzipStream:
    """The same gzip framing around deflate from the build root's pinned zlib."""

    def __init__(self, out: Callable[[bytes], object], level: int, pin: "PinnedZlib") -> None:
        self._out = out
        self._pin = pin
        self._z = pin.raw_deflater(level)
        self._crc = 0
        self._size = 0
        out(_gzip_header(level))

    def write(self, data: bytes) -> None:
        self._crc = self._pin.crc32(data, self._crc)
        self._size += len(data)
        self._z.compress(data, self._out)

    def abort(self) -> None:
        self._z.abort()

    def close(self) -> None:
        self._z.finish(self._out)
        self._out(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))


class _ZstdStream:
    """The zstd CLI as a filter (the build root's, or the host's in a set without one); a thread
    drains its stdout so neither side blocks."""

    def __init__(self, out: Callable[[bytes], object], level: int, pin: "PinnedZstd | None" = None) -> None:
        if pin is None:
            _zstd_version()
        self._proc = subprocess.Popen(
            [*(pin.argv if pin is not None else ("zstd",)), "-q", f"-{level}", "-T0", "-c", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._error: BaseException | None = None

        def drain() -> None:
            assert self._proc.stdout is not None
            try:
                while chunk := self._proc.stdout.read(_CHUNK):
                    out(chunk)
            except BaseException as e:  # re-raised on the writer's thread in close()
                self._error = e

        self._thread = threading.Thread(target=drain, daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError:
            self.close()
            raise OciError("zstd exited early") from None

    def abort(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._thread.join()

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stderr is not None
        if not self._proc.stdin.closed:
            self._proc.stdin.close()
        self._thread.join()
        err = self._proc.stderr.read().decode(errors="replace").strip()
        if self._proc.wait() != 0:
            raise OciError(f"zstd failed: {err.splitlines()[-1] if err else self._proc.returncode}")
        if self._error is not None:
            raise self._error


class _LayerWriter:
    """tar bytes in → diff_id hash + compressor → blob (which hashes the compressed bytes)."""

    def __init__(self, compressed: "_GzipStream | _PinnedGzipStream | _ZstdStream") -> None:
        self.diff = hashlib.sha256()
        self.compressed = compressed

    def write(self, data: bytes) -> None:
        self.diff.update(data)
        self.compressed.write(data)


def write_layer(
    sources: Sequence[LayerSource],
    blobs_dir: Path,
    *,
    source_date_epoch: int,
    compression: Compression = "gzip",
    level: int | None = None,
    zlib_pin: "PinnedZlib | None" = None,
    zstd_pin: "PinnedZstd | None" = None,
) -> Layer:
    """Write one layer blob under blobs_dir/sha256/ and return its descriptor and diff_id.

    The tree is read once: tar, diff_id, compression and the blob digest all happen in one
    streaming pass, and the blob appears under its final name only when complete.
    """
    if isinstance(source_date_epoch, bool) or not isinstance(source_date_epoch, int) or source_date_epoch < 0:
        raise OciError(f"source_date_epoch must be a non-negative int, got {source_date_epoch!r}")
    ident = compressor_id(compression, level, zlib_pin=zlib_pin, zstd_pin=zstd_pin)
    entries = collect_entries(sources)
    media_type = MEDIA_LAYER_GZIP if compression == "gzip" else MEDIA_LAYER_ZSTD
    with AtomicBlob(blobs_dir) as blob:
        stream: _GzipStream | _PinnedGzipStream | _ZstdStream
        if compression == "gzip" and zlib_pin is not None:
            stream = _PinnedGzipStream(blob.write, GZIP_LEVEL if level is None else level, zlib_pin)
        elif compression == "gzip":
            stream = _GzipStream(blob.write, GZIP_LEVEL if level is None else level)
        else:
            stream = _ZstdStream(blob.write, ZSTD_LEVEL if level is None else level, zstd_pin)
        writer = _LayerWriter(stream)
        try:
            write_tar_entries(entries, writer, mtime=source_date_epoch)
        except BaseException as e:
            stream.abort()
            if isinstance(e, OSError):
                where = os.fsdecode(e.filename) if e.filename else None
                raise OciError(f"cannot read layer input: {e.strerror}", where=where) from None
            raise
        stream.close()
        desc = blob.commit(media_type)
    return Layer(descriptor=desc, diff_id="sha256:" + writer.diff.hexdigest(), compressor=ident)


def gzip_reference(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """The stdlib's gzip framing of `data`, which our stream must equal byte for byte (tests)."""
    import gzip
    import io

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=level, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


__all__ = [
    "Compression",
    "Layer",
    "LayerSource",
    "TarEntry",
    "collect_entries",
    "compressor_id",
    "gzip_reference",
    "write_layer",
    "write_tar",
    "write_tar_entries",
]
