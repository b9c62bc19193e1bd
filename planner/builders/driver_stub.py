"""The CUDA driver's link stub, `libcuda.so` (soname `libcuda.so.1`), written from `cuda.h`.

A real toolkit ships `lib64/stubs/libcuda.so` so that code calling the driver API can be linked on
a machine without the driver (`-L$CUDA_HOME/lib64/stubs -lcuda`); no PyPI wheel ships it (the
driver is not redistributed there). What the linker needs from it is small: an ELF shared object
whose DT_SONAME is `libcuda.so.1` (that name becomes the DT_NEEDED entry, resolved at run time by
the real driver) and which defines the driver API's function names, so that a toolchain linking
with `--as-needed` keeps the dependency. Each function returns CUDA_ERROR_STUB_LIBRARY (34), as
NVIDIA's stub does, should the stub ever be loaded instead of the driver.

Standard library only, pure: the bytes depend only on the symbol names and the machine type.
"""

from __future__ import annotations

import re
import struct
from typing import Iterable

SONAME = "libcuda.so.1"
_EM_X86_64 = 62
_EM_AARCH64 = 183
# `return CUDA_ERROR_STUB_LIBRARY;` (34): mov eax, 34; ret  /  mov w0, #34; ret
_BODY = {
    _EM_X86_64: bytes.fromhex("b822000000c3"),
    _EM_AARCH64: struct.pack("<II", 0x52800440, 0xD65F03C0),
}
# The writable segment (.dynamic) goes one maximum page further in memory than in the file, so
# the two segments never share a page on 4 KiB or 64 KiB page systems.
_PAGE = 0x10000

_DECLARED = re.compile(r"\bCUDAAPI\s+(cu[A-Za-z0-9_]+)\s*\(")
_DEFINE = re.compile(
    r"^[ \t]*#[ \t]*define[ \t]+(cu[A-Za-z0-9_]+)[ \t]+"
    r"(?:__CUDA_API_(PTDS|PTSZ)\((cu[A-Za-z0-9_]+)\)|(cu[A-Za-z0-9_]+))[ \t]*$",
    re.M,
)


def driver_api_symbols(headers: Iterable[str]) -> list[str]:
    """Every function name the driver library exports for these headers (cuda.h, cudaProfiler.h):
    the declared names and, through cuda.h's `#define cuX cuX_v2` and per-thread-stream
    `__CUDA_API_PTDS(cuX)` macros, the versioned and `_ptds`/`_ptsz` names calls compile to."""
    names: set[str] = set()
    for text in headers:
        names.update(_DECLARED.findall(text))
        for alias, kind, wrapped, target in _DEFINE.findall(text):
            names.add(alias)
            if kind:
                names.add(f"{wrapped}_{kind.lower()}")
            else:
                names.add(target)
    return sorted(names)


def _sysv_hash(name: bytes) -> int:
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _string_table(names: Iterable[str]) -> tuple[bytearray, dict[str, int]]:
    """A NUL-separated string table (leading NUL) and each name's offset in it."""
    table = bytearray(b"\0")
    offsets: dict[str, int] = {}
    for n in names:
        offsets[n] = len(table)
        table += n.encode() + b"\0"
    return table, offsets


def _hash_section(names: list[str]) -> bytes:
    """The SysV .hash table of the dynamic symbols (index 0 is the null symbol)."""
    nsyms = len(names) + 1
    nbucket = max(1, nsyms // 2)
    buckets = [0] * nbucket
    chains = [0] * nsyms
    for i, n in enumerate(names, start=1):
        b = _sysv_hash(n.encode()) % nbucket
        chains[i] = buckets[b]
        buckets[b] = i
    return struct.pack(f"<II{nbucket}I{nsyms}I", nbucket, nsyms, *buckets, *chains)


def _program_headers(off_dynamic: int, vaddr_dynamic: int, dynamic_size: int) -> bytes:
    def phdr(kind: int, flags: int, off: int, vaddr: int, size: int, align: int) -> bytes:
        return struct.pack("<IIQQQQQQ", kind, flags, off, vaddr, vaddr, size, size, align)

    return (
        phdr(1, 5, 0, 0, off_dynamic, _PAGE)                                    # PT_LOAD R+X
        + phdr(1, 6, off_dynamic, vaddr_dynamic, dynamic_size, _PAGE)           # PT_LOAD R+W
        + phdr(2, 6, off_dynamic, vaddr_dynamic, dynamic_size, 8)               # PT_DYNAMIC
        + phdr(0x6474E551, 6, 0, 0, 0, 16)  # PT_GNU_STACK RW: no executable stack (glibc refuses it)
    )


def driver_stub(symbols: Iterable[str], machine: int) -> bytes:
    """An ELF64 little-endian shared object named `libcuda.so.1` defining `symbols` as functions."""
    if machine not in _BODY:
        raise ValueError(f"no driver stub for ELF machine {machine}")
    names = sorted(set(symbols))
    if not names or any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in names):
        raise ValueError("driver stub symbols must be C identifiers (and at least one)")

    dynstr, offsets = _string_table([SONAME, *names])
    shstr, shnames = _string_table((".hash", ".dynsym", ".dynstr", ".text", ".dynamic", ".shstrtab"))
    nsyms = len(names) + 1
    hash_ = _hash_section(names)

    body = _BODY[machine]
    phnum, ehsize, phsize = 4, 64, 56
    off_hash = _align(ehsize + phnum * phsize, 8)
    off_dynsym = _align(off_hash + len(hash_), 8)
    off_dynstr = off_dynsym + nsyms * 24
    off_text = _align(off_dynstr + len(dynstr), 16)
    off_dynamic = _align(off_text + len(body), 8)
    dyn_entries = 7
    end_dynamic = off_dynamic + dyn_entries * 16
    off_shstr = end_dynamic
    off_sh = _align(off_shstr + len(shstr), 8)
    vaddr_dynamic = off_dynamic + _PAGE

    dynsym = bytearray(24)
    for n in names:
        # st_name, st_info (GLOBAL FUNC), st_other, st_shndx (.text = 4), st_value, st_size
        dynsym += struct.pack("<IBBHQQ", offsets[n], 0x12, 0, 4, off_text, len(body))
    dynamic = struct.pack(
        "<14Q",
        14, offsets[SONAME],   # DT_SONAME
        4, off_hash,           # DT_HASH
        5, off_dynstr,         # DT_STRTAB
        6, off_dynsym,         # DT_SYMTAB
        10, len(dynstr),       # DT_STRSZ
        11, 24,                # DT_SYMENT
        0, 0,                  # DT_NULL
    )

    phdrs = _program_headers(off_dynamic, vaddr_dynamic, len(dynamic))

    def shdr(name: str, kind: int, flags: int, addr: int, off: int, size: int, link: int = 0,
             info: int = 0, align: int = 1, entsize: int = 0) -> bytes:
        return struct.pack("<IIQQQQIIQQ", shnames[name] if name else 0, kind, flags, addr, off, size,
                           link, info, align, entsize)

    shdrs = (
        bytes(64)
        + shdr(".hash", 5, 2, off_hash, off_hash, len(hash_), link=2, align=8, entsize=4)
        + shdr(".dynsym", 11, 2, off_dynsym, off_dynsym, len(dynsym), link=3, info=1, align=8, entsize=24)
        + shdr(".dynstr", 3, 2, off_dynstr, off_dynstr, len(dynstr))
        + shdr(".text", 1, 6, off_text, off_text, len(body), align=16)
        + shdr(".dynamic", 6, 3, vaddr_dynamic, off_dynamic, len(dynamic), link=3, align=8, entsize=16)
        + shdr(".shstrtab", 3, 0, 0, off_shstr, len(shstr))
    )
    ehdr = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 0, bytes(7),        # ELF64, little endian, version 1, SysV ABI
        3, machine, 1, 0, ehsize, off_sh, 0,        # ET_DYN, no entry, program/section headers
        ehsize, phsize, phnum, 64, 7, 6,            # sizes, counts, .shstrtab index
    )
    out = bytearray(off_sh + len(shdrs))
    for off, data in ((0, ehdr), (ehsize, phdrs), (off_hash, hash_), (off_dynsym, dynsym),
                      (off_dynstr, dynstr), (off_text, body), (off_dynamic, dynamic),
                      (off_shstr, shstr), (off_sh, shdrs)):
        out[off:off + len(data)] = data
    return bytes(out)
