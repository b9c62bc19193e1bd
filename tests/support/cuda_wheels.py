"""The pinned CUDA compiler wheels from PyPI, downloaded once per machine for the tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# The pinned CUDA 13.0 compiler (x86_64 host) + the aarch64 runtime for cross builds + cuobjdump.
WHEELS_X86_64 = {
    "nvidia-cuda-nvcc==13.0.88": "56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03",
    "nvidia-cuda-crt==13.0.88": "2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4",
    "nvidia-nvvm==13.0.88": "c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0",
    "nvidia-cuda-runtime==13.0.96": "7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548",
    "nvidia-cuda-cccl==13.0.85": "e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649",
}
CUOBJDUMP = {
    "nvidia-cuda-cuobjdump==13.5.37": "38780fee50863252a0b8926357faa91615ca1c8346490563f33a06100cd73f58",
}
RUNTIME_AARCH64 = {
    "nvidia-cuda-runtime==13.0.96": "ef9bcbe90493a2b9d810e43d249adb3d02e98dd30200d86607d8d02687c43f55",
}
# pip 23 does not widen `--platform manylinux_2_28_x` to older glibc tags: list them all.
_PLATFORMS = {
    "x86_64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux_2_12_x86_64"],
    "aarch64": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64"],
}

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download_cuda_wheels(dest: Path, pins: dict[str, str], machine: str) -> list[Path]:
    """`pip download` the pinned wheels into dest (only the missing ones); verify sha256."""
    dest.mkdir(parents=True, exist_ok=True)

    def find(spec: str) -> Path | None:
        name, version = spec.split("==")
        stem = f"{name.replace('-', '_')}-{version}-"
        hits = [p for p in dest.glob(f"{stem}*.whl") if machine in p.name]
        return hits[0] if hits else None

    missing = [spec for spec in pins if find(spec) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", str(dest)]
        for plat in _PLATFORMS[machine]:
            cmd += ["--platform", plat]
        r = subprocess.run(cmd + missing, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot download the CUDA wheels: {r.stderr.strip().splitlines()[-1:]}")
    out = []
    for spec, digest in pins.items():
        path = find(spec)
        assert path is not None, f"{spec} not downloaded"
        assert _sha256(path) == digest, f"{path.name}: sha256 differs from the pin"
        out.append(path)
    return out


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory) -> Path:
    env = os.environ.get("PLANNER_TEST_CUDA_WHEELS")
    if env:
        return Path(env)
    home = Path.home() / ".cache" / "planner-test" / "cuda-wheels"
    if home.is_dir():
        return home
    return tmp_path_factory.mktemp("cuda-wheels")


@pytest.fixture(scope="session")
def cuobjdump(wheel_cache, tmp_path_factory) -> Path:
    (wheel,) = download_cuda_wheels(wheel_cache, CUOBJDUMP, "x86_64")
    dest = tmp_path_factory.mktemp("cuobjdump")
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read("nvidia/cu13/bin/cuobjdump")
    exe = dest / "cuobjdump"
    exe.write_bytes(data)
    exe.chmod(0o755)  # the zip member may lack the exec bit
    return exe


