"""fetch.apt with the machine's apt sources and a private state; downloads the tiny `hostname`."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from planner.archive import safe_extract
from planner.debfile import open_deb_control
from planner.errors import FetchError
from planner.fetch.apt import AptPackage, candidate_version, debian_arch, download

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get (Debian/Ubuntu)")

PACKAGE = "hostname"  # ~10 kB, in every Debian release, built for every architecture
MACHINE_LISTS = Path("/var/lib/apt/lists")


def _snapshot(d: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in d.iterdir()} if d.is_dir() else {}


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Session-wide: `apt-get update` is the slow part, done once per architecture.
    return tmp_path_factory.mktemp("apt-state")


@pytest.fixture(scope="session")
def machine_lists_before() -> dict[str, float]:
    return _snapshot(MACHINE_LISTS)


@pytest.mark.parametrize("arch,deb_arch", [("amd64", "amd64"), ("linux/arm64", "arm64")])
def test_download_candidate_then_pinned(tmp_path: Path, state_dir: Path, arch: str, deb_arch: str,
                                        machine_lists_before: dict[str, float]) -> None:
    got = download(PACKAGE, None, arch, tmp_path / "debs", state_dir=state_dir)
    assert got == AptPackage(got.path, PACKAGE, got.version, deb_arch, got.url)
    assert got.url and got.url.startswith(("http://", "https://")), got.url  # what the lock records
    assert got.version and got.path.parent == tmp_path / "debs"
    assert [p.name for p in got.path.parent.iterdir()] == [got.path.name]  # no temp dir left
    control = open_deb_control(got.path)
    assert (control["Package"], control["Version"], control["Architecture"]) == (PACKAGE, got.version, deb_arch)
    assert got.version == candidate_version(PACKAGE, arch, state_dir=state_dir)

    root = tmp_path / "root"
    safe_extract(got.path, root)
    assert (root / "bin/hostname").is_file() or (root / "usr/bin/hostname").is_file()
    assert (root / f"usr/share/doc/{PACKAGE}/copyright").is_file()

    again = download(PACKAGE, got.version, arch, tmp_path / "pinned", state_dir=state_dir)
    assert again.version == got.version
    assert hashlib.sha256(again.path.read_bytes()).digest() == hashlib.sha256(got.path.read_bytes()).digest()

    assert (state_dir / deb_arch / "updated").exists()
    assert any((state_dir / deb_arch / "lists").iterdir())  # apt's lists went to the private state
    assert _snapshot(MACHINE_LISTS) == machine_lists_before  # the machine's own lists are untouched


def test_version_gone_upstream_says_how_to_fix(tmp_path: Path, state_dir: Path) -> None:
    download(PACKAGE, None, "amd64", tmp_path / "warm", state_dir=state_dir)  # lists exist now
    marker = state_dir / "amd64" / "updated"
    old = marker.stat().st_mtime - 3600
    os.utime(marker, (marker.stat().st_atime, old))  # an hour old
    with pytest.raises(FetchError) as e:
        download(PACKAGE, "0.0.1-gone", "amd64", tmp_path, state_dir=state_dir)
    assert marker.stat().st_mtime > old  # stale lists were refreshed before giving up
    shutil.rmtree(tmp_path / "warm")
    text = str(e.value)
    assert text.startswith(f"apt:{PACKAGE}=0.0.1-gone: ")
    assert f"run planner lock --update {PACKAGE}" in text and "\n" not in text
    assert list(tmp_path.iterdir()) == []


def test_unknown_package(tmp_path: Path, state_dir: Path) -> None:
    with pytest.raises(FetchError, match="no-such-package-xyz is not available for amd64"):
        download("no-such-package-xyz", None, "amd64", tmp_path, state_dir=state_dir)


def test_names_that_could_be_options_are_refused(tmp_path: Path, state_dir: Path) -> None:
    with pytest.raises(FetchError, match="is not a Debian package name"):
        download("-oDir=/", None, "amd64", tmp_path, state_dir=state_dir)
    with pytest.raises(FetchError, match="is not a Debian version"):
        download(PACKAGE, "--help", "amd64", tmp_path, state_dir=state_dir)


@pytest.mark.parametrize("given,expected", [
    ("amd64", "amd64"), ("linux/amd64", "amd64"), ("x86_64", "amd64"),
    ("arm64", "arm64"), ("linux/arm64", "arm64"), ("linux/arm64/v8", "arm64"), ("aarch64", "arm64"),
])
def test_debian_arch(given: str, expected: str) -> None:
    assert debian_arch(given) == expected


def test_unknown_arch() -> None:
    with pytest.raises(FetchError, match="unknown architecture 'linux/mips'"):
        debian_arch("linux/mips")


def test_suite_is_checked_against_the_apt_sources(tmp_path: Path, state_dir: Path) -> None:
    """A recipe that wants Ubuntu jammy's package is refused on a Debian machine instead of
    pinning Debian's package of the same name; the machine's own suite is accepted."""
    from planner.fetch.apt import _releases, _State

    got = download(PACKAGE, None, "amd64", tmp_path / "any", state_dir=state_dir)
    releases = set(_releases(_State.create(state_dir, "amd64")).values())
    origin, codename = sorted(releases)[0]
    base = codename.split("-")[0]
    ok = download(PACKAGE, got.version, "amd64", tmp_path / "own", state_dir=state_dir, suite=f"{origin}/{base}")
    assert ok.path.read_bytes() == got.path.read_bytes()
    with pytest.raises(FetchError) as e:
        download(PACKAGE, got.version, "amd64", tmp_path / "other", state_dir=state_dir, suite="ubuntu/jammy")
    assert "wants ubuntu/jammy, and this machine's apt sources offer only" in str(e.value)
    assert f"{origin}/{base}" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").iterdir())


def test_suite_matches_pockets_of_the_codename() -> None:
    from planner.fetch.apt import suite_matches

    assert suite_matches("debian/bookworm", "debian", "bookworm-security")
    assert suite_matches("ubuntu/jammy", "ubuntu", "jammy-updates")
    assert not suite_matches("ubuntu/jammy", "debian", "jammy")
    assert not suite_matches("debian/bookworm", "debian", "bookworm2")
