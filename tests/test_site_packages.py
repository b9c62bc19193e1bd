"""A layer that installs another version of a distribution a lower layer has deletes the old
version's files (whiteouts), as pip uninstalls before it installs: slime's image replaced the
base's filelock 4.3.1 with 3.25.0, and 4.3.1's `filelock/_soft/` package shadowed 3.25.0's
`_soft.py` (`import torch._dynamo` failed with a metaclass conflict)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from planner.errors import OciError
from planner.oci.layer import LayerSource, write_layer
from planner.oci.sitepackages import SITE_PACKAGES, layer_whiteouts, tree_dists, wheel_dist
from planner.oci.unpack import apply_layer
from planner.oci.wheels import install_wheel
from planner.safetree import Tree

SITE = SITE_PACKAGES.lstrip("/")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _wheel(path: Path, project: str, version: str, files: dict[str, bytes], extra_record: tuple[str, ...] = ()) -> Path:
    info = f"{project}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [_record_line(n, d) for n, d in files.items()] + list(extra_record) + [f"{info}/RECORD,,"]
    whl = path / f"{project}-{version}-py3-none-any.whl"  # project spelt as in the dist-info
    with zipfile.ZipFile(whl, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return whl


def _base(root: Path) -> None:
    """A base with filelock 4.3.1 (a `_soft/` package) and a namespace folder shared by two
    distributions, installed the way the base builder installs wheels."""
    wheels = root.parent / "base-wheels"
    wheels.mkdir()
    old = _wheel(wheels, "filelock", "4.3.1", {
        "filelock/__init__.py": b"V = 4\n", "filelock/_soft/__init__.py": b"", "filelock/_soft/_lease.py": b"",
        "filelock/asyncio.py": b"old\n", "nvidia/cu13/lib/libold.so": b"\0"})
    other = _wheel(wheels, "nvidia_other", "1.0", {"nvidia/other/lib/libx.so": b"\0"})
    for whl in (old, other):
        install_wheel(whl, root)


def test_a_replacing_layer_deletes_what_the_old_version_had(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    _base(base)
    visible = tree_dists(base)
    assert sorted(visible) == ["filelock", "nvidia-other"]
    new = wheel_dist(_wheel(tmp_path, "FileLock", "3.25.0", {
        "filelock/__init__.py": b"V = 3\n", "filelock/_soft.py": b"", "filelock/asyncio.py": b"new\n"}))
    whiteouts, digest = layer_whiteouts([new], visible)
    assert whiteouts == [
        f"{SITE_PACKAGES}/.wh.filelock-4.3.1.dist-info",
        f"{SITE_PACKAGES}/filelock/.wh._soft",  # the whole folder: no other distribution has files there
        f"{SITE_PACKAGES}/nvidia/.wh.cu13",  # nvidia/ itself stays: nvidia-other has files in it
    ]
    assert len(digest) == 64

    # The layer as the image builder stages it, applied the way a container runtime does.
    stage = tmp_path / "layer"
    stage.mkdir()
    install_wheel(Path(tmp_path / "FileLock-3.25.0-py3-none-any.whl"), stage)
    with Tree(stage, where="layer") as t:
        for path in whiteouts:
            t.write(path.lstrip("/"), b"")
    blobs = tmp_path / "blobs"
    layers = [write_layer([LayerSource(d)], blobs, source_date_epoch=0) for d in (base, stage)]
    image = tmp_path / "image"
    image.mkdir()
    with Tree(image, where="image") as root:
        for layer in layers:
            with open(blobs / "sha256" / layer.descriptor.digest.split(":")[1], "rb") as f:
                apply_layer(f, root)
    pkg = image / SITE / "filelock"
    assert sorted(p.name for p in pkg.iterdir()) == ["__init__.py", "_soft.py", "asyncio.py"]
    assert (pkg / "asyncio.py").read_bytes() == b"new\n"
    infos = sorted(p.name for p in (image / SITE).iterdir() if p.name.endswith(".dist-info"))
    assert infos == ["FileLock-3.25.0.dist-info", "nvidia_other-1.0.dist-info"]
    assert (image / SITE / "nvidia/other/lib/libx.so").exists()
    assert not (image / SITE / "nvidia/cu13").exists()


def test_nothing_replaced_no_whiteouts(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    _base(base)
    new = wheel_dist(_wheel(tmp_path, "six", "1.17.0", {"six.py": b""}))
    assert layer_whiteouts([new], tree_dists(base)) == ([], "")
    assert tree_dists(tmp_path / "nothing-here") == {}


def test_a_record_that_points_outside_the_image_is_ignored(tmp_path: Path) -> None:
    """RECORD lines are untrusted: one that leaves the image (or is absolute) deletes nothing."""
    whl = _wheel(tmp_path, "evil", "1.0", {"evil/__init__.py": b""},
                 extra_record=("../../../../../../../etc/passwd,,", "/etc/shadow,,", "evil/../../../../../../../../x,,"))
    files = wheel_dist(whl).files
    assert files and all(f.startswith("/usr/local/") for f in files), files
    assert "/etc/passwd" not in files and "/etc/shadow" not in files


def test_a_damaged_wheel_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(OciError, match="bad-1.0-py3-none-any.whl"):
        wheel_dist(bad)
    two = tmp_path / "two-1.0-py3-none-any.whl"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a-1.dist-info/RECORD", "")
        zf.writestr("b-1.dist-info/RECORD", "")
    with pytest.raises(OciError, match="exactly one"):
        wheel_dist(two)


def test_layer_whiteouts_depend_only_on_the_layers_contents(tmp_path: Path) -> None:
    """Whiteouts and their digest are sorted and independent of the order lower layers were seen in."""
    base = tmp_path / "base"
    base.mkdir()
    _base(base)
    visible = tree_dists(base)
    new = wheel_dist(_wheel(tmp_path, "filelock", "3.25.0", {"filelock/__init__.py": b""}))
    reversed_visible = dict(reversed(list(visible.items())))
    assert layer_whiteouts([new], visible) == layer_whiteouts([new], reversed_visible)
