"""Hostile archives and .debs that aim at memory, disk or the error line rather than at paths:
a zip symlink that inflates to megabytes, names and link targets past PATH_MAX or NAME_MAX,
extended tar headers that tarfile would read whole, malformed `ar` headers, archives that
unpack to more members or bytes than any real input. Every one is built here for real; each
must end in one short typed error line that names the archive, with nothing left behind."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from planner import archive as archive_mod
from planner import errors as errors_mod
from planner.archive import safe_extract
from planner.debfile import open_deb_control, read_ar
from planner.errors import FetchError, PlannerError, UnsafeArchive
from planner.safetree import Tree
from tests.reliability.support import assert_clean_error, shell_recipe
from tests.support.http_server import LoopbackServer
from tests.support.project import Project

# An error line a person can read: the name at fault, clipped, and a few words.
SHORT = 600

# -- building archives --------------------------------------------------------------------------


def tar_of(members: list[tarfile.TarInfo | tuple[str, bytes]], *, fmt: int = tarfile.PAX_FORMAT,
           mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def link_info(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def zip_of(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """(name, data, st_mode) members; a symlink's data is its target, as Info-ZIP stores it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix: mode bits in the high half of external_attr
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


def ar_member(name: str, data: bytes, *, size: str | None = None) -> bytes:
    """One `ar` member with its header; `size` replaces the size field as written."""
    field = size if size is not None else str(len(data))
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{field:<10}`\n".encode()
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def control_tar() -> bytes:
    return tar_of([("./control", b"Package: hostile\nVersion: 1\nArchitecture: all\n")], fmt=tarfile.GNU_FORMAT)


def deb_of(path: Path, *members: bytes) -> Path:
    path.write_bytes(b"!<arch>\n" + b"".join(members))
    return path


def good_members() -> list[bytes]:
    return [ar_member("debian-binary", b"2.0\n"), ar_member("control.tar.gz", control_tar()),
            ar_member("data.tar.gz", tar_of([("./usr/share/doc/x", b"x")], fmt=tarfile.GNU_FORMAT))]


# -- checks -------------------------------------------------------------------------------------


def assert_short(e: BaseException, *words: str, where: str | None = None) -> str:
    """One typed line, short, naming what it must (`where`: the file at fault, named first)."""
    assert isinstance(e, PlannerError), repr(e)[:300]
    line = e.line()
    assert "\n" not in line and len(line) <= SHORT, (len(line), line[:300])
    if where is not None:
        assert line.startswith(where), (where, line)
    for w in words:
        assert w in (e.message if where is not None else line), (w, line)
    return line


def assert_nothing_left(parent: Path, dest: str) -> None:
    assert not os.path.lexists(parent / dest)
    assert not [p for p in os.listdir(parent) if p.startswith(f".{dest}.")], os.listdir(parent)


def refused(archive: Path, tmp_path: Path, exc: type[PlannerError] = UnsafeArchive, **kw) -> PlannerError:
    with pytest.raises(PlannerError) as e:
        safe_extract(archive, tmp_path / "out", **kw)
    assert isinstance(e.value, exc), repr(e.value)[:300]
    assert_nothing_left(tmp_path, "out")
    return e.value


# -- 5: a zip symlink's target is read bounded ---------------------------------------------------


def test_zip_symlink_target_is_read_bounded(tmp_path: Path) -> None:
    """A zip symlink member that deflates to 4 MiB: refused after reading at most 4 KiB of it."""
    target = b"a/" * (2 << 20)
    archive = zip_of(tmp_path / "bomb.zip", [("p/x", b"x", stat.S_IFREG | 0o644),
                                             ("p/l", target, stat.S_IFLNK | 0o777)])
    assert archive.stat().st_size < 64 << 10
    tracemalloc.start()
    try:
        e = refused(archive, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_short(e, "symlink 'p/l'", "target longer than 4095 bytes", "bomb.zip")
    assert peak < 1 << 20, f"peak {peak} bytes: the target was read whole"


# -- 5: names and link targets past PATH_MAX / NAME_MAX, in every format --------------------------

LONG_PATH = "/".join(["d" * 200] * 25)  # 5024 bytes, every component legal
LONG_COMPONENT = "p/" + "c" * 300
LONG_TARGET = "/".join(["t" * 200] * 25)  # 5024 bytes


def _tar_case(case: str, fmt: int) -> bytes:
    if case == "name":
        return tar_of([("p/ok", b"x"), (LONG_PATH, b"x")], fmt=fmt)
    if case == "component":
        return tar_of([("p/ok", b"x"), (LONG_COMPONENT, b"x")], fmt=fmt)
    if case == "symlink-target":
        return tar_of([("p/ok", b"x"), link_info("p/l", LONG_TARGET)], fmt=fmt)
    assert case == "hardlink-target"
    return tar_of([("p/ok", b"x"), link_info("p/h", LONG_TARGET, tarfile.LNKTYPE)], fmt=fmt)


_WORDS = {"name": "name longer than 4096 bytes", "component": "component longer than 255 bytes",
          "symlink-target": "target longer than 4095 bytes", "hardlink-target": "longer than 4096 bytes"}


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("case", list(_WORDS))
def test_tar_names_and_targets_are_bounded(tmp_path: Path, case: str, fmt: int) -> None:
    archive = tmp_path / "long.tar.gz"
    archive.write_bytes(_tar_case(case, fmt))
    assert_short(refused(archive, tmp_path), _WORDS[case], "long.tar.gz")


@pytest.mark.parametrize("case", ["name", "component", "symlink-target"])
def test_zip_names_and_targets_are_bounded(tmp_path: Path, case: str) -> None:
    name, data, mode = {"name": (LONG_PATH, b"x", stat.S_IFREG | 0o644),
                        "component": (LONG_COMPONENT, b"x", stat.S_IFREG | 0o644),
                        "symlink-target": ("p/l", LONG_TARGET.encode(), stat.S_IFLNK | 0o777)}[case]
    archive = zip_of(tmp_path / "long.zip", [("p/ok", b"x", stat.S_IFREG | 0o644), (name, data, mode)])
    assert_short(refused(archive, tmp_path), _WORDS[case], "long.zip")


def test_names_and_targets_at_the_bounds_are_kept(tmp_path: Path) -> None:
    """The bounds are the kernel's: a 255-byte component and a 4095-byte target still unpack."""
    component = "c" * 255
    target = "/".join(["t" * 200] * 20)[:4095]
    archive = tmp_path / "edge.tar.gz"
    archive.write_bytes(tar_of([(f"p/{component}", b"x"), link_info("p/l", target)]))
    safe_extract(archive, tmp_path / "out", strip_single_root=False)
    assert (tmp_path / "out/p" / component).read_bytes() == b"x"
    assert os.readlink(tmp_path / "out/p/l") == target


def test_tree_refuses_long_components_and_targets(tmp_path: Path) -> None:
    """The same bounds for every in-process writer (root filesystems, image layers, wheels):
    one line before the kernel's ENAMETOOLONG, whose text would carry the whole name."""
    (tmp_path / "t").mkdir()
    with Tree(tmp_path / "t", where="layer") as tree:
        with pytest.raises(PlannerError) as e:
            tree.write("a/" + "n" * 100_000, b"x")
        assert_short(e.value, "component longer than 255 bytes", "layer")
        with pytest.raises(PlannerError) as e:
            tree.symlink("l", "t/" * 50_000)
        assert_short(e.value, "target longer than 4095 bytes", "layer")
    assert os.listdir(tmp_path / "t") == []


# -- 5/5b: extended tar headers are bounded before tarfile reads them ------------------------------


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_one_mib_name_gives_one_short_line(tmp_path: Path, fmt: int) -> None:
    """The audit's 1,147-byte tar.gz with a 1 MB name: a 1 MB error line before."""
    archive = tmp_path / "hugename.tar.gz"
    archive.write_bytes(tar_of([("p/" + "a/" * 500_000 + "../x", b"x")], fmt=fmt))
    assert archive.stat().st_size < 8 << 10
    assert_short(refused(archive, tmp_path), "hugename.tar.gz")


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_extended_header_over_a_mib_is_not_read(tmp_path: Path, fmt: int) -> None:
    """An 8 MiB name (a few KiB of gzip): refused from its header's size, never read whole."""
    archive = tmp_path / "pax.tar.gz"
    archive.write_bytes(tar_of([("p/" + "b" * (8 << 20), b"x")], fmt=fmt))
    assert archive.stat().st_size < 64 << 10
    tracemalloc.start()
    try:
        e = refused(archive, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_short(e, "extended tar header", "pax.tar.gz")
    assert peak < 4 << 20, f"peak {peak} bytes: the header was read whole"


def test_negative_tar_size_is_refused(tmp_path: Path) -> None:
    """A GNU base-256 negative size would subtract from the unpacked-bytes count."""
    block = bytearray(tar_of([("p/f", b"")], fmt=tarfile.GNU_FORMAT, mode="w")[:512])
    block[124:136] = b"\xff" * 12  # base-256 -1
    block[148:156] = b" " * 8
    block[148:155] = f"{sum(block):06o}\0".encode()
    archive = tmp_path / "neg.tar"
    archive.write_bytes(bytes(block) + b"\0" * 1024)
    assert_short(refused(archive, tmp_path), "negative size", "neg.tar")


# -- 5b: every error line is bounded, in one place ---------------------------------------------------


def test_error_lines_are_capped_whatever_they_embed() -> None:
    huge = "x" * 1_000_000
    line = FetchError(f"member {huge!r} is bad", where="a.tar.gz").line()
    assert len(line) <= errors_mod.MAX_VALUE + 100 and line.startswith("a.tar.gz: member 'x") and line.endswith("' is bad"), line
    assert "…" in line
    spaced = " ".join(["word"] * 300_000)  # no one value is long: the line cap still holds
    line = FetchError(f"{spaced} end", where="w").line()
    assert len(line) <= errors_mod.MAX_LINE and line.startswith("w: word") and line.endswith("word end"), len(line)
    many = FetchError(" ".join(["v" * 150] * 100)).line()
    assert len(many) <= errors_mod.MAX_LINE
    newlines = FetchError("a\n" * 100_000).line()
    assert "\n" not in newlines and len(newlines) <= errors_mod.MAX_LINE


def test_short_error_lines_are_unchanged() -> None:
    msg = "member 'pkg/../x' has a '..' component"
    assert FetchError(msg, where="/tmp/a.tar.gz").line() == f"/tmp/a.tar.gz: {msg}"
    assert str(FetchError(msg)) == msg
    path = "/store/" + "/".join(["segment"] * 24)  # 199 characters: kept whole
    assert FetchError(f"cannot read {path}").line() == f"cannot read {path}"


def test_cli_error_line_is_capped_for_a_hostile_recipe_key(tmp_path: Path) -> None:
    """Not an archive at all: a 100 KB key in a recipe. The cap is in PlannerError, so it holds."""
    proj = Project.empty(tmp_path, target="x")
    key = "k" * 100_000
    proj.write_raw("x", f'name = "x"\nversion = "1"\n[inputs.blob]\nkind = "url"\nurl = "http://127.0.0.1:1/b"\n'
                        f'{key} = 1\n[build]\nbuilder = "shell"\nscript = "true"\n')
    line = assert_clean_error(proj.cli("lock"), names=["inputs.blob"])
    assert len(line) <= SHORT, len(line)


# -- 10: malformed `ar` headers in a .deb ----------------------------------------------------------

_BAD_AR = {
    # (member bytes inserted after debian-binary, words of the error)
    "bsd-name-not-a-number": (ar_member("#1/abc", b"xx"), "name length"),
    "bsd-name-negative": (ar_member("#1/-5", b"xx"), "name length"),
    "bsd-name-longer-than-member": (ar_member("#1/50", b"x" * 10), "name length"),
    "bsd-name-huge": (ar_member("#1/999999999", b"x" * 10, size="999999999"), "past the end"),
    "bsd-name-over-path-max": (ar_member("#1/5000", b"n" * 6000), "more than 4096 bytes"),
    "size-negative": (ar_member("control.tar.gz", b"xx", size="-100"), "size"),
    "size-signed": (ar_member("control.tar.gz", b"xx", size="+2"), "size"),
    "size-underscore": (ar_member("control.tar.gz", b"xx", size="1_0"), "size"),
    "size-blank": (ar_member("control.tar.gz", b"", size=" "), "size"),
    "past-the-end": (ar_member("control.tar.gz", b"xx", size="1000"), "past the end"),
}


def _bad_deb(tmp_path: Path, case: str) -> Path:
    member, _ = _BAD_AR[case]
    return deb_of(tmp_path / "p.deb", member, *good_members())  # first, as the audit's: a negative seek


@pytest.mark.parametrize("case", list(_BAD_AR))
def test_malformed_ar_header_is_a_typed_error_naming_the_deb(tmp_path: Path, case: str) -> None:
    deb = _bad_deb(tmp_path, case)
    words = _BAD_AR[case][1]
    with pytest.raises(PlannerError) as e:
        open_deb_control(deb)
    assert_short(e.value, words, where=str(deb))
    with open(deb, "rb") as fh, pytest.raises(FetchError) as e:
        read_ar(fh, where=str(deb))
    assert_short(e.value, words, where=str(deb))
    assert_short(refused(deb, tmp_path, FetchError), words, where=str(deb))


@pytest.mark.parametrize("case", ["bsd-name-not-a-number", "size-negative"])
def test_malformed_deb_in_a_root_filesystem_names_the_deb(tmp_path: Path, case: str) -> None:
    """The realise path (`debian-rootfs`): before, `build failed: root: ValueError: invalid literal`."""
    from planner.oci.rootfs import assemble_rootfs

    deb = _bad_deb(tmp_path, case)
    with pytest.raises(PlannerError) as e:
        assemble_rootfs([deb], tmp_path / "root", arch="amd64")
    assert_short(e.value, where=str(deb))


def test_well_formed_deb_still_reads(tmp_path: Path) -> None:
    deb = deb_of(tmp_path / "ok.deb", *good_members())
    assert open_deb_control(deb)["Package"] == "hostile"
    with open(deb, "rb") as fh:
        assert [m.name for m in read_ar(fh, where="ok")] == ["debian-binary", "control.tar.gz", "data.tar.gz"]
    # A BSD long name, as macOS `ar` writes one: the name's bytes lead the member's data.
    bsd = deb_of(tmp_path / "bsd.deb", ar_member("debian-binary", b"2.0\n"),
                 ar_member("#1/16", b"control.tar.gz\0\0" + control_tar()))
    with open(bsd, "rb") as fh:
        assert [(m.name, m.size) for m in read_ar(fh, where="bsd")][1] == ("control.tar.gz", len(control_tar()))
    assert open_deb_control(bsd)["Package"] == "hostile"


def test_control_tar_broken_after_its_first_member_is_a_typed_error(tmp_path: Path) -> None:
    """tarfile opens it (the first header is fine) and fails while iterating: that is wrapped too."""
    whole = tar_of([("./md5sums", os.urandom(64 << 10)), ("./control", b"Package: x\n")],
                   fmt=tarfile.GNU_FORMAT, mode="w")
    broken = gzip.compress(whole[:20 << 10])  # ends inside md5sums' data
    deb = deb_of(tmp_path / "cut.deb", ar_member("debian-binary", b"2.0\n"), ar_member("control.tar.gz", broken))
    with pytest.raises(PlannerError) as e:
        open_deb_control(deb)
    assert_short(e.value, where=str(deb))


def test_deb_that_is_not_a_file_is_a_typed_error(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.deb", tmp_path):
        with pytest.raises(FetchError) as e:
            open_deb_control(path)
        assert_short(e.value, where=str(path))


def test_apt_removes_and_names_an_unreadable_deb(tmp_path: Path) -> None:
    """What `apt-get download` left is read through one helper (download and download_many):
    an unreadable .deb is removed, and the error names its file for the input that re-raises
    it (the lock path exited 70, `internal error`, on a ValueError before)."""
    from planner.fetch import apt

    deb = _bad_deb(tmp_path, "bsd-name-not-a-number")
    with pytest.raises(FetchError) as e:
        apt._control_of(deb, "apt:hostile")
    line = assert_short(e.value, "p.deb: corrupt ar header", "name length", where="apt:hostile")
    assert str(tmp_path) not in line  # a temporary folder about to vanish is no name
    assert not deb.exists()
    good = deb_of(tmp_path / "ok.deb", *good_members())
    assert apt._control_of(good, "apt:hostile")["Package"] == "hostile"


# -- suspicion: bounds on what one archive may unpack to -------------------------------------------


def test_member_count_is_bounded(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(tar_of([(f"p/f{i}", b"") for i in range(51)]))
    e = refused(archive, tmp_path, limits=archive_mod.UnpackLimits(members=50))
    assert_short(e, "more than 50 members", "many.tar.gz")
    zipped = zip_of(tmp_path / "many.zip", [(f"p/f{i}", b"", stat.S_IFREG | 0o644) for i in range(51)])
    e = refused(zipped, tmp_path, limits=archive_mod.UnpackLimits(members=50))
    assert_short(e, "more than 50 members", "many.zip")
    safe_extract(archive, tmp_path / "out", limits=archive_mod.UnpackLimits(members=51))  # 51 files, no p/ member


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_unpacked_bytes_are_bounded(tmp_path: Path, kind: str) -> None:
    """Two 600 KiB files against a 1 MiB cap: refused before the second is written."""
    files = [("p/a", b"\0" * (600 << 10)), ("p/b", b"\0" * (600 << 10))]
    if kind == "tar":
        archive = tmp_path / "big.tar.gz"
        archive.write_bytes(tar_of(files))
    else:
        archive = zip_of(tmp_path / "big.zip", [(n, d, stat.S_IFREG | 0o644) for n, d in files])
    limits = archive_mod.UnpackLimits(bytes=1 << 20, floor=1 << 20)
    assert_short(refused(archive, tmp_path, limits=limits), "more than 1 MiB", archive.name)
    safe_extract(archive, tmp_path / "out", limits=archive_mod.UnpackLimits(bytes=2 << 20, floor=2 << 20))


def test_unpacked_bytes_are_bounded_by_the_archive_size(tmp_path: Path) -> None:
    """Zeros compress a thousandfold; beyond the floor, a bomb is told by its ratio."""
    archive = tmp_path / "zeros.tar.bz2"
    archive.write_bytes(tar_of([("p/zeros", b"\0" * (4 << 20))], mode="w:bz2"))
    assert archive.stat().st_size < 4 << 10
    e = refused(archive, tmp_path, limits=archive_mod.UnpackLimits(ratio=100, floor=1 << 10))
    assert_short(e, "100 times", "zeros.tar.bz2")
    assert archive_mod.UnpackLimits().max_bytes(archive.stat().st_size) == 1 << 30  # the default floor keeps it


def test_default_bound_refuses_a_declared_65_gib_file(tmp_path: Path) -> None:
    """A tar header alone can promise 65 GiB: refused from the header, nothing written, no
    'unexpected end of data' after writing what there was."""
    info = tarfile.TarInfo("p/huge")
    info.size = 65 << 30
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("p/first"), io.BytesIO(b""))
        tar.addfile(info)  # the header only: the data never comes
    archive = tmp_path / "promise.tar"
    archive.write_bytes(buf.getvalue())
    assert_short(refused(archive, tmp_path), "more than 1 GiB", "promise.tar")


# -- end to end: `planner lock` on a served hostile archive ----------------------------------------


def test_lock_refuses_hostile_archives_in_one_short_line(tmp_path: Path) -> None:
    """Served over loopback as url inputs: the zip symlink bomb and the 1 MB PAX name. One
    `planner: error:` line naming the input and the file; nothing left in the store's tmp."""
    bomb = zip_of(tmp_path / "bomb.zip", [("p/l", b"a/" * (2 << 20), stat.S_IFLNK | 0o777)]).read_bytes()
    cases = {"bomb.zip": (bomb, "target longer than"),
             "hugename.tar.gz": (tar_of([("p/" + "a/" * 500_000 + "x", b"x")]), "longer than 4096 bytes")}
    with LoopbackServer() as srv:
        for fname, (body, words) in cases.items():
            srv.add(f"/{fname}", body, times=10)
            proj = Project.empty(tmp_path / fname.split(".")[0], target="x")
            source = {"kind": "url", "url": srv.url(f"/{fname}")}
            proj.write_raw("x", shell_recipe("x", "true", inputs={"src": source}))
            run = proj.cli("lock")
            line = assert_clean_error(run, names=["x/src", fname, words])
            assert len(line) <= SHORT and len(run.stderr) < 4 * SHORT, len(run.stderr)
            tmp = proj.store / "tmp"
            assert not tmp.exists() or not [p for p in tmp.rglob("*") if "unpack" in p.name], list(tmp.rglob("*"))
