"""url.download against a real loopback HTTP server that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from planner.errors import FetchError, HashMismatch
from planner.fetch.url import Downloaded, download
from planner.hashing import file_sha256_and_blake3
from tests.support.http_server import Fault, LoopbackServer

BODY = os.urandom(300_000)
SHA = hashlib.sha256(BODY).hexdigest()
FAST = dict(backoff=0.01, timeout=5.0)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def route_path(request: pytest.FixtureRequest) -> str:
    # One path per test, so routes (and their request logs) never leak between tests.
    return "/" + request.node.name.replace("[", "_").replace("]", "") + "/src.tar.gz"


def assert_clean(dest: Path, *, present: bool) -> None:
    assert dest.exists() is present
    assert sorted(p.name for p in dest.parent.iterdir()) == ([dest.name] if present else [])


def assert_one_line_about(e: BaseException, url: str) -> None:
    text = str(e)
    assert "\n" not in text
    assert text.startswith(f"{url}: "), text


def test_ok_streams_hashes_and_renames(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    route = server.add(route_path, BODY)
    dest = tmp_path / "dl" / "src.tar.gz"
    got = download(server.url(route_path), dest, sha256=SHA, **FAST)
    assert got == Downloaded(dest, len(BODY), SHA, file_sha256_and_blake3(dest)[1])
    assert dest.read_bytes() == BODY
    assert_clean(dest, present=True)
    assert len(route.requests) == 1
    assert route.requests[0]["accept-encoding"] == "identity"


def test_sha256_prefix_and_case_are_accepted(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    server.add(route_path, BODY)
    got = download(server.url(route_path), tmp_path / "f", sha256="sha256:" + SHA.upper(), **FAST)
    assert got.sha256 == SHA


def test_without_pin_any_content_is_kept(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    server.add(route_path, b"")
    got = download(server.url(route_path), tmp_path / "empty", **FAST)
    assert got.size == 0 and got.sha256 == hashlib.sha256(b"").hexdigest()
    assert (tmp_path / "empty").read_bytes() == b""


def test_500s_are_retried(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    route = server.add(route_path, BODY, fault=Fault.STATUS_500, times=2)
    download(server.url(route_path), tmp_path / "f", sha256=SHA, retries=4, **FAST)
    assert len(route.requests) == 3
    assert (tmp_path / "f").read_bytes() == BODY


def test_persistent_500_gives_up_with_a_clear_error(server: LoopbackServer, route_path: str,
                                                    tmp_path: Path) -> None:
    route = server.add(route_path, BODY, fault=Fault.STATUS_500, times=100)
    url = server.url(route_path)
    with pytest.raises(FetchError) as e:
        download(url, tmp_path / "f", retries=2, **FAST)
    assert len(route.requests) == 3
    assert_one_line_about(e.value, url)
    assert "failed after 3 attempts: HTTP 500 Internal Server Error" in str(e.value)
    assert_clean(tmp_path / "f", present=False)


def test_backoff_is_exponential(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    server.add(route_path, BODY, fault=Fault.STATUS_500, times=100)
    start = time.monotonic()
    with pytest.raises(FetchError):
        download(server.url(route_path), tmp_path / "f", retries=3, backoff=0.05, timeout=5.0)
    # A lower bound the backoff sleeps themselves set (a slow machine can only add to it).
    waited = time.monotonic() - start
    assert waited >= 0.05 + 0.1 + 0.2, waited


def test_connection_reset_is_retried(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    route = server.add(route_path, BODY, fault=Fault.RESET, times=1)
    download(server.url(route_path), tmp_path / "f", sha256=SHA, **FAST)
    assert len(route.requests) == 2
    assert (tmp_path / "f").read_bytes() == BODY


def test_truncated_body_is_retried_from_scratch(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    route = server.add(route_path, BODY, fault=Fault.TRUNCATE, times=1, ranges=False)
    download(server.url(route_path), tmp_path / "f", sha256=SHA, **FAST)
    assert len(route.requests) == 2
    assert "range" not in route.requests[1]  # the server never offered ranges
    assert (tmp_path / "f").read_bytes() == BODY
    assert_clean(tmp_path / "f", present=True)


def test_truncated_body_resumes_with_range(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    route = server.add(route_path, BODY, fault=Fault.TRUNCATE, times=1, ranges=True)
    got = download(server.url(route_path), tmp_path / "f", sha256=SHA, **FAST)
    assert len(route.requests) == 2
    assert route.requests[1]["range"] == f"bytes={len(BODY) // 2}-"
    assert route.requests[1]["if-range"] == route.etag
    assert (tmp_path / "f").read_bytes() == BODY
    assert got.sha256 == SHA and got.size == len(BODY)  # the hash covers both halves


def test_persistent_truncation_says_so(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    server.add(route_path, BODY, fault=Fault.TRUNCATE, times=100)
    url = server.url(route_path)
    with pytest.raises(FetchError) as e:
        download(url, tmp_path / "f", retries=1, **FAST)
    assert_one_line_about(e.value, url)
    assert "RemoteProtocolError" in str(e.value) or "truncated body" in str(e.value)
    assert_clean(tmp_path / "f", present=False)


def test_wrong_content_is_a_hash_mismatch_and_leaves_nothing(server: LoopbackServer, route_path: str,
                                                             tmp_path: Path) -> None:
    route = server.add(route_path, BODY, fault=Fault.WRONG)
    url = server.url(route_path)
    wrong = hashlib.sha256(bytes(b ^ 0xFF for b in BODY)).hexdigest()
    with pytest.raises(HashMismatch) as e:
        download(url, tmp_path / "f", sha256=SHA, **FAST)
    assert (e.value.expected, e.value.actual) == (SHA, wrong)
    assert str(e.value) == f"{url}: hash mismatch: expected {SHA}, got {wrong}"
    assert len(route.requests) == 1  # a mismatch is not retried
    assert_clean(tmp_path / "f", present=False)


def test_mismatch_does_not_clobber_an_existing_file(server: LoopbackServer, route_path: str,
                                                    tmp_path: Path) -> None:
    server.add(route_path, BODY, fault=Fault.WRONG)
    dest = tmp_path / "f"
    dest.write_bytes(b"previous")
    with pytest.raises(HashMismatch):
        download(server.url(route_path), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == b"previous"
    assert_clean(dest, present=True)


def test_404_fails_at_once(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    route = server.add(route_path, BODY, fault=Fault.NOT_FOUND)
    url = server.url(route_path)
    with pytest.raises(FetchError) as e:
        download(url, tmp_path / "f", retries=4, backoff=5.0)  # a retry would take seconds
    assert str(e.value) == f"{url}: HTTP 404 Not Found"
    assert len(route.requests) == 1
    assert_clean(tmp_path / "f", present=False)


def test_slow_body_times_out_then_succeeds(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    route = server.add(route_path, BODY, fault=Fault.SLOW, times=1, delay=2.0)
    download(server.url(route_path), tmp_path / "f", sha256=SHA, timeout=0.3, backoff=0.01)
    assert len(route.requests) == 2
    assert (tmp_path / "f").read_bytes() == BODY


def test_slow_body_past_the_timeout_every_time(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    server.add(route_path, BODY, fault=Fault.SLOW, times=100, delay=2.0)
    url = server.url(route_path)
    with pytest.raises(FetchError) as e:
        download(url, tmp_path / "f", timeout=0.3, retries=1, backoff=0.01)
    assert_one_line_about(e.value, url)
    assert "ReadTimeout" in str(e.value)  # gave up on the read timeout, did not wait for the body
    assert_clean(tmp_path / "f", present=False)


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        url = f"http://127.0.0.1:{port}/x"
        with pytest.raises(FetchError) as e:
            download(url, tmp_path / "f", retries=1, **FAST)
    assert_one_line_about(e.value, url)
    assert "ConnectError" in str(e.value)


def test_caller_client_is_used_and_left_open(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    route = server.add(route_path, BODY)
    with httpx.Client(headers={"X-Test": "yes"}) as client:
        download(server.url(route_path), tmp_path / "f", sha256=SHA, client=client, **FAST)
        assert not client.is_closed
    assert route.requests[0]["x-test"] == "yes"


def test_password_is_not_shown(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as e:
        download("ftp://user:hunter2@example.invalid/x", tmp_path / "f")
    assert "hunter2" not in str(e.value)
    assert "unsupported URL scheme 'ftp'" in str(e.value)


def test_bad_pin_is_rejected_before_fetching(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="not 64 hex digits"):
        download("http://127.0.0.1:9/x", tmp_path / "f", sha256="abc")


def test_file_url_copies_and_hashes(tmp_path: Path) -> None:
    src = tmp_path / "mirror" / "a b.tar.gz"
    src.parent.mkdir()
    src.write_bytes(BODY)
    dest = tmp_path / "out" / "a.tar.gz"
    got = download(src.as_uri(), dest, sha256=SHA)
    assert got == Downloaded(dest, len(BODY), SHA, file_sha256_and_blake3(src)[1])
    assert_clean(dest, present=True)


def test_file_url_mismatch_and_missing(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"abc")
    out = tmp_path / "out"
    with pytest.raises(HashMismatch):
        download(src.as_uri(), out / "f.bin", sha256=SHA)
    assert_clean(out / "f.bin", present=False)
    missing = (tmp_path / "nope.bin").as_uri()
    with pytest.raises(FetchError) as e:
        download(missing, out / "nope.bin")
    assert str(e.value) == f"{missing}: no such file {tmp_path / 'nope.bin'}"


def test_a_body_past_the_pinned_size_is_cut_off(server: LoopbackServer, route_path: str, tmp_path: Path) -> None:
    """A server (or a file:// mirror) that sends more than the pinned size: stopped there, not
    streamed into the store until the disk is full; nothing is left behind."""
    server.add(route_path, BODY)
    dest = tmp_path / "dl" / "src.tar.gz"
    url = server.url(route_path)
    with pytest.raises(FetchError) as e:
        download(url, dest, sha256=SHA, size=1000, **FAST)
    assert_one_line_about(e.value, url)
    assert "more than the pinned 1000 bytes" in str(e.value)
    assert_clean(dest, present=False)
    with pytest.raises(FetchError, match="more than the pinned 1048576 bytes"):
        download("file:///dev/zero", dest, size=1 << 20, **FAST)
    assert_clean(dest, present=False)
    assert download(url, dest, sha256=SHA, size=len(BODY), **FAST).size == len(BODY)


@pytest.mark.parametrize("url", ["http://[::1/x.tgz", "https://a\u2100b/x.tgz", "http://h:99999/x"])
def test_a_malformed_url_is_one_fetch_error(url: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "x.tgz"
    with pytest.raises(FetchError) as e:
        download(url, dest, **FAST)
    assert "\n" not in str(e.value)
    assert_clean(dest, present=False)
