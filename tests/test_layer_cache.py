"""The store's layer cache (planner.oci.layercache) with the real demo image.

An attestation-only lock change rebuilds the image node, but its layers come back from the cache:
the layout is byte-identical, skopeo and umoci still read it. A swapped cache blob is detected,
dropped and rebuilt; an image built with and without the cache is the same bytes; `store gc`
drops blobs no entry links any more.

Uses the session fixture `demo_runs` (tests/conftest.py): its first realise filled store-a's
cache. Each test works on a copy of that store.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import attrs
import pytest

from planner.oci.layout import read_layout

from .conftest import REPO, run_planner

pytestmark = pytest.mark.slow

VARIANTS = ("default", "sm100a")
LAYERS_PER_MANIFEST = 5  # the base, then four [image] layers groups
REUSED = "reused from the layer cache"


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _project_and_store(demo_runs: dict, tmp_path: Path) -> tuple[Path, Path]:
    proj = tmp_path / "proj"
    for sub in ("recipes", "patches", "lockfiles"):
        shutil.copytree(REPO / sub, proj / sub)
    store = tmp_path / "store"
    subprocess.run(["cp", "-a", str(demo_runs["store_a"]), str(store)], check=True)
    (store / "plans").exists() and shutil.rmtree(store / "plans")
    return proj, store


def _attest_only_change(proj: Path, store: Path, n: int) -> None:
    """Edit base-probe's source (a recipe of the set the image is not built from) and lock: the
    lock changes, so the image's `attest` and key do; none of its inputs does."""
    src = proj / "recipes/demo/src/base-probe/README.attest"
    src.write_text(f"edit {n}\n")
    lock = run_planner("--root", str(proj), "--store", str(store), "lock", "demo")
    assert "base-probe/source" in lock.stdout, lock.stdout


def _realise(proj: Path, store: Path) -> tuple[dict, str]:
    res = json.loads(run_planner("--root", str(proj), "--store", str(store), "realise", "demo", "--json").stdout)
    image = [n for n in res["nodes"] if n["name"] == "image"]
    assert len(image) == 1
    log = run_planner("--root", str(proj), "--store", str(store), "log", "image", "--set", "demo").stdout
    assert log == (store / "logs" / f"{image[0]['build_key']}.log").read_text()  # this build's log
    return res, log


def _layer_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("layer sha256:")]


@pytest.fixture(scope="module")
def attest_rebuild(demo_runs: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo after an attestation-only lock change, realised from a copy of store-a."""
    tmp = tmp_path_factory.mktemp("layercache")
    proj, store = _project_and_store(demo_runs, tmp)
    _attest_only_change(proj, store, 1)
    res, log = _realise(proj, store)
    return {"proj": proj, "store": store, "res": res, "log": log}


def test_attestation_only_change_reuses_every_layer(demo_runs: dict, attest_rebuild: dict) -> None:
    res, log = attest_rebuild["res"], attest_rebuild["log"]
    built = sorted(n["name"] for n in res["nodes"] if n["action"] == "built")
    assert built == ["image"], built  # the image's key changed, nothing it is built from did
    old, new = Path(demo_runs["a"]["output"]), Path(res["output"])
    assert res["digest"] == demo_runs["a"]["digest"]
    assert (old / "index.json").read_bytes() == (new / "index.json").read_bytes()
    assert {k: v for k, v in _tree_bytes(new).items() if not k.startswith("attestations/")} == \
        {k: v for k, v in _tree_bytes(old).items() if not k.startswith("attestations/")}
    # The attestations did change: they name the new lock.
    assert (old / "attestations/provenance.json").read_bytes() != (new / "attestations/provenance.json").read_bytes()
    lines = _layer_lines(log)
    # Every distinct layer (base per platform, int4qat per platform and arch list, the shared
    # pure-Python groups) came from the cache; none was compressed.
    assert lines and all(line.endswith(REUSED) for line in lines), log
    assert "installed" not in log and "layer cache: dropped" not in log, log
    # Hard links: the new layout's layer blobs are the very files of the cache.
    lay = read_layout(new)
    layer_digests = {x["digest"] for d in lay.manifests for m in lay.walk(d)
                     if m.media_type.endswith("manifest.v1+json") for x in lay.read_json(m)["layers"]}
    assert len(layer_digests) == len(lines)
    cache = attest_rebuild["store"] / "cache/layers/blobs"
    for digest in layer_digests:
        assert os.stat(new / "blobs/sha256" / digest[7:]).st_ino == os.stat(cache / digest[7:]).st_ino


def test_skopeo_and_umoci_read_the_cached_layout(attest_rebuild: dict, tmp_path: Path) -> None:
    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    layout = Path(attest_rebuild["res"]["output"])
    for v in VARIANTS:
        out = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{layout}:{v}-linux-amd64"],
                                        capture_output=True, check=True).stdout)
        assert out["Architecture"] == "amd64" and len(out["Layers"]) == LAYERS_PER_MANIFEST
    cmd = ["umoci", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    subprocess.run(cmd + ["--image", f"{layout}:default-linux-amd64", str(tmp_path / "bundle")],
                   check=True, capture_output=True)
    site = list((tmp_path / "bundle/rootfs").glob("usr/lib/python3*/site-packages/slime_mini/__init__.py")) + \
        list((tmp_path / "bundle/rootfs").glob("usr/local/lib/python3*/*-packages/slime_mini/__init__.py"))
    assert site, "slime_mini is not in the unpacked rootfs"
    assert (tmp_path / "bundle/rootfs/var/lib/dpkg/status").is_file()


def test_a_swapped_cache_blob_is_detected_and_rebuilt(demo_runs: dict, attest_rebuild: dict) -> None:
    proj, store = attest_rebuild["proj"], attest_rebuild["store"]
    lay = read_layout(Path(attest_rebuild["res"]["output"]))
    amd64 = lay.read_json(next(m for m in lay.walk(lay.resolve("default")) if m.platform and
                               m.platform.architecture == "amd64" and m.media_type.endswith("manifest.v1+json")))
    base = amd64["layers"][0]["digest"][7:]
    blob = store / "cache/layers/blobs" / base
    # Swapped, not written in place: the cache's file is a hard link of the first image's blob.
    evil = blob.with_name("evil")
    evil.write_bytes(b"\x1f\x8b" + os.urandom(64))
    os.replace(evil, blob)
    _attest_only_change(proj, store, 2)
    res, log = _realise(proj, store)
    assert sorted(n["name"] for n in res["nodes"] if n["action"] == "built") == ["image"]
    dropped = [line for line in log.splitlines() if line.startswith("layer cache: dropped")]
    assert len(dropped) == 1 and f"blob {base} hashes to sha256:" in dropped[0], log
    rebuilt = [line for line in _layer_lines(log) if not line.endswith(REUSED)]
    assert len(rebuilt) == 1 and rebuilt[0].startswith(f"layer sha256:{base} "), log
    assert res["digest"] == demo_runs["a"]["digest"]
    assert (Path(res["output"]) / f"blobs/sha256/{base}").read_bytes() == \
        (Path(demo_runs["a"]["output"]) / f"blobs/sha256/{base}").read_bytes()
    # The cache holds the good blob again.
    assert blob.read_bytes() == (Path(demo_runs["a"]["output"]) / f"blobs/sha256/{base}").read_bytes()


# ---------------------------------------------------------------------------------------------
# In-process: the same node built without, into, and from a cache


def _image_node_and_deps(store_root: Path):
    from planner import lock as lockmod
    from planner.graph import plan as make_plan
    from planner.host import detect_host
    from planner.recipes import load_set
    from planner.store import Store

    rs = load_set(REPO, "demo")
    plan = make_plan(rs, lockmod.read(rs.lockfile), detect_host(True))
    node = plan.nodes[plan.targets[0]]
    store = Store(store_root)
    try:
        deps = {m: store.lookup(store.realisation(plan.nodes[nid].key).build_key) for m, nid in node.deps.items()}
    finally:
        store.close()
    return node, deps


def _build(node, deps, out: Path, caches: Path | None) -> str:
    from planner.builders.image import build_image
    from planner.derivation import BuildRequest

    out.mkdir(parents=True)
    log = io.StringIO()
    build_image(node, BuildRequest(node=node, inputs={}, deps=deps, caches=caches), out, log)
    return log.getvalue()


def test_with_and_without_the_cache_the_same_bytes(demo_runs: dict, tmp_path: Path) -> None:
    node, deps = _image_node_and_deps(demo_runs["store_a"])
    caches = tmp_path / "caches"
    plain = _build(node, deps, tmp_path / "plain", None)
    filling = _build(node, deps, tmp_path / "filling", caches)
    hit = _build(node, deps, tmp_path / "hit", caches)
    assert REUSED not in plain and REUSED not in filling
    assert _layer_lines(hit) and all(line.endswith(REUSED) for line in _layer_lines(hit)), hit
    assert not (tmp_path / "plain" / "cache").exists()
    ref = _tree_bytes(tmp_path / "plain")
    assert _tree_bytes(tmp_path / "filling") == ref
    assert _tree_bytes(tmp_path / "hit") == ref
    assert ref["index.json"] == (Path(demo_runs["a"]["output"]) / "index.json").read_bytes()
    # Another SOURCE_DATE_EPOCH is another key: nothing is reused.
    pre = attrs.evolve(node.preimage, source_date_epoch=node.preimage.source_date_epoch + 1)
    other = _build(attrs.evolve(node, preimage=pre, key=pre.key()), deps, tmp_path / "other", caches)
    assert REUSED not in other


def test_damaged_records_are_misses(demo_runs: dict, tmp_path: Path) -> None:
    node, deps = _image_node_and_deps(demo_runs["store_a"])
    caches = tmp_path / "caches"
    _build(node, deps, tmp_path / "a", caches)
    ref = _tree_bytes(tmp_path / "a")
    records = sorted((caches / "layers/records").iterdir())
    assert len(records) >= 5
    # A record cut short, one copied under another key's name, one that is a FIFO (reading it
    # must not hang), and a blob that is a symlink (to a good copy, even): all dropped, rebuilt.
    records[0].write_text(records[0].read_text()[:40])
    shutil.copyfile(records[2], records[1])
    records[3].unlink()
    os.mkfifo(records[3])
    blob = caches / "layers/blobs" / json.loads(records[4].read_text())["layer"]["descriptor"]["digest"][7:]
    shutil.copyfile(blob, tmp_path / "good-copy")
    blob.unlink()
    blob.symlink_to(tmp_path / "good-copy")
    log = _build(node, deps, tmp_path / "b", caches)
    dropped = [line for line in log.splitlines() if line.startswith("layer cache: dropped")]
    assert len(dropped) == 4, log
    assert sum("unreadable record" in line for line in dropped) == 2, dropped
    assert any("another key" in line for line in dropped) and any("not a regular file" in line for line in dropped)
    assert len([line for line in _layer_lines(log) if not line.endswith(REUSED)]) == 4, log
    assert _tree_bytes(tmp_path / "b") == ref


def test_gc_drops_cache_blobs_no_entry_links(demo_runs: dict, tmp_path: Path) -> None:
    from planner.store import Store

    node, deps = _image_node_and_deps(demo_runs["store_a"])
    root = tmp_path / "store"
    Store(root).close()
    caches = root / "cache"
    _build(node, deps, tmp_path / "kept", caches)
    _build(node, deps, tmp_path / "gone", caches)  # all hits: links the same files once more
    blobs = sorted((caches / "layers/blobs").iterdir())
    assert blobs and all(os.stat(b).st_nlink == 3 for b in blobs)
    st = Store(root)
    try:
        st.gc()
        assert sorted((caches / "layers/blobs").iterdir()) == blobs  # still linked from outputs
        shutil.rmtree(tmp_path / "kept")
        shutil.rmtree(tmp_path / "gone")
        st.gc()
        assert list((caches / "layers/blobs").iterdir()) == []
    finally:
        st.close()
    # Records whose blobs are gone are misses: the next build compresses again, same bytes.
    log = _build(node, deps, tmp_path / "again", caches)
    assert REUSED not in log and "is gone" in log
    assert (tmp_path / "again/index.json").read_bytes() == (Path(demo_runs["a"]["output"]) / "index.json").read_bytes()
