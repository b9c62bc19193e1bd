"""Deflate from a pinned zlib: the `libz.so.1` of the set's build root, through ctypes.

The deflate stream is only stable for one zlib build, and the planner's own Python links
whatever zlib the host has (Debian 13's differs from Debian 12's; zlib-ng is common). The
build root's zlib comes from a `.deb` the lock pins by sha256, so layers compressed with it
have the same bytes on any host of that build platform.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Callable, Optional

from ..errors import OciError

_Z_OK, _Z_STREAM_END, _Z_BUF_ERROR = 0, 1, -5
_Z_NO_FLUSH, _Z_FINISH = 0, 4
_Z_DEFLATED, _MAX_WBITS, _DEF_MEM_LEVEL = 8, 15, 8
_OUT = 1 << 20


class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p), ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int), ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong),
    ]


def find_libz(root: Path) -> Path:
    """The build root's libz.so.1, its symlink resolved inside the root (never outside)."""
    root = Path(root)
    for libdir in sorted((root / "usr/lib").glob("*-linux-gnu*")):
        p = libdir / "libz.so.1"
        for _ in range(8):
            if not p.is_symlink():
                break
            target = os.readlink(p)
            if "/" in target:
                raise OciError(f"{p.relative_to(root)} links to {target!r}, outside its folder")
            p = p.parent / target
        if p.is_file() and not p.is_symlink():
            return p
    raise OciError("the build root has no usr/lib/<triplet>/libz.so.1 (add zlib1g to it)", where=str(root))


class PinnedZlib:
    def __init__(self, path: Path) -> None:
        try:
            self.lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise OciError(f"cannot load the build root's zlib: {exc}", where=str(path)) from None
        self.lib.zlibVersion.restype = ctypes.c_char_p
        self.lib.crc32.restype = ctypes.c_ulong
        self.lib.crc32.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_uint]
        self.lib.deflateInit2_.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                           ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.deflate.argtypes = [ctypes.POINTER(_ZStream), ctypes.c_int]
        self.lib.deflateEnd.argtypes = [ctypes.POINTER(_ZStream)]
        self.version: str = self.lib.zlibVersion().decode()

    def crc32(self, data: bytes, value: int = 0) -> int:
        # crc32 takes a uInt length: feed huge buffers in pieces.
        view = memoryview(data)
        for i in range(0, len(view), 1 << 30):
            piece = bytes(view[i:i + (1 << 30)])
            value = self.lib.crc32(value, piece, len(piece))
        return value

    def raw_deflater(self, level: int) -> "RawDeflate":
        return RawDeflate(self, level)


class RawDeflate:
    """zlib.compressobj(level, DEFLATED, -MAX_WBITS, DEF_MEM_LEVEL, 0) over the pinned library."""

    def __init__(self, z: PinnedZlib, level: int) -> None:
        self.z = z
        self.s = _ZStream()
        self.buf = ctypes.create_string_buffer(_OUT)
        rc = z.lib.deflateInit2_(ctypes.byref(self.s), level, _Z_DEFLATED, -_MAX_WBITS, _DEF_MEM_LEVEL, 0,
                                 z.version.encode(), ctypes.sizeof(_ZStream))
        if rc != _Z_OK:
            raise OciError(f"deflateInit2 of the build root's zlib failed ({rc})")
        self.done = False

    def _run(self, data: bytes, flush: int, out: Callable[[bytes], object]) -> None:
        keep = ctypes.create_string_buffer(data, len(data)) if data else None
        self.s.next_in = ctypes.cast(keep, ctypes.c_void_p) if keep is not None else None
        self.s.avail_in = len(data)
        while True:
            self.s.next_out = ctypes.cast(self.buf, ctypes.c_void_p)
            self.s.avail_out = _OUT
            rc = self.z.lib.deflate(ctypes.byref(self.s), flush)
            produced = _OUT - self.s.avail_out
            if produced:
                out(self.buf.raw[:produced])
            if rc == _Z_STREAM_END:
                return
            if rc not in (_Z_OK, _Z_BUF_ERROR):
                raise OciError(f"deflate failed ({rc})")
            if flush == _Z_NO_FLUSH and self.s.avail_in == 0 and self.s.avail_out != 0:
                return

    def compress(self, data: bytes, out: Callable[[bytes], object]) -> None:
        for i in range(0, len(data), 1 << 28):  # avail_in is a uInt
            self._run(data[i:i + (1 << 28)], _Z_NO_FLUSH, out)

    def finish(self, out: Callable[[bytes], object]) -> None:
        self._run(b"", _Z_FINISH, out)
        self.z.lib.deflateEnd(ctypes.byref(self.s))
        self.done = True

    def abort(self) -> None:
        if not self.done:
            self.z.lib.deflateEnd(ctypes.byref(self.s))
            self.done = True


_LOADED: dict[str, PinnedZlib] = {}


def load(root: Optional[Path]) -> Optional[PinnedZlib]:
    if root is None:
        return None
    path = find_libz(root)
    if str(path) not in _LOADED:
        _LOADED[str(path)] = PinnedZlib(path)
    return _LOADED[str(path)]
