"""Deterministic wheels: sorted members, fixed times and modes, RECORD regenerated.

Standard library only (runs inside the sandbox).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
import zipfile
from pathlib import Path

# ZIP can't represent times before 1980.
_ZIP_EPOCH = 315532800


def zip_time(source_date_epoch: int) -> tuple[int, int, int, int, int, int]:
    t = time.gmtime(max(source_date_epoch, _ZIP_EPOCH))
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec - t.tm_sec % 2)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _order(name: str) -> tuple[int, str]:
    # Package files first, .dist-info last, RECORD at the very end (PEP 427 recommends it).
    if name.endswith(".dist-info/RECORD"):
        return (2, name)
    if re.match(r"^[^/]+\.dist-info/", name):
        return (1, name)
    return (0, name)


def write_wheel(members: dict[str, tuple[bytes, bool]], out: Path, *, source_date_epoch: int) -> Path:
    """Write a wheel from `name -> (bytes, executable)`; RECORD is (re)generated."""
    record_name = next((n for n in members if n.endswith(".dist-info/RECORD")), None)
    if record_name is None:
        dist_info = sorted({n.split("/")[0] for n in members if n.split("/")[0].endswith(".dist-info")})
        if len(dist_info) != 1:
            raise ValueError(f"wheel needs exactly one .dist-info directory, found {dist_info}")
        record_name = f"{dist_info[0]}/RECORD"
    members = {n: v for n, v in members.items() if n != record_name}
    # RECORD is CSV (PEP 376): a member name with a comma or a quote is quoted (SGLang ships
    # `…/E=1,N=14336,device_name=…,dtype=int8_w8a16.json`); other names are written as they are.
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for name in sorted(members, key=_order):
        data, _ = members[name]
        writer.writerow([name, _record_hash(data), len(data)])
    writer.writerow([record_name, "", ""])
    members[record_name] = (buf.getvalue().encode(), False)
    date_time = zip_time(source_date_epoch)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(members, key=_order):
            data, executable = members[name]
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = ((0o100755 if executable else 0o100644) & 0xFFFF) << 16
            zf.writestr(info, data, compresslevel=9)
    os.replace(tmp, out)
    return out


def normalise_wheel(wheel: Path, out_dir: Path, *, source_date_epoch: int) -> Path:
    """Rewrite a wheel built by any backend into its canonical bytes."""
    members: dict[str, tuple[bytes, bool]] = {}
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename
            if "/__pycache__/" in f"/{name}" or name.endswith((".pyc", ".pyo")):
                continue
            executable = bool((info.external_attr >> 16) & 0o100)
            members[name] = (zf.read(info), executable)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_wheel(members, out_dir / wheel.name, source_date_epoch=source_date_epoch)


def wheel_from_tree(root: Path, packages: list[str], *, name: str, version: str, tag: str,
                    out_dir: Path, source_date_epoch: int, requires: list[str] = (),
                    summary: str = "") -> Path:
    """Package directories under `root` (e.g. `int4qat/`) into a wheel with generated metadata."""
    dist = re.sub(r"[-_.]+", "_", name)
    members: dict[str, tuple[bytes, bool]] = {}
    for pkg in packages:
        base = root / pkg
        if not base.exists():
            raise FileNotFoundError(f"package directory {pkg} not found in the source")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".git"))
            for f in sorted(filenames):
                if f.endswith((".pyc", ".pyo")):
                    continue
                p = Path(dirpath) / f
                if p.is_symlink():
                    continue
                rel = p.relative_to(root).as_posix()
                members[rel] = (p.read_bytes(), bool(p.stat().st_mode & 0o100))
    info = f"{dist}-{version}.dist-info"
    meta = [f"Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if summary:
        meta.append(f"Summary: {summary}")
    meta += [f"Requires-Dist: {r}" for r in requires]
    members[f"{info}/METADATA"] = (("\n".join(meta) + "\n").encode(), False)
    pure = tag.endswith("-none-any")
    wheel_meta = ["Wheel-Version: 1.0", "Generator: planner", f"Root-Is-Purelib: {'true' if pure else 'false'}",
                  f"Tag: {tag}"]
    members[f"{info}/WHEEL"] = (("\n".join(wheel_meta) + "\n").encode(), False)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_wheel(members, out_dir / f"{dist}-{version}-{tag}.whl", source_date_epoch=source_date_epoch)
