"""Download one URL to a file: streamed, hashed on the way, retried, and renamed into place whole.

The bytes go to a `.part` file beside `dest` and reach it only when the body is complete (Content-Length
honoured) and, when a sha256 is pinned, matching. Transient failures (connection errors,
timeouts, 5xx, short bodies) are retried with exponential backoff, resuming with `Range` when
the server said it accepts ranges; a 4xx is the caller's mistake and fails at once.
`file://` URLs are copied and hashed the same way, for local mirrors.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

import attrs
import blake3
import httpx

from ..errors import FetchError, HashMismatch
from ..hashing import format_digest

__all__ = ["Downloaded", "download"]

_CHUNK = 1 << 20
_USER_AGENT = "planner/0.1"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@attrs.frozen
class Downloaded:
    path: Path
    size: int
    sha256: str  # lowercase hex
    blake3: str  # `blake3:<hex>`, the tree hash of a single-file input


class _Transient(Exception):
    """A failure worth another attempt; its text ends up in the final error."""


@attrs.define
class _Progress:
    """What survives between attempts: how much of `.part` is good and whether it can resume."""

    offset: int = 0
    resumable: bool = False
    validator: str | None = None  # strong ETag or Last-Modified, sent as If-Range


class _Hasher:
    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.b3 = blake3.blake3()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.b3.update(chunk)
        self.size += len(chunk)

    def result(self, path: Path) -> Downloaded:
        return Downloaded(path, self.size, self.sha.hexdigest(), format_digest(self.b3.digest()))

    @classmethod
    def of_prefix(cls, f: BinaryIO, length: int) -> "_Hasher":
        h = cls()
        f.seek(0)
        while h.size < length and (chunk := f.read(min(_CHUNK, length - h.size))):
            h.update(chunk)
        return h


def _redact(url: str) -> str:
    """The URL without a password, fit for error messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL at all: said so where it is used
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _expected_sha256(sha256: str | None, where: str) -> str | None:
    if sha256 is None:
        return None
    value = sha256.lower().removeprefix("sha256:")
    if not _SHA256_RE.fullmatch(value):
        raise FetchError(f"pinned sha256 {sha256!r} is not 64 hex digits", where=where)
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 30.0,
    retries: int = 4,
    backoff: float = 0.5,
    client: httpx.Client | None = None,
) -> Downloaded:
    """Fetch `url` into `dest` (replacing it). `sha256` (hex, optionally `sha256:`-prefixed) pins it;
    `size`, the pinned length, stops a body that runs past it (a server or file that never ends).

    Raises HashMismatch when the complete body has another sha256, FetchError for anything
    else; either way neither `dest` nor its `.part` file is left behind by this call.
    """
    dest = Path(dest)
    where = _redact(url)
    expected = _expected_sha256(sha256, where)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A short name: `<name>.part` of a 251-byte name is longer than a file name may be.
    part = dest.with_name(f".{hashlib.sha256(os.fsencode(dest.name)).hexdigest()[:16]}.part")
    try:
        try:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
        except ValueError as e:
            raise FetchError(f"not a valid URL: {e}", where=where) from None
        if scheme == "file":
            got = _copy_local(url, part, where, size)
        elif scheme in ("http", "https"):
            got = _download_http(url, part, where, timeout=timeout, retries=retries, backoff=backoff,
                                 client=client, size=size)
        else:
            raise FetchError(f"unsupported URL scheme {scheme!r} (http, https and file work)", where=where)
        if expected is not None and got.sha256 != expected:
            raise HashMismatch(where, expected, got.sha256)
        os.replace(part, dest)
        _fsync_dir(dest.parent)
        return attrs.evolve(got, path=dest)
    finally:
        part.unlink(missing_ok=True)


def _too_long(size: int, where: str) -> FetchError:
    return FetchError(f"more than the pinned {size} bytes: not the pinned file", where=where)


def _copy_local(url: str, part: Path, where: str, size: int | None = None) -> Downloaded:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"file URL names host {parts.netloc!r}; only local files can be read", where=where)
    src = Path(urllib.request.url2pathname(parts.path))
    hasher = _Hasher()
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                if size is not None and hasher.size + len(chunk) > size:
                    raise _too_long(size, where)
                fout.write(chunk)
                hasher.update(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except IsADirectoryError:
        raise FetchError(f"{src} is a directory, not a file", where=where) from None
    except FileNotFoundError:
        raise FetchError(f"no such file {src}", where=where) from None
    except OSError as e:
        part.unlink(missing_ok=True)
        if e.errno in (28, 122):  # ENOSPC, EDQUOT: our side, not the source's
            raise FetchError(f"cannot write {part.name}: {e.strerror}", where=where) from None
        raise FetchError(f"cannot copy {src}: {_one_line(e)}", where=where) from None
    return hasher.result(part)


def _download_http(
    url: str, part: Path, where: str, *, timeout: float, retries: int, backoff: float,
    client: httpx.Client | None, size: int | None = None,
) -> Downloaded:
    own = client is None
    http = client or httpx.Client(follow_redirects=True, headers={"User-Agent": _USER_AGENT})
    progress = _Progress()
    attempts = max(0, retries) + 1
    failures: list[str] = []
    try:
        for attempt in range(attempts):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                return _attempt(http, url, part, where, progress, timeout, size)
            except _Transient as e:
                failures.append(str(e))
    finally:
        if own:
            http.close()
    # The first and the last failure usually tell the story; the middle ones repeat it.
    story = failures[-1] if len(set(failures)) == 1 else f"{failures[0]}; last: {failures[-1]}"
    raise FetchError(f"failed after {attempts} attempts: {story}", where=where)


def _attempt(http: httpx.Client, url: str, part: Path, where: str, progress: _Progress,
             timeout: float, size: int | None = None) -> Downloaded:
    # Identity encoding: the pinned hash is of the bytes as published, not as re-encoded
    # by a server that gzips everything.
    headers = {"Accept-Encoding": "identity"}
    resume = progress.offset > 0 and progress.resumable
    if resume:
        headers["Range"] = f"bytes={progress.offset}-"
        if progress.validator:
            headers["If-Range"] = progress.validator
    try:
        with http.stream("GET", url, headers=headers, timeout=httpx.Timeout(timeout),
                         follow_redirects=True) as r:
            return _receive(r, part, where, progress, resume, size)
    except httpx.TooManyRedirects as e:
        raise FetchError(_one_line(e), where=where) from None
    except httpx.UnsupportedProtocol:
        # A redirect to file:, ftp:, … is the server's answer, not a passing fault: said once.
        raise FetchError("redirected to a URL that is not http(s)", where=where) from None
    except httpx.TransportError as e:
        # Connection refused/reset, timeouts, bodies cut short (httpx checks Content-Length).
        from ..netdiag import reason

        raise _Transient(f"{type(e).__name__}: {reason(e)}") from None


def _receive(r: httpx.Response, part: Path, where: str, progress: _Progress, resume: bool,
             size: int | None = None) -> Downloaded:
    status = f"HTTP {r.status_code} {r.reason_phrase}".rstrip()
    if 400 <= r.status_code < 500:
        raise FetchError(status, where=where)
    if r.status_code >= 500:
        raise _Transient(status)

    if r.status_code == 206 and resume and _range_start(r) == progress.offset:
        mode = "r+b"
    elif r.status_code == 200:
        mode = "wb"
        progress.offset = 0
        progress.resumable = r.headers.get("accept-ranges", "").lower() == "bytes"
        etag = r.headers.get("etag")
        progress.validator = etag if etag and not etag.startswith("W/") else r.headers.get("last-modified")
    elif r.status_code == 206:
        # A range we did not ask for (or not where we asked): start over without ranges.
        progress.offset, progress.resumable = 0, False
        raise _Transient(f"{status} with unexpected Content-Range {r.headers.get('content-range')!r}")
    else:
        raise FetchError(f"unexpected {status}", where=where)

    length = r.headers.get("content-length")
    total = progress.offset + int(length) if length and length.isdigit() else None
    if size is not None and total is not None and total > size:
        raise _too_long(size, where)
    try:
        return _write_body(r, part, mode, progress, total, size, where)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise FetchError(f"cannot write {part.name}: {exc.strerror or exc}", where=where) from None


def _write_body(r: httpx.Response, part: Path, mode: str, progress: _Progress, total: int | None,
                size: int | None = None, where: str = "") -> Downloaded:
    with open(part, mode) as f:
        hasher = _Hasher.of_prefix(f, progress.offset) if mode == "r+b" else _Hasher()
        f.seek(progress.offset)
        f.truncate()
        # No chunk size: httpx would hold up to that much back, and lose it when the body breaks.
        for chunk in r.iter_raw():
            if size is not None and progress.offset + len(chunk) > size:
                raise _too_long(size, where)
            f.write(chunk)
            hasher.update(chunk)
            progress.offset += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    if total is not None and progress.offset != total:
        raise _Transient(f"truncated body: got {progress.offset} of {total} bytes")
    return hasher.result(part)


def _range_start(r: httpx.Response) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", r.headers.get("content-range", ""))
    return int(m.group(1)) if m else None
