"""Scale-out: builds on a Dask cluster, the signed OCI binary cache, substitution, resource routing.

Real pieces only: a Dask cluster of two worker processes (`amd` offers arch_amd64 + MEMORY,
`any` offers MEMORY only), Debian's docker-registry on 127.0.0.1, bubblewrap sandboxes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from planner.derivation import build_key, resolve  # noqa: E402
from planner.cache import (  # noqa: E402
    A_SIGNATURES,
    MEDIA_MANIFEST,
    BinaryCache,
    CacheError,
    CacheRef,
    Signer,
    TrustedKeys,
    classify_miss,
    generate_key,
    pull_closure,
    signed_payload,
    substitute,
)
from planner.executors import DaskExecutor, Unrunnable  # noqa: E402
from planner.hashing import tree_digest  # noqa: E402
from planner.store import Store  # noqa: E402
from tests.support.registry import registry  # noqa: E402,F401
from tests.support.scale_project import dask_cluster, prepare, realise_on, scale_set  # noqa: E402

WORKERS = {"amd": {"arch_amd64": 1, "MEMORY": 4e9}, "any": {"MEMORY": 4e9}}


class Env:
    def __init__(self, tmp: Path, registry: str, client) -> None:
        self.tmp = tmp
        self.registry = registry
        self.client = client
        self.proj = scale_set(tmp)
        self.public = generate_key(tmp / "keys" / "cache.sec", "scale-test-1")
        self.signer = Signer.from_file(tmp / "keys" / "cache.sec")
        self.trusted = TrustedKeys([self.public])

    def cache(self, repo: str = "scale-cache", *, signer: bool = True, trusted=None) -> BinaryCache:
        return BinaryCache(f"oci://{self.registry}/{repo}", trusted=trusted if trusted is not None else self.trusted,
                           signer=self.signer if signer else None)


@pytest.fixture(scope="module")
def env(tmp_path_factory, registry):  # noqa: F811
    tmp = tmp_path_factory.mktemp("scale")
    with dask_cluster(tmp, WORKERS) as (_cluster, client):
        yield Env(tmp, registry, client)


@pytest.fixture(scope="module")
def remote_run(env):
    """The diamond realised through the cluster into an empty planner store, pushing to the cache."""
    p = prepare(env.proj, store=env.tmp / "planner-store")
    ex = DaskExecutor(env.client, env.cache())
    res, nodes = realise_on(env.proj, ex, store=env.tmp / "planner-store")
    yield p, nodes
    p.close()


def test_remote_realise_matches_local(env, remote_run):
    p, nodes = remote_run
    assert {n.action for n in nodes.values()} == {"built"}
    local = env.proj.realise()  # the ordinary local realise, into the project's own store
    assert {n.id: (n.build_key, n.digest) for n in local.nodes} == \
        {nid: (o.build_key, o.digest) for nid, o in nodes.items()}
    # The workers' stores hold the outputs too (each worker its own store).
    worker_entries = {p.name for w in WORKERS for p in (env.tmp / "workers" / w / "store").glob("*-d-1.0")}
    assert any(name.startswith(nodes["d"].build_key) for name in worker_entries)
    # Only the target came back to the planner's store; a, b and c stay in the cache, signed,
    # and are recorded as realised (their digests feed d's build key).
    assert p.store.lookup(nodes["d"].build_key) is not None and nodes["d"].path
    for nid in "abc":
        assert p.store.lookup(nodes[nid].build_key) is None and nodes[nid].path is None
        assert "output left in oci://" in nodes[nid].reason
        assert env.cache().lookup(nodes[nid].build_key).ok
        assert p.store.realisation(p.plan.nodes[nid].key).digest == nodes[nid].digest
    assert p.store.verify() == []


def test_download_all_fetches_every_output(env, remote_run, tmp_path):
    p = prepare(env.proj, store=tmp_path / "all-store")
    _res, nodes = realise_on(env.proj, DaskExecutor(env.client, env.cache()), store=tmp_path / "all-store",
                             download="all")
    assert {nid: o.digest for nid, o in nodes.items()} == {nid: o.digest for nid, o in remote_run[1].items()}
    for nid in "abcd":  # the workers had them: reused there, and every output fetched here
        e = p.store.lookup(nodes[nid].build_key)
        assert e is not None and str(e.path) == nodes[nid].path
    p.close()


def test_valid_target_needs_nothing_below_it(env, remote_run):
    """A second realise against the store that holds only d: nothing is built, fetched or
    submitted, though a, b and c are not in that store."""
    class NoBuilds(DaskExecutor):
        def build(self, *a, **kw):
            raise AssertionError("the target is valid: nothing below it may be built")

    res, nodes = realise_on(env.proj, NoBuilds(env.client, env.cache()), store=env.tmp / "planner-store")
    assert nodes["d"].reason == "valid in the store"
    assert {nodes[n].reason for n in "abc"} == {"not needed: what depends on it is valid"}
    # `why --dry-run` agrees: nothing would be built.
    exp = json.loads(_cli(env, "--store", str(env.tmp / "planner-store"), "why", "--dry-run", "--json").stdout)
    assert exp["built"] == [] and exp["reused"] == 4, exp
    assert {nid: o.digest for nid, o in nodes.items()} == {nid: o.digest for nid, o in remote_run[1].items()}


def test_empty_store_with_substituter_builds_nothing(env, remote_run):
    p = prepare(env.proj, store=env.tmp / "second-store")

    class NoBuilds(DaskExecutor):
        def build(self, *a, **kw):
            raise AssertionError("a second planner with the cache as substituter must build nothing")

    reader = env.cache(signer=False)  # substituting needs only the public key
    ex = NoBuilds(env.client, env.cache())
    _res, nodes = realise_on(env.proj, ex, store=env.tmp / "second-store", substituters=[reader])
    assert {n.action for n in nodes.values()} == {"substituted"}
    assert {k: o.digest for k, o in nodes.items()} == {k: o.digest for k, o in remote_run[1].items()}
    assert p.store.realisation(p.plan.nodes["d"].key).digest == nodes["d"].digest
    assert p.store.verify() == []
    p.close()
    # `planner store pull`: the whole closure, dependencies first, into a third empty store.
    third = prepare(env.proj, store=env.tmp / "third-store")
    got, missing = pull_closure([reader], third.store, third.plan)
    assert not missing and set(got) == {"a", "b", "c", "d"}
    third.close()


def test_killed_worker_mid_build_is_retried_elsewhere(env):
    p = prepare(env.proj, target="slow", store=env.tmp / "kill-store")
    ex = DaskExecutor(env.client, env.cache())
    out: dict = {}

    def run():
        try:
            out["res"] = realise_on(env.proj, ex, store=env.tmp / "kill-store", target="slow")[1]
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            out["err"] = e

    t = threading.Thread(target=run)
    t.start()
    victim = None
    deadline = time.monotonic() + 30
    while victim is None and time.monotonic() < deadline:
        for addr, keys in env.client.processing().items():
            if any(str(k).startswith("planner-build-slow") for k in keys):
                victim = addr
        time.sleep(0.05)
    assert victim is not None, "the slow build was never scheduled"
    # Wait until the build is really running: its build directory exists in that worker's store.
    name = env.client.scheduler_info()["workers"][victim]["name"]
    slow = p.plan.nodes["slow"]
    bkey = build_key(slow, {})
    wtmp = env.tmp / "workers" / name / "store" / "tmp"
    while not list(wtmp.glob(f"{bkey}-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(wtmp.glob(f"{bkey}-*")), "the slow build never started"
    time.sleep(0.5)  # inside the 3 s sleep of the build
    pids = env.client.run(os.getpid)
    killed_at = time.monotonic()
    os.kill(pids[victim], signal.SIGKILL)
    t.join(60)
    assert not t.is_alive()
    assert "err" not in out, out.get("err")
    res = out["res"]["slow"]
    assert res.action == "built"
    # Rebuilt from scratch, not resumed: the build sleeps 3 s, so the rest of it cannot take less
    # than that after the kill (a lower bound the build itself sets, not a speed claim).
    rebuilt_after = time.monotonic() - killed_at
    assert rebuilt_after >= 2.5, rebuilt_after
    expect = env.tmp / "expect-slow"
    expect.mkdir()
    (expect / "slow.txt").write_text("slow\n")
    assert res.digest == tree_digest(expect)
    assert victim not in env.client.scheduler_info()["workers"]  # that worker process is gone
    # Nothing half-built anywhere: the cache entry verifies, the planner's store too.
    assert env.cache().lookup(res.build_key).ok
    assert p.store.verify() == []
    p.close()


def _tamper(cache: BinaryCache, key: str, edit) -> None:
    """Rewrite the manifest under tag `key` with `edit(doc)`, keeping everything else."""
    got = cache._get_manifest(key)
    assert got is not None
    doc = edit(json.loads(json.dumps(got[1])))
    cache.client.push_manifest(json.dumps(doc, sort_keys=True).encode(), MEDIA_MANIFEST, key)


def test_tampered_unsigned_and_untrusted_entries_are_refused(env, remote_run, tmp_path):
    p, res = remote_run
    cache = env.cache("tamper")
    b = substitute([env.cache()], p.store, res["b"].build_key)  # b stayed in the cache: fetch it
    pre = p.store.preimage(b.key)
    assert cache.push(b.key, b, pre, p.plan.nodes["b"].key) == "pushed"
    assert cache.push(b.key, b, pre, p.plan.nodes["b"].key) == "present"
    assert cache.lookup(b.key).ok

    # A different layer blob under the old signature.
    from planner.oci.descriptor import blob_path
    from planner.oci.layer import LayerSource, write_layer

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "b.txt").write_text("b\nsomething else\n")
    layer = write_layer([LayerSource(evil, "/")], tmp_path / "blobs", source_date_epoch=0)
    cache.client.push_blob(blob_path(tmp_path / "blobs", layer.descriptor.digest), layer.descriptor)

    def swap_layer(doc):
        doc["layers"][0].update(digest=layer.descriptor.digest, size=layer.descriptor.size)
        return doc

    _tamper(cache, b.key, swap_layer)
    miss = cache.lookup(b.key)
    assert not miss.ok and miss.reason == "bad-signature", miss
    fresh = Store(tmp_path / "fresh")
    assert substitute([cache], fresh, b.key) is None
    assert fresh.lookup(b.key) is None
    assert classify_miss([miss], built_before=True).category == "bad-signature"

    # The same signed entry copied under another key's tag.
    other = res["c"].build_key
    got = cache._get_manifest(b.key)
    cache.push(b.key, b, pre, p.plan.nodes["b"].key, force=True)  # restore b
    good = cache._get_manifest(b.key)[1]
    cache.client.push_manifest(json.dumps(good).encode(), MEDIA_MANIFEST, other)
    assert cache.lookup(other).reason == "bad-signature"
    del got

    # Unsigned.
    def unsign(doc):
        del doc["annotations"][A_SIGNATURES]
        return doc

    _tamper(cache, b.key, unsign)
    miss = cache.lookup(b.key)
    assert miss.reason == "unsigned"
    assert classify_miss([miss], built_before=False).category == "unsigned"

    # Signed, but by a key nobody trusts.
    cache.push(b.key, b, pre, p.plan.nodes["b"].key, force=True)
    stranger = TrustedKeys([generate_key(tmp_path / "other.sec", "stranger-1")])
    miss = env.cache("tamper", signer=False, trusted=stranger).lookup(b.key)
    assert miss.reason == "untrusted" and "scale-test-1" in miss.detail

    # A trusted signature over content that is not what it claims: the tree hash check at
    # fetch time refuses it and the store stays without the entry.
    def lie(doc):
        ann = doc["annotations"]
        doc["layers"][0].update(digest=layer.descriptor.digest, size=layer.descriptor.size)
        ann[A_SIGNATURES] = env.signer.sign(signed_payload(ann, layer.descriptor.digest, doc["config"]["digest"]))
        return doc

    _tamper(cache, b.key, lie)
    hit = cache.lookup(b.key)
    assert hit.ok
    with pytest.raises(CacheError, match="content hashes to"):
        cache.fetch(hit, fresh)
    assert fresh.lookup(b.key) is None and not list((fresh.root / "tmp").iterdir())
    # An unreachable cache is reported as such.
    down = BinaryCache("oci://127.0.0.1:9/nothing", trusted=env.trusted)
    assert down.lookup(b.key).reason == "unreachable"


def test_resource_routing_and_near_miss(env, remote_run):
    p = prepare(env.proj, target="native", store=env.tmp / "native-store")
    amd, arm = "native[linux/amd64]", "native[linux/arm64]"
    ex = DaskExecutor(env.client, env.cache())
    assert ex.resources_for(p.plan.nodes[amd]) == {"arch_amd64": 1, "MEMORY": 1 << 30}
    _res, nodes = realise_on(env.proj, ex, store=env.tmp / "native-store", target="native",
                             platform="linux/amd64")
    assert set(nodes) == {amd}  # --platform: the arm64 root is not part of this run
    bkey = nodes[amd].build_key
    assert list((env.tmp / "workers" / "amd" / "store").glob(f"{bkey}-*"))  # routed to the amd64 worker
    assert not list((env.tmp / "workers" / "any" / "store").glob(f"{bkey}-*"))
    # The arm64 variant is not in the cache, but the same node is, for another platform.
    node = p.plan.nodes[arm]
    pre = resolve(node, {}).preimage.to_json()
    miss = env.cache().lookup(build_key(node, {}), preimage=pre)
    assert miss.reason == "absent" and miss.near_miss
    assert miss.near_miss[0].axes == [("platform", "linux/amd64", "linux/arm64")]
    report = classify_miss([miss], built_before=False)
    assert report.category == "near-miss" and "platform" in report.detail
    p.close()


def test_node_needing_an_absent_resource_is_reported_at_once(env):
    p = prepare(env.proj, target="native", store=env.tmp / "arm-store")
    ex = DaskExecutor(env.client, env.cache())
    problems = ex.check_runnable(p.plan.nodes.values())
    assert len(problems) == 1 and problems[0].startswith("native [linux/arm64]: no worker can run it")
    assert "arch_arm64=1 (no worker has it)" in problems[0]
    # Refused before anything is submitted: no task ever reaches the scheduler.
    with pytest.raises(Unrunnable, match="arch_arm64"):
        realise_on(env.proj, ex, store=env.tmp / "arm-store", target="native")
    assert env.client.processing() and not any(env.client.processing().values())  # nothing left pending
    assert not [k for k in env.client.who_has() if "native" in str(k)]
    big = prepare(env.proj, target="big", store=env.tmp / "big-store")
    (line,) = ex.check_runnable(big.plan.nodes.values())
    assert "MEMORY=64.0 GiB (largest worker offers 3.7 GiB)" in line
    p.close()
    big.close()


def test_failed_remote_build_reports_the_log_and_is_not_retried(env):
    p = prepare(env.proj, target="broken", store=env.tmp / "broken-store")
    ex = DaskExecutor(env.client, env.cache())
    res, nodes = realise_on(env.proj, ex, store=env.tmp / "broken-store", target="broken")
    assert nodes["broken"].action == "failed" and "status 3" in nodes["broken"].reason
    (failure,) = res.failures
    assert "about to fail" in failure
    assert any(f"log: {w}:" in failure for w in WORKERS), failure  # the worker's log, by worker name
    assert not env.cache().lookup(build_key(p.plan.nodes["broken"], {})).ok
    p.close()


def test_cache_ref_and_keys(tmp_path):
    r = CacheRef.parse("oci://127.0.0.1:5000/planner-cache")
    assert (r.registry, r.repository, r.base_url()) == ("127.0.0.1:5000", "planner-cache", "http://127.0.0.1:5000")
    assert CacheRef.parse("oci://cache.example.org/team/cache").base_url() == "https://cache.example.org"
    assert CacheRef.parse("oci://cache.internal:5000/c?plain-http").base_url() == "http://cache.internal:5000"
    with pytest.raises(CacheError):
        CacheRef.parse("https://example.org/x")
    pub = generate_key(tmp_path / "k", "k-1")
    name, _, b64 = pub.partition(":")
    assert name == "k-1" and len(b64) == 44 and (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    s = Signer.from_file(tmp_path / "k")
    assert s.public_key == pub and Signer.from_text(s.secret_text()).public_key == pub
    keys = TrustedKeys([pub])
    assert keys.verify([s.sign(b"x")], b"x") == ("ok", "k-1")
    assert keys.verify([s.sign(b"x")], b"y")[0] == "bad-signature"
    assert keys.verify([], b"x")[0] == "unsigned"


def test_resources_for_follows_the_node():
    import attrs

    from planner.derivation import BuilderSpec, Node, Preimage, Variant

    pre = Preimage(name="n", version="1", variant=Variant(), builder=BuilderSpec("shell", 1), env={}, inputs={},
                   patches=(), deps={}, source_date_epoch=0, impure=False)
    base = Node(id="n", recipe="n", name="n", version="1", variant=Variant(), key="k",
                preimage=pre, builder="shell", deps={}, requires=(), inputs={},
                estimate=1.0, memory=2 << 30, cores=1)
    r = DaskExecutor.resources_for
    assert r(base) == {"MEMORY": 2 << 30}
    assert r(attrs.evolve(base, variant=Variant(platform="linux/arm64"))) == {"arch_arm64": 1, "MEMORY": 2 << 30}
    cross = attrs.evolve(base, variant=Variant(platform="linux/arm64", host="linux/amd64"))
    assert r(cross)["arch_amd64"] == 1 and "arch_arm64" not in r(cross)  # cross-compiled on the host
    inside = attrs.evolve(cross, deps={"rootfs": "base[linux/arm64]"})
    assert "arch_arm64" in r(inside)  # runs the arm64 root file system's binaries
    builtin = attrs.evolve(base, builder="debian-rootfs", variant=Variant(platform="linux/arm64"))
    assert r(builtin) == {"MEMORY": 2 << 30}
    gpu = attrs.evolve(base, preimage=attrs.evolve(pre, builder=BuilderSpec("shell", 1, {"gpu": 2})))
    assert r(gpu)["GPU"] == 2
    assert r(attrs.evolve(base, preimage=attrs.evolve(pre, builder=BuilderSpec("shell", 1, {"gpu": True}))))["GPU"] == 1


# -- the same through `planner realise` on the command line ----------------------------------

def _cli(env, *args: str, check: bool = True):
    from tests.conftest import run_planner

    return run_planner("--root", str(env.proj.root), *args, check=check)


def test_cli_realise_on_the_cluster_then_substitute(env, tmp_path):
    addr = env.client.scheduler.address.replace("tcp://", "dask://")
    key = str(env.tmp / "keys" / "cache.sec")
    cache = f"oci://{env.registry}/cli-cache"
    local = json.loads(_cli(env, "--store", str(tmp_path / "local"), "realise", "--target", "d", "--json").stdout)
    remote = json.loads(_cli(env, "--store", str(tmp_path / "remote"), "realise", "--target", "d", "--json",
                             "--executor", addr, "--cache-to", cache, "--signing-key", key).stdout)
    digests = lambda r: {n["id"]: n["digest"] for n in r["nodes"]}  # noqa: E731
    assert digests(local) == digests(remote)
    # Workers may already hold outputs from the module's earlier tests: those come back reused.
    assert {n["action"] for n in remote["nodes"]} <= {"built", "reused"}
    fresh = json.loads(_cli(env, "--store", str(tmp_path / "fresh"), "realise", "--target", "d", "--json",
                            "--substituter", cache, "--trusted-key", env.public).stdout)
    assert {n["action"] for n in fresh["nodes"]} == {"substituted"}
    assert digests(fresh) == digests(local)
    # Without the trusted key the entries are refused, and the build says why.
    untrusted = json.loads(_cli(env, "--store", str(tmp_path / "untrusted"), "realise", "--target", "d", "--json",
                                "--substituter", cache).stdout)
    assert {n["action"] for n in untrusted["nodes"]} == {"built"}
    assert all("cache miss: untrusted" in n["reason"] for n in untrusted["nodes"]), untrusted["nodes"]


def test_cli_reports_unrunnable_node_at_once(env, tmp_path):
    addr = env.client.scheduler.address.replace("tcp://", "dask://")
    proc = _cli(env, "--store", str(tmp_path / "s"), "realise", "--target", "big", "--executor", addr,
                "--cache-to", f"oci://{env.registry}/cli-cache", "--signing-key",
                str(env.tmp / "keys" / "cache.sec"), check=False)
    assert proc.returncode != 0
    assert "MEMORY" in proc.stderr and "no worker" in proc.stderr.lower() or "largest worker" in proc.stderr


def test_why_names_the_cache_miss(env, tmp_path):
    """`why` says why the binary cache could not serve a node that was then built."""
    from tests.conftest import run_planner

    key = str(env.tmp / "keys" / "cache.sec")
    cache = f"oci://{env.registry}/miss-cache"
    _cli(env, "--store", str(tmp_path / "a"), "realise", "--target", "c", "--cache-to", cache, "--signing-key", key)
    # A planner that does not trust the signer: every node is refused as untrusted, then built.
    store = str(tmp_path / "b")
    run_planner("--root", str(env.proj.root), "--store", store, "realise", "--target", "c", "--substituter", cache)
    exp = json.loads(run_planner("--root", str(env.proj.root), "--store", store, "why", "--json").stdout)
    assert exp["cache_misses"] and {m["category"] for m in exp["cache_misses"]} == {"untrusted"}
    text = run_planner("--root", str(env.proj.root), "--store", store, "why").stdout
    assert "cache miss: c: untrusted" in text, text


def test_cli_platform_realises_one_platforms_targets(env, tmp_path):
    out = json.loads(_cli(env, "--store", str(tmp_path / "s"), "realise", "--target", "native",
                          "--platform", "linux/amd64", "--json").stdout)
    assert [n["id"] for n in out["nodes"]] == ["native[linux/amd64]"] and out["nodes"][0]["action"] == "built"
    bad = _cli(env, "--store", str(tmp_path / "s"), "realise", "--target", "native", "--platform", "linux/riscv64",
               check=False)
    assert bad.returncode != 0
    assert "set.toml: platform linux/riscv64 is not one of the set's platforms (one of: linux/amd64, linux/arm64)" in bad.stderr
    # A later plain realise still plans both platforms: --platform wrote no plan cache.
    dry = _cli(env, "--store", str(tmp_path / "s"), "realise", "--target", "native", "--dry-run").stdout
    assert "build native[linux/arm64]" in dry and "1 to build, 1 valid" in dry
