"""The binary cache and its keys under faults an audit from outside found mishandled: a signed
entry whose blob was corrupted in the registry failed the node (the next substituter and the
build never tried), and a malformed secret key file was echoed into the error line.

A real registry (Debian's docker-registry on loopback, its storage edited on disk), real
bubblewrap builds, the command line as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.project import Project
from tests.support.registry import start_registry, stop

pytestmark = pytest.mark.skipif(not (Path("/usr/bin/bwrap").exists() and shutil.which("docker-registry")),
                                reason="needs bubblewrap and docker-registry")


@pytest.fixture
def own_registry(tmp_path: Path):
    proc, address = start_registry(tmp_path / "registry")
    try:
        yield address, tmp_path / "registry" / "storage"
    finally:
        stop(proc)


def _ok(proj: Project, *args: str, store: Path):
    run = _cli(proj, store, *args)
    assert run.returncode == 0, run.stderr
    return run


def _cli(proj: Project, store: Path, *args: str):
    argv = list(args)
    if argv and argv[0] in ("realise", "why"):
        argv.insert(1, proj.set)
    old, proj.store = proj.store, store
    try:
        return proj.cli(*argv, set_arg=False)
    finally:
        proj.store = old


def test_a_corrupt_blob_in_the_cache_is_a_miss_and_the_node_is_built(tmp_path: Path, own_registry) -> None:
    address, storage = own_registry
    proj = Project.diamond(tmp_path)
    proj.lock()
    key = tmp_path / "cache.sec"
    public = _cli(proj, tmp_path / "s0", "keys", "generate", str(key), "--name", "faults-1").stdout.strip().split()[-1]
    cache = f"oci://{address}/faults"
    first = json.loads(_ok(proj, "realise", "--json", "--cache-to", cache, "--signing-key", str(key),
                           store=tmp_path / "s1").stdout)
    # Every layer blob (gzip) overwritten in the registry's storage by as many other bytes: the
    # signatures and sizes still hold, the bytes are not what they sign.
    blobs = [p for p in storage.rglob("data") if p.read_bytes()[:2] == b"\x1f\x8b"]
    assert len(blobs) >= 4, blobs
    for p in blobs:
        p.write_bytes(bytes(len(p.read_bytes())))
    fresh = tmp_path / "s2"
    run = _ok(proj, "realise", "--json", "--substituter", cache, "--trusted-key", public, store=fresh)
    out = json.loads(run.stdout)
    assert {n["action"] for n in out["nodes"]} == {"built"}, out["nodes"]
    assert out["digest"] == first["digest"] and out["output"]
    assert all("cache miss: bad-entry" in n["reason"] for n in out["nodes"]), [n["reason"] for n in out["nodes"]]
    # Said as it happens, as Nix warns of a substitute it ignores (not only by `why` later).
    plain = _ok(proj, "realise", "--progress", "plain", "--substituter", cache, "--trusted-key", public,
                store=tmp_path / "s3")
    assert plain.stderr.count("not substituted (bad-entry") == 4, plain.stderr
    why = json.loads(_ok(proj, "why", "--json", store=fresh).stdout)
    assert {m["category"] for m in why["cache_misses"]} == {"bad-entry"}, why["cache_misses"]
    assert _ok(proj, "store", "verify", store=fresh).stdout == "store ok\n"


def test_a_malformed_secret_key_is_named_never_shown(tmp_path: Path) -> None:
    proj = Project.diamond(tmp_path)
    proj.lock()
    key = tmp_path / "cache.sec"
    _cli(proj, tmp_path / "s0", "keys", "generate", str(key), "--name", "faults-1")
    secret = key.read_text().strip().split(":", 1)[1]
    _ok(proj, "realise", store=tmp_path / "s1")  # (store push reads the key once it has runs to push)
    for name, text in {"no-name.sec": secret, "not-base64.sec": "faults-1:" + secret[:20] + "!!!" + secret[23:],
                       "binary.sec": None}.items():
        bad = tmp_path / name
        if text is None:
            bad.write_bytes(b"\xff\xfe" + secret.encode())
        else:
            bad.write_text(text + "\n")
        for args in (["realise", "--cache-to", "oci://127.0.0.1:9/x", "--signing-key", str(bad)],
                     ["store", "push", proj.set, "--to", "oci://127.0.0.1:9/x", "--signing-key", str(bad)]):
            run = _cli(proj, tmp_path / "s1", *args)
            lines = [l for l in run.stderr.splitlines() if l.startswith("planner:")]
            assert run.returncode != 0 and lines and "Traceback" not in run.stderr, run.stderr
            assert str(bad) in lines[-1], (name, lines)
            assert secret[:12] not in run.stderr and secret[-12:] not in run.stderr, (name, run.stderr)
