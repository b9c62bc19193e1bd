#!/usr/bin/env python3
"""Write the prefetched pins of slime's GitHub inputs into lockfiles/slime.lock.

GitHub cannot be reached from the project's machines, so `planner lock slime` marks every git
input (and the two patches fetched from raw.githubusercontent.com) `unlocked`. Their commits
and tree hashes were computed elsewhere with tree hash v1 (shared/reference/tree-hash.md,
"Prefetched pins of the slime stack"); this script copies them into the unlocked entries, so that

- `planner plan slime` shows the full commit of every git input, and
- a later `planner lock slime --update ID` on a machine with network fetches exactly that commit
  and fails with a hash mismatch if its content is not the tree recorded here (the lock keeps an
  unlocked entry's pins as the expected ones).

Only `unlocked` entries whose recipe declaration is unchanged (same `spec`) are touched; a
`locked` entry is compared with the table and a disagreement is an error. Run after
`planner lock slime`:

    python3 recipes/slime/prefetched_pins.py          # write the pins
    python3 recipes/slime/prefetched_pins.py --check  # exit 1 if an entry lacks its pin
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

import attrs  # noqa: E402

from planner import lock as lockmod  # noqa: E402
from planner.lock import ANY, Pin  # noqa: E402
from planner.recipes import load_set  # noqa: E402

SLIME_RAW = "https://raw.githubusercontent.com/THUDM/slime/7014942c17625732dbe9239c0aa9d8e7d7265ccc/docker/patch/latest"

# lock id -> pin (tree-hash.md; "not computed" there means a commit without a tree).
PREFETCHED: dict[str, Pin] = {
    "apex/source": Pin(
        commit="10417aceddd7d5d05d7cbf7b0fc2daad1105f8b4", url="https://github.com/NVIDIA/apex.git",
        tree="blake3:46a1d6edf60da84dffa36c24705ced858f3f5d5f4f04aa50f1356d8ad0e16b06"),
    "apex/source/sub/apex/contrib/csrc/cudnn-frontend": Pin(
        commit="171a7a986f7fbd9ed71bd0cf3c7ad4f55843d6b3", url="https://github.com/NVIDIA/cudnn-frontend.git"),
    "apex/source/sub/apex/contrib/csrc/multihead_attn/cutlass": Pin(
        commit="66d9cddc832c1cdc2b30a8755274f7f74640cfe6", url="https://github.com/NVIDIA/cutlass.git"),
    "megatron-lm/source": Pin(
        commit="3714d81d418c9f1bca4594fc35f9e8289f652862", url="https://github.com/NVIDIA/Megatron-LM.git",
        tree="blake3:d7ef8ec61a2f573a1085d9a0a88a9279e96122ba0eda78b985d19b0bb3d30fbd"),
    "slime/source": Pin(
        commit="7014942c17625732dbe9239c0aa9d8e7d7265ccc", url="https://github.com/THUDM/slime.git",
        tree="blake3:fdf39c94212521de87b58ba1f01e93e4b0886233f64c9a3f7671582845b247bd"),
    "int4-qat/source": Pin(
        commit="7014942c17625732dbe9239c0aa9d8e7d7265ccc", url="https://github.com/THUDM/slime.git",
        tree="blake3:6f09dd7b1fadb0af6eb9fad18b4796fd1a0da1492e9797ce4279fecee82f864e"),
    "torch-memory-saver/source": Pin(
        commit="dc6876905830430b5054325fa4211ff302169c6b", url="https://github.com/fzyzcjy/torch_memory_saver.git",
        tree="blake3:dc5fa781cb562a599e247c0fa57459e343495719fd337a91d7b981e392c5897e"),
    "mbridge/source": Pin(
        commit="89eb10887887bc74853f89a4de258c0702932a1c", url="https://github.com/ISEEKYAN/mbridge.git"),
    "sglang/source": Pin(
        commit="bbe9c7eeb520b0a67e92d133dfc137a3688dc7f2", url="https://github.com/sgl-project/sglang.git"),
    "megatron-bridge/source": Pin(
        commit="35b4ebfc486fb15dcc0273ceea804c3606be948a", url="https://github.com/fzyzcjy/Megatron-Bridge.git"),
    "sglang/patch/sglang.patch": Pin(
        sha256="4b3f4b654db0fc3c96cb76a7d2a6159e4e69d5cbd4cf643b20fccbdaec8e583f", size=80655,
        filename="sglang.patch", url=f"{SLIME_RAW}/sglang.patch",
        tree="blake3:22fb9b7ff2ffa4f485ed41373592275daac2bdc71b3a7900a2062b1ece426957"),
    "megatron-lm/patch/megatron.patch": Pin(
        sha256="58465ac5e4782f28cc41bec1ba76121547b7993a325b21540edc18ea79227878", size=35693,
        filename="megatron.patch", url=f"{SLIME_RAW}/megatron.patch",
        tree="blake3:48474c72026aaa0aed23f969163505d7b58151f4f84b744fddc28221c58432b2"),
}


def _agrees(have: Pin, want: Pin) -> bool:
    """Every field the table gives is what the lock has (the lock may know more)."""
    return all(getattr(have, f.name) == getattr(want, f.name)
               for f in attrs.fields(Pin) if getattr(want, f.name) is not None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a pin is missing or differs")
    args = ap.parse_args(argv)
    rs = load_set(ROOT, "slime")
    lk = lockmod.read(rs.lockfile)
    decls = lockmod.declarations(rs)
    inputs = dict(lk.inputs)
    problems: list[str] = []
    changed = 0
    for id_, want in PREFETCHED.items():
        li = inputs.get(id_)
        if id_ not in decls:
            problems.append(f"{id_}: no recipe declares it")
            continue
        if li is None or li.spec != decls[id_].spec():
            problems.append(f"{id_}: not in the lock or declared differently: run `planner lock slime` first")
            continue
        have = li.pins.get(ANY)
        if li.status == "locked":
            if have is None or not _agrees(have, want):
                problems.append(f"{id_}: locked to {have}, but the prefetched pin is {want}")
            continue
        if have == want:
            continue
        if args.check:
            problems.append(f"{id_}: unlocked without its prefetched pin")
            continue
        inputs[id_] = attrs.evolve(li, pins={ANY: want})
        changed += 1
    for p in problems:
        print(f"prefetched_pins: {p}", file=sys.stderr)
    if changed:
        lockmod.write_atomic(rs.lockfile, lockmod.to_toml(attrs.evolve(lk, inputs=inputs)))
        print(f"wrote {changed} prefetched pin(s) into {rs.lockfile.relative_to(ROOT)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
