"""A per-platform input that exists on some platforms only (`platforms = [...]` on the input):
slime's layer needs `av` on amd64 alone, because SGLang's arm64 base already has it. The lock
pins it for those platforms, and the other platforms' nodes do not have it (issue 19, item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pyindex import LocalIndex

DAY = "2026-03-01T10:00:00Z"


@pytest.fixture
def index(monkeypatch):
    with LocalIndex() as idx:
        for tag in ("cp310-cp310-manylinux_2_17_x86_64", "cp310-cp310-manylinux_2_17_aarch64"):
            idx.wheel("everywhere", "1.0", uploaded=DAY, tag=tag)
            idx.wheel("amdonly", "2.0", uploaded=DAY, tag=tag)
        monkeypatch.setenv("PIP_INDEX_URL", idx.url)
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", " ")
        monkeypatch.setenv("PIP_FIND_LINKS", " ")
        yield idx


def _wheel(name: str, version: str, extra: str = "") -> str:
    return (f'[inputs.{name}]\nkind = "pypi"\nname = "{name}"\nversion = "{version}"\ndist = "wheel"\n'
            f'python = "3.10"\nper-platform = true\n{extra}\n')


def _project(root: Path, amdonly_extra: str = 'platforms = ["linux/amd64"]\n') -> None:
    folder = root / "recipes/t"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "set.toml").write_text('target = "layer"\nsource-date-epoch = 1700000000\nbuild-root = "host"\n'
                                     'platforms = ["linux/amd64", "linux/arm64"]\nresolve-as-of = "2026-03-05"\n')
    (folder / "layer.toml").write_text('name = "layer"\nversion = "1"\n[build]\nbuilder = "prebuilt-wheel"\n'
                                       + _wheel("everywhere", "1.0") + _wheel("amdonly", "2.0", amdonly_extra))


def _planner(root: Path, store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", "--root", str(root), "--store", str(store), *args],
                          capture_output=True, text=True, env=dict(os.environ))


def test_an_input_restricted_to_amd64_is_pinned_and_planned_there_only(index: LocalIndex, tmp_path: Path) -> None:
    root, store = tmp_path / "proj", tmp_path / "store"
    _project(root)
    lock = _planner(root, store, "lock", "t")
    assert lock.returncode == 0, lock.stderr
    assert "resolving layer/amdonly [linux/amd64]" in lock.stderr and "layer/amdonly [linux/arm64]" not in lock.stderr
    text = (root / "lockfiles/t.lock").read_text()
    assert "amdonly-2.0-cp310-cp310-manylinux_2_17_x86_64.whl" in text and "amdonly-2.0-cp310-cp310-manylinux_2_17_aarch64" not in text
    assert "everywhere-1.0-cp310-cp310-manylinux_2_17_aarch64.whl" in text
    assert _planner(root, store, "lock", "t", "--check").returncode == 0
    view = json.loads(_planner(root, store, "plan", "t", "--json").stdout)
    nodes = {n["id"]: n for n in view["nodes"]}
    assert nodes["layer[linux/amd64]"]["action"] == "build" and nodes["layer[linux/arm64]"]["action"] == "build"
    from planner import lock as lockmod
    from planner.graph import plan
    from planner.host import HostInfo
    from planner.recipes import load_set

    rs = load_set(root, "t")
    p = plan(rs, lockmod.read(rs.lockfile), HostInfo(platform="linux/amd64"))
    assert set(p.nodes["layer[linux/amd64]"].inputs) == {"everywhere", "amdonly"}
    assert set(p.nodes["layer[linux/arm64]"].inputs) == {"everywhere"}
    # Lifting the restriction makes the entry stale, and a re-lock adds the arm64 file.
    _project(root, amdonly_extra="")
    check = _planner(root, store, "lock", "t", "--check")
    assert check.returncode != 0 and "layer/amdonly: recipe changed since locking" in check.stderr
    assert _planner(root, store, "lock", "t").returncode == 0
    assert "amdonly-2.0-cp310-cp310-manylinux_2_17_aarch64.whl" in (root / "lockfiles/t.lock").read_text()


@pytest.mark.parametrize("extra, words", [
    ('platforms = ["linux/riscv"]\n', "linux/riscv, which is not one of the set's platforms"),
    ("platforms = []\n", "platforms is empty"),
    ('platforms = ["../x"]\n', "is not a platform such as linux/arm64"),
])
def test_bad_input_platforms_are_one_line_naming_the_field(tmp_path: Path, extra: str, words: str) -> None:
    root = tmp_path / "proj"
    _project(root, amdonly_extra=extra)
    run = _planner(root, tmp_path / "store", "plan", "t")
    errors = [line for line in run.stderr.splitlines() if line.startswith("planner: error: ")]
    assert run.returncode != 0 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert words in errors[0] and "layer.toml" in errors[0] and "platforms" in errors[0], errors[0]


def test_platforms_on_an_input_that_is_the_same_everywhere_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _project(root)
    recipe = root / "recipes/t/layer.toml"
    recipe.write_text(recipe.read_text().replace('per-platform = true\nplatforms', 'platforms'))
    run = _planner(root, tmp_path / "store", "plan", "t")
    assert run.returncode != 0 and "platforms is for inputs whose bytes differ by platform" in run.stderr, run.stderr
