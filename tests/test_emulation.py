"""Which foreign platforms this host runs by emulation (`planner/emulation.py`): binfmt_misc
handlers read in the kernel's own format. The folders here are written as /proc shows them (the
qemu-aarch64 entry is the one Debian's qemu-user-static registers); the build that runs emulated
is in tests/test_image_base.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.emulation import BINFMT_MISC, can_run, emulator, parse_handler

QEMU_AARCH64 = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n"
                "magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")
QEMU_X86_64 = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/x86_64-binfmt-P\nflags: POF\noffset 0\n"
               "magic 7f454c4602010100000000000000000002003e00\nmask fffffffffffefe00fffffffffffffffffeffffff\n")
JAR = "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n"


def folder(tmp_path: Path, status: str = "enabled", **entries: str) -> str:
    (tmp_path / "status").write_text(status + "\n")
    (tmp_path / "register").write_text("")
    for name, text in entries.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def test_an_enabled_fixed_handler_for_the_platforms_elf_is_its_emulator(tmp_path):
    f = folder(tmp_path, **{"jar": JAR, "qemu-aarch64": QEMU_AARCH64, "qemu-x86_64": QEMU_X86_64})
    assert emulator("linux/arm64", f) == "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
    assert emulator("linux/amd64", f) == "/usr/libexec/qemu-binfmt/x86_64-binfmt-P"
    assert emulator("linux/riscv64", f) is None


@pytest.mark.parametrize("why, status, text", [
    ("handler disabled", "enabled", QEMU_AARCH64.replace("enabled", "disabled", 1)),
    ("binfmt_misc disabled", "disabled", QEMU_AARCH64),
    # Without F the kernel opens the interpreter by path when a program starts: inside a
    # sandbox's mount namespace that path is not there.
    ("no F flag", "enabled", QEMU_AARCH64.replace("flags: POF", "flags: PO")),
    ("another machine's ELF", "enabled", QEMU_X86_64),
    ("32-bit ELF only", "enabled", QEMU_AARCH64.replace("magic 7f454c4602", "magic 7f454c4601")),
    ("an extension handler", "enabled", JAR),
    ("garbage", "enabled", "enabled\nmagic zz\n"),
])
def test_no_emulator_unless_the_kernel_would_run_it_in_a_sandbox(tmp_path, why, status, text):
    assert emulator("linux/arm64", folder(tmp_path, status, entry=text)) is None, why


def test_no_binfmt_misc_means_native_only(tmp_path):
    assert emulator("linux/arm64", str(tmp_path / "absent")) is None
    assert can_run(None, "linux/amd64") and can_run("linux/amd64", "linux/amd64")


def test_the_mask_lets_executables_and_shared_objects_through():
    h = parse_handler("qemu-aarch64", QEMU_AARCH64)
    assert h is not None and h.offset == 0 and len(h.magic) == len(h.mask) == 20
    exe = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00\xb7\x00"
    assert h.takes(exe) and h.takes(exe[:16] + b"\x03\x00\xb7\x00")
    assert not h.takes(exe[:18] + b"\x3e\x00") and not h.takes(exe[:10])


def test_this_hosts_own_handlers_are_read_as_the_kernel_shows_them():
    """Every magic-number handler registered on this machine parses (none, if none is)."""
    root = Path(BINFMT_MISC)
    entries = [p for p in root.iterdir() if p.name not in ("register", "status")] if root.is_dir() else []
    for p in entries:
        text = p.read_text()
        if "\nmagic " in text:
            assert parse_handler(p.name, text) is not None, text
