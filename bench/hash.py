"""Hashing throughput, measured against baselines in the same run on the same bytes.

1. One 1 GiB file: sha256 + blake3 together (planner.hashing.file_sha256_and_blake3) against
   sha256 alone (hashlib, same read loop). Target: >= 0.9x.
2. An unpacked tree of 1 GiB (mixed file sizes): tree hash v1 against raw blake3 over the
   same bytes read in the same order. Target: >= 0.8x.

Usage: python bench/hash.py [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from planner.hashing import file_sha256_and_blake3, tree_digest  # noqa: E402

CHUNK = 4 << 20


def sha256_alone(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def blake3_raw(paths: list[Path]) -> str:
    h = blake3.blake3()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def make_tree(root: Path, total: int) -> list[Path]:
    rng = random.Random(1)
    sizes = []
    left = total
    while left > 0:
        # mostly small files, some big ones: a source tree with a few large binaries
        s = rng.choice([2 << 10, 16 << 10, 100 << 10, 1 << 20, 8 << 20, 64 << 20])
        s = min(s, left)
        sizes.append(s)
        left -= s
    paths = []
    block = os.urandom(1 << 20)
    for i, s in enumerate(sizes):
        d = root / f"d{i % 37}" / f"e{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i}.bin"
        with open(p, "wb") as f:
            for off in range(0, s, len(block)):
                f.write(block[: min(len(block), s - off)])
        paths.append(p)
    return sorted(paths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="planner-bench-hash-") as tmp:
        big = Path(tmp) / "big.bin"
        block = os.urandom(CHUNK)
        with open(big, "wb") as f:
            for _ in range(size // CHUNK):
                f.write(block)
        sha256_alone(big)  # warm the page cache
        t_sha = best_of(lambda: sha256_alone(big), args.repeat)
        t_both = best_of(lambda: file_sha256_and_blake3(big), args.repeat)
        print(f"file {args.size_mib} MiB: sha256 alone {size / t_sha / 1e6:8.0f} MB/s; "
              f"sha256+blake3 {size / t_both / 1e6:8.0f} MB/s; ratio {t_sha / t_both:.2f}x (target >= 0.90)")
        big.unlink()

        root = Path(tmp) / "tree"
        paths = make_tree(root, size)
        blake3_raw(paths)  # warm
        t_raw = best_of(lambda: blake3_raw(paths), args.repeat)
        t_tree = best_of(lambda: tree_digest(root), args.repeat)
        print(f"tree {args.size_mib} MiB in {len(paths)} files: raw blake3 {size / t_raw / 1e6:8.0f} MB/s; "
              f"tree hash {size / t_tree / 1e6:8.0f} MB/s; ratio {t_raw / t_tree:.2f}x (target >= 0.80)")


if __name__ == "__main__":
    main()
