"""Platforms this host runs by emulation: the kernel's binfmt_misc handlers (qemu-user).

What Nix calls `extra-platforms` (`boot.binfmt.emulatedSystems` on NixOS): a build for
linux/arm64 inside an arm64 root filesystem can run on an amd64 host when the kernel hands that
platform's executables to an interpreter. Only a handler with the F flag serves a sandbox: the
kernel opened its interpreter when the handler was registered, so the interpreter's path need
not exist inside the sandbox's own mount namespace (Debian's qemu-user-static registers its
handlers so: `/usr/lib/binfmt.d/qemu-*.conf`, flags `POF`).

Emulation changes how fast a build runs, not what it writes (the same programs on the same
inputs), so keys do not name it. nvcc's wrapper (builders/pidns.py) needs a user namespace,
which qemu-user's threads keep an emulated Python out of: an emulated build is given a native
helper that makes it (builders/pid1.c, planner/pid1.py), so its nvcc is process 1 as a native
build's is.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import attrs

BINFMT_MISC = "/proc/sys/fs/binfmt_misc"

# ELF e_machine of each platform's 64-bit little-endian executables.
_ELF_MACHINE = {"linux/amd64": 0x3E, "linux/arm64": 0xB7}


@attrs.frozen
class Handler:
    """One binfmt_misc entry, as the kernel shows it."""

    name: str
    enabled: bool
    interpreter: str
    flags: str
    offset: int
    magic: bytes
    mask: bytes

    def takes(self, header: bytes) -> bool:
        part = header[self.offset:self.offset + len(self.magic)]
        return len(part) == len(self.magic) and all(
            (b & m) == (g & m) for b, g, m in zip(part, self.magic, self.mask))


def parse_handler(name: str, text: str) -> Optional[Handler]:
    """A magic-number handler from its /proc file (None for extension handlers or garbage)."""
    lines = text.splitlines()
    if not lines or lines[0] not in ("enabled", "disabled"):
        return None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        fields[key.rstrip(":")] = value.strip()
    try:
        magic = bytes.fromhex(fields["magic"])
        mask = bytes.fromhex(fields["mask"]) if "mask" in fields else b"\xff" * len(magic)
        offset = int(fields.get("offset", "0"))
    except (KeyError, ValueError):
        return None
    if len(mask) != len(magic) or not fields.get("interpreter"):
        return None
    return Handler(name, lines[0] == "enabled", fields["interpreter"], fields.get("flags", ""), offset, magic, mask)


def _elf_headers(machine: int) -> list[bytes]:
    ident = b"\x7fELF\x02\x01\x01" + b"\x00" * 9  # 64-bit, little-endian, version 1, System V
    return [ident + e_type.to_bytes(2, "little") + machine.to_bytes(2, "little") for e_type in (2, 3)]


@functools.lru_cache(maxsize=None)
def emulator(platform: str, folder: str = BINFMT_MISC) -> Optional[str]:
    """The interpreter that runs `platform`'s executables here inside a sandbox (an enabled
    handler with the F flag that takes both its executables and its shared objects), or None.
    Read once a process: every node of a realise asks."""
    machine = _ELF_MACHINE.get(platform)
    if machine is None:
        return None
    try:
        with open(os.path.join(folder, "status")) as f:
            if f.read().strip() != "enabled":
                return None
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    headers = _elf_headers(machine)
    for name in names:
        if name in ("register", "status"):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                handler = parse_handler(name, f.read(4096))
        except (OSError, UnicodeDecodeError):
            continue
        if handler is not None and handler.enabled and "F" in handler.flags and all(map(handler.takes, headers)):
            return handler.interpreter
    return None


def can_run(platform: Optional[str], host: str) -> bool:
    """Whether a build for `platform` (None: any) runs on this host, natively or emulated."""
    return platform is None or platform == host or emulator(platform) is not None
