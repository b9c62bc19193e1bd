"""int4qat: group-wise int4 fake quantisation on the GPU (the demo miniature of slime's int4_qat).

For each group of `group_size` consecutive float32 values (the last group may be shorter):

    scale = max(|x|) / 7            (float32; scale == 0 -> the group's output is all +0.0)
    q     = clamp(round(x / scale), -8, 7)
    out   = q * scale

`round` is round half AWAY from zero (C's roundf, what the kernel uses), not Python's
round-half-even. Every step is one correctly rounded float32 operation, so `reference` (pure
Python, float32 emulated via double arithmetic + rounding to float32, which is exact for a single
+,-,*,/ of float32 operands) reproduces the kernel bit for bit on finite inputs. NaN/Inf inputs
give deterministic but unspecified results.

The CUDA code lives in `_int4qat.so` next to this file (built by nvcc, CUDA runtime linked
statically: it needs only the driver's libcuda.so.1). It is loaded lazily with ctypes on the first
`fake_quant` call, so `reference` works without a GPU.
"""

from __future__ import annotations

import ctypes
import math
import struct
import threading
from array import array
from pathlib import Path
from typing import Iterable, Union

__version__ = "0.1.0"
__all__ = ["fake_quant", "fake_quant_array", "reference", "available", "library_path", "__version__"]

Values = Union[Iterable[float], array, memoryview, bytes]

_LIB_NAME = "_int4qat.so"
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_F32 = struct.Struct("<f")


def library_path() -> Path:
    return Path(__file__).resolve().with_name(_LIB_NAME)


def _load() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is None:
            path = library_path()
            if not path.is_file():
                raise ImportError(f"int4qat: {path} is missing (the CUDA extension was not built)")
            lib = ctypes.CDLL(str(path))
            lib.int4qat_fake_quant.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
                                               ctypes.c_int, ctypes.c_void_p]
            lib.int4qat_fake_quant.restype = ctypes.c_int
            lib.int4qat_fake_quant_host.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                    ctypes.c_long, ctypes.c_int]
            lib.int4qat_fake_quant_host.restype = ctypes.c_int
            lib.int4qat_device_count.argtypes = [ctypes.POINTER(ctypes.c_int)]
            lib.int4qat_device_count.restype = ctypes.c_int
            lib.int4qat_error_string.argtypes = [ctypes.c_int]
            lib.int4qat_error_string.restype = ctypes.c_char_p
            _lib = lib
        return _lib


def _error(lib: ctypes.CDLL, code: int) -> str:
    text = lib.int4qat_error_string(code)
    return f"CUDA error {code}: {text.decode() if text else '?'}"


def available() -> bool:
    """True when the library loads and at least one CUDA device is visible."""
    try:
        lib = _load()
    except (ImportError, OSError):
        return False
    count = ctypes.c_int(0)
    return lib.int4qat_device_count(ctypes.byref(count)) == 0 and count.value > 0


def _as_f32(values: Values) -> array:
    if isinstance(values, array) and values.typecode == "f":
        return values
    try:
        view = memoryview(values)  # numpy float32 arrays, bytes-like buffers of 'f'
    except TypeError:
        return array("f", values)
    if view.format in ("f", "<f", "=f") and view.c_contiguous:
        out = array("f")
        out.frombytes(view.cast("B"))
        return out
    return array("f", view.tolist() if view.ndim else [view])


def fake_quant_array(values: Values, group_size: int = 32) -> array:
    """Run the CUDA kernel (host launcher: copy in, launch, copy out); returns array('f')."""
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    src = _as_f32(values)
    n = len(src)
    out = array("f", bytes(4 * n))
    if n == 0:
        return out
    lib = _load()
    code = lib.int4qat_fake_quant_host(src.buffer_info()[0], out.buffer_info()[0], n, group_size)
    if code != 0:
        raise RuntimeError(f"int4qat_fake_quant_host: {_error(lib, code)}")
    return out


def fake_quant(values: Values, group_size: int = 32) -> list[float]:
    """Group-wise int4 fake quantisation on the GPU; returns a list of floats (float32 values)."""
    return fake_quant_array(values, group_size).tolist()


def _f32(x: float) -> float:
    return _F32.unpack(_F32.pack(x))[0]


def _round_half_away(v: float) -> float:
    # Exact for float32 inputs: |v| + 0.5 is exact in double for |v| < 2**52.
    return math.copysign(math.floor(abs(v) + 0.5), v)


def reference(values: Values, group_size: int = 32) -> list[float]:
    """Pure-Python reference with the kernel's exact float32 semantics (see the module docstring)."""
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    xs = _as_f32(values)
    n = len(xs)
    out = array("f", bytes(4 * n))
    for start in range(0, n, group_size):
        group = xs[start:start + group_size]
        amax = 0.0
        for a in map(abs, group):
            if a > amax:  # like the kernel's `a > amax ? a : amax`: NaN never wins
                amax = a
        scale = _f32(amax / 7.0) if amax != math.inf else math.inf
        if scale == 0.0:
            continue  # out already holds +0.0
        for i, x in enumerate(group, start):
            q = x / scale
            if q == q and abs(q) != math.inf:
                q = _round_half_away(_f32(q))
            q = -8.0 if q < -8.0 else (7.0 if q > 7.0 else q)
            out[i] = q * scale  # array('f') assignment rounds to float32 (inf on overflow)
    return out.tolist()
