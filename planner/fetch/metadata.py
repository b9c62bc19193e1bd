"""The core metadata (a wheel's `.dist-info/METADATA`) of a file on a package index, without
downloading the file, kept by the file's sha256.

Resolving a closure needs the metadata of every candidate pip looks at; pip 23 downloads the
whole wheel for it unless the index serves PEP 658 metadata, and the index here serves it for
some wheels only (a 150 MB flashinfer-cubin wheel was downloaded to read 2 KB). This module gets
it the cheapest way the index allows, in order: the PEP 658 `<url>.metadata` file; the wheel's
zip directory and METADATA member read with HTTP range requests (as pip's lazy wheel does); the
whole file, checked against the index's sha256. A file on the index never changes under its
sha256, so what was read once is kept in a cache folder under that name and never asked again.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from ..errors import FetchError
from .indexfile import IndexFile

# METADATA of the largest wheels is tens of KB; more is not metadata.
MAX_METADATA = 16 << 20
# The zip directory of a wheel is at its end: one request for the last 64 KiB usually holds the
# directory and the METADATA member (dist-info is written last).
_TAIL = 64 << 10
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_cache_dir() -> Path:
    """$PLANNER_PYPI_METADATA_CACHE, else $XDG_CACHE_HOME/planner/pypi-metadata (~/.cache/...)."""
    explicit = os.environ.get("PLANNER_PYPI_METADATA_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "planner" / "pypi-metadata"


class MetadataCache:
    """METADATA bytes by the sha256 of the file they came from: `<folder>/<ab>/<sha256>.metadata`.

    Entries are written whole (a temporary file renamed into place), so a reader sees a complete
    entry or none."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise FetchError(f"not a sha256: {sha256[:80]!r}", where="metadata cache")
        return self.folder / sha256[:2] / f"{sha256}.metadata"

    def get(self, sha256: str) -> Optional[bytes]:
        path = self._path(sha256)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_METADATA + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return None  # unreadable: fetched again and rewritten
        return data if 0 < len(data) <= MAX_METADATA else None

    def put(self, sha256: str, data: bytes) -> None:
        path = self._path(sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a cache that cannot be written only costs the next run a request


def _dist_info_metadata(zf: zipfile.ZipFile, filename: str) -> bytes:
    """The METADATA member of the wheel's own `.dist-info` folder (one, at the top level)."""
    hits = [i for i in zf.infolist()
            if re.fullmatch(r"[^/]+\.dist-info/METADATA", i.filename)]
    if len(hits) != 1:
        raise FetchError(f"{len(hits)} .dist-info/METADATA members, expected one", where=filename)
    if hits[0].file_size > MAX_METADATA:
        raise FetchError(f"METADATA of {hits[0].file_size} bytes (limit {MAX_METADATA})", where=filename)
    with zf.open(hits[0]) as member:
        data = member.read(MAX_METADATA + 1)
    if len(data) > MAX_METADATA:
        raise FetchError(f"METADATA over {MAX_METADATA} bytes", where=filename)
    return data


class _RangeFile(io.RawIOBase):
    """A remote file read through HTTP range requests, for zipfile (which seeks and reads)."""

    def __init__(self, client, url: str, size: int, tail: bytes) -> None:
        self.client, self.url, self.size = client, url, size
        self.pos = 0
        self.blocks: list[tuple[int, bytes]] = [(size - len(tail), tail)]
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def _have(self, start: int, end: int) -> Optional[bytes]:
        for at, data in self.blocks:
            if at <= start and end <= at + len(data):
                return data[start - at:end - at]
        return None

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        data = self._have(self.pos, end)
        if data is None:
            if self.requests >= 16:
                raise FetchError("too many range requests for one METADATA", where=self.url)
            self.requests += 1
            # Read ahead: the member's local header comes before its data.
            want_end = min(self.size, max(end, self.pos + _TAIL))
            r = self.client.get(self.url, headers={"Range": f"bytes={self.pos}-{want_end - 1}"},
                                follow_redirects=True)
            if r.status_code != 206 or len(r.content) != want_end - self.pos:
                raise FetchError(f"range request answered {r.status_code}", where=self.url)
            self.blocks.append((self.pos, r.content))
            data = r.content[: end - self.pos]
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _from_pep658(f: IndexFile, client) -> Optional[bytes]:
    r = client.get(f.url + ".metadata", follow_redirects=True)
    if r.status_code != 200:
        return None
    data = r.content
    if not data or len(data) > MAX_METADATA:
        return None
    if f.metadata_sha256 and hashlib.sha256(data).hexdigest() != f.metadata_sha256:
        raise FetchError(f"{f.filename}.metadata does not match the index's sha256 {f.metadata_sha256}",
                         where=f.url)
    return data


def _from_wheel(f: IndexFile, client) -> bytes:
    """Ask for the wheel's last 64 KiB; a server that answers with the whole file instead (no
    range support) is read to the end, checked against the index's sha256, and used as it is."""
    with client.stream("GET", f.url, headers={"Range": f"bytes=-{_TAIL}"}, follow_redirects=True) as r:
        if r.status_code == 206:
            tail = r.read()
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", r.headers.get("content-range", ""))
            if not m or int(m.group(2)) + 1 != int(m.group(3)) or len(tail) != int(m.group(2)) - int(m.group(1)) + 1:
                raise FetchError("range answer does not match its Content-Range", where=f.url)
            remote = _RangeFile(client, f.url, int(m.group(3)), tail)
            try:
                with zipfile.ZipFile(remote) as zf:
                    return _dist_info_metadata(zf, f.filename)
            except (zipfile.BadZipFile, ValueError, EOFError) as exc:
                raise FetchError(f"not a readable wheel: {exc}", where=f.filename) from None
        if r.status_code != 200:
            raise FetchError(f"answered {r.status_code}", where=f.url)
        digest = hashlib.sha256()
        with tempfile.TemporaryFile() as tmp:
            for chunk in r.iter_bytes(1 << 20):
                digest.update(chunk)
                tmp.write(chunk)
            if f.sha256 and digest.hexdigest() != f.sha256:
                raise FetchError(f"bytes do not match the index's sha256 {f.sha256}", where=f.url)
            tmp.seek(0)
            try:
                with zipfile.ZipFile(tmp) as zf:
                    return _dist_info_metadata(zf, f.filename)
            except (zipfile.BadZipFile, ValueError, EOFError) as exc:
                raise FetchError(f"not a readable wheel: {exc}", where=f.filename) from None


def wheel_metadata(f: IndexFile, client, cache: Optional[MetadataCache] = None) -> bytes:
    """The METADATA of the wheel `f` (cached by its sha256 when the index gives one)."""
    if not f.filename.endswith(".whl"):
        raise FetchError("only a wheel has METADATA to read without building it", where=f.filename)
    if cache is not None and f.sha256:
        hit = cache.get(f.sha256)
        if hit is not None:
            return hit
    if f.url.startswith("file:"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(f.url).path))
        try:
            with zipfile.ZipFile(path) as zf:
                data = _dist_info_metadata(zf, f.filename)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
            raise FetchError(f"not a readable wheel: {exc}", where=f.filename) from None
    else:
        import httpx

        try:
            data = _from_pep658(f, client) or _from_wheel(f, client)
        except httpx.HTTPError as exc:
            from ..netdiag import reason

            raise FetchError(f"metadata unreachable: {reason(exc)}", where=f.url) from None
    if cache is not None and f.sha256:
        cache.put(f.sha256, data)
    return data
