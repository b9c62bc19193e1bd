"""Error messages: one line naming the input, never a traceback (issue 13, class 7)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.http_server import Fault, LoopbackServer
from tests.support.project import Project
from tests.support.users import chown_tree, prefix, python_for, require_unprivileged, scratch

from .support import assert_clean_error, rmtree, shell_recipe, tarball

ROW = "15. Error messages"


def test_messages_name_the_input(tmp_path: Path, figure: dict) -> None:
    """A fifo in a path source, archives with a dir/file clash either way or a link loop, an unknown key inside an input: one line naming the input and what is wrong, no temporary path."""
    archives = {
        "file-then-dir": (tarball([("top/x", "file", "a"), ("top/x", "dir", b"")]), "as a file and as a directory"),
        "dir-then-file": (tarball([("top/x", "dir", b""), ("top/x", "file", "a")]), "as a directory and as a file"),
        "link-loop": (tarball([("top/a", "symlink", "b"), ("top/b", "symlink", "a")]), "symlink loop"),
    }
    outcomes = []
    with LoopbackServer() as srv:
        for name, (data, words) in archives.items():
            srv.add(f"/{name}.tar.gz", data, times=10)
            proj = Project.empty(tmp_path / name, target="x")
            proj.write_raw("x", shell_recipe("x", "true", source={"kind": "url", "url": srv.url(f"/{name}.tar.gz")}))
            line = assert_clean_error(proj.cli("lock"), names=["x/source", words, f"{name}.tar.gz"])
            assert "/tmp/" not in line.replace(str(tmp_path), "<test>").split("x/source", 1)[1], line
            outcomes.append(line[-80:])
    proj = Project.empty(tmp_path / "fifo", target="x")
    proj.source_file("src/a/f", "x\n")
    os.mkfifo(proj.root / "src/a/pipe")
    proj.write_raw("x", shell_recipe("x", "true", source={"kind": "path", "path": "src/a"}))
    outcomes.append(assert_clean_error(proj.cli("lock"), names=["x/source", "src/a/pipe", "fifo"])[-80:])
    proj = Project.empty(tmp_path / "key", target="x")
    proj.write_raw("x", 'name = "x"\nversion = "1"\n[inputs.blob]\nkind = "url"\nurl = "http://127.0.0.1:1/b"\n'
                        'colour = 1\n[build]\nbuilder = "shell"\nscript = "true"\n')
    outcomes.append(assert_clean_error(proj.cli("lock"), names=["inputs.blob.colour"])[-80:])
    figure.update(trials=len(outcomes), faults="3 archives (file then dir, dir then file, link loop), a fifo in a "
                                               "path source, an unknown key in [inputs.blob]",
                  outcomes=f"{len(outcomes)}/{len(outcomes)} one line naming the input and the problem")


def test_read_only_store(tmp_path: Path, figure: dict) -> None:
    """A store another user owns: `store verify` and a no-op realise work, a command that must write says so in one line."""
    user = require_unprivileged()
    if user is None:
        pytest.skip("needs root to make a store another user cannot write")
    base = scratch(None)
    try:
        proj = Project.diamond(base)
        proj.lock()
        assert proj.cli("realise").returncode == 0
        for dirpath, dirnames, filenames in os.walk(base):
            os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)
        assert proj.cli("realise").returncode == 0  # refresh the no-op cache after the chmods
        home = scratch(user)

        def as_user(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*prefix(user, home), *python_for(user), "-m", "planner.cli", "--root",
                                   str(proj.root), "--store", str(proj.store), *args],
                                  capture_output=True, text=True, cwd="/")
        verify = as_user("store", "verify")
        noop = as_user("realise", "t")
        # The owner's plan cache made stale (a recipe touched, its text the same): still a no-op
        # for the reader, answered by the full plan, recording nothing.
        os.utime(proj.folder / "b.toml")
        stale = as_user("realise", "t", "--json")
        assert stale.returncode == 0, stale.stderr
        assert {n["action"] for n in json.loads(stale.stdout)["nodes"]} == {"reused"}
        assert json.loads(stale.stdout)["run"] is None  # nothing recorded in a store not ours
        # Every command the refusal names as still working does work.
        readers = {" ".join(a): as_user(*a) for a in (
            ("store", "roots"), ("store", "size", "t"), ("show", "a", "--set", "t"), ("plan", "t"), ("why", "t"),
            ("why", "t", "--dry-run"), ("realise", "t", "--dry-run"), ("log", "a", "--set", "t"))}
        for what, r in readers.items():
            assert r.returncode == 0 and "unable to open" not in r.stderr, (what, r.stderr)
        (proj.root / "src/a/data.txt").chmod(0o666)
        (proj.root / "src/a/data.txt").write_text("changed\n")
        proj.lock()
        build = as_user("realise", "t")
        assert verify.returncode == 0 and "store ok" in verify.stdout, verify.stderr
        assert noop.returncode == 0, noop.stderr
        lines = [l for l in build.stderr.splitlines() if l.startswith("planner: error:")]
        assert build.returncode != 0 and len(lines) == 1 and "not writable" in lines[0], build.stderr
        for named in ("store verify", "store roots", "store size", "show", "a no-op realise", "plan", "why",
                      "log", "dry runs"):
            assert named in lines[0], (named, lines[0])
        assert "unable to open database file" not in build.stderr + verify.stderr + noop.stderr
        figure.update(trials=6, faults="store owned by root, commands run as planner-ci: verify, a no-op realise, "
                                       "store roots, store size, show, a realise that must build",
                      outcomes=f"verify, no-op, {', '.join(readers)} ok; build refused: {lines[0][-90:]}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


_FETCH_FAULTS = ["sha256-edited", "tree-edited", "upstream-republished", "upstream-404", "upstream-gone",
                 "archive-source-edited"]


@pytest.mark.parametrize("fault", _FETCH_FAULTS)
def test_input_fetch_failures_name_the_input(tmp_path: Path, fault: str, figure: dict) -> None:
    """An input that cannot be fetched or verified at realise time (hand-edited pin, upstream changed, gone or 404): one `planner: error:` line naming recipe/input and its file first, the URL after; never "build failed"; nothing stored."""
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap")
    import re

    from tests.reliability.support import deterministic_bytes

    blob = deterministic_bytes(40_000, seed=7)
    srv = LoopbackServer().__enter__()
    try:
        archive = fault.startswith("archive")
        data = tarball([("top/f", "file", "x")]) if archive else blob
        fname = "src.tar.gz" if archive else "blob.bin"
        route = srv.add(f"/{fname}", data, times=0)
        proj = Project.empty(tmp_path, target="x")
        inp = {"kind": "url", "url": srv.url(f"/{fname}")}
        proj.write_raw("x", shell_recipe("x", "ls /inputs > $out/l", inputs={"blob": inp}))
        proj.lock()
        text = proj.lockfile.read_text()
        if fault in ("sha256-edited", "tree-edited", "archive-source-edited"):
            field = "tree" if fault == "tree-edited" else "sha256"
            m = re.search(rf'^{field} = "(?:blake3:)?([0-9a-f]+)"$', text, re.M)
            assert m, text
            proj.lockfile.write_text(text.replace(m.group(1), "ab" * (len(m.group(1)) // 2), 1))
        elif fault == "upstream-republished":
            route.body = bytes(b ^ 1 for b in blob)
        elif fault == "upstream-404":
            srv.add(f"/{fname}", b"", fault=Fault.NOT_FOUND)
        rmtree(proj.store)  # nothing cached: the realise must fetch
        if fault == "upstream-gone":
            srv.__exit__(None, None, None)
        run = proj.cli("realise")
        line = assert_clean_error(run, names=["x/blob", fname])
        assert "build failed" not in run.stderr, run.stderr
        # The input first: the URL (if named at all) comes after it.
        assert line.index("x/blob") < (line.index("http://") if "http://" in line else len(line)), line
        assert not list(proj.store.glob("*-x-1.0")), "a build ran"
    finally:
        if fault != "upstream-gone":
            srv.__exit__(None, None, None)
    figure.update(trials=1, faults=f"{fault} ({fname}), store emptied, then realise",
                  outcomes=f"one line: {line[len('planner: error: '):][:120]}")
