"""The binary cache and the Dask executor under what an outside audit (the 15th) found:

- a worker force-pushed its output over an entry another planner had pushed and verified
  first, so two realises on one cluster failed each other with digest mismatches;
- a key name with whitespace was accepted, and its signatures could never verify;
- --trusted-key echoed 40 characters of what it was given (a secret key pasted there);
- dask:// without a port, dask+tls:// without TLS settings, --connect-timeout nan/inf were
  internal errors; a peer that never completes Dask's handshake ignored --connect-timeout;
- one transient failure of the cache made a worker's retries of the task fail at once;
- a second trusted key of the same name replaced the first (a key rotation);
- a cache that stopped answering mid-fetch was reported as holding a bad entry.

Real parts: Debian's docker-registry on loopback, bubblewrap builds, the worker's task
function called as a worker calls it, Dask's own client.
"""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("distributed")

from planner import worker  # noqa: E402
from planner.cache import BinaryCache, CacheError, Signer, TrustedKeys, generate_key  # noqa: E402
from planner.cache.results import CacheMiss  # noqa: E402
from planner.derivation import build_key  # noqa: E402
from planner.errors import PlannerError  # noqa: E402
from planner.executors import DaskExecutor  # noqa: E402
from planner.store import Store  # noqa: E402
from tests.support.project import Project  # noqa: E402
from tests.support.registry import registry  # noqa: E402,F401
from tests.support.scale_project import prepare  # noqa: E402

needs_builds = pytest.mark.skipif(not (Path("/usr/bin/bwrap").exists() and shutil.which("docker-registry")),
                                  reason="needs bubblewrap and docker-registry")


class _Leaf:
    """One leaf node whose every build differs (it writes the time) and the payload a planner
    sends a worker for it, as DaskExecutor.payload makes it."""

    def __init__(self, tmp: Path, registry: str) -> None:  # noqa: F811
        proj = Project.empty(tmp, target="top")
        proj.recipe("nd", script="date +%s%N > $out/t")
        proj.recipe("top", deps=["nd"], script="cat /deps/nd/t > $out/all")
        proj.lock()
        self.proj = proj
        self.prepared = prepare(proj, store=tmp / "planner-store")
        node = self.prepared.plan.nodes["nd"]
        self.bkey = build_key(node, {})
        self.public = generate_key(tmp / "k.sec", "audit15-1")
        self.signer = Signer.from_file(tmp / "k.sec")
        self.ref = f"oci://{registry}/audit15/" + "".join(c for c in tmp.name.lower() if c.isalnum())
        self.payload = self.payload_of(node, self.bkey, {})

    def payload_of(self, node, bkey: str, deps: dict) -> dict:
        from planner import __version__

        return {
            "format": worker.PAYLOAD_FORMAT, "planner": __version__,
            "request": worker.WorkRequest.of(node, bkey).to_json(), "inputs": {},
            "deps": {m: {"key": e.key, "digest": e.digest} for m, e in deps.items()}, "jobs": 1,
            "sandboxed": True,
            "cache": {"ref": self.ref, "trusted": [self.public], "secret": self.signer.secret_text()},
        }

    def top_payload(self, nd_digest: str) -> dict:
        """The payload of `top`, whose dependency `nd` is in the cache (built as `nd_digest`)."""
        from planner.store import RemoteEntry

        deps = {"nd": RemoteEntry(self.bkey, nd_digest, "nd", self.ref)}
        top = self.prepared.plan.nodes["top"]
        return self.payload_of(top, build_key(top, deps), deps)

    def cache(self, **kw) -> BinaryCache:
        return BinaryCache(self.ref, trusted=TrustedKeys([self.public]), **kw)

    def on_worker(self, monkeypatch, store: Path, cache: BinaryCache) -> None:
        """The next remote_build runs as a worker with `store` and this cache object."""
        monkeypatch.setenv("PLANNER_WORKER_STORE", str(store))
        monkeypatch.delenv("PLANNER_SIGNING_KEY", raising=False)
        cfg = self.payload["cache"]
        monkeypatch.setattr(worker, "_worker_ctx", {
            (str(store), cfg["ref"], tuple(cfg["trusted"]), cfg["secret"]): (Store(store), cache)})


class _LateLookup(BinaryCache):
    """A worker's cache whose first lookup ran before another build's push landed."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.blind = 1

    def lookup(self, build_key, **kw):
        if self.blind:
            self.blind -= 1
            return CacheMiss(str(self.ref), build_key, "absent", "")
        return super().lookup(build_key, **kw)


@needs_builds
def test_a_worker_keeps_the_entry_another_planner_pushed_first(tmp_path: Path, registry, monkeypatch) -> None:  # noqa: F811
    leaf = _Leaf(tmp_path, registry)
    # Planner A's build: pushed, then verified and used by planner A.
    leaf.on_worker(monkeypatch, tmp_path / "w1", leaf.cache(signer=leaf.signer))
    first = worker.remote_build(leaf.payload)
    assert "error" not in first and not first["reused"], first
    assert leaf.cache().lookup(leaf.bkey).digest == first["digest"]
    # Planner B's build of the same key, on another worker, looked before A's push landed.
    late = _LateLookup(leaf.ref, trusted=TrustedKeys([leaf.public]), signer=leaf.signer)
    leaf.on_worker(monkeypatch, tmp_path / "w2", late)
    time.sleep(0.01)
    second = worker.remote_build(leaf.payload)
    assert late.blind == 0  # it did build (its own output differs: it writes the time)
    # First writer wins: the cache still holds A's entry, and B's worker answers with it, so
    # B's planner finds what its worker said, and A's what it verified.
    assert leaf.cache().lookup(leaf.bkey).digest == first["digest"]
    assert second["digest"] == first["digest"], second
    # The worker's own store holds that entry too, for what it hands to dependants later.
    assert Store(tmp_path / "w2").lookup(leaf.bkey).digest == first["digest"]
    leaf.prepared.close()


@needs_builds
def test_a_worker_task_asks_the_cache_again_after_a_transient_failure(tmp_path: Path, registry, monkeypatch) -> None:  # noqa: F811
    leaf = _Leaf(tmp_path, registry)
    leaf.on_worker(monkeypatch, tmp_path / "w0", leaf.cache(signer=leaf.signer))
    nd = worker.remote_build(leaf.payload)
    # `top` goes to another worker, whose cache object is what one 503 from the registry left
    # it (that task failed, and Dask retries it in the same process at once): fetching `nd`
    # must ask the registry again, not fail on the memory of the 503.
    cache = leaf.cache(signer=leaf.signer)
    leaf.on_worker(monkeypatch, tmp_path / "w1", cache)
    cache._unreachable("HTTP 503 Service Unavailable")
    top = leaf.top_payload(nd["digest"])
    got = worker.remote_build(top)
    assert "error" not in got
    assert leaf.cache().lookup(top["request"]["build_key"]).digest == got["digest"]
    leaf.prepared.close()


@pytest.mark.parametrize("name", ["ci build-1", "ci\nbuild-1", "ci\tbuild", "ci\x07x"])
def test_key_names_with_whitespace_or_control_characters_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(CacheError) as e:
        generate_key(tmp_path / "k.sec", name)
    assert "\n" not in e.value.line() and "one word" in e.value.line()
    assert not (tmp_path / "k.sec").exists()
    # A key file or trusted key written by hand (or by an older planner) with such a name.
    good = Signer.from_text(_secret_text(tmp_path, "ci-1"))
    body = good.secret_text().split(":", 1)[1]
    with pytest.raises(CacheError) as e:
        Signer.from_text(f"{name}:{body}")
    assert "\n" not in e.value.line() and body[:8] not in e.value.line()
    with pytest.raises(CacheError):
        TrustedKeys([f"{name}:{good.public_key.split(':', 1)[1]}"])


def _secret_text(tmp: Path, name: str) -> str:
    generate_key(tmp / f"{name}.sec", name)
    return (tmp / f"{name}.sec").read_text()


def test_keys_generate_refuses_a_name_with_a_space_in_one_line(tmp_path: Path) -> None:
    proj = Project.empty(tmp_path, target="x")
    run = proj.cli("keys", "generate", str(tmp_path / "k.sec"), "--name", "ci build-1")
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "k.sec").exists()


def test_a_secret_key_given_as_a_trusted_key_is_never_echoed(tmp_path: Path) -> None:
    body = _secret_text(tmp_path, "ci-1").strip().split(":", 1)[1]
    for given in (body, f"ci-1:{body}", f" {body[:20]} "):
        with pytest.raises(CacheError) as e:
            TrustedKeys([given])
        line = e.value.line()
        assert body[:6] not in line and body[-12:] not in line, line


def test_executor_addresses_dask_refuses_are_one_line(tmp_path: Path) -> None:
    for url in ("dask://127.0.0.1", "dask://127.0.0.1:", "dask://:8786", "dask://h:99999", "dask+tls://127.0.0.1:9"):
        with pytest.raises(PlannerError) as e:
            DaskExecutor(url, None, connect_timeout=5)
        assert "\n" not in e.value.line(), e.value.line()
    assert "TLS settings" in e.value.line()
    for t in (float("nan"), float("inf"), 0.0):
        with pytest.raises(PlannerError) as e:
            DaskExecutor("dask://127.0.0.1:9", None, connect_timeout=t)
        assert "--connect-timeout" in e.value.line()


def test_cli_connect_timeout_nan_or_inf_is_one_line(tmp_path: Path) -> None:
    proj = Project.empty(tmp_path, target="x")
    proj.recipe("x", script="echo x > $out/x")
    proj.lock()
    generate_key(tmp_path / "k.sec", "ci-1")
    for value in ("nan", "inf"):
        run = proj.cli("realise", "--executor", "dask://127.0.0.1:9", "--connect-timeout", value,
                       "--cache-to", "oci://127.0.0.1:9/c", "--signing-key", str(tmp_path / "k.sec"))
        assert run.returncode not in (0, 70) and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.strip().splitlines() == [f"planner: error: --connect-timeout {value}: "
                                                   "want a finite number of seconds above 0"], run.stderr


class _Http(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a) -> None:
        pass


def test_connect_timeout_bounds_a_peer_that_is_not_a_scheduler() -> None:
    # An HTTP server (a scheduler's dashboard port, given by mistake): it accepts, and never
    # says what Dask's handshake waits for.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Http)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out: dict = {}

    def attempt() -> None:
        try:
            DaskExecutor(f"dask://127.0.0.1:{server.server_address[1]}", None, connect_timeout=1.0)
            out["got"] = "a client"
        except PlannerError as e:
            out["got"] = e.line()

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(30)
    server.shutdown()
    # (a hang, not a speed: the old code never returned at all)
    assert not t.is_alive(), "--connect-timeout 1 was still waiting after 30 s"
    assert "--connect-timeout 1 s" in out["got"], out


def test_two_trusted_keys_of_one_name_are_both_tried(tmp_path: Path) -> None:
    old_pub, new_pub = generate_key(tmp_path / "old.sec", "ci-1"), generate_key(tmp_path / "new.sec", "ci-1")
    payload = b"an entry"
    for signer in (Signer.from_file(tmp_path / "old.sec"), Signer.from_file(tmp_path / "new.sec")):
        sig = signer.sign(payload)
        for order in ([old_pub, new_pub], [new_pub, old_pub]):
            assert TrustedKeys(order).verify([sig], payload) == ("ok", "ci-1"), (signer.public_key, order)
    assert len(TrustedKeys([old_pub, new_pub, old_pub])) == 2
    assert TrustedKeys([old_pub]).verify([Signer.from_file(tmp_path / "new.sec").sign(payload)], payload)[0] \
        == "bad-signature"


class _BlobsDown(httpx.BaseTransport):
    """The registry answers its manifests, and 503 to every blob GET (an overloaded backend)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/blobs/" in request.url.path:
            return httpx.Response(503, request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@needs_builds
def test_a_cache_failing_mid_fetch_is_unreachable_not_a_bad_entry(tmp_path: Path, registry, monkeypatch) -> None:  # noqa: F811
    from tests.support.scale_project import realise_on

    leaf = _Leaf(tmp_path, registry)
    leaf.on_worker(monkeypatch, tmp_path / "w0", leaf.cache(signer=leaf.signer))
    worker.remote_build(leaf.payload)
    flaky = leaf.cache(transport=_BlobsDown())
    hit = flaky.lookup(leaf.bkey)
    assert hit.ok
    with pytest.raises(CacheError) as e:
        flaky.fetch(hit, Store(tmp_path / "s1"))
    assert "HTTP 503" in e.value.line()
    assert flaky.lookup(leaf.bkey).reason == "unreachable"  # not asked again at once
    # What a realise reports: the cache was unreachable, nothing is known bad.
    _res, nodes = realise_on(leaf.proj, None, store=tmp_path / "s2", substituters=[leaf.cache(transport=_BlobsDown())])
    assert nodes["nd"].action == "built"
    assert "unreachable" in nodes["nd"].reason and "bad-entry" not in nodes["nd"].reason, nodes["nd"].reason
    leaf.prepared.close()


class _FailsOnce(httpx.BaseTransport):
    """The registry answers 500 to the first `method` request whose path holds `part` (a flaky
    load balancer), then well."""

    def __init__(self, method: str, part: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.method, self.part, self.left = method, part, 1

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == self.method and self.part in request.url.path and self.left:
            self.left -= 1
            return httpx.Response(500, request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@needs_builds
def test_the_planner_asks_again_for_an_output_a_worker_just_pushed(tmp_path: Path, registry, monkeypatch) -> None:  # noqa: F811
    from planner.cache.policy import lookup_after_build

    leaf = _Leaf(tmp_path, registry)
    leaf.on_worker(monkeypatch, tmp_path / "w0", leaf.cache(signer=leaf.signer))
    built = worker.remote_build(leaf.payload)
    # The planner's check of the worker's output meets one 500: the build is not failed for it.
    hit = lookup_after_build(leaf.cache(transport=_FailsOnce("GET", "/manifests/")), leaf.bkey, waits=(0.1,))
    assert hit.ok and hit.digest == built["digest"]
    leaf.prepared.close()


@needs_builds
def test_the_planner_pushes_an_input_again_after_a_transient_failure(tmp_path: Path, registry, monkeypatch) -> None:  # noqa: F811
    from planner.cache.policy import push_retrying

    leaf = _Leaf(tmp_path, registry)
    leaf.on_worker(monkeypatch, tmp_path / "w0", leaf.cache(signer=leaf.signer))
    built = worker.remote_build(leaf.payload)
    # That output, in the planner's store, pushed to another repository (a dependency the
    # planner hands its workers) through a registry that fails one upload.
    flaky = BinaryCache(leaf.ref + "-other", trusted=TrustedKeys([leaf.public]), signer=leaf.signer,
                        transport=_FailsOnce("POST", "/blobs/uploads"))
    got = push_retrying(flaky, Store(tmp_path / "w0"), leaf.bkey, leaf.prepared.plan.nodes["nd"].key, waits=(0.1,))
    assert got == "pushed"
    assert leaf.cache().lookup(leaf.bkey).digest == built["digest"]
    assert BinaryCache(leaf.ref + "-other", trusted=TrustedKeys([leaf.public])).lookup(leaf.bkey).ok
    leaf.prepared.close()
