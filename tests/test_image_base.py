"""A base image from a registry, pinned by digest per platform: pulled through the OCI
distribution API, unpacked with whiteouts, and used as the root filesystem a build runs in
(the way slime's extensions build inside the sglang image)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.registry import registry  # noqa: F401  (session fixture)

from .conftest import REPO, run_planner

pytestmark = pytest.mark.slow


def _project(root: Path, ref: str) -> None:
    folder = root / "recipes/onbase"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "probe"\nsource-date-epoch = 1700000000\n'
                                     'platforms = ["linux/amd64", "linux/arm64"]\n')
    (folder / "pulled.toml").write_text(
        f'name = "pulled"\nversion = "1"\n[source]\nkind = "image"\nurl = "{ref}"\n'
        '[build]\nbuilder = "image-rootfs"\n')
    src = root / "src/probe"
    shutil.copytree(REPO / "recipes/demo/src/base-probe", src)
    (folder / "probe.toml").write_text(
        'name = "probe"\nversion = "1.0"\nplatforms = ["linux/amd64"]\n'
        '[source]\nkind = "path"\npath = "src/probe"\n'
        '[inputs.setuptools]\nkind = "pypi"\nname = "setuptools"\nversion = "75.8.0"\ndist = "wheel"\n'
        '[inputs.wheel]\nkind = "pypi"\nname = "wheel"\nversion = "0.45.1"\ndist = "wheel"\n'
        '[build]\nbuilder = "python-wheel"\nrootfs = "pulled"\n')


def test_registry_base_pinned_by_digest_and_built_inside(demo_runs: dict, registry: str,  # noqa: F811
                                                         tmp_path: Path) -> None:
    store_a = str(demo_runs["store_a"])
    pushed = run_planner("--store", store_a, "push", "demo", f"{registry}/base:v1", "--plain-http").stdout.split()
    index_digest = pushed[1]
    root, store = tmp_path / "p", tmp_path / "s"
    _project(root, f"{registry}/base:v1")
    run_planner("--root", str(root), "--store", str(store), "lock", "onbase")
    lock = (root / "lockfiles/onbase.lock").read_text()
    # One pin per platform: the platform's manifest digest (not the mutable tag, not the index).
    index = json.loads(Path(demo_runs["a"]["output"], "blobs/sha256", index_digest.split(":")[1]).read_text())
    for m in index["manifests"]:
        assert m["digest"] in lock, m["platform"]
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "onbase", "--json").stdout)
    wheel = next(Path(out["output"]).glob("*.whl"))
    assert wheel.name.startswith("base_probe-1.0")  # setup.py refuses to build where the host's /usr shows
    rootfs = next(Path(n["path"]) for n in out["nodes"] if n["name"] == "pulled")
    assert (rootfs / "usr/local/lib/python3.11/dist-packages/slime_mini/__init__.py").is_file()
    # Moving the tag does not move the pin: the lock names digests, and realise uses them.
    run_planner("--store", store_a, "push", "demo", f"{registry}/base:v1", "--variant", "sm100a", "--plain-http")
    again = json.loads(run_planner("--root", str(root), "--store", str(tmp_path / "s2"), "realise", "onbase",
                                   "--json").stdout)
    assert {n["id"]: n["digest"] for n in again["nodes"]} == {n["id"]: n["digest"] for n in out["nodes"]}
