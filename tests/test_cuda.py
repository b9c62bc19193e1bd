"""CUDA builder: arch flags, the toolkit assembled from PyPI wheels, reproducible nvcc builds.

The slow tests download the CUDA 13 compiler wheels once (~105 MB of wheels, ~273 MB unpacked)
into a cache folder: $PLANNER_TEST_CUDA_WHEELS, else ~/.cache/planner-test/cuda-wheels when it
exists, else a session temp folder. Wheels are checked against the sha256 pins below. Builds run
under bubblewrap like the real sandbox (fresh pid namespace, cleared env, toolkit at
/toolchains/cuda, build at /build); no GPU is needed (bench/gpu_check.py runs the kernel).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from planner.builders import cuda
from planner.builders.cuda import (
    assemble_toolkit,
    compile_shared_library,
    elf_machine,
    gencode_flags,
    host_compiler_fingerprint,
    normalise_archs,
)

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "recipes" / "demo" / "src" / "int4qat"
PLANNER_PKG = REPO / "planner"

from .support.cuda_wheels import (CUOBJDUMP, RUNTIME_AARCH64, WHEELS_X86_64, _sha256,  # noqa: E402
                                  cuobjdump, download_cuda_wheels, wheel_cache)

EM_X86_64, EM_AARCH64 = 62, 183


# ------------------------------------------------------------------------------------------
# arch lists
# ------------------------------------------------------------------------------------------


def test_gencode_suffix_kinds():
    assert gencode_flags(["sm_90"]) == ["-gencode", "arch=compute_90,code=sm_90"]
    assert gencode_flags(["sm_90a"]) == ["-gencode", "arch=compute_90a,code=sm_90a"]
    assert gencode_flags(["sm_100f"]) == ["-gencode", "arch=compute_100f,code=sm_100f"]
    assert gencode_flags(["sm_120a+PTX"]) == [
        "-gencode", "arch=compute_120a,code=sm_120a",
        "-gencode", "arch=compute_120,code=compute_120",
    ]
    assert gencode_flags(["12.0+PTX"]) == [
        "-gencode", "arch=compute_120,code=sm_120",
        "-gencode", "arch=compute_120,code=compute_120",
    ]
    assert gencode_flags(["10.0a"]) == ["-gencode", "arch=compute_100a,code=sm_100a"]
    assert gencode_flags(["9.0"]) == ["-gencode", "arch=compute_90,code=sm_90"]


def test_gencode_order_and_ptx_dedup():
    flags = gencode_flags(["sm_120a+PTX", "sm_100a", "9.0a", "sm_120+PTX"])
    assert flags == [
        "-gencode", "arch=compute_90a,code=sm_90a",
        "-gencode", "arch=compute_100a,code=sm_100a",
        "-gencode", "arch=compute_120,code=sm_120",
        "-gencode", "arch=compute_120a,code=sm_120a",
        "-gencode", "arch=compute_120,code=compute_120",
    ]
    assert gencode_flags(["sm_100a", "sm_90a"]) == gencode_flags(["sm_90a", "sm_100a"])


def test_normalise_archs():
    assert normalise_archs(["sm_100a", "sm_90a"]) == ["sm_90a", "sm_100a"]
    assert normalise_archs(["10.0a", "sm_90a", "9.0a", "sm_100a"]) == ["sm_90a", "sm_100a"]
    assert normalise_archs(["sm_120a", "sm_120a+ptx"]) == ["sm_120a+PTX"]
    assert normalise_archs(["sm_100f", "sm_100", "sm_100a"]) == ["sm_100", "sm_100a", "sm_100f"]
    # TORCH_CUDA_ARCH_LIST as a string (the torch base image's list)
    assert normalise_archs("8.0 8.9 9.0 10.0 12.0+PTX") == [
        "sm_80", "sm_89", "sm_90", "sm_100", "sm_120+PTX"]
    assert normalise_archs("9.0a;10.0a") == ["sm_90a", "sm_100a"]


@pytest.mark.parametrize(
    "bad",
    ["sm_90x", "sm90a", "90a", "sm_91", "sm_70", "sm_101a", "sm_89a", "sm_90f", "sm_80a",
     "compute_90", "9", "9.0.1", "", "sm_90A", "sm_100a+SASS", "sm_ 90"],
)
def test_bad_arch_names(bad):
    with pytest.raises(ValueError) as exc:
        gencode_flags(["sm_90a", bad])
    assert repr(bad) in str(exc.value)


def test_renamed_arch_hint():
    with pytest.raises(ValueError, match="sm_110"):
        normalise_archs(["sm_101"])
    with pytest.raises(ValueError, match="empty"):
        normalise_archs([])


# ------------------------------------------------------------------------------------------
# argv and fingerprint (no nvcc run)
# ------------------------------------------------------------------------------------------


def _fake_elf(machine: int) -> bytes:
    return b"\x7fELF\x02\x01\x01" + bytes(11) + struct.pack("<H", machine) + bytes(44)


def _fake_toolkit(root: Path, machine: int = EM_X86_64, cross: str | None = None) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "nvcc").write_bytes(_fake_elf(machine))
    if cross:
        (root / "targets" / cross / "lib").mkdir(parents=True)
    return root


def test_compile_argv_amd64(tmp_path):
    tk = _fake_toolkit(tmp_path / "tk")
    calls = []
    argv = compile_shared_library(
        [Path("/build/src/csrc/a.cu")], tmp_path / "out" / "lib.so", archs=["sm_100a", "sm_90a"],
        toolkit=tk, target_platform="linux/amd64", include_dirs=[Path("/build/src/include")],
        jobs=4, run=lambda a, **kw: calls.append((a, kw)),
    )
    assert calls[0][0] == argv and calls[0][1]["check"] is True
    assert calls[0][1]["env"]["PATH"]
    assert argv[0] == str(tk / "bin" / "nvcc")
    assert argv[1:9] == ["-shared", "-Xcompiler", "-fPIC", "-O3", "-cudart", "static", "-ccbin", "/usr/bin/g++"]
    assert "--target-directory" not in argv
    i = argv.index("-gencode")
    assert argv[i:i + 4] == ["-gencode", "arch=compute_90a,code=sm_90a", "-gencode", "arch=compute_100a,code=sm_100a"]
    assert ["--threads", "4"] == argv[argv.index("--threads"):argv.index("--threads") + 2]
    assert ["-Xlinker", "--strip-all"] == argv[argv.index("-Xlinker"):argv.index("-Xlinker") + 2]
    assert argv[-3:] == ["-o", str(tmp_path / "out" / "lib.so"), "/build/src/csrc/a.cu"]
    assert "-lineinfo" not in argv and "-G" not in argv and "-g" not in argv
    one = compile_shared_library(["a.cu"], tmp_path / "x.so", archs=["sm_90a"], toolkit=tk,
                                 target_platform="linux/amd64", jobs=1, run=lambda *a, **k: None)
    assert "--threads" not in one


def test_compile_argv_arm64_cross(tmp_path):
    tk = _fake_toolkit(tmp_path / "tk", cross="aarch64-linux")
    argv = compile_shared_library(["a.cu"], tmp_path / "lib.so", archs=["sm_90a"], toolkit=tk,
                                  target_platform="linux/arm64", run=lambda *a, **k: None)
    assert argv[argv.index("-ccbin") + 1] == "/usr/bin/aarch64-linux-gnu-g++"
    assert argv[argv.index("--target-directory") + 1] == "aarch64-linux"
    # a toolkit without the aarch64 target runtime cannot cross-compile
    with pytest.raises(ValueError, match="targets/aarch64-linux"):
        compile_shared_library(["a.cu"], tmp_path / "lib.so", archs=["sm_90a"],
                               toolkit=_fake_toolkit(tmp_path / "tk2"), target_platform="linux/arm64",
                               run=lambda *a, **k: None)
    # an aarch64 toolkit builds arm64 natively: plain g++, no target directory
    tk3 = _fake_toolkit(tmp_path / "tk3", machine=EM_AARCH64)
    argv = compile_shared_library(["a.cu"], tmp_path / "lib.so", archs=["sm_90a"], toolkit=tk3,
                                  target_platform="linux/arm64", run=lambda *a, **k: None)
    assert argv[argv.index("-ccbin") + 1] == "/usr/bin/g++" and "--target-directory" not in argv
    with pytest.raises(ValueError, match="platform"):
        compile_shared_library(["a.cu"], tmp_path / "lib.so", archs=["sm_90a"], toolkit=tk,
                               target_platform="linux/riscv64", run=lambda *a, **k: None)
    with pytest.raises(ValueError, match="sm_91"):
        compile_shared_library(["a.cu"], tmp_path / "lib.so", archs=["sm_91"], toolkit=tk,
                               target_platform="linux/amd64", run=lambda *a, **k: None)


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_host_compiler_fingerprint(platform):
    compiler = cuda.host_compiler_for(platform)
    if not os.path.exists(compiler):
        pytest.skip(f"{compiler} not installed")
    fp = host_compiler_fingerprint(platform)
    assert fp["path"] == compiler and fp["impure"] is True
    assert "g++" in fp["version"] and fp["version"] == fp["version"].strip()
    assert len(fp["sha256"]) == 64
    assert hashlib.sha256(Path(fp["realpath"]).read_bytes()).hexdigest() == fp["sha256"]
    assert {"cc1plus", "as", "ld"} <= set(fp["components"])
    assert host_compiler_fingerprint(platform) == fp


# ------------------------------------------------------------------------------------------
# assemble_toolkit on small synthetic wheels
# ------------------------------------------------------------------------------------------


def _wheel(path: Path, files: dict[str, bytes], modes: dict[str, int] | None = None) -> Path:
    modes = modes or {}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | modes.get(name, 0o644)) << 16
            zf.writestr(info, data)
        zf.writestr("fake-1.0.dist-info/METADATA", "Name: fake\n")
    return path


_MINIMAL = [
    "bin/nvcc.profile", "bin/ptxas", "bin/fatbinary", "bin/nvlink", "bin/cudafe++", "nvvm/bin/cicc",
    "include/crt/host_config.h", "lib/libcudart_static.a", "lib/libcudadevrt.a",
]


def _synthetic_wheels(tmp: Path) -> list[Path]:
    p = "nvidia/cu13/"
    a = {p + n: b"\x7fELF-" + n.encode() if "bin/" in n and "profile" not in n else n.encode() for n in _MINIMAL}
    a[p + "bin/nvcc"] = _fake_elf(EM_X86_64)
    a[p + ".metadata/scan.txt"] = b"junk"
    a[p + "lib/libcudart.so.13"] = b"so"
    b = {p + "include/cuda_runtime.h": b"rt", p + "include/crt/host_config.h": b"include/crt/host_config.h"}
    return [_wheel(tmp / "b.whl", b), _wheel(tmp / "a.whl", a)]  # zip modes 0644: no exec bits


def test_assemble_toolkit_layout(tmp_path):
    wheels = _synthetic_wheels(tmp_path)
    target = _wheel(tmp_path / "t.whl", {"nvidia/cu13/lib/libcudart_static.a": b"arm",
                                         "nvidia/cu13/include/cuda_runtime.h": b"rt"})
    dest = tmp_path / "tk"
    assemble_toolkit(wheels, dest, target_runtime_wheels={"aarch64-linux": [target]})
    assert os.access(dest / "bin" / "nvcc", os.X_OK) and os.access(dest / "nvvm/bin/cicc", os.X_OK)
    assert not os.access(dest / "bin" / "nvcc.profile", os.X_OK)
    assert not os.access(dest / "include/cuda_runtime.h", os.X_OK)
    assert not (dest / ".metadata").exists()
    assert os.readlink(dest / "targets/x86_64-linux/include") == "../../include"
    assert os.readlink(dest / "targets/x86_64-linux/lib") == "../../lib"
    assert os.readlink(dest / "lib/libcudart.so") == "libcudart.so.13"
    assert os.readlink(dest / "lib64") == "lib"
    assert not (dest / "lib/stubs").exists()  # no cuda.h in these wheels: no driver API to stub
    assert (dest / "targets/aarch64-linux/lib/libcudart_static.a").read_bytes() == b"arm"
    # identical headers are shared with the host (crt/ and cccl/ come along)
    assert os.readlink(dest / "targets/aarch64-linux/include") == "../../include"
    assert (dest / "dist-info/fake-1.0.dist-info/METADATA").is_file()

    # the same inputs in another order give the same tree
    dest2 = tmp_path / "tk2"
    assemble_toolkit(list(reversed(wheels)), dest2, target_runtime_wheels={"aarch64-linux": [target]})
    assert _listing(dest) == _listing(dest2)


def _listing(root: Path) -> list[tuple]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out.append((rel, "link", os.readlink(p)))
        elif p.is_file():
            out.append((rel, "file", p.stat().st_mode & 0o777, p.read_bytes()))
    return out


def test_assemble_toolkit_driver_stub(tmp_path):
    """With the driver API header, lib64/stubs/libcuda.so for the host and each target's machine."""
    wheels = _synthetic_wheels(tmp_path)
    api = _wheel(tmp_path / "api.whl", {"nvidia/cu13/include/cuda.h":
                                        b"#define cuMemAlloc cuMemAlloc_v2\nCUresult CUDAAPI cuMemAlloc(void);\n"})
    target = _wheel(tmp_path / "t.whl", {"nvidia/cu13/lib/libcudart_static.a": b"arm"})
    dest = tmp_path / "tk"
    assemble_toolkit(wheels + [api], dest, target_runtime_wheels={"aarch64-linux": [target]})
    assert elf_machine(dest / "lib64/stubs/libcuda.so") == EM_X86_64
    assert elf_machine(dest / "targets/aarch64-linux/lib/stubs/libcuda.so") == EM_AARCH64
    assert not os.access(dest / "lib/stubs/libcuda.so", os.X_OK)
    syms = subprocess.run(["readelf", "-W", "--dyn-syms", str(dest / "lib/stubs/libcuda.so")],
                          capture_output=True, text=True, check=True).stdout
    assert " cuMemAlloc_v2" in syms and " cuMemAlloc\n" in syms


def test_assemble_toolkit_target_headers_differ(tmp_path):
    wheels = _synthetic_wheels(tmp_path)
    target = _wheel(tmp_path / "t.whl", {"nvidia/cu13/lib/libcudart_static.a": b"arm",
                                         "nvidia/cu13/include/cuda_runtime.h": b"arm-rt"})
    assemble_toolkit(wheels, tmp_path / "tk", target_runtime_wheels={"aarch64-linux": [target]})
    inc = tmp_path / "tk/targets/aarch64-linux/include"
    assert inc.is_dir() and not inc.is_symlink()
    assert (inc / "cuda_runtime.h").read_bytes() == b"arm-rt"
    assert (inc / "crt/host_config.h").is_file()


def test_assemble_toolkit_rejects(tmp_path):
    wheels = _synthetic_wheels(tmp_path)
    clash = _wheel(tmp_path / "c.whl", {"nvidia/cu13/include/cuda_runtime.h": b"other"})
    with pytest.raises(ValueError, match="cuda_runtime.h differs"):
        assemble_toolkit(wheels + [clash], tmp_path / "tk1")
    evil = _wheel(tmp_path / "e.whl", {"nvidia/cu13/../../etc/x": b""})
    with pytest.raises(ValueError, match="unsafe"):
        assemble_toolkit(wheels + [evil], tmp_path / "tk2")
    other = _wheel(tmp_path / "o.whl", {"somewhere/else.h": b""})
    with pytest.raises(ValueError, match="unexpected member"):
        assemble_toolkit(wheels + [other], tmp_path / "tk3")
    with pytest.raises(ValueError, match="lack bin/nvcc"):
        assemble_toolkit(wheels[:1], tmp_path / "tk4")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        assemble_toolkit(wheels, tmp_path / "full")


# ------------------------------------------------------------------------------------------
# the pure-Python reference
# ------------------------------------------------------------------------------------------


def _load_int4qat(pkg_dir: Path = DEMO / "int4qat", name: str = "int4qat_under_test"):
    # Without writing bytecode: a __pycache__ in the demo's source tree changes its tree hash,
    # so every later realise of the demo would find its lock stale.
    spec = importlib.util.spec_from_file_location(name, pkg_dir / "__init__.py",
                                                  submodule_search_locations=[str(pkg_dir)])
    mod = importlib.util.module_from_spec(spec)
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.dont_write_bytecode = before
    return mod


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def test_reference_semantics():
    q = _load_int4qat()
    assert q.__version__ == "0.1.0"
    # amax 7 -> scale 1: exact ties round half AWAY from zero (not Python's banker's rounding)
    assert q.reference([7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -7.0], 8) == [
        7.0, 1.0, 2.0, 3.0, -1.0, -2.0, -3.0, -7.0]
    # zero group -> zeros; groups are independent; short last group
    assert q.reference([0.0, 0.0, 1.0, 3.5, 2.0], 2) == [0.0, 0.0, 1.0, 3.5, 2.0]
    # scale = 3.5/7 = 0.5: 1.0 -> 2 steps, 0.2 -> round(0.4) = 0, -0.3 -> round(-0.6) = -1
    assert q.reference([3.5, 1.0, 0.2, -0.3], 4) == [3.5, 1.0, 0.0, -0.5]
    # float32 arithmetic: scale = f32(1/7), out = f32(1 * scale)
    s = _f32(1.0 / 7.0)
    assert q.reference([1.0, 0.1], 2) == [_f32(7 * s), s]
    # a subnormal scale rounds down, so |x/scale| exceeds 7: the clamp gives 7 and -8 steps
    unit = 2.0 ** -149
    assert q.reference([10 * unit, -10 * unit], 2) == [7 * unit, -8 * unit]
    # results are float32 values; default group size 32
    out = q.reference([0.1 * i for i in range(70)])
    assert len(out) == 70 and all(_f32(v) == v for v in out)
    assert out[32:64] == q.reference([0.1 * i for i in range(32, 64)], 32)
    assert q.reference([], 4) == []
    with pytest.raises(ValueError):
        q.reference([1.0], 0)


def test_fake_quant_without_library(tmp_path):
    shutil.copytree(DEMO / "int4qat", tmp_path / "int4qat")
    q = _load_int4qat(tmp_path / "int4qat", "int4qat_nolib")
    assert q.available() is False
    with pytest.raises(ImportError, match="_int4qat.so"):
        q.fake_quant([1.0, 2.0])
    assert q.fake_quant([], 4) == []


# ------------------------------------------------------------------------------------------
# real toolkit from the PyPI wheels, real nvcc builds in bubblewrap
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def toolkit(wheel_cache, tmp_path_factory) -> Path:
    host = download_cuda_wheels(wheel_cache, WHEELS_X86_64, "x86_64")
    arm = download_cuda_wheels(wheel_cache / "aarch64", RUNTIME_AARCH64, "aarch64")
    dest = tmp_path_factory.mktemp("cuda-toolkit") / "cuda"
    assemble_toolkit(host, dest, target_runtime_wheels={"aarch64-linux": arm})
    return dest


_COMPILE = """
import subprocess, sys
sys.path.insert(0, "/builder")
for _ in range(int(sys.argv[4])):      # shift nvcc's pid like a builder with more history would
    subprocess.run(["/usr/bin/true"])
from planner.builders import cuda
from pathlib import Path
argv = cuda.compile_shared_library(sorted(Path("/build/src/csrc").glob("*.cu")),
                                   Path("/build/src/int4qat/_int4qat.so"),
                                   archs=sys.argv[2].split(","), toolkit=Path("/toolchains/cuda"),
                                   target_platform=sys.argv[1], jobs=int(sys.argv[3]))
print(" ".join(argv))
"""


def sandboxed_build(host_dir: Path, toolkit: Path, platform: str, archs: str, *, jobs: int = 1,
                    extra_pids: int = 0) -> bytes:
    """Copy the demo source to host_dir/src and compile it in bwrap with /build = host_dir."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    src = host_dir / "src"
    shutil.copytree(DEMO, src)
    (src / "compile.py").write_text(_COMPILE)
    for d in ("home", "tmp"):
        (host_dir / d).mkdir()
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
           "--uid", "1000", "--gid", "1000",
           "--ro-bind", "/usr", "/usr", "--tmpfs", "/usr/local"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            cmd += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            cmd += ["--ro-bind", f"/{link}", f"/{link}"]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--ro-bind", str(toolkit), "/toolchains/cuda",
            "--ro-bind", str(PLANNER_PKG), "/builder/planner",
            "--bind", str(host_dir), "/build", "--chdir", "/build/src"]
    for k, v in {"PATH": "/usr/bin:/bin", "HOME": "/build/home", "TMPDIR": "/build/tmp", "TZ": "UTC",
                 "LC_ALL": "C.UTF-8", "SOURCE_DATE_EPOCH": "315532800"}.items():
        cmd += ["--setenv", k, v]
    cmd += ["--", "/usr/bin/python3", "-I", "/build/src/compile.py", platform, archs, str(jobs), str(extra_pids)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "/toolchains/cuda/bin/nvcc" in r.stdout
    return (src / "int4qat" / "_int4qat.so").read_bytes()


def _e_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return struct.unpack_from("<H", data, 18)[0]


def _cubins(cuobjdump: Path, lib: Path) -> list[str]:
    r = subprocess.run([str(cuobjdump), "--list-elf", str(lib)], capture_output=True, text=True, check=True)
    return sorted({line.rsplit(".", 2)[-2] for line in r.stdout.splitlines() if line.endswith(".cubin")})


@pytest.fixture(scope="session")
def amd64_so(toolkit, tmp_path_factory) -> bytes:
    return sandboxed_build(tmp_path_factory.mktemp("b") / "one", toolkit, "linux/amd64", "sm_90a,sm_100a")


@pytest.mark.slow
def test_toolkit_layout(toolkit):
    for rel in ("bin/nvcc", "bin/ptxas", "bin/fatbinary", "bin/nvlink", "bin/cudafe++", "nvvm/bin/cicc"):
        assert os.access(toolkit / rel, os.X_OK), rel
    for rel in ("bin/nvcc.profile", "bin/crt/link.stub", "nvvm/libdevice/libdevice.10.bc",
                "include/cuda_runtime.h", "include/crt/host_config.h", "include/cccl/cuda/std/cstdint",
                "targets/x86_64-linux/lib/libcudart_static.a", "targets/x86_64-linux/lib/libcudadevrt.a",
                "targets/aarch64-linux/lib/libcudart_static.a", "targets/aarch64-linux/include/crt/host_config.h"):
        assert (toolkit / rel).is_file(), rel
    assert elf_machine(toolkit / "targets/aarch64-linux/lib/libcudart.so.13") == EM_AARCH64
    # the driver's link stub from the real cuda.h: what torch_memory_saver's setup.py links
    stub = subprocess.run(["readelf", "-W", "-d", "--dyn-syms", str(toolkit / "lib64/stubs/libcuda.so")],
                          capture_output=True, text=True, check=True).stdout
    assert "Library soname: [libcuda.so.1]" in stub
    for name in ("cuMemCreate", "cuMemAddressReserve", "cuMemMap", "cuMemAlloc_v2", "cuGetProcAddress_v2"):
        assert f" {name}\n" in stub, name
    out = subprocess.run([str(toolkit / "bin/nvcc"), "--version"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, check=True).stdout
    assert "release 13.0, V13.0.88" in out


@pytest.mark.slow
def test_amd64_build_is_reproducible(toolkit, amd64_so, tmp_path, cuobjdump):
    # another host folder, other tmp dirs: same bytes
    again = sandboxed_build(tmp_path / "elsewhere" / "two", toolkit, "linux/amd64", "sm_90a,sm_100a")
    assert again == amd64_so
    # nvcc in parallel (--threads 2) and at another pid (more processes before it): same bytes
    shifted = sandboxed_build(tmp_path / "three", toolkit, "linux/amd64", "sm_90a,sm_100a",
                              jobs=2, extra_pids=7)
    assert shifted == amd64_so
    assert _e_machine(amd64_so) == EM_X86_64
    lib = tmp_path / "lib.so"
    lib.write_bytes(amd64_so)
    assert _cubins(cuobjdump, lib) == ["sm_100a", "sm_90a"]
    r = subprocess.run(["readelf", "-d", "-W", str(lib)], capture_output=True, text=True, check=True)
    needed = [line.split("[")[1].rstrip("]") for line in r.stdout.splitlines() if "(NEEDED)" in line]
    assert not any("cudart" in n or "libcuda" in n for n in needed), needed  # cudart is static


@pytest.mark.slow
def test_arm64_cross_build(toolkit, tmp_path, cuobjdump):
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("g++-aarch64-linux-gnu is not installed")
    data = sandboxed_build(tmp_path / "arm", toolkit, "linux/arm64", "sm_90a,sm_100a")
    assert _e_machine(data) == EM_AARCH64
    lib = tmp_path / "arm.so"
    lib.write_bytes(data)
    assert _cubins(cuobjdump, lib) == ["sm_100a", "sm_90a"]
    again = sandboxed_build(tmp_path / "arm-again", toolkit, "linux/arm64", "sm_90a,sm_100a")
    assert again == data


@pytest.mark.slow
def test_built_library_loads_without_gpu(amd64_so, tmp_path):
    """The .so loads with only libc/libstdc++ (cudart static); with no driver it reports no device."""
    shutil.copytree(DEMO / "int4qat", tmp_path / "int4qat")
    (tmp_path / "int4qat" / "_int4qat.so").write_bytes(amd64_so)
    q = _load_int4qat(tmp_path / "int4qat", "int4qat_built")
    try:
        import ctypes
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("a CUDA driver is present: bench/gpu_check.py covers this machine")
    except OSError:
        pass
    assert q.available() is False
    with pytest.raises(RuntimeError, match="CUDA error"):
        q.fake_quant([1.0, 2.0], 2)
