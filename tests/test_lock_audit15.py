"""Audit 15 of lock and the fetchers: a git URL that reads outside the project, a cache left
half-fetched by a killed fetch, the caller's umask in a checkout, nested .git folders in path
inputs, long URL names, a relative --store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from planner.errors import RecipeError
from planner.recipes.validate import _check_git_url
from tests.support.gitrepo import GitRepo


def _err(key: str, msg: str) -> RecipeError:
    return RecipeError(msg)


def _secret_and_project(tmp_path: Path) -> tuple[GitRepo, Path]:
    secret = GitRepo.init(tmp_path / "secret")
    secret.write("TOKEN", "top secret\n")
    secret.commit("s")
    proj = tmp_path / "proj"
    (proj / "vendor").mkdir(parents=True)
    return secret, proj


@pytest.mark.parametrize("url", ["file://x{secret}", "file://localhost{secret}", "file://x/vendor/up",
                                 "file://{secret}", "file:///vendor/%2e%2e/%2e%2e/secret"])
def test_a_file_url_with_a_host_or_escapes_is_refused(tmp_path: Path, url: str) -> None:
    secret, proj = _secret_and_project(tmp_path)
    # `file://x/<abs>` once passed as the project-relative x/<abs>; git reads /<abs>.
    (proj / "x" / str(secret.path).lstrip("/")).mkdir(parents=True)
    with pytest.raises(RecipeError, match="file:// git URL|outside the project"):
        _check_git_url(proj, url.format(secret=secret.path), _err, "input 'x'")


def test_a_git_file_or_alternates_pointing_outside_the_project_is_refused(tmp_path: Path) -> None:
    secret, proj = _secret_and_project(tmp_path)
    up = proj / "vendor" / "up"
    up.mkdir()
    (up / ".git").write_text(f"gitdir: {secret.path / '.git'}\n")
    with pytest.raises(RecipeError, match="outside the project"):
        _check_git_url(proj, "vendor/up", _err, "input 'x'")
    # a repository inside whose objects are borrowed from the outside one
    inner = GitRepo.init(proj / "vendor" / "inner")
    (inner.path / ".git" / "objects" / "info" / "alternates").write_text(f"{secret.path / '.git' / 'objects'}\n")
    with pytest.raises(RecipeError, match="outside the project"):
        _check_git_url(proj, "vendor/inner", _err, "input 'x'")
    # ... or from one inside that borrows from the outside one (alternates of alternates)
    chain = GitRepo.init(proj / "vendor" / "chain")
    (chain.path / ".git" / "objects" / "info" / "alternates").write_text("../../../inner/.git/objects\n")
    with pytest.raises(RecipeError, match="outside the project"):
        _check_git_url(proj, "vendor/chain", _err, "input 'x'")
    # the ordinary cases still pass: a repository inside, by path and by file:///
    ok = GitRepo.init(proj / "vendor" / "ok")
    ok.write("a", "a\n")
    ok.commit("a")
    _check_git_url(proj, "vendor/ok", _err, "input 'x'")
    _check_git_url(proj, ok.path.as_uri(), _err, "input 'x'")
    (proj / "vendor" / "wt").mkdir()
    (proj / "vendor" / "wt" / ".git").write_text(f"gitdir: {ok.path / '.git'}\n")
    _check_git_url(proj, "vendor/wt", _err, "input 'x'")


def _cache_repo(cache: Path) -> Path:
    (repo,) = [p for p in cache.iterdir() if p.name.endswith(".git")]
    return repo


def test_a_cache_left_without_blobs_by_a_killed_fetch_is_fetched_again(tmp_path: Path) -> None:
    from planner.fetch.git import export
    from tests.support.gitrepo import git

    up = GitRepo.init(tmp_path / "up")
    up.write("a/b.txt", "b\n")
    up.write("run.sh", "#!/bin/sh\n", executable=True)
    commit = up.commit("one")
    cache = tmp_path / "cache"
    export(up.url, commit, tmp_path / "one", cache_dir=cache)
    repo = _cache_repo(cache)
    # what a fetch killed after the commit object was written leaves: the commit, no blob
    blob = git("--git-dir", repo, "rev-parse", f"{commit}:a/b.txt")
    loose = repo / "objects" / blob[:2] / blob[2:]
    if not loose.exists():  # packed: unpack, then lose the blob
        for pack in (repo / "objects" / "pack").glob("*.pack"):
            data = pack.read_bytes()
            for f in pack.parent.glob(pack.stem + ".*"):
                f.unlink()
            import subprocess
            subprocess.run(["git", "--git-dir", str(repo), "unpack-objects", "-q"], input=data, check=True)
    loose.unlink()
    (repo / "shallow.lock").write_text("")  # and the lock of a killed shallow fetch
    export(up.url, commit, tmp_path / "two", cache_dir=cache)
    assert (tmp_path / "two" / "a" / "b.txt").read_text() == "b\n"
    assert not (repo / "shallow.lock").exists()


def test_a_git_checkout_does_not_depend_on_the_callers_umask(tmp_path: Path) -> None:
    from planner.fetch.git import export
    from planner.hashing import tree_digest

    up = GitRepo.init(tmp_path / "up")
    up.write("run.sh", "#!/bin/sh\necho hi\n", executable=True)
    up.write("d/data", "x\n")
    commit = up.commit("one")
    export(up.url, commit, tmp_path / "a")
    old = os.umask(0o177)
    try:
        export(up.url, commit, tmp_path / "b")
    finally:
        os.umask(old)
    assert os.access(tmp_path / "b" / "run.sh", os.X_OK)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")


def test_a_path_source_with_a_nested_git_locks_and_checks(tmp_path: Path) -> None:
    from planner import lock as lockmod
    from planner.recipes import load_set
    from tests.support.project import Project

    proj = Project.empty(tmp_path, target="x")
    proj.source_file("src/main.c", "main\n")
    proj.source_file("src/third_party/lib/lib.c", "lib\n")
    # what `git submodule update` leaves, and a vendored repository's own folder
    proj.source_file("src/third_party/lib/.git", "gitdir: ../../../.git/modules/lib\n")
    proj.source_file("src/vendored/.git/HEAD", "ref: refs/heads/main\n")
    proj.source_file("src/vendored/v.c", "v\n")
    proj.source_file("src/.git", "gitdir: elsewhere\n")
    proj.recipe("x", source="src", script="cp main.c $out/")
    lock = proj.lock()
    assert lockmod.check(load_set(proj.root, proj.set), lock) == []
    # the same tree without any .git hashes as before: existing locks keep their pins
    plain = Project.empty(tmp_path / "plain", target="x")
    plain.source_file("src/main.c", "main\n")
    plain.source_file("src/third_party/lib/lib.c", "lib\n")
    plain.source_file("src/vendored/v.c", "v\n")
    plain.recipe("x", source="src", script="cp main.c $out/")
    assert plain.lock().inputs == lock.inputs


def test_a_url_with_a_long_last_segment_locks_and_an_os_error_unlocks_only_its_input(tmp_path: Path) -> None:
    from planner import lock as lockmod
    from planner.resolve.locking import UnresolvedInputs
    from tests.support.http_server import LoopbackServer
    from tests.support.project import Project

    long = "a" * 247 + ".txt"  # 251 bytes: a legal name, `<name>.part` is not
    longer = "b" * 256  # the name itself cannot be written: an OSError for this input alone
    with LoopbackServer() as server:
        server.add("/good.txt", b"good\n")
        server.add("/" + long, b"long\n")
        server.add("/" + longer, b"longer\n")
        proj = Project.empty(tmp_path, target="x")
        inputs = "".join(f'[inputs.{n}]\nkind = "url"\nurl = "{server.url("/" + f)}"\n'
                         for n, f in (("a-good", "good.txt"), ("b-long", long), ("c-longer", longer)))
        proj.write_raw("x", f'name = "x"\nversion = "1"\n{inputs}[build]\nbuilder = "shell"\nscript = "true"\n')
        with pytest.raises(UnresolvedInputs) as info:
            proj.lock()
    lock = lockmod.read(proj.lockfile)
    assert lock.inputs["x/a-good"].status == "locked"
    assert lock.inputs["x/b-long"].status == "locked"
    assert lock.inputs["x/c-longer"].status == "unlocked"
    assert [f.id for f in info.value.failures] == ["x/c-longer"], info.value.line()


def test_a_relative_store_with_dotdot_locks_path_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from planner.recipes import load_set
    from planner.resolve import lock_set
    from planner.store import Store
    from tests.support.project import Project

    proj = Project.empty(tmp_path, target="a")
    proj.source_file("src/a/x.txt", "x\n")
    proj.recipe("a", source="src/a", script="cp x.txt $out/")
    monkeypatch.chdir(proj.root)
    store = Store(Path("../store"))
    try:
        lock, _ = lock_set(load_set(Path("."), proj.set), store)
    finally:
        store.close()
    assert lock.inputs["a/source"].status == "locked"


def test_two_locks_of_one_project_take_turns(tmp_path: Path) -> None:
    import fcntl
    import threading

    from tests.support.project import Project

    proj = Project.empty(tmp_path, target="a")
    proj.source_file("src/a/x.txt", "x\n")
    proj.recipe("a", source="src/a", script="cp x.txt $out/")
    proj.lockfile.parent.mkdir(parents=True)
    # another `planner lock` between its read and its write
    fd = os.open(proj.lockfile.parent, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (proj.lock(), done.set()))
    try:
        worker.start()
        assert not done.wait(1.0), "lock_set went ahead while another lock of the project was under way"
    finally:
        os.close(fd)
    assert done.wait(30)
    worker.join()


def test_a_sparse_git_export_applies_the_root_gitattributes(tmp_path: Path) -> None:
    from planner.fetch.git import export

    up = GitRepo.init(tmp_path / "up")
    up.write("sub/a.txt", "a\nb\n")
    up.write("sub/i.c", "/* $Id$ */\n")
    up.write(".gitattributes", "*.txt eol=crlf\n*.c ident\n")
    commit = up.commit("one")
    export(up.url, commit, tmp_path / "full")
    export(up.url, commit, tmp_path / "sparse", paths=["sub"])
    assert (tmp_path / "full" / "sub" / "a.txt").read_bytes() == b"a\r\nb\r\n"
    for name in ("a.txt", "i.c"):
        assert (tmp_path / "sparse" / "sub" / name).read_bytes() == (tmp_path / "full" / "sub" / name).read_bytes()
    assert not (tmp_path / "sparse" / ".gitattributes").exists()


def test_an_editors_hidden_files_beside_the_recipes_are_not_recipes(tmp_path: Path) -> None:
    """Emacs leaves `.#x.toml` (a dangling link) beside a recipe with unsaved edits, vim a
    `.x.toml.swp`: every command failed on the link ('not a regular file'). Hidden files are
    not recipes, for loading, the lock's recipes checksum and `why`; the lock stays current."""
    from tests.support.project import Project

    proj = Project.diamond(tmp_path)
    assert proj.cli("lock").returncode == 0
    os.symlink("root@host.1234:1700000000", proj.folder / ".#b.toml")
    (proj.folder / ".c.toml").write_text("not = [a recipe\n")
    check = proj.cli("lock", "--check")
    assert check.returncode == 0, check.stderr
    plan = proj.cli("plan")
    assert plan.returncode == 0, plan.stderr
    assert all(f" {n}" in plan.stdout for n in "abcd"), plan.stdout
