"""The CUDA driver's link stub written by the toolkit assembly: linked by the real GNU linker
(also with --as-needed), loaded by the real dynamic loader, the names from a real-shaped cuda.h."""

from __future__ import annotations

import ctypes
import platform
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from planner.builders.driver_stub import SONAME, driver_api_symbols, driver_stub

EM_X86_64, EM_AARCH64 = 62, 183

# The shapes cuda.h uses: plain declarations, versioned names by #define, per-thread-stream names.
CUDA_H = """
#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
    #define __CUDA_API_PTDS(api) api ## _ptds
    #define __CUDA_API_PTSZ(api) api ## _ptsz
#endif
#define cuMemAlloc                          cuMemAlloc_v2
#define cuMemcpy                            __CUDA_API_PTDS(cuMemcpy)
#define cuLaunchKernel                      __CUDA_API_PTSZ(cuLaunchKernel)
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void *CUstream;
CUresult CUDAAPI cuInit(unsigned int Flags);
CUresult CUDAAPI cuMemAlloc(CUdeviceptr *dptr, unsigned long bytesize);
CUresult CUDAAPI cuMemcpy(CUdeviceptr dst, CUdeviceptr src, unsigned long n);
CUresult CUDAAPI cuLaunchKernel(void *f, CUstream s);
typedef CUresult (CUDAAPI *PFN_cuInit)(unsigned int);
"""


def test_symbols_from_header():
    names = driver_api_symbols([CUDA_H])
    assert names == sorted(names)
    for n in ("cuInit", "cuMemAlloc", "cuMemAlloc_v2", "cuMemcpy", "cuMemcpy_ptds",
              "cuLaunchKernel", "cuLaunchKernel_ptsz"):
        assert n in names, n
    assert not any(n.startswith("PFN") for n in names)


def test_bytes_depend_only_on_names_and_machine():
    names = driver_api_symbols([CUDA_H])
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    assert driver_stub(names, EM_X86_64) == driver_stub(shuffled + names[:2], EM_X86_64)
    assert driver_stub(names, EM_X86_64) != driver_stub(names, EM_AARCH64)


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="machine"):
        driver_stub(["cuInit"], 3)
    with pytest.raises(ValueError, match="identifiers"):
        driver_stub(["cuInit", "bad name\n"], EM_X86_64)
    with pytest.raises(ValueError, match="identifiers"):
        driver_stub([], EM_X86_64)


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True, check=True).stdout


def _link_user(tmp_path: Path, cc: str, stub: bytes) -> Path:
    """Link a shared object calling the driver API against the stub, with --as-needed."""
    (tmp_path / "stubs").mkdir()
    (tmp_path / "stubs" / "libcuda.so").write_bytes(stub)
    (tmp_path / "cuda.h").write_text(CUDA_H.replace("CUDAAPI", ""))
    (tmp_path / "user.c").write_text(
        '#define CUDA_API_PER_THREAD_DEFAULT_STREAM 1\n#include "cuda.h"\n'
        "int use(void) { CUdeviceptr p; return cuInit(0) + cuMemAlloc(&p, 8) + cuMemcpy(p, p, 8); }\n")
    out = tmp_path / "libuser.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(tmp_path / "user.c"),
                    "-Wl,--as-needed", f"-L{tmp_path / 'stubs'}", "-lcuda"], check=True,
                   capture_output=True)
    return out


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("readelf") is None,
                    reason="needs gcc and binutils")
def test_linker_records_the_driver_soname(tmp_path):
    stub = driver_stub(driver_api_symbols([CUDA_H]), EM_X86_64 if platform.machine() == "x86_64" else EM_AARCH64)
    lib = _link_user(tmp_path, "gcc", stub)
    dyn = _readelf("-d", str(lib))
    assert f"Shared library: [{SONAME}]" in dyn  # kept under --as-needed: the stub defines the calls
    undefined = _readelf("--dyn-syms", str(lib))
    for name in ("cuInit", "cuMemAlloc_v2", "cuMemcpy_ptds"):
        assert f" UND {name}" in undefined, name
    assert f"Library soname: [{SONAME}]" in _readelf("-d", str(tmp_path / "stubs" / "libcuda.so"))


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs gcc-aarch64-linux-gnu")
def test_arm64_stub_links_with_the_cross_linker(tmp_path):
    lib = _link_user(tmp_path, "aarch64-linux-gnu-gcc", driver_stub(driver_api_symbols([CUDA_H]), EM_AARCH64))
    assert "Machine:                           AArch64" in _readelf("-h", str(lib))
    assert f"Shared library: [{SONAME}]" in _readelf("-d", str(lib))


@pytest.mark.skipif(platform.machine() != "x86_64", reason="loads an x86_64 stub")
def test_loader_maps_it_and_calls_return_stub_library(tmp_path):
    path = tmp_path / "libcuda.so"
    path.write_bytes(driver_stub(driver_api_symbols([CUDA_H]), EM_X86_64))
    lib = ctypes.CDLL(str(path))
    assert lib.cuInit(0) == 34  # CUDA_ERROR_STUB_LIBRARY, as NVIDIA's stub answers
    assert lib.cuMemcpy_ptds(0, 0, 0) == 34
    with pytest.raises(AttributeError):
        lib.cuNotAFunction
