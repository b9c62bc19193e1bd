"""`planner lock` keeps what a lock pins: an audit from outside found it replacing an unreadable
lock by a fresh one (a branch moved, a file changed upstream: re-pinned silently), saying
"marked unlocked" of a pin it kept, "pinned" of an input it could not reach, rewriting a lock
with nothing to change, and taking URLs that are not URLs or that hold credentials.

A real git repository and a real loopback HTTP server; the command line as a user runs it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from .conftest import run_planner
from .support.gitrepo import GitRepo
from .support.http_server import Fault, LoopbackServer


def _project(root: Path, git_url: str, http_url: str) -> None:
    folder = root / "recipes/k"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "x"\nsource-date-epoch = 1700000000\nbuild-root = "host"\n'
                                     'platforms = ["linux/amd64"]\n')
    (folder / "x.toml").write_text(f'name = "x"\nversion = "1"\n[source]\nkind = "git"\nurl = "{git_url}"\n'
                                   'rev = "main"\n[build]\nbuilder = "shell"\nscript = "cp VERSION $out/"\n')
    (folder / "u.toml").write_text(f'name = "u"\nversion = "1"\n[inputs.blob]\nkind = "url"\nurl = "{http_url}"\n'
                                   '[build]\nbuilder = "shell"\nscript = "cp $in_blob $out/ || true"\n')


def _planner(root: Path, *args: str, check: bool = False):
    return run_planner("--root", str(root), "--store", str(root.parent / "store"), *args, check=check)


def _one_error(run) -> str:
    lines = [l for l in run.stderr.splitlines() if l.startswith("planner: error:")]
    assert run.returncode != 0 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


@pytest.fixture
def locked(tmp_path: Path):
    repo = GitRepo.init(tmp_path / "p/vendor/up.git")
    repo.write("VERSION", "1\n")
    first = repo.commit("one")
    with LoopbackServer() as server:
        server.add("/blob.bin", b"first bytes\n", times=10**6)
        root = tmp_path / "p"
        _project(root, repo.url, server.url("/blob.bin"))
        _planner(root, "lock", "k", check=True)
        yield root, repo, server, first


def test_an_unreadable_lock_is_refused_not_replaced(locked) -> None:
    root, repo, server, first = locked
    lockfile = root / "lockfiles/k.lock"
    good = lockfile.read_text()
    repo.write("VERSION", "2\n")
    repo.commit("two")  # upstream moves on: a fresh lock would pin it
    server.add("/blob.bin", b"other bytes\n", times=10**6)
    for name, text in {"merge conflict": f"<<<<<<< HEAD\n{good}=======\n{good}>>>>>>> theirs\n",
                       "newer version": good.replace("version = 1", "version = 2", 1),
                       "empty": ""}.items():
        lockfile.write_text(text)
        line = _one_error(_planner(root, "lock", "k"))
        assert "lockfiles/k.lock" in line and "repair it" in line and "delete it" in line, (name, line)
        assert lockfile.read_text() == text, name  # left as it was
    lockfile.write_text(good)
    assert f'commit = "{first}"' in lockfile.read_text()


def test_a_lock_with_nothing_to_change_is_not_rewritten_and_keeps_its_mode(locked) -> None:
    root, repo, _server, _first = locked
    lockfile = root / "lockfiles/k.lock"
    os.chmod(lockfile, 0o640)
    before = os.stat(lockfile)
    again = _planner(root, "lock", "k", check=True)
    assert "0 changed" in again.stdout
    after = os.stat(lockfile)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    repo.write("VERSION", "3\n")
    repo.commit("three")
    _planner(root, "lock", "k", "--update", "x/source", check=True)
    replaced = os.stat(lockfile)
    assert replaced.st_ino != before.st_ino and stat.S_IMODE(replaced.st_mode) == 0o640


def test_an_update_that_cannot_reach_upstream_says_it_kept_the_pin(locked) -> None:
    root, _repo, server, _first = locked
    lockfile = root / "lockfiles/k.lock"
    before = lockfile.read_bytes()
    server.add("/blob.bin", b"", fault=Fault.NOT_FOUND, times=10**6)
    run = _planner(root, "lock", "k", "--update", "u/blob")
    line = _one_error(run)
    assert "could not resolve u/blob" in line and "its old pin is kept" in line and "unlocked" not in line, line
    assert "kept the old pin of u/blob:" in run.stderr and "pinned u/blob" not in run.stdout, run.stderr
    assert lockfile.read_bytes() == before


def test_an_input_that_cannot_be_reached_is_unlocked_not_pinned(locked) -> None:
    root, _repo, server, _first = locked
    (root / "recipes/k/v.toml").write_text(f'name = "v"\nversion = "1"\n[inputs.gone]\nkind = "url"\n'
                                           f'url = "{server.url("/missing.bin")}"\n[build]\nbuilder = "shell"\n'
                                           'script = "true"\n')
    run = _planner(root, "lock", "k")
    line = _one_error(run)
    assert "could not resolve v/gone" in line and "marked unlocked" in line, line
    assert "pinned v/gone" not in run.stdout and "unlocked v/gone:" in run.stderr, (run.stdout, run.stderr)
    assert "wrote lockfiles/k.lock (1 input unlocked)" in run.stderr


@pytest.mark.parametrize("url", ["javascript:alert(1)", "ext::sh -c touch% /tmp/planner-pwned", "fd::17",
                                 "host:repo.git", "https://user:secret@127.0.0.1/r.git",
                                 "https://token@127.0.0.1/r.git"])
def test_a_git_url_that_is_no_url_or_holds_credentials_is_refused(tmp_path: Path, url: str) -> None:
    root = tmp_path / "p"
    _project(root, url, "http://127.0.0.1:9/blob.bin")
    line = _one_error(_planner(root, "lock", "k"))
    assert "recipes/k/x.toml" in line and "url" in line, line
    assert not (root / "lockfiles/k.lock").exists()
    assert "secret" not in line and "token" not in line, line


def test_a_url_with_credentials_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "p"
    repo = GitRepo.init(tmp_path / "p/vendor/up.git")
    repo.write("VERSION", "1\n")
    repo.commit("one")
    _project(root, repo.url, "https://user:secret@127.0.0.1:9/blob.bin")
    line = _one_error(_planner(root, "lock", "k"))
    assert "recipes/k/u.toml" in line and "credentials" in line and "secret" not in line, line
    assert not (root / "lockfiles/k.lock").exists()


def test_check_takes_no_update(locked) -> None:
    root, _repo, _server, _first = locked
    run = _planner(root, "lock", "k", "--check", "--update", "x/source")
    assert run.returncode == 2 and "--check" in run.stderr and "--update" in run.stderr, run.stderr

