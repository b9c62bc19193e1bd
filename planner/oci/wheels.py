"""Wheels installed into a root filesystem (the image's site-packages), with file modes and
RECORD normalised so the layer is the same bytes on every machine."""

from __future__ import annotations

import os
import re
import stat
import zipfile
from pathlib import Path

import attrs

from ..errors import OciError
from .sitepackages import DATA_DIR, SCRIPTS_DIR, SITE_PACKAGES



@attrs.frozen
class InstalledWheel:
    distribution: str
    version: str
    files: tuple[str, ...]  # absolute image paths, sorted


INSTALLER_NAME = b"planner\n"


def install_wheel(
    wheel: Path,
    root: Path,
    *,
    python: str = "/usr/bin/python3",
    site_packages: str = SITE_PACKAGES,
    scripts_dir: str = SCRIPTS_DIR,
    data_dir: str = DATA_DIR,
) -> InstalledWheel:
    """Install `wheel` into the image tree at `root` as if at `/` (pypa installer).

    No bytecode is compiled (.pyc embed source mtimes and differ by Python build), launcher
    shebangs name `python`, INSTALLER says "planner", and RECORD is sorted by path (installer
    already sorts it); file modes are normalised afterwards since installer's follow the umask.
    """
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.exceptions import InstallerError
    from installer.sources import WheelFile

    m = re.search(r"python\d+(?:\.\d+)?", site_packages)
    pyver = m.group(0) if m else "python3"
    root = Path(root)
    for target in (site_packages, scripts_dir, data_dir):
        _refuse_symlinked_path(root, target, wheel)
    from ..safetree import MAX_METADATA

    try:
        with zipfile.ZipFile(wheel) as zf:
            # installer and the image builder read .dist-info files whole, in-process.
            big = [i.filename for i in zf.infolist()
                   if ".dist-info/" in i.filename and i.file_size > MAX_METADATA]
    except (zipfile.BadZipFile, OSError) as e:
        raise OciError(f"cannot read wheel: {e}", where=wheel.name) from None
    if big:
        raise OciError(f"{big[0]} is larger than {MAX_METADATA >> 20} MiB", where=wheel.name)
    try:
        with WheelFile.open(wheel) as source:
            source.validate_record()
            dist, version = source.distribution, source.version
            scheme = {
                "purelib": site_packages,
                "platlib": site_packages,
                "scripts": scripts_dir,
                "data": data_dir,
                "headers": f"{data_dir}/include/{pyver}/{dist}",
            }
            dest = SchemeDictionaryDestination(
                scheme,
                interpreter=python,
                script_kind="posix",
                bytecode_optimization_levels=(),
                destdir=str(root),
            )
            install(source, dest, {"INSTALLER": INSTALLER_NAME})
            record_path = f"{site_packages}/{source.dist_info_dir}/RECORD"
    except (InstallerError, zipfile.BadZipFile, ValueError, FileExistsError) as e:
        issues = [str(i) for i in getattr(e, "issues", ())]  # installer's RECORD validation: a list
        text = (issues[0] + (f" (and {len(issues) - 1} more)" if len(issues) > 1 else "")) if issues else str(e)
        # Name the wheel, not its path in the store (a temporary or store path helps nobody).
        text = " ".join(text.replace(f"In {wheel}, ", "").replace(str(wheel), wheel.name).split())
        raise OciError(f"cannot install wheel: {text}", where=wheel.name) from None
    files = _normalise_record_modes(root, record_path)
    return InstalledWheel(distribution=dist, version=version, files=files)


def _refuse_symlinked_path(root: Path, image_path: str, wheel: Path) -> None:
    # installer writes with ordinary opens under destdir: a symlink on the way (say an absolute
    # one shipped by a .deb) would be followed on the build host, outside the image.
    if not image_path.startswith("/"):
        raise OciError(f"install path must be absolute: {image_path!r}", where=str(wheel))
    current = root
    for part in [p for p in image_path.split("/") if p]:
        if part == "..":
            raise OciError(f"install path has '..': {image_path!r}", where=str(wheel))
        current = current / part
        if os.path.islink(current):
            raise OciError(f"install path {image_path} goes through symlink /{current.relative_to(root)}",
                           where=str(wheel))


def _normalise_record_modes(root: Path, record_path: str) -> tuple[str, ...]:
    import csv

    record_file = root / record_path.lstrip("/")
    base = os.path.dirname(os.path.dirname(record_path))  # site-packages
    files: list[str] = []
    dirs: set[str] = set()
    with open(record_file, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if not row:
                continue
            image_path = os.path.normpath(os.path.join(base, row[0]))
            files.append(image_path)
            p = root / image_path.lstrip("/")
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
            parent = os.path.dirname(image_path)
            while parent not in ("/", "") and parent not in dirs:
                dirs.add(parent)
                parent = os.path.dirname(parent)
    # installer makes directories with the umask's mode; the rest of planner uses 0755.
    for d in sorted(dirs):
        p = root / d.lstrip("/")
        if stat.S_ISDIR(os.lstat(p).st_mode):
            os.chmod(p, 0o755)
    return tuple(sorted(files))
