"""`planner lock --check` holds the lock to the closure the set builds (its target under its
profile): an unlocked input outside it is one warning line; another closure asked for by name
(`--target`, `--profile`, `--all`) still fails on its unlocked inputs; and whatever the scope, a
stale, missing or hand-edited entry fails. The reasons of unlocked entries are the same words
wherever the lock is made (issue 19, items 1 and 2)."""

from __future__ import annotations

import getpass
import re
from pathlib import Path

import pytest

from planner import lockreason
from planner.store import remove_tree

from .conftest import run_planner
from .support.gitrepo import GitRepo, free_port
from .support.http_server import Fault, LoopbackServer


def _set(root: Path, *, remote_url: str, tool_url: str, lib_url: str | None) -> None:
    """`app` needs `base` (profile `main`: `base-local`, a path source; profile `remote`:
    `base-remote`, a URL that 404s) and, with `lib_url`, `lib` (a local git repository).
    `tool` (a git repository nothing listens for) is in no closure of `app`."""
    folder = root / "recipes/s"
    folder.mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src/base.txt").write_text("base\n")
    (folder / "set.toml").write_text(
        'target = "app"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n'
        'profile = "main"\n[profiles.main]\nbase = "base-local"\n[profiles.remote]\nbase = "base-remote"\n')
    (folder / "base-local.toml").write_text(
        'name = "base-local"\nversion = "1"\n[source]\nkind = "path"\npath = "src"\n'
        '[build]\nbuilder = "shell"\nscript = "cp base.txt $out/"\n')
    (folder / "base-remote.toml").write_text(
        f'name = "base-remote"\nversion = "1"\n[source]\nkind = "url"\nurl = "{remote_url}"\n'
        '[build]\nbuilder = "shell"\nscript = "cp base.txt $out/"\n')
    (folder / "tool.toml").write_text(
        f'name = "tool"\nversion = "1"\n[source]\nkind = "git"\nurl = "{tool_url}"\nrev = "{"ab" * 20}"\n'
        '[build]\nbuilder = "shell"\nscript = "cp README $out/"\n')
    deps = '["base", "lib"]' if lib_url else '["base"]'
    (folder / "app.toml").write_text(
        f'name = "app"\nversion = "1"\ndeps = {deps}\n[build]\nbuilder = "shell"\nscript = "cat /deps/base/base.txt > $out/all"\n')
    if lib_url:
        (folder / "lib.toml").write_text(
            f'name = "lib"\nversion = "1"\n[source]\nkind = "git"\nurl = "{lib_url}"\nrev = "v1"\n'
            '[build]\nbuilder = "shell"\nscript = "cp VERSION $out/"\n')


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as s:
        s.add("/base.tar.gz", b"", fault=Fault.NOT_FOUND)
        yield s


@pytest.fixture
def project(tmp_path: Path, server) -> tuple[Path, Path]:
    root, store = tmp_path / "p", tmp_path / "store"
    repo = GitRepo.init(root / "vendor/lib.git")  # local repositories only inside the project
    repo.write("VERSION", "1\n")
    repo.commit("one")
    repo.tag("v1")
    _set(root, remote_url=server.url("/base.tar.gz"), tool_url=f"http://127.0.0.1:{free_port()}/tool.git",
         lib_url=repo.url)
    first = run_planner("--root", str(root), "--store", str(store), "lock", "s", check=False)
    assert first.returncode != 0 and "unlocked tool/source" in first.stderr and "unlocked base-remote/source" in first.stderr
    return root, store


def _check(project, *args: str):
    root, store = project
    return run_planner("--root", str(root), "--store", str(store), "lock", "s", "--check", *args, check=False)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


def test_check_is_clean_for_the_sets_closure_with_one_warning_for_the_rest(project) -> None:
    proc = _check(project)
    assert proc.returncode == 0, proc.stderr
    assert _warnings(proc.stderr) == ["planner: warning: 2 unlocked inputs outside the closure of app (profile main), "
                                      "not needed by it: base-remote/source, tool/source"]
    assert proc.stderr.strip().splitlines() == _warnings(proc.stderr)
    assert "up to date for the closure of app (profile main)" in proc.stdout and "2 unlocked outside it" in proc.stdout


@pytest.mark.parametrize("args, failing, outside", [
    (("--target", "tool"), ["tool/source"], ["base-remote/source"]),
    (("--profile", "remote"), ["base-remote/source"], ["tool/source"]),
    (("--all",), ["base-remote/source", "tool/source"], []),
])
def test_a_closure_asked_for_by_name_fails_on_its_unlocked_inputs(project, args, failing, outside) -> None:
    proc = _check(project, *args)
    assert proc.returncode != 0
    named = sorted(line.split(":", 1)[0] for line in proc.stderr.splitlines() if ": unlocked: " in line)
    assert named == failing
    assert f"{len(failing)} problem{'' if len(failing) == 1 else 's'} in lockfiles/s.lock" in proc.stderr
    warned = _warnings(proc.stderr)
    assert (warned[0].endswith(": " + ", ".join(outside)) if outside else warned == []), proc.stderr


def test_an_unknown_target_or_profile_is_an_error_not_a_clean_check(project) -> None:
    for args, text in ((("--target", "nope"), "no recipe named 'nope'"), (("--profile", "nope"), "profile 'nope'")):
        proc = _check(project, *args)
        assert proc.returncode != 0 and text in proc.stderr, proc.stderr
    # An empty target is no recipe's name, for every command (not the set's target in disguise).
    root, store = project
    for cmd in (("lock", "s", "--check"), ("plan", "s"), ("realise", "s", "--dry-run")):
        for _ in range(2):  # the second plan finds a cached table for the set's target: still refused
            proc = run_planner("--root", str(root), "--store", str(store), *cmd, "--target", "", check=False)
            assert proc.returncode != 0 and "no recipe named ''" in proc.stderr, (cmd, proc.stderr)


def _edit_lock(root: Path, old: str, new: str, count: int = 1) -> None:
    path = root / "lockfiles/s.lock"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))


def test_an_input_inside_the_closure_marked_unlocked_by_hand_fails(project) -> None:
    root, _ = project
    text = (root / "lockfiles/s.lock").read_text()
    entry = re.search(r'\[inputs\."lib/source"\]\n((?:[a-z0-9-]+ = .*\n)+)', text)
    assert entry is not None
    body = entry.group(1)
    reason = "its origin could not be reached where this lock was made"  # a reason the planner writes
    _edit_lock(root, body, body + f'reason = "{reason}"\nstatus = "unlocked"\n')
    proc = _check(project)
    assert proc.returncode != 0
    assert f"lib/source: unlocked: {reason}" in proc.stderr


def test_stale_entries_fail_inside_and_outside_the_closure(project) -> None:
    root, _ = project
    (root / "src/base.txt").write_text("edited\n")  # base-local/source: inside
    proc = _check(project)
    assert proc.returncode != 0 and "stale: base-local/source: src changed since locking" in proc.stderr
    (root / "src/base.txt").write_text("base\n")
    assert _check(project).returncode == 0
    tool = root / "recipes/s/tool.toml"  # outside the closure, and unlocked: still a stale entry
    tool.write_text(tool.read_text().replace("ab" * 20, "cd" * 20))
    proc = _check(project)
    assert proc.returncode != 0 and "stale: tool/source: recipe changed since locking" in proc.stderr


def test_hand_edited_pins_and_entries_fail(project) -> None:
    root, _ = project
    lock = (root / "lockfiles/s.lock").read_text()
    commit = re.search(r'commit = "([0-9a-f]{40})"', lock).group(1)
    _edit_lock(root, commit, "0" * 40)  # the store holds lib's tree for the real commit
    proc = _check(project)
    assert proc.returncode != 0 and re.search(r"edited: lib/source: tree blake3:\S+ is held in the store", proc.stderr)
    _edit_lock(root, "0" * 40, commit)
    assert _check(project).returncode == 0
    # A reason no planner writes (text from the machine that locked it), outside the closure too.
    _edit_lock(root, "127.0.0.1 could not be reached where this lock was made",
               "file:///home/someone/mirror/tool.git: fatal: not our ref")
    proc = _check(project)
    assert proc.returncode != 0 and "stale: tool/source: unlocked with a reason `planner lock` does not write" in proc.stderr
    # An entry taken out of the lock.
    (root / "lockfiles/s.lock").write_text(re.sub(r'\[inputs\."tool/source"\]\n(?:[a-z0-9-]+ = .*\n)+', "", lock))
    proc = _check(project)
    assert proc.returncode != 0 and "stale: tool/source: not in the lock" in proc.stderr


# -- item 2: a lock does not depend on where it was made ----------------------------------------

def test_unlocked_reasons_are_the_same_wherever_the_lock_is_made(tmp_path: Path, server) -> None:
    """Two copies of a project in two folders, each locked through its own mirror folder (which
    has the unreachable repository, without the commit): byte-identical locks, and no path,
    file URL or user name of either machine in them."""
    port = free_port()
    tool_url = f"http://127.0.0.1:{port}/tool.git"
    texts = []
    for n in (1, 2):
        root, store, mirror = tmp_path / f"site{n}/proj", tmp_path / f"site{n}/store", tmp_path / f"site{n}/mirror"
        _set(root, remote_url=server.url("/base.tar.gz"), tool_url=tool_url, lib_url=None)
        other = GitRepo.init(mirror / f"git/127.0.0.1:{port}/tool.git")
        other.write("README", f"site {n}\n")
        other.commit("not the pinned commit")
        (mirror / "urls/127.0.0.1").mkdir(parents=True)
        proc = run_planner("--root", str(root), "--store", str(store), "--mirror", str(mirror), "lock", "s", check=False)
        assert proc.returncode != 0
        assert str(mirror) in proc.stderr  # the machine's own error is shown where it happened ...
        text = (root / "lockfiles/s.lock").read_text()
        assert str(tmp_path) not in text and "file:" not in text  # ... and never written into the lock
        assert not re.search(rf"\b{re.escape(getpass.getuser())}\b", text)
        texts.append(text)
        remove_tree(store)  # its entries are read-only: an ordinary user cannot rmtree them
    assert texts[0] == texts[1]
    reasons = dict(re.findall(r'\[inputs\."([^"]+)"\]\n(?:[a-z0-9-]+ = .*\n)*?reason = "([^"]*)"', texts[0]))
    assert reasons == {
        "base-remote/source": "no source tried had it where this lock was made",
        "tool/source": "127.0.0.1 could not be reached where this lock was made",
    }, reasons


def test_a_reason_names_only_what_the_recipe_says() -> None:
    """Whatever the error text holds (a mirror path, a temp folder, a user's home, an index URL
    with credentials), the recorded reason is built from the declaration and fixed words."""
    hostile = ("every source failed: file:///home/alice/mirror/git/github.com/x/y.git: fatal: missing blob 12ab; "
               "https://github.com/x/y.git: Could not resolve host: github.com; /tmp/planner-abc123/tmp/x: "
               "https://alice:s3cret@pypi.internal.example/simple/: 404 Not Found")
    for kind, url, suite in (("git", "https://github.com/x/y.git", None), ("url", "file:///home/alice/x.tar", None),
                             ("pypi", None, None), ("image", "registry.example:5000/a/b:tag", None),
                             ("apt", None, "ubuntu/jammy"), ("git", "ssh://alice@host.example/x.git", None)):
        reason = lockreason.portable(kind, url, suite, hostile)
        assert reason in lockreason.allowed(kind, url, suite)
        for leak in ("alice", "/home", "/tmp", "file:", "s3cret", "pypi.internal", "12ab"):
            assert leak not in reason, (kind, reason)
    # The origin could not be reached: what the mirrors had or lacked is this machine's, not the lock's.
    assert lockreason.portable("git", "https://github.com/x/y.git", None, hostile) == (
        "github.com could not be reached where this lock was made")
    assert lockreason.portable("git", "https://github.com/x/y.git", None, "file:///m/y.git: fatal: missing blob") == (
        "no source tried had it complete where this lock was made")
    # The words of the error, not its URLs: a port holding "404" is no 404 (a CI run's flake).
    assert lockreason.portable("url", "http://127.0.0.1:40421/src.bin", None,
                               "http://127.0.0.1:40421/src.bin: HTTP 500 Internal Server Error") == (
        "could not be fetched from 127.0.0.1 or a mirror where this lock was made")


def test_platform_narrows_the_closure_as_it_narrows_a_realise(tmp_path: Path) -> None:
    """`app` requires `armtool` on every platform, and armtool (arm64 only) has an unlocked
    source: the set's closure needs it (arm64), amd64's does not."""
    root, store = tmp_path / "p", tmp_path / "store"
    folder = root / "recipes/s"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "app"\nsource-date-epoch = 1700000000\nbuild-root = "host"\n'
                                     'platforms = ["linux/amd64", "linux/arm64"]\n')
    (folder / "armtool.toml").write_text(
        f'name = "armtool"\nversion = "1"\nplatforms = ["linux/arm64"]\n[source]\nkind = "git"\n'
        f'url = "http://127.0.0.1:{free_port()}/armtool.git"\nrev = "{"ab" * 20}"\n'
        '[build]\nbuilder = "shell"\nscript = "cp README $out/"\n')
    (folder / "app.toml").write_text('name = "app"\nversion = "1"\naxes = ["platform"]\nrequires = ["armtool"]\n'
                                     '[build]\nbuilder = "shell"\nscript = "echo app > $out/app"\n')
    assert run_planner("--root", str(root), "--store", str(store), "lock", "s", check=False).returncode != 0
    whole = _check((root, store))
    assert whole.returncode != 0 and "armtool/source: unlocked: 127.0.0.1 could not be reached" in whole.stderr
    arm = _check((root, store), "--platform", "linux/arm64")
    assert arm.returncode != 0 and "for the closure of app, platform linux/arm64" in arm.stderr
    amd = _check((root, store), "--platform", "linux/amd64")
    assert amd.returncode == 0, amd.stderr
    assert _warnings(amd.stderr) == ["planner: warning: 1 unlocked input outside the closure of app, platform "
                                     "linux/amd64, not needed by it: armtool/source"]
    bad = _check((root, store), "--platform", "linux/riscv")
    assert bad.returncode != 0 and "platform linux/riscv is not one of the set's platforms" in bad.stderr
    wrong = run_planner("--root", str(root), "--store", str(store), "lock", "s", "--platform", "linux/amd64", check=False)
    assert wrong.returncode != 0 and "go with --check" in wrong.stderr
