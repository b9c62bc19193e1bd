"""`submodules = true`: each gitlink of the pinned commit is a separate, declared input placed at
its path when the source is assembled; a missing or differently pinned one is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_planner
from .support.gitrepo import GitRepo, git_daemon

# Recipes reach local repositories only inside the project (issue 13): these are served over
# git:// from a folder beside it, as a remote would be.


@pytest.fixture
def served(tmp_path: Path):
    (tmp_path / "srv").mkdir()
    with git_daemon(tmp_path / "srv") as base:
        yield base


def _project(root: Path, parent: str, sub: str, sub_rev: str | None) -> None:
    folder = root / "recipes/sm"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "top"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n')
    subsection = (f'[inputs."source/sub/third_party/lib"]\nkind = "git"\nurl = "{sub}"\nrev = "{sub_rev}"\n'
                  if sub_rev else "")
    (folder / "top.toml").write_text(
        f'name = "top"\nversion = "1"\n[source]\nkind = "git"\nurl = "{parent}"\nrev = "HEAD"\n'
        f'submodules = true\n{subsection}'
        '[build]\nbuilder = "shell"\nscript = "cat README third_party/lib/LIB > $out/all"\n')


def _repos(tmp_path: Path, base: str) -> tuple[str, GitRepo, str]:
    sub = GitRepo.init(tmp_path / "srv/lib.git")
    sub.write("LIB", "library v1\n")
    sub_commit = sub.commit("lib")
    parent = GitRepo.init(tmp_path / "srv/app.git")
    parent.write("README", "app\n")
    parent.add_submodule("third_party/lib", f"{base}/lib.git", sub_commit)
    parent.commit("app with lib")
    return f"{base}/app.git", sub, sub_commit


def test_declared_submodule_is_placed_at_its_path(tmp_path: Path, served: str) -> None:
    parent, sub, sub_commit = _repos(tmp_path, served)
    root, store = tmp_path / "p", tmp_path / "s"
    _project(root, parent, f"{served}/lib.git", sub_commit)
    run_planner("--root", str(root), "--store", str(store), "lock", "sm")
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "sm", "--json").stdout)
    assert (Path(out["output"]) / "all").read_text() == "app\nlibrary v1\n"


def test_undeclared_or_mispinned_submodule_is_refused(tmp_path: Path, served: str) -> None:
    parent, sub, sub_commit = _repos(tmp_path, served)
    root, store = tmp_path / "p", tmp_path / "s"
    _project(root, parent, f"{served}/lib.git", None)
    proc = run_planner("--root", str(root), "--store", str(store), "lock", "sm", check=False)
    assert proc.returncode != 0
    assert "has submodule third_party/lib" in proc.stderr and sub_commit in proc.stderr
    sub.write("LIB", "library v2\n")
    other = sub.commit("lib v2")
    root2 = tmp_path / "p2"
    _project(root2, parent, f"{served}/lib.git", other)
    proc = run_planner("--root", str(root2), "--store", str(store), "lock", "sm", check=False)
    assert proc.returncode != 0
    assert f"the recipe pins {other}, the commit's gitlink is {sub_commit}" in proc.stderr
