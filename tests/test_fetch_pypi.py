"""fetch.pypi through the machine's real pip and its configured indexes."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest

from planner.errors import FetchError
from planner.fetch.pypi import download, find_sdist, platform_tags, wheel_arch


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
        download("six", "99.0.0", dist="wheel", dest_dir=tmp_path)
    text = str(e.value)
    assert text.startswith("six==99.0.0: pip download (wheel) failed: ")
    assert "No matching distribution found for six==99.0.0" in text and "\n" not in text
    with pytest.raises(FetchError) as e:
        download("six", "99.0.0", dist="sdist", dest_dir=tmp_path)
    assert str(e.value).startswith("six==99.0.0: no sdist of six==99.0.0 on https://pypi.org/simple")
    assert list(tmp_path.iterdir()) == []


def _sdist(tmp_path: Path, name: str, setup_py: str) -> bytes:
    src = tmp_path / "sdist-src" / name
    src.mkdir(parents=True)
    (src / "setup.py").write_text(setup_py)
    (src / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name.split('-')[0]}\n")
    out = tmp_path / f"{name}.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname=name)
    return out.read_bytes()


def test_sdist_comes_from_the_simple_api_without_preparing_metadata(tmp_path: Path) -> None:
    """An sdist whose setup.py cannot run here (it needs torch, say) is still fetched: pip
    download would run it to prepare metadata; the Simple API only lists the file."""
    import hashlib

    from tests.support.http_server import LoopbackServer

    body = _sdist(tmp_path, "Needs_Torch-1.0", "import torch  # not installed here\n")
    other = _sdist(tmp_path, "needs_torch-1.1", "")
    sha = hashlib.sha256(body).hexdigest()
    with LoopbackServer() as server:
        page = (f'<html><body><a href="../../files/Needs_Torch-1.0.tar.gz#sha256={sha}">Needs_Torch-1.0.tar.gz</a>'
                '<a href="/files/needs_torch-1.1.tar.gz">needs_torch-1.1.tar.gz</a>'
                '<a href="/files/needs_torch-1.0-py3-none-any.whl">needs_torch-1.0-py3-none-any.whl</a>'
                '</body></html>')
        server.add("/simple/needs-torch/", page.encode())
        server.add("/files/Needs_Torch-1.0.tar.gz", body)
        server.add("/files/needs_torch-1.1.tar.gz", other)
        index = server.url("/simple")
        found = find_sdist("needs.torch", "1.0", indexes=[server.url("/missing"), index])
        assert found.filename == "Needs_Torch-1.0.tar.gz" and found.sha256 == sha
        assert found.url == server.url("/files/Needs_Torch-1.0.tar.gz")
        got = download_sdist_via(index, "needs_torch", "1.0", tmp_path / "dl")
        assert got.read_bytes() == body
        # The index's sha256 is checked: a file that is not what the index lists is refused.
        server.add("/files/Needs_Torch-1.0.tar.gz", other)
        with pytest.raises(FetchError, match="hash mismatch"):
            download_sdist_via(index, "needs_torch", "1.0", tmp_path / "bad")
        assert not (tmp_path / "bad").exists() or list((tmp_path / "bad").iterdir()) == []
        with pytest.raises(FetchError, match="no sdist of needs_torch==2.0 on http://127.0.0.1"):
            download_sdist_via(index, "needs_torch", "2.0", tmp_path / "none")


def download_sdist_via(index: str, name: str, version: str, dest: Path) -> Path:
    """`download(dist="sdist")` with pip configured for one index, as PIP_INDEX_URL sets it."""
    import os

    old = os.environ.get("PIP_INDEX_URL"), os.environ.get("PIP_EXTRA_INDEX_URL")
    os.environ["PIP_INDEX_URL"], os.environ["PIP_EXTRA_INDEX_URL"] = index, " "
    try:
        return download(name, version, dist="sdist", dest_dir=dest)
    finally:
        for key, value in zip(("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"), old):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
