"""A package index is untrusted: what its pages name (a file name, a URL) never becomes a path
outside the store or a read of this machine's files. A real PEP 691 index on a loopback HTTP
server (tests/support/pyindex.py), `planner lock` and `realise` as a user runs them.

Found by an audit: a dated wheel's file name `x-1.0-py3-none-any./../../victim/x.whl` (which
parses as a wheel name) was downloaded outside the store and its folder then deleted, exit 0;
an sdist's URL `file:///…/backup.tar.gz` was read from this machine and pinned, exit 0."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import io
from pathlib import Path

import pytest

from planner.fetch.simple_index import parse_page
from tests.reliability.support import assert_one_failure
from tests.support.project import Project
from tests.support.pyindex import JSON_TYPE, LocalIndex, wheel_bytes


def _page(files: list[dict]) -> bytes:
    return json.dumps({"meta": {"api-version": "1.1"}, "name": "evilpkg", "files": files}).encode()


@pytest.fixture
def index(monkeypatch):
    with LocalIndex() as idx:
        monkeypatch.setenv("PIP_INDEX_URL", idx.url)
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", " ")
        monkeypatch.setenv("PIP_FIND_LINKS", " ")
        yield idx


def _project(tmp_path: Path, input_toml: str) -> Project:
    proj = Project.empty(tmp_path, target="pkg")
    set_toml = proj.folder / "set.toml"
    set_toml.write_text(set_toml.read_text() + 'resolve-as-of = "2026-03-05"\n')
    proj.write_raw("pkg", 'name = "pkg"\nversion = "1.0"\n\n[inputs.evil]\nkind = "pypi"\nname = "evilpkg"\n'
                          f'version = "1.0"\n{input_toml}\n[build]\nbuilder = "shell"\nscript = "true"\n')
    return proj


def test_an_index_file_name_that_is_a_path_is_never_written_or_removed(index: LocalIndex, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep\n")
    body = wheel_bytes("evilpkg", "1.0")
    index.server.add("/files/good.whl", body)
    name = "evilpkg-1.0-py3-none-any./" + "../" * 4 + "victim/pwned.whl"
    index.server.add("/simple/evilpkg/", _page([{
        "filename": name, "url": "/files/good.whl", "hashes": {"sha256": hashlib.sha256(body).hexdigest()},
        "upload-time": "2026-03-01T00:00:00Z"}]), content_type=JSON_TYPE)
    proj = _project(tmp_path, 'dist = "wheel"\npython = "3.10"\nper-platform = true\n')
    run = proj.cli("lock", env={"PLANNER_CACHE": str(tmp_path / "cache")})
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    assert (victim / "precious.txt").read_text() == "keep\n" and sorted(os.listdir(victim)) == ["precious.txt"]
    assert "pwned" not in proj.lockfile.read_text()
    assert not list(proj.store.glob("*pwned*")) and not list(proj.store.glob("*evil*"))
    assert "pkg/evil" in run.stdout + run.stderr


def test_an_index_url_to_a_local_file_is_never_read(index: LocalIndex, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        info = tarfile.TarInfo("evilpkg-1.0/id_rsa")
        payload = b"SECRET-KEY=hunter2\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    (secret / "backup.tar.gz").write_bytes(data.getvalue())
    index.server.add("/simple/evilpkg/", _page([{
        "filename": "evilpkg-1.0.tar.gz", "url": (secret / "backup.tar.gz").as_uri(), "hashes": {},
        "upload-time": "2026-03-01T00:00:00Z"}]), content_type=JSON_TYPE)
    proj = _project(tmp_path, 'dist = "sdist"\n')
    proj.cli("lock", env={"PLANNER_CACHE": str(tmp_path / "cache")})
    assert "sha256" not in proj.lockfile.read_text().split("[inputs.\"pkg/evil\"]", 1)[-1]
    for entry in proj.store.glob("*"):
        if entry.is_dir():
            assert not list(entry.rglob("id_rsa")), entry
    line = assert_one_failure(proj.cli("realise"), names=["pkg/evil"])
    assert "hunter2" not in line


@pytest.mark.parametrize("filename, url, page, kept", [
    ("x-1.0.tar.gz", "https://files.example/x-1.0.tar.gz", "https://pypi.example/simple/x/", True),
    ("x-1.0.tar.gz", "file:///etc/passwd", "https://pypi.example/simple/x/", False),
    ("x-1.0.tar.gz", "ftp://files.example/x-1.0.tar.gz", "https://pypi.example/simple/x/", False),
    ("x-1.0.tar.gz", "file:///srv/mirror/x-1.0.tar.gz", "file:///srv/mirror/simple/x/", True),
    ("x-1.0-py3-none-any./../../v/x.whl", "https://files.example/x.whl", "https://pypi.example/simple/x/", False),
    ("x-1.0\x1b[31m.tar.gz", "https://files.example/x.tar.gz", "https://pypi.example/simple/x/", False),
    ("..", "https://files.example/x.tar.gz", "https://pypi.example/simple/x/", False),
])
def test_an_index_page_lists_only_plain_names_on_the_web(filename: str, url: str, page: str, kept: bool) -> None:
    body = _page([{"filename": filename, "url": url, "hashes": {}}])
    assert [f.filename for f in parse_page(body, JSON_TYPE, page)] == ([filename] if kept else [])
    html = f'<a href="{url}">{filename}</a>'.encode()
    assert len(parse_page(html, "text/html", page)) == (1 if kept else 0)
