"""PyPI distributions through `pip download`, with the machine's own pip configuration.

pip, not a hand-written index client, so that the index URL, extra indexes, find-links
mirrors, certificates and proxies configured for pip on this machine apply unchanged.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from ..errors import FetchError

__all__ = ["download", "platform_tags", "wheel_arch"]

# The glibc versions manylinux wheels are tagged for, newest first. 2.17 is manylinux2014,
# 2.12 manylinux2010, 2.5 manylinux1; their legacy aliases are listed as well since pip
# matches tags literally and does not expand PEP 600 tags into older ones for --platform.
_GLIBC_MINORS = (39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20,
                 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5)
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
_ARCHES = {
    "amd64": "x86_64", "x86_64": "x86_64",
    "arm64": "aarch64", "aarch64": "aarch64",
    "ppc64le": "ppc64le", "s390x": "s390x",
}


def wheel_arch(platform: str) -> str:
    """The wheel-tag machine name of an OCI-style platform (`linux/amd64`, `linux/arm64/v8`)."""
    parts = platform.lower().split("/")
    if len(parts) >= 2 and parts[0] != "linux":
        raise FetchError(f"only linux platforms have wheels here, not {platform!r}", where="platform")
    arch = parts[1] if len(parts) >= 2 else parts[0]
    if arch not in _ARCHES:
        raise FetchError(f"unknown architecture in {platform!r} (known: {', '.join(sorted(_ARCHES))})",
                         where="platform")
    return _ARCHES[arch]


def platform_tags(platform: str, *, max_glibc: str = "2.34") -> list[str]:
    """pip `--platform` values for a Linux target, most preferred first.

    Every manylinux tag whose glibc is at most `max_glibc` (the target image's: Debian 12 has
    2.36, Ubuntu 22.04 2.35, RHEL 9 2.34), their legacy aliases, then the plain `linux_<arch>` tag.
    """
    arch = wheel_arch(platform)
    m = re.fullmatch(r"2\.(\d+)", max_glibc)
    if not m:
        raise FetchError(f"glibc version {max_glibc!r} is not of the form 2.N", where="platform")
    ceiling = int(m.group(1))
    tags: list[str] = []
    for minor in _GLIBC_MINORS:
        if minor > ceiling:
            continue
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in _LEGACY:
            tags.append(f"{_LEGACY[minor]}_{arch}")
    tags.append(f"linux_{arch}")
    return tags


def _looks_like_platform(platform: str) -> bool:
    return "/" in platform or platform.lower() in _ARCHES


def _cp_version(python_version: str) -> str:
    m = re.fullmatch(r"(\d)\.?(\d+)", python_version)
    if not m:
        raise FetchError(f"python version {python_version!r} is not like 3.11", where="python_version")
    return f"{m.group(1)}{m.group(2)}"


def _pip_args(name: str, version: str, dist: Literal["sdist", "wheel"], platform: str | None,
              python_version: str | None, abi: str | None) -> list[str]:
    args = ["--no-deps", "--no-input", "--progress-bar", "off"]
    if dist == "sdist":
        if platform or python_version or abi:
            raise FetchError("platform, python_version and abi only apply to wheels", where=f"{name}=={version}")
        # This package only: with `:all:`, pip would also build the build backend from source
        # to prepare the metadata (30+ seconds for a hatchling package).
        args += ["--no-binary", name]
    elif dist == "wheel":
        args += ["--only-binary", ":all:"]
        if platform:
            for tag in platform_tags(platform) if _looks_like_platform(platform) else [platform]:
                args += ["--platform", tag]
        if python_version:
            args += ["--python-version", python_version]
            abi = abi or f"cp{_cp_version(python_version)}"
        if platform or python_version or abi:
            args += ["--implementation", "cp"]
        if abi:
            args += ["--abi", abi]
    else:
        raise FetchError(f"dist must be 'sdist' or 'wheel', not {dist!r}", where=f"{name}=={version}")
    return args + [f"{name}=={version}"]


def download(
    name: str,
    version: str,
    *,
    dist: Literal["sdist", "wheel"],
    dest_dir: Path,
    platform: str | None = None,
    python_version: str | None = None,
    abi: str | None = None,
) -> Path:
    """Download exactly `name==version` as an sdist or a wheel into `dest_dir`; return its path.

    `platform` is an OCI platform (`linux/amd64`), expanded with `platform_tags`, or a raw wheel
    platform tag. Without it the running machine's platform applies.
    """
    where = f"{name}=={version}"
    args = _pip_args(name, version, dist, platform, python_version, abi)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    # Inside dest_dir so the final move is a rename on one file system.
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=dest_dir) as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--dest", tmp, *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        if proc.returncode != 0:
            last = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            raise FetchError(f"pip download ({dist}) failed: {last[-1] if last else f'exit {proc.returncode}'}",
                             where=where)
        files = sorted(Path(tmp).iterdir())
        if len(files) != 1:
            raise FetchError(f"pip download ({dist}) gave {len(files)} files, expected one: "
                             f"{', '.join(f.name for f in files)}", where=where)
        got = files[0]
        is_wheel = got.name.endswith(".whl")
        if is_wheel != (dist == "wheel"):
            raise FetchError(f"asked for a {dist}, pip gave {got.name}", where=where)
        final = dest_dir / got.name
        os.replace(got, final)
        return final
