"""A real package index on a loopback HTTP server: PEP 691 JSON pages with PEP 700 upload
times, and small but valid wheels and sdists, for as-of and resolution tests.

    with LocalIndex() as index:
        index.wheel("datedpkg", "1.0", uploaded="2026-03-01T10:00:00Z")
        index.wheel("datedpkg", "1.1", uploaded="2026-03-06T10:00:00Z")
        ... PIP_INDEX_URL=index.url ...
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
import zipfile

from .http_server import LoopbackServer

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_bytes(name: str, version: str, tag: str = "py3-none-any", requires: tuple[str, ...] = (),
                files: dict[str, bytes] | None = None) -> bytes:
    """A wheel of `name` with `files` (default: a package whose __init__ names the version)."""
    dist = re.sub(r"[-.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    files = {
        **(files if files is not None else {f"{dist}/__init__.py": f"VERSION = {version!r}\nTAG = {tag!r}\n".encode()}),
        f"{info}/METADATA": meta.encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(),
    }
    record = []
    for n, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{n},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, data in files.items():
            zf.writestr(zipfile.ZipInfo(n, (1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def sdist_bytes(name: str, version: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        info = tarfile.TarInfo(f"{name}-{version}/PKG-INFO")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class LocalIndex:
    """Projects and files served as a PEP 691 index at `url` (…/simple/)."""

    def __init__(self) -> None:
        self.server = LoopbackServer()
        self.projects: dict[str, list[dict]] = {}

    @property
    def url(self) -> str:
        return self.server.url("/simple/")

    def add_file(self, name: str, filename: str, body: bytes, uploaded: str | None) -> str:
        sha = hashlib.sha256(body).hexdigest()
        self.server.add(f"/files/{filename}", body)
        entry: dict[str, object] = {"filename": filename, "url": f"/files/{filename}", "hashes": {"sha256": sha}}
        if uploaded is not None:
            entry["upload-time"] = uploaded
        self.projects.setdefault(_norm(name), []).append(entry)
        self._publish(name)
        return sha

    def wheel(self, name: str, version: str, *, uploaded: str | None, tag: str = "py3-none-any",
              requires: tuple[str, ...] = ()) -> str:
        filename = f"{re.sub(r'[-.]+', '_', name)}-{version}-{tag}.whl"
        self.add_file(name, filename, wheel_bytes(name, version, tag, requires), uploaded)
        return filename

    def sdist(self, name: str, version: str, *, uploaded: str | None) -> str:
        filename = f"{name}-{version}.tar.gz"
        self.add_file(name, filename, sdist_bytes(name, version), uploaded)
        return filename

    def _publish(self, name: str) -> None:
        doc = {"meta": {"api-version": "1.1"}, "name": _norm(name), "files": self.projects[_norm(name)]}
        self.server.add(f"/simple/{_norm(name)}/", json.dumps(doc).encode(), content_type=JSON_TYPE)

    def __enter__(self) -> "LocalIndex":
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)
