"""The demo image for real: skopeo and umoci read it, both platforms run it (arm64 under qemu),
two realises agree on its digest, `planner push` and `planner export` ship it, a change to the
top package re-ships only the top layer, and the attestations sit beside the layout.

Uses the session fixture `demo_runs` (tests/conftest.py): the demo realised into two stores
under different conditions. Nothing here realises the demo from scratch again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import attrs
import pytest

from planner.errors import BuildError
from planner.builders.image import preimage_extras, requires_problems
from planner.oci.descriptor import INDEX_TYPES, MANIFEST_TYPES, MEDIA_INDEX
from planner.oci.layer import LayerSource, write_layer
from planner.oci.layout import read_layout
from planner.oci.wheels import install_wheel
from tests.support.registry import registry  # noqa: F401  (session fixture)

from .conftest import REPO, planner_cmd, run_planner

pytestmark = pytest.mark.slow

VARIANTS = {"default": "sm_90a,sm_100a", "sm100a": "sm_100a"}
PLATFORMS = ("linux-amd64", "linux-arm64")
GROUPS = [["six"], ["int4qat"], ["sglang-mini", "megatron-mini"], ["slime-mini"]]
IMPORT = "import json, slime_mini, int4qat; print(json.dumps(slime_mini.describe(), sort_keys=True))"


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def _chroot() -> str:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    exe = shutil.which("chroot") or shutil.which("chroot", path="/usr/sbin:/sbin")
    if exe is None:
        pytest.skip("chroot is not installed")
    return exe


def _layout(run: dict) -> Path:
    assert run["output"], run
    return Path(run["output"])


def _layers_by_tag(layout: Path) -> dict[str, list[str]]:
    lay = read_layout(layout)
    out = {}
    for d in lay.manifests:
        if d.media_type in MANIFEST_TYPES:
            out[d.annotation("org.opencontainers.image.ref.name")] = [
                x["digest"] for x in lay.read_json(d)["layers"]]
    return out


def _node(run: dict, name: str, variant_part: str = "") -> dict:
    found = [n for n in run["nodes"] if n["name"] == name and variant_part in n["variant"]]
    assert found, (name, variant_part)
    return found[0]


def _wheels(run: dict) -> list[Path]:
    out = []
    for n in run["nodes"]:
        if n["name"] in {r for g in GROUPS for r in g}:
            out.extend(sorted(Path(n["path"]).glob("*.whl")))
    return out


# ---------------------------------------------------------------------------------------------
# Structure and reproducibility


def test_two_realises_give_the_same_image(demo_runs: dict) -> None:
    a, b = demo_runs["a"], demo_runs["b"]
    assert a["digest"] and a["digest"].startswith("sha256:")
    assert a["digest"] == b["digest"]
    la, lb = _layout(a), _layout(b)
    assert (la / "index.json").read_bytes() == (lb / "index.json").read_bytes()
    assert sorted(p.name for p in (la / "blobs/sha256").iterdir()) == \
        sorted(p.name for p in (lb / "blobs/sha256").iterdir())
    for f in ("sbom.spdx.json", "provenance.json"):
        assert (la / "attestations" / f).read_bytes() == (lb / "attestations" / f).read_bytes(), f
    # What realise reports is the default variant's index.
    assert read_layout(la).resolve("default").digest == a["digest"]


def test_layout_tags_and_layer_sharing(demo_runs: dict) -> None:
    layout = _layout(demo_runs["a"])
    lay = read_layout(layout)
    assert set(lay.tags()) == set(VARIANTS) | {f"{v}-{p}" for v in VARIANTS for p in PLATFORMS}
    layers = _layers_by_tag(layout)
    assert all(len(v) == 1 + len(GROUPS) for v in layers.values())
    tags = sorted(layers)
    # Pure-Python groups: one blob everywhere.
    for i in (1, 3, 4):
        assert len({layers[t][i] for t in tags}) == 1, GROUPS[i - 1]
    # The base: one per platform, shared by the variants.
    for p in PLATFORMS:
        assert layers[f"default-{p}"][0] == layers[f"sm100a-{p}"][0]
    assert layers["default-linux-amd64"][0] != layers["default-linux-arm64"][0]
    # The kernel: one per platform x arch list.
    assert len({layers[t][2] for t in tags}) == 4
    # Only what index.json reaches is in blobs/: the attestations are not blobs.
    reachable = {d.hex for top in lay.manifests for d in lay.walk(top)}
    assert {p.name for p in (layout / "blobs/sha256").iterdir()} == reachable
    # Manifests carry the platform and CUDA annotations; configs the recipe's runtime settings.
    for v, archs in VARIANTS.items():
        index = lay.read_json(lay.resolve(v))
        assert index["annotations"]["dev.planner.cuda.archs"] == archs
        for m in index["manifests"]:
            assert m["annotations"] == {"dev.planner.cuda.archs": archs, "dev.planner.cuda.variant": v}
            cfg = lay.read_json(lay.children(lay.resolve(f"{v}-linux-{m['platform']['architecture']}"))[0])
            assert cfg["created"] == "2026-02-25T12:20:58Z"
            assert "PATH=/usr/local/bin:/usr/bin:/bin" in cfg["config"]["Env"]
            assert cfg["config"]["Cmd"] == ["/usr/local/bin/slime-mini"]
            assert cfg["config"]["Labels"]["org.opencontainers.image.title"] == "slime-mini"
            assert len(cfg["history"]) == len(cfg["rootfs"]["diff_ids"]) == 5


def test_wheel_layer_staging_is_deterministic(demo_runs: dict, tmp_path: Path) -> None:
    """Re-stage the shared groups elsewhere, under another umask: the same blobs as the image's."""
    run = demo_runs["a"]
    layers = _layers_by_tag(_layout(run))["default-linux-amd64"]
    old = os.umask(0o077)
    try:
        for i, group in ((1, ["six"]), (3, ["sglang-mini", "megatron-mini"]), (4, ["slime-mini"])):
            root = tmp_path / f"deeper/stage-{i}/root"
            root.mkdir(parents=True)
            for name in group:
                for whl in sorted(Path(_node(run, name)["path"]).glob("*.whl")):
                    install_wheel(whl, root)
            layer = write_layer([LayerSource(root)], tmp_path / "blobs", source_date_epoch=1772022058)
            assert layer.descriptor.digest == layers[i], group
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------------------------
# Real tools


def test_skopeo_inspects_both_platforms_and_variants(demo_runs: dict) -> None:
    _need("skopeo")
    layout = _layout(demo_runs["a"])
    lay = read_layout(layout)
    for v, archs in VARIANTS.items():
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:{v}"], capture_output=True,
                             check=True).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == lay.resolve(v).digest
        doc = json.loads(raw)
        assert doc["mediaType"] == MEDIA_INDEX
        assert sorted(m["platform"]["architecture"] for m in doc["manifests"]) == ["amd64", "arm64"]
        for p in PLATFORMS:
            out = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{layout}:{v}-{p}"], capture_output=True,
                                            check=True).stdout)
            assert out["Architecture"] == p.split("-")[1] and out["Os"] == "linux"
            assert out["Created"] == "2026-02-25T12:20:58Z"
            assert len(out["Layers"]) == 5


def _unpack(layout: Path, tag: str, bundle: Path) -> Path:
    _need("umoci")
    cmd = ["umoci", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    subprocess.run(cmd + ["--image", f"{layout}:{tag}", str(bundle)], check=True, capture_output=True)
    return bundle / "rootfs"


def _check_describe(stdout: str) -> None:
    got = json.loads(stdout)
    assert got["slime"] == "0.2.2" and got["int4qat"] == "0.1.0" and got["six"] == "1.16.0"
    assert "memory-release" in got["sglang_features"]  # the patched sglang-mini


def test_amd64_rootfs_runs_the_demo(demo_runs: dict, tmp_path: Path) -> None:
    chroot = _chroot()
    rootfs = _unpack(_layout(demo_runs["a"]), "default-linux-amd64", tmp_path / "bundle")
    proc = subprocess.run([chroot, str(rootfs), "/usr/bin/python3", "-c", IMPORT], capture_output=True, text=True,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    _check_describe(proc.stdout)
    # The image's Cmd: the console script installed from slime-mini's wheel.
    proc = subprocess.run([chroot, str(rootfs), "/usr/local/bin/slime-mini"], capture_output=True, text=True,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    _check_describe(proc.stdout)
    so = rootfs / "usr/local/lib/python3.11/dist-packages/int4qat/_int4qat.so"
    assert int.from_bytes(so.read_bytes()[18:20], "little") == 62  # EM_X86_64


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_arm64_rootfs_runs_the_demo_under_qemu(demo_runs: dict, tmp_path: Path, variant: str) -> None:
    chroot = _chroot()
    _need("qemu-aarch64-static")
    rootfs = _unpack(_layout(demo_runs["a"]), f"{variant}-linux-arm64", tmp_path / "bundle")
    shutil.copy2(shutil.which("qemu-aarch64-static"), rootfs / "usr/bin/qemu-aarch64-static")
    code = IMPORT.replace("print(", "import platform; assert platform.machine() == 'aarch64', platform.machine(); print(")
    proc = subprocess.run([chroot, str(rootfs), "/usr/bin/qemu-aarch64-static", "/usr/bin/python3", "-c", code],
                          capture_output=True, text=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    _check_describe(proc.stdout)
    so = rootfs / "usr/local/lib/python3.11/dist-packages/int4qat/_int4qat.so"
    assert int.from_bytes(so.read_bytes()[18:20], "little") == 183  # EM_AARCH64


# ---------------------------------------------------------------------------------------------
# push and export


def test_push_keeps_the_digest(demo_runs: dict, registry: str) -> None:  # noqa: F811
    _need("skopeo")
    store = str(demo_runs["store_a"])
    proc = run_planner("--store", store, "push", "demo", f"{registry}/demo:default", "--plain-http")
    ref, digest = proc.stdout.split()[:2]
    assert ref == f"{registry}/demo:default" and digest == demo_runs["a"]["digest"]
    assert "blobs uploaded" in proc.stderr
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry}/demo:default"],
                         capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--override-arch", "arm64",
                          f"docker://{registry}/demo:default"], capture_output=True, check=True).stdout
    assert json.loads(out)["Architecture"] == "arm64"
    # Again: everything is there already. Without a tag, every variant goes under its name.
    again = run_planner("--store", store, "push", "demo", f"{registry}/demo:default", "--plain-http")
    assert "0 blobs uploaded" in again.stderr
    both = run_planner("--store", store, "push", "demo", f"{registry}/demo", "--plain-http")
    pushed = dict(line.split()[:2] for line in both.stdout.splitlines())
    sm100a = read_layout(_layout(demo_runs["a"])).resolve("sm100a").digest
    assert pushed == {f"{registry}/demo:default": digest, f"{registry}/demo:sm100a": sm100a}
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry}/demo:sm100a"],
                         capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == sm100a
    bad = run_planner("--store", store, "push", "demo", f"{registry}/demo:x", "--variant", "nope", "--plain-http",
                      check=False)
    assert bad.returncode != 0 and "no CUDA variant 'nope'" in bad.stderr


def test_export_gives_an_oci_archive(demo_runs: dict, tmp_path: Path) -> None:
    _need("skopeo")
    store = str(demo_runs["store_a"])
    full = tmp_path / "image.tar"
    run_planner("--store", store, "export", "demo", str(full))
    for tag, arch in (("default-linux-amd64", "amd64"), ("sm100a-linux-arm64", "arm64")):
        out = subprocess.run(["skopeo", "inspect", f"oci-archive:{full}:{tag}"], capture_output=True, check=True)
        assert json.loads(out.stdout)["Architecture"] == arch
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{full}:default"], capture_output=True,
                         check=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == demo_runs["a"]["digest"]
    again = tmp_path / "again.tar"
    run_planner("--store", store, "export", "demo", str(again))
    assert again.read_bytes() == full.read_bytes()
    one = tmp_path / "sm100a.tar"
    run_planner("--store", store, "export", "demo", str(one), "--variant", "sm100a")
    # One image in it: read without naming it (skopeo asked which when platform tags stood beside it).
    for ref in (f"oci-archive:{one}", f"oci-archive:{one}:sm100a"):
        out = subprocess.run(["skopeo", "inspect", "--override-arch", "arm64", ref], capture_output=True, check=True)
        assert json.loads(out.stdout)["Architecture"] == "arm64"
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{one}"], capture_output=True, check=True).stdout
    assert json.loads(raw)["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert subprocess.run(["skopeo", "inspect", f"oci-archive:{one}:default"], capture_output=True).returncode != 0
    assert one.stat().st_size < full.stat().st_size


def test_export_to_standard_output_and_never_through_a_link_or_fifo(demo_runs: dict, tmp_path: Path) -> None:
    """`export SET -` streams the archive (the same bytes as to a file); an OUT that is a link
    or a FIFO is refused at once (a folder, by the option's own check), what it names untouched (before: replaced by a
    regular file, as root even /dev/stdout)."""
    store = str(demo_runs["store_a"])
    for extra in ([], ["--variant", "sm100a"]):
        to_file = tmp_path / "file.tar"
        run_planner("--store", store, "export", "demo", str(to_file), *extra)
        streamed = subprocess.run(planner_cmd("--store", store, "export", "demo", "-", *extra), cwd=REPO,
                                  capture_output=True, check=True, timeout=300)
        assert streamed.stdout == to_file.read_bytes()
    target = tmp_path / "target.tar"
    target.write_bytes(b"kept")
    (tmp_path / "link.tar").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.tar")
    for name, kind in (("link.tar", "a symbolic link"), ("fifo.tar", "a fifo")):
        bad = subprocess.run(planner_cmd("--store", store, "export", "demo", str(tmp_path / name)), cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and f"is {kind}, not a file an archive may replace" in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert target.read_bytes() == b"kept" and (tmp_path / "link.tar").is_symlink()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.tar").st_mode)


# ---------------------------------------------------------------------------------------------
# A change to the top package


def test_top_package_change_reships_only_the_top_layer(demo_runs: dict, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    for sub in ("recipes", "patches", "lockfiles"):
        shutil.copytree(REPO / sub, proj / sub)
    src = proj / "recipes/demo/src/slime-mini/slime_mini/__init__.py"
    src.write_text(src.read_text() + "\n\nCHANGED = True\n")
    store = tmp_path / "store"
    subprocess.run(["cp", "-a", str(demo_runs["store_a"]), str(store)], check=True)
    (store / "plans").exists() and shutil.rmtree(store / "plans")
    lock = run_planner("--root", str(proj), "--store", str(store), "lock", "demo")
    assert "pinned slime-mini/source" in lock.stdout, lock.stdout
    res = json.loads(run_planner("--root", str(proj), "--store", str(store), "realise", "demo", "--json").stdout)
    built = sorted(n["name"] for n in res["nodes"] if n["action"] == "built")
    assert built == ["image", "slime-mini"], built
    assert res["digest"] != demo_runs["a"]["digest"]
    old, new = _layers_by_tag(_layout(demo_runs["a"])), _layers_by_tag(Path(res["output"]))
    assert old.keys() == new.keys()
    for tag in old:
        assert old[tag][:-1] == new[tag][:-1], tag
        assert old[tag][-1] != new[tag][-1], tag
    assert len({new[t][-1] for t in new}) == 1
    # New blobs: the top layer, plus the documents above it (4 configs, 4 manifests, 2 indexes).
    a_blobs = {p.name for p in (_layout(demo_runs["a"]) / "blobs/sha256").iterdir()}
    b_blobs = {p.name for p in (Path(res["output"]) / "blobs/sha256").iterdir()}
    assert len(b_blobs - a_blobs) == 1 + 4 + 4 + 2


# ---------------------------------------------------------------------------------------------
# Attestations


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_attestations_beside_the_layout(demo_runs: dict) -> None:
    run = demo_runs["a"]
    layout = _layout(run)
    sbom_path, prov_path = layout / "attestations/sbom.spdx.json", layout / "attestations/provenance.json"
    sbom, prov = json.loads(sbom_path.read_text()), json.loads(prov_path.read_text())
    assert sbom["spdxVersion"] == "SPDX-2.3" and sbom["dataLicense"] == "CC0-1.0"
    assert sbom["creationInfo"]["created"] == "2026-02-25T12:20:58Z"
    files = {p.get("packageFileName") for p in sbom["packages"]}
    checks = {c["checksumValue"] for p in sbom["packages"] for c in p.get("checksums", [])}
    wheels = _wheels(run)
    assert len(wheels) == 8  # six, sglang, megatron, slime + int4qat for 2 platforms x 2 arch lists
    for whl in wheels:
        assert whl.name in files and _sha256(whl) in checks, whl.name
    from planner.recipes import load_set

    base = load_set(REPO, "demo").get("base")
    debs = {(p["name"], p["versionInfo"]) for p in sbom["packages"] if p["SPDXID"].startswith("SPDXRef-Deb-")}
    for src in base.inputs.values():
        assert src.name in {n for n, _ in debs}, src.name
    assert len(debs) >= len(base.inputs)
    lay = read_layout(layout)
    # Subjects: the index of each variant.
    assert prov["_type"] == "https://in-toto.io/Statement/v1"
    assert prov["predicateType"] == "https://slsa.dev/provenance/v1"
    assert {s["name"]: "sha256:" + s["digest"]["sha256"] for s in prov["subject"]} == \
        {f"image:{v}": lay.resolve(v).digest for v in VARIANTS}
    resolved = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {d["name"] for d in resolved if d.get("name", "").startswith("node:")} == \
        {f"node:{v}/{p}/{r}" for v in VARIANTS for p in PLATFORMS for r in ["base"] + [x for g in GROUPS for x in g]} \
        | {"node:buildroot"}  # the build root: its pinned zlib compressed the layers
    # Not part of the image: no descriptor anywhere names them, and no store path leaks in.
    digests = {d.digest for top in lay.manifests for d in lay.walk(top)}
    for f in (sbom_path, prov_path):
        assert "sha256:" + _sha256(f) not in digests
        assert str(demo_runs["store_a"]) not in f.read_text()
    for d in lay.manifests:
        if d.media_type in INDEX_TYPES | MANIFEST_TYPES:
            assert "attestations" not in lay.read_blob(d).decode()


# ---------------------------------------------------------------------------------------------
# The builder in-process: lock pins in the preimage, the requires check


def _image_inputs(store_root: Path):
    """The demo image's node (as planned now) and its dependencies' entries from a store."""
    from planner import lock as lockmod
    from planner.graph import plan as make_plan
    from planner.host import detect_host
    from planner.recipes import load_set
    from planner.store import Store

    rs = load_set(REPO, "demo")
    lock = lockmod.read(rs.lockfile)
    plan = make_plan(rs, lock, detect_host(True))
    node = plan.nodes[plan.targets[0]]
    store = Store(store_root)
    try:
        deps = {}
        for mount, nid in node.deps.items():
            r = store.realisation(plan.nodes[nid].key)
            assert r is not None, nid
            deps[mount] = store.lookup(r.build_key)
    finally:
        store.close()
    return rs, lock, node, deps


def _build(node, deps, out: Path, **pre_changes):
    from planner.derivation import BuildRequest
    from planner.builders.image import build_image

    pre = attrs.evolve(node.preimage, image=attrs.evolve(node.preimage.image, **pre_changes))
    node = attrs.evolve(node, preimage=pre, key=pre.key())
    out.mkdir(parents=True)
    log = io.StringIO()
    build_image(node, BuildRequest(node=node, inputs={}, deps=deps), out, log)
    return out


def test_lock_pins_reach_the_attestations_not_the_image(demo_runs: dict, tmp_path: Path) -> None:
    rs, lock, node, deps = _image_inputs(demo_runs["store_a"])
    extras = preimage_extras(rs, lock, rs.get(node.recipe))
    out = _build(node, deps, tmp_path / "out", **extras)
    realised = read_layout(_layout(demo_runs["a"]))
    ours = read_layout(out)
    assert {v: ours.resolve(v).digest for v in VARIANTS} == {v: realised.resolve(v).digest for v in VARIANTS}
    sbom = json.loads((out / "attestations/sbom.spdx.json").read_text())
    prov = json.loads((out / "attestations/provenance.json").read_text())
    by_name: dict[str, list[dict]] = {}
    for p in sbom["packages"]:
        by_name.setdefault(p["name"], []).append(p)
    in_image = {n for g in rs.get(node.recipe).image.layers for n in g} | {"base", "cuda"}
    for id_, li in lock.inputs.items():
        if id_.split("/")[0] not in in_image:
            continue  # recipes the image is not built from (base-probe) are not in its SBOM
        if li.kind == "apt":
            pkg = li.origin.split("=")[0]
            for plat, pin in li.pins.items():
                arch = plat.split("/")[1]
                got = [p for p in by_name[pkg] if p["SPDXID"].endswith("-" + arch)]
                assert got and got[0]["checksums"] == [{"algorithm": "SHA256", "checksumValue": pin.sha256}], id_
                assert got[0]["packageFileName"] == pin.filename
        else:
            assert id_ in by_name, id_  # sources, patches, pypi inputs, the CUDA toolkit wheels
    patch = by_name["sglang-mini/patch/sglang-mini.patch"][0]
    assert patch["checksums"][0]["checksumValue"] == lock.inputs["sglang-mini/patch/sglang-mini.patch"].pins["any"].sha256
    rels = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in sbom["relationships"]}
    slime_wheel = next(p["SPDXID"] for p in by_name["slime-mini"] if p["SPDXID"].startswith("SPDXRef-Wheel-"))
    slime_src = by_name["slime-mini/source"][0]["SPDXID"]
    assert (slime_wheel, "GENERATED_FROM", slime_src) in rels
    resolved = {d.get("uri"): d for d in prov["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert resolved["planner:lockfiles/demo.lock"]["digest"]["sha256"] == _sha256(REPO / "lockfiles/demo.lock")
    assert resolved["planner:recipes/demo"]["digest"]["blake3"] == lock.recipes.split(":")[1]
    assert prov["predicate"]["buildDefinition"]["internalParameters"]["planner"] == extras["attest"]["planner"]


def test_requires_check(demo_runs: dict, tmp_path: Path) -> None:
    assert requires_problems(GROUPS, {"slime-mini": ["sglang-mini", "megatron-mini", "int4qat", "six"],
                                      "megatron-mini": ["int4qat"]}) == []
    problems = requires_problems([["slime-mini"], ["megatron-mini"]], {"slime-mini": ["megatron-mini"],
                                                                      "megatron-mini": ["int4qat"]})
    assert problems == [
        "slime-mini (layer group 1) needs megatron-mini, which is in layer group 2, above it",
        "slime-mini (layer group 1) needs int4qat (through megatron-mini), which is in no layer group",
        "megatron-mini (layer group 2) needs int4qat, which is in no layer group",
    ]
    assert requires_problems([["six"], ["six"]], {}) == ["six is listed in layer groups 1 and 2"]

    rs, lock, node, deps = _image_inputs(demo_runs["store_a"])
    extras = preimage_extras(rs, lock, rs.get(node.recipe))
    # With the recipes' `requires` in the preimage: a missing package is named.
    image = dict(node.preimage.image.image, layers=[["six"], ["sglang-mini", "megatron-mini"], ["slime-mini"]])
    with pytest.raises(BuildError, match=r"slime-mini \(layer group 3\) needs int4qat, which is in no layer group"):
        _build(node, deps, tmp_path / "a", image=image, **extras)
    # Without them (the wheels' Requires-Dist): a package above its dependent is named.
    image = dict(node.preimage.image.image, layers=[["six"], ["slime-mini"], ["int4qat"], ["sglang-mini", "megatron-mini"]])
    pre = attrs.evolve(node.preimage, image=attrs.evolve(node.preimage.image, requires=None))
    with pytest.raises(BuildError, match=r"slime-mini \(layer group 2\) needs int4qat, which is in layer group 3"):
        _build(attrs.evolve(node, preimage=pre), deps, tmp_path / "b", image=image)
