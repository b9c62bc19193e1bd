"""`planner why`, `diff` and `log` on what an outside audit (audit 15) found them wrong about:
runs of another set hiding a set's history, a node of several sets, the recipe a nested diff
names, partial realises, early cutoff, a failed realise, and the order of causes.

Real bubblewrap builds of small shell sets (tests/support/project.py), the `planner` command
line as a user runs it; each test fails on the answers given before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.causes import NodeState, explain
from tests.support.project import Project
from tests.test_why_causes import _error, _ok, _why  # noqa: F401  (the same CLI helpers)

needs_bwrap = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap")




def _causes(why: dict) -> list[tuple[str, str, str, list[str], list[str]]]:
    return [(r["cause"]["kind"], r["cause"]["recipe"], r["cause"]["field"], sorted(r["nodes"]),
             sorted(r["dependents"])) for r in why["causes"]]


@needs_bwrap
def test_runs_of_another_set_do_not_hide_the_runs_of_a_set(tmp_path: Path) -> None:
    # repro-4: the runs listing took the newest 200 runs of every set, then kept set t's.
    from planner.store import Store

    proj = Project.diamond(tmp_path)
    proj.lock()
    first = _ok(proj, "realise", "--json").json()["run"]
    st = Store(proj.store)
    try:
        for _ in range(210):  # a CI runner realising another set in the same store
            st.add_run({"set": "u", "targets": ["x"], "nodes": []})
    finally:
        st.close()
    why = _why(proj, "t")
    assert why["run"] == first and sorted(why["built"]) == ["a", "b", "c", "d"], why
    assert "a@run" in _ok(proj, "diff", "a", "--set", "t").stdout
    assert "a" in _ok(proj, "log", "a", "--set", "t").stdout
    proj.recipe("b", deps=["a"], script="echo b2 > $out/b.txt")
    nxt = _why(proj, "t", "--dry-run")
    assert nxt["run"] == first and _causes(nxt) == [("script", "b", "script", ["b"], ["d"])], nxt


@needs_bwrap
def test_diff_and_log_of_a_node_of_several_sets_ask_for_the_set(tmp_path: Path) -> None:
    # repro-6: `diff a` compared set v's a with set w's; `log a` printed the last set's log.
    v = Project.empty(tmp_path, target="a", set_name="v")
    w = Project(root=v.root, store=v.store, set="w")
    w.folder.mkdir(parents=True)
    w.write_set(target="a")
    v.recipe("a", script="echo v > $out/a.txt")
    w.recipe("a", script="echo w > $out/a.txt")
    for proj in (v, w):
        proj.lock()
        _ok(proj, "realise")
    for command in ("diff", "log"):
        line = _error(w, command, "a")
        assert "v, w" in line and "--set" in line, line
    assert "0 field(s) differ" in _ok(w, "diff", "a", "--set", "w").stdout
    assert _ok(w, "log", "a", "--set", "w").returncode == 0


@needs_bwrap
def test_diff_names_the_recipe_each_nested_change_is_of(tmp_path: Path) -> None:
    # repro-5: a change found down a dependency was labelled with the top node's recipe.
    proj = Project.empty(tmp_path, target="top")
    proj.recipe("a", script="echo a $MODE > $out/a.txt", env={"MODE": "one"})
    proj.recipe("b", deps=["a"])
    proj.recipe("top", deps=["b"])
    proj.lock()
    _ok(proj, "realise")
    proj.recipe("a", script="echo a $MODE > $out/a.txt", env={"MODE": "two"})
    _ok(proj, "realise")
    text = _ok(proj, "diff", "top", "--set", "t").stdout
    assert "[root cause: environment variable MODE of a: one -> two]" in text, text
    assert "of top" not in text and "of b" not in text, text


def _chain(tmp_path: Path) -> Project:
    """a -> b and c1 -> c2 -> c3, both under top; c1 has an environment variable."""
    proj = Project.empty(tmp_path, target="top")
    proj.recipe("a")
    proj.recipe("b", deps=["a"])
    proj.recipe("c1", script="echo c1 $MODE > $out/c1.txt", env={"MODE": "one"})
    proj.recipe("c2", deps=["c1"])
    proj.recipe("c3", deps=["c2"])
    proj.recipe("top", deps=["b", "c3"])
    return proj


@needs_bwrap
def test_after_a_partial_realise_nodes_it_left_out_are_not_new(tmp_path: Path) -> None:
    # repro-1: the run before (--target b) recorded only a and b: c1, c2, c3, top were "new".
    proj = _chain(tmp_path)
    proj.lock()
    _ok(proj, "realise")
    proj.recipe("c1", script="echo c1 $MODE > $out/c1.txt", env={"MODE": "two"})
    _ok(proj, "realise", "--target", "b")
    want = [("env", "c1", "MODE", ["c1"], ["c2", "c3", "top"])]
    assert _causes(_why(proj, "t", "--dry-run")) == want
    _ok(proj, "realise")
    why = _why(proj, "t")
    assert _causes(why) == want and not why["unexplained"], why


@needs_bwrap
def test_after_a_partial_variant_realise_no_set_toml_change_is_made_up(tmp_path: Path) -> None:
    # repro-2: run 2 built only sm100a; kern[sm_90a] was matched with kern[sm_100a] of run 2
    # (a CUDA arch list change in set.toml) instead of its own record in run 1.
    proj = Project.empty(tmp_path, target="app")
    (proj.folder / "set.toml").write_text(
        'target = "app"\nsource-date-epoch = 1700000000\nplatforms = ["linux/amd64"]\nbuild-root = "host"\n\n'
        '[cuda]\ndefault = ["sm_90a"]\nsm100a = ["sm_100a"]\n')
    proj.recipe("kern", extra='axes = ["cuda"]', script="echo kern > $out/k.txt")
    proj.recipe("app", deps=["kern"], script="cp /deps/kern/k.txt $out/")
    proj.lock()
    _ok(proj, "realise")
    proj.recipe("kern", extra='axes = ["cuda"]', script="echo kern2 > $out/k.txt")
    _ok(proj, "realise", "--variant", "sm100a")
    want = [("script", "kern", "script", ["kern[sm_90a]"], ["app[sm_90a]"])]
    assert _causes(_why(proj, "t", "--dry-run")) == want
    _ok(proj, "realise")
    assert _causes(_why(proj, "t")) == want


@needs_bwrap
def test_a_dependency_rebuilt_to_the_same_bytes_passes_no_cause_up(tmp_path: Path) -> None:
    # repro-3: c's unused variable rebuilt c to identical bytes, yet was credited with d.
    proj = Project.diamond(tmp_path)
    proj.lock()
    _ok(proj, "realise")
    proj.recipe("b", deps=["a"], script="echo b2 > $out/b.txt")
    proj.recipe("c", deps=["a"], env={"UNUSED": "1"})
    _ok(proj, "realise")
    assert _causes(_why(proj, "t")) == [("script", "b", "script", ["b"], ["d"]),
                                        ("env", "c", "UNUSED", ["c"], [])]


@needs_bwrap
def test_after_a_failed_realise_the_rebuild_says_failed_or_skipped(tmp_path: Path) -> None:
    # repro-8: nothing edited, the dry run said "inputs changed" of the failed and skipped nodes.
    proj = Project.empty(tmp_path, target="top")
    proj.recipe("a")
    proj.recipe("bad", deps=["a"], script="cat /nonexistent > $out/bad.txt")
    proj.recipe("top", deps=["bad"])
    proj.lock()
    run = proj.cli("realise", "--json")
    assert run.returncode != 0
    first = run.json()["run"]
    nxt = _why(proj, "t", "--dry-run")
    reasons = {u["node"]: u["reason"] for u in nxt["unexplained"]}
    assert reasons == {"bad": f"its build failed in run {first}", "top": f"skipped in run {first}"}, reasons
    proj.recipe("bad", deps=["a"], script="echo fixed > $out/bad.txt")
    _ok(proj, "realise")
    why = _why(proj, "t")
    assert _causes(why) == [("script", "bad", "script", ["bad"], ["top"])] and not why["unexplained"], why


def test_causes_reaching_as_many_nodes_are_ordered_by_name_not_by_build_time() -> None:
    # nit 2: equal reach was ordered by cost, which is timing: the order changed run to run.
    def state(name: str, mode: str, seconds: float) -> NodeState:
        return NodeState(id=name, name=name, variant="", key=f"{name}-{mode}", action="built", seconds=seconds,
                         preimage={"name": name, "env": {"MODE": mode}})

    previous = [state("a", "one", 0.0), state("b", "one", 0.0)]
    for fast, slow in (("a", "b"), ("b", "a")):
        current = [state(fast, "two", 0.1), state(slow, "two", 5.0)]
        exp = explain("t", current, previous, run=2, against=1)
        assert [r.cause.recipe for r in exp.causes] == ["a", "b"]
