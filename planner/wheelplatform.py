"""Does a built wheel fit the platform of the node that built it?

Checked on the planner's side after every wheel build: the wheel's platform tag and the ELF
machine of every shared object inside it must match the node's platform, and a node without a
platform axis (one wheel for every platform) must not contain native code at all. Otherwise an
x86-64 `.so` would silently end up in a linux/arm64 image.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO, Optional

# OCI platform -> (ELF e_machine, the architecture word of wheel platform tags)
PLATFORM_MACHINE = {"linux/amd64": (62, "x86_64"), "linux/arm64": (183, "aarch64")}
_MACHINE_NAMES = {62: "x86-64", 183: "aarch64", 3: "i386", 40: "arm", 243: "riscv"}


def _elf_machine(head: bytes) -> Optional[int]:
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def platform_tag(filename: str) -> str:
    parts = filename[: -len(".whl")].split("-")
    return parts[-1] if len(parts) >= 5 else "any"


def wheel_platform_problems(wheel: Path | BinaryIO, platform: Optional[str], name: Optional[str] = None
                            ) -> list[str]:
    """One sentence per mismatch between `wheel` (a path, or an open file named `name`) and
    the node platform `platform` (None: the node has no platform axis). A file that is not a
    readable zip raises zipfile.BadZipFile (or another zipfile error)."""
    problems: list[str] = []
    name = name if name is not None else Path(wheel).name  # type: ignore[arg-type]
    tag = platform_tag(name)
    native: list[tuple[str, Optional[int]]] = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            with zf.open(info) as f:
                machine = _elf_machine(f.read(20))
            if machine is not None:
                native.append((info.filename, machine))
    if platform is None:
        if native:
            problems.append(f"{name} contains native code ({native[0][0]}) but the recipe has no platform "
                            "axis, so the one wheel would go to every platform: add axes = [\"platform\"]")
        elif tag != "any":
            problems.append(f"{name} is tagged {tag} but the recipe has no platform axis")
        return problems
    if platform not in PLATFORM_MACHINE:
        return [f"no wheel platform is known for {platform}"]
    machine, word = PLATFORM_MACHINE[platform]
    if tag != "any" and not all(t.endswith("_" + word) for t in tag.split(".")):
        problems.append(f"{name} is tagged {tag}, not for {platform} ({word})")
    for name, got in native:
        if got != machine:
            problems.append(f"{name} in {name} is {_MACHINE_NAMES.get(got, f'ELF machine {got}')} code, "
                            f"not {platform}")
    return problems
