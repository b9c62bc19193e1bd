"""The demo stack realised for real: sandboxed nvcc, python-wheel builds, patches, both platforms."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, run_planner

pytestmark = pytest.mark.slow


def _by_id(result: dict) -> dict:
    return {n["id"]: n for n in result["nodes"]}


def test_two_stores_two_conditions_same_digests(demo_runs: dict) -> None:
    a, b = _by_id(demo_runs["a"]), _by_id(demo_runs["b"])
    assert a.keys() == b.keys()
    assert len(a) >= 9
    for nid in a:
        assert a[nid]["action"] == "built", nid
        assert a[nid]["key"] == b[nid]["key"], nid
        assert a[nid]["digest"] == b[nid]["digest"], f"{nid} differs between the two realises"
    # The stores are at different paths: outputs must not depend on where the store is.
    assert str(demo_runs["store_a"]) not in json.dumps(demo_runs["b"])


def test_variants_expand_only_where_used(demo_runs: dict) -> None:
    nodes = _by_id(demo_runs["a"])
    names = sorted(n["name"] for n in nodes.values())
    # Pure-Python wheels are one node for every platform and CUDA variant; the kernel is
    # one node per platform x arch list (2 x 2); the toolkit one per host.
    assert names.count("slime-mini") == 1
    assert names.count("sglang-mini") == 1
    assert names.count("six") == 1
    assert names.count("int4qat") == 4
    assert names.count("cuda") == 1
    assert names.count("buildroot") == 1  # once per build platform, whatever the target platforms


def test_realise_check_passes(demo_runs: dict) -> None:
    proc = run_planner("--store", str(demo_runs["store_a"]), "realise", "demo", "--check", "--json", "-j", "2")
    checks = json.loads(proc.stdout)["checks"]
    assert checks and all(c["ok"] for c in checks), checks


def test_noop_realise_builds_nothing(demo_runs: dict) -> None:
    proc = run_planner("--store", str(demo_runs["store_a"]), "realise", "demo", "--json")
    out = json.loads(proc.stdout)
    assert {n["action"] for n in out["nodes"]} == {"reused"}
    assert out["output"] == demo_runs["a"]["output"] and out["digest"] == demo_runs["a"]["digest"]
    # The plan cache answered: a planned realise records a run, the fast path records none.
    assert out["run"] is None


_IMPORTED = ("import runpy, sys\n"
             "sys.argv = ['planner', '--store', sys.argv[1], 'realise', 'demo']\n"
             "try:\n"
             "    runpy.run_module('planner.cli', run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    assert not e.code, e.code\n"
             "heavy = ('planner.recipes', 'planner.graph', 'planner.realise', 'networkx', 'httpx', 'rich')\n"
             "print('imported:' + ''.join(' ' + m for m in heavy if m in sys.modules))\n")


def test_noop_realise_takes_the_fast_path(demo_runs: dict) -> None:
    """Nothing changed: the answer comes without loading recipes or planning (the plan cache)."""
    proc = subprocess.run([sys.executable, "-c", _IMPORTED, str(demo_runs["store_a"])], capture_output=True,
                          text=True, cwd=REPO, check=True)
    lines = proc.stdout.splitlines()
    assert demo_runs["a"]["output"] in lines
    assert lines[-1] == "imported:", proc.stdout


def _wheel(store: Path, node: dict) -> Path:
    wheels = list(Path(node["path"]).glob("*.whl"))
    assert len(wheels) == 1, node
    return wheels[0]


def test_patches_take_effect(demo_runs: dict, tmp_path: Path) -> None:
    nodes = _by_id(demo_runs["a"])
    for name in ("sglang-mini", "megatron-mini"):
        with zipfile.ZipFile(_wheel(demo_runs["store_a"], nodes[name])) as zf:
            zf.extractall(tmp_path / "site")
    code = ("import sglang_mini, megatron_mini; "
            "assert 'memory-release' in sglang_mini.features(); assert sglang_mini.MAX_BATCH_TOKENS == 8192; "
            "assert megatron_mini.PATCHED_BY == 'slime'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "site", capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_wheels_are_normalised(demo_runs: dict) -> None:
    for node in demo_runs["a"]["nodes"]:
        if node["name"] in ("cuda", "base", "image", "buildroot"):
            continue
        with zipfile.ZipFile(_wheel(demo_runs["store_a"], node)) as zf:
            infos = zf.infolist()
            assert {i.date_time for i in infos} == {(2026, 2, 25, 12, 20, 58)}, node["id"]
            names = [i.filename for i in infos]
            assert names[-1].endswith(".dist-info/RECORD")
            assert not any(n.endswith(".pyc") for n in names)
            for i in infos:
                assert (i.external_attr >> 16) in (0o100644, 0o100755)
            blob = b"".join(zf.read(i) for i in infos)
            assert b"/build/" not in blob.replace(b"/build/src", b""), node["id"]
            assert str(demo_runs["store_a"]).encode() not in blob


def _so(node: dict, tmp: Path) -> Path:
    with zipfile.ZipFile(next(Path(node["path"]).glob("*.whl"))) as zf:
        zf.extract("int4qat/_int4qat.so", tmp)
    return tmp / "int4qat/_int4qat.so"


@pytest.mark.parametrize("platform,machine", [("linux/amd64", 62), ("linux/arm64", 183)])
def test_kernel_is_an_elf_of_its_platform(demo_runs: dict, tmp_path: Path, platform: str, machine: int,
                                          cuobjdump: Path) -> None:
    node = next(n for n in demo_runs["a"]["nodes"]
                if n["name"] == "int4qat" and n["variant"].startswith(platform) and "sm_90a+sm_100a" in n["variant"])
    so = _so(node, tmp_path)
    data = so.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert int.from_bytes(data[18:20], "little") == machine
    listing = subprocess.run([str(cuobjdump), "--list-elf", str(so)], capture_output=True, text=True,
                             check=True).stdout
    assert "sm_90a" in listing and "sm_100a" in listing, listing


def test_patch_that_no_longer_applies_names_the_hunk(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    for sub in ("recipes", "patches", "lockfiles"):
        shutil.copytree(REPO / sub, proj / sub)
    src = proj / "recipes/demo/src/sglang-mini/sglang_mini/__init__.py"
    src.write_text(src.read_text().replace("MAX_BATCH_TOKENS = 4096", "MAX_BATCH_TOKENS = 1024"))
    store = tmp_path / "store"
    run_planner("--root", str(proj), "--store", str(store), "lock", "demo")
    proc = run_planner("--root", str(proj), "--store", str(store), "realise", "demo", "--target", "sglang-mini",
                       check=False)
    assert proc.returncode != 0
    assert "patch sglang-mini.patch does not apply: hunk #1 of sglang_mini/__init__.py FAILED at line 2" \
        in proc.stderr, proc.stderr
    assert not any(p.name.endswith("-sglang-mini-0.5.9") for p in store.iterdir())


def test_readme_publishes_the_demo_image_digest(demo_runs: dict) -> None:
    """Every fresh CI machine re-verifies the digest the README promises for any host."""
    import re

    text = (REPO / "README.md").read_text()
    published = re.search(r"The demo's image index digest.*?\n\n\s+(sha256:[0-9a-f]{64})", text, re.S)
    assert published, "README.md no longer publishes the demo's image index digest"
    assert demo_runs["a"]["digest"] == demo_runs["b"]["digest"] == published.group(1)


def test_every_sandboxed_node_runs_in_the_build_root(demo_runs: dict) -> None:
    """No host package in any key; `planner show` names the build root and its output digest."""
    from planner import lock as lockmod
    from planner.graph import BUILD_ROOT_MOUNT, BUILTIN_BUILDERS, plan
    from planner.host import detect_host
    from planner.recipes import load_set

    rs = load_set(REPO, "demo")
    p = plan(rs, lockmod.read(rs.lockfile), detect_host())
    root_digest = _by_id(demo_runs["a"])["buildroot[host linux/amd64]"]["digest"]
    sandboxed = [n for n in p.nodes.values() if n.builder not in BUILTIN_BUILDERS and n.name != "base-probe"]
    assert {n.builder for n in sandboxed} >= {"python-wheel", "cuda-wheel"}
    for n in [*sandboxed, *(n for n in p.nodes.values() if n.builder == "oci-image")]:
        assert n.preimage.host is None, n.id
        assert p.nodes[n.deps[BUILD_ROOT_MOUNT]].name == "buildroot", n.id
        shown = run_planner("--store", str(demo_runs["store_a"]), "show", n.id, "--set", "demo").stdout
        assert f"output {root_digest}" in shown, shown
        shown_pre = json.loads("\n".join(l for l in shown.splitlines() if not l.startswith("#")))
        assert "host" not in shown_pre and shown_pre["deps"][BUILD_ROOT_MOUNT] == p.nodes[n.deps[BUILD_ROOT_MOUNT]].key


def test_layers_are_compressed_with_the_build_roots_zlib(demo_runs: dict) -> None:
    provenance = json.dumps([json.loads(p.read_text()) for p in
                             (Path(demo_runs["a"]["output"]) / "attestations").glob("*.json")])
    assert "-build-root:6:hdr1" in provenance
