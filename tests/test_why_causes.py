"""`planner why` on the changes an audit from outside found it wrong about: each cause is the
one edit a user made, where they made it, with the figures of what was asked about.

Real bubblewrap builds of small shell sets (tests/support/project.py), the `planner` command
line as a user runs it; each test fails on the answers `why` gave before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.project import Project

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap")


def _ok(proj: Project, *args: str):
    run = proj.cli(*args)
    assert run.returncode == 0, run.stderr
    return run


def _why(proj: Project, *args: str) -> dict:
    return json.loads(_ok(proj, "why", *args, "--json").stdout)


def _error(proj: Project, *args: str) -> str:
    run = proj.cli(*args)
    lines = [l for l in run.stderr.splitlines() if l.strip()]
    assert run.returncode != 0 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


@pytest.fixture
def diamond(tmp_path: Path) -> Project:
    proj = Project.diamond(tmp_path)
    proj.lock()
    _ok(proj, "realise")
    return proj


def test_the_sandbox_turned_off_is_one_cause_of_the_command_line(diamond: Project) -> None:
    _ok(diamond, "realise", "--sandbox", "off")
    why = _why(diamond, "t")
    assert len(why["causes"]) == 1, why["causes"]
    (report,) = why["causes"]
    cause = report["cause"]
    assert (cause["kind"], cause["recipe"], cause["old"], cause["new"]) == ("sandbox", "", "on", "off (impure)")
    assert cause["file"] is None and "realise --sandbox" in cause["description"]
    assert sorted(report["nodes"]) == ["a", "b", "c", "d"]
    text = _ok(diamond, "why", "t").stdout
    assert "1. sandbox of every node (realise --sandbox): on -> off (impure)" in text, text


def test_against_names_a_run_of_the_set_other_than_the_one_explained(diamond: Project) -> None:
    diamond.recipe("b", deps=["a"], script="echo b2 > $out/b.txt")
    _ok(diamond, "realise")
    last = _why(diamond, "t")["run"]
    assert "--against 999: no run 999 of set 't'" in _error(diamond, "why", "t", "--against", "999")
    assert f"--against {last} is the run explained" in _error(diamond, "why", "t", "--against", str(last))
    assert "no run 999 of set 't'" in _error(diamond, "why", "t", "--run", "999")
    earlier = _why(diamond, "t", "--against", str(last - 1))
    assert earlier["against"] == last - 1 and earlier["built"]
    for extra in (["--run", str(last)], ["--against", str(last - 1)]):
        run = diamond.cli("why", "t", "--dry-run", *extra)
        assert run.returncode == 2 and "--dry-run" in run.stderr, run.stderr


def test_why_of_a_node_counts_only_what_is_below_it(diamond: Project) -> None:
    diamond.recipe("b", deps=["a"], script="echo b2 > $out/b.txt")
    _ok(diamond, "realise")
    whole = _why(diamond, "t")
    assert sorted(whole["built"]) == ["b", "d"]
    mine = _why(diamond, "b", "--set", "t")
    assert mine["built"] == ["b"] and mine["reused"] == 1  # b and a: d is above b
    (report,) = mine["causes"]
    assert report["nodes"] == ["b"] and report["dependents"] == []
    assert report["cost"] == mine["total_cost"] <= whole["total_cost"]
    text = _ok(diamond, "why", "b", "--set", "t").stdout
    assert "dependent" not in text, text
    # A node the run reused, with nothing rebuilt below it: the last run that rebuilt it.
    a = _why(diamond, "a", "--set", "t")
    assert a["built"] == [] and a["reused"] == 1 and a["causes"] == []
    assert a["last_rebuild"] == whole["run"] - 1, a  # the first realise, not the one that rebuilt b


def test_a_recipes_new_axis_is_its_own_edit_and_its_dependents_inherit_it(diamond: Project) -> None:
    c = diamond.folder / "c.toml"
    c.write_text(c.read_text().replace('version = "1.0"\n', 'version = "1.0"\naxes = ["platform"]\n', 1))
    why = _why(diamond, "t", "--dry-run")
    assert len(why["causes"]) == 1, [r["cause"]["description"] for r in why["causes"]]
    (report,) = why["causes"]
    cause = report["cause"]
    assert (cause["kind"], cause["recipe"], cause["field"]) == ("variant", "c", "platform")
    assert cause["file"] == "recipes/t/c.toml" and cause["line"] == 3, cause
    assert [n.split("[")[0] for n in report["nodes"]] == ["c"]
    assert [n.split("[")[0] for n in report["dependents"]] == ["d"]


def test_a_cuda_arch_list_edit_is_one_cause_at_its_line_of_set_toml(tmp_path: Path) -> None:
    proj = Project.empty(tmp_path, target="img")
    set_toml = proj.folder / "set.toml"
    set_toml.write_text(set_toml.read_text() + '\n[cuda]\nsm100a = ["sm_100a"]\n')
    proj.recipe("kern", script="echo kern > $out/archs", extra='axes = ["cuda"]')
    proj.recipe("app", deps=["kern"], script="cp /deps/kern/archs $out/archs")
    proj.write_raw("img", 'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n[image]\n'
                          'layers = [["app"]]\n')
    proj.lock()
    _ok(proj, "realise")
    set_toml.write_text(set_toml.read_text().replace('["sm_100a"]', '["sm_100a", "sm_120a"]'))
    _ok(proj, "lock")
    for args in (["--dry-run"], []):
        if not args:
            _ok(proj, "realise")
        why = _why(proj, "t", *args)
        descriptions = [r["cause"]["description"] for r in why["causes"]]
        assert len(why["causes"]) == 1, descriptions
        (report,) = why["causes"]
        cause = report["cause"]
        assert (cause["kind"], cause["recipe"], cause["field"]) == ("variant", "", "cuda"), cause
        assert (cause["old"], cause["new"]) == ("sm_100a", "sm_100a+sm_120a")
        text = set_toml.read_text().splitlines()
        assert cause["file"] == "recipes/t/set.toml" and text[cause["line"] - 1].startswith("sm100a ="), cause
        assert sorted(n.split("[")[0] for n in report["nodes"] + report["dependents"]) == ["app", "img", "kern"]


def test_an_image_rebuilt_for_its_attestation_names_the_lock_entry(diamond: Project) -> None:
    proj = diamond
    proj.write_raw("img", 'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n[image]\n'
                          'layers = [["d"]]\n')
    proj.source_file("src/e/e.txt", "e\n")
    proj.recipe("e", source="src/e", script="cp e.txt $out/")  # not in the image
    proj.write_set(target="img")
    proj.lock()
    _ok(proj, "realise")
    proj.source_file("src/e/e.txt", "e, edited\n")
    _ok(proj, "lock")
    for args in (["--dry-run"], []):
        if not args:
            _ok(proj, "realise")
        why = _why(proj, "t", *args)
        (report,) = why["causes"]
        cause = report["cause"]
        assert (cause["kind"], cause["lock_entry"]) == ("attestation", "e/source"), cause
        assert "e/source" in cause["description"] and report["nodes"] == ["img"]
    # e is a recipe of the set outside the image's closure: said so, not "no node".
    line = _error(proj, "why", "e", "--set", "t")
    assert "e is a recipe of set 't' but not in what run" in line and "--target" in line, line


def test_a_recipe_broken_since_the_run_leaves_the_other_causes_located(diamond: Project) -> None:
    diamond.recipe("b", deps=["a"], script="echo b2 > $out/b.txt")
    _ok(diamond, "realise")
    (diamond.folder / "c.toml").write_text("name = \n")  # broken after the run
    why = _why(diamond, "t")
    (report,) = why["causes"]
    assert report["cause"]["file"] == "recipes/t/b.toml" and report["cause"]["line"], report
    (note,) = why["notes"]
    assert "c.toml" in note, note
    assert f"note: {note}" in _ok(diamond, "why", "t").stdout


def test_a_cause_whose_every_node_failed_counts_no_dependents(diamond: Project) -> None:
    """A change to d (the target: nothing above it) whose build fails: one failed node, no
    count of dependents (it said "-1 dependents")."""
    diamond.recipe("d", deps=["b", "c"], script="echo boom; exit 3")
    assert diamond.cli("realise").returncode != 0
    text = _ok(diamond, "why", "t").stdout
    line = next(l for l in text.splitlines() if "failed (d)" in l)
    assert "dependent" not in line and "-1" not in line, text
    assert line.strip().startswith("-> 1 failed (d)"), line
