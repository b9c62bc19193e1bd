"""A store is written by the planner but lives on disk, where anything can happen to it (another
tool, another user sharing it, a hand in sqlite3): what the planner reads from it (index rows,
its folders, logs, plan caches, out-links) never takes its writes or removals out of the store,
nor puts a host file into a build or onto the terminal. Real bubblewrap builds of a small
shell set, the `planner` command line; each case failed before its fix (an audit of hostile
store contents: gc removed a host folder an index row named, a build's log was written through
a link, a forged plan cache answered a realise with /etc)."""

from __future__ import annotations

import json
import marshal
import os
import sqlite3
from pathlib import Path

import pytest

from tests.reliability.support import assert_one_failure
from tests.support.project import Project

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap")


@pytest.fixture
def built(tmp_path: Path) -> Project:
    proj = Project.empty(tmp_path, target="b")
    proj.recipe("a", script="echo a > $out/a.txt; cat /sys/devices/system/cpu/online > $out/cpus")
    proj.recipe("b", deps=["a"])
    proj.lock()
    assert proj.cli("realise").returncode == 0
    return proj


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep\n")
    return victim


def test_an_index_row_naming_a_path_outside_the_store_is_not_collected(built: Project, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    with sqlite3.connect(built.store / "index.sqlite") as db:
        db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?)", ("../victim", "a" * 32, "blake3:00", "build", "v", 0))
        db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?)", (str(victim), "b" * 32, "blake3:00", "build", "w", 0))
    for cmd in (("store", "gc"), ("store", "verify", "--repair"), ("store", "gc")):
        built.cli(*cmd, set_arg=False)
        assert (victim / "precious").read_text() == "keep\n", cmd


@pytest.mark.parametrize("folder", ["tmp", "logs", "checks"])
def test_a_store_folder_replaced_by_a_link_is_refused_not_followed(built: Project, tmp_path: Path,
                                                                  folder: str) -> None:
    victim = _victim(tmp_path)
    import shutil

    shutil.rmtree(built.store / folder, ignore_errors=True)
    (built.store / folder).symlink_to(victim)
    for cmd in (("store", "gc"), ("realise", "--check"), ("store", "verify")):
        run = built.cli(*cmd, set_arg=cmd[0] != "store")
        assert_one_failure(run, names=[folder, "not a folder of the store"])
    assert sorted(os.listdir(victim)) == ["precious"]


def test_a_log_is_never_written_or_read_through_a_link(built: Project, tmp_path: Path) -> None:
    host = tmp_path / "host-file"
    host.write_text("host\n")
    a = next(n for n in json.loads(built.cli("realise", "--json").stdout)["nodes"] if n["name"] == "a")
    check_log = built.store / "logs" / f"{a['build_key']}.check.log"
    check_log.symlink_to(host)
    built.cli("realise", "--check")
    assert host.read_text() == "host\n" and not check_log.is_symlink()
    log = built.store / "logs" / f"{a['build_key']}.log"
    log.unlink()
    log.symlink_to(host)
    line = assert_one_failure(built.cli("log", "a", set_arg=False), names=["cannot read this log"])
    assert "host" not in line.split("log")[0]
    log.unlink()
    os.mkfifo(log)
    assert_one_failure(built.cli("log", "a", set_arg=False, timeout=30), names=["not a regular file"])


def test_gc_removes_a_fifo_in_tmp_and_an_out_link_loop_is_no_root(built: Project, tmp_path: Path) -> None:
    os.mkfifo(built.store / "tmp" / "fifo")
    loop = tmp_path / "result"
    assert built.cli("realise", "--out-link", str(loop)).returncode == 0
    loop.unlink()
    loop.symlink_to(loop)
    assert built.cli("store", "roots", set_arg=False).returncode == 0
    gc = built.cli("store", "gc", set_arg=False, timeout=60)
    assert gc.returncode == 0, gc.stderr
    assert not (built.store / "tmp" / "fifo").exists()


def test_a_forged_plan_cache_does_not_answer(built: Project) -> None:
    (cache,) = (built.store / "plans").glob("*.plan")
    data = marshal.loads(cache.read_bytes())
    data["output"] = "/etc"
    cache.write_bytes(marshal.dumps(data))
    run = built.cli("realise", "--json")
    assert run.returncode == 0, run.stderr
    out = run.json()["output"]
    assert out != "/etc" and Path(out).parent == built.store


def test_a_shared_file_of_tmp_that_is_a_link_is_not_bound_into_a_build(built: Project, tmp_path: Path) -> None:
    host = tmp_path / "secret"
    host.write_text("secret\n")
    cpus = built.store / "tmp" / "cpus-1"
    cpus.unlink()
    cpus.symlink_to(host)
    built.recipe("a", script="echo a2 > $out/a.txt; cat /sys/devices/system/cpu/online > $out/cpus")
    built.lock()
    run = built.cli("realise", "--json")
    assert run.returncode == 0, run.stderr
    a = next(n for n in run.json()["nodes"] if n["name"] == "a")
    assert (Path(a["path"]) / "cpus").read_text() == "0\n"
    assert host.read_text() == "secret\n"


@pytest.mark.parametrize("replace", ["link-to-host-folder", "fifo"])
def test_an_entry_replaced_by_a_link_or_fifo_is_corrupt_never_mounted(built: Project, tmp_path: Path,
                                                                     replace: str) -> None:
    victim = _victim(tmp_path)
    (a,) = built.store.glob("*-a-1.0")
    a.chmod(0o755)
    import shutil

    shutil.rmtree(a)
    if replace == "fifo":
        os.mkfifo(a)
    else:
        a.symlink_to(victim)
    verify = built.cli("store", "verify", set_arg=False, timeout=60)
    assert verify.returncode != 0 and "not a file or folder" in verify.stdout + verify.stderr, verify.stdout
    # `store repair` does not register it again; a realise rebuilds a instead of mounting it.
    with sqlite3.connect(built.store / "index.sqlite") as db:
        db.execute("DELETE FROM entries WHERE path=?", (a.name,))
    assert built.cli("store", "repair", set_arg=False, timeout=60).returncode == 0
    built.recipe("b", deps=["a"], script="ls /deps/a > $out/seen")
    built.lock()
    run = built.cli("realise", "--json", timeout=120)
    assert run.returncode == 0, run.stderr
    b = next(n for n in run.json()["nodes"] if n["name"] == "b")
    assert "precious" not in (Path(b["path"]) / "seen").read_text()
    assert sorted(os.listdir(victim)) == ["precious"]


def test_a_dependency_check_finds_corrupt_is_not_built_on(built: Project) -> None:
    """`realise --check` that finds a's bytes differ from their record does not build b (new
    since the last run) on them and store it under the key that means "built from the good a"."""
    (a,) = built.store.glob("*-a-1.0")
    a.chmod(0o755)
    (a / "a.txt").chmod(0o644)
    (a / "a.txt").write_text("corrupted\n")
    built.recipe("b", deps=["a"], script="cat /deps/a/a.txt > $out/b.txt")
    built.lock()
    run = built.cli("realise", "--check")
    assert run.returncode != 0
    said = run.stdout + run.stderr
    assert "a: DIFFERS" in said and "b: its dependency a is corrupted in the store" in said, said
    assert not [p for p in built.store.glob("*-b-1.0") if "corrupted" in (p / "b.txt").read_text()]


def test_unreadable_index_records_are_history_lost_not_an_internal_error(built: Project) -> None:
    with sqlite3.connect(built.store / "index.sqlite") as db:
        for bad in ("{not json", "[1]", json.dumps({"set": "t", "nodes": [{"path": 5}]})):
            db.execute("INSERT INTO runs (json) VALUES (?)", (bad,))
        db.execute("UPDATE durations SET seconds='abc'")
        db.execute("INSERT INTO preimages VALUES (?, ?)", ("c" * 32, "{not json"))
    for cmd in (("why", "t"), ("log", "a"), ("plan", "t"), ("realise", "t"), ("store", "roots"), ("diff", "a")):
        run = built.cli(*cmd, set_arg=False)
        assert "internal error" not in run.stderr and "Traceback" not in run.stderr, (cmd, run.stderr)
        assert run.returncode == 0, (cmd, run.stderr)
    before = sorted(p.name for p in built.store.iterdir())
    line = assert_one_failure(built.cli("store", "gc", set_arg=False), names=["not a readable record"])
    assert "nothing is collected" in line and sorted(p.name for p in built.store.iterdir()) == before
