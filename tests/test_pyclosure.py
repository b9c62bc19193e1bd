"""A layer's PyPI closure is resolved against a frozen view of the base: nothing the base already
has is installed again, and nothing of the base is replaced. Real pip, a real loopback index,
a base root filesystem with distributions installed into it by pip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from planner.errors import FetchError
from planner.fetch.simple_index import parse_as_of
from planner.pyclosure import BaseView, Dist, parse_freeze, read_installed, resolve_layer
from tests.support.pyindex import LocalIndex, wheel_bytes

OLD = "2026-01-10T00:00:00Z"
NEW = "2026-04-10T00:00:00Z"


@pytest.fixture
def index(monkeypatch):
    with LocalIndex() as idx:
        # `app` needs `shared` (any version) and `fresh`; `tvm-ffi` has a newer release on the index
        # than the base's, which a plain resolution would take.
        idx.wheel("app", "1.0", uploaded=OLD, requires=("shared>=1.0", "fresh", "tvm-ffi<0.2"))
        idx.wheel("shared", "1.0", uploaded=OLD)
        idx.wheel("shared", "2.0", uploaded=OLD)
        idx.wheel("fresh", "1.0", uploaded=OLD)
        idx.wheel("fresh", "1.5", uploaded=NEW)
        idx.wheel("tvm-ffi", "0.1.5", uploaded=OLD)
        idx.wheel("tvm-ffi", "0.1.9", uploaded=OLD)
        idx.wheel("needs-new", "1.0", uploaded=OLD, requires=("shared>=2.0",))
        monkeypatch.setenv("PIP_INDEX_URL", idx.url)
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", " ")
        monkeypatch.setenv("PIP_FIND_LINKS", " ")
        yield idx


@pytest.fixture
def base_rootfs(tmp_path: Path) -> Path:
    """A root filesystem with `shared` 1.0 and `tvm-ffi` 0.1.5 installed by pip, as a base image has them."""
    root = tmp_path / "rootfs"
    site = root / "usr" / "local" / "lib" / "python3.10" / "dist-packages"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, version in (("shared", "1.0"), ("tvm_ffi", "0.1.5")):
        (wheels / f"{name}-{version}-py3-none-any.whl").write_bytes(wheel_bytes(name.replace("_", "-"), version))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                    *map(str, sorted(wheels.iterdir()))], check=True, capture_output=True)
    return root


def test_the_layer_installs_nothing_the_frozen_base_already_satisfies(index: LocalIndex, base_rootfs: Path) -> None:
    base = read_installed(base_rootfs)
    assert base.dists == (Dist("shared", "1.0"), Dist("tvm-ffi", "0.1.5"))
    layer = resolve_layer(["app"], base, platform="linux/amd64", python="3.10",
                          as_of=parse_as_of("2026-03-05"))
    assert {(r.name, r.version) for r in layer} == {("app", "1.0"), ("fresh", "1.0")}
    assert not base.names() & {r.name for r in layer}
    assert all(r.sha256 and r.filename.endswith(".whl") for r in layer)
    # Without the base, the same requirements replace both of its packages with newer ones.
    bare = resolve_layer(["app"], BaseView((), "none"), platform="linux/amd64", python="3.10",
                         as_of=parse_as_of("2026-03-05"))
    assert {(r.name, r.version) for r in bare} >= {("shared", "2.0"), ("tvm-ffi", "0.1.9")}


def test_only_a_requirement_the_base_does_not_satisfy_replaces_a_base_package(index: LocalIndex,
                                                                            base_rootfs: Path) -> None:
    """pip upgrades an installed package only where its version does not satisfy: so does the layer,
    and says so."""
    layer = resolve_layer(["needs-new", "app"], read_installed(base_rootfs), platform="linux/amd64",
                          python="3.10", as_of=parse_as_of("2026-03-05"))
    got = {r.name: (r.version, r.replaces) for r in layer}
    assert got == {"needs-new": ("1.0", None), "shared": ("2.0", "1.0"), "app": ("1.0", None), "fresh": ("1.0", None)}


def test_a_metadata_name_spelled_otherwise_is_the_same_project(index: LocalIndex) -> None:
    """A wheel whose METADATA spells its name with underscores (ipython_pygments_lexers) is a
    candidate for the normalised name a requirement uses: pip 23.0 discarded every such file when it
    read METADATA from the index (PEP 658), so ipython 9 could not be resolved at all. Each
    resolved file also carries its Requires-Dist as pip read it."""
    index.wheel("lexers_spelled_so", "1.1", uploaded=OLD)
    index.wheel("shell-app", "9.0", uploaded=OLD, requires=("lexers-spelled-so>=1", "shared; python_version < '3'"))
    layer = resolve_layer(["shell-app"], BaseView((), "none"), platform="linux/amd64", python="3.11",
                          as_of=parse_as_of("2026-03-05"))
    got = {r.name: r for r in layer}
    assert {n: r.version for n, r in got.items()} == {"shell-app": "9.0", "lexers-spelled-so": "1.1"}
    assert got["shell-app"].requires == ("lexers-spelled-so>=1", "shared; python_version < '3'")
    assert got["lexers-spelled-so"].requires == ()


def _backend_wheel(version: str, works: bool) -> bytes:
    """A PEP 517 build backend as a wheel: one that writes an sdist's metadata, or one that fails."""
    code = (
        "import os\n"
        "def get_requires_for_build_wheel(config_settings=None):\n    return []\n"
        "def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):\n"
        + ("    d = os.path.join(metadata_directory, 'built_here-1.0.dist-info')\n    os.makedirs(d)\n"
           "    open(os.path.join(d, 'METADATA'), 'w').write('Metadata-Version: 2.1\\nName: built-here\\n"
           "Version: 1.0\\nRequires-Dist: shared\\n')\n    return 'built_here-1.0.dist-info'\n"
           if works else f"    raise RuntimeError('tiny-backend {version} is not the dated one')\n")
        + "def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n    raise NotImplementedError\n")
    return wheel_bytes("tiny-backend", version, files={"tiny_backend.py": code.encode()})


@pytest.mark.skipif("posix_local" in __import__("sysconfig").get_scheme_names(),
                    reason="Debian's python: pip, run with -S as pyclosure runs it, looks for an sdist's build "
                           "environment where the child pip does not install it (the backend does not import); "
                           "run with a python.org/pyenv interpreter")
def test_an_sdists_build_requirements_come_from_the_dated_index(index: LocalIndex, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """pip prepares an sdist's metadata (a project in `sdists`) in an isolated environment that a
    child pip fills: from the dated index, not from the machine's find-links (undated files: on
    this machine setuptools 84 and wheel 0.48, which could not build pylatexenc 2.10)."""
    import io
    import tarfile

    index.add_file("tiny-backend", "tiny_backend-1.0-py3-none-any.whl", _backend_wheel("1.0", True), OLD)
    index.add_file("tiny-backend", "tiny_backend-2.0-py3-none-any.whl", _backend_wheel("2.0", False), NEW)
    links = tmp_path / "find-links"
    links.mkdir()
    (links / "tiny_backend-3.0-py3-none-any.whl").write_bytes(_backend_wheel("3.0", False))
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in (("PKG-INFO", "Metadata-Version: 2.1\nName: built-here\nVersion: 1.0\n"),
                           ("pyproject.toml", '[build-system]\nrequires = ["tiny-backend"]\n'
                                              'build-backend = "tiny_backend"\n')):
            data = text.encode()
            info = tarfile.TarInfo(f"built-here-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index.add_file("built-here", "built-here-1.0.tar.gz", buf.getvalue(), OLD)
    layer = resolve_layer(["built-here"], BaseView((), "none"), platform="linux/amd64", python="3.11",
                          as_of=parse_as_of("2026-03-05"), sdists=("built-here",))
    assert {(r.name, r.version, r.filename) for r in layer} == {
        ("built-here", "1.0", "built-here-1.0.tar.gz"), ("shared", "2.0", "shared-2.0-py3-none-any.whl")}


def test_markers_are_the_targets(index: LocalIndex, tmp_path: Path) -> None:
    """pip evaluates markers for the machine it runs on; the layer's are the target's."""
    index.wheel("marked", "1.0", uploaded=OLD,
                requires=('fresh; platform_machine == "aarch64"', 'shared; python_version < "3.11"'))
    def names(platform: str, python: str) -> set[str]:
        return {r.name for r in resolve_layer(["marked"], BaseView((), "none"), platform=platform, python=python,
                                              as_of=parse_as_of("2026-03-05"))}
    assert names("linux/arm64", "3.10") == {"marked", "fresh", "shared"}
    assert names("linux/amd64", "3.12") == {"marked"}


def test_unresolvable_is_one_line(index: LocalIndex) -> None:
    with pytest.raises(FetchError) as e:
        resolve_layer(["app>=5"], BaseView((), "none"), platform="linux/amd64", python="3.10",
                      as_of=parse_as_of("2026-03-05"))
    assert e.value.line().startswith("closure: pip cannot resolve the layer") and "\n" not in e.value.line()


def test_freeze_listing() -> None:
    view = parse_freeze("# base\nTorch==2.10.0+cu129\nflashinfer_python==0.6.3\n-e /sgl-workspace/sglang/python\n"
                        "foo @ file:///x\n\n", "base.txt")
    assert view.dists == (Dist("flashinfer-python", "0.6.3"), Dist("torch", "2.10.0+cu129"))
    assert view.version("FlashInfer.Python") == "0.6.3"
    with pytest.raises(FetchError, match=r"^base.txt: line 1: not name==version"):
        parse_freeze("torch>=2\n", "base.txt")


def test_an_installed_base_is_read_without_following_its_links(base_rootfs: Path, tmp_path: Path) -> None:
    """A root filesystem is untrusted: a `usr/local -> /usr/local`-style link or a METADATA that
    is a link never shows this machine's packages as the base's."""
    host = tmp_path / "host"  # what a link would reach: a "host" with a package of its own
    hsite = host / "lib" / "python3.10" / "dist-packages" / "hostpkg-9.9.dist-info"
    hsite.mkdir(parents=True)
    (hsite / "METADATA").write_text("Metadata-Version: 2.1\nName: hostpkg\nVersion: 9.9\n")
    (base_rootfs / "usr" / "lib").mkdir()
    (base_rootfs / "usr" / "lib" / "python3.10").symlink_to(host / "lib" / "python3.10")
    site = base_rootfs / "usr" / "local" / "lib" / "python3.10" / "dist-packages"
    (site / "linked-1.0.dist-info").mkdir()
    (site / "linked-1.0.dist-info" / "METADATA").symlink_to(hsite / "METADATA")
    assert read_installed(base_rootfs).dists == (Dist("shared", "1.0"), Dist("tvm-ffi", "0.1.5"))
