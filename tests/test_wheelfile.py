"""The planner's deterministic wheel writer: RECORD is real CSV, read back by the `installer`
library the image builder installs wheels with."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from planner.builders.wheelfile import write_wheel

COMMA = "pkg/configs/E=1,N=14336,device_name=NVIDIA_A100-SXM4-80GB,dtype=int8_w8a16.json"


def _wheel(tmp_path: Path) -> Path:
    members = {"pkg/__init__.py": (b"", False), COMMA: (b"{}\n", False), 'pkg/say "hi".txt': (b"hi\n", False),
               "pkg-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n", False),
               "pkg-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n", False)}
    return write_wheel(members, tmp_path / "pkg-1.0-py3-none-any.whl", source_date_epoch=1700000000)


def test_record_quotes_names_with_commas_and_quotes(tmp_path: Path) -> None:
    whl = _wheel(tmp_path)
    with zipfile.ZipFile(whl) as zf:
        record = zf.read("pkg-1.0.dist-info/RECORD").decode()
        names = set(zf.namelist())
    rows = list(csv.reader(io.StringIO(record)))
    assert all(len(r) == 3 for r in rows), rows
    assert {r[0] for r in rows} == names
    assert "pkg/__init__.py,sha256=" in record  # plain names stay unquoted (same bytes as before)


def test_installer_reads_the_record(tmp_path: Path) -> None:
    from installer.records import parse_record_file
    from installer.sources import WheelFile

    with WheelFile.open(_wheel(tmp_path)) as source:
        records = list(parse_record_file(source.read_dist_info("RECORD").splitlines()))
        assert COMMA in {path for path, _, _ in records}
        assert len(list(source.get_contents())) == 6
