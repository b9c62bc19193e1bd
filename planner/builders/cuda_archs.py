"""CUDA architecture names: parsing, the canonical arch list, nvcc's -gencode flags, torch's list.

Standard library only: the planner (recipe validation, variant expansion) and the in-sandbox
cuda-wheel builder both use it.
"""

from __future__ import annotations

import re
from typing import Iterable


# What nvcc 13.0 accepts (nvcc --list-gpu-code, plus the `a`/`f` variants it compiles).
# sm_101 became sm_110 in CUDA 13; everything below sm_75 was dropped.
ARCHS: dict[int, str] = {
    75: "", 80: "", 86: "", 87: "", 88: "", 89: "",
    90: "a",
    100: "af", 103: "af", 110: "af", 120: "af", 121: "af",
}
_RENAMED = {101: "sm_110 (renamed in CUDA 13)"}
_SUFFIX_ORDER = {"": 0, "a": 1, "f": 2}
_SM_RE = re.compile(r"(?:sm_)?(\d{2,3})([af]?)(\+ptx)?\Z", re.IGNORECASE)
_DOTTED_RE = re.compile(r"(\d{1,2})\.(\d)([af]?)(\+ptx)?\Z", re.IGNORECASE)


def parse_arch(name: str) -> tuple[int, str, bool]:
    """`sm_90a` / `9.0a` / `sm_120a+PTX` / `12.0+PTX` -> (number, suffix, ptx). ValueError if bad."""
    if not isinstance(name, str):
        raise ValueError(f"bad CUDA arch {name!r}: not a string")
    text = name.strip()
    m = _DOTTED_RE.match(text)
    if m:
        number = int(m.group(1)) * 10 + int(m.group(2))
        suffix, ptx = m.group(3).lower(), bool(m.group(4))
    else:
        m = _SM_RE.match(text)
        if not m or (not text.lower().startswith("sm_")):
            raise ValueError(
                f"bad CUDA arch {name!r}: expected sm_<NN>[a|f][+PTX] or <major>.<minor>[a|f][+PTX]"
            )
        number, suffix, ptx = int(m.group(1)), m.group(2).lower(), bool(m.group(3))
        if m.group(2) != suffix:  # `sm_90A`
            raise ValueError(f"bad CUDA arch {name!r}: suffix must be lower case 'a' or 'f'")
    if number in _RENAMED:
        raise ValueError(f"bad CUDA arch {name!r}: sm_{number} does not exist in CUDA 13, use {_RENAMED[number]}")
    if number not in ARCHS:
        known = ", ".join(f"sm_{n}" for n in sorted(ARCHS))
        raise ValueError(f"bad CUDA arch {name!r}: sm_{number} is not supported by CUDA 13 (known: {known})")
    if suffix and suffix not in ARCHS[number]:
        kind = "arch-specific ('a')" if suffix == "a" else "family ('f')"
        raise ValueError(f"bad CUDA arch {name!r}: sm_{number} has no {kind} variant")
    return number, suffix, ptx


def _canonical(number: int, suffix: str, ptx: bool) -> str:
    return f"sm_{number}{suffix}" + ("+PTX" if ptx else "")


def normalise_archs(archs: Iterable[str]) -> list[str]:
    """Canonical, unique, numerically sorted arch names (`9.0a` -> `sm_90a`; sm_90a before sm_100a).

    `X` and `X+PTX` together collapse to `X+PTX` (the latter is a superset). Used in variant keys.
    Accepts a list or a whitespace/semicolon/comma separated string (TORCH_CUDA_ARCH_LIST style).
    """
    if isinstance(archs, str):
        archs = [a for a in re.split(r"[\s;,]+", archs) if a]
    parsed: dict[tuple[int, str], bool] = {}
    for name in archs:
        number, suffix, ptx = parse_arch(name)
        parsed[(number, suffix)] = parsed.get((number, suffix), False) or ptx
    if not parsed:
        raise ValueError("empty CUDA arch list")
    keys = sorted(parsed, key=lambda k: (k[0], _SUFFIX_ORDER[k[1]]))
    return [_canonical(n, s, parsed[(n, s)]) for n, s in keys]


def torch_arch_list(archs: Iterable[str]) -> list[str]:
    """The arch list in TORCH_CUDA_ARCH_LIST's dotted form: `sm_90a` -> `9.0a`,
    `sm_120+PTX` -> `12.0+PTX`, `sm_100f` -> `10.0f` (canonical order, as `normalise_archs`)."""
    out = []
    for name in normalise_archs(archs):
        number, suffix, ptx = parse_arch(name)
        out.append(f"{number // 10}.{number % 10}{suffix}" + ("+PTX" if ptx else ""))
    return out


def gencode_flags(archs: Iterable[str]) -> list[str]:
    """nvcc `-gencode` flags for an arch list, in canonical order.

    `sm_90`  -> arch=compute_90,code=sm_90
    `sm_90a` -> arch=compute_90a,code=sm_90a     (arch-specific: runs on exactly 9.0)
    `sm_100f`-> arch=compute_100f,code=sm_100f   (family: runs on 10.x, CUDA >= 12.9)
    `+PTX`   -> also arch=compute_XX,code=compute_XX with the generic (suffix-less) virtual arch,
                the only PTX that the driver can JIT for later GPUs.
    """
    flags: list[str] = []
    ptx: list[int] = []
    for name in normalise_archs(archs):
        number, suffix, with_ptx = parse_arch(name)
        flags += ["-gencode", f"arch=compute_{number}{suffix},code=sm_{number}{suffix}"]
        if with_ptx and number not in ptx:
            ptx.append(number)
    for number in ptx:
        flags += ["-gencode", f"arch=compute_{number},code=compute_{number}"]
    return flags
