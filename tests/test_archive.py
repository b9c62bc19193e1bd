"""safe_extract and the .deb reader, on archives built here with tarfile, zipfile and a tiny ar writer."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from planner.archive import safe_extract
from planner.debfile import open_deb_control, read_ar
from planner.errors import FetchError, UnsafeArchive
from planner.hashing import tree_digest

# -- building archives ------------------------------------------------------------------------


@attrs.frozen
class M:
    """One archive member to build."""

    name: str
    kind: str = "file"  # file | dir | symlink | hardlink | chr | blk | fifo
    data: bytes = b""
    mode: int = 0o644
    target: str = ""


def f(name: str, data: bytes | str = b"", mode: int = 0o644) -> M:
    return M(name, "file", data.encode() if isinstance(data, str) else data, mode)


def d(name: str, mode: int = 0o755) -> M:
    return M(name, "dir", mode=mode)


def sym(name: str, target: str) -> M:
    return M(name, "symlink", target=target, mode=0o777)


def hard(name: str, target: str) -> M:
    return M(name, "hardlink", target=target)


_TAR_TYPES = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
              "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def tar_bytes(members: list[M], compression: str = "") -> bytes:
    if compression == "zst":  # (Python 3.11 writes no zstd: the real zstd command does)
        import subprocess

        return subprocess.run(["zstd", "-q", "-c"], input=tar_bytes(members), capture_output=True,
                              check=True).stdout
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mode = m.mode
            info.mtime = 1234567890
            info.uid = info.gid = 4242
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                info.type = _TAR_TYPES[m.kind]
                info.linkname = m.target
                tar.addfile(info)
    return buf.getvalue()


def write_tar(path: Path, members: list[M], compression: str = "gz") -> Path:
    path.write_bytes(tar_bytes(members, compression))
    return path


def write_zip(path: Path, members: list[M]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for m in members:
            info = zipfile.ZipInfo(m.name + ("/" if m.kind == "dir" and not m.name.endswith("/") else ""))
            info.create_system = 3  # Unix: mode bits in the high half of external_attr
            fmt = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
                   "chr": stat.S_IFCHR, "fifo": stat.S_IFIFO}[m.kind]
            info.external_attr = (fmt | m.mode) << 16
            zf.writestr(info, m.target.encode() if m.kind == "symlink" else m.data)
    return path


def ar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


CONTROL = """Package: hello-test
Version: 1:2.3-4
Architecture: arm64
Maintainer: Someone <someone@example.invalid>
Depends: libc6 (>= 2.34),
 libfoo1
Description: a test package
 with a long description
"""


def write_deb(path: Path, data_members: list[M], *, control: str = CONTROL, data_compression: str = "xz") -> Path:
    control_compression = "zst" if data_compression == "zst" else "xz"  # (as Ubuntu's: both zstd)
    control_tar = tar_bytes([d("."), f("./control", control)], control_compression)
    data_tar = tar_bytes(data_members, data_compression)
    suffix = {"xz": ".xz", "gz": ".gz", "bz2": ".bz2", "zst": ".zst", "": ""}[data_compression]
    path.write_bytes(ar_bytes([("debian-binary", b"2.0\n"), (f"control.tar.{control_compression}", control_tar),
                               (f"data.tar{suffix}", data_tar)]))
    return path


# A source tree exercising everything tree hash v1 sees: modes, a symlink, an empty directory.
TREE = [
    d("pkg-1.0", 0o700),
    f("pkg-1.0/README", "hello\n", 0o600),
    f("pkg-1.0/bin/run.sh", "#!/bin/sh\necho hi\n", 0o700),
    f("pkg-1.0/src/a.c", "int main(void) { return 0; }\n", 0o664),
    d("pkg-1.0/empty"),
    sym("pkg-1.0/link", "README"),
    sym("pkg-1.0/bin/up", "../src/a.c"),
    f("pkg-1.0/é ü.txt", "unicode name\n"),
]


def reference_tree(root: Path) -> Path:
    """TREE (without its top directory) written straight to disk, for its tree hash."""
    root.mkdir()
    for m in TREE[1:]:
        p = root / m.name.split("/", 1)[1]
        p.parent.mkdir(parents=True, exist_ok=True)
        if m.kind == "dir":
            p.mkdir(exist_ok=True)
        elif m.kind == "symlink":
            p.symlink_to(m.target)
        else:
            p.write_bytes(m.data)
            p.chmod(m.mode)
    return root


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz", "zst"])
def test_tar_round_trip_matches_tree_hash_and_normalises_modes(tmp_path: Path, compression: str) -> None:
    # An uninformative name: the format must be found from the content.
    archive = write_tar(tmp_path / "download.bin", TREE, compression)
    dest = tmp_path / "out"
    safe_extract(archive, dest)
    assert tree_digest(dest) == tree_digest(reference_tree(tmp_path / "ref"))
    assert stat.S_IMODE((dest / "README").stat().st_mode) == 0o644  # was 0600
    assert stat.S_IMODE((dest / "bin/run.sh").stat().st_mode) == 0o755  # was 0700
    assert stat.S_IMODE((dest / "src/a.c").stat().st_mode) == 0o644  # was 0664
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755  # was 0700
    assert os.readlink(dest / "link") == "README"
    assert (dest / "empty").is_dir()
    assert (dest / "README").stat().st_mtime != 1234567890  # times are not restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download.bin", "out", "ref"]  # no temp dir left


def test_zip_round_trip_with_symlink_and_exec_bit(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "src.whl", TREE)
    dest = tmp_path / "out"
    safe_extract(archive, dest)
    assert tree_digest(dest) == tree_digest(reference_tree(tmp_path / "ref"))


def test_zip_without_unix_modes_gives_plain_files(tmp_path: Path) -> None:
    archive = tmp_path / "dos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("a/b.txt")
        info.create_system = 0  # MS-DOS: external_attr holds no Unix mode
        info.external_attr = 0x20
        zf.writestr(info, b"x")
    safe_extract(archive, tmp_path / "out", strip_single_root=False)
    assert stat.S_IMODE((tmp_path / "out/a/b.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize("compression", ["xz", "gz", "", "zst"])
def test_deb_extracts_data_tar_and_reads_control(tmp_path: Path, compression: str) -> None:
    deb = write_deb(tmp_path / "hello.deb", [d("."), d("./usr"), d("./usr/bin"),
                                             f("./usr/bin/hello", "#!/bin/sh\n", 0o755),
                                             sym("./usr/bin/hi", "hello")], data_compression=compression)
    dest = tmp_path / "root"
    safe_extract(deb, dest)
    assert (dest / "usr/bin/hello").read_text() == "#!/bin/sh\n"
    assert os.access(dest / "usr/bin/hello", os.X_OK)
    assert os.readlink(dest / "usr/bin/hi") == "hello"
    assert not (dest / "control").exists() and not (dest / "debian-binary").exists()
    control = open_deb_control(deb)
    assert control["Package"] == "hello-test"
    assert control["Version"] == "1:2.3-4"
    assert control["Architecture"] == "arm64"
    assert control["Depends"] == "libc6 (>= 2.34),\nlibfoo1"


def test_ar_reader_pads_odd_members(tmp_path: Path) -> None:
    path = tmp_path / "x.a"
    path.write_bytes(ar_bytes([("odd", b"abc"), ("even", b"abcd")]))
    with open(path, "rb") as fh:
        members = read_ar(fh, where=str(path))
    assert [(m.name, m.size) for m in members] == [("odd", 3), ("even", 4)]
    assert path.read_bytes()[members[1].offset:members[1].offset + 4] == b"abcd"


def test_not_an_ar_archive(tmp_path: Path) -> None:
    path = tmp_path / "x.deb"
    path.write_bytes(b"!<arch>\nshort")
    with pytest.raises(FetchError, match="x.deb: truncated or corrupt ar header"):
        open_deb_control(path)


# -- single-root stripping --------------------------------------------------------------------


def test_single_root_is_stripped(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar.gz", [f("top/a", "1"), f("top/sub/b", "2")])
    safe_extract(archive, tmp_path / "out")
    assert listing(tmp_path / "out") == {"a", "sub", "sub/b"}


def test_single_root_kept_when_asked(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar.gz", [f("top/a", "1")])
    safe_extract(archive, tmp_path / "out", strip_single_root=False)
    assert listing(tmp_path / "out") == {"top", "top/a"}


@pytest.mark.parametrize("members,expected", [
    ([f("top/a"), f("README")], {"top", "top/a", "README"}),  # a dir and a file
    ([f("x/a"), f("y/b")], {"x", "x/a", "y", "y/b"}),  # two dirs
    ([f("only")], {"only"}),  # a single file
    ([sym("top", "."), f("z")], {"top", "z"}),  # a link is not a directory
])
def test_no_stripping_unless_exactly_one_directory(tmp_path: Path, members: list[M], expected: set[str]) -> None:
    safe_extract(write_tar(tmp_path / "a.tar", members, ""), tmp_path / "out")
    assert listing(tmp_path / "out") == expected


def test_single_empty_root_becomes_empty_dest(tmp_path: Path) -> None:
    safe_extract(write_tar(tmp_path / "a.tar", [d("./"), d("./top/")], ""), tmp_path / "out")
    assert listing(tmp_path / "out") == set()


def test_store_path_like_names_are_ordinary(tmp_path: Path) -> None:
    safe_extract(write_tar(tmp_path / "a.tar", [f("nix/store/abc-foo/bin/x", "x")], ""), tmp_path / "out")
    assert (tmp_path / "out/store/abc-foo/bin/x").read_text() == "x"


def test_duplicate_file_member_last_one_wins(tmp_path: Path) -> None:
    safe_extract(write_tar(tmp_path / "a.tar", [f("a", "old"), f("a", "new", 0o755)], ""), tmp_path / "out")
    assert (tmp_path / "out/a").read_text() == "new"
    assert os.access(tmp_path / "out/a", os.X_OK)


def test_hardlink_to_earlier_member(tmp_path: Path) -> None:
    safe_extract(write_tar(tmp_path / "a.tar", [f("a", "data", 0o755), hard("b", "a")], ""), tmp_path / "out")
    assert (tmp_path / "out/b").read_text() == "data"
    assert (tmp_path / "out/a").stat().st_ino == (tmp_path / "out/b").stat().st_ino


def test_links_inside_the_tree_are_fine(tmp_path: Path) -> None:
    members = [f("top/d/file", "x"), sym("top/d/self", "."), sym("top/up", "d/self/../d/file"),
               sym("top/dangling", "nowhere/at/all")]
    safe_extract(write_tar(tmp_path / "a.tar", members, ""), tmp_path / "out")
    assert (tmp_path / "out/up").read_text() == "x"


# -- rejections -------------------------------------------------------------------------------

ESCAPES = {
    "absolute path": ([f("/etc/evil", "x")], "'/etc/evil' has an absolute path"),
    "dotdot": ([f("ok/../../evil", "x")], "'ok/../../evil' has a '..' component"),
    "dotdot in a dir member": ([d("../up")], "'../up' has a '..' component"),
    "symlink absolute": ([sym("l", "/etc/passwd")], "symlink 'l' -> '/etc/passwd'"),
    "symlink relative": ([d("a"), sym("a/l", "../../etc")], "symlink 'a/l' -> '../../etc' points outside"),
    "symlink through another link": (
        # `up` looks harmless alone; only once d/l exists does it climb out.
        [sym("up", "d/l/../.."), d("d"), sym("d/l", "..")], "symlink 'up' -> 'd/l/../..' points outside"),
    "symlink out of the stripped root": (
        [d("top"), f("top/a", "x"), sym("top/l", "../top/a")], "symlink 'top/l' -> '../top/a' points outside"),
    "symlink loop": ([sym("a", "b"), sym("b", "a/x")], "is part of a symlink loop"),
    "hardlink outside": ([hard("h", "../etc/passwd")], "'../etc/passwd' has a '..' component"),
    "hardlink absolute": ([hard("h", "/etc/passwd")], "'/etc/passwd' has an absolute path"),
    "hardlink to a later member": ([hard("h", "a"), f("a", "x")], "hardlink 'h' -> 'a' does not point"),
    "hardlink to a symlink": ([sym("s", "x"), f("x"), hard("h", "s")], "hardlink 'h' -> 's' does not point"),
    "char device": ([M("dev/tty", "chr")], "'dev/tty' is a device node"),
    "block device": ([M("sda", "blk")], "'sda' is a device node"),
    "fifo": ([M("pipe", "fifo")], "'pipe' is a fifo"),
    "write through a symlink": ([d("real"), sym("l", "real"), f("l/file", "x")],
                                "'l/file' would be written through symlink 'l'"),
    "overwrite a symlink": ([f("target", "x"), sym("l", "target"), f("l", "evil")],
                            "'l' would overwrite a symlink"),
    "file over a directory": ([f("a/b"), f("a")], "'a' appears both as a directory and as a file"),
}


def assert_nothing_left(tmp_path: Path, archive: Path, dest: Path) -> None:
    assert not os.path.lexists(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_tar_escape_rejected_and_nothing_left(tmp_path: Path, case: str) -> None:
    members, message = ESCAPES[case]
    archive = write_tar(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchive) as e:
        safe_extract(archive, dest)
    assert e.value.where == str(archive)
    assert message in str(e.value)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{archive}: ")
    assert_nothing_left(tmp_path, archive, dest)


ZIP_ESCAPES = {
    "absolute path": ([f("/abs", "x")], "has an absolute path"),
    "dotdot": ([f("../evil", "x")], "'..' component"),
    "symlink escape": ([sym("l", "../../x")], "points outside"),
    "symlink absolute": ([sym("l", "/x")], "absolute target"),
    "char device": ([M("tty", "chr")], "is not a file, directory or symlink"),
    "fifo": ([M("p", "fifo")], "is not a file, directory or symlink"),
}


@pytest.mark.parametrize("case", sorted(ZIP_ESCAPES))
def test_zip_escape_rejected_and_nothing_left(tmp_path: Path, case: str) -> None:
    members, message = ZIP_ESCAPES[case]
    archive = write_zip(tmp_path / "evil.zip", members)
    with pytest.raises(UnsafeArchive, match=message):
        safe_extract(archive, tmp_path / "out")
    assert_nothing_left(tmp_path, archive, tmp_path / "out")


def test_deb_escape_rejected(tmp_path: Path) -> None:
    deb = write_deb(tmp_path / "evil.deb", [d("."), sym("./etc", "/etc"), f("./etc/cron.d/evil", "x")])
    with pytest.raises(UnsafeArchive, match="absolute target"):
        safe_extract(deb, tmp_path / "out")
    assert_nothing_left(tmp_path, deb, tmp_path / "out")


def test_corrupt_archive_is_a_fetch_error_and_nothing_left(tmp_path: Path) -> None:
    data = tar_bytes([f("a", os.urandom(200_000))], "gz")
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(FetchError, match="cut.tar.gz: cannot unpack this tar archive") as e:
        safe_extract(archive, tmp_path / "out")
    assert not isinstance(e.value, UnsafeArchive)
    assert_nothing_left(tmp_path, archive, tmp_path / "out")


def test_unknown_format(tmp_path: Path) -> None:
    archive = tmp_path / "notes.txt"
    archive.write_text("just text, long enough to not be anything else " * 20)
    with pytest.raises(FetchError, match="not a tar, zip or .deb archive"):
        safe_extract(archive, tmp_path / "out")
    assert_nothing_left(tmp_path, archive, tmp_path / "out")


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"nope.tar: cannot read archive: \[Errno 2\] No such file"):
        safe_extract(tmp_path / "nope.tar", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_refused_and_kept(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar", [f("a", "x")], "")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep").write_text("mine")
    with pytest.raises(FetchError, match="destination already exists"):
        safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/keep").read_text() == "mine"


# -- property: whatever the member names, nothing lands outside dest ----------------------------

# Names are mostly plausible, so that many archives extract and their links get checked; link
# targets are hostile more often than not.
_safe_part = st.sampled_from(["a", "b", "c d", "é", "."])
_any_part = st.sampled_from(["a", "b", "..", ".", "", "é"])
_name = st.one_of(
    st.lists(_safe_part, min_size=1, max_size=3).map("/".join),
    st.lists(_safe_part, min_size=1, max_size=3).map("/".join),
    st.lists(_safe_part, min_size=1, max_size=3).map("/".join),
    st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "/", "./"]),
              st.lists(_any_part, min_size=1, max_size=5)),
)
_target = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "", "", "/"]),
                    st.lists(_any_part.filter(bool), min_size=1, max_size=6))
_member = st.one_of(
    st.builds(lambda n: f(n, "x"), _name),
    st.builds(d, _name),
    st.builds(sym, _name, _target),
    st.builds(hard, _name, _name),
)


def _normal(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_member, min_size=1, max_size=6, unique_by=lambda m: _normal(m.name)), st.booleans())
def test_random_members_never_escape(members: list[M], strip: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp) / "sandbox"
        sandbox.mkdir()
        archive = write_tar(Path(tmp) / "r.tar", members, "")
        dest = sandbox / "out"
        try:
            safe_extract(archive, dest, strip_single_root=strip)
        except UnsafeArchive:
            assert not os.path.lexists(dest)
            assert list(sandbox.iterdir()) == []
            return
        except FetchError as e:  # e.g. a file where a directory is needed is not "unsafe"
            pytest.fail(f"unexpected FetchError: {e}")
        event("extracted")
        assert [p.name for p in sandbox.iterdir()] == ["out"]
        root = os.path.realpath(dest)
        for dirpath, dirnames, filenames in os.walk(dest):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                assert _inside(os.path.realpath(p), root), f"{p} resolves outside {root}"


def test_a_zstd_tar_is_refused_like_any_tar(tmp_path: Path) -> None:
    """A .tar.zst member climbing out, or zstd data cut short: one refusal, nothing left."""
    bad = write_tar(tmp_path / "bad.tar.zst", [f("../escape", "x")], "zst")
    with pytest.raises((UnsafeArchive, FetchError)):
        safe_extract(bad, tmp_path / "out")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()
    whole = tar_bytes(TREE, "zst")
    (tmp_path / "cut.tar.zst").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FetchError):
        safe_extract(tmp_path / "cut.tar.zst", tmp_path / "out2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.zst", "cut.tar.zst"]

