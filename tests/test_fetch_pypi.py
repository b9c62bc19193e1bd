"""fetch.pypi through the machine's real pip and its configured indexes."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest

from planner.errors import FetchError
from planner.fetch.pypi import download, platform_tags, wheel_arch


def wheel_tag(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        wheel = next(n for n in zf.namelist() if n.endswith(".dist-info/WHEEL"))
        return zf.read(wheel).decode()


def test_sdist_of_six(tmp_path: Path) -> None:
    path = download("six", "1.16.0", dist="sdist", dest_dir=tmp_path)
    assert path == tmp_path / "six-1.16.0.tar.gz"
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert "six-1.16.0/six.py" in names and "six-1.16.0/PKG-INFO" in names
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # pip's temp dir is gone


def test_wheel_of_six_for_linux_amd64(tmp_path: Path) -> None:
    path = download("six", "1.16.0", dist="wheel", dest_dir=tmp_path, platform="linux/amd64",
                    python_version="3.11")
    assert path == tmp_path / "six-1.16.0-py2.py3-none-any.whl"
    assert "Tag: py3-none-any" in wheel_tag(path)
    with zipfile.ZipFile(path) as zf:
        assert "six.py" in zf.namelist()


@pytest.mark.parametrize("platform,machine", [("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")])
def test_binary_wheel_follows_the_platform(tmp_path: Path, platform: str, machine: str) -> None:
    path = download("markupsafe", "2.1.5", dist="wheel", dest_dir=tmp_path, platform=platform,
                    python_version="3.11")
    assert path.suffix == ".whl" and machine in path.name and "cp311-cp311" in path.name
    assert f"cp311-cp311-manylinux_2_17_{machine}" in wheel_tag(path)


def test_missing_version_names_the_requirement_and_pips_reason(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as e:
        download("six", "99.0.0", dist="sdist", dest_dir=tmp_path)
    text = str(e.value)
    assert text.startswith("six==99.0.0: pip download (sdist) failed: ")
    assert "No matching distribution found for six==99.0.0" in text and "\n" not in text
    assert list(tmp_path.iterdir()) == []


def test_sdist_refuses_wheel_options(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="only apply to wheels"):
        download("six", "1.16.0", dist="sdist", dest_dir=tmp_path, platform="linux/amd64")


def test_platform_tags_newest_first_with_legacy_aliases() -> None:
    tags = platform_tags("linux/amd64")
    assert tags[0] == "manylinux_2_34_x86_64"
    assert tags[-1] == "linux_x86_64"
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                "manylinux2010_x86_64", "manylinux1_x86_64"):
        assert tag in tags
    assert tags.index("manylinux_2_28_x86_64") < tags.index("manylinux_2_17_x86_64")
    assert "manylinux_2_35_x86_64" not in tags
    assert platform_tags("linux/arm64/v8", max_glibc="2.28")[0] == "manylinux_2_28_aarch64"
    assert all(t.endswith("_aarch64") for t in platform_tags("aarch64"))


def test_unknown_platform() -> None:
    assert wheel_arch("linux/arm64") == "aarch64"
    with pytest.raises(FetchError, match="unknown architecture in 'linux/mips'"):
        platform_tags("linux/mips")
    with pytest.raises(FetchError, match="only linux platforms"):
        platform_tags("windows/amd64")
