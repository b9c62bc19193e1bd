"""The build machine as keys see it: its platform and the Debian versions of the host tools a
sandboxed builder runs.

Standard library and attrs only: executors' workers, the planner and `why` all ask it, and it
asks nobody.
"""

from __future__ import annotations

import platform as _platform
from pathlib import Path

import attrs

# Host packages whose files a sandboxed builder runs in a set WITHOUT a build root (the sandbox
# then mounts the host's /usr). Their Debian versions go into the preimage: a compiler update is
# a visible, explained change. A set with a build root keys the build root's digest instead.
HOST_PACKAGES = {
    "base": ("bash", "coreutils", "patch", "python3.11-minimal", "libpython3.11-stdlib", "libc6"),
    "cuda": ("g++-12", "gcc-12", "cpp-12", "libstdc++-12-dev", "libc6-dev", "binutils"),
    "cuda-arm64": ("g++-12-aarch64-linux-gnu", "gcc-12-aarch64-linux-gnu", "cpp-12-aarch64-linux-gnu",
                   "libc6-dev-arm64-cross", "binutils-aarch64-linux-gnu"),
}
DPKG_STATUS = Path("/var/lib/dpkg/status")


@attrs.frozen
class HostInfo:
    """Facts about the build machine that enter keys: its platform and host-package versions."""

    platform: str
    packages: dict[str, str] = attrs.field(factory=dict)
    sandbox: bool = True


def host_platform() -> str:
    machine = _platform.machine().lower()
    return {"x86_64": "linux/amd64", "amd64": "linux/amd64", "aarch64": "linux/arm64",
            "arm64": "linux/arm64"}.get(machine, f"linux/{machine}")


def host_packages(names: set[str], status: Path = DPKG_STATUS) -> dict[str, str]:
    """Installed Debian versions of the named packages (architecture-qualified names merged)."""
    out: dict[str, str] = {}
    try:
        text = status.read_text(errors="replace")
    except OSError:
        return out
    for block in text.split("\n\n"):
        pkg = ver = None
        installed = False
        for line in block.splitlines():
            if line.startswith("Package: "):
                pkg = line[9:].strip()
                if pkg not in names:
                    break
            elif line.startswith("Version: "):
                ver = line[9:].strip()
            elif line.startswith("Status: "):
                installed = line.endswith(" installed")
        if pkg in names and ver and installed:
            out[pkg] = ver
    return out


def detect_host(sandboxed: bool = True) -> HostInfo:
    names = {n for group in HOST_PACKAGES.values() for n in group}
    return HostInfo(platform=host_platform(), packages=host_packages(names), sandbox=sandboxed)
