"""The Simple repository API (PEP 503 HTML, PEP 691 JSON) of the indexes pip is configured with,
and a view of them as of a date.

`resolve-as-of` in set.toml (like uv's `exclude-newer`) makes a lock reproducible in time: a
file uploaded after the date is not a candidate, so `planner lock --update` a month later picks
the same files. The upload time is the index's own (PEP 700 `upload-time`, JSON pages only); a
file without one cannot be dated and is not a candidate either. pip (23.x here) has no such
option, so it is given a loopback PEP 691 index (`DatedIndex`) that serves the configured
indexes' pages with the later files removed; pip's resolver and tag choice stay pip's own.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from concurrent.futures import Future

from ..errors import FetchError
from .indexfile import IndexFile

DEFAULT_INDEX = "https://pypi.org/simple"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_ACCEPT = f"{JSON_TYPE}, text/html;q=0.1"
_ANCHOR = re.compile(r"<a\s[^>]*?href\s*=\s*[\"']([^\"']+)[\"'][^>]*>\s*([^<]+?)\s*</a>", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def normalise_name(name: str) -> str:
    """PEP 503: lower case, runs of `-`, `_`, `.` become one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


# -- dates ---------------------------------------------------------------------------------------

def parse_as_of(text: str, where: str = "resolve-as-of") -> _dt.datetime:
    """`2026-03-05` (through the end of that day, UTC) or an RFC 3339 time with a zone
    (`2026-03-05T12:00:00Z`, `…+08:00`). A zone is required: the machine's own must not matter."""
    if not isinstance(text, str):
        raise FetchError("must be a string: a date (2026-03-05) or an RFC 3339 time with a zone", where=where)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            day = _dt.date.fromisoformat(text)
        except ValueError:
            raise FetchError(f"{text!r} is not a date", where=where) from None
        return _dt.datetime.combine(day, _dt.time.max, tzinfo=_dt.timezone.utc)
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", text):
        raise FetchError(f"{text!r} is neither a date (2026-03-05) nor an RFC 3339 time with a zone "
                         "(2026-03-05T12:00:00Z)", where=where)
    try:
        return _dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise FetchError(f"{text!r} is not a valid time", where=where) from None


def _upload_time(text: str) -> Optional[_dt.datetime]:
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return t if t.tzinfo is not None else None


def uploaded_by(f: IndexFile, cutoff: _dt.datetime) -> bool:
    """Whether `f` was on the index at `cutoff`: its PEP 700 upload time is not later. A file
    the index gives no (or no readable) upload time for cannot be dated and is not a candidate."""
    t = _upload_time(f.upload_time) if f.upload_time else None
    return t is not None and t <= cutoff


def files_as_of(files: list[IndexFile], cutoff: Optional[_dt.datetime]) -> list[IndexFile]:
    return list(files) if cutoff is None else [f for f in files if uploaded_by(f, cutoff)]


# -- the configured indexes ---------------------------------------------------------------------

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


def cert_file() -> Optional[str]:
    """The CA bundle pip is configured with, if any."""
    cert = os.environ.get("PIP_CERT") or _pip_config().get("global.cert")
    return cert if cert and os.path.isfile(cert) else None


def http_client():
    import ssl

    import httpx

    cert = cert_file()
    verify = ssl.create_default_context(cafile=cert) if cert else True
    return httpx.Client(timeout=60.0, verify=verify, trust_env=True)


def _metadata(f: dict) -> Optional[str]:
    meta = f.get("core-metadata", f.get("dist-info-metadata"))
    if isinstance(meta, dict):
        sha = meta.get("sha256")
        return sha.lower() if isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha) else ""
    return "" if meta is True else None


def _acceptable(f: IndexFile, page_url: str) -> bool:
    """An entry a planner may download: its file name a plain name (it becomes a path below a
    temporary folder: `x-1.0-py3-none-any./../../victim/x.whl` parses as a wheel name), and its
    URL http(s), or a file: URL only on an index that is itself a folder (a web page naming a
    local file would make `lock` read this machine's files)."""
    from ..errors import UnsafeTree
    from ..safetree import plain_name

    try:
        plain_name(f.filename, where=page_url)
    except UnsafeTree:
        return False
    scheme = urllib.parse.urlsplit(f.url).scheme.lower()
    return scheme in ("http", "https") or (scheme == "file" and page_url.startswith("file:"))


def parse_page(body: bytes, content_type: str, page_url: str) -> list[IndexFile]:
    """The files of one project page; malformed entries are skipped, and so are entries whose
    name is not a plain file name or whose URL leaves the web for this machine (`_acceptable`)."""
    return [f for f in _parse_page(body, content_type, page_url) if _acceptable(f, page_url)]


def _parse_page(body: bytes, content_type: str, page_url: str) -> list[IndexFile]:
    if "json" in content_type:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise FetchError("index page is not valid JSON", where=page_url) from None
        files = data.get("files") if isinstance(data, dict) else None
        out = []
        for f in files if isinstance(files, list) else []:
            if not isinstance(f, dict) or not isinstance(f.get("filename"), str) or not isinstance(f.get("url"), str):
                continue
            hashes = f.get("hashes") if isinstance(f.get("hashes"), dict) else {}
            sha = hashes.get("sha256")
            rp = f.get("requires-python")
            yanked = f.get("yanked", False)
            out.append(IndexFile(
                f["filename"], urllib.parse.urljoin(page_url, f["url"]),
                sha.lower() if isinstance(sha, str) else None,
                f.get("upload-time") if isinstance(f.get("upload-time"), str) else None,
                rp if isinstance(rp, str) else None,
                yanked if isinstance(yanked, (bool, str)) else bool(yanked),
                _metadata(f)))
        return out
    files = []
    for href, text in _ANCHOR.findall(body.decode("utf-8", "replace")):
        url = urllib.parse.urljoin(page_url, html.unescape(href))
        base, _, fragment = url.partition("#")
        algo, _, digest = fragment.partition("=")
        files.append(IndexFile(html.unescape(text).strip(), base, digest.lower() if algo == "sha256" else None))
    return files


def project_files(index: str, name: str, client) -> Optional[list[IndexFile]]:
    """The files an index lists for a project, or None if the index does not know it."""
    page = index.rstrip("/") + "/" + normalise_name(name) + "/"
    if page.startswith("file:"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(page).path))
        listing = folder / "index.html"
        if listing.is_file():
            return parse_page(listing.read_bytes(), "text/html", listing.as_uri())
        if folder.is_dir():
            return [IndexFile(p.name, p.as_uri(), None) for p in sorted(folder.iterdir()) if p.is_file()]
        return None
    import httpx

    try:
        r = client.get(page, headers={"Accept": _ACCEPT}, follow_redirects=True)
    except httpx.HTTPError as e:
        from ..netdiag import reason

        raise FetchError(f"index {index} unreachable: {reason(e)}", where=f"{name}") from None
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise FetchError(f"index {index} answered {r.status_code} for {page}", where=name)
    return parse_page(r.content, r.headers.get("content-type", ""), str(r.url))


# -- a dated view for pip ----------------------------------------------------------------------

# Project pages fetched in this process, by (index, project): one resolution asks for the same
# pages again and again (pip's backtracking, a repeated resolution, the prefetcher ahead of pip),
# and the dated view filters them anyway. A process is short-lived (one lock, one resolution).
# Each page is fetched once: a second asker waits for the first one's answer.
_PAGES: dict[tuple[str, str], "Future[Optional[list[IndexFile]]]"] = {}
_PAGES_LOCK = threading.Lock()


def _cached_page(index: str, name: str, client) -> Optional[list[IndexFile]]:
    from concurrent.futures import Future

    key = (index, normalise_name(name))
    with _PAGES_LOCK:
        fut = _PAGES.get(key)
        mine = fut is None
        if mine:
            fut = _PAGES[key] = Future()
    if mine:
        try:
            fut.set_result(project_files(index, name, client))
        except BaseException as exc:
            with _PAGES_LOCK:
                _PAGES.pop(key, None)  # an error is not kept: the next asker tries again
            fut.set_exception(exc)
    return fut.result()


def page_json(name: str, files: list[IndexFile]) -> bytes:
    """A PEP 691 project page (with PEP 700 upload times) of `files`; URLs stay absolute."""
    out = []
    for f in files:
        entry: dict[str, object] = {"filename": f.filename, "url": f.url,
                                    "hashes": {"sha256": f.sha256} if f.sha256 else {}}
        if f.requires_python is not None:
            entry["requires-python"] = f.requires_python
        if f.yanked:
            entry["yanked"] = f.yanked
        if f.upload_time is not None:
            entry["upload-time"] = f.upload_time
        if f.metadata_sha256 is not None:
            # PEP 714's name with PEP 691's value (a dict of hashes, or true) for pips that read
            # it; the old name in the string form of the HTML attribute, because pip 23.0
            # (Debian 12's venv pip) reads only the old name and passes its value to a string
            # parser: a JSON true or dict there crashes its resolver.
            entry["core-metadata"] = {"sha256": f.metadata_sha256} if f.metadata_sha256 else True
            entry["dist-info-metadata"] = f"sha256={f.metadata_sha256}" if f.metadata_sha256 else "true"
        out.append(entry)
    doc = {"meta": {"api-version": "1.1"}, "name": normalise_name(name), "files": out, "versions": []}
    return json.dumps(doc, sort_keys=True).encode()


_FILE_PATH = re.compile(r"/files/([0-9a-f]{64})/([A-Za-z0-9][A-Za-z0-9._+!-]*\.whl)(\.metadata)?")


class DatedIndex:
    """A loopback PEP 691 index serving the configured indexes' files uploaded by `cutoff`.

    Used as a context manager; `url` is the index URL to give pip (`--index-url`). A project is
    merged over the upstream indexes in order (the first index listing a file name wins), as
    pip merges candidates from an index and its extra indexes.

    With a `metadata` cache, every remote wheel the index gives a sha256 for is served with PEP 658
    metadata from here (`planner.fetch.metadata`: read once, kept by sha256), so pip reads a few KB
    where it would download the wheel; the wheel itself is a redirect to the index's URL. `watcher`
    is told of every page and METADATA served (`page(name, files)`, `metadata(file, bytes)`), so it
    can fetch what pip will ask for next while pip is busy (`planner.fetch.prefetch`). `keep`, a
    predicate on a file, leaves out of the pages what pip would reject anyway (wheels for other
    platforms and Pythons): pip spends seconds of CPU per page on projects with thousands of files.
    """

    def __init__(self, cutoff: _dt.datetime, indexes: Optional[list[str]] = None, *,
                 metadata=None, watcher=None, keep=None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.cutoff = cutoff
        self.indexes = list(indexes) if indexes is not None else index_urls()
        self.errors: list[str] = []
        self.metadata_cache = metadata
        self.watcher = watcher
        self.keep = keep
        self._client = http_client()
        self._lock = threading.Lock()
        self._by_sha: dict[str, IndexFile] = {}
        self._meta: dict[str, "Future[bytes]"] = {}
        self.counts = {"pages": 0, "metadata": 0, "metadata_fetched": 0, "redirects": 0}
        view = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                status, body, ctype, location = view._answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a client that gave up (pip retries); nothing to report

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/simple/"

    @property
    def client(self):
        """The view's HTTP client (thread-safe: the prefetcher shares it)."""
        return self._client

    def files(self, name: str) -> Optional[list[IndexFile]]:
        """The project's files on the upstream indexes uploaded by the cutoff (None: unknown)."""
        merged: dict[str, IndexFile] = {}
        known = False
        for index in self.indexes:
            listed = _cached_page(index, name, self._client)
            if listed is None:
                continue
            known = True
            for f in files_as_of(listed, self.cutoff):
                merged.setdefault(f.filename, f)
        return list(merged.values()) if known else None

    def _servable(self, f: IndexFile) -> bool:
        return (self.metadata_cache is not None and f.filename.endswith(".whl") and bool(f.sha256)
                and _SHA256_HEX.fullmatch(f.sha256 or "") is not None and f.url.startswith(("http://", "https://")))

    def served(self, files: list[IndexFile]) -> list[IndexFile]:
        """`files` as pip sees them here: remote wheels pointed at this server, with metadata."""
        if self.metadata_cache is None:
            return files
        root = self.url[: -len("simple/")]
        out = []
        with self._lock:
            for f in files:
                if self._servable(f):
                    self._by_sha.setdefault(f.sha256, f)
                    f = f._replace(url=f"{root}files/{f.sha256}/{f.filename}", metadata_sha256="")
                out.append(f)
        return out

    def metadata(self, f: IndexFile) -> bytes:
        """The METADATA of wheel `f`, fetched once per file (a second asker waits for the first)."""
        from concurrent.futures import Future

        from .metadata import wheel_metadata

        with self._lock:
            fut = self._meta.get(f.sha256)
            mine = fut is None
            if mine:
                fut = self._meta[f.sha256] = Future()
        if mine:
            try:
                hit = self.metadata_cache.get(f.sha256)
                if hit is None:
                    self.counts["metadata_fetched"] += 1
                    hit = wheel_metadata(f, self._client, self.metadata_cache)
                fut.set_result(hit)
            except BaseException as exc:
                with self._lock:
                    self._meta.pop(f.sha256, None)
                fut.set_exception(exc)
            else:
                if self.watcher is not None:
                    self.watcher.metadata(f, hit)
        return fut.result()

    def _answer(self, path: str) -> tuple[int, bytes, str, Optional[str]]:
        target = urllib.parse.urlsplit(path).path
        m = _FILE_PATH.fullmatch(target)
        if m:
            with self._lock:
                f = self._by_sha.get(m.group(1))
            if f is None or f.filename != m.group(2):
                return 404, b"not found\n", "text/plain", None
            if not m.group(3):
                self.counts["redirects"] += 1
                return 302, b"", "text/plain", f.url
            try:
                self.counts["metadata"] += 1
                return 200, self.metadata(f), "application/octet-stream", None
            except FetchError as exc:
                self.errors.append(exc.line() if hasattr(exc, "line") else str(exc))
                return 502, str(exc).encode() + b"\n", "text/plain", None
        parts = target.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "simple" or not _NAME.fullmatch(parts[1]):
            return 404, b"not found\n", "text/plain", None
        try:
            files = self.files(parts[1])
        except FetchError as exc:
            self.errors.append(exc.line() if hasattr(exc, "line") else str(exc))
            return 502, str(exc).encode() + b"\n", "text/plain", None
        if files is None:
            return 404, b"not found\n", "text/plain", None
        self.counts["pages"] += 1
        if self.watcher is not None:
            self.watcher.page(parts[1], files)
        if self.keep is not None:
            files = [f for f in files if self.keep(f)]
        return 200, page_json(parts[1], self.served(files)), JSON_TYPE, None

    def __enter__(self) -> "DatedIndex":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.watcher is not None:
            self.watcher.close()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._client.close()


def pip_index_args(index_url: str) -> list[str]:
    """pip options that make `index_url` its only source: `--isolated` drops the machine's
    extra indexes and find-links (files that cannot be dated), the CA bundle is kept."""
    # --isolated also drops PIP_DEFAULT_TIMEOUT: pip's own 15 s is short for a busy upstream.
    args = ["--isolated", "--disable-pip-version-check", "--timeout", "120", "--index-url", index_url]
    cert = cert_file()
    if cert:
        args += ["--cert", cert]
    return args
