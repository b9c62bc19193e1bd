"""The real slime recipe set (recipes/slime/, lockfiles/slime.lock): it loads, expands to the
node counts the reference stack implies, is stable across processes, asks for no network inside
any build, and its PyPI pins verify against the index.

GitHub and container registries are out of reach here, so the git inputs, the two patches
fetched from slime's repository, the base image and the Ubuntu packages are `unlocked` in the
committed lock (the git ones carry their prefetched commits and tree hashes); planning works
offline and marks them, and a dry-run realise stops before the first of them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import attrs
import pytest

from planner import lock as lockmod
from planner.builders.cuda import normalise_archs
from planner.graph import plan
from planner.derivation import BUILD_ROOT_MOUNT
from planner.host import HostInfo
from planner.lock import ANY
from planner.recipes import load_set

REPO = Path(__file__).resolve().parent.parent
HOST = HostInfo(platform="linux/amd64", packages={})
PLATFORMS = ("linux/amd64", "linux/arm64")

# Nodes per recipe when the image is planned for 2 platforms x 2 CUDA variants, with set.toml's
# profile "pins" (the base built from pins, for both platforms). The profile leaves out what does
# not fit that base or has no source here.
EXPECTED_NODES = {
    "pins-base": 2,
    "pins-cuda": 2,
    # the base's run-time layer (ldconfig and the linker cache), outside every build's key
    "pins-runtime": 2,
    "pins-runtime-debs": 2,
    "transformer-engine-cu13": 2,  # the core wheel differs per platform
    "transformer-engine-torch": 2,  # built in the rootfs: per platform, no CUDA axis
    "apex": 4,  # platform x CUDA variant
    "int4-qat": 4,  # platform x CUDA variant
    "sglang": 1,  # pure Python: shared by both platforms
    "megatron-lm": 2,  # pybind11 helper compiled in the rootfs
    "flash-linear-attention": 1,
    "nvidia-modelopt": 1,
    # pure Python, from the five paths of its commit the wheel is made of (the snapshot here
    # lacks a PDF outside them)
    "mbridge": 1,
    "tilelang": 2,
    "torch-memory-saver": 2,
    # set.toml's profile picks the PyPI closure resolved for the chosen base: with pins-base,
    # the CPython 3.11 one, resolved and locked for both platforms.
    "slime-requirements-cp311": 1,  # pure-Python closure: one node, one shared layer blob
    "slime-requirements-native-cp311": 2,
    # SGLang v0.5.9's own run-time closure, below slime's (the registry base has it installed):
    # pure wheels, binary wheels (one node per platform), and torchvision for the base's torch.
    "sglang-requirements-cp311": 1,
    "sglang-requirements-native-cp311": 2,
    "sglang-requirements-torch-cp311": 2,
    "slime": 2,
    "antlr4-python3-runtime": 1,  # pure Python, built from PyPI's only file, an sdist
    "pylatexenc": 1,  # pure Python, built from its newest final release, an sdist
    "slime-source": 1,  # the checkouts users run scripts from, as file trees
    "megatron-lm-source": 1,
    "image": 1,
    "buildroot": 1,  # set.toml's build-root: once per build platform (this machine's)
}
# What profile "pins" leaves out (set.toml says why, line by line) and "registry" keeps.
LEFT_OUT = {"apt-tools": 2, "transformer-engine": 2, "megatron-bridge": 1, "nvidia-cudnn-cu12": 2,
            "numpy": 2, "slime-requirements": 1, "slime-requirements-native": 2}
TOTAL_NODES = sum(EXPECTED_NODES.values())
CUDA_RECIPES = ("apex", "int4-qat")
ROOTFS_RECIPES = ("transformer-engine-torch", "apex", "int4-qat", "megatron-lm", "torch-memory-saver", "slime")
# Inputs that cannot be reached from the project's machines (see docs/slime.md).
UNREACHABLE_KINDS = ("git", "image", "apt")


@pytest.fixture(scope="module")
def rs():
    return load_set(REPO, "slime")


@pytest.fixture(scope="module")
def lock(rs):
    return lockmod.read(rs.lockfile)


@pytest.fixture(scope="module")
def the_plan(rs, lock):
    return plan(rs, lock, HOST)


@pytest.fixture(scope="module")
def seed_plan(lock):
    """The seed's image: profile "registry" (the registry base, every component)."""
    return plan(load_set(REPO, "slime", profile="registry"), lock, HOST)


# -- loading and expansion ---------------------------------------------------------------------


def test_set_loads_with_the_reference_pins(rs):
    cfg = rs.config
    assert cfg.target == "image"
    assert cfg.platforms == list(PLATFORMS)
    assert cfg.source_date_epoch == 1772022058  # 2026-02-25T20:20:58+08:00, slime 7014942c
    # The reference table: amd64 8.0 8.9 9.0 10.0 12.0+PTX, arm64 9.0 10.0 12.0+PTX, + int4_qat's sm_90a.
    assert normalise_archs(cfg.archs("default", "linux/amd64")) == ["sm_80", "sm_89", "sm_90", "sm_90a", "sm_100",
                                                                    "sm_120+PTX"]
    assert normalise_archs(cfg.archs("default", "linux/arm64")) == ["sm_90", "sm_90a", "sm_100", "sm_120+PTX"]
    assert normalise_archs(cfg.archs("sm100a", "linux/arm64")) == ["sm_100a"]
    assert sorted(rs.recipes) == sorted([*EXPECTED_NODES, *LEFT_OUT, "sglang-base", "image-core", "image-core-arm64"])
    assert cfg.profile == "pins" and set(cfg.profiles) == {"pins", "registry"}
    assert rs.config.build_root == "buildroot"
    pins = {
        "apex": "10417aceddd7d5d05d7cbf7b0fc2daad1105f8b4",
        "int4-qat": "7014942c17625732dbe9239c0aa9d8e7d7265ccc",
        "megatron-lm": "3714d81d418c9f1bca4594fc35f9e8289f652862",
        "mbridge": "89eb10887887bc74853f89a4de258c0702932a1c",
        "torch-memory-saver": "dc6876905830430b5054325fa4211ff302169c6b",
        "megatron-bridge": "35b4ebfc486fb15dcc0273ceea804c3606be948a",
        "slime": "7014942c17625732dbe9239c0aa9d8e7d7265ccc",
    }
    for name, commit in pins.items():
        assert rs.get(name).source.kind == "git" and rs.get(name).source.rev == commit, name
    # SGLang v0.5.9 from its PyPI sdist (the repository is out of reach); slime's patch strips 2.
    sg = rs.get("sglang")
    assert (sg.source.kind, sg.source.name, sg.source.version, sg.source.dist) == ("pypi", "sglang", "0.5.9", "sdist")
    assert [p.strip for p in sg.patches] == [2, 2]
    assert rs.get("int4-qat").source.subdir == "slime/backends/megatron_utils/kernels/int4_qat"
    # Apex's two submodules feed only contrib extensions that `--cpp_ext --cuda_ext` does not build.
    assert not rs.get("apex").source.submodules
    assert not [i for i in rs.get("apex").inputs if i.startswith("source/sub/")]
    # Every git ref of the set is a full commit, never a tag or a branch (item 2).
    for r in rs.recipes.values():
        for name, src in r.all_sources().items():
            if src.kind == "git":
                assert re.fullmatch(r"[0-9a-f]{40}", src.rev or ""), f"{r.name}/{name}: {src.rev}"
    versions = {(s.name, s.version) for r in rs.recipes.values() for s in r.all_sources().values() if s.kind == "pypi"}
    for want in [("transformer_engine_cu12", "2.10.0"), ("flash-linear-attention", "0.4.1"), ("tilelang", "0.1.8"),
                 ("nvidia-cudnn-cu12", "9.16.0.29"), ("numpy", "1.26.4"), ("nvidia-modelopt", "0.41.0")]:
        assert want in versions
    assert rs.get("transformer-engine-torch").source.sha256 == (
        "71faff8e3def742553ad74b4e32d2d12e91be9acfb13d1699c89e1e18dd4ecd6")


def test_patches_are_fetched_by_hash_or_versioned_here(rs):
    sg = {p.label: p for p in rs.get("sglang").patches}
    assert sg["sglang.patch"].url.endswith("/7014942c17625732dbe9239c0aa9d8e7d7265ccc/docker/patch/latest/sglang.patch")
    assert sg["sglang.patch"].sha256 == "4b3f4b654db0fc3c96cb76a7d2a6159e4e69d5cbd4cf643b20fccbdaec8e583f"
    assert sg["sglang-drop-torch-pins.patch"].file == "patches/slime/sglang-drop-torch-pins.patch"
    mg = {p.label: p for p in rs.get("megatron-lm").patches}
    assert mg["megatron.patch"].sha256 == "58465ac5e4782f28cc41bec1ba76121547b7993a325b21540edc18ea79227878"
    assert [p.file for p in rs.get("slime").patches] == ["patches/slime/slime-torch-version.patch",
                                                         "patches/slime/slime-wheel-platform-tag.patch"]
    for r in rs.recipes.values():
        for p in r.patches:
            if p.file:
                text = (REPO / p.file).read_text()
                assert re.search(r"^--- a/.*\n\+\+\+ b/", text, re.M), p.file
                assert "regenerate" in text or "Generated against the real tree" in " ".join(text.split()), \
                    f"{p.file}: say whether it was generated against the real tree"


def test_every_recipe_says_what_it_fixes(rs):
    for r in rs.recipes.values():
        head = (REPO / r.file).read_text().split("\nname =")[0]
        assert head.startswith("#"), r.file
        assert re.search(r"\bitems? \d+", head), f"{r.file}: the top comment names the item(s) it fixes"


def test_node_counts_per_recipe(the_plan):
    counts = Counter(n.recipe for n in the_plan.nodes.values())
    assert dict(counts) == EXPECTED_NODES
    assert len(the_plan.nodes) == TOTAL_NODES == 46
    assert the_plan.targets == ("image",)


def test_profile_registry_plans_the_seeds_image(seed_plan):
    """One line of set.toml (`profile`) switches base and components: the registry profile's
    image has every component of the seed, on sglang-base, and the CUDA 12 TE core."""
    counts = Counter(n.recipe for n in seed_plan.nodes.values())
    want = {**EXPECTED_NODES, **LEFT_OUT, "sglang-base": 2}
    for pins_only in ("pins-base", "pins-cuda", "pins-runtime", "pins-runtime-debs", "transformer-engine-cu13",
                      "slime-requirements-cp311", "slime-requirements-native-cp311", "sglang-requirements-cp311",
                      "sglang-requirements-native-cp311", "sglang-requirements-torch-cp311"):
        del want[pins_only]
    assert dict(counts) == want
    for n in seed_plan.nodes.values():
        if n.recipe in ROOTFS_RECIPES:
            assert n.deps["rootfs"] == f"sglang-base[{n.variant.platform}]", n.id
    te_torch = [n for n in seed_plan.nodes.values() if n.recipe == "transformer-engine-torch"]
    assert {r for n in te_torch for r in n.requires} == {"transformer-engine"}


def test_profile_pins_leaves_out_only_requires_and_layers(rs):
    image = rs.get("image")
    layered = {name for group in image.image.layers for name in group}
    assert not layered & set(LEFT_OUT)
    assert "transformer-engine-cu13" in layered and image.image.base == "pins-base"
    assert "pins-runtime" in layered
    assert not set(rs.get("slime").requires) & set(LEFT_OUT)
    assert rs.get("transformer-engine-torch").requires == ["transformer-engine-cu13"]


def test_cuda_nodes_per_platform_and_arch_list(rs, the_plan):
    want = {(p, tuple(normalise_archs(rs.config.archs(v, p)))) for p in PLATFORMS for v in rs.config.cuda}
    for name in CUDA_RECIPES:
        got = {(n.variant.platform, n.variant.cuda) for n in the_plan.nodes.values() if n.recipe == name}
        assert got == want, name
    # Nothing else carries the CUDA axis: the arch list reaches only code that compiles for it.
    others = [n.id for n in the_plan.nodes.values() if n.recipe not in CUDA_RECIPES and n.variant.cuda is not None]
    assert others == []


@pytest.mark.parametrize("recipe", ["transformer-engine", "transformer-engine-cu13"])
def test_te_core_is_one_prebuilt_input_per_platform(rs, lock, the_plan, seed_plan, recipe):
    li = lock.inputs[f"{recipe}/core"]
    assert li.status == "locked" and set(li.pins) == set(PLATFORMS)
    names = {p: li.pins[p].filename for p in PLATFORMS}
    cuda = "cu13" if recipe.endswith("cu13") else "cu12"
    assert names["linux/amd64"] == f"transformer_engine_{cuda}-2.10.0-py3-none-manylinux_2_28_x86_64.whl"
    assert names["linux/arm64"] == f"transformer_engine_{cuda}-2.10.0-py3-none-manylinux_2_28_aarch64.whl"
    nodes = [n for n in (the_plan if cuda == "cu13" else seed_plan).nodes.values() if n.recipe == recipe]
    assert {n.variant.platform for n in nodes} == set(PLATFORMS)
    for n in nodes:
        assert n.builder == "prebuilt-wheel"
        assert n.inputs["core"].filename == names[n.variant.platform]
        assert n.inputs["meta"].filename == "transformer_engine-2.10.0-py3-none-any.whl"
    te_torch = [n for n in the_plan.nodes.values() if n.recipe == "transformer-engine-torch"]
    assert all(n.preimage.env["NVTE_PYTORCH_FORCE_BUILD"] == "TRUE" for n in te_torch)


def test_pure_python_wheels_are_shared_across_platforms(rs, lock, seed_plan, the_plan):
    for name in ("slime-requirements", "sglang", "mbridge", "megatron-bridge", "flash-linear-attention",
                 "nvidia-modelopt"):
        (node,) = [n for n in seed_plan.nodes.values() if n.recipe == name]
        assert node.variant.platform is None and node.variant.cuda is None, name
    for suffix in ("", "-cp311"):
        pure = rs.get("slime-requirements" + suffix)
        for name in pure.inputs:
            li = lock.inputs[f"slime-requirements{suffix}/{name}"]
            assert set(li.pins) == {ANY}, name
            assert li.pins[ANY].filename.endswith("-none-any.whl"), li.pins[ANY].filename
        native = rs.get("slime-requirements-native" + suffix)
        for name, src in native.inputs.items():
            li = lock.inputs[f"slime-requirements-native{suffix}/{name}"]
            assert set(li.pins) == {p for p in PLATFORMS if src.for_platform(p)}, name
    # The pure group is one layer blob for every manifest: same node in every image dependency.
    for plan_, name in ((seed_plan, "slime-requirements"), (the_plan, "slime-requirements-cp311")):
        image = plan_.nodes["image"]
        shared = {dep for mount, dep in image.deps.items() if mount.endswith("/" + name)}
        assert shared == {name}


def test_rootfs_builds_use_the_base_image(rs, the_plan):
    for name in ROOTFS_RECIPES:
        assert rs.get(name).build.rootfs == "pins-base", name  # set.toml: profile "pins"
        nodes = [n for n in the_plan.nodes.values() if n.recipe == name]
        assert {n.variant.platform for n in nodes} == set(PLATFORMS), name
        for n in nodes:
            assert n.deps["rootfs"] == f"pins-base[{n.variant.platform}]"
            assert n.id not in the_plan.blocked()
            assert not n.preimage.host


def test_the_base_from_pins_has_each_platforms_own_debs_and_wheels(the_plan):
    """pins-base and pins-cuda per platform: every .deb is that architecture's or `all`, every
    wheel that platform's or pure; the .debs that Debian names or ships per architecture (binutils'
    target package, libquadmath0, libhwasan0) are in the one platform's root filesystem only."""
    machine = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
    only = {"linux/amd64": {"binutils-x86-64-linux-gnu", "libquadmath0"},
            "linux/arm64": {"binutils-aarch64-linux-gnu", "libhwasan0"}}
    for platform in PLATFORMS:
        base = the_plan.nodes[f"pins-base[{platform}]"]
        debs = {i.filename.split("_")[0]: i.filename for i in base.inputs.values() if i.filename.endswith(".deb")}
        for name, filename in debs.items():
            assert filename.endswith((f"_{platform.split('/')[1]}.deb", "_all.deb")), filename
        other = next(p for p in PLATFORMS if p != platform)
        assert only[platform] <= set(debs) and not only[other] & set(debs), platform
        assert {"python3.11", "g++-12", "libc6-dev", "bash"} <= set(debs)
        cuda = the_plan.nodes[f"pins-cuda[{platform}]"]
        wheels = [i.filename for n in (base, cuda) for i in n.inputs.values() if i.filename.endswith(".whl")]
        assert any(w.startswith("torch-2.11.0-cp311-cp311-") for w in wheels)
        assert any(w.startswith("nvidia_cuda_nvcc-13.0.88-") for w in wheels)
        for w in wheels:
            assert w.endswith(("-any.whl", f"_{machine[platform]}.whl")), w
        assert base.deps == {"pins-cuda": cuda.id}
    amd, arm = (the_plan.nodes[f"pins-base[{p}]"] for p in PLATFORMS)
    assert len(arm.inputs) == len(amd.inputs)  # two one-platform .debs each


def test_resource_hints_for_heavy_cuda_builds(rs):
    apex = rs.get("apex")
    # Recipe data, not measurements: the cost hints the scheduler and `plan` use.
    apex_hours = apex.estimate_seconds / 3600
    assert apex_hours >= 1 and apex.resources.memory_bytes >= 8 << 30
    int4_minutes = rs.get("int4-qat").estimate_seconds / 60
    assert int4_minutes >= 2


# -- no network inside a build -----------------------------------------------------------------

_NETWORK = re.compile(r"pip\s+install|\bcurl\b|\bwget\b|git\s+clone|git\s+fetch|urlretrieve", re.I)


def test_no_recipe_asks_for_the_network_inside_a_build(rs):
    for r in rs.recipes.values():
        text = json.dumps({"settings": r.build.settings, "env": r.build.env, "script": r.build.script})
        assert not _NETWORK.search(text), f"{r.name}: {_NETWORK.search(text).group(0)}"
        # CMake-based builds (sgl-kernel style) must not download at configure time.
        if re.search(r"cmake", text, re.I):
            assert re.search(r"FETCHCONTENT_FULLY_DISCONNECTED[=\"': ]+ON", text), r.name
    te = rs.get("transformer-engine-torch")
    assert te.build.env["NVTE_PYTORCH_FORCE_BUILD"] == "TRUE"
    # sgl-kernel (whose CMake fetches 9 repositories) is not built here: it comes with the registry
    # base image, and on the base built from pins as PyPI's prebuilt wheel.
    holders = {(r.name, r.build.builder, s.dist) for r in rs.recipes.values() for s in r.all_sources().values()
               if "sgl-kernel" in (s.name or "") or "sgl-kernel" in (s.url or "")}
    assert holders == {("sglang-requirements-native-cp311", "prebuilt-wheel", "wheel")}
    # Compiling recipes see no GPU: the arch list is the variant's, never the machine's (item 7).
    # The cuda-wheel builder sets CUDA_VISIBLE_DEVICES="" itself (a declared value is refused).
    for name in CUDA_RECIPES:
        assert rs.get(name).build.builder == "cuda-wheel" and "CUDA_VISIBLE_DEVICES" not in rs.get(name).build.env
    assert rs.get("megatron-lm").build.settings.get("require-extensions") is True


# -- the lock ------------------------------------------------------------------------------------


def test_lock_is_current_apart_from_unreachable_inputs(rs, lock):
    problems = lockmod.check(rs, lock)
    assert [p for p in problems if not p.message.startswith("unlocked")] == []
    decls = lockmod.declarations(rs)
    for id_, li in lock.inputs.items():
        kind = decls[id_].kind
        if li.status == "unlocked":
            assert li.reason, id_
            # Only what GitHub, a registry or an Ubuntu mirror serves may be unlocked.
            reachable = kind in ("pypi", "patch") or (kind == "url" and "githubusercontent" not in li.origin)
            assert not reachable, f"{id_} ({kind}) is reachable from here but unlocked: {li.reason}"
        else:
            for plat, pin in li.pins.items():
                assert pin.tree and pin.tree.startswith("blake3:"), id_
                if kind in ("pypi", "url", "patch", "apt"):
                    assert pin.sha256, id_
    # Every PyPI input is locked, per platform where the bytes differ.
    for id_, d in decls.items():
        if d.kind == "pypi":
            li = lock.inputs[id_]
            assert li.status == "locked", id_
            assert set(li.pins) == set(d.platforms), id_


# shared/reference/tree-hash.md, "Prefetched pins of the slime stack" (tree hash v1).
PREFETCHED = {
    "apex/source": ("10417aceddd7d5d05d7cbf7b0fc2daad1105f8b4",
                    "blake3:46a1d6edf60da84dffa36c24705ced858f3f5d5f4f04aa50f1356d8ad0e16b06"),
    "megatron-lm/source": ("3714d81d418c9f1bca4594fc35f9e8289f652862",
                           "blake3:d7ef8ec61a2f573a1085d9a0a88a9279e96122ba0eda78b985d19b0bb3d30fbd"),
    "slime/source": ("7014942c17625732dbe9239c0aa9d8e7d7265ccc",
                     "blake3:fdf39c94212521de87b58ba1f01e93e4b0886233f64c9a3f7671582845b247bd"),
    "int4-qat/source": ("7014942c17625732dbe9239c0aa9d8e7d7265ccc",
                        "blake3:6f09dd7b1fadb0af6eb9fad18b4796fd1a0da1492e9797ce4279fecee82f864e"),
    "torch-memory-saver/source": ("dc6876905830430b5054325fa4211ff302169c6b",
                                  "blake3:dc5fa781cb562a599e247c0fa57459e343495719fd337a91d7b981e392c5897e"),
    "mbridge/source": ("89eb10887887bc74853f89a4de258c0702932a1c", None),
    "megatron-bridge/source": ("35b4ebfc486fb15dcc0273ceea804c3606be948a", None),
    "sglang/patch/sglang.patch": ("sha256:4b3f4b654db0fc3c96cb76a7d2a6159e4e69d5cbd4cf643b20fccbdaec8e583f",
                                  "blake3:22fb9b7ff2ffa4f485ed41373592275daac2bdc71b3a7900a2062b1ece426957"),
    "megatron-lm/patch/megatron.patch": ("sha256:58465ac5e4782f28cc41bec1ba76121547b7993a325b21540edc18ea79227878",
                                         "blake3:48474c72026aaa0aed23f969163505d7b58151f4f84b744fddc28221c58432b2"),
}


def test_unlocked_git_inputs_carry_the_prefetched_pins(rs, lock):
    """The recipes state the prefetched pins (commit, patch sha256, tree hash); `planner lock`
    writes them into the unlocked entries, and a machine that reaches GitHub must then find
    exactly that content."""
    from planner.resolve import declared_pins

    decls = lockmod.declarations(rs)
    for id_, (ref, tree) in PREFETCHED.items():
        li = lock.inputs[id_]
        pin = li.pins[ANY]
        assert (pin.sha256 if ref.startswith("sha256:") else pin.commit) == ref.removeprefix("sha256:"), id_
        if li.status == "unlocked":
            assert pin.tree == tree and pin.url, id_
            assert li.pins == declared_pins(decls[id_]), id_
        else:
            # Locked from a mirror of the real repositories: the fetched content has exactly the
            # prefetched tree hash the recipe states (checked by `lock`, recorded here).
            assert li.status == "locked" and (tree is None or pin.tree == tree), id_


def test_generated_requirement_recipes_match_the_recorded_resolution(rs, lock):
    """slime-requirements(-native).toml are what gen_requirements.py renders from the recorded
    pip resolution, and the lock's files and sha256s are the ones pip's resolver chose."""
    proc = subprocess.run([sys.executable, str(REPO / "recipes/slime/gen_requirements.py"), "--offline", "--check"],
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    resolution = json.loads((REPO / "recipes/slime/resolution.json").read_text())
    by_name = {}
    for recipe in ("slime-requirements", "slime-requirements-native", "numpy", "nvidia-cudnn-cu12", "tilelang",
                   "nvidia-modelopt", "flash-linear-attention", "transformer-engine"):
        for name, src in rs.get(recipe).inputs.items():
            by_name[re.sub(r"[-_.]+", "-", src.name).lower()] = (f"{recipe}/{name}", src)
    for own in ("antlr4-python3-runtime", "pylatexenc"):
        by_name[own] = (f"{own}/source", rs.get(own).source)
    for plat in PLATFORMS:
        for dist, entry in resolution["layer"][plat].items():
            id_, src = by_name[dist]
            assert src.version == entry["version"], id_
            pin = lock.inputs[id_].pin(plat)
            assert (pin.filename, pin.sha256) == (entry["filename"], entry["sha256"]), f"{id_} [{plat}]"
    pure = {s.name for s in rs.get("slime-requirements").inputs.values()}
    native = {s.name for s in rs.get("slime-requirements-native").inputs.values()}
    assert not pure & native
    assert {"accelerate", "wandb", "ray", "memray", "sglang-router", "hydra-core", "nvidia-resiliency-ext",
            "mlflow"} <= pure | native
    # SGLang's own dependencies in the seed's base satisfy these: they stay the base's.
    assert not {"transformers", "datasets", "fastapi", "apache-tvm-ffi"} & (pure | native)
    # The base image's from-source builds are not in the closure.
    assert not {"torch", "torchvision", "torchaudio", "triton"} & (pure | native)
    # The CPython 3.11 closure for the base built from pins: its two recipes and the component
    # recipes whose wheels fit any CPython 3 (pure, abi3, TE's CUDA 13 core), every file as pip chose it.
    cp311 = json.loads((REPO / "recipes/slime/resolution-cp311.json").read_text())
    assert cp311["python"] == "3.11.2" and set(cp311["layer"]) == set(PLATFORMS)
    sg = json.loads((REPO / "recipes/slime/resolution-sglang-cp311.json").read_text())
    for platform in PLATFORMS:
        by_name = {}
        for recipe in ("slime-requirements-cp311", "slime-requirements-native-cp311", "tilelang", "nvidia-modelopt",
                       "flash-linear-attention", "transformer-engine-cu13"):
            for name, src in rs.get(recipe).inputs.items():
                assert src.python == "3.11" or not recipe.startswith("slime-"), name
                if src.for_platform(platform):
                    by_name[re.sub(r"[-_.]+", "-", src.name).lower()] = (f"{recipe}/{name}", src)
        for own in ("antlr4-python3-runtime", "pylatexenc"):
            by_name[own] = (f"{own}/source", rs.get(own).source)
        assert set(by_name) == set(cp311["layer"][platform]), platform
        for dist, entry in cp311["layer"][platform].items():
            id_, src = by_name[dist]
            assert src.version == entry["version"], id_
            pin = lock.inputs[id_].pin(platform)
            assert (pin.filename, pin.sha256) == (entry["filename"], entry["sha256"]), (id_, platform)
            assert "cp310" not in entry["filename"], entry["filename"]
        # SGLang's closure for the same base: its three recipes hold exactly what pip chose
        # (torchvision as of pins-base's date, for its torch), pure wheels in the pure recipe, the
        # lock the same files.
        for recipe, layer in (("sglang-requirements-cp311", sg["layer"]), ("sglang-requirements-native-cp311", sg["layer"]),
                              ("sglang-requirements-torch-cp311", sg["torch"]["layer"])):
            for name, src in rs.get(recipe).inputs.items():
                if not src.for_platform(platform):
                    continue
                entry = layer[platform][re.sub(r"[-_.]+", "-", src.name).lower()]
                assert src.python == "3.11" and src.version == entry["version"], name
                pin = lock.inputs[f"{recipe}/{name}"].pin(platform)
                assert (pin.filename, pin.sha256) == (entry["filename"], entry["sha256"]), (name, platform)
                if recipe == "sglang-requirements-cp311":
                    assert pin.filename.endswith("-none-any.whl"), pin.filename
        sg_names = {re.sub(r"[-_.]+", "-", s.name).lower() for r in ("sglang-requirements-cp311",
                    "sglang-requirements-native-cp311") for s in rs.get(r).inputs.values() if s.for_platform(platform)}
        assert sg_names == set(sg["layer"][platform]), platform
        assert {"pybase64", "sgl-kernel", "flashinfer-python", "flashinfer-cubin"} <= sg_names
        # CUDA 13 counterparts where PyPI has them; nothing for CUDA 12 on a CUDA 13 base. numpy<2
        # (slime's) is in SGLang's closure, which slime's would otherwise replace.
        assert {"tilelang", "nvidia-modelopt", "transformer-engine-cu13"} <= set(by_name) and "numpy" in sg_names
        assert sg["layer"][platform]["numpy"]["version"] == "1.26.4"
        assert not {"transformer-engine-cu12", "nvidia-cudnn-cu12", "torch"} & set(by_name)
    # A binary recipe's input is binary on some platform (torchao is pure on arm64 alone).
    for recipe in ("sglang-requirements-native-cp311", "slime-requirements-native-cp311"):
        for name in rs.get(recipe).inputs:
            pins = lock.inputs[f"{recipe}/{name}"].pins.values()
            assert not all(pin.filename.endswith("-none-any.whl") for pin in pins), name
    # The two platforms' closures hold the same versions.
    for data in (cp311, sg, sg["torch"]):
        versions = {p: {n: e["version"] for n, e in data["layer"][p].items()} for p in PLATFORMS}
        common = set(versions["linux/amd64"]) & set(versions["linux/arm64"])
        assert {n: versions["linux/amd64"][n] for n in common} == {n: versions["linux/arm64"][n] for n in common}
    assert rs.get("sglang-requirements-torch-cp311").resolve_as_of == rs.get("pins-base").resolve_as_of


@pytest.mark.slow
def test_pypi_pins_verify_against_the_index(rs, lock, tmp_path):
    """Download each pinned file again with `pip download --no-deps` for its platform (sdists from
    the index's Simple API) and compare its name and sha256 with the lock. A sample of ~10 small files (both platforms, pure and
    binary, every recipe kind); PLANNER_SLIME_VERIFY_ALL=1 checks every file (gigabytes)."""
    from planner.fetch.pypi import platform_tags

    decls = lockmod.declarations(rs)
    items = []
    for id_, d in sorted(decls.items()):
        if d.kind != "pypi":
            continue
        for plat, pin in sorted(lock.inputs[id_].pins.items()):
            items.append((id_, d.source, plat, pin))
    if os.environ.get("PLANNER_SLIME_VERIFY_ALL") != "1":
        small = [it for it in items if (it[3].size or 0) < 8 << 20]
        rnd = random.Random(7014942)
        per_plat = [it for it in small if it[2] != ANY]
        sample = rnd.sample(per_plat, 6) + rnd.sample([it for it in small if it[2] == ANY], 4)
        # Always one of the component recipes' inputs and one build requirement as well.
        sample += [it for it in small if it[0] in ("flash-linear-attention/fla-core", "sglang/setuptools-scm",
                                                   "transformer-engine-torch/source")]
        items = sample
    for id_, src, plat, pin in items:
        if src.dist == "sdist":
            # pip would prepare the sdist's metadata (TE's torch binding installs torch for that):
            # the index's own listing is the authority, and the file is downloaded and hashed.
            from planner.fetch.pypi import download as pypi_download, find_sdist

            found = find_sdist(src.name, src.version)
            assert (found.filename, found.sha256) == (pin.filename, pin.sha256), id_
            got = pypi_download(src.name, src.version, dist="sdist", dest_dir=tmp_path / "sdists")
            import hashlib

            assert hashlib.sha256(got.read_bytes()).hexdigest() == pin.sha256, id_
            continue
        dest = tmp_path / re.sub(r"[^A-Za-z0-9]", "_", f"{id_}-{plat}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--dest", str(dest),
               "--progress-bar", "off", "--no-input"]
        if src.dist == "wheel":
            cmd += ["--only-binary", ":all:"]
            target = src.platform or (None if plat == ANY else plat)
            for tag in platform_tags(target) if target else []:
                cmd += ["--platform", tag]
            if src.python:
                cmd += ["--python-version", src.python, "--implementation", "cp",
                        "--abi", "cp" + src.python.replace(".", "")]
        else:
            cmd += ["--no-binary", src.name]
        cmd.append(f"{src.name}=={src.version}")
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        assert proc.returncode == 0, f"{id_} [{plat}]: {proc.stderr[-500:]}"
        (got,) = list(dest.iterdir())
        assert got.name == pin.filename, f"{id_} [{plat}]"
        import hashlib

        assert hashlib.sha256(got.read_bytes()).hexdigest() == pin.sha256, f"{id_} [{plat}] {got.name}"


# -- stability and the command line ----------------------------------------------------------

_KEYS = """
import json, sys
from pathlib import Path
from planner import lock as lockmod
from planner.graph import plan
from planner.host import HostInfo
from planner.recipes import load_set
rs = load_set(Path(sys.argv[1]), "slime")
p = plan(rs, lockmod.read(rs.lockfile), HostInfo(platform="linux/amd64", packages={}))
print(json.dumps({nid: n.key for nid, n in p.nodes.items()}, sort_keys=True))
"""


def test_plan_is_stable_across_processes():
    outs = []
    for seed in ("0", "12345"):
        proc = subprocess.run([sys.executable, "-c", _KEYS, str(REPO)], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, cwd=tempfile.gettempdir())
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1]
    assert len(outs[0]) == TOTAL_NODES


_OFFLINE = """
import socket, sys
def refuse(*a, **k):
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from planner.cli import main
sys.argv = ["planner", *sys.argv[1:]]
main()
"""


def _planner_offline(*args: str, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _OFFLINE, "--root", str(REPO), "--store", str(store), *args],
                          capture_output=True, text=True, cwd=tempfile.gettempdir())


def test_plan_cli_works_offline_and_marks_unlocked_inputs(tmp_path, lock):
    proc = _planner_offline("plan", "slime", "--json", store=tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    nodes = {n["id"]: n for n in view["nodes"]}
    assert len(nodes) == TOTAL_NODES
    # The base built from pins is buildable here for both platforms.
    assert nodes["pins-base[linux/amd64]"]["action"] == "build"
    assert nodes["pins-base[linux/arm64]"]["action"] == "build"
    # With the base from pins every node of the image is buildable here, for both platforms:
    # what is unlocked (the GitHub-only Megatron-Bridge fork, Ubuntu's apt-tools, the registry
    # base) is what profile "pins" leaves out, and is not planned.
    assert {n["action"] for n in nodes.values()} == {"build"}
    for platform in PLATFORMS:
        assert nodes[f"slime[{platform}]"]["action"] == "build"
        assert nodes[f"apex[{platform}, sm_100a]"]["action"] == "build"
    assert not {nid.split("[")[0] for nid in nodes} & set(LEFT_OUT)
    # The CPython 3.11 closure stands for slime-requirements(-native) there, for both platforms.
    for name in ("slime-requirements-cp311", "sglang-requirements-cp311"):
        assert nodes[name]["action"] == "build" and nodes[name]["unlocked"] == []
    for name in ("slime-requirements-native-cp311", "sglang-requirements-native-cp311", "sglang-requirements-torch-cp311"):
        for platform in PLATFORMS:
            assert nodes[f"{name}[{platform}]"]["action"] == "build" and nodes[f"{name}[{platform}]"]["unlocked"] == []
    unlocked_ids = {i for i, li in lock.inputs.items() if li.status == "unlocked"}
    assert unlocked_ids and {i.split("/")[0] for i in unlocked_ids} <= {*LEFT_OUT, "sglang-base"}
    assert not {u for n in nodes.values() for u in n["unlocked"]}
    # The same set with --target megatron-bridge: its node is blocked by the unlocked source.
    proc = _planner_offline("plan", "slime", "--target", "megatron-bridge", "--json", store=tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    mb = {n["id"]: n for n in json.loads(proc.stdout)["nodes"]}["megatron-bridge"]
    assert mb["action"] == "blocked" and mb["unlocked"] == ["megatron-bridge/source"]
    text = _planner_offline("plan", "slime", "--target", "megatron-bridge", store=tmp_path / "store")
    assert text.returncode == 0 and "blocked" in text.stdout and "megatron-bridge/source" in text.stdout, text.stdout


def test_realise_dry_run_stops_before_the_first_unlocked_input(tmp_path, lock):
    proc = _planner_offline("realise", "slime", "--target", "megatron-bridge", "--dry-run", store=tmp_path / "store")
    assert proc.returncode != 0
    m = re.search(r"stops before (\S+): input (\S+) is unlocked \((.+)\); run `planner lock slime --update (\S+)`",
                  proc.stderr)
    assert m, proc.stderr
    node, input_id, reason, update = m.groups()
    assert input_id == update
    assert lock.inputs[input_id].status == "unlocked"
    assert lock.inputs[input_id].reason and lock.inputs[input_id].reason[:20] in reason
    # Nothing was built or fetched: the store holds no output.
    assert not list((tmp_path / "store").glob("*-*-*/"))


def test_lock_check_is_clean_for_the_sets_closure_and_strict_for_the_seeds(tmp_path, rs, lock):
    """Issue 19: `planner lock slime --check` passes for what profile `pins` builds, with one
    warning line naming the unlocked inputs outside it; the seed's closure (profile `registry`)
    needs them and fails, naming each. The recorded reasons name no machine's paths."""
    proc = _planner_offline("lock", "slime", "--check", store=tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    unlocked = sorted(i for i, li in lock.inputs.items() if li.status == "unlocked")
    assert proc.stderr.splitlines() == [
        f"planner: warning: {len(unlocked)} unlocked inputs outside the closure of image (profile pins), "
        f"not needed by it: {', '.join(unlocked)}"]
    seed = _planner_offline("lock", "slime", "--check", "--profile", "registry", store=tmp_path / "store")
    assert seed.returncode != 0
    assert sorted(l.split(":")[0] for l in seed.stderr.splitlines() if ": unlocked: " in l) == unlocked
    decls = lockmod.declarations(rs)
    for id_ in unlocked:
        reason = lock.inputs[id_].reason
        assert decls[id_].reason_is_portable(reason) and "file:" not in reason and "/work" not in reason, reason


def test_a_wheel_the_arm64_base_has_is_an_amd64_only_input(rs, lock, seed_plan):
    """qwen-vl-utils' av is in the amd64 layer only (SGLang's base installs it on arm64): the input
    is restricted to amd64, pinned for amd64 alone, and the arm64 node does not install it again."""
    av = rs.get("slime-requirements-native").inputs["av"]
    assert av.platforms == ["linux/amd64"]
    assert set(lock.inputs["slime-requirements-native/av"].pins) == {"linux/amd64"}
    inputs = {p: set(seed_plan.nodes[f"slime-requirements-native[{p}]"].inputs) for p in PLATFORMS}
    assert "av" in inputs["linux/amd64"] and "av" not in inputs["linux/arm64"]
    assert inputs["linux/arm64"] == inputs["linux/amd64"] - {"av"}


@pytest.mark.slow
def test_lock_update_fills_one_entry_without_touching_the_rest(tmp_path, monkeypatch):
    """`planner lock slime --update ID` re-resolves that input only; every other entry (locked,
    or unlocked with its prefetched pins) is written back byte for byte."""
    from planner.errors import FetchError
    from planner.fetch import apt
    from planner.resolve import UnresolvedInputs, lock_set
    from planner.store import Store

    root = tmp_path / "project"
    for rel in ("recipes/slime", "patches/slime"):
        shutil.copytree(REPO / rel, root / rel)
    (root / "lockfiles").mkdir()
    original = (REPO / "lockfiles/slime.lock").read_text()
    victim = "slime-requirements/absl-py"
    full = lockmod.parse(original, "slime.lock")
    assert full.inputs[victim].status == "locked"
    holed = attrs.evolve(full, inputs={k: v for k, v in full.inputs.items() if k != victim})
    (root / "lockfiles/slime.lock").write_text(lockmod.to_toml(holed))

    # No Ubuntu archive here: answer for apt at once instead of refreshing Debian's lists.
    def no_jammy(*args, **kwargs):
        raise FetchError("no Ubuntu jammy apt sources on this machine", where="apt")

    monkeypatch.setattr(apt, "download", no_jammy)
    rs = load_set(root, "slime")
    try:
        lock_set(rs, Store(tmp_path / "store"), update=frozenset({victim}))
    except UnresolvedInputs as exc:
        assert victim not in {f.id for f in exc.failures}
    after = lockmod.read(rs.lockfile)
    assert after.inputs[victim] == full.inputs[victim]
    for id_, li in full.inputs.items():
        got = after.inputs[id_]
        if li.status == "locked":
            assert got == li, id_
        else:  # still unreachable: same status and prefetched pins; the reason is this run's error
            assert (got.status, got.pins, got.spec) == (li.status, li.pins, li.spec), id_


# -- waiting for planner changes (docs/slime.md, "Planner changes these recipes need") ----------


def test_arm64_cuda_nodes_use_the_seeds_arm64_arch_list(the_plan):
    arm = {n.variant.cuda for n in the_plan.nodes.values()
           if n.recipe == "int4-qat" and n.variant.platform == "linux/arm64"}
    assert ("sm_90", "sm_90a", "sm_100", "sm_120+PTX") in arm


def test_keys_do_not_depend_on_the_text_of_an_unlocked_reason(rs, lock, the_plan):
    other = attrs.evolve(lock, inputs={
        k: (attrs.evolve(v, reason="some other error") if v.status == "unlocked" else v)
        for k, v in lock.inputs.items()})
    again = plan(rs, other, HOST)
    # The image node is the exception by design: its attestations name the lockfile's digest,
    # and the reason text is part of the lockfile.
    builds = lambda p: {k: n.key for k, n in p.nodes.items() if n.builder != "oci-image"}  # noqa: E731
    assert builds(again) == builds(the_plan)


def test_image_core_is_an_amd64_image_of_what_builds_here(rs, lock):
    """`image-core` (platforms = ["linux/amd64"]): one manifest per variant for amd64 only, its
    layers the compiled and patched components, nothing it needs blocked by an unlocked input."""
    p = plan(rs, lock, HOST, target="image-core")
    image = p.nodes["image-core"]
    assert image.preimage.image.platforms == ("linux/amd64",)
    layers = {m: d for m, d in image.deps.items() if m != BUILD_ROOT_MOUNT}
    assert all("/linux-amd64/" in mount for mount in layers)
    assert {p.nodes[d].recipe for d in layers.values()} == {
        "pins-base", "int4-qat", "torch-memory-saver", "tilelang", "flash-linear-attention", "nvidia-modelopt",
        "sglang", "megatron-lm", "megatron-lm-source", "slime-source",
        "pins-runtime",  # ldconfig and the linker cache: a layer, not part of the builds' base
        # profile pins: TE's CUDA 13 core and the CPython 3.11 closure under their aliases
        "transformer-engine-cu13", "transformer-engine-torch", "slime-requirements-cp311",
        "slime-requirements-native-cp311", "antlr4-python3-runtime", "pylatexenc",
        # SGLang's own run-time closure, which pins-base lacks (the registry base has it)
        "sglang-requirements-cp311", "sglang-requirements-native-cp311", "sglang-requirements-torch-cp311"}
    assert "apex" not in {p.nodes[d].recipe for d in p.closure(["image-core"])}
    assert p.nodes[image.deps[BUILD_ROOT_MOUNT]].recipe == "buildroot"  # its zlib compresses the layers
    assert not set(p.closure(["image-core"])) & set(p.blocked())


def test_image_core_arm64_is_image_core_for_arm64_less_tes_binding(rs, lock):
    """`image-core-arm64`: image-core's layers, in the same groups and order, less TE's torch
    binding (hours to compile emulated here), for linux/arm64 alone; everything it needs is
    locked for arm64 and built from the arm64 nodes."""
    core, arm = rs.get("image-core").image, rs.get("image-core-arm64").image
    assert arm.base == core.base and arm.compression == core.compression
    assert arm.layers == [[n for n in g if n != "transformer-engine-torch"] for g in core.layers]
    p = plan(rs, lock, HOST, target="image-core-arm64")
    image = p.nodes["image-core-arm64"]
    assert image.preimage.image.platforms == ("linux/arm64",)
    layers = {m: d for m, d in image.deps.items() if m != BUILD_ROOT_MOUNT}
    assert layers and all("/linux-arm64/" in mount for mount in layers)
    recipes = {p.nodes[d].recipe for d in layers.values()}
    assert "transformer-engine-torch" not in recipes and {"int4-qat", "megatron-lm", "sglang"} <= recipes
    assert all(p.nodes[d].variant.platform in (None, "linux/arm64") for d in layers.values())
    assert not set(p.closure(["image-core-arm64"])) & set(p.blocked())


def test_closure_is_resolved_as_of_the_seeds_builds_against_the_frozen_base(rs):
    """resolution.json is the closure as of set.toml's date, against the frozen view of the base:
    no input of the generated recipes is a distribution the base has, unless no version the base
    has satisfies the layer (then pip replaces it too, and the resolution says so)."""
    data = json.loads((REPO / "recipes/slime/resolution.json").read_text())
    assert rs.config.resolve_as_of == data["as-of"] == "2026-03-05"
    for platform in PLATFORMS:
        base = data["base"][platform]
        assert base["torch"] == "2.10.0" and base["sglang"] == "0.5.9" and base["flashinfer-python"] == "0.6.3"
        layer = data["layer"][platform]
        for name, entry in layer.items():
            if name in base:
                assert entry.get("replaces") == base[name] and entry["version"] != base[name], name
        for recipe in ("slime-requirements", "slime-requirements-native"):
            for src in rs.get(recipe).inputs.values():
                name = re.sub(r"[-_.]+", "-", src.name).lower()
                # An input restricted to some platforms is in exactly those platforms' layers
                # (av: amd64 only, arm64's base has it): nothing is installed again elsewhere.
                assert (name in layer) == src.for_platform(platform), f"{name} [{platform}]: {src.platforms}"
                if name not in layer:
                    continue
                assert name not in base or layer[name].get("replaces"), f"{name} is the base's {base.get(name)}"
    # The base's FlashInfer is compiled against its own tvm-ffi: the layer leaves it alone.
    for name in ("apache-tvm-ffi", "fastapi", "grpcio", "packaging", "setuptools"):
        assert name not in rs.get("slime-requirements").inputs and name not in rs.get("slime-requirements-native").inputs
    # The base built from pins: its frozen view is pins-base.toml's own PyPI inputs.
    cp311 = json.loads((REPO / "recipes/slime/resolution-cp311.json").read_text())
    assert cp311["as-of"] == rs.config.resolve_as_of
    sg = json.loads((REPO / "recipes/slime/resolution-sglang-cp311.json").read_text())
    assert sg["as-of"] == rs.config.resolve_as_of and sg["torch"]["as-of"] == rs.get("pins-base").resolve_as_of
    for platform in PLATFORMS:
        base = cp311["base"][platform]
        pins = {re.sub(r"[-_.]+", "-", s.name).lower(): s.version for s in rs.get("pins-base").inputs.values()
                if s.kind == "pypi" and s.for_platform(platform)}
        # SGLang's closure is resolved on pins-base (+ torchvision for its torch, + what recipes
        # build); slime's on top of that and of SGLang's closure.
        sg_base = sg["base"][platform]
        companions = {n: e["version"] for n, e in sg["torch"]["layer"][platform].items()}
        assert sg_base == {**pins, **companions, **sg["recipe-built"]} and companions["torchvision"] == "0.26.0"
        sg_layer = sg["layer"][platform]
        assert base == {**sg_base, **{n: e["version"] for n, e in sg_layer.items()}} and base["torch"] == "2.11.0"
        for layer, below in ((sg_layer, sg_base), (cp311["layer"][platform], base)):
            for name, entry in layer.items():
                if name in below:
                    assert entry.get("replaces") == below[name] and entry["version"] != below[name], name
        # Neither closure replaces the other's distributions (a layer cannot uninstall a lower one's).
        assert not set(cp311["layer"][platform]) & set(sg_layer)


# -- the run-time closure of the image on the base built from pins -------------------------------

AMD64 = "linux/amd64"
ARM64 = "linux/arm64"
# The images whose Python distributions are checked: image-core is amd64 only.
IMAGES = [("image-core", AMD64), ("image", AMD64), ("image", ARM64), ("image-core-arm64", ARM64)]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image_distributions(rs, lock, target: str, platform: str = AMD64) -> dict[str, dict[str, str]]:
    """name -> {recipe: version}, bottom layer first, of every Python distribution that the
    `platform` manifest of the image planned as `target` (profile pins) holds: its base's and each layer recipe's. Prebuilt
    wheels by their pypi inputs; built wheels by their PyPI source, or (built from git) by what
    resolution-sglang-cp311.json records the recipe builds. Build-only inputs are not counted."""
    built = json.loads((REPO / "recipes/slime/resolution-sglang-cp311.json").read_text())["recipe-built"]
    p = plan(rs, lock, HOST, target=target)
    image = p.nodes[target]
    slot = f"/{platform.replace('/', '-')}/"
    planned = {p.nodes[d].recipe for m, d in image.deps.items() if m != BUILD_ROOT_MOUNT and slot in m}
    order = [rs.get(target).image.base] + [n for group in rs.get(target).image.layers for n in group]
    assert set(order) == planned
    out: dict[str, dict[str, str]] = {}
    for name in order:
        r = rs.get(name)
        if r.build.builder in ("prebuilt-wheel", "debian-rootfs"):
            for src in r.inputs.values():
                if src.kind == "pypi" and src.for_platform(platform):
                    out.setdefault(_canon(src.name), {})[name] = src.version
        elif r.source is not None and r.source.kind == "pypi":
            out.setdefault(_canon(r.source.name), {})[name] = r.source.version
        elif name in built:
            out.setdefault(_canon(name), {})[name] = built[name]
    return out


def _unmet(requirements, have: dict[str, dict[str, str]], platform: str = AMD64) -> list[str]:
    """The requirements (PEP 508, markers for CPython 3.11.2 on `platform`, no extra) that no
    distribution of `have` satisfies."""
    from packaging.requirements import Requirement

    from planner.pyclosure import marker_environment

    env = {**marker_environment(platform, "3.11.2"), "extra": ""}
    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        versions = have.get(_canon(req.name), {})
        if not versions:
            out.append(f"{text}: not in the image")
        # The top layer's files are what Python imports (see test_no_distribution_is_installed_by_two_layers).
        elif not req.specifier.contains(list(versions.values())[-1], prereleases=True):
            out.append(f"{text}: the image has {versions}")
    return out


@pytest.mark.parametrize("target,platform", IMAGES)
def test_the_pins_image_holds_sglangs_declared_run_time_requirements(rs, lock, target, platform):
    """SGLang 0.5.9's wheel METADATA (recorded verbatim by gen_requirements.py), less the pins
    that the versioned patch removes, is met by the image's own distributions on the base built
    from pins: the image-core built before this closure existed failed `import sglang` (no
    pybase64), because pins-base, unlike the seed's sglang image, installs none of them."""
    data = json.loads((REPO / "recipes/slime/resolution-sglang-cp311.json").read_text())
    declared = data["declared"]
    assert any(r.startswith("sgl-kernel==0.3.21") for r in declared)
    assert any(r.startswith("flashinfer_python==0.6.3") for r in declared)
    patch = (REPO / "patches/slime/sglang-drop-torch-pins.patch").read_text()
    dropped = {_canon(m) for m in re.findall(r'^-\s*"([A-Za-z0-9_.-]+)==', patch, re.M)}
    assert dropped == {"torch", "torchaudio"} == set(data["base-decides"])
    wheel_requires = [r for r in declared if _canon(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) not in dropped]
    have = _image_distributions(rs, lock, target, platform)
    assert have["sglang"] == {"sglang": "0.5.9"}
    unmet = _unmet(wheel_requires, have, platform)
    # The one documented omission (gen_requirements.SGLANG_LEFT_OUT): cuda-python==12.9 contradicts
    # torch 2.11.0's cuda-bindings>=13.0.3,<14.
    assert {_canon(u.split("=")[0].split(":")[0]) for u in unmet} == set(data["left-out"]) == {"cuda-python"}, unmet


@pytest.mark.parametrize("target,platform", IMAGES)
def test_every_resolved_distribution_of_the_pins_image_has_its_requirements(rs, lock, target, platform):
    """Every distribution of the two closures (SGLang's, slime's) finds its own Requires-Dist (as
    pip read it) met in the image: a component whose run-time dependencies a base was assumed to
    have is caught here, whichever it is."""
    have = _image_distributions(rs, lock, target, platform)
    sg = json.loads((REPO / "recipes/slime/resolution-sglang-cp311.json").read_text())
    slime = json.loads((REPO / "recipes/slime/resolution-cp311.json").read_text())
    layers = [sg["layer"][platform], sg["torch"]["layer"][platform], slime["layer"][platform]]
    problems = {}
    for layer in layers:
        for name, entry in layer.items():
            if target == "image-core" and name not in have:
                continue  # a component image-core leaves out (mbridge's requirements, say)
            unmet = _unmet(entry["requires"], have, platform)
            if unmet:
                problems[name] = unmet
    assert problems == {}


@pytest.mark.parametrize("target,platform", IMAGES)
def test_no_distribution_is_installed_by_two_layers(rs, lock, target, platform):
    """A layer cannot uninstall what a lower layer installed, so two layers holding one
    distribution would leave both versions' files and dist-info in the image: SGLang's closure and
    slime's are resolved so that neither replaces the other. Where a closure replaces a
    distribution of the base (no version of it satisfies the layer), the base's copy stays under
    the layer's: those are exactly the replacements the resolutions record (docs/slime.md, "What
    remains"), never one that nobody chose."""
    have = _image_distributions(rs, lock, target, platform)
    twice = {name: by for name, by in have.items() if len([r for r in by if r != "pins-base"]) > 1}
    assert twice == {}
    recorded = {}
    for path in ("resolution-sglang-cp311.json", "resolution-cp311.json"):
        for name, entry in json.loads((REPO / "recipes/slime" / path).read_text())["layer"][platform].items():
            if entry.get("replaces") and name in have:
                recorded[name] = (entry["replaces"], entry["version"])
    over_base = {name: (by["pins-base"], list(by.values())[-1]) for name, by in have.items()
                 if "pins-base" in by and len(by) > 1}
    assert over_base == recorded


@pytest.mark.parametrize("target", ["image-core", "image"])
def test_the_image_refuses_sglang_without_its_closure(rs, target):
    """`sglang` requires its run-time closure (and torch_memory_saver): the image builder's check
    of layer groups (builders/image_requires.py) passes for the set's images and names the
    missing recipe for an image that holds SGLang without it."""
    from planner.builders.image_requires import requires_problems

    layers = rs.get(target).image.layers
    requires = {n: rs.get(n).requires for group in layers for n in group}
    assert set(rs.get("sglang").requires) == {"sglang-requirements-cp311", "sglang-requirements-native-cp311",
                                              "sglang-requirements-torch-cp311", "torch-memory-saver"}
    assert requires_problems(layers, requires) == []
    without = [[n for n in group if n != "sglang-requirements-cp311"] for group in layers]
    problems = requires_problems(without, requires)
    assert problems and all("needs sglang-requirements-cp311" in p for p in problems)
    assert "sglang (layer group %d) needs sglang-requirements-cp311, which is in no layer group" % next(
        i + 1 for i, g in enumerate(without) if "sglang" in g) in problems
    # The registry profile's image: the sglang image has SGLang's closure, nothing to require.
    assert load_set(REPO, "slime", profile="registry").get("sglang").requires == ["torch-memory-saver"]
