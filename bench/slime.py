"""The real slime builds on this machine, through a local source mirror: too heavy for CI.

    python bench/slime.py --mirror /work/slime-mirror --store /work/slime-store \
        [--platform linux/amd64] [--variant sm100a] [--targets int4-qat,torch-memory-saver,...]
        [--check-store /work/slime-store2] [--check] [--cuobjdump PATH]

For each target: `planner realise slime --target T --platform P --variant V --json` into the store, then the per-node build seconds from the run, the cubins of every CUDA
wheel (`cuobjdump --list-elf` on each shared library in it) against the variant's arch list, and,
with --check-store, the same realise into a second, empty store and a comparison of the two
outputs' digests (bit-identical or not); with --check, `realise --check`, which builds the
target's closure again in fresh sandboxes and compares each output with the stored one (the same
proof without a second copy of the store; a differing rebuild is kept under `<store>/checks/`). Prints one line per node and a JSON summary at the end.
The lock must already pin the targets' inputs (`planner --mirror M lock slime`).

Exit status: 0 everything built, cubins as declared, stores identical; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CUDA_TARGETS = ("int4-qat", "apex")


def planner(store: Path, mirror: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", "--root", str(REPO), "--store", str(store),
                           "--mirror", mirror, *args], capture_output=True, text=True)


def realise(store: Path, mirror: str, target: str, platform: str, variant: str, *extra: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    proc = planner(store, mirror, "realise", "slime", "--target", target, "--platform", platform,
                   "--variant", variant, "-j", "1", "--json", *extra)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"realise --target {target} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout), wall


def cubins(wheel_dir: Path, cuobjdump: str) -> dict[str, list[str]]:
    """Shared library in each wheel -> sorted sm_XX names of its embedded cubins."""
    out: dict[str, list[str]] = {}
    for whl in sorted(wheel_dir.glob("*.whl")):
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(whl) as zf:
            for name in zf.namelist():
                if not name.endswith(".so"):
                    continue
                path = Path(zf.extract(name, tmp))
                proc = subprocess.run([cuobjdump, "--list-elf", str(path)], capture_output=True, text=True)
                archs = sorted(set(re.findall(r"\.(sm_\d+[af]?)\.cubin", proc.stdout)))
                out[f"{whl.name}:{name}"] = archs
    return out


def expected_archs(variant_archs: list[str], target: str) -> set[str]:
    """The cubins a node must hold: the variant's archs (sm_120+PTX adds PTX, not a cubin);
    int4_qat's setup.py always adds sm_90a."""
    want = {a.split("+")[0] for a in variant_archs}
    if target == "int4-qat":
        want.add("sm_90a")
    return want


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", required=True)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--check-store", type=Path, default=None)
    ap.add_argument("--check", action="store_true", help="rebuild each target's closure and compare (realise --check)")
    ap.add_argument("--platform", default="linux/amd64")
    ap.add_argument("--variant", default="sm100a")
    ap.add_argument("--targets", default="int4-qat,torch-memory-saver,sglang,megatron-lm,slime")
    ap.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    args = ap.parse_args()
    mirror = args.mirror if "://" in args.mirror else Path(args.mirror).resolve().as_uri()
    sys.path.insert(0, str(REPO))
    from planner.recipes import load_set

    rs = load_set(REPO, "slime")
    archs = rs.config.archs(args.variant, args.platform)
    summary: dict = {"platform": args.platform, "variant": args.variant, "archs": archs, "nodes": {}}
    ok = True
    for target in args.targets.split(","):
        result, wall = realise(args.store, mirror, target, args.platform, args.variant)
        for n in result["nodes"]:
            if n["action"] == "built":
                summary["nodes"].setdefault(n["id"], {})["seconds"] = n["seconds"]
                print(f"built {n['id']}: {n['seconds']:.0f}s")
        for t in result["targets"]:
            node = next(n for n in result["nodes"] if n["id"] == t)
            entry = summary["nodes"].setdefault(t, {})
            entry["digest"] = node["digest"]
            entry["path"] = node["path"]
            if target in CUDA_TARGETS:
                found = cubins(Path(node["path"]), args.cuobjdump)
                entry["cubins"] = found
                want = expected_archs(archs, target)
                # Host-only extensions (apex_C) hold no device code; every other library must
                # hold exactly the variant's cubins, and at least one must hold any.
                ok &= any(found.values())
                for lib, have in found.items():
                    if not have:
                        print(f"cubins {lib}: none (host code only)")
                        continue
                    good = set(have) == want
                    ok &= good
                    print(f"cubins {lib}: {' '.join(have)} ({'as declared' if good else 'EXPECTED ' + ' '.join(sorted(want))})")
            if args.check_store is not None:
                other, _ = realise(args.check_store, mirror, target, args.platform, args.variant)
                o = next(n for n in other["nodes"] if n["id"] == t)
                entry["identical"] = o["digest"] == node["digest"]
                ok &= entry["identical"]
                print(f"two stores {t}: {'identical' if entry['identical'] else 'DIFFER'} ({node['digest']})")
        if args.check:
            checked, check_wall = realise(args.store, mirror, target, args.platform, args.variant, "--check")
            for c in checked["checks"]:
                summary["nodes"].setdefault(c["node"], {})["check"] = c
                ok &= c["ok"]
                kept = f"; the rebuild is kept in {c['kept']}" if c.get("kept") else ""
                print(f"check {c['node']}: {'identical' if c['ok'] else 'DIFFERS: ' + ' '.join(c['differing'])}{kept}")
            print(f"realise --target {target} --check: {check_wall:.0f}s wall")
        print(f"realise --target {target}: {wall:.0f}s wall")
    print(json.dumps(summary, indent=2, sort_keys=True))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
