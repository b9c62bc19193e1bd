#!/usr/bin/env python3
"""Regenerate slime-requirements.toml and slime-requirements-native.toml.

Fixes "pip without hashes or a lock" (item 5 of docs/slime.md): slime's 17 requirements, and
the PyPI components installed beside them, are resolved ONCE here with pip's own resolver, for
Python 3.10 (Ubuntu 22.04's system python in the base image) and for each platform, and every
file of the resulting closure becomes its own exact `pypi` input. `planner lock slime` then pins
each one by sha256 and tree hash, per platform where the bytes differ.

    python3 recipes/slime/gen_requirements.py            # resolve with pip; rewrite resolution.json
                                                         # and both recipes
    python3 recipes/slime/gen_requirements.py --offline  # re-render from resolution.json, no pip
    python3 recipes/slime/gen_requirements.py --offline --check   # fail if the recipes differ
    python3 recipes/slime/gen_requirements.py --base-freeze FREEZE.txt
        # FREEZE.txt = `pip freeze` of the unpacked sglang-base image: everything in it is
        # treated as provided by the base, so the closure holds only what the slime layer adds

How the closure is cut:
- packages the base image builds from source (torch 2.10.0, torchvision 0.25.0, torchaudio
  2.10.0, and the triton that goes with torch 2.10) are replaced by metadata-only stub wheels
  with a `+slimebase` local version, which pip prefers over PyPI's builds of the same version;
  they satisfy `torch>=2.x` requirements and are dropped from the result;
- distributions that have their own recipe (COMPONENTS below) are resolved together with the
  rest, so all versions are mutually consistent, but are recorded only in their own recipe;
- what is left is split: pure-Python wheels (`*-none-any.whl`, same file on both platforms)
  go to `slime-requirements` (one node, one layer blob shared by every manifest); binary
  wheels go to `slime-requirements-native` as per-platform inputs (one node per platform).

Only the standard library and pip are used; the platform tags come from planner.fetch.pypi so
that the resolution picks exactly the files `planner lock` downloads later.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# What pip resolved, per platform: name, version, file name and the index's sha256 of each file.
RESOLUTION = HERE / "resolution.json"
sys.path.insert(0, str(ROOT))

from planner.fetch.pypi import platform_tags  # noqa: E402

PYTHON = "3.10"
PLATFORMS = ("linux/amd64", "linux/arm64")

# slime 7014942c's requirements.txt: 17 packages, lower bounds only (reference table).
SLIME_REQUIREMENTS = [
    "accelerate", "blobfile", "datasets", "httpx[http2]", "mcp[cli]", "memray", "omegaconf",
    "pillow", "pylatexenc", "pyyaml", "qwen_vl_utils", "ray[default]", "ring_flash_attn",
    "sglang-router", "tensorboard", "transformers", "wandb",
]
# The PyPI components of the slime layer, at their pinned versions (each has its own recipe).
COMPONENT_REQUIREMENTS = [
    "numpy==1.26.4",
    "flash-linear-attention==0.4.1",
    "nvidia-modelopt==0.47.0",  # >=0.37.0 in the seed; newest pip finds; no [torch] extra since 0.4x
    "nvidia-cudnn-cu12==9.16.0.29",
    "tilelang==0.1.8",
    "transformer_engine==2.10.0",
    "transformer_engine_cu12==2.10.0",
    # transformer_engine_torch's own run-time requirements (its wheel is built from the sdist)
    "einops", "onnx", "onnxscript",
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
}
# Built from source in the torch base image (reference: image lineage); stubbed.
BASE_PROVIDED = {
    "torch": "2.10.0",
    "torchvision": "0.25.0",
    "torchaudio": "2.10.0",
    "triton": "3.6.0",  # the release torch 2.10 pins; confirm against the base's `pip freeze`
}
STUB_LOCAL = "slimebase"
# SGLang v0.5.9's exact pins (python/pyproject.toml, less the torch pins that
# patches/slime/sglang-drop-torch-pins.patch removes). SGLang and its dependencies are installed
# in the base image; pip in today's build keeps a satisfied installed version, so the slime
# layer must not move these: they constrain the resolution (only those in the closure matter,
# e.g. blobfile and transformers).
SGLANG_PINS = [
    "blobfile==3.0.0", "cuda-python==12.9", "openai-harmony==0.0.4", "openai==2.6.1",
    "outlines==0.1.11", "quack-kernels==0.2.4", "soundfile==0.13.1", "timm==1.0.16",
    "torchao==0.9.0", "transformers==4.57.1", "xgrammar==0.1.27",
]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def make_stub(folder: Path, name: str, version: str) -> Path:
    """A metadata-only wheel: enough for pip's resolver, nothing to install."""
    dist = re.sub(r"[-.]+", "_", name)
    full = f"{version}+{STUB_LOCAL}"
    info = f"{dist}-{full}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {full}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: gen_requirements\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for n, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{n},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{dist}-{full}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in files.items():
            zf.writestr(zipfile.ZipInfo(n, (1980, 1, 1, 0, 0, 0)), data)
    return path


def resolve(platform: str, requirements: list[str], constraints: list[str], stubs: Path,
            work: Path) -> list[dict]:
    """pip's resolution for one platform: a list of {name, version, filename, sha256}.

    pip 23's `install --dry-run --python-version X` does not apply the Requires-Python of
    candidates whose index entry lacks `data-requires-python` (it checks the running
    interpreter instead): markdown 3.11 (>=3.11) got picked for 3.10. Every resolved candidate's
    Requires-Python is therefore checked here, and a violating version is excluded and the
    resolution repeated. (`planner lock`, which downloads each file with `--python-version`,
    would catch the same thing later.)
    """
    excluded: list[str] = []
    for _attempt in range(20):
        items, bad = _resolve_once(platform, requirements, constraints + excluded, stubs, work)
        if not bad:
            return items
        excluded += [f"{name}!={version}" for name, version in bad]
    raise SystemExit(f"{platform}: still resolving to versions that exclude Python {PYTHON}: {excluded}")


def _python_ok(requires_python: str | None) -> bool:
    if not requires_python:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # pragma: no cover
        from pip._vendor.packaging.specifiers import SpecifierSet
    return SpecifierSet(requires_python).contains(PYTHON + ".0", prereleases=True)


def _resolve_once(platform: str, requirements: list[str], constraints: list[str], stubs: Path,
                  work: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    report = work / f"report-{platform.replace('/', '-')}.json"
    cfile = work / "constraints.txt"
    cfile.write_text("".join(c + "\n" for c in constraints))
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), "--target", str(work / "target"),
           "--only-binary", ":all:", "--python-version", PYTHON, "--implementation", "cp",
           "--abi", "cp" + PYTHON.replace(".", ""), "--find-links", str(stubs), "-c", str(cfile)]
    for tag in platform_tags(platform):
        cmd += ["--platform", tag]
    cmd += requirements
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"pip could not resolve the closure for {platform}")
    data = json.loads(report.read_text())
    out, bad = [], []
    for item in data["install"]:
        meta = item["metadata"]
        info = item["download_info"]
        url = info["url"]
        hashes = info.get("archive_info", {}).get("hashes", {})
        if not _python_ok(meta.get("requires_python")):
            bad.append((normalise(meta["name"]), meta["version"]))
        out.append({"name": normalise(meta["name"]), "version": meta["version"],
                    "filename": url.rsplit("/", 1)[-1].split("#")[0], "sha256": hashes.get("sha256")})
    return out, bad


def toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


PURE_HEADER = """\
# GENERATED by recipes/slime/gen_requirements.py; do not edit by hand: re-run the script.
# Fixes item 5 (pip without hashes or a lock) and item 6 (wheel-set pollution cleaned by a
# deny-list): slime's 17 requirements
{reqs}
# and the PyPI components beside them, resolved once with pip's resolver for CPython {py} on
# linux/amd64 and linux/arm64; every file of the closure is an exact input, pinned by sha256 and
# tree hash in lockfiles/slime.lock. This recipe holds the pure-Python wheels (the same file on
# both platforms): one node, one layer blob shared by every image manifest. Binary wheels are in
# slime-requirements-native.
# Left out on purpose: what the base image builds from source (stubbed during resolution)
{base}
# and the distributions that have their own recipe
{components}
# SGLang v0.5.9's exact pins constrain the resolution (SGLang and its dependencies are in the
# base image), hence transformers 4.57.1 and blobfile 3.0.0.
name = "slime-requirements"
version = "7014942c"
estimate = "30s"

[build]
builder = "prebuilt-wheel"
"""

NATIVE_HEADER = """\
# GENERATED by recipes/slime/gen_requirements.py; do not edit by hand: re-run the script.
# Fixes item 5 (pip without hashes or a lock): the binary wheels of the closure of slime's
# requirements (see slime-requirements.toml), exact version per distribution, one input per
# distribution with a per-platform pin (manylinux x86_64 / aarch64, CPython {py}). One node per
# platform; the amd64 and arm64 files are locked separately by `planner lock`.
name = "slime-requirements-native"
version = "7014942c"
estimate = "30s"

[build]
builder = "prebuilt-wheel"
"""


def _comment_wrap(text: str, prefix: str, width: int = 96) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(prefix) + len(line) + len(word) > width:
            lines.append(prefix + line.rstrip())
            line = ""
        line += word + " "
    lines.append(prefix + line.rstrip())
    return "\n".join(lines)


def render(header: str, entries: list[dict], per_platform: bool) -> str:
    lines = [header]
    for e in sorted(entries, key=lambda e: e["name"]):
        lines.append(f"[inputs.{toml_key(e['name'])}]")
        lines.append('kind = "pypi"')
        lines.append(f'name = "{e["name"]}"')
        lines.append(f'version = "{e["version"]}"')
        lines.append('dist = "wheel"')
        lines.append(f'python = "{PYTHON}"')
        if per_platform:
            lines.append("per-platform = true")
        if e.get("platform"):
            lines.append(f'platform = "{e["platform"]}"')
        lines.append(f"# {e['files']}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed recipes differ")
    ap.add_argument("--base-freeze", type=Path, help="`pip freeze` of the base image: all treated as provided")
    ap.add_argument("--offline", action="store_true",
                    help="render from the recorded resolution.json instead of running pip")
    args = ap.parse_args(argv)

    base = dict(BASE_PROVIDED)
    if args.base_freeze:
        for line in args.base_freeze.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line.strip())
            if m and normalise(m.group(1)) not in COMPONENTS:
                base[normalise(m.group(1))] = m.group(2).split("+")[0]
    requirements = SLIME_REQUIREMENTS + COMPONENT_REQUIREMENTS
    if args.offline:
        per = json.loads(RESOLUTION.read_text())
    else:
        per = _resolve_all(base, requirements)
        text = json.dumps(per, indent=1, sort_keys=True) + "\n"
        if args.check:
            if not RESOLUTION.exists() or RESOLUTION.read_text() != text:
                print(f"stale: {RESOLUTION.name} (pip resolves differently today)", file=sys.stderr)
                return 1
        else:
            RESOLUTION.write_text(text)
    return _write(per, args.check)


def _resolve_all(base: dict[str, str], requirements: list[str]) -> dict[str, dict[str, dict]]:
    with tempfile.TemporaryDirectory(prefix="slime-resolve-") as tmp:
        work = Path(tmp)
        stubs = work / "stubs"
        stubs.mkdir()
        for name, version in sorted(base.items()):
            make_stub(stubs, name, version)
        # `==X` admits the stub `X+slimebase`, which pip prefers to PyPI's X (a local version
        # sorts after its public one); without the pin pip would take a newer torch from PyPI.
        constraints = SGLANG_PINS + [f"{n}=={v}" for n, v in sorted(base.items())]
        per: dict[str, dict[str, dict]] = {}
        for platform in PLATFORMS:
            got = resolve(platform, requirements, constraints, stubs, work)
            per[platform] = {e["name"]: e for e in got if STUB_LOCAL not in e["version"]}
    return per


def _write(per: dict[str, dict[str, dict]], check: bool) -> int:
    pure: list[dict] = []
    native: list[dict] = []
    problems: list[str] = []
    names = sorted(set().union(*(set(p) for p in per.values())))
    for name in names:
        if name in COMPONENTS:
            continue
        have = {pl: per[pl].get(name) for pl in PLATFORMS}
        present = {pl: e for pl, e in have.items() if e is not None}
        versions = {e["version"] for e in present.values()}
        files = sorted({e["filename"] for e in present.values()})
        if len(present) != len(PLATFORMS) or len(versions) != 1:
            # Not the same version everywhere: the set has one image layer per group for every
            # platform, so a platform-only distribution needs a planner change (see docs/slime.md).
            problems.append(f"{name}: " + ", ".join(f"{pl}={e['version'] if e else 'absent'}" for pl, e in have.items()))
            continue
        entry = {"name": name, "version": versions.pop(), "files": " | ".join(files)}
        if all(f.endswith("-none-any.whl") for f in files) and len(files) == 1:
            pure.append(entry)
        else:
            native.append(entry)
    if problems:
        sys.stderr.write("distributions that differ between platforms:\n  " + "\n  ".join(problems) + "\n")
        return 1

    comps = ", ".join(sorted(COMPONENTS))
    reqs_block = _comment_wrap(", ".join(SLIME_REQUIREMENTS), "#   ")
    base_text = ", ".join(f"{n} {v}" for n, v in sorted(BASE_PROVIDED.items()))
    outputs = {
        HERE / "slime-requirements.toml": render(
            PURE_HEADER.format(reqs=reqs_block, py=PYTHON, base=_comment_wrap(base_text, "#   "),
                               components=_comment_wrap(comps, "#   ")),
            pure, False),
        HERE / "slime-requirements-native.toml": render(NATIVE_HEADER.format(py=PYTHON), native, True),
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
    print(f"{len(pure)} pure-Python wheels, {len(native)} binary wheels per platform")
    return 0


if __name__ == "__main__":
    sys.exit(main())
