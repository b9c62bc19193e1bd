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

import functools
import html
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Literal, NamedTuple, Optional

from ..errors import FetchError

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
    if dist == "sdist":
        from .url import download as url_download

        found = find_sdist(name, version)
        url_download(found.url, dest_dir / found.filename, sha256=found.sha256)
        return dest_dir / found.filename
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


# -- sdists from the Simple API ----------------------------------------------------------------

class IndexFile(NamedTuple):
    filename: str
    url: str
    sha256: Optional[str]  # None where the index gives no sha256 (then only the lock pins it)


DEFAULT_INDEX = "https://pypi.org/simple"
_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
_ANCHOR = re.compile(r"<a\s[^>]*?href\s*=\s*[\"']([^\"']+)[\"'][^>]*>\s*([^<]+?)\s*</a>", re.IGNORECASE)


def normalise_name(name: str) -> str:
    """PEP 503: lower case, runs of `-`, `_`, `.` become one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=1)
def _pip_config() -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip("'\"")
    return out


def index_urls() -> list[str]:
    """The indexes pip would use here: index-url (else PyPI), then every extra-index-url."""
    def pick(option: str) -> Optional[str]:
        env = os.environ.get("PIP_" + option.upper().replace("-", "_"))
        if env:
            return env
        cfg = _pip_config()
        for scope in (":env:", "download", "global"):
            if f"{scope}.{option}" in cfg:
                return cfg[f"{scope}.{option}"]
        return None

    main = pick("index-url") or DEFAULT_INDEX
    extra = (pick("extra-index-url") or "").split()
    return list(dict.fromkeys([main, *extra]))


def _is_sdist_of(filename: str, name: str, version: str) -> bool:
    for ext in (".tar.gz", ".zip"):
        if filename.endswith(ext):
            stem = filename[: -len(ext)]
            dist, sep, ver = stem.rpartition("-")
            return bool(sep) and normalise_name(dist) == normalise_name(name) and ver == version
    return False


def _parse_page(body: bytes, content_type: str, page_url: str) -> list[IndexFile]:
    if "json" in content_type:
        data = json.loads(body)
        return [IndexFile(f["filename"], urllib.parse.urljoin(page_url, f["url"]), (f.get("hashes") or {}).get("sha256"))
                for f in data.get("files", [])]
    files = []
    for href, text in _ANCHOR.findall(body.decode("utf-8", "replace")):
        url = urllib.parse.urljoin(page_url, html.unescape(href))
        base, _, fragment = url.partition("#")
        algo, _, digest = fragment.partition("=")
        files.append(IndexFile(html.unescape(text).strip(), base, digest.lower() if algo == "sha256" else None))
    return files


def _project_files(index: str, name: str, client) -> Optional[list[IndexFile]]:
    """The files an index lists for a project, or None if the index does not know it."""
    page = index.rstrip("/") + "/" + normalise_name(name) + "/"
    if page.startswith("file:"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(page).path))
        listing = folder / "index.html"
        if listing.is_file():
            return _parse_page(listing.read_bytes(), "text/html", listing.as_uri())
        if folder.is_dir():
            return [IndexFile(p.name, p.as_uri(), None) for p in sorted(folder.iterdir()) if p.is_file()]
        return None
    import httpx

    try:
        r = client.get(page, headers={"Accept": _ACCEPT}, follow_redirects=True)
    except httpx.HTTPError as e:
        raise FetchError(f"index {index} unreachable: {type(e).__name__}: {e}", where=f"{name}") from None
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise FetchError(f"index {index} answered {r.status_code} for {page}", where=name)
    return _parse_page(r.content, r.headers.get("content-type", ""), str(r.url))


def find_sdist(name: str, version: str, *, indexes: Optional[list[str]] = None, client=None) -> IndexFile:
    """The sdist `name==version` on the first index that lists it (no metadata preparation)."""
    import httpx

    where = f"{name}=={version}"
    indexes = indexes if indexes is not None else index_urls()
    own = client is None
    if own:
        import ssl

        cert = os.environ.get("PIP_CERT") or _pip_config().get("global.cert")
        verify = ssl.create_default_context(cafile=cert) if cert and os.path.isfile(cert) else True
        client = httpx.Client(timeout=60.0, verify=verify, trust_env=True)
    try:
        for index in indexes:
            files = _project_files(index, name, client)
            hits = [f for f in files or [] if _is_sdist_of(f.filename, name, version)]
            if hits:
                return sorted(hits, key=lambda f: not f.filename.endswith(".tar.gz"))[0]
    finally:
        if own:
            client.close()
    raise FetchError(f"no sdist of {where} on {', '.join(indexes)}", where=where)
