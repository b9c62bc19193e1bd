"""No wrong answers (issue 13, class 4).

(a) the no-op plan cache must see entries added to or removed from a path source, not only
changed ones; (b) `realise --check` compares the bytes on disk and names a corrupted dependency
instead of blaming its dependent; (c) gc roots are per target and per out-link, and
`store gc --dry-run` lists what would go; (d) a truncated index is refused in one line and
`planner store repair` rebuilds it from the entries.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.support.project import Project

from .support import assert_clean_error, assert_store_sound, cli, entries

ROW = "13. No wrong answers"


def _collecting(tmp_path: Path) -> Project:
    """`a` lists its path source (names and contents, recursively); `b` copies `a`."""
    proj = Project.empty(tmp_path, target="b")
    proj.source_file("src/a/one.txt", "1\n")
    proj.source_file("src/a/sub/two.txt", "2\n")
    proj.recipe("a", source="src/a", script="find . -type f | sort > $out/list; cat $(find . -type f | sort) >> $out/list")
    proj.recipe("b", deps=["a"], script="cp /deps/a/list $out/list")
    return proj


def test_plan_cache_sees_new_and_removed_entries(tmp_path: Path, figure: dict) -> None:
    """Entries added to or removed from a path source (top folder, subfolder, a fifo) and a new recipe file after a realise: the next realise is not answered from the no-op cache."""
    edits = {
        "file-added-at-top": lambda r: (r / "src/a/three.txt").write_text("3\n"),
        "file-added-in-subfolder": lambda r: (r / "src/a/sub/four.txt").write_text("4\n"),
        "file-removed": lambda r: (r / "src/a/one.txt").unlink(),
        "folder-added": lambda r: (r / "src/a/new").mkdir(),
        "fifo-added": lambda r: os.mkfifo(r / "src/a/pipe"),
        "recipe-file-added": lambda r: (r / "recipes/t/c.toml").write_text(
            'name = "c"\nversion = "1"\n[build]\nbuilder = "shell"\nscript = "true"\n'),
    }
    outcomes = []
    for name, edit in edits.items():
        proj = _collecting(tmp_path / name)
        proj.lock()
        first = cli(proj, "realise", proj.set, "--json")
        assert first.returncode == 0, first.stderr
        assert cli(proj, "realise", proj.set, "--json").json()["run"] is None  # a real no-op first
        edit(proj.root)
        proj.lock() if name != "fifo-added" else None
        again = cli(proj, "realise", proj.set, "--json")
        if again.returncode == 0:
            res = again.json()
            assert res["run"] is not None, f"{name}: answered from the no-op cache"
            outcomes.append(f"{name}: planned again")
        else:
            line = assert_clean_error(again, names=["src/a"])
            outcomes.append(f"{name}: refused: {line[-80:]}")
    figure.update(trials=len(edits), faults=", ".join(edits),
                  outcomes=f"{len(outcomes)}/{len(edits)} not answered from the cache; " + "; ".join(outcomes))


def test_check_names_the_corrupted_dependency(tmp_path: Path, figure: dict) -> None:
    """A dependency's bytes corrupted in the store: `realise --check` names that node as corrupted and does not blame its dependent."""
    outcomes = []
    for name, corrupt in {"byte-flipped": lambda p: p.write_text("corrupted\n"),
                          "file-removed": lambda p: p.unlink(),
                          "file-added": lambda p: (p.parent / "extra").write_text("x")}.items():
        proj = _collecting(tmp_path / name)
        proj.lock()
        res = cli(proj, "realise", proj.set, "--json").json()
        a = Path(next(n["path"] for n in res["nodes"] if n["name"] == "a"))
        os.chmod(a, 0o755)
        target = a / "list"
        os.chmod(target, 0o644)
        corrupt(target)
        check = cli(proj, "realise", proj.set, "--check")
        assert check.returncode != 0, check.stdout
        lines = {l.split(":", 1)[0]: l for l in check.stdout.splitlines() if l.startswith("check ")}
        assert "CORRUPTED" in lines["check a"], check.stdout
        assert "DIFFERS" not in lines["check b"] or "not compared" in lines["check b"], check.stdout
        outcomes.append(f"{name}: {lines['check a'][:70]}")
    figure.update(trials=3, faults="a dependency's output: a byte changed, a file removed, a file added",
                  outcomes=f"3/3: the dependency named CORRUPTED, its dependent not blamed")


def test_gc_roots_per_target_and_out_link(tmp_path: Path, figure: dict) -> None:
    """`realise --target X` then `--target Y`, an out-link from a no-op, and `store gc --dry-run`: gc keeps every rooted output and the dry run lists exactly what gc then removes."""
    proj = _collecting(tmp_path)
    proj.recipe("c", script="echo c > $out/c")
    proj.lock()
    b = cli(proj, "realise", proj.set, "--target", "b", "--json").json()
    c = cli(proj, "realise", proj.set, "--target", "c", "--json").json()
    link = tmp_path / "result-b"
    assert cli(proj, "realise", proj.set, "--target", "b", "--out-link", str(link)).returncode == 0  # a no-op
    # Superseded: an old version of c, rooted by nothing.
    proj.recipe("c", script="echo c2 > $out/c")
    proj.lock()
    cli(proj, "realise", proj.set, "--target", "c")
    dry = proj.cli("store", "gc", "--dry-run", set_arg=False)
    assert dry.returncode == 0, dry.stderr
    listed = sorted(l.split()[2] for l in dry.stdout.splitlines() if l.startswith("would remove "))
    gc = proj.cli("store", "gc", set_arg=False)
    removed = sorted(l.split()[1] for l in gc.stdout.splitlines() if l.startswith("removed "))
    assert listed == removed and removed == [Path(c["output"]).name], (dry.stdout, gc.stdout)
    assert Path(b["output"]).is_dir() and all(Path(n["path"]).exists() for n in b["nodes"])
    shutil.rmtree(proj.store / "plans", ignore_errors=True)
    again = cli(proj, "realise", proj.set, "--target", "b", "--json").json()
    assert {n["action"] for n in again["nodes"]} == {"reused"}
    assert_store_sound(proj)
    figure.update(trials=1, faults="two targets of one set realised in turn, an out-link made by a no-op, "
                                   "a superseded output; gc --dry-run then gc",
                  outcomes=f"dry run listed {len(listed)}, gc removed {len(removed)} (the same); "
                           f"both targets and the out-link kept")


def test_truncated_index_is_refused_and_repaired(tmp_path: Path, figure: dict) -> None:
    """The sqlite index truncated (to 0, to 50 bytes, to half) or deleted: every command refuses in one line naming `planner store repair`, which rebuilds it; the next realise reuses everything."""
    outcomes = []
    for name, damage in {"emptied": lambda p: p.write_bytes(b""),
                         "50-bytes": lambda p: p.write_bytes(p.read_bytes()[:50]),
                         "deleted": lambda p: p.unlink()}.items():
        proj = _collecting(tmp_path / name)
        proj.lock()
        first = cli(proj, "realise", proj.set, "--json").json()
        before = {e[0]: e[3] for e in entries(proj.store)}
        index = proj.store / "index.sqlite"
        for side in ("-wal", "-shm"):
            Path(str(index) + side).unlink(missing_ok=True)
        damage(index)  # the no-op check reads the index too: it cannot answer either
        for args in (("realise", proj.set), ("store", "verify"), ("store", "gc")):
            run = cli(proj, *args)
            assert_clean_error(run, names=["index", "planner store repair"])
        repair = proj.cli("store", "repair", set_arg=False)
        assert repair.returncode == 0, repair.stderr
        # Nothing was built by the repair: fetched inputs are known by their key, the rest is
        # 'recovered', never 'build'.
        kinds = {e[0]: e[3] for e in entries(proj.store)}
        assert "build" not in kinds.values() and set(kinds.values()) <= {"fixed", "recovered"}, kinds
        assert {k for k, v in kinds.items() if v == "fixed"} == {k for k, v in before.items() if v == "fixed"}, \
            (before, kinds)
        assert proj.cli("store", "verify", set_arg=False).returncode == 0
        again = cli(proj, "realise", proj.set, "--json").json()
        assert again["digest"] == first["digest"]
        outcomes.append(f"{name}: refused by realise, verify, gc; repaired: {repair.stdout.strip().splitlines()[-1]}")
    figure.update(trials=3, faults="index.sqlite emptied, cut to 50 bytes, deleted",
                  outcomes="3/3 refused in one line by realise, store verify, store gc; repair rebuilt it, "
                           "registering entries as fixed or recovered (never built); same digests after")


def test_gc_roots_do_not_depend_on_a_window_of_runs(tmp_path: Path, figure: dict) -> None:
    """A rooted target, then 1500 later run records (other sets' runs, no-ops): gc still keeps the root's whole closure."""
    from planner.store import Store

    proj = _collecting(tmp_path)
    proj.lock()
    first = cli(proj, "realise", proj.set, "--json").json()
    paths = {Path(n["path"]).name for n in first["nodes"]}
    st = Store(proj.store)
    try:
        for i in range(1500):  # what 1500 realises of other sets would leave
            st.add_run({"set": f"other-{i}", "output": None, "nodes": [], "inputs": []})
    finally:
        st.close()
    dry = cli(proj, "store", "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    gc = cli(proj, "store", "gc")
    assert gc.returncode == 0, gc.stderr
    kept = {p.name for p in proj.store.iterdir()}
    assert paths <= kept, paths - kept
    again = cli(proj, "realise", proj.set, "--json").json()
    assert {n["action"] for n in again["nodes"]} == {"reused"}, again["nodes"]
    figure.update(trials=1, faults="1500 run records after the one that rooted the target, then store gc",
                  outcomes=f"{len(paths)}/{len(paths)} closure entries kept; the next realise reused all")
