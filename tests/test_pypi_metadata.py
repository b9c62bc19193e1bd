"""A wheel's METADATA read from a real loopback index without downloading the wheel: PEP 658
files, HTTP range requests, the whole file as a last resort, kept by the wheel's sha256; and the
dated index view serving it to pip, so that resolving a closure downloads no wheel."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from planner.errors import FetchError
from planner.fetch.metadata import MetadataCache, wheel_metadata
from planner.fetch.simple_index import DatedIndex, http_client, parse_as_of, project_files
from planner.pyclosure import BaseView, resolve_layer
from tests.support.http_server import Fault
from tests.support.pyindex import LocalIndex, wheel_bytes

OLD = "2026-01-10T00:00:00Z"
# A wheel large enough that its zip directory is not in the first range request's 64 KiB.
PADDING = 300_000


def _padded_wheel(name: str, version: str, requires: tuple[str, ...] = ()) -> bytes:
    small = wheel_bytes(name, version, requires=requires)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(small)) as src, zipfile.ZipFile(out, "w") as dst:
        # Incompressible data before the dist-info members, as a real wheel's code is.
        dst.writestr("pad/blob.bin", hashlib.shake_256(b"x").digest(PADDING), zipfile.ZIP_STORED)
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    return out.getvalue()


def _file(index: LocalIndex, name: str):
    files = project_files(index.url, name, http_client())
    assert files, name
    return files[-1]


def _requests(index: LocalIndex, path: str) -> list[dict[str, str]]:
    return index.server._httpd.routes[path].requests


@pytest.fixture
def index():
    with LocalIndex() as idx:
        yield idx


def test_metadata_by_range_requests_not_the_whole_wheel(index: LocalIndex, tmp_path: Path) -> None:
    body = _padded_wheel("big", "1.0", requires=("dep>=2",))
    index.add_file("big", "big-1.0-py3-none-any.whl", body, OLD)
    index.server._httpd.routes["/files/big-1.0-py3-none-any.whl"].ranges = True
    f = _file(index, "big")
    cache = MetadataCache(tmp_path / "cache")
    data = wheel_metadata(f, http_client(), cache)
    assert data == b"Metadata-Version: 2.1\nName: big\nVersion: 1.0\nRequires-Dist: dep>=2\n"
    reqs = _requests(index, "/files/big-1.0-py3-none-any.whl")
    assert reqs and all("range" in r for r in reqs)  # never the whole file
    # Kept by the wheel's sha256: asked again, the index is not asked.
    assert cache.get(f.sha256) == data
    assert wheel_metadata(f, http_client(), cache) == data
    assert len(_requests(index, "/files/big-1.0-py3-none-any.whl")) == len(reqs)


def test_pep658_metadata_is_checked_against_the_index(index: LocalIndex, tmp_path: Path) -> None:
    index.wheel("small", "1.0", uploaded=OLD)
    meta = b"Metadata-Version: 2.1\nName: small\nVersion: 1.0\n"
    index.server.add("/files/small-1.0-py3-none-any.whl.metadata", meta)
    f = _file(index, "small")
    assert wheel_metadata(f, http_client()) == meta
    assert _requests(index, "/files/small-1.0-py3-none-any.whl") == []
    wrong = f._replace(metadata_sha256="0" * 64)
    with pytest.raises(FetchError, match=r"small-1.0-py3-none-any.whl.metadata does not match the index's sha256"):
        wheel_metadata(wrong, http_client())


def test_without_ranges_the_whole_file_is_checked_against_its_sha256(index: LocalIndex) -> None:
    index.wheel("plain", "1.0", uploaded=OLD)
    f = _file(index, "plain")
    assert b"Name: plain" in wheel_metadata(f, http_client())
    index.server._httpd.routes["/files/plain-1.0-py3-none-any.whl"].fault = Fault.WRONG
    with pytest.raises(FetchError) as e:
        wheel_metadata(f, http_client())
    assert "bytes do not match the index's sha256" in e.value.line() and "\n" not in e.value.line()


def test_a_wheel_with_two_metadata_files_is_refused(index: LocalIndex) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("a-1.0.dist-info/METADATA", "Name: a\nVersion: 1.0\n")
        zf.writestr("b-1.0.dist-info/METADATA", "Name: b\nVersion: 1.0\n")
    index.add_file("a", "a-1.0-py3-none-any.whl", out.getvalue(), OLD)
    with pytest.raises(FetchError) as e:
        wheel_metadata(_file(index, "a"), http_client())
    assert e.value.line() == "a-1.0-py3-none-any.whl: 2 .dist-info/METADATA members, expected one"


def test_the_cache_names_entries_by_sha256_only(tmp_path: Path) -> None:
    cache = MetadataCache(tmp_path)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63):
        with pytest.raises(FetchError, match="metadata cache: not a sha256"):
            cache.get(bad)
    cache.put("ab" * 32, b"Name: x\n")
    assert (tmp_path / "ab" / ("ab" * 32 + ".metadata")).read_bytes() == b"Name: x\n"
    assert not [p for p in (tmp_path / "ab").iterdir() if p.name.startswith(".tmp-")]


def test_the_dated_view_serves_metadata_and_redirects_wheels(index: LocalIndex, tmp_path: Path) -> None:
    import httpx

    index.wheel("app", "1.0", uploaded=OLD, requires=("dep",))
    with DatedIndex(parse_as_of("2026-03-05"), [index.url], metadata=MetadataCache(tmp_path)) as view:
        with httpx.Client() as client:
            page = client.get(view.url + "app/").json()
            entry = page["files"][0]
            assert entry["core-metadata"] is True and entry["url"].startswith(view.url[: -len("simple/")] + "files/")
            assert b"Requires-Dist: dep" in client.get(entry["url"] + ".metadata").content
            wheel = client.get(entry["url"])
            assert wheel.status_code == 302 and wheel.headers["location"] == index.server.url(
                "/files/app-1.0-py3-none-any.whl")
            # Only files the view listed are served: no path into the cache or elsewhere.
            assert client.get(view.url[: -len("simple/")] + "files/" + "0" * 64 + "/app-1.0-py3-none-any.whl"
                              ".metadata").status_code == 404


def test_resolving_a_closure_downloads_no_wheel_and_reads_metadata_once(index: LocalIndex, tmp_path: Path,
                                                                       monkeypatch) -> None:
    index.wheel("app", "1.0", uploaded=OLD, requires=("dep>=1", "other"))
    index.wheel("dep", "1.0", uploaded=OLD)
    index.wheel("dep", "2.0", uploaded=OLD)
    index.wheel("other", "1.0", uploaded=OLD)
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", " ")
    monkeypatch.setenv("PIP_FIND_LINKS", " ")
    wheels = [p for p in index.server._httpd.routes if p.endswith(".whl")]

    def resolve() -> set[tuple[str, str]]:
        got = resolve_layer(["app"], BaseView((), "none"), platform="linux/amd64", python="3.10",
                            as_of=parse_as_of("2026-03-05"), metadata_cache=tmp_path / "cache")
        assert all(r.sha256 and r.filename.endswith(".whl") for r in got)
        return {(r.name, r.version) for r in got}

    assert resolve() == {("app", "1.0"), ("dep", "2.0"), ("other", "1.0")}
    # Each file was read once, for its METADATA (this index has no PEP 658 files and no ranges):
    # pip itself fetched nothing after resolving.
    first = {p: len(index.server._httpd.routes[p].requests) for p in wheels}
    assert all(n <= 1 for n in first.values()) and first["/files/app-1.0-py3-none-any.whl"] == 1
    assert resolve() == {("app", "1.0"), ("dep", "2.0"), ("other", "1.0")}
    assert {p: len(index.server._httpd.routes[p].requests) for p in wheels} == first
