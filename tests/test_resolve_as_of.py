"""`resolve-as-of` in set.toml: files an index received after the date are not candidates.

Every test runs against a real package index on a loopback HTTP server (PEP 691 JSON with
PEP 700 upload times) and the machine's real pip.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.errors import FetchError, RecipeError
from planner.fetch.pypi import download, find_sdist
from planner.fetch.simple_index import DatedIndex, IndexFile, files_as_of, parse_as_of
from tests.support.pyindex import LocalIndex

BEFORE = "2026-03-01T10:00:00.123456Z"
ON_THE_DAY = "2026-03-05T23:00:00Z"
AFTER = "2026-03-06T00:00:01Z"


@pytest.fixture
def index(monkeypatch):
    """A local index with uploads on both sides of 2026-03-05; pip configured for it alone."""
    with LocalIndex() as idx:
        idx.wheel("datedpkg", "1.0", uploaded=BEFORE)
        # The same version gains a binary wheel later: pip would prefer it (a more specific tag).
        idx.wheel("datedpkg", "1.0", uploaded=AFTER, tag="cp310-cp310-manylinux_2_17_x86_64")
        idx.wheel("datedpkg", "1.1", uploaded=AFTER)
        idx.wheel("datedpkg", "0.9", uploaded=ON_THE_DAY)
        idx.wheel("undated", "1.0", uploaded=None)
        idx.sdist("datedpkg", "1.0", uploaded=AFTER)
        monkeypatch.setenv("PIP_INDEX_URL", idx.url)
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", " ")
        monkeypatch.setenv("PIP_FIND_LINKS", " ")
        yield idx


def test_parse_as_of_dates_and_zones() -> None:
    assert parse_as_of("2026-03-05") == dt.datetime(2026, 3, 5, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)
    assert parse_as_of("2026-03-05T12:00:00Z") == dt.datetime(2026, 3, 5, 12, tzinfo=dt.timezone.utc)
    assert parse_as_of("2026-03-05T20:00:00+08:00") == dt.datetime(2026, 3, 5, 12, tzinfo=dt.timezone.utc)
    for bad in ("2026-03-05T12:00:00", "yesterday", "2026-02-30", "2026-3-5", ""):
        with pytest.raises(FetchError, match="resolve-as-of: "):
            parse_as_of(bad)


def test_files_without_an_upload_time_are_not_candidates() -> None:
    cutoff = parse_as_of("2026-03-05")
    files = [IndexFile("a.whl", "u", None, BEFORE), IndexFile("b.whl", "u", None, AFTER),
             IndexFile("c.whl", "u", None, None), IndexFile("d.whl", "u", None, "garbage"),
             IndexFile("e.whl", "u", None, "2026-03-05T10:00:00")]  # no zone: cannot be placed
    assert [f.filename for f in files_as_of(files, cutoff)] == ["a.whl"]
    assert files_as_of(files, None) == files


def test_wheel_download_takes_only_files_uploaded_by_the_date(index: LocalIndex, tmp_path: Path) -> None:
    today = download("datedpkg", "1.0", dist="wheel", dest_dir=tmp_path / "now", platform="linux/amd64",
                     python_version="3.10")
    assert today.name == "datedpkg-1.0-cp310-cp310-manylinux_2_17_x86_64.whl"
    then = download("datedpkg", "1.0", dist="wheel", dest_dir=tmp_path / "then", platform="linux/amd64",
                    python_version="3.10", as_of=parse_as_of("2026-03-05"))
    assert then.name == "datedpkg-1.0-py3-none-any.whl"
    with pytest.raises(FetchError, match=r"^datedpkg==1.1: pip download \(wheel\) failed \(files uploaded by "
                                         r"2026-03-05T23:59:59.999999\+00:00\): .*datedpkg==1.1"):
        download("datedpkg", "1.1", dist="wheel", dest_dir=tmp_path / "x", as_of=parse_as_of("2026-03-05"))
    with pytest.raises(FetchError, match="undated==1.0"):
        download("undated", "1.0", dist="wheel", dest_dir=tmp_path / "y", as_of=parse_as_of("2030-01-01"))
    assert download("undated", "1.0", dist="wheel", dest_dir=tmp_path / "z").name == "undated-1.0-py3-none-any.whl"


def test_sdist_uploaded_after_the_date_is_not_found(index: LocalIndex) -> None:
    assert find_sdist("datedpkg", "1.0").filename == "datedpkg-1.0.tar.gz"
    with pytest.raises(FetchError, match="no sdist of datedpkg==1.0 uploaded by 2026-03-05"):
        find_sdist("datedpkg", "1.0", as_of=parse_as_of("2026-03-05"))


def test_pips_resolver_sees_the_dated_view(index: LocalIndex, tmp_path: Path) -> None:
    """An unpinned requirement resolves to the newest version uploaded by the date."""
    from planner.fetch.simple_index import pip_index_args

    def resolve(as_of: str) -> str:
        with DatedIndex(parse_as_of(as_of)) as view:
            out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp_path / as_of),
                                  *pip_index_args(view.url), "datedpkg"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return sorted(p.name for p in (tmp_path / as_of).iterdir())[0]

    assert resolve("2026-03-04") == "datedpkg-1.0-py3-none-any.whl"
    assert resolve("2026-03-05") == "datedpkg-1.0-py3-none-any.whl"
    assert resolve("2026-03-07").startswith("datedpkg-1.1-")


def _project(root: Path, as_of: str | None) -> None:
    (root / "recipes" / "t").mkdir(parents=True, exist_ok=True)
    line = f'resolve-as-of = "{as_of}"\n' if as_of else ""
    (root / "recipes" / "t" / "set.toml").write_text(
        f'target = "pkg"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n{line}')
    (root / "recipes" / "t" / "pkg.toml").write_text(
        'name = "pkg"\nversion = "1.0"\n\n[inputs.datedpkg]\nkind = "pypi"\nname = "datedpkg"\nversion = "1.0"\n'
        'dist = "wheel"\npython = "3.10"\nper-platform = true\n\n[build]\nbuilder = "prebuilt-wheel"\n')


def _lock(root: Path, store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner.cli", "--root", str(root), "--store", str(store),
                           "lock", "t", *args], capture_output=True, text=True, env=dict(os.environ))


def test_lock_is_the_same_a_month_later(index: LocalIndex, tmp_path: Path) -> None:
    root, store = tmp_path / "proj", tmp_path / "store"
    _project(root, "2026-03-05")
    assert _lock(root, store).returncode == 0
    text = (root / "lockfiles" / "t.lock").read_text()
    assert "datedpkg-1.0-py3-none-any.whl" in text
    # A month later the index has a better file for the same version: the lock does not move.
    index.wheel("datedpkg", "1.0", uploaded="2026-04-05T00:00:00Z", tag="cp310-cp310-manylinux_2_28_x86_64")
    run = _lock(root, store, "--update", "pkg")
    assert run.returncode == 0, run.stderr
    assert (root / "lockfiles" / "t.lock").read_text() == text
    assert _lock(root, store, "--check").returncode == 0
    # Another date is another resolution: the entry is stale until re-locked.
    _project(root, "2026-04-30")
    check = _lock(root, store, "--check")
    assert check.returncode != 0 and "pkg/datedpkg" in check.stdout + check.stderr
    assert _lock(root, store).returncode == 0
    assert "datedpkg-1.0-cp310-cp310-manylinux_2_28_x86_64.whl" in (root / "lockfiles" / "t.lock").read_text()


def test_bad_as_of_in_set_toml_is_one_line(tmp_path: Path) -> None:
    from planner.recipes import load_set

    _project(tmp_path, "last tuesday")
    with pytest.raises(RecipeError) as e:
        load_set(tmp_path, "t")
    assert e.value.line().startswith("recipes/t/set.toml") and "resolve-as-of" in e.value.line()
    assert "\n" not in e.value.line()


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_the_dated_choice_is_pips_choice(index: LocalIndex, tmp_path: Path, platform: str) -> None:
    """With a date, the wheel is chosen from the index listing (no pip process per file): the
    same file pip picks, among tags pip ranks differently."""
    for tag in ("py3-none-any", "cp310-abi3-manylinux2014_x86_64", "cp310-cp310-manylinux_2_17_x86_64",
                "cp310-cp310-manylinux1_x86_64", "cp310-cp310-manylinux_2_28_aarch64",
                "cp310-abi3-manylinux_2_34_aarch64", "cp311-cp311-manylinux_2_28_x86_64"):
        index.wheel("tagged", "2.0", uploaded=BEFORE, tag=tag)
    by_pip = download("tagged", "2.0", dist="wheel", dest_dir=tmp_path / "pip", platform=platform,
                      python_version="3.10")
    dated = download("tagged", "2.0", dist="wheel", dest_dir=tmp_path / "dated", platform=platform,
                     python_version="3.10", as_of=parse_as_of("2026-03-05"))
    assert dated.name == by_pip.name


def test_a_recipe_can_take_its_pypi_inputs_as_of_its_own_date(index: LocalIndex, tmp_path: Path) -> None:
    """A recipe pinned to releases made after the set's date (a base built from newer pins) says
    so with its own `resolve-as-of`; its inputs are dated by it, the others by set.toml's."""
    from planner.recipes import load_set

    root, store = tmp_path / "proj", tmp_path / "store"
    _project(root, "2026-03-05")
    recipe = root / "recipes" / "t" / "pkg.toml"
    text = recipe.read_text().replace('version = "1.0"\n\n[inputs', 'version = "1.0"\nresolve-as-of = "2026-03-07"\n\n[inputs', 1)
    recipe.write_text(text.replace('name = "datedpkg"\nversion = "1.0"', 'name = "datedpkg"\nversion = "1.1"'))
    assert _lock(root, store).returncode == 0
    assert "datedpkg-1.1-py3-none-any.whl" in (root / "lockfiles" / "t.lock").read_text()  # uploaded 2026-03-06
    assert _lock(root, store, "--check").returncode == 0
    # Without its own date the set's applies, and 1.1 was not on the index by then.
    recipe.write_text(recipe.read_text().replace('resolve-as-of = "2026-03-07"\n', ""))
    run = _lock(root, store, "--update", "pkg")
    assert run.returncode != 0 and "datedpkg==1.1" in run.stdout + run.stderr
    recipe.write_text(recipe.read_text().replace('version = "1.0"\n\n[inputs', 'version = "1.0"\nresolve-as-of = "soon"\n\n[inputs', 1))
    with pytest.raises(RecipeError) as e:
        load_set(root, "t")
    assert e.value.line().startswith("recipes/t/pkg.toml") and "resolve-as-of" in e.value.line()
