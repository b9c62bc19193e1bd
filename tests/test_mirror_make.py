"""Making mirrors: `planner mirror add` (a local git repository or file under its origin URL) and
`planner mirror export` (every locked input of a set, from the store), served by a real HTTP
server to a machine whose origins are gone. Real git repositories, git daemon, loopback HTTP."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from planner.errors import FetchError
from planner.mirrors import origin_path

from .conftest import REPO, planner_cmd, run_planner
from .support.gitrepo import GitRepo, git_daemon
from .support.http_server import LoopbackServer
from .support.pyindex import LocalIndex

APEX = "https://github.com/NVIDIA/apex.git"
TARBALL = "https://developer.download.nvidia.com/hpc-sdk/hpcx-v2.25.1.tar.gz"


@contextlib.contextmanager
def serve_folder(folder: Path):
    """A plain static HTTP server over a folder (no git smarts: git uses its dumb protocol)."""
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _tarball(text: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("hpcx-v2.25.1/VERSION")
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def test_origin_path_refuses_what_would_leave_the_mirror() -> None:
    assert origin_path(APEX) == "github.com/NVIDIA/apex.git"
    assert origin_path("git://127.0.0.1:9419/up") == "127.0.0.1:9419/up"
    assert origin_path("git://127.0.0.1:9418/up") == "127.0.0.1/up"  # git's own port is no port
    for bad in ("https://github.com/../etc/passwd", "https://github.com/a//b", "https://github.com/a/./b",
                "file:///etc/passwd", "https://user:pw@github.com/x.git", "https://github.com/x?y=1",
                "https://github.com/a%2F..%2Fb", "https://github.com/", "-x", "https://github.com/a/b c"):
        with pytest.raises(FetchError):
            origin_path(bad)


def test_add_writes_no_file_through_a_planted_symlink(tmp_path: Path) -> None:
    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    outside.mkdir()
    (mirror / "urls").mkdir(parents=True)
    (mirror / "urls" / "github.com").symlink_to(outside)
    f = tmp_path / "f.patch"
    f.write_text("x\n")
    run = run_planner("mirror", "add", str(mirror), "https://github.com/a/f.patch", str(f), check=False)
    assert run.returncode != 0 and "symbolic link" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    # Every destination is checked before any is written: not even the sha256 copy is left.
    assert list(outside.iterdir()) == [] and not (mirror / "sha256").exists()


def _air_project(root: Path, sha256: str) -> None:
    folder = root / "recipes/air"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "top"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n')
    (folder / "apex.toml").write_text(
        f'name = "apex"\nversion = "0.1"\n[source]\nkind = "git"\nurl = "{APEX}"\nrev = "main"\n'
        '[build]\nbuilder = "shell"\nscript = "cp README $out/"\n')
    (folder / "hpcx.toml").write_text(
        f'name = "hpcx"\nversion = "2.25.1"\n[source]\nkind = "url"\nurl = "{TARBALL}"\nsha256 = "{sha256}"\n'
        '[build]\nbuilder = "shell"\nscript = "cp VERSION $out/"\n')
    (folder / "top.toml").write_text('name = "top"\nversion = "1"\ndeps = ["apex", "hpcx"]\n'
                                     '[build]\nbuilder = "shell"\nscript = "cat /deps/apex/README /deps/hpcx/VERSION > $out/all"\n')


def test_add_local_repository_and_file_then_lock_and_realise_over_http(tmp_path: Path) -> None:
    up = GitRepo.init(tmp_path / "apex-checkout")
    up.write("README", "old\n")
    up.commit("first")
    up.write("README", "apex from a snapshot\n")
    head = up.commit("second")
    body = _tarball(b"2.25.1\n")
    (tmp_path / "hpcx.tar.gz").write_bytes(body)
    mirror = tmp_path / "mirror"
    out = run_planner("mirror", "add", str(mirror), APEX, str(up.path)).stdout
    assert out.strip() == f"{mirror}/git/github.com/NVIDIA/apex.git"
    out = run_planner("mirror", "add", str(mirror), TARBALL, str(tmp_path / "hpcx.tar.gz")).stdout.split()
    sha = hashlib.sha256(body).hexdigest()
    assert out == [f"{mirror}/sha256/{sha}", f"{mirror}/urls/developer.download.nvidia.com/hpc-sdk/hpcx-v2.25.1.tar.gz"]
    # Adding again (a newer snapshot) updates the repository in place.
    up.write("README", "apex from a snapshot\n")
    run_planner("mirror", "add", str(mirror), APEX, str(up.path))
    root, store = tmp_path / "proj", tmp_path / "store"
    _air_project(root, sha)
    with serve_folder(mirror) as url:
        run_planner("--root", str(root), "--store", str(store), "--mirror", url, "lock", "air")
        assert head in (root / "lockfiles/air.lock").read_text()
        res = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "air", "--json").stdout)
    assert (Path(res["output"]) / "all").read_text() == "apex from a snapshot\n2.25.1\n"


def _export_project(root: Path, git_url: str, file_url: str, sha: str) -> None:
    folder = root / "recipes/ex"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "top"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n'
                                     'resolve-as-of = "2026-03-05"\n')
    (folder / "lib.toml").write_text(
        f'name = "lib"\nversion = "0.1"\n[source]\nkind = "git"\nurl = "{git_url}"\nrev = "main"\n'
        '[build]\nbuilder = "shell"\nscript = "cp README $out/"\n')
    (folder / "tool.toml").write_text(
        f'name = "tool"\nversion = "1"\n[source]\nkind = "url"\nurl = "{file_url}"\nsha256 = "{sha}"\n'
        '[build]\nbuilder = "shell"\nscript = "cp VERSION $out/"\n')
    (folder / "wheels.toml").write_text(
        'name = "wheels"\nversion = "1"\n[inputs.datedpkg]\nkind = "pypi"\nname = "datedpkg"\nversion = "1.0"\n'
        'dist = "wheel"\npython = "3.10"\nper-platform = true\n[build]\nbuilder = "prebuilt-wheel"\n')
    (folder / "top.toml").write_text('name = "top"\nversion = "1"\ndeps = ["lib", "tool"]\n'
                                     '[build]\nbuilder = "shell"\nscript = "cat /deps/lib/README /deps/tool/VERSION > $out/all"\n')


def test_export_a_locked_set_and_serve_it_when_every_origin_is_gone(tmp_path: Path, monkeypatch) -> None:
    from planner import lock as lockmod
    from planner.lock import declarations
    from planner.mirrors import load_mirrors
    from planner.recipes import load_set
    from planner.resolve import Resolver
    from planner.store import Store

    repos = tmp_path / "repos"
    up = GitRepo.init(repos / "lib")
    up.write("README", "lib 1\n")
    up.commit("one")
    up.write("README", "lib 2\n")
    commit = up.commit("two")
    body = _tarball(b"tool\n")
    sha = hashlib.sha256(body).hexdigest()
    root, store, mirror = tmp_path / "proj", tmp_path / "store", tmp_path / "mirror"
    with git_daemon(repos) as gitd, LoopbackServer() as files, LocalIndex() as index:
        files.add("/dl/tool-1.tar.gz", body)
        index.wheel("datedpkg", "1.0", uploaded="2026-03-01T00:00:00Z")
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", " ")
        monkeypatch.setenv("PIP_FIND_LINKS", " ")
        git_url, file_url = f"{gitd}/lib", files.url("/dl/tool-1.tar.gz")
        _export_project(root, git_url, file_url, sha)
        run_planner("--root", str(root), "--store", str(store), "lock", "ex")
        exported = run_planner("--root", str(root), "--store", str(store), "mirror", "export", "ex", str(mirror))
    lines = exported.stdout.splitlines()
    assert lines[-1] == f"{mirror}: 3 written, 0 skipped, 0 failed", exported.stdout
    assert (mirror / "git" / origin_path(git_url) / "HEAD").is_file()
    assert (mirror / "sha256" / sha).read_bytes() == body
    assert (mirror / "urls" / origin_path(file_url)).read_bytes() == body

    # Every origin is down now. A fresh store, the mirror over plain HTTP: every pinned input
    # materialises with the lock's tree, and the set realises.
    rs = load_set(root, "ex")
    lock = lockmod.read(rs.lockfile)
    fresh = Store(tmp_path / "fresh")
    with serve_folder(mirror) as url:
        resolver = Resolver(rs, fresh, mirrors=load_mirrors(root, [url]))
        for id_, decl in declarations(rs).items():
            li = lock.inputs[id_]
            for platform, pin in li.pins.items():
                entry = resolver.materialise(decl, li, None if platform == "any" else platform)
                assert entry.digest == pin.tree, id_
        res = json.loads(run_planner("--root", str(root), "--store", str(tmp_path / "fresh2"), "--mirror", url,
                                     "realise", "ex", "--json").stdout)
        # Re-locking there: the recipe's branch (`rev = "main"`) resolves from the mirror, to the
        # commit it named where the mirror was made (it held only that commit's tag).
        before = rs.lockfile.read_bytes()
        relock = run_planner("--root", str(root), "--store", str(tmp_path / "fresh2"), "--mirror", url,
                             "lock", "ex", "--update", "lib/source", check=False)
        assert relock.returncode == 0, relock.stderr
        assert rs.lockfile.read_bytes() == before
    fresh.close()
    assert (Path(res["output"]) / "all").read_text() == "lib 2\ntool\n"
    assert commit in lock.inputs["lib/source"].pins["any"].commit


def test_export_names_what_it_cannot_export(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _air_project(root, "ab" * 32)
    run_planner("--root", str(root), "--store", str(tmp_path / "s"), "lock", "air", check=False)  # all unlocked
    run = run_planner("--root", str(root), "--store", str(tmp_path / "s"), "mirror", "export", "air",
                      str(tmp_path / "m"), check=False)
    assert run.returncode != 0
    assert "failed apex/source: not locked" in run.stderr
    assert run.stderr.strip().splitlines()[-1] == "planner: error: mirror export: 2 inputs could not be exported " \
                                                  f"(the rest are in {tmp_path / 'm'})"


def test_a_snapshot_missing_a_blob_serves_a_sparse_input(tmp_path: Path) -> None:
    """mbridge's case: a snapshot lacks a blob (a PDF) that the recipe's `paths` leave out.
    `mirror add --rev` copies the commit with the objects it has and names the missing file;
    the recipe locks and builds from that mirror, and `mirror export` of the store's set writes
    a second mirror that serves it too, once the first is gone."""
    import shutil

    snap = GitRepo.init(tmp_path / "mbridge-snapshot")
    snap.write("pkg/__init__.py", "VERSION = '1'\n")
    snap.write("pyproject.toml", "[project]\nname = 'pkg'\n")
    snap.write("docs/estimator.pdf", b"%PDF-1.4\n\x00binary\n")
    commit = snap.commit("c")
    snap.lose_blob(commit, "docs/estimator.pdf")
    origin = "https://github.com/ISEEKYAN/mbridge.git"
    first = tmp_path / "first"
    run = run_planner("mirror", "add", str(first), origin, str(snap.path), "--rev", commit)
    assert run.stdout.strip() == f"{first}/git/github.com/ISEEKYAN/mbridge.git"
    assert run.stderr.strip() == (f"planner: warning: {snap.path} lacks 1 file of commit {commit} (docs/estimator.pdf): "
                                  "the mirror serves it over file:// to inputs whose `paths` leave them out")
    root, store = tmp_path / "proj", tmp_path / "store"
    folder = root / "recipes/sp"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "pkg"\nsource-date-epoch = 1700000000\nbuild-root = "host"\n'
                                     'platforms = ["linux/amd64"]\n')
    (folder / "pkg.toml").write_text(
        f'name = "pkg"\nversion = "1"\n[source]\nkind = "git"\nurl = "{origin}"\nrev = "{commit}"\n'
        'paths = ["pkg", "pyproject.toml"]\n[build]\nbuilder = "shell"\nscript = "cp -r pkg pyproject.toml $out/"\n')
    run_planner("--root", str(root), "--store", str(store), "--mirror", str(first), "lock", "sp")
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "--mirror", str(first),
                                 "realise", "sp", "--json").stdout)["output"]
    assert sorted(p.name for p in Path(out).iterdir()) == ["pkg", "pyproject.toml"]
    # The whole commit still cannot come from this mirror, and says so.
    sparse = (folder / "pkg.toml").read_text()
    (folder / "pkg.toml").write_text(sparse.replace('paths = ["pkg", "pyproject.toml"]\n', ""))
    whole = run_planner("--root", str(root), "--store", str(tmp_path / "store2"), "--mirror", str(first), "lock", "sp",
                        check=False)
    assert whole.returncode != 0 and "pkg/source" in whole.stderr
    (folder / "pkg.toml").write_text(sparse)
    run_planner("--root", str(root), "--store", str(store), "--mirror", str(first), "lock", "sp")
    second = tmp_path / "second"
    exp = run_planner("--root", str(root), "--store", str(store), "--mirror", str(first), "mirror", "export", "sp",
                      str(second))
    assert "lacks 1 file" in exp.stdout + exp.stderr
    shutil.rmtree(first)
    shutil.rmtree(snap.path)
    again = json.loads(run_planner("--root", str(root), "--store", str(tmp_path / "store3"), "--mirror", str(second),
                                   "realise", "sp", "--json").stdout)["output"]
    assert (Path(again) / "pkg/__init__.py").read_text() == "VERSION = '1'\n"


def test_add_never_replaces_what_is_not_its_repository_and_takes_turns(tmp_path: Path) -> None:
    """A folder already at the git path that is not a bare repository (a checkout, a user's
    files) is refused and kept; concurrent adds of one origin all succeed, one after another;
    the repository is readable by others (a web server, another user), as the files are."""
    import os
    import stat
    import subprocess

    up = GitRepo.init(tmp_path / "up")
    up.write("README", "x\n")
    up.commit("one")
    mirror = tmp_path / "mirror"
    taken = mirror / "git/example.org/data.git"
    taken.mkdir(parents=True)
    (taken / "keep").write_text("precious\n")
    run = run_planner("mirror", "add", str(mirror), "https://example.org/data.git", str(up.path), check=False)
    assert run.returncode == 1 and "not a bare git repository" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and (taken / "keep").read_text() == "precious\n"
    argv = planner_cmd("mirror", "add", str(mirror), "https://example.org/c.git", str(up.path))
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(6)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    repo = mirror / "git/example.org/c.git"
    assert stat.S_IMODE(repo.stat().st_mode) == 0o755
    assert sorted(os.listdir(repo.parent)) == ["c.git", "data.git"]  # no leftovers of the others
    have = subprocess.run(["git", "--git-dir", str(repo), "cat-file", "-e", f"{up.head()}^{{commit}}"])
    assert have.returncode == 0


def test_add_refuses_what_a_recipe_would_never_find(tmp_path: Path) -> None:
    """A file under a git URL (a git recipe looks under git/), or --rev for a file: refused in
    one line, nothing written (both were taken: the file filed under urls/, --rev ignored)."""
    f = tmp_path / "c.tar.gz"
    f.write_bytes(_tarball(b"x\n"))
    for args, said in ((["https://example.org/c.git", str(f)], "names a git repository"),
                       (["https://example.org/c.tar.gz", str(f), "--rev", "abc"], "--rev")):
        run = run_planner("mirror", "add", str(tmp_path / "mirror"), *args, check=False)
        assert run.returncode != 0 and said in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not (tmp_path / "mirror").exists() or not any(p.is_file() for p in (tmp_path / "mirror").rglob("*"))


@pytest.mark.parametrize("url", ["http://[::1/x.git", "https://a\u2100b/x.git", "https://example.org/a%2Fb.git",
                                 "https://example.org:99999/x.git"])
def test_add_refuses_a_malformed_origin_in_one_line(tmp_path: Path, url: str) -> None:
    f = tmp_path / "f.patch"
    f.write_text("x\n")
    run = run_planner("mirror", "add", str(tmp_path / "mirror"), url, str(f), check=False)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith("planner: error: ") and "internal error" not in run.stderr
    assert not (tmp_path / "mirror").exists() or not any((tmp_path / "mirror").rglob("*.patch"))


def test_a_mirror_from_the_environment_is_a_folder_or_a_url(tmp_path: Path, monkeypatch) -> None:
    """PLANNER_MIRRORS takes folders as --mirror does (they become file:// URLs); anything that is
    neither a folder nor an http(s) or file URL is one error naming the variable."""
    from planner.errors import LockError
    from planner.mirrors import load_mirrors

    folder = tmp_path / "m"
    folder.mkdir()
    monkeypatch.setenv("PLANNER_MIRRORS", f"{folder} http://127.0.0.1:1/m")
    assert load_mirrors(tmp_path) == [folder.as_uri(), "http://127.0.0.1:1/m"]
    for bad in ("ftp://x", "http://[::1", str(tmp_path / "missing")):
        monkeypatch.setenv("PLANNER_MIRRORS", bad)
        with pytest.raises(LockError) as e:
            load_mirrors(tmp_path)
        assert e.value.line().startswith("PLANNER_MIRRORS: ")


@pytest.mark.skipif(not Path("/usr/bin/apt-get").exists(), reason="needs apt-get to lock an apt input")
def test_export_fetches_a_pinned_deb_the_store_lacks_from_its_url(tmp_path: Path) -> None:
    """An apt input locked on another machine (the store holds no .deb for it, as an amd64 store
    holds no arm64 .deb): exported by fetching the pinned URL by hash, not refused."""
    import re

    root, locked_in = tmp_path / "proj", tmp_path / "lock-store"
    folder = root / "recipes" / "ap"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "r"\nsource-date-epoch = 1700000000\nbuild-root = "host"\n'
                                     'platforms = ["linux/amd64", "linux/arm64"]\n')
    (folder / "r.toml").write_text('name = "r"\nversion = "1"\naxes = ["platform"]\n[inputs.tool]\nkind = "apt"\n'
                                   'name = "hostname"\n[build]\nbuilder = "shell"\nscript = "true"\n')
    run_planner("--root", str(root), "--store", str(locked_in), "lock", "ap")
    lockfile = root / "lockfiles" / "ap.lock"
    from urllib.parse import unquote

    debs = [p for p in locked_in.iterdir() if p.is_file() and p.name.endswith(".deb")]
    with LoopbackServer() as files:
        served = []
        # Where apt found them, now a loopback server (this machine reaches Debian through apt only).
        text = lockfile.read_text()
        urls = re.findall(r'url = "([^"]+)"', text)
        assert len(urls) == 2, text
        for url in urls:
            segment = url.rsplit("/", 1)[1]
            (deb,) = [p for p in debs if p.name.endswith("-" + unquote(segment))]
            files.add("/pool/" + segment, deb.read_bytes())
            served.append(hashlib.sha256(deb.read_bytes()).hexdigest())
            text = text.replace(url, files.url("/pool/" + segment))
        lockfile.write_text(text)
        run = run_planner("--root", str(root), "--store", str(tmp_path / "empty"), "mirror", "export", "ap",
                          str(tmp_path / "m"), check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == f"{tmp_path / 'm'}: 2 written, 0 skipped, 0 failed", run.stdout
    assert sorted(p.name for p in (tmp_path / "m" / "sha256").iterdir()) == sorted(served)
