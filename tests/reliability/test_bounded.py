"""Bounded in-process readers (issue 13, class 5, the part done): what the planner reads whole
into memory outside the sandbox is capped (a small wheel whose METADATA inflates to 64 MiB)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from tests.support.project import Project

from .support import assert_one_failure

ROW = "14. Bounded builds"


def test_inflating_metadata_is_refused(tmp_path: Path, figure: dict) -> None:
    """A wheel of a few hundred KiB whose METADATA inflates to 64 MiB, in an image layer group: refused in one line, not read whole."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("bomb-1.0.dist-info/METADATA", b"Name: bomb\nVersion: 1.0\n" + b"X" * (64 << 20))
        zf.writestr("bomb-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("bomb-1.0.dist-info/RECORD", "")
    proj = Project.empty(tmp_path, target="img")
    (proj.root / "src/w").mkdir(parents=True)
    (proj.root / "src/w/bomb-1.0-py3-none-any.whl").write_bytes(buf.getvalue())
    proj.recipe("w", source="src/w", script="cp bomb-1.0-py3-none-any.whl $out/")
    proj.write_raw("img", 'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n[image]\nlayers = [["w"]]\n')
    proj.lock()
    line = assert_one_failure(proj.cli("realise"), names=["bomb-1.0-py3-none-any.whl", "METADATA", "larger than"])
    assert "METADATA" in line or "RECORD" in line, line
    figure.update(trials=1, faults=f"a {len(buf.getvalue()) >> 10} KiB wheel whose METADATA inflates to 64 MiB",
                  outcomes=f"refused: {line[-100:]}")
