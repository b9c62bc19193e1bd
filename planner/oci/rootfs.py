"""Minimal root filesystems from Debian `.deb` files, and wheels installed into them.

Like apko, packages are unpacked, not installed: each `data.tar.*` is extracted in a fixed
order (sorted by package name), no maintainer scripts run, and a dpkg `status` file is written
so scanners can see what is inside. Debian 12 is merged-/usr: `bin`, `sbin`, `lib` (and the
multilib dirs the architecture has) are symlinks into `usr/`, and a member shipped as
`bin/x` is written to `usr/bin/x`.

`planner.archive.safe_extract` is not used for the data: it rightly rejects absolute symlink
targets in source archives, but Debian policy *requires* absolute targets between top-level
directories (e.g. libssl3's `usr/lib/ssl/certs -> /etc/ssl/certs`). Here a symlink is only ever
created, never followed, so any target is safe; what is refused is writing *through* a symlink
or outside the root. archive.py's ar reader and deb822 parser are reused; the tar members are
decompressed here (zstd, as Ubuntu's packages have, through the host's zstd: planner/zstdstream.py).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import attrs

from ..debfile import ArMember, parse_deb822, read_ar
from ..tarbounds import BoundedTarInfo, HeaderRefused
from ..zstdstream import ZstdReader
from ..errors import OciError, UnsafeArchive
from .wheels import INSTALLER_NAME, InstalledWheel, install_wheel  # noqa: F401  (re-exported; they lived here)

_CHUNK = 1 << 20

# debootstrap's merged-/usr links per Debian architecture (setup_merged_usr).
_MERGED_COMMON = ("bin", "sbin", "lib")
_MERGED_EXTRA = {"amd64": ("lib64",), "i386": ("lib64",), "ppc64el": ("lib64",), "s390x": ("lib32",)}
# Every top-level dir that is an alias of usr/<dir> on some architecture.
_ALIASED = frozenset({"bin", "sbin", "lib", "lib32", "lib64", "libx32", "libo32"})


@attrs.frozen
class DebPackage:
    path: Path
    package: str
    version: str
    architecture: str
    control: tuple[tuple[str, str], ...]  # control fields in file order


@attrs.frozen
class Rootfs:
    root: Path
    packages: tuple[DebPackage, ...]  # in installation order
    merged_usr: tuple[str, ...]  # the top-level symlinks into usr/


def _control_fields(path: Path) -> dict[str, str]:
    for tar, info in _iter_member_tar(path, "control.tar"):
        if _member_name(info.name, str(path)) == "control" and info.isreg():
            f = tar.extractfile(info)
            assert f is not None
            from ..safetree import MAX_METADATA

            raw = f.read(MAX_METADATA + 1)  # in-process: never a whole decompression bomb
            if len(raw) > MAX_METADATA:
                raise OciError(f"control file is larger than {MAX_METADATA >> 20} MiB", where=str(path))
            return parse_deb822(raw.decode("utf-8", "replace"))
    raise OciError("no control file in control.tar", where=str(path))


def read_deb(path: Path) -> DebPackage:
    fields = _control_fields(path)
    for key in ("Package", "Version", "Architecture"):
        if not fields.get(key):
            raise OciError(f"control file has no {key} field", where=str(path))
    return DebPackage(
        path=Path(path),
        package=fields["Package"],
        version=fields["Version"],
        architecture=fields["Architecture"],
        control=tuple(fields.items()),
    )


# ---------------------------------------------------------------------------------------------
# Reading data.tar.* out of the ar container


class _Window(io.RawIOBase):
    """Read-only view of one ar member, without copying it."""

    def __init__(self, f: BinaryIO, member: ArMember) -> None:
        self._f = f
        self._start = member.offset
        self._size = member.size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._f.fileno(), n, self._start + self._pos)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _ar_member(members: list[ArMember], prefix: str, where: str) -> ArMember:
    found = [m for m in members if m.name.startswith(prefix)]
    if len(found) != 1:
        raise OciError(f"expected one {prefix}* member, found {[m.name for m in members]}", where=where)
    return found[0]


def _iter_member_tar(deb: Path, prefix: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Members of the .deb's `control.tar*` or `data.tar*`, streamed (any dpkg compression:
    gzip, xz, bzip2, zstd through the CLI, or none)."""
    where = str(deb)
    with open(deb, "rb") as f:
        member = _ar_member(read_ar(f, where=where), prefix, where)
        raw = io.BufferedReader(_Window(f, member), _CHUNK)
        suffix = member.name[len(prefix):]
        zreader: ZstdReader | None = None
        stream: BinaryIO
        if suffix == ".gz":
            stream = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
        elif suffix == ".xz":
            stream = lzma.LZMAFile(raw)  # type: ignore[assignment]
        elif suffix == ".bz2":
            stream = bz2.BZ2File(raw)  # type: ignore[assignment]
        elif suffix == ".zst":
            zreader = ZstdReader(raw, where, OciError)
            stream = zreader.stdout
        elif suffix == "":
            stream = raw  # type: ignore[assignment]
        else:
            raise OciError(f"unsupported data member {member.name}", where=where)
        complete = False
        try:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo) as tar:
                for info in tar:
                    yield tar, info
            complete = True
        except (tarfile.TarError, EOFError, lzma.LZMAError, OSError, HeaderRefused) as e:
            raise OciError(f"cannot read {member.name}: {' '.join(str(e).split())}", where=where) from None
        finally:
            if zreader is not None:
                zreader.close(check=complete)


# ---------------------------------------------------------------------------------------------
# Writing the tree


def _member_name(raw: str, where: str) -> str:
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if raw.startswith("/") or ".." in parts or "\0" in raw:
        raise UnsafeArchive(f"member {raw!r} has an unsafe path", where=where)
    return "/".join(parts)


def usr_merged(name: str) -> str:
    """Where a member lands on a merged-/usr system: `bin/x` → `usr/bin/x`."""
    top, sep, rest = name.partition("/")
    return f"usr/{top}{sep}{rest}" if top in _ALIASED else name


class _RootWriter:
    """Tracks what is in the root (kind and owning package) so nothing is ever written through
    a symlink and conflicting files between packages are caught."""

    def __init__(self, root: Path) -> None:
        from ..safetree import Tree

        self.root = root
        self.tree = Tree(root, where=f"root filesystem {root.name}")
        self.kinds: dict[str, str] = {"": "dir"}
        self.owner: dict[str, str] = {}
        self.links: dict[str, str] = {}

    def mkdir(self, name: str, pkg: str) -> None:
        self._parents(name, pkg)
        kind = self.kinds.get(name)
        if kind == "dir":
            return
        if kind is not None:
            raise OciError(f"{pkg} ships directory /{name}, but {self.owner.get(name)} made it a {kind}")
        self.tree.mkdir(name)
        self.kinds[name] = "dir"
        self.owner[name] = pkg

    def _parents(self, name: str, pkg: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            kind = self.kinds.get(parent)
            if kind is None:
                self.mkdir(parent, pkg)
            elif kind != "dir":
                raise OciError(f"{pkg}: /{name} would be written through {kind} /{parent}")

    def _claim(self, name: str, kind: str, pkg: str, same: bool) -> bool:
        """True when the path is free; False when an identical entry already exists."""
        old = self.kinds.get(name)
        if old is None:
            return True
        if old == kind and same:
            return False
        raise OciError(f"/{name} is shipped by both {self.owner.get(name)} and {pkg}")

    def file(self, name: str, src: BinaryIO, executable: bool, pkg: str) -> None:
        self._parents(name, pkg)
        if name in self.kinds:
            same = False
            if self.kinds[name] == "file":
                with self.tree.open_file(name) as old:
                    same = _same_stream(old, src)
            self._claim(name, "file", pkg, same)
            return
        self.tree.write(name, src, executable=executable, replace=False)
        self.kinds[name] = "file"
        self.owner[name] = pkg

    def symlink(self, name: str, target: str, pkg: str) -> None:
        self._parents(name, pkg)
        if not self._claim(name, "symlink", pkg, self.links.get(name) == target):
            return
        self.tree.symlink(name, target, replace=False)
        self.kinds[name] = "symlink"
        self.owner[name] = pkg
        self.links[name] = target

    def hardlink(self, name: str, target: str, pkg: str) -> None:
        if self.kinds.get(target) != "file":
            raise OciError(f"{pkg}: hardlink /{name} -> /{target} does not name an earlier file")
        st = self.tree.lstat(target)
        assert st is not None
        with self.tree.open_file(target) as src:
            self.file(name, src, bool(st.st_mode & stat.S_IXUSR), pkg)


def _same_stream(a: BinaryIO, b: BinaryIO) -> bool:
    """Whether two streams hold the same bytes, compared chunk by chunk (no whole reads)."""
    while True:
        x, y = a.read(_CHUNK), b.read(_CHUNK)
        if x != y:
            return False
        if not x:
            return True


def _merged_dirs(arch: str) -> tuple[str, ...]:
    return _MERGED_COMMON + _MERGED_EXTRA.get(arch, ())


def _ensure_alias(w: _RootWriter, top: str, merged: list[str]) -> None:
    # A package shipping e.g. lib32/ on an arch whose debootstrap makes no such link still gets
    # one, or its files would be unreachable at the path it expects.
    if top not in merged:
        w.mkdir(f"usr/{top}", "merged-/usr")
        w.symlink(top, f"usr/{top}", "merged-/usr")
        merged.append(top)


def _extract_deb(w: _RootWriter, deb: DebPackage, merged: list[str]) -> None:
    where = str(deb.path)
    pkg = deb.package
    for tar, info in _iter_member_tar(deb.path, "data.tar"):
        name = _member_name(info.name, where)
        if not name:
            continue
        top = name.split("/", 1)[0]
        if top in _ALIASED:
            _ensure_alias(w, top, merged)
            if name == top and info.issym():
                # The package ships the merged-/usr link itself (trixie's base-files does).
                if info.linkname.strip("/") != f"usr/{top}":
                    raise OciError(f"/{name} -> {info.linkname} is not the merged-/usr link", where=where)
                continue
        name = usr_merged(name)
        if info.isdir():
            w.mkdir(name, pkg)
        elif info.isreg():
            src = tar.extractfile(info)
            assert src is not None
            w.file(name, src, bool(info.mode & stat.S_IXUSR), pkg)
        elif info.issym():
            w.symlink(name, info.linkname, pkg)
        elif info.islnk():
            w.hardlink(name, usr_merged(_member_name(info.linkname, where)), pkg)
        else:
            raise OciError(f"member {info.name!r} is not a file, directory or link", where=where)


def _status_paragraph(deb: DebPackage) -> str:
    lines: list[str] = []
    for key, value in deb.control:
        first, *rest = value.split("\n")
        lines.append(f"{key}: {first}".rstrip())
        lines.extend(f" {line}" for line in rest)
        if key == "Package":
            lines.append("Status: install ok installed")
    return "\n".join(lines) + "\n"


def assemble_rootfs(debs: Sequence[Path], root: Path, *, arch: str, dpkg_status: bool = True) -> Rootfs:
    """Unpack `debs` (one Debian architecture, `arch` or `all`) into the empty or missing
    directory `root`, merged-/usr, in package-name order; no maintainer scripts run.

    Modes are normalised like every tree in planner (dirs 0755, files 0644/0755): setuid bits
    are not kept. Two packages may ship the same path only with identical content.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    if any(root.iterdir()):
        raise OciError("rootfs directory is not empty", where=str(root))
    pkgs = sorted((read_deb(Path(p)) for p in debs), key=lambda d: (d.package, d.version, str(d.path)))
    for a, b in zip(pkgs, pkgs[1:]):
        if a.package == b.package:
            raise OciError(f"package {a.package} given twice ({a.path.name}, {b.path.name})")
    for d in pkgs:
        if d.architecture not in (arch, "all"):
            raise OciError(f"package is for {d.architecture}, not {arch}", where=str(d.path))
    w = _RootWriter(root)
    merged: list[str] = []
    for name in _merged_dirs(arch):
        _ensure_alias(w, name, merged)
    try:
        for d in pkgs:
            _extract_deb(w, d, merged)
        if dpkg_status:
            w.mkdir("var/lib/dpkg", "dpkg-status")
            status = "\n".join(_status_paragraph(d) for d in pkgs).encode()
            w.file("var/lib/dpkg/status", io.BytesIO(status), False, "dpkg-status")
    finally:
        w.tree.close()
    return Rootfs(root=root, packages=tuple(pkgs), merged_usr=tuple(sorted(merged)))
