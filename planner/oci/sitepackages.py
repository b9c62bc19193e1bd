"""The Python distributions an image's site-packages holds, layer by layer, and what a layer
must delete when it installs a new version of one that a lower layer has (as pip uninstalls the
old version before it installs the new one).

Without the deletions, layers only ever add: a layer that replaces the base's filelock 4.3.1 with
3.25.0 leaves every file of 4.3.1 that 3.25.0 does not have, and the old `.dist-info` beside the
new one. Python then imports a mix of both versions (slime's image: `filelock/asyncio.py` of
4.3.1 over 3.25.0's `filelock/__init__.py` broke `import torch._dynamo`). OCI layers delete with
whiteouts: an empty file `.wh.NAME` beside NAME.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
import re
import stat
import zipfile
from pathlib import Path
from typing import Iterable, Optional

import attrs

from ..errors import OciError
from ..safetree import MAX_METADATA, Tree

# Where `planner.oci.wheels.install_wheel` puts a wheel (its defaults are these), and so the
# folders whose distributions a layer replaces.
SITE_PACKAGES = "/usr/local/lib/python3.11/dist-packages"
SCRIPTS_DIR = "/usr/local/bin"
DATA_DIR = "/usr/local"
WHITEOUT = ".wh."


def canonical_name(name: str) -> str:
    """PEP 503's normalised project name: what makes `Filelock` and `filelock` one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


@attrs.frozen
class Dist:
    name: str  # canonical_name of the project
    dist_info: str  # image path of its .dist-info folder
    files: tuple[str, ...]  # image paths its RECORD lists, sorted


def _image_path(base: str, rel: str) -> Optional[str]:
    """`rel` (a RECORD entry) as an absolute image path, or None where it leaves the install
    prefix: RECORDs are untrusted, and a line naming /etc/passwd must not make a replacing
    layer delete it. Every path an install writes (site-packages, scripts, data, headers) is
    under DATA_DIR."""
    if not rel or "\0" in rel or rel.startswith("/"):
        return None
    path = posixpath.normpath(posixpath.join(base, rel))
    return path if path.startswith(DATA_DIR + "/") else None


def _record_rows(data: bytes, where: str) -> list[str]:
    try:
        return [row[0] for row in csv.reader(io.StringIO(data.decode("utf-8"))) if row]
    except (UnicodeDecodeError, csv.Error) as e:
        raise OciError(f"unreadable RECORD: {e}", where=where) from None


def wheel_dist(whl: Path) -> Dist:
    """The files installing `whl` with `planner.oci.wheels.install_wheel` puts in the image, read
    from the wheel's own RECORD (the install does not have to run: a cached layer has none)."""
    pyver = re.search(r"python\d+(?:\.\d+)?", SITE_PACKAGES)
    include = f"{DATA_DIR}/include/{pyver.group(0) if pyver else 'python3'}"
    try:
        with zipfile.ZipFile(whl) as zf:
            records = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)]
            if len(records) != 1:
                raise OciError("a wheel needs exactly one .dist-info/RECORD", where=whl.name)
            info = zf.getinfo(records[0])
            if info.file_size > MAX_METADATA:
                raise OciError(f"{records[0]} is larger than {MAX_METADATA >> 20} MiB", where=whl.name)
            rows = _record_rows(zf.read(info), whl.name)
    except (zipfile.BadZipFile, OSError) as e:
        raise OciError(f"cannot read wheel: {e}", where=whl.name) from None
    dist_info_dir = records[0].split("/", 1)[0]
    project = dist_info_dir[: -len(".dist-info")].rsplit("-", 1)[0]
    data_dir = dist_info_dir[: -len(".dist-info")] + ".data"
    files = set()
    for rel in rows:
        base, sub = SITE_PACKAGES, rel
        if rel.startswith(data_dir + "/"):
            parts = rel.split("/", 2)
            if len(parts) < 3:
                continue
            kind, sub = parts[1], parts[2]
            base = {"purelib": SITE_PACKAGES, "platlib": SITE_PACKAGES, "scripts": SCRIPTS_DIR,
                    "data": DATA_DIR, "headers": f"{include}/{project}"}.get(kind, "")
            if not base:
                continue
        path = _image_path(base, sub)
        if path is not None:
            files.add(path)
    dist_info = f"{SITE_PACKAGES}/{dist_info_dir}"
    files.add(f"{dist_info}/INSTALLER")  # installer writes it; RECORD may not list it
    return Dist(canonical_name(project), dist_info, tuple(sorted(files)))


def tree_dists(root: Path) -> dict[str, Dist]:
    """The distributions installed in the root filesystem `root`'s site-packages, by name."""
    site = SITE_PACKAGES.lstrip("/")
    out: dict[str, Dist] = {}
    if root.is_symlink() or not root.is_dir():
        return out  # a base that is one file (or nothing) has no site-packages

    with Tree(root, where=f"base {root.name}") as tree:
        st = tree.lstat(site)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return {}
        fd = tree.dir_fd(site.split("/"), create=False, purpose="would be read through")
        try:
            names = sorted(n for n in os.listdir(fd) if n.endswith(".dist-info"))
        finally:
            os.close(fd)
        for name in names:
            rel = f"{site}/{name}"
            rst = tree.lstat(f"{rel}/RECORD")
            if rst is None or not stat.S_ISREG(rst.st_mode):
                continue  # not a folder with a RECORD: pip could not uninstall it either
            rows = _record_rows(tree.read_bytes(f"{rel}/RECORD", limit=MAX_METADATA), f"{root.name}/{rel}/RECORD")
            files = {p for p in (_image_path(SITE_PACKAGES, r) for r in rows) if p is not None}
            project = canonical_name(name[: -len(".dist-info")].rsplit("-", 1)[0])
            # Two .dist-info folders of one project (a broken base): the last in name order wins.
            out[project] = Dist(project, "/" + rel, tuple(sorted(files)))
    return out


def whiteouts(old: Dist, new: Dist, others: Iterable[Dist] = ()) -> list[str]:
    """Image paths of the whiteout files that delete what `old` installed and `new` does not.
    A folder of `old`'s under site-packages that neither `new` nor any of `others` (the other
    distributions lower layers installed) has a file in goes whole: an empty `_soft/` left by
    filelock 4.3.1 would otherwise still be a directory where 3.25.0 has `_soft.py`."""
    keep_dirs: set[str] = set()
    for d in (new, *others):
        for path in d.files:
            keep_dirs.update(_parents(path))
    gone_dirs = {p for path in old.files for p in _parents(path)
                 if p.startswith(SITE_PACKAGES + "/") and p not in keep_dirs}
    out: set[str] = set()
    if old.dist_info != new.dist_info:
        gone_dirs.add(old.dist_info)
    keep = set(new.files)
    for path in (*old.files, *gone_dirs):
        if path in keep or any(p in gone_dirs for p in _parents(path)):
            continue  # kept, or inside a folder that goes whole
        if path.startswith(old.dist_info + "/") and old.dist_info in gone_dirs:
            continue
        out.add(_whiteout(path))
    return sorted(out)


def _parents(path: str) -> list[str]:
    out = []
    head = posixpath.dirname(path)
    while head not in ("/", ""):
        out.append(head)
        head = posixpath.dirname(head)
    return out


def _whiteout(path: str) -> str:
    head, name = posixpath.split(path)
    return f"{head}/{WHITEOUT}{name}"


def layer_whiteouts(layer: Iterable[Dist], visible: dict[str, Dist]) -> tuple[list[str], str]:
    """The whiteouts a layer installing `layer` over the distributions `visible` (by name) needs,
    and their digest ("" for none): what the layer's bytes depend on besides its wheels."""
    layer = list(layer)
    names = {d.name for d in layer}
    others = [d for n, d in visible.items() if n not in names]
    out: set[str] = set()
    for new in layer:
        old = visible.get(new.name)
        if old is not None:
            out.update(whiteouts(old, new, others))
    listed = sorted(out)
    return listed, hashlib.sha256("\n".join(listed).encode()).hexdigest() if listed else ""
