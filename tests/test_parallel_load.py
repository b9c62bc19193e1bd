"""A cold load of a large recipe set reads the last half of its files in a forked helper
(`recipes/sets.py`, `_Helper`): the set it gives is the one a single process gives, recipe for
recipe and in the same order, and so is the error, wherever the bad files are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from planner.errors import RecipeError
from planner.recipes import sets
from planner.recipes.sets import load_set

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the helper needs a second core")

N = 60


def write_set(root: Path, n: int = N) -> Path:
    """n recipes, each depending on the one before; some plain, some not (a [resources] or a
    [source] table takes the general structurer), some with settings and environment."""
    folder = root / "recipes" / "big"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "r0000"\nsource-date-epoch = 1\nbuild-root = "host"\n')
    (root / "src").mkdir()
    for i in range(n):
        lines = [f'name = "r{i:04d}"', f'version = "1.{i}"']
        if i:
            lines.append(f'deps = ["r{i - 1:04d}"]')
        if i % 7 == 3:
            lines += ["[resources]", f"cores = {1 + i % 3}"]
        if i % 11 == 5:
            lines += ["[source]", 'kind = "path"', 'path = "src"']
        lines += ["[build]", 'builder = "shell"', f'script = "echo {i} > $out/x"']
        if i % 5 == 2:
            lines += ["[build.env]", f'N = "{i}"']
        (folder / f"r{i:04d}.toml").write_text("\n".join(lines) + "\n")
    return folder


def load(root: Path, tmp_path: Path, monkeypatch, *, parallel: bool):
    """(the set, or the error's line; whether a helper ran), with an empty parse cache."""
    cache = tmp_path / f"cache-{parallel}-{len(list(tmp_path.iterdir()))}"
    monkeypatch.setenv("PLANNER_CACHE", str(cache))
    monkeypatch.setattr(sets, "PARALLEL_FROM", 2 if parallel else 10**9)
    started = []
    real_start = sets._Helper.start.__func__

    def start(cls, *args):
        helper = real_start(cls, *args)
        started.append(helper is not None)
        return helper

    monkeypatch.setattr(sets._Helper, "start", classmethod(start))
    try:
        return load_set(root, "big"), started == [True]
    except RecipeError as exc:
        return exc.line() if hasattr(exc, "line") else str(exc), started == [True]


def test_the_helper_gives_the_set_one_process_gives(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    write_set(root)
    (one, ran_one), (two, ran_two) = (load(root, tmp_path, monkeypatch, parallel=p) for p in (False, True))
    assert (ran_one, ran_two) == (False, True)
    assert list(two.recipes) == list(one.recipes) == [f"r{i:04d}" for i in range(N)]
    assert two.recipes == one.recipes
    assert two.signatures == one.signatures and len(two.signatures) == N
    # A second load reads the parse cache the parallel one wrote: the same set again.
    again, _ = load(root, tmp_path / "proj" / "src", monkeypatch, parallel=True)
    assert again.recipes == one.recipes


@pytest.mark.parametrize("bad", [
    {"r0050": 'version = \n'},                                    # the helper's half only
    {"r0010": 'version = 3\n', "r0050": 'name = "r0050"\nversion = \n'},  # one in each half
    {"r0040": "[build]\nbuilder = \"shell\"\nscript = 1\n"},      # a wrong type in the helper's
    {"r0045": None},                                              # not a regular file there
])
def test_the_first_error_is_the_one_one_process_finds(tmp_path, monkeypatch, bad):
    root = tmp_path / "proj"
    folder = write_set(root)
    for name, text in bad.items():
        path = folder / f"{name}.toml"
        path.unlink()
        if text is None:
            path.mkdir()
        else:
            path.write_text(f'name = "{name}"\n' + text if not text.startswith("name") else text)
    (one, ran_one), (two, ran_two) = (load(root, tmp_path, monkeypatch, parallel=p) for p in (False, True))
    assert ran_two
    assert isinstance(one, str) and one == two
    assert min(bad) in one
