#!/usr/bin/env python3
"""Regenerate slime-requirements(-native).toml and slime-requirements(-native)-cp311.toml.

Fixes "pip without hashes or a lock" (item 5 of docs/slime.md): slime's 17 requirements, and
the PyPI components the seed installs beside them, are resolved ONCE here with pip's own
resolver, for the base image's Python (Ubuntu 22.04's 3.10.12) and for each platform, and every
file of the resulting closure becomes its own exact `pypi` input. `planner lock slime` then pins
each one by sha256 and tree hash, per platform where the bytes differ.

    python3 recipes/slime/gen_requirements.py            # resolve with pip for both bases; rewrite
                                                         # resolution*.json and the recipes
    python3 recipes/slime/gen_requirements.py --base pins-base   # one base only
    python3 recipes/slime/gen_requirements.py --offline  # re-render from resolution*.json, no pip
    python3 recipes/slime/gen_requirements.py --offline --check   # fail if the recipes differ
    python3 recipes/slime/gen_requirements.py --base sglang-base --base-freeze FREEZE.txt
        # FREEZE.txt = `pip freeze` of the unpacked sglang-base image: the frozen view of the
        # base is then the image's own, instead of the one resolved here

One closure per base (set.toml's `profile` line chooses the base and, with it, its closure):
- `sglang-base`, the seed's image (CPython 3.10.12, amd64 and arm64): slime-requirements.toml and
  slime-requirements-native.toml, resolution.json; the distributions with a recipe of their own
  (COMPONENTS) are left to those recipes.
- `pins-base`, the base built here from pins (Debian 12's CPython 3.11.2, amd64 and arm64, torch 2.11.0
  on CUDA 13.0): slime-requirements-cp311.toml and slime-requirements-native-cp311.toml,
  resolution-cp311.json. Its frozen view is pins-base.toml's own PyPI inputs (what the recipe
  installs). Component recipes whose wheels fit any CPython 3 keep their distributions, TE's is
  transformer-engine-cu13; numpy's recipe is a cp310 wheel, so this closure holds numpy; what
  PyPI has only for CUDA 12 is replaced or left out (CUDA12_ONLY; docs/slime.md says why).
  pins-base has none of SGLang's run-time dependencies (the seed's sglang image has them), so
  this base gets a second closure below slime's: SGLang v0.5.9's declared requirements (its
  wheel's METADATA), resolved on pins-base into sglang-requirements(-native)-cp311 and
  resolution-sglang-cp311.json, torchvision for the base's torch as of pins-base's own date
  (sglang-requirements-torch-cp311); slime's closure is then resolved against pins-base + that
  closure, both again until neither replaces the other's distributions (`_resolve_pins`).
- Pre-releases: a project whose final releases are sdists only would resolve to a pre-release
  wheel (pylatexenc 3.0a33 instead of 2.10); such projects are SDIST_ONLY and built by their own
  recipe, and a resolution that still takes a pre-release where a final release exists fails.

How the closure is cut (planner/pyclosure.py):
- AS OF the date in set.toml (`resolve-as-of`, the seed's last builds): files uploaded later are
  not candidates, so re-running this script a month later gives the same resolution.
- Against a FROZEN VIEW OF THE BASE: the distributions the sglang image has installed are shown
  to pip as installed, and pip resolves as the seed's `pip install -r` does on that image: what
  the base already satisfies stays the base's and is not in the closure (FlashInfer in the base
  is compiled against the base's own apache-tvm-ffi; fastapi, grpcio, packaging, setuptools stay
  the base's). A base package is in the closure only where no version the base has satisfies a
  requirement of the layer (numpy<2, say); the recipes' comments list each such replacement.
  Without `--base-freeze`, the view is resolved here the same way: what the sglang image builds
  from source (BASE_BUILT) plus SGLang v0.5.9's declared dependencies (its wheel's METADATA, less
  the torch pins the base does not keep), torch's and FlashInfer's run-time requirements.
- The target's PEP 508 markers (platform_machine, python_version) are used, not this machine's.
- distributions that have their own recipe (COMPONENTS below) are resolved together with the
  rest, so all versions are mutually consistent, but are recorded only in their own recipe;
- what is left is split: pure-Python wheels (`*-none-any.whl`, same file on both platforms)
  go to `slime-requirements` (one node, one layer blob shared by every manifest); binary
  wheels go to `slime-requirements-native` as per-platform inputs (one node per platform).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# What pip resolved: the as-of date, the frozen base view and the layer, per platform, with the
# index's sha256 of every file.
RESOLUTION = HERE / "resolution.json"
sys.path.insert(0, str(ROOT))

PYTHON = "3.10"  # the recipes' `python`: wheel tags (cp310)
PYTHON_FULL = "3.10.12"  # Ubuntu 22.04's python3.10 (jammy-updates): markers, Requires-Python
PLATFORMS = ("linux/amd64", "linux/arm64")

# slime 7014942c's requirements.txt (lines 1-17): lower bounds only.
SLIME_REQUIREMENTS = [
    "accelerate", "blobfile", "datasets", "httpx[http2]", "mcp[cli]", "memray", "omegaconf",
    "pillow", "pylatexenc", "pyyaml", "qwen_vl_utils", "ray[default]", "ring_flash_attn",
    "sglang-router>=0.2.3", "tensorboard", "transformers", "wandb",
]
# The other `pip install`s of the seed's final stage, with the seed's own specifiers.
COMPONENT_REQUIREMENTS = [
    "numpy<2",  # `pip install "numpy<2"`, the seed's last install
    "flash-linear-attention==0.4.1",
    "nvidia-modelopt[torch]>=0.37.0",  # unpinned lower bound in the seed: newest as of the date
    "nvidia-cudnn-cu12==9.16.0.29",
    "tilelang",  # the seed: nightly find-links page; here the newest PyPI release as of the date
    "transformer_engine==2.10.0",
    "transformer_engine_cu12==2.10.0",
    # transformer_engine_torch's own run-time requirements (its wheel is built from the sdist)
    "einops", "onnx", "onnxscript",
    # megatron-core 3714d81d pyproject.toml line 23 (torch is the base's)
    "packaging>=24.2",
]
# Megatron-Bridge (fork) is installed WITH its dependencies (no --no-deps). 35b4ebfc's own
# pyproject could not be read here; these are the fork's [project] dependencies as stored at its
# commit 1f8651fe (the same list the issue quotes: hydra-core, nvidia-resiliency-ext ~=0.4.1,
# mlflow >=3.5.0, ...). megatron-core, TE and friends are commented out there, as here.
MEGATRON_BRIDGE_REQUIREMENTS = [
    "transformers<5.0.0", "datasets>=2.20.0", "accelerate", "omegaconf>=2.3.0", "tensorboard>=2.19.0",
    "typing-extensions", "rich", "wandb>=0.19.10", "six>=1.17.0", "regex>=2024.11.6", "pyyaml>=6.0.2",
    "tqdm>=4.67.1", "hydra-core>1.3,<=1.3.2", "nvidia-resiliency-ext~=0.4.1", "mlflow>=3.5.0",
]
# Distribution (normalised name) -> the recipe that owns it.
COMPONENTS = {
    "numpy": "numpy",
    "flash-linear-attention": "flash-linear-attention",
    "fla-core": "flash-linear-attention",
    "nvidia-modelopt": "nvidia-modelopt",
    "nvidia-cudnn-cu12": "nvidia-cudnn-cu12",
    "tilelang": "tilelang",
    "transformer-engine": "transformer-engine",
    "transformer-engine-cu12": "transformer-engine",
    "antlr4-python3-runtime": "antlr4-python3-runtime",
    "pylatexenc": "pylatexenc",
}
# Pure-Python distributions of the closure that PyPI has only as an sdist (omegaconf 2.3 and
# hydra-core pin antlr4-python3-runtime==4.9.*): each is built into a wheel by its own recipe,
# as the seed's pip builds it.
# pylatexenc (slime's requirement): its newest final release as of the date, 2.10, is an sdist;
# its only wheels are 3.0 alphas, which a wheels-only resolution would take (pip admits a
# pre-release where no final release is a candidate) and the seed's pip does not.
SDIST_ONLY = ("antlr4-python3-runtime", "pylatexenc")
# Built from source in the lineage below the slime layer (shared/reference/slime-stack.md, image
# lineage): torch image (torch, torchvision, torchaudio; triton as torch 2.10 pins it), sglang
# image (SGLang v0.5.9, sgl-kernel 0.3.21, FlashInfer v0.6.3).
BASE_BUILT = {
    "torch": "2.10.0", "torchvision": "0.25.0", "torchaudio": "2.10.0", "triton": "3.6.0",
    "sglang": "0.5.9", "sgl-kernel": "0.3.21", "flashinfer-python": "0.6.3",
    # Ubuntu 22.04's python3-pip, python3-setuptools, python3-wheel (jammy), which the system
    # Python of every image in the lineage has; `--base-freeze` gives the image's real versions.
    "pip": "22.0.2", "setuptools": "59.6.0", "wheel": "0.37.1",
    # SGLang 0.5.9 requires torch_memory_saver==0.0.9, which has no aarch64 wheel: pip builds it
    # from its sdist in the arm64 image. Installed in the base either way (the slime layer then
    # replaces it with its own build of dc687690, the torch-memory-saver recipe).
    "torch-memory-saver": "0.0.9",
}
# Their run-time requirements, which pip installed beside them (torch 2.10.0's and
# flashinfer-python 0.6.3's wheel METADATA on PyPI; torch's CUDA wheels are not used by a
# source build against the image's CUDA 12.9).
BASE_RUNTIME = [
    "filelock", "typing-extensions>=4.10.0", "sympy>=1.13.3", "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5",
    "apache-tvm-ffi!=0.1.8,!=0.1.8.post0,<0.2,>=0.1.6", "click", "einops", "ninja", "numpy",
    "nvidia-cudnn-frontend>=1.13.0", "nvidia-cutlass-dsl>=4.3.4", "nvidia-ml-py", "packaging>=24.2",
    "requests", "tabulate", "tqdm",
]


# The base built from pins (recipes/slime/pins-base.toml): Debian 12's python3.11 (3.11.2-6+deb12u9),
# linux/amd64 and linux/arm64 (as pins-base), CUDA 13.0. PyPI has these requirements of the seed only for
# CUDA 12, and the base's CUDA 13 makes them the wrong thing to install: each is replaced by its
# CUDA 13 counterpart where PyPI has one, else left out (docs/slime.md, "The closure for the base
# built from pins").
PINS_PYTHON = "3.11"
PINS_PYTHON_FULL = "3.11.2"
PINS_PLATFORMS = ("linux/amd64", "linux/arm64")
CUDA12_ONLY = {
    # cuDNN for CUDA 12, installed by the seed beside the image's apt cuDNN; the base's torch
    # 2.11.0 brings nvidia-cudnn-cu13 9.19.0.56 (pins-base.toml), which is the one it loads.
    "nvidia-cudnn-cu12==9.16.0.29": None,
    # TransformerEngine's core library is published per CUDA major: the same 2.10.0 for CUDA 13.
    "transformer_engine_cu12==2.10.0": "transformer_engine_cu13==2.10.0",
}

# SGLang v0.5.9's run-time closure on the base built from pins. The seed's sglang image has SGLang
# installed WITH its dependencies (plus sgl-kernel and FlashInfer); pins-base installs none of
# them, and the `sglang` recipe builds SGLang's own wheel only, so `import sglang` failed in
# image-core (`No module named 'pybase64'`). Its declared requirements (the wheel's METADATA, no
# extras) are resolved here into recipes of their own, sglang-requirements(-native)-cp311, and
# slime's closure is then resolved on top of them (docs/slime.md, "SGLang's closure on the base
# built from pins"). What of SGLang's list is not resolved here, and why:
SGLANG_BASE_DECIDES = {
    # the pins sglang-drop-torch-pins.patch removes from the patched wheel (torch==2.9.1,
    # torchaudio==2.9.1), as the seed's `sed` does: the base's torch (2.11.0) stands instead.
    "torch": "the base's torch 2.11.0 (the patched wheel drops the ==2.9.1 pin)",
    "torchaudio": "not in the patched wheel's requirements (its ==2.9.1 pin is dropped with torch's); "
                  "pins-base has none",
}
SGLANG_LEFT_OUT = {
    # SGLang's exact pin: cuda-python 12.9.0 is a metapackage requiring cuda-bindings~=12.9.0, and
    # torch 2.11.0 requires cuda-bindings>=13.0.3,<14. cuda-python itself is in the closure, at
    # the release nvidia-cutlass-dsl's `cuda-python>=12.8` resolves to.
    "cuda-python": "SGLang's ==12.9 pin (cuda-bindings~=12.9.0) contradicts torch 2.11.0's "
                   "cuda-bindings>=13.0.3,<14; cuda-python is in the closure as nvidia-cutlass-dsl requires it",
}
# Built for one torch release: as of set.toml's date PyPI's newest torchvision (0.25.0) pins
# torch==2.10.0, so a resolution on a torch 2.11.0 base would replace the base's torch. The
# release for the base's torch (torchvision 0.26.0 pins torch==2.11.0, uploaded with it on
# 2026-03-23) is taken as of pins-base's own resolve-as-of, with the base's torch as a constraint,
# into its own recipe (sglang-requirements-torch-cp311, whose resolve-as-of is pins-base's).
TORCH_COMPANIONS = ("torchvision",)
# Distributions that a recipe of the set builds: shown to pip as installed, so they are not in a
# closure. torch_memory_saver: SGLang pins ==0.0.9, the torch-memory-saver recipe builds 0.0.9 from
# dc687690 (slime's `--force-reinstall` of it); sglang: the `sglang` recipe (0.5.9, patched).
RECIPE_BUILT = {"sglang": "0.5.9", "torch-memory-saver": "0.0.9"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def set_as_of() -> str:
    data = tomllib.loads((HERE / "set.toml").read_text())
    if "resolve-as-of" not in data:
        raise SystemExit("recipes/slime/set.toml has no resolve-as-of: the resolution would depend on the day")
    return data["resolve-as-of"]


def _req_name(req: str) -> str:
    return normalise(re.match(r"[A-Za-z0-9._-]+", req).group(0))


def sglang_declared(as_of) -> list[str]:
    """SGLang v0.5.9's declared run-time requirements: its wheel's METADATA Requires-Dist, no
    extras, verbatim (markers kept)."""
    import tempfile

    from planner.fetch import url as urlfetch
    from planner.fetch.simple_index import DatedIndex

    with DatedIndex(as_of) as view:
        files = [f for f in view.files("sglang") or [] if f.filename == "sglang-0.5.9-py3-none-any.whl"]
    if not files:
        raise SystemExit("sglang-0.5.9-py3-none-any.whl is not on the index as of the date")
    with tempfile.TemporaryDirectory() as tmp:
        got = urlfetch.download(files[0].url, Path(tmp) / files[0].filename, sha256=files[0].sha256)
        with zipfile.ZipFile(got.path) as zf:
            meta = zf.read("sglang-0.5.9.dist-info/METADATA").decode()
    out = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        if "extra ==" not in req:
            out.append(req)
    return out


def sglang_requirements(as_of) -> list[str]:
    """SGLang v0.5.9's declared dependencies (its wheel's METADATA, no extras), less what the
    base builds from source: the seed's sglang image installs SGLang WITH them."""
    return [req for req in sglang_declared(as_of) if _req_name(req) not in BASE_BUILT]


def toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


PURE_HEADER = """\
# GENERATED by recipes/slime/gen_requirements.py; do not edit by hand: re-run the script.
# Fixes item 5 (pip without hashes or a lock) and item 6 (wheel-set pollution cleaned by a
# deny-list): slime's 17 requirements
{reqs}
# and the PyPI components beside them (Megatron-Bridge's dependencies included), resolved once
# with pip's resolver for CPython {py} on {platforms}, as of {as_of}
# (set.toml resolve-as-of); every file of the closure is an exact input, pinned by sha256 and
# tree hash in lockfiles/slime.lock. This recipe holds the pure-Python wheels (the same file on
# every platform): one node, one layer blob shared by every image manifest. Binary wheels are in
# {native}.
# The closure for {base}: set.toml's `profile` line chooses it with the base.
{frozen}
{replaced}
{components}
name = "{name}"
version = "7014942c"
estimate = "30s"

[build]
builder = "prebuilt-wheel"
"""

NATIVE_HEADER = """\
# GENERATED by recipes/slime/gen_requirements.py; do not edit by hand: re-run the script.
# Fixes item 5 (pip without hashes or a lock): the binary wheels of the closure of slime's
# requirements (see {pure}), exact version per distribution, one input per
# distribution with a per-platform pin (manylinux {arches}, CPython {py}). One node per
# platform; each platform's files are locked separately by `planner lock`.
# The closure for {base}: set.toml's `profile` line chooses it with the base.
name = "{name}"
version = "7014942c"
{platforms}estimate = "30s"

[build]
builder = "prebuilt-wheel"
"""


SGLANG_PURE_HEADER = """\
# GENERATED by recipes/slime/gen_requirements.py; do not edit by hand: re-run the script.
# Issue 16 item 3 (the base built from pins provides SGLang 0.5.9 with sgl-kernel and FlashInfer):
# SGLang v0.5.9's declared run-time requirements (its wheel's METADATA, no extras), resolved once
# with pip's resolver for CPython {py} on {platforms}, as of {as_of} (set.toml resolve-as-of)
# against pins-base's own PyPI inputs; every file an exact input, pinned by sha256 and tree hash
# in lockfiles/slime.lock (fixes item 5 for this closure). The seed's sglang image has these
# installed; on the base built from pins they are these recipes, a layer below slime's closure
# (which is resolved on top of them: nothing in both, the versions mutually consistent).
# This recipe holds the pure-Python wheels; binary wheels are in {native},
# and torchvision (built for one torch release) in {torch}.
{frozen}
{replaced}
{left_out}
name = "{name}"
version = "0.5.9"
estimate = "30s"

[build]
builder = "prebuilt-wheel"
"""

SGLANG_NATIVE_HEADER = """\
# GENERATED by recipes/slime/gen_requirements.py; do not edit by hand: re-run the script.
# Fixes item 5 (pip without hashes or a lock) for issue 16 item 3's SGLang closure: the binary
# wheels of SGLang v0.5.9's run-time closure on the base built from pins (see
# {pure}), one input per distribution with a per-platform pin (manylinux {arches},
# CPython {py}).
# sgl-kernel 0.3.21, as SGLang pins it, DOES NOT LOAD on this base (checked under bubblewrap in
# pins-base, docs/slime.md "sgl-kernel and FlashInfer with torch 2.11"): PyPI's wheel is a CUDA 12
# build (its extensions need libcudart.so.12 and libnvrtc.so.12) against torch 2.9.1 (they need
# c10::MessageLogger::MessageLogger(char const*, int, int) and a c10_cuda_check_implementation
# that torch 2.11.0 does not export). It is kept because SGLang declares it and `import sglang`
# does not load it; SGLang's engine (sglang.srt.entrypoints.engine, model_runner) does, and fails
# until an sgl-kernel built for torch 2.11 + CUDA 13 replaces this input (not built here: CMake
# fetching 9 repositories, hours of CUDA). torchcodec 0.8.0 does not load either (no FFmpeg in
# the base, the same torch 2.9 symbol); flashinfer-python 0.6.3 imports.
name = "{name}"
version = "0.5.9"
{platforms}estimate = "30s"

[build]
builder = "prebuilt-wheel"
"""

SGLANG_TORCH_HEADER = """\
# GENERATED by recipes/slime/gen_requirements.py; do not edit by hand: re-run the script.
# Fixes item 5 (pip without hashes or a lock; its second half, as of a date, with pins-base's
# date) for issue 16 item 3's SGLang closure: SGLang v0.5.9 requires {reqs} (unpinned).
# Each release is built for one torch release and pins it: as of set.toml's resolve-as-of
# ({as_of}) the newest is for torch 2.10.0, which would replace the base's torch. So these are
# resolved with the base's torch=={torch} as a constraint, as of pins-base's resolve-as-of
# ({torch_as_of}, the day its torch was pinned; torch 2.11.0 and torchvision 0.26.0 were uploaded
# on 2026-03-23): this recipe's `resolve-as-of` is that date, so `planner lock` takes its files
# as of then. Their other requirements are in {pure} and {native}.
name = "{name}"
version = "0.5.9"
{platforms}resolve-as-of = "{torch_as_of}"
estimate = "10s"

[build]
builder = "prebuilt-wheel"
"""

class Target:
    """One base and the closure resolved for it (`kind` "slime": slime's layer; "sglang": SGLang's
    run-time closure below it, on a base that does not have it)."""

    def __init__(self, base: str, python: str, python_full: str, platforms: tuple[str, ...], suffix: str,
                 components: dict[str, str], requirements: list[str], kind: str = "slime") -> None:
        self.base, self.python, self.python_full, self.platforms = base, python, python_full, platforms
        self.kind = kind
        self.pure = f"{kind}-requirements" + suffix
        self.native = f"{kind}-requirements-native" + suffix
        self.torch = f"{kind}-requirements-torch" + suffix
        self.resolution = HERE / (f"resolution{suffix}.json" if kind == "slime" else f"resolution-{kind}{suffix}.json")
        self.components = components
        self.requirements = requirements


def _pins_requirements() -> list[str]:
    out = []
    for req in SLIME_REQUIREMENTS + COMPONENT_REQUIREMENTS + MEGATRON_BRIDGE_REQUIREMENTS:
        swap = CUDA12_ONLY.get(req, req)
        if swap is not None:
            out.append(swap)
    return out


TARGETS = {
    "sglang-base": Target("sglang-base", PYTHON, PYTHON_FULL, PLATFORMS, "", COMPONENTS,
                          SLIME_REQUIREMENTS + COMPONENT_REQUIREMENTS + MEGATRON_BRIDGE_REQUIREMENTS),
    # The component recipes whose wheels fit any CPython 3 (pure, abi3, sdist-built) keep their
    # distributions, and TransformerEngine's is its CUDA 13 recipe; numpy's is a cp310 wheel, so
    # the closure holds numpy (set.toml's pins profile leaves the numpy recipe out).
    "pins-base": Target("pins-base", PINS_PYTHON, PINS_PYTHON_FULL, PINS_PLATFORMS, "-cp311",
                        {**{n: r for n, r in COMPONENTS.items()
                            if r not in ("numpy", "nvidia-cudnn-cu12", "transformer-engine")},
                         "transformer-engine": "transformer-engine-cu13",
                         "transformer-engine-cu13": "transformer-engine-cu13"},
                        _pins_requirements()),
}
# SGLang's closure for pins-base, resolved together with pins-base's slime closure (`--base pins-base`).
SGLANG_PINS = Target("pins-base", PINS_PYTHON, PINS_PYTHON_FULL, PINS_PLATFORMS, "-cp311", {}, [], kind="sglang")


def pins_base_view():
    """The frozen view of the base built from pins: the PyPI distributions pins-base.toml installs
    (Debian 12's python3.11 packages bring none: no python3-pip, python3-setuptools)."""
    from planner.pyclosure import view_of

    data = tomllib.loads((HERE / "pins-base.toml").read_text())
    pairs = {decl["name"]: decl["version"] for decl in data.get("inputs", {}).values() if decl.get("kind") == "pypi"}
    return view_of(pairs, "recipes/slime/pins-base.toml's PyPI inputs (torch 2.11.0 with its CUDA 13.0 wheels)")


def pins_base_as_of() -> str:
    data = tomllib.loads((HERE / "pins-base.toml").read_text())
    if "resolve-as-of" not in data:
        raise SystemExit("recipes/slime/pins-base.toml has no resolve-as-of: its torch companions would depend on the day")
    return data["resolve-as-of"]


def _comment_wrap(text: str, prefix: str, width: int = 96) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(prefix) + len(line) + len(word) > width:
            lines.append(prefix + line.rstrip())
            line = ""
        line += word + " "
    lines.append(prefix + line.rstrip())
    return "\n".join(lines)


def render(header: str, entries: list[dict], per_platform: bool, python: str) -> str:
    lines = [header]
    for e in sorted(entries, key=lambda e: e["name"]):
        lines.append(f"[inputs.{toml_key(e['name'])}]")
        lines.append('kind = "pypi"')
        lines.append(f'name = "{e["name"]}"')
        lines.append(f'version = "{e["version"]}"')
        lines.append('dist = "wheel"')
        lines.append(f'python = "{python}"')
        if per_platform:
            lines.append("per-platform = true")
        if e.get("platform"):
            lines.append(f'platform = "{e["platform"]}"')
        if e.get("only"):
            lines.append("platforms = [" + ", ".join(f'"{p}"' for p in e["only"]) + f"]  # {e['why']}")
        lines.append(f"# {e['files']}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed recipes differ")
    ap.add_argument("--base", choices=sorted(TARGETS), action="append",
                    help="resolve for this base only (repeatable; default: every base)")
    ap.add_argument("--base-freeze", type=Path, help="`pip freeze` of the sglang-base image: its frozen view")
    ap.add_argument("--offline", action="store_true",
                    help="render from the recorded resolution*.json instead of running pip")
    args = ap.parse_args(argv)

    rc = 0
    for key in args.base or sorted(TARGETS):
        target = TARGETS[key]
        # pins-base: SGLang's closure and slime's on top of it come from one resolution.
        targets = [target, SGLANG_PINS] if key == "pins-base" else [target]
        if args.offline:
            datas = [json.loads(t.resolution.read_text()) for t in targets]
        else:
            datas = (_resolve_pins(target) if key == "pins-base"
                     else [_resolve_all(target, args.base_freeze if key == "sglang-base" else None)])
            stale = False
            for t, data in zip(targets, datas):
                text = json.dumps(data, indent=1, sort_keys=True) + "\n"
                if args.check:
                    if not t.resolution.exists() or t.resolution.read_text() != text:
                        print(f"stale: {t.resolution.name} (pip resolves differently)", file=sys.stderr)
                        stale = True
                else:
                    t.resolution.write_text(text)
            if stale:
                rc = 1
                continue
        for t, data in zip(targets, datas):
            rc = _write(t, data, args.check) or rc
    return rc


def _entries(layer, *, requires: bool) -> dict:
    return {r.name: {"name": r.name, "version": r.version, "filename": r.filename, "sha256": r.sha256,
                     **({"replaces": r.replaces} if r.replaces else {}),
                     **({"requires": list(r.requires)} if requires else {})}
            for r in layer}


def _resolve_pins(target: Target) -> list[dict]:
    """pins-base's two closures: SGLang 0.5.9's run-time closure on pins-base (+ torch's
    companions for the base's torch, as of pins-base's date), then slime's on top of it.

    Where slime's layer would replace a distribution of SGLang's closure (`numpy<2` over the
    numpy SGLang's resolution takes), the replacement becomes a constraint of SGLang's resolution
    and both are resolved again, until neither replaces the other: the image's layers then never
    install one distribution twice (a layer cannot uninstall what a lower one installed), and the
    versions are those the seed's image ends with."""
    from planner.fetch.simple_index import parse_as_of
    from planner.pyclosure import resolve_layer, view_of

    as_of_text, torch_as_of_text = set_as_of(), pins_base_as_of()
    as_of, torch_as_of = parse_as_of(as_of_text), parse_as_of(torch_as_of_text)
    declared = sglang_declared(as_of)
    wanted = [r for r in declared if _req_name(r) not in SGLANG_BASE_DECIDES and _req_name(r) not in SGLANG_LEFT_OUT]
    companions = [r for r in wanted if _req_name(r) in TORCH_COMPANIONS]
    rest = [r for r in wanted if _req_name(r) not in TORCH_COMPANIONS]
    base = pins_base_view()
    torch_pin = [f"torch=={base.version('torch')}"]
    sg_out: dict = {"as-of": as_of_text, "python": target.python_full, "declared": declared, "requirements": rest,
                    "base-decides": SGLANG_BASE_DECIDES, "left-out": SGLANG_LEFT_OUT, "recipe-built": RECIPE_BUILT,
                    "base": {}, "layer": {},
                    "torch": {"as-of": torch_as_of_text, "requirements": companions, "constraints": torch_pin,
                              "layer": {}}}
    out: dict = {"as-of": as_of_text, "python": target.python_full, "requirements": target.requirements,
                 "base": {}, "layer": {}}
    for platform in target.platforms:
        kw = {"platform": platform, "python": target.python_full, "sdists": SDIST_ONLY}
        got = resolve_layer(companions, base, as_of=torch_as_of, constraints=torch_pin, **kw)
        torch_layer = [r for r in got if r.name in TORCH_COMPANIONS]
        pairs = {d.name: d.version for d in base.dists}
        view0 = view_of({**pairs, **{r.name: r.version for r in torch_layer}, **RECIPE_BUILT},
                        base.origin + ", the torch companions for its torch (sglang-requirements-torch-cp311) "
                        "and what the sglang and torch-memory-saver recipes build")
        constraints: list[str] = []
        for _round in range(6):
            sg_layer = resolve_layer(rest, view0, as_of=as_of, constraints=constraints, **kw)
            view1 = view_of({**{d.name: d.version for d in view0.dists}, **{r.name: r.version for r in sg_layer}},
                            view0.origin + ", and SGLang 0.5.9's run-time closure (sglang-requirements(-native)-cp311)")
            layer = resolve_layer(target.requirements, view1, as_of=as_of, **kw)
            mine = {r.name for r in sg_layer}
            back = sorted(f"{r.name}=={r.version}" for r in layer if r.name in mine)
            if not back:
                break
            print(f"{platform}: slime's layer replaces {', '.join(back)} of SGLang's closure: resolving again "
                  "with those as constraints", file=sys.stderr)
            constraints = sorted(set(constraints) | set(back))
        else:
            raise SystemExit(f"SGLang's and slime's closures do not settle: {', '.join(back)}")
        _refuse_wheel_only_prereleases({r.name: r.version for r in sg_layer + layer}, as_of)
        sg_out["constraints"] = constraints
        sg_out["base"]["origin"] = view0.origin
        sg_out["base"][platform] = {d.name: d.version for d in view0.dists}
        sg_out["layer"][platform] = _entries(sg_layer, requires=True)
        sg_out["torch"]["layer"][platform] = _entries(torch_layer, requires=True)
        out["base"]["origin"] = view1.origin
        out["base"][platform] = {d.name: d.version for d in view1.dists}
        out["layer"][platform] = _entries(layer, requires=True)
    return [out, sg_out]


def _resolve_all(target: Target, base_freeze: Path | None) -> dict:
    from planner.fetch.simple_index import parse_as_of
    from planner.pyclosure import parse_freeze, resolve_layer, view_of

    as_of_text = set_as_of()
    as_of = parse_as_of(as_of_text)
    out: dict = {"as-of": as_of_text, "python": target.python_full, "requirements": target.requirements,
                 "base": {}, "layer": {}}
    sglang = None if base_freeze or target.base != "sglang-base" else sglang_requirements(as_of)

    def one(platform: str):
        if base_freeze:
            base = parse_freeze(base_freeze.read_text(), str(base_freeze))
        else:
            built = view_of(BASE_BUILT, "built from source")
            below = resolve_layer(sglang + BASE_RUNTIME, built, platform=platform, python=target.python_full,
                                  as_of=as_of, sdists=SDIST_ONLY)
            base = view_of({**BASE_BUILT, **{r.name: r.version for r in below}},
                           "BASE_BUILT + SGLang 0.5.9's dependencies resolved as of the date")
        layer = resolve_layer(target.requirements, base, platform=platform, python=target.python_full, as_of=as_of,
                              sdists=SDIST_ONLY)
        return base, layer

    # The platforms are independent (each waits on the index more than on the CPU).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(target.platforms)) as pool:
        results = dict(zip(target.platforms, pool.map(one, target.platforms)))
    _refuse_wheel_only_prereleases({r.name: r.version for _, layer in results.values() for r in layer}, as_of)
    for platform, (base, layer) in results.items():
        out["base"]["origin"] = base.origin
        out["base"][platform] = {d.name: d.version for d in base.dists}
        out["layer"][platform] = {r.name: {"name": r.name, "version": r.version, "filename": r.filename,
                                           "sha256": r.sha256, **({"replaces": r.replaces} if r.replaces else {})}
                                  for r in layer}
    return out


def _refuse_wheel_only_prereleases(resolved: dict[str, str], as_of) -> None:
    """pip takes a pre-release only where no final release is a candidate. With wheels only, a
    project that HAS final releases (as of the date) but gets a pre-release is one whose finals
    are sdists: the seed's pip would build the newest final one (pylatexenc 2.10 vs 3.0a33).
    Projects that publish pre-releases only (opentelemetry's 0.61b0 exporters) are what pip takes
    anyway."""
    from pip._vendor.packaging.utils import parse_sdist_filename, parse_wheel_filename
    from pip._vendor.packaging.version import InvalidVersion, Version

    from planner.fetch.simple_index import DatedIndex

    pre = {n: v for n, v in resolved.items() if Version(v).is_prerelease}
    if not pre:
        return
    bad = []
    with DatedIndex(as_of) as view:
        for name, version in sorted(pre.items()):
            finals = set()
            for f in view.files(name) or []:
                try:
                    v = (parse_wheel_filename(f.filename)[1] if f.filename.endswith(".whl")
                         else parse_sdist_filename(f.filename)[1])
                except (ValueError, InvalidVersion):
                    continue
                if not v.is_prerelease:
                    finals.add(v)
            if finals:
                bad.append(f"{name} {version} (final releases up to {max(finals)})")
    if bad:
        raise SystemExit(f"pre-releases in the closure where final releases exist: {', '.join(bad)}; their finals are "
                         "probably sdists only: add each to SDIST_ONLY with a recipe that builds it")


def _component_versions(components: dict[str, str]) -> dict[str, str]:
    """name -> version of every pypi input (and pypi source) of the component recipes."""
    out = {}
    for recipe in sorted(set(components.values())):
        data = tomllib.loads((HERE / f"{recipe}.toml").read_text())
        decls = list(data.get("inputs", {}).values()) + [data.get("source", {})]
        for decl in decls:
            if decl.get("kind") == "pypi":
                out[normalise(decl["name"])] = decl["version"]
    return out


def _sglang_outputs(target: Target, data: dict, pure: list[dict], native: list[dict], frozen: str, replaced: str,
                    arches: str, plat_line: str) -> dict[Path, str]:
    """The three recipes of SGLang's closure: pure, native, and the torch companions."""
    per = data["torch"]["layer"]
    torch_entries = []
    for name in sorted(set().union(*(set(per[pl]) for pl in target.platforms))):
        versions = {per[pl][name]["version"] for pl in target.platforms if name in per[pl]}
        files = sorted({per[pl][name]["filename"] for pl in target.platforms if name in per[pl]})
        if len(versions) != 1 or any(name not in per[pl] for pl in target.platforms):
            raise SystemExit(f"{name}: the torch companions differ per platform: {sorted(versions)}")
        torch_entries.append({"name": name, "version": versions.pop(), "files": " | ".join(files)})
    left = [f"{k} ({v})" for k, v in sorted({**data["base-decides"], **data["left-out"]}.items())]
    left += [f"{k} (the {k} recipe builds {v})" for k, v in sorted(data["recipe-built"].items()) if k != "sglang"]
    if data["constraints"]:
        left.append("constrained to what slime's closure needs, so that it replaces nothing here: "
                    + ", ".join(data["constraints"]))
    torch_version = data["base"][target.platforms[0]]["torch"]
    return {
        HERE / f"{target.pure}.toml": render(
            SGLANG_PURE_HEADER.format(py=data["python"], as_of=data["as-of"], name=target.pure,
                                      platforms=" and ".join(target.platforms), native=f"{target.native}.toml",
                                      torch=f"{target.torch}.toml", frozen=frozen, replaced=replaced,
                                      left_out=_comment_wrap("Not resolved here: " + "; ".join(left), "# ")),
            pure, False, target.python),
        HERE / f"{target.native}.toml": render(
            SGLANG_NATIVE_HEADER.format(py=target.python, name=target.native, pure=f"{target.pure}.toml",
                                        arches=arches, platforms=plat_line),
            native, True, target.python),
        HERE / f"{target.torch}.toml": render(
            SGLANG_TORCH_HEADER.format(reqs=", ".join(data["torch"]["requirements"]), as_of=data["as-of"],
                                       torch=torch_version, torch_as_of=data["torch"]["as-of"],
                                       pure=f"{target.pure}.toml", native=f"{target.native}.toml",
                                       name=target.torch, platforms=plat_line),
            torch_entries, True, target.python),
    }


def _write(target: Target, data: dict, check: bool) -> int:
    per: dict[str, dict[str, dict]] = data["layer"]
    platforms = target.platforms

    pure: list[dict] = []
    native: list[dict] = []
    problems: list[str] = []
    names = sorted(set().union(*(set(per[pl]) for pl in platforms)))
    pinned = _component_versions(target.components)
    for name in names:
        have = {pl: per[pl].get(name) for pl in platforms}
        present = {pl: e for pl, e in have.items() if e is not None}
        versions = {e["version"] for e in present.values()}
        if name in target.components:
            if versions != {pinned.get(name)}:
                problems.append(f"{name}: resolved {sorted(versions)}, recipes/slime/{target.components[name]}.toml "
                                f"pins {pinned.get(name)}")
            continue
        files = sorted({e["filename"] for e in present.values()})
        # In the layer on some platforms only (SGLang installs av on arm64 and torchcodec on
        # x86_64, so only the amd64 layer needs qwen-vl-utils' av): a per-platform input
        # restricted to those platforms (`platforms = [...]`), nothing installed again elsewhere.
        absent = [pl for pl in platforms if pl not in present]
        if present and absent and len(versions) == 1:
            why = "; ".join(f"{pl}'s base has {data['base'][pl][name]}" if data["base"][pl].get(name)
                            else f"not required on {pl}" for pl in absent)
            entry = {"name": name, "version": next(iter(versions)), "files": " | ".join(files),
                     "only": sorted(present), "why": why}
            native.append(entry)
            continue
        if len(present) != len(platforms) or len(versions) != 1:
            # Not the same version everywhere: one input cannot pin two versions (see docs/slime.md).
            problems.append(f"{name}: " + ", ".join(f"{pl}={e['version'] if e else 'absent'}" for pl, e in have.items()))
            continue
        entry = {"name": name, "version": versions.pop(), "files": " | ".join(files)}
        if all(f.endswith("-none-any.whl") for f in files) and len(files) == 1:
            pure.append(entry)
        else:
            native.append(entry)
    if problems:
        sys.stderr.write(f"problems ({target.base}):\n  " + "\n  ".join(problems) + "\n")
        return 1

    replaced = sorted({f"{e['name']} {e['replaces']} -> {e['version']}" for pl in platforms for e in per[pl].values()
                       if e.get("replaces")})
    left_out = "the distributions that have their own recipe, " + ", ".join(sorted(target.components))
    if target.base == "pins-base":
        left_out += ("; for CUDA 12 only (the base is CUDA 13.0): "
                     + ", ".join(f"{k} ({'replaced by ' + v if v else 'the base has nvidia-cudnn-cu13'})"
                                 for k, v in CUDA12_ONLY.items()))
    reqs_block = _comment_wrap(", ".join(SLIME_REQUIREMENTS), "#   ")
    base = data["base"]
    arches = " / ".join(p.split("/")[1].replace("amd64", "x86_64").replace("arm64", "aarch64") for p in platforms)
    plat_line = "" if platforms == PLATFORMS else "platforms = [" + ", ".join(f'"{p}"' for p in platforms) + "]\n"
    frozen = _comment_wrap(
        f"Resolved against a frozen view of the base "
        f"({' / '.join(str(len(base[pl])) for pl in platforms)} distributions: "
        f"{base['origin']}), as the seed's `pip install -r` runs on its base: nothing the "
        "base already satisfies is here. Base packages that no version the base has "
        "satisfies, and which the layer therefore replaces (as pip would):", "# ")
    if target.kind == "sglang":
        outputs = _sglang_outputs(target, data, pure, native, frozen, _comment_wrap(", ".join(replaced) or "none", "#   "),
                                  arches, plat_line)
    else:
        outputs = {
            HERE / f"{target.pure}.toml": render(
                PURE_HEADER.format(reqs=reqs_block, py=data["python"], as_of=data["as-of"], name=target.pure,
                                   platforms=" and ".join(platforms), native=target.native, base=target.base,
                                   frozen=frozen,
                                   replaced=_comment_wrap(", ".join(replaced) or "none", "#   "),
                                   components=_comment_wrap("Left out: " + left_out, "# ")),
                pure, False, target.python),
            HERE / f"{target.native}.toml": render(
                NATIVE_HEADER.format(py=target.python, name=target.native, pure=f"{target.pure}.toml", arches=arches,
                                     base=target.base, platforms=plat_line),
                native, True, target.python),
        }
    stale = []
    for path, text in outputs.items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(stale)} (re-run recipes/slime/gen_requirements.py)", file=sys.stderr)
        return 1
    print(f"{target.base}: {len(pure)} pure-Python wheels, {len(native)} binary wheels per platform")
    return 0


if __name__ == "__main__":
    sys.exit(main())
