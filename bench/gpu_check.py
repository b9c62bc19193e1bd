#!/usr/bin/env python3
"""Check a built int4qat wheel on a real GPU against the pure-Python reference.

    python3 bench/gpu_check.py dist/int4qat-0.1.0-...-linux_x86_64.whl   # or an unpacked dir
    [--n 1048576] [--groups 32,128] [--seed 0] [--check-n N]

Unzips the wheel to a temporary folder, imports `int4qat` from there (never from elsewhere on
sys.path), runs `fake_quant` on seeded random data plus hand-made edge cases (ties at .5, zero
groups, a subnormal scale, a short last group), and compares with `reference` bit for bit
(float32 bit patterns). Prints max |diff| and the number of mismatches per group size.

Exit status: 0 all equal; 1 mismatches; 2 usage/import errors; 77 no GPU or no libcuda.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import random
import sys
import tempfile
import time
import zipfile
from array import array
from pathlib import Path

SKIP = 77


def cuda_device_count() -> tuple[int, str]:
    """(count, why) using the driver API only; count 0 when no driver or no GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return 0, f"libcuda.so.1 not loadable ({exc})"
    rc = cuda.cuInit(0)
    if rc != 0:
        return 0, f"cuInit failed with CUresult {rc}"
    count = ctypes.c_int(0)
    rc = cuda.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0:
        return 0, f"cuDeviceGetCount failed with CUresult {rc}"
    if count.value == 0:
        return 0, "no CUDA device visible"
    name = ctypes.create_string_buffer(256)
    dev = ctypes.c_int(0)
    cuda.cuDeviceGet(ctypes.byref(dev), 0)
    cuda.cuDeviceGetName(name, 256, dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # COMPUTE_CAPABILITY_MINOR
    return count.value, f"{name.value.decode()} (sm_{major.value}{minor.value})"


def unpack(target: Path, tmp: Path) -> Path:
    """The folder to put on sys.path: holds int4qat/."""
    if target.is_file():
        with zipfile.ZipFile(target) as zf:
            for info in zf.infolist():
                if info.filename.startswith("/") or ".." in Path(info.filename).parts:
                    raise SystemExit(f"unsafe member in {target}: {info.filename}")
            zf.extractall(tmp)
        root = tmp
    elif (target / "int4qat" / "__init__.py").is_file():
        root = target
    elif target.name == "int4qat" and (target / "__init__.py").is_file():
        root = target.parent
    else:
        raise SystemExit(f"{target}: neither a wheel nor a folder holding int4qat/")
    return root


def edge_cases() -> list[float]:
    out: list[float] = []
    # group of 8 with amax 7 -> scale 1: exact ties, round half away from zero
    out += [7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -7.0]
    out += [0.0] * 8                                   # zero group -> zeros
    out += [3.5, -3.5, 0.25, -0.0, 1e-3, 6.99, -6.5, 3.0]
    out += [1e-44, -1e-44, 7e-45, 3e-45, 0.0, 0.0, 1.4e-45, -1.4e-45]  # subnormal scale, clamp at -8
    out += [1e30, -3e38, 2e38, 1.0, -1.0, 0.0, 5e37, -5e37]            # huge values
    return out


def compare(got: array, want: list[float]) -> tuple[int, float, list[int]]:
    want_a = array("f", want)
    gb = memoryview(got).cast("B").cast("I")
    wb = memoryview(want_a).cast("B").cast("I")
    bad = [i for i in range(len(want_a)) if gb[i] != wb[i]]
    max_diff = 0.0
    for i in bad:
        d = abs(got[i] - want_a[i])
        if d == d and d > max_diff:
            max_diff = d
    return len(bad), max_diff, bad[:5]


def torch_stream_check(mod, data: array, *, no_torch: bool) -> int:
    """If PyTorch with CUDA is importable: call the stream launcher `int4qat_fake_quant` on
    device tensors (torch's current stream) and compare with the host launcher. Returns the
    number of mismatches (0 when skipped)."""
    if no_torch:
        return 0
    try:
        import torch  # noqa: PLC0415
    except Exception:  # noqa: BLE001
        print("torch: not importable, stream launcher check skipped")
        return 0
    if not torch.cuda.is_available():
        print("torch: no CUDA, stream launcher check skipped")
        return 0
    lib = mod._load()
    x = torch.frombuffer(bytearray(data.tobytes()), dtype=torch.float32).cuda()
    out = torch.empty_like(x)
    stream = torch.cuda.current_stream()
    rc = lib.int4qat_fake_quant(x.data_ptr(), out.data_ptr(), x.numel(), 128, stream.cuda_stream)
    stream.synchronize()
    if rc != 0:
        print(f"torch: int4qat_fake_quant returned {rc}")
        return 1
    got = array("f", out.cpu().tolist())
    want = mod.fake_quant_array(data, 128)
    bad = sum(1 for a, b in zip(memoryview(got).cast("B").cast("I"), memoryview(want).cast("B").cast("I")) if a != b)
    print(f"torch {torch.__version__}: stream launcher on device tensors (group 128) vs host launcher: "
          f"mismatches={bad}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("wheel", type=Path, help="int4qat wheel, or a folder holding int4qat/")
    ap.add_argument("--n", type=int, default=1 << 20, help="random values (default 1<<20)")
    ap.add_argument("--groups", default="32,128,1000", help="group sizes, comma separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-n", type=int, default=None,
                    help="compare only the first N values with the reference (default: all)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch stream-launcher check")
    args = ap.parse_args(argv)

    count, why = cuda_device_count()
    if count == 0:
        print(f"SKIP: {why}")
        return SKIP
    print(f"device: {why}, {count} visible")

    with tempfile.TemporaryDirectory(prefix="int4qat-check-") as tmp:
        root = unpack(args.wheel.resolve(), Path(tmp))
        sys.path.insert(0, str(root))
        try:
            mod = importlib.import_module("int4qat")
        except Exception as exc:  # noqa: BLE001
            print(f"FAIL: cannot import int4qat from {root}: {exc}")
            return 2
        if Path(mod.__file__).resolve().parent != (root / "int4qat").resolve():
            print(f"FAIL: imported {mod.__file__}, not the one under {root}")
            return 2
        print(f"int4qat {mod.__version__} from {Path(mod.__file__).parent} lib {mod.library_path().name}")
        if not mod.available():
            print("FAIL: library loaded but no device reported by cudaGetDeviceCount")
            return 2

        rng = random.Random(args.seed)
        data = array("f", (rng.gauss(0.0, 1.0) * (10.0 ** rng.randint(-3, 3)) for _ in range(args.n)))
        data[: len(edge_cases())] = array("f", edge_cases())
        # n not a multiple of any group size: a short last group
        data.append(0.123)

        failures = 0
        for g in [int(x) for x in args.groups.split(",") if x]:
            t0 = time.perf_counter()
            got = mod.fake_quant_array(data, g)
            t_gpu = time.perf_counter() - t0
            m = len(data) if args.check_n is None else min(len(data), args.check_n)
            # the subset keeps whole groups, plus the short tail group
            m = min(len(data), (m + g - 1) // g * g)
            sub = data[:m]
            t0 = time.perf_counter()
            want = mod.reference(sub, g)
            t_ref = time.perf_counter() - t0
            tail_want = mod.reference(data[(len(data) - 1) // g * g:], g)
            tail_got = got[(len(data) - 1) // g * g:]
            bad, max_diff, first = compare(got[:m], want)
            tbad, tdiff, _ = compare(tail_got, tail_want)
            bad += tbad
            max_diff = max(max_diff, tdiff)
            failures += bad
            print(f"group_size={g:5d} n={len(data)} compared={m}+tail max_abs_diff={max_diff:.3g} "
                  f"mismatches={bad} gpu={t_gpu*1e3:.1f}ms ref={t_ref:.2f}s"
                  + (f" first_bad={first}" if bad else ""))
        failures += torch_stream_check(mod, data, no_torch=args.no_torch)
        # error path: bad group size
        try:
            mod.fake_quant([1.0], 0)
            print("FAIL: group_size=0 accepted")
            failures += 1
        except ValueError:
            pass
    print("OK: kernel matches reference bit for bit" if failures == 0 else f"FAIL: {failures} mismatches")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
