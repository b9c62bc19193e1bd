"""fetch.git against real repositories made here, over file:// and git://."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import attrs
import pytest

from planner.errors import FetchError
from planner.fetch import git as gitfetch
from planner.fetch.git import Submodule, export, resolve, resolve_submodule_url, submodules
from planner.hashing import tree_digest
from tests.support.gitrepo import GitRepo, git, git_daemon


@attrs.frozen
class World:
    base: Path  # holds both repositories: the git daemon's base path
    sub: GitRepo
    sub_commit: str
    up: GitRepo
    first: str  # an older commit of `up`, no branch or tag points at it
    main: str
    dev: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("repos")
    sub = GitRepo.init(base / "sub")
    sub.write("lib.c", "int lib;\n")
    sub_commit = sub.commit("sub")

    up = GitRepo.init(base / "up")
    up.write("README", "first\n")
    first = up.commit("first")
    up.write("README", "hello\n")
    up.write("bin/run.sh", "#!/bin/sh\necho hi\n", executable=True)
    up.symlink("link", "README")
    up.symlink("bin/dangling", "../nowhere")
    up.write("src/deep/a.txt", "line 1\nline 2\n")
    # In-tree attributes are part of what a checkout writes: CRLF for *.txt, $Id$ expansion.
    up.write(".gitattributes", "*.txt text eol=crlf\nident.c ident\n")
    up.write("ident.c", "/* $Id$ */\n")
    up.add_submodule("vendor/sub", "../sub", sub_commit)
    main = up.commit("main")
    up.tag("v1", message="release 1")  # annotated
    up.tag("light")  # lightweight
    up.git("checkout", "-q", "-b", "dev")
    up.write("dev.txt", "dev\n")
    dev = up.commit("dev")
    up.checkout("main")
    return World(base, sub, sub_commit, up, first, main, dev)


def checkout_by_clone(url: str, dest: Path) -> Path:
    git("clone", "-q", url, dest)
    shutil.rmtree(dest / ".git")
    return dest


# -- resolve ----------------------------------------------------------------------------------


def test_resolve_branches_tags_and_head(world: World) -> None:
    url = world.up.url
    tag_object = world.up.git("rev-parse", "v1")
    assert tag_object != world.main  # so the next line proves peeling
    assert resolve(url, "v1") == world.main
    assert resolve(url, "refs/tags/v1") == world.main
    assert resolve(url, "light") == world.main
    assert resolve(url, "main") == world.main
    assert resolve(url, "refs/heads/dev") == world.dev
    assert resolve(url, "dev") == world.dev
    assert resolve(url, "HEAD") == world.main


def test_resolve_accepts_a_full_commit_without_asking(world: World) -> None:
    unknown = "0123456789abcdef0123456789ABCDEF01234567"
    assert resolve("file:///does/not/exist", unknown) == unknown.lower()


def test_resolve_tag_wins_over_branch_of_the_same_name(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "r")
    c1 = repo.commit("one")
    c2 = repo.commit("two")
    repo.tag("same", at=c1)
    repo.branch("same", at=c2)
    assert resolve(repo.url, "same") == c1  # git's own order: refs/tags before refs/heads
    assert resolve(repo.url, "refs/heads/same") == c2


def test_moving_a_tag_changes_resolve(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "r")
    c1 = repo.commit("one")
    repo.tag("v2", message="v2")
    assert resolve(repo.url, "v2") == c1
    repo.write("x", "x")
    c2 = repo.commit("two")
    repo.tag("v2", message="v2 again", force=True)
    assert resolve(repo.url, "v2") == c2 != c1


def test_resolve_unknown_ref_names_url_and_ref(world: World) -> None:
    with pytest.raises(FetchError) as e:
        resolve(world.up.url, "v9.9")
    assert str(e.value) == (f"{world.up.url}: no branch or tag named 'v9.9' "
                            f"(a commit must be given as 40 hex digits)")


def test_resolve_unreachable_repository(tmp_path: Path) -> None:
    url = (tmp_path / "missing").as_uri()
    with pytest.raises(FetchError) as e:
        resolve(url, "main")
    text = str(e.value)
    assert text.startswith(f"{url}: git ls-remote main: ") and "\n" not in text


# -- export -----------------------------------------------------------------------------------


def test_export_equals_a_clone_without_git(world: World, tmp_path: Path) -> None:
    dest = tmp_path / "export"
    export(world.up.url, world.main, dest)
    clone = checkout_by_clone(world.up.url, tmp_path / "clone")
    assert tree_digest(dest) == tree_digest(clone)
    # What that hash covers, spelled out:
    assert os.access(dest / "bin/run.sh", os.X_OK)
    assert not os.access(dest / "README", os.X_OK)
    assert os.readlink(dest / "link") == "README"
    assert os.readlink(dest / "bin/dangling") == "../nowhere"
    assert (dest / "src/deep/a.txt").read_bytes() == b"line 1\r\nline 2\r\n"
    assert (dest / "ident.c").read_text().startswith("/* $Id: ")
    assert (dest / "vendor/sub").is_dir() and list((dest / "vendor/sub").iterdir()) == []
    assert not (dest / ".git").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clone", "export"]  # no temp dirs left


def test_export_of_a_commit_no_ref_points_at(world: World, tmp_path: Path) -> None:
    export(world.up.url, world.first, tmp_path / "old")
    assert sorted(os.listdir(tmp_path / "old")) == ["README"]
    assert (tmp_path / "old/README").read_text() == "first\n"


def test_export_ignores_the_users_git_config(world: World, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    gitconfig = home / ".gitconfig"
    gitconfig.write_text("[core]\n\tautocrlf = input\n\tsymlinks = false\n\tfileMode = false\n"
                         "[filter \"lfs\"]\n\tsmudge = false\n")
    (home / "attrs").write_text("README text eol=crlf\n")
    gitconfig.write_text(gitconfig.read_text() + f"[core]\n\tattributesFile = {home / 'attrs'}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "not-a-repo"))
    export(world.up.url, world.main, tmp_path / "export")
    assert (tmp_path / "export/README").read_bytes() == b"hello\n"  # no CRLF from the user's attributes
    assert (tmp_path / "export/link").is_symlink()
    monkeypatch.undo()
    assert tree_digest(tmp_path / "export") == tree_digest(checkout_by_clone(world.up.url, tmp_path / "clone"))


def test_export_from_cache_needs_no_origin(world: World, tmp_path: Path) -> None:
    origin = GitRepo.init(tmp_path / "origin")
    origin.write("a", "a\n")
    commit = origin.commit("a")
    cache = tmp_path / "cache"
    export(origin.url, commit, tmp_path / "one", cache_dir=cache)
    shutil.rmtree(origin.path)
    export(origin.url, commit, tmp_path / "two", cache_dir=cache)
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")
    assert len(list(cache.glob("*.git"))) == 1


def test_cache_fetches_further_commits(world: World, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    export(world.up.url, world.main, tmp_path / "main", cache_dir=cache)
    export(world.up.url, world.first, tmp_path / "first", cache_dir=cache)
    export(world.up.url, world.dev, tmp_path / "dev", cache_dir=cache)
    assert (tmp_path / "dev/dev.txt").exists() and not (tmp_path / "main/dev.txt").exists()
    assert (tmp_path / "first/README").read_text() == "first\n"


def test_export_falls_back_when_the_server_refuses_unadvertised_commits(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Protocol v0 without uploadpack.allowReachableSHA1InWant refuses a by-commit fetch of
    # anything that is not a ref tip; show that first, then that export copes.
    probe = tmp_path / "probe.git"
    git("init", "-q", "--bare", probe)
    refused = git("-c", "protocol.version=0", "--git-dir", probe, "fetch", "--depth", "1",
                  world.up.url, world.first, check=False)
    assert git("--git-dir", probe, "cat-file", "-t", world.first, check=False) != "commit", refused
    monkeypatch.setattr(gitfetch, "_CONFIG", gitfetch._CONFIG + (("protocol.version", "0"),))
    export(world.up.url, world.first, tmp_path / "old", cache_dir=tmp_path / "cache")
    assert (tmp_path / "old/README").read_text() == "first\n"


def test_export_of_an_unknown_commit_leaves_nothing(world: World, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "export"
    bogus = "1" * 40
    with pytest.raises(FetchError) as e:
        export(world.up.url, bogus, dest)
    assert str(e.value).startswith(f"{world.up.url}: ") and bogus in str(e.value)
    assert "\n" not in str(e.value)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_export_wants_a_full_commit_and_a_free_destination(world: World, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="'main' is not a full 40-hex commit id"):
        export(world.up.url, "main", tmp_path / "x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FetchError, match="destination already exists"):
        export(world.up.url, world.main, tmp_path / "taken")


# -- submodules -------------------------------------------------------------------------------


def test_submodules_lists_gitlinks_with_resolved_urls(world: World) -> None:
    assert submodules(world.up.url, world.main) == [
        Submodule(path="vendor/sub", url=world.sub.url, commit=world.sub_commit)]
    assert submodules(world.up.url, world.first) == []


def test_submodule_without_url_is_an_error(tmp_path: Path, world: World) -> None:
    repo = GitRepo.init(tmp_path / "r")
    repo.add_submodule("elsewhere", "../x", world.sub_commit)
    repo.git("update-index", "--add", "--cacheinfo", f"160000,{world.sub_commit},ext")
    (repo.path / "ext").mkdir()
    commit = repo.commit("broken")
    with pytest.raises(FetchError, match="submodule ext has no url in .gitmodules"):
        submodules(repo.url, commit)


@pytest.mark.parametrize("parent,url,expected", [
    ("https://github.com/NVIDIA/apex.git", "../cutlass.git", "https://github.com/NVIDIA/cutlass.git"),
    ("https://github.com/NVIDIA/apex/", "../../other/x", "https://github.com/other/x"),
    ("https://github.com/a/b", "./c", "https://github.com/a/b/c"),
    ("git@github.com:a/b.git", "../c.git", "git@github.com:a/c.git"),
    ("host:b", "../c", "host:c"),
    ("/srv/git/up", "../sub", "/srv/git/sub"),
    ("file:///srv/git/up", "../sub", "file:///srv/git/sub"),
    ("https://github.com/a/b", "https://example.com/abs.git", "https://example.com/abs.git"),
])
def test_relative_submodule_urls(parent: str, url: str, expected: str) -> None:
    assert resolve_submodule_url(parent, url) == expected


def test_too_many_dotdots() -> None:
    with pytest.raises(FetchError, match="too many"):
        resolve_submodule_url("https://github.com/a", "../../../x")


# -- over git:// -------------------------------------------------------------------------------


def test_over_git_daemon(world: World, tmp_path: Path) -> None:
    with git_daemon(world.base) as base_url:
        url = f"{base_url}/up"
        assert resolve(url, "v1") == world.main
        assert resolve(url, "dev") == world.dev
        export(url, world.main, tmp_path / "via-daemon", cache_dir=tmp_path / "cache")
        export(url, world.first, tmp_path / "old-via-daemon", cache_dir=tmp_path / "cache")
        assert submodules(url, world.main) == [Submodule("vendor/sub", f"{base_url}/sub", world.sub_commit)]
    export(world.up.url, world.main, tmp_path / "via-file")
    assert tree_digest(tmp_path / "via-daemon") == tree_digest(tmp_path / "via-file")
    assert (tmp_path / "old-via-daemon/README").read_text() == "first\n"


# -- sparse exports (`paths`) -------------------------------------------------------------------

SPARSE = ["src", "bin/run.sh", "link", "vendor/sub", ".gitattributes"]


def _only(tree: Path, paths: list[str], dest: Path) -> Path:
    """The given files and folders of `tree`, moved to `dest`."""
    dest.mkdir()
    for p in paths:
        (dest / p).parent.mkdir(parents=True, exist_ok=True)
        os.rename(tree / p, dest / p)
    return dest


def test_export_of_paths_equals_those_paths_of_a_clone(world: World, tmp_path: Path) -> None:
    """Links stay links, modes and in-tree attributes apply (CRLF), a submodule is an empty
    folder: the same bytes as a clone's, over a local path, file:// and git://."""
    want = _only(checkout_by_clone(world.up.url, tmp_path / "clone"), SPARSE, tmp_path / "want")
    assert (want / "src/deep/a.txt").read_bytes() == b"line 1\r\nline 2\r\n"
    export(str(world.up.path), world.main, tmp_path / "by-path", paths=SPARSE)
    export(world.up.url, world.main, tmp_path / "by-file-url", paths=SPARSE, cache_dir=tmp_path / "cache")
    with git_daemon(world.base) as base_url:
        export(f"{base_url}/up", world.main, tmp_path / "by-daemon", paths=SPARSE, cache_dir=tmp_path / "cache")
    for got in ("by-path", "by-file-url", "by-daemon"):
        assert tree_digest(tmp_path / got) == tree_digest(want), got
    assert sorted(os.listdir(tmp_path / "by-path")) == [".gitattributes", "bin", "link", "src", "vendor"]


def test_a_sparse_export_reads_only_the_blobs_of_its_paths(tmp_path: Path) -> None:
    """A snapshot missing one blob (mbridge's PDF): the whole commit cannot be exported, the
    files a build needs can; a path whose blob is missing still fails. Nothing half-made."""
    snap = GitRepo.init(tmp_path / "snap")
    snap.write("pkg/__init__.py", "x = 1\n")
    snap.write("pyproject.toml", "[project]\nname = 'pkg'\n")
    snap.write("docs/estimator.pdf", b"%PDF-1.4\n\x00\x01binary\n")
    commit = snap.commit("c")
    snap.lose_blob(commit, "docs/estimator.pdf")
    with pytest.raises(FetchError):
        export(snap.url, commit, tmp_path / "whole")
    assert not (tmp_path / "whole").exists()
    for i, url in enumerate((snap.url, str(snap.path))):
        got = tmp_path / f"sparse{i}"
        export(url, commit, got, paths=["pkg", "pyproject.toml"], cache_dir=tmp_path / "cache")
        assert sorted(str(p.relative_to(got)) for p in got.rglob("*")) == ["pkg", "pkg/__init__.py", "pyproject.toml"]
        assert (got / "pkg/__init__.py").read_text() == "x = 1\n"
    with pytest.raises(FetchError):
        export(snap.url, commit, tmp_path / "missing-blob", paths=["docs"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".missing", "missing"))] == []


def test_a_sparse_export_names_a_path_the_commit_lacks(world: World, tmp_path: Path) -> None:
    """Paths are literal (`src/*` is no pattern) and never followed through a link in the tree."""
    for paths, missing in ((["README", "nope"], "nope"), (["src/*"], "src/*"), (["link/x"], "link/x"),
                           (["src/deep/a.txt/b"], "src/deep/a.txt/b")):
        with pytest.raises(FetchError, match=f"no file or folder {re.escape(missing)} at {world.main}"):
            export(world.up.url, world.main, tmp_path / "got", paths=paths)
        assert not (tmp_path / "got").exists()
        assert [p for p in tmp_path.iterdir()] == []


def test_a_sparse_export_never_runs_the_sources_config(tmp_path: Path) -> None:
    """The source's own config (a smudge filter its attributes name) is not read: only its
    objects are borrowed."""
    marker = tmp_path / "ran"
    src = GitRepo.init(tmp_path / "src")
    src.write(".gitattributes", "* filter=evil\n")
    src.write("a.txt", "plain\n")
    commit = src.commit("c")
    src.git("config", "filter.evil.smudge", f"sh -c 'touch {marker}; echo changed'")
    src.git("config", "filter.evil.required", "true")
    export(str(src.path), commit, tmp_path / "got", paths=[".gitattributes", "a.txt"])
    assert (tmp_path / "got/a.txt").read_text() == "plain\n"
    assert not marker.exists()
