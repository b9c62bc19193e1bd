"""A small real build root for test sets: a subset of the demo's pinned Debian 12 `.deb`s (bash,
coreutils, dash, python3.11 and what it loads, patch), pinned by copying the demo lock's entries
(no apt call), fetched by their pinned URLs and unpacked by the `debian-rootfs` builder.

    add_build_root(proj)   # writes recipes/<set>/buildroot.toml, set.toml's build-root, the pins

The `build_root_project` fixture (tests/conftest.py) realises it once per test session.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import attrs

from planner import lock as lockmod
from planner.lock import Lock
from planner.recipes import load_set

from .project import Project

REPO = Path(__file__).resolve().parents[2]
DEMO_LOCK = REPO / "lockfiles" / "demo.lock"

# Enough for `shell` steps and the Python runtime that unpacks and patches (stdlib + its libraries).
PACKAGES = (
    "base-files bash coreutils dash libc6 libgcc-s1 gcc-12-base libacl1 libattr1 libselinux1 libpcre2-8-0 "
    "libgmp10 libtinfo6 sed grep tar gzip findutils diffutils mawk patch libc-bin python3.11-minimal "
    "libpython3.11-minimal libexpat1 zlib1g libpython3.11-stdlib libffi8 libbz2-1.0 liblzma5 libncursesw6 "
    "libreadline8 readline-common libsqlite3-0 libuuid1 libdb5.3 libnsl2 libtirpc3 libtirpc-common libcrypt1 "
    "libssl3 media-types libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1 "
    "libzstd1 python3-minimal python3 libpython3-stdlib zstd liblz4-1").split()


def _toml_key(name: str) -> str:
    return f'"{name}"' if any(c in name for c in ".+") else name


def build_root_toml(name: str = "buildroot") -> str:
    out = [f'name = "{name}"', 'version = "12-small"', 'axes = ["host"]', 'platforms = ["linux/amd64"]', ""]
    for pkg in PACKAGES:
        out += [f"[inputs.{_toml_key(pkg)}]", 'kind = "apt"', f'name = "{pkg}"', ""]
    out += ["[build]", 'builder = "debian-rootfs"', "", "[build.settings]", 'links = { "usr/bin/awk" = "mawk" }']
    return "\n".join(out) + "\n"


def add_build_root(proj: Project, *, target: str, name: str = "buildroot") -> None:
    """Make `proj`'s set build in a real build root: the recipe, set.toml's `build-root`, and the
    demo lock's pins for its packages (the project's own inputs are locked by `proj.lock()`)."""
    text = (proj.folder / "set.toml").read_text().replace('build-root = "host"\n', "")
    (proj.folder / "set.toml").write_text(text + f'build-root = "{name}"\n')
    proj.write_raw(name, build_root_toml(name))
    demo = lockmod.read(DEMO_LOCK)
    decls = lockmod.declarations(load_set(proj.root, proj.set))
    inputs = {}
    for pkg in PACKAGES:  # the demo's amd64 pin, under this recipe's declaration
        id_ = f"{name}/{pkg}"
        inputs[id_] = attrs.evolve(demo.inputs[f"buildroot/{pkg}"], id=id_, spec=decls[id_].spec(),
                                   pins={"linux/amd64": demo.inputs[f"buildroot/{pkg}"].pins["linux/amd64"]})
    epoch = tomllib.loads(text)["source-date-epoch"]
    seed = Lock(set=proj.set, recipes="", source_date_epoch=epoch, inputs=inputs)
    proj.lockfile.parent.mkdir(parents=True, exist_ok=True)
    lockmod.write_atomic(proj.lockfile, lockmod.to_toml(seed))
