"""`planner lock` against a real git repository: pins are full commits; a moved tag is picked up
by `--update` only, and `--check` needs no network."""

from __future__ import annotations

import pytest

from pathlib import Path

from .conftest import run_planner
from .support.gitrepo import GitRepo


def _project(root: Path, url: str) -> None:
    folder = root / "recipes/g"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "x"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n')
    (folder / "x.toml").write_text(f'name = "x"\nversion = "1"\n[source]\nkind = "git"\nurl = "{url}"\nrev = "v1"\n'
                                   '[build]\nbuilder = "shell"\nscript = "cp VERSION $out/"\n')


def test_moved_tag_is_picked_up_by_update_only(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "p/vendor/up.git")  # local repositories only inside the project
    repo.write("VERSION", "1\n")
    first = repo.commit("one")
    repo.tag("v1")
    root, store = tmp_path / "p", tmp_path / "s"
    _project(root, repo.url)
    run_planner("--root", str(root), "--store", str(store), "lock", "g")
    lockfile = root / "lockfiles/g.lock"
    assert f'commit = "{first}"' in lockfile.read_text()
    repo.write("VERSION", "2\n")
    second = repo.commit("two")
    repo.tag("v1", force=True)  # upstream moves the tag
    before = lockfile.read_bytes()
    run_planner("--root", str(root), "--store", str(store), "lock", "g")
    assert lockfile.read_bytes() == before  # a plain lock keeps what is pinned
    run_planner("--root", str(root), "--store", str(store), "lock", "--check", "g")
    out = run_planner("--root", str(root), "--store", str(store), "lock", "g", "--update", "x/source")
    assert "pinned x/source" in out.stdout
    text = lockfile.read_text()
    assert f'commit = "{second}"' in text and first not in text
    # The rest of the lock is untouched by --update: only the x/source table changed.
    changed = [a for a, b in zip(before.decode().splitlines(), text.splitlines()) if a != b]
    assert all(line.startswith(("commit", "tree")) for line in changed), changed


@pytest.mark.parametrize("kind", ["apt", "pypi", "url", "patch"])
def test_a_downloaded_pins_url_is_http_whatever_its_kind(kind: str) -> None:
    """An apt or PyPI file pinned to file:///dev/zero would be streamed from this machine into the
    store: every kind whose pins are downloaded by URL takes http(s) only, per platform too."""
    from planner.errors import LockError
    from planner.lock import parse

    pin = 'tree = "blake3:' + "0" * 64 + '"\nsha256 = "' + "0" * 64 + '"\nurl = "file:///dev/zero"\n'
    for entry in (pin, '[inputs."r/x".platforms."linux/amd64"]\n' + pin):
        text = ('version = 1\nset = "s"\nrecipes = "blake3:' + "0" * 64 + '"\nsource-date-epoch = 1\n'
                f'[inputs."r/x"]\nkind = "{kind}"\norigin = "o"\nspec = "s"\n'
                + (entry if entry is pin else entry))
        with pytest.raises(LockError) as e:
            parse(text, "lockfiles/s.lock")
        assert "url must be http:// or https://" in e.value.line() and "inputs.r/x" in e.value.line()
