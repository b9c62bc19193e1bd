"""OCI benchmarks, as ratios measured in one run.

1. Layer assembly throughput against the pinned compressor alone on the same bytes: a ~200 MB
   tree of mixed files (source-like text, many small files, binaries, incompressible data) is
   written as a layer (`write_layer`: walk, tar, diff_id sha256, deflate, gzip frame, blob
   sha256, atomic blob write) and, separately, its tar bytes are compressed with zlib alone at
   the same level and settings. Target: layer throughput >= 0.9 x the compressor's.
2. The demo image: its size and how much of it is shared between platforms and CUDA variants
   (sum of unique blob sizes vs the sum over every platform manifest of what it references).

    python bench/oci.py [LAYOUT]    LAYOUT: a realised demo image (store path); default: the
                                    output of `planner realise demo --json` in this checkout
    python bench/oci.py --size-mb 200 --rounds 5 [--skip-image | --skip-layer]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planner.oci.descriptor import INDEX_TYPES, MANIFEST_TYPES  # noqa: E402
from planner.oci.layer import GZIP_LEVEL, LayerSource, compressor_id, write_layer, write_tar  # noqa: E402
from planner.oci.layout import read_layout  # noqa: E402

SDE = 1772022058
_WORDS = (b"def class return import from self if else elif for while in not and or None True False "
          b"tensor kernel batch grad loss optimizer rollout reward token model layer shard rank "
          b"world_size device cuda stream float32 int4 quantize scale group_size torch numpy").split()


def _text(rng: random.Random, size: int) -> bytes:
    lines, n = [], 0
    while n < size:
        indent = b"    " * rng.randrange(4)
        line = indent + b" ".join(rng.choice(_WORDS) for _ in range(rng.randrange(3, 12))) + b"\n"
        lines.append(line)
        n += len(line)
    return b"".join(lines)[:size]


def _binary(rng: random.Random, size: int) -> bytes:
    # Machine-code-like: short repeated motifs with random operands (compresses ~2-3x).
    motifs = [rng.randbytes(rng.randrange(4, 16)) for _ in range(256)]
    out, n = [], 0
    while n < size:
        chunk = rng.choice(motifs) + rng.randbytes(rng.randrange(0, 6))
        out.append(chunk)
        n += len(chunk)
    return b"".join(out)[:size]


def make_tree(root: Path, total_mb: int, seed: int = 1) -> int:
    """A mixed tree of about `total_mb` MB; returns the byte count of file contents."""
    rng = random.Random(seed)
    budget = total_mb << 20
    shares = {"text": 0.35, "small": 0.10, "binary": 0.30, "random": 0.25}
    total = 0
    for kind, share in shares.items():
        left = int(budget * share)
        i = 0
        while left > 0:
            if kind == "small":
                size = min(left, rng.randrange(200, 8 << 10))
                data = _text(rng, size)
                path = root / "site-packages" / f"pkg{i % 97}" / f"mod{i}.py"
            elif kind == "text":
                size = min(left, rng.randrange(64 << 10, 2 << 20))
                data = _text(rng, size)
                path = root / "src" / f"dir{i % 13}" / f"file{i}.txt"
            elif kind == "binary":
                size = min(left, rng.randrange(1 << 20, 12 << 20))
                data = _binary(rng, size)
                path = root / "lib" / f"lib{i}.so"
            else:
                size = min(left, rng.randrange(2 << 20, 16 << 20))
                data = rng.randbytes(size)
                path = root / "data" / f"weights{i}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if kind == "binary":
                path.chmod(0o755)
            left -= size
            total += size
            i += 1
    return total


class _Buffer:
    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, data: bytes) -> int:
        return self.buf.write(data)


def zlib_alone(data: memoryview, level: int = GZIP_LEVEL) -> tuple[float, int]:
    """The pinned compressor alone (raw deflate, same settings as write_layer's gzip stream),
    fed the same 1 MiB chunks; returns (seconds, compressed bytes)."""
    t0 = time.perf_counter()
    z = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
    n = 0
    for i in range(0, len(data), 1 << 20):
        n += len(z.compress(data[i:i + (1 << 20)]))
    n += len(z.flush())
    return time.perf_counter() - t0, n


def bench_layer(size_mb: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-oci-") as tmp:
        tree = Path(tmp) / "tree"
        content = make_tree(tree, size_mb)
        sink = _Buffer()
        tar_bytes = write_tar([LayerSource(tree)], sink, source_date_epoch=SDE)
        data = sink.buf.getbuffer()
        layer_times, zlib_times = [], []
        size = 0
        for r in range(rounds):
            blobs = Path(tmp) / f"blobs{r}"
            t0 = time.perf_counter()
            layer = write_layer([LayerSource(tree)], blobs, source_date_epoch=SDE)
            layer_times.append(time.perf_counter() - t0)
            size = layer.descriptor.size
            shutil.rmtree(blobs)
            secs, zsize = zlib_alone(data)
            zlib_times.append(secs)
        del data
    lt, zt = min(layer_times), min(zlib_times)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {
        "compressor": compressor_id("gzip"),
        "content_bytes": content,
        "tar_bytes": tar_bytes,
        "layer_bytes": size,
        "deflate_bytes": zsize,
        "layer_s": lt,
        "zlib_s": zt,
        "layer_mb_s": tar_bytes / lt / 1e6,
        "zlib_mb_s": tar_bytes / zt / 1e6,
        "ratio": zt / lt,
        "rounds": rounds,
        "median_ratio": med(zlib_times) / med(layer_times),
        "all_layer_s": layer_times,
        "all_zlib_s": zlib_times,
    }


def find_layout(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "planner.cli", "realise", "demo", "--json"], cwd=repo,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"planner realise demo failed:\n{proc.stderr}")
    return Path(json.loads(proc.stdout)["output"])


def image_sizes(layout_dir: Path) -> dict:
    lay = read_layout(layout_dir)
    unique: dict[str, int] = {}
    per_manifest: dict[str, int] = {}
    layer_use: dict[str, list[str]] = {}
    layer_size: dict[str, int] = {}
    for top in lay.manifests:
        for d in lay.walk(top):
            unique[d.digest] = d.size
        if top.media_type in MANIFEST_TYPES:
            tag = top.annotation("org.opencontainers.image.ref.name") or top.digest
            doc = lay.read_json(top)
            total = top.size + doc["config"]["size"]
            for layer in doc["layers"]:
                total += layer["size"]
                layer_use.setdefault(layer["digest"], []).append(tag)
                layer_size[layer["digest"]] = layer["size"]
            per_manifest[tag] = total
    indexes = sum(d.size for d in lay.manifests if d.media_type in INDEX_TYPES)
    return {
        "manifests": per_manifest,
        "sum_over_manifests": sum(per_manifest.values()) + indexes,
        "unique": sum(unique.values()),
        "layers": {d: (layer_size[d], sorted(tags)) for d, tags in layer_use.items()},
        "attestations": sum(p.stat().st_size for p in (layout_dir / "attestations").glob("*"))
        if (layout_dir / "attestations").is_dir() else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("layout", nargs="?", help="a realised demo image layout (store path)")
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-layer", action="store_true", help="only the demo image's sizes")
    ap.add_argument("--skip-image", action="store_true", help="only the layer throughput")
    args = ap.parse_args()

    if not args.skip_layer:
        r = bench_layer(args.size_mb, args.rounds)
        print(f"layer assembly vs compressor alone ({r['compressor']}), best of {r['rounds']}:")
        print(f"  tree: {r['content_bytes'] / 1e6:.1f} MB of file content, tar {r['tar_bytes'] / 1e6:.1f} MB, "
              f"layer blob {r['layer_bytes'] / 1e6:.1f} MB (deflate alone {r['deflate_bytes'] / 1e6:.1f} MB)")
        print(f"  write_layer      {r['layer_s']:7.2f} s  {r['layer_mb_s']:7.1f} MB/s (of tar)")
        print(f"  zlib alone       {r['zlib_s']:7.2f} s  {r['zlib_mb_s']:7.1f} MB/s")
        verdict = "ok" if r["ratio"] >= 0.9 else "BELOW TARGET"
        print(f"  ratio            {r['ratio']:.3f} x the compressor's throughput (target >= 0.9: {verdict}); "
              f"median-to-median {r['median_ratio']:.3f}")
        print("  rounds (s): layer " + " ".join(f"{x:.2f}" for x in r["all_layer_s"])
              + " | zlib " + " ".join(f"{x:.2f}" for x in r["all_zlib_s"]))

    if args.skip_image:
        return
    layout = find_layout(args.layout)
    s = image_sizes(layout)
    print(f"demo image: {layout}")
    for tag, total in sorted(s["manifests"].items()):
        print(f"  {tag:24s} {total / 1e6:8.2f} MB  (manifest + config + layers)")
    shared = s["sum_over_manifests"] - s["unique"]
    print(f"  sum over manifests  {s['sum_over_manifests'] / 1e6:8.2f} MB  (what 4 separate images would hold)")
    print(f"  unique blobs        {s['unique'] / 1e6:8.2f} MB  (the layout, what a registry stores)")
    print(f"  shared              {shared / 1e6:8.2f} MB  ({shared / s['sum_over_manifests']:.1%} of the sum; "
          f"unique/sum = {s['unique'] / s['sum_over_manifests']:.3f})")
    print("  layers (size, used by):")
    for digest, (size, tags) in sorted(s["layers"].items(), key=lambda kv: -kv[1][0]):
        print(f"    {digest[7:19]} {size / 1e6:8.3f} MB  x{len(tags)}  {', '.join(tags)}")
    print(f"  attestations beside the layout: {s['attestations'] / 1e3:.1f} kB (not in the image)")


if __name__ == "__main__":
    main()
