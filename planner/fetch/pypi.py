"""PyPI distributions: wheels through `pip download`, sdists from the index's Simple API.

Wheels go through pip, not a hand-written index client, so that the index URL, extra
indexes, find-links mirrors, certificates and proxies configured for pip on this machine
apply unchanged. Sdists do not: `pip download` of an sdist prepares its metadata, which runs
the package's build backend after installing its build requirements (TransformerEngine's
torch binding installs torch first: gigabytes, or a failure). An sdist is a file on the index
whose name says its version, so it is taken from the Simple API (PEP 691 JSON, PEP 503 HTML)
of the indexes pip is configured with, and checked against the index's sha256.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal, Optional

from ..errors import FetchError
from .simple_index import (DatedIndex, IndexFile, files_as_of, http_client, index_urls, normalise_name,
                           pip_index_args, project_files)

__all__ = ["IndexFile", "download", "find_sdist", "index_urls", "platform_tags", "wheel_arch"]

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


def _plain(filename: str, where: str) -> None:
    """The file name an index gave, which becomes a path below the download folder."""
    from ..errors import UnsafeTree
    from ..safetree import plain_name

    try:
        plain_name(filename, where=where, what="the index's file name")
    except UnsafeTree as e:  # a hostile index names a path, not a file
        raise FetchError(e.message, where=where) from None


def download(
    name: str,
    version: str,
    *,
    dist: Literal["sdist", "wheel"],
    dest_dir: Path,
    platform: str | None = None,
    python_version: str | None = None,
    abi: str | None = None,
    as_of: Optional[datetime.datetime] = None,
) -> Path:
    """Download exactly `name==version` as an sdist or a wheel into `dest_dir`; return its path.

    `platform` is an OCI platform (`linux/amd64`), expanded with `platform_tags`, or a raw wheel
    platform tag. Without it the running machine's platform applies. With `as_of`, a file
    uploaded later is not a candidate (pip is given a dated view of the indexes).
    """
    where = f"{name}=={version}"
    args = _pip_args(name, version, dist, platform, python_version, abi)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if dist == "wheel" and as_of is not None and python_version:
        found_wheel = _dated_wheel(name, version, platform, python_version, abi, as_of)
        if found_wheel is not None:
            from .url import download as url_download

            _plain(found_wheel.filename, where)
            url_download(found_wheel.url, dest_dir / found_wheel.filename, sha256=found_wheel.sha256)
            return dest_dir / found_wheel.filename
    if dist == "sdist":
        from .url import download as url_download

        found = find_sdist(name, version, as_of=as_of)
        _plain(found.filename, where)
        url_download(found.url, dest_dir / found.filename, sha256=found.sha256)
        return dest_dir / found.filename
    # Inside dest_dir so the final move is a rename on one file system.
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=dest_dir) as tmp:
        if as_of is None:
            proc = _pip_download(tmp, args, [])
        else:
            with DatedIndex(as_of) as view:
                proc = _pip_download(tmp, args, pip_index_args(view.url))
            if proc.returncode != 0 and view.errors:
                raise FetchError(f"pip download ({dist}) failed: {view.errors[-1]}", where=where)
        if proc.returncode != 0:
            last = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            dated = f" (files uploaded by {as_of.isoformat()})" if as_of is not None else ""
            raise FetchError(f"pip download ({dist}) failed{dated}: {last[-1] if last else f'exit {proc.returncode}'}",
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


# -- wheels as of a date, chosen as pip chooses -------------------------------------------------

def _packaging():
    # pip's own copy: the supported tags come from pip (`supported_tags`), and a Tag of another
    # copy of packaging never compares equal to one of pip's (every wheel would look unsupported).
    from pip._vendor.packaging import specifiers, tags, utils, version  # type: ignore

    return specifiers, tags, utils, version


def supported_tags(platform: str | None, python_version: str, abi: str | None = None) -> list:
    """The wheel tags pip accepts for `--platform ... --python-version X --implementation cp
    --abi cpXY`, most preferred first (what pip's own tag list is made of). Without a platform,
    only platform-independent (`any`) wheels."""
    cp = _cp_version(python_version)
    plats = (platform_tags(platform) if _looks_like_platform(platform) else [platform]) if platform else None
    # pip's own list (the order matters: it expands legacy manylinux aliases its own way).
    from pip._internal.utils.compatibility_tags import get_supported

    out = get_supported(version=cp, platforms=plats, impl="cp", abis=[abi or f"cp{cp}"])
    return [t for t in out if plats or t.platform == "any"]


def select_wheel(files: list[IndexFile], name: str, version: str, supported: list, python_full: str
                 ) -> Optional[IndexFile]:
    """The wheel of `name==version` pip would take among `files`: not yanked, Requires-Python
    admits the target, and the best-ranked tag in `supported` (ties: the higher build number)."""
    specifiers, _, utils, pver = _packaging()
    rank = {t: i for i, t in enumerate(supported)}
    want = pver.Version(version)
    best: Optional[tuple] = None
    for f in files:
        if not f.filename.endswith(".whl") or f.yanked:
            continue
        try:
            wname, wver, build, wtags = utils.parse_wheel_filename(f.filename)
        except (utils.InvalidWheelFilename, pver.InvalidVersion):
            continue
        if wname != utils.canonicalize_name(name) or wver != want:
            continue
        if f.requires_python:
            try:
                if not specifiers.SpecifierSet(f.requires_python).contains(python_full, prereleases=True):
                    continue
            except specifiers.InvalidSpecifier:
                pass
        ranks = [rank[t] for t in wtags if t in rank]
        if not ranks:
            continue
        key = (min(ranks), tuple(-x if isinstance(x, int) else 0 for x in (build or ())), f.filename)
        if best is None or key < best[0]:
            best = (key, f)
    return best[1] if best else None


@functools.lru_cache(maxsize=4096)
def _dated_listing(name: str, indexes: tuple[str, ...], as_of: datetime.datetime) -> tuple[IndexFile, ...]:
    merged: dict[str, IndexFile] = {}
    client = http_client()
    try:
        for index in indexes:
            for f in files_as_of(project_files(index, name, client) or [], as_of):
                merged.setdefault(f.filename, f)
    finally:
        client.close()
    return tuple(merged.values())


def _dated_wheel(name: str, version: str, platform: str | None, python_version: str, abi: str | None,
                 as_of: datetime.datetime) -> Optional[IndexFile]:
    """The file pip would download as of `as_of`, chosen here from the indexes' listings: one
    request per project instead of a pip process per file. None: let pip decide (and explain)."""
    files = _dated_listing(name, tuple(index_urls()), as_of)
    full = python_version if python_version.count(".") == 2 else python_version + ".0"
    best = select_wheel(list(files), name, version, supported_tags(platform, python_version, abi), full)
    return best if best is not None and best.sha256 else None


def _pip_download(tmp: str, args: list[str], index_args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "download", "--dest", tmp, *index_args, *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


# -- sdists from the Simple API ----------------------------------------------------------------

def _is_sdist_of(filename: str, name: str, version: str) -> bool:
    for ext in (".tar.gz", ".zip"):
        if filename.endswith(ext):
            stem = filename[: -len(ext)]
            dist, sep, ver = stem.rpartition("-")
            return bool(sep) and normalise_name(dist) == normalise_name(name) and ver == version
    return False


def find_sdist(name: str, version: str, *, indexes: Optional[list[str]] = None, client=None,
               as_of: Optional[datetime.datetime] = None) -> IndexFile:
    """The sdist `name==version` on the first index that lists it (no metadata preparation);
    with `as_of`, only a file uploaded by then."""
    where = f"{name}=={version}"
    indexes = indexes if indexes is not None else index_urls()
    own = client is None
    if own:
        client = http_client()
    try:
        for index in indexes:
            files = files_as_of(project_files(index, name, client) or [], as_of)
            hits = [f for f in files if _is_sdist_of(f.filename, name, version)]
            if hits:
                return sorted(hits, key=lambda f: not f.filename.endswith(".tar.gz"))[0]
    finally:
        if own:
            client.close()
    dated = f" uploaded by {as_of.isoformat()}" if as_of is not None else ""
    raise FetchError(f"no sdist of {where}{dated} on {', '.join(indexes)}", where=where)
