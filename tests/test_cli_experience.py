"""The command line as a new user meets it (coming from Nix, Bazel, git): run from anywhere in a
project, typos answered with the name meant, summaries that count what happened, counts in
English, refusals before work, and --help and README that say what the commands do.

Small `shell` sets from tests/support/project.py, built for real (the host's /usr); the CLI
runs as a subprocess, from the folder a user would be in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from planner.cli import main
from tests.support.project import Project
from tests.support.registry import registry  # noqa: F401  (session fixture)

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap")

REPO = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path, module: str = "planner.cli", env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """`planner ARGS` from `cwd`, with no store or root from the environment."""
    full = dict(os.environ)
    full.pop("PLANNER_STORE", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=full,
                          timeout=timeout)


def error_line(res) -> str:
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert lines[0].startswith("planner: error: "), res.stderr
    return lines[0]


@pytest.fixture
def diamond(tmp_path: Path) -> Project:
    proj = Project.diamond(tmp_path)
    proj.lock()
    return proj


def _second_set(proj: Project, name: str = "other") -> None:
    """A second set, so SET can no longer be left out."""
    (proj.root / "recipes" / name).mkdir()
    (proj.root / "recipes" / name / "set.toml").write_text((proj.folder / "set.toml").read_text())


# -- 1. the project root is found from a folder inside it -----------------------------------

def test_commands_find_the_project_from_a_subfolder(diamond: Project) -> None:
    deep = diamond.root / "src" / "a"
    res = run("realise", "t", "--json", cwd=deep)
    assert res.returncode == 0, res.stderr
    # The default store is the found project's, not one beside the current folder.
    doc = json.loads(res.stdout)
    assert all(n["path"].startswith(str(diamond.root / "store") + "/") for n in doc["nodes"]), doc
    assert not (deep / "store").exists()
    for cmd in (["plan"], ["lock", "--check"], ["why", "t"], ["store", "verify"], ["show", "b"]):
        sub = run(*cmd, cwd=diamond.folder)
        assert sub.returncode == 0, (cmd, sub.stderr)


def test_the_noop_fast_path_agrees_from_a_subfolder(diamond: Project) -> None:
    """`planner` (planner.entry) answers a no-op before the command line is imported: from a
    folder inside the project it must give what the command line gives, not miss the project."""
    assert run("realise", "t", cwd=diamond.root).returncode == 0
    at_root = run("realise", "t", cwd=diamond.root, module="planner.entry")
    inside = run("realise", "t", cwd=diamond.folder, module="planner.entry")
    no_set = run("realise", cwd=diamond.root / "src", module="planner.entry")
    assert at_root.returncode == inside.returncode == no_set.returncode == 0, inside.stderr + no_set.stderr
    assert at_root.stdout == inside.stdout == no_set.stdout
    assert at_root.stdout.startswith(str(diamond.root / "store") + "/")


def test_an_explicit_root_is_used_as_given(diamond: Project) -> None:
    inside = diamond.folder
    res = run("--root", str(inside), "plan", "t", cwd=diamond.root)
    line = error_line(res)
    assert f"{inside}/recipes" in line and "no recipe set 't'" in line, line


def test_outside_any_project_one_line_names_the_folder(tmp_path: Path) -> None:
    empty = tmp_path / "nowhere"
    (empty / "lockfiles").mkdir(parents=True)  # a lockfile folder alone is not a project
    for cmd in (["realise", "t"], ["plan"], ["lock"], ["store", "gc"], ["why"]):
        line = error_line(run(*cmd, cwd=empty))
        assert str(empty) in line and "--root" in line, (cmd, line)
    # Commands that need no project still run anywhere.
    (empty / "f").write_text("x")
    assert run("hash", "f", cwd=empty).returncode == 0
    assert run("keys", "generate", "k", cwd=empty).returncode == 0


def test_a_set_named_recipes_does_not_make_a_project(diamond: Project) -> None:
    """recipes/recipes/ is a set, not a project root: from inside recipes/ the project above is meant."""
    (diamond.root / "recipes" / "recipes").mkdir()
    (diamond.root / "recipes" / "recipes" / "set.toml").write_text((diamond.folder / "set.toml").read_text())
    res = run("plan", "t", "--json", cwd=diamond.root / "recipes")
    assert res.returncode == 0, res.stderr


# -- 2. did you mean, wherever a name comes from the command line ---------------------------

@pytest.mark.parametrize("cmd", [
    ["why", "tt"], ["push", "tt", "127.0.0.1:1/x:y"], ["export", "tt", "out.tar"], ["mirror", "export", "tt", "m"],
    ["plan", "tt"], ["show", "b", "--set", "tt"], ["store", "size", "tt"],
])
def test_a_mistyped_set_gets_did_you_mean(diamond: Project, cmd: list[str]) -> None:
    _second_set(diamond)
    line = error_line(run(*cmd, cwd=diamond.root))
    assert "'tt'" in line and "did you mean 't'?" in line and "one of: other, t" in line, line


def test_a_mistyped_update_name_gets_did_you_mean(diamond: Project) -> None:
    line = error_line(run("lock", "t", "--update", "a/sorce", cwd=diamond.root))
    assert "--update 'a/sorce'" in line and "did you mean 'a/source'?" in line, line


def test_a_mistyped_set_of_the_recorded_runs_gets_did_you_mean(diamond: Project) -> None:
    assert run("realise", "t", cwd=diamond.root).returncode == 0
    for cmd in (["log", "b", "--set", "tt"], ["diff", "b", "--set", "tt"]):
        line = error_line(run(*cmd, cwd=diamond.root))
        assert "'tt'" in line and "did you mean 't'?" in line, (cmd, line)


@pytest.mark.parametrize("cmd, typed, meant", [
    (["plan", "demo", "--variant", "sm10a"], "CUDA variant 'sm10a'", "'sm100a'"),
    (["realise", "demo", "--dry-run", "--platform", "linux/arm"], "platform linux/arm", "'linux/arm64'"),
    (["lock", "demo", "--check", "--variant", "sm100"], "CUDA variant 'sm100'", "'sm100a'"),
])
def test_a_mistyped_platform_or_variant_gets_did_you_mean(tmp_path: Path, cmd: list[str], typed: str,
                                                         meant: str) -> None:
    line = error_line(run("--store", str(tmp_path / "store"), *cmd, cwd=REPO, env={"PLANNER_CACHE": str(tmp_path)}))
    assert f"{typed} is not one of the set's" in line and f"did you mean {meant}" in line, line


# -- 3. the last line of a realise counts what happened -------------------------------------

def _last(res) -> str:
    return res.stderr.strip().splitlines()[-1]


def test_summary_counts_checked_nodes(diamond: Project) -> None:
    assert run("realise", "t", cwd=diamond.root).returncode == 0
    res = run("realise", "t", "--check", "--progress=plain", cwd=diamond.root)
    assert res.returncode == 0, res.stderr
    assert "finished: 4 checked in" in res.stderr
    assert _last(res) == "0 built, 0 reused, 4 checked", res.stderr


def test_summary_counts_substituted_nodes(diamond: Project, registry: str, tmp_path: Path) -> None:  # noqa: F811
    key = tmp_path / "k.sec"
    public = run("keys", "generate", str(key), cwd=tmp_path).stdout.strip()
    cache = f"oci://{registry}/experience-cache"
    assert run("realise", "t", "--cache-to", cache, "--signing-key", str(key), cwd=diamond.root).returncode == 0
    res = run("--store", str(tmp_path / "fresh"), "realise", "t", "--substituter", cache, "--trusted-key", public,
              "--progress=plain", cwd=diamond.root)
    assert res.returncode == 0, res.stderr
    finished = re.search(r"finished: (\d+) substituted", res.stderr)
    assert finished, res.stderr
    assert re.fullmatch(rf"0 built, 0 reused, {finished.group(1)} substituted", _last(res)), res.stderr


def test_summary_counts_failed_and_skipped_nodes(tmp_path: Path) -> None:
    proj = Project.diamond(tmp_path, scripts={"b": "exit 3"})
    proj.lock()
    res = run("realise", "t", "--keep-going", "-j", "1", "--progress=plain", cwd=proj.root)
    assert res.returncode != 0
    assert "2 built, 0 reused, 1 failed, 1 skipped" in res.stderr.splitlines(), res.stderr


# -- 4. counts in English, hints that name the set ------------------------------------------

def test_gc_dry_run_says_entry_in_the_singular(diamond: Project) -> None:
    assert run("realise", "t", cwd=diamond.root).returncode == 0
    diamond.recipe("d", deps=["b", "c"], env={"X": "1"})
    diamond.lock()
    assert run("realise", "t", cwd=diamond.root).returncode == 0
    dry = run("store", "gc", "--dry-run", cwd=diamond.root)
    assert re.search(r"^1 entry would be removed, \d+ B$", dry.stdout, re.M), dry.stdout
    gc = run("store", "gc", cwd=diamond.root)
    assert gc.stdout.splitlines()[-1] == "1 entry removed", gc.stdout


def test_lock_counts_one_input_in_the_singular(diamond: Project) -> None:
    res = run("lock", "t", cwd=diamond.root)
    assert res.returncode == 0 and "(1 input, 0 changed)" in res.stdout, res.stdout
    check = run("lock", "t", "--check", cwd=diamond.root)
    assert check.returncode == 0 and "(1 input)" in check.stdout, check.stdout


def test_push_counts_in_the_singular(tmp_path: Path, registry: str) -> None:  # noqa: F811
    proj = Project.empty(tmp_path, target="img")
    proj.recipe("one", script="echo one > $out/one.txt")
    proj.write_raw("img", 'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n[image]\nlayers = [["one"]]\n')
    proj.lock()
    # The second push finds the blobs and the image manifest there and puts the tag's one again.
    for i in range(2):
        res = run("push", "t", f"{registry}/experience:v1", "--plain-http", cwd=proj.root)
        assert res.returncode == 0, res.stderr
        # The realise before it shows its progress as `planner realise` does: the builds of
        # the first push, none on the second.
        built = [l for l in res.stderr.splitlines() if re.search(r"\] (START|DONE) +one\b", l)]
        assert bool(built) == (i == 0), res.stderr
        report = res.stderr.strip().splitlines()[-1]
        assert re.search(r"\d+ blobs? uploaded \(\d+ bytes?\), \d+ already there; \d+ manifests? pushed", report), report
        assert not re.search(r"\b1 (blobs|bytes|manifests)\b", report) and "(s)" not in report, report
    assert "1 manifest pushed" in report, report


def test_a_missing_lock_names_the_set_to_lock(diamond: Project) -> None:
    _second_set(diamond)
    diamond.lockfile.unlink()
    for cmd in (["plan", "t"], ["realise", "t"], ["lock", "t", "--check"], ["show", "b", "--set", "t"],
                ["why", "t", "--dry-run"], ["why-depends", "d", "a", "--set", "t"], ["export", "t", "x.tar"],
                ["push", "t", "127.0.0.1:1/x:y"], ["mirror", "export", "t", "m"],
                ["store", "pull", "t", "--from", "oci://127.0.0.1:1/c"]):
        line = error_line(run(*cmd, cwd=diamond.root))
        assert "no lockfile: run `planner lock t` first" in line, (cmd, line)


# -- 5. refusals before work; what push and export do ---------------------------------------

@pytest.mark.parametrize("cmd", [["export", "t", "{gone}/x.tar"], ["realise", "t", "--out-link", "{gone}/result"],
                                 ["keys", "generate", "{gone}/k.sec"]])
def test_a_file_into_a_missing_folder_is_refused_before_any_work(diamond: Project, tmp_path: Path,
                                                                  cmd: list[str]) -> None:
    gone = tmp_path / "no" / "such"
    line = error_line(run(*[c.format(gone=gone) for c in cmd], cwd=diamond.root))
    assert str(gone) in line and "does not exist" in line, line
    assert not (tmp_path / "no").exists()
    assert not (diamond.root / "store").exists()  # nothing realised first


@pytest.mark.parametrize("in_the_way", ["folder", "file"])
def test_an_out_link_never_replaces_a_file_or_folder(diamond: Project, in_the_way: str) -> None:
    target = diamond.root / "result"
    target.mkdir() if in_the_way == "folder" else target.write_text("notes\n")
    line = error_line(run("realise", "t", "--out-link", "result", cwd=diamond.root))
    assert str(target) in line and f"a {in_the_way} is in the way" in line, line
    assert not (diamond.root / "store").exists()  # said before any work
    assert sorted(p.name for p in diamond.root.iterdir() if p.name.startswith(".")) == []  # no temporary link
    assert in_the_way == "folder" or target.read_text() == "notes\n"


def test_an_out_link_is_rooted_by_its_normalised_path(diamond: Project) -> None:
    """`sub/../result` is `result`: once sub is gone the root still holds (gc kept nothing else)."""
    (diamond.root / "sub").mkdir()
    assert run("realise", "t", "--out-link", "sub/../result", cwd=diamond.root).returncode == 0
    roots = run("store", "roots", cwd=diamond.root).stdout
    assert f"link:{diamond.root / 'result'}" in roots and ".." not in roots, roots
    (diamond.root / "sub").rmdir()
    diamond.recipe("d", deps=["b", "c"], script="echo other > $out/d.txt")
    assert run("realise", "t", cwd=diamond.root).returncode == 0
    assert run("store", "gc", cwd=diamond.root).returncode == 0
    assert (diamond.root / "result" / "d.txt").read_text().startswith("d"), "the out-link's output was collected"


def test_gc_dry_run_during_a_realise_waits_and_agrees_with_gc(tmp_path: Path) -> None:
    """A dry run while a realise builds waits for it, as gc does, and so lists none of what the
    realise then roots (it listed the outputs the running realise had just built)."""
    import time

    proj = Project.diamond(tmp_path, scripts={"d": "sleep 4; cat /deps/b/b.txt /deps/c/c.txt > $out/d.txt"})
    proj.lock()
    full = dict(os.environ)
    full.pop("PLANNER_STORE", None)
    p = subprocess.Popen([sys.executable, "-m", "planner.cli", "realise", "t"], cwd=proj.root, env=full,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((proj.root / "store").glob("*-c-1.0")) and time.monotonic() < deadline:
            time.sleep(0.1)  # b and c built: d sleeps in its sandbox
        assert p.poll() is None, p.communicate()
        dry = run("store", "gc", "--dry-run", cwd=proj.root)
    finally:
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "waiting for the running realise to end" in dry.stderr, dry.stderr
    assert not [l for l in dry.stdout.splitlines() if l.startswith("would remove")], dry.stdout
    gc = run("store", "gc", cwd=proj.root)
    assert not [l for l in gc.stdout.splitlines() if l.startswith("removed ")], gc.stdout


def test_check_needs_a_stored_output_and_its_dry_run_says_check(diamond: Project) -> None:
    """As nix-build --check: a target not in the store has nothing to be compared with (it was
    built, exit 0); the dry run of a --check lists the stored nodes as checked, not built."""
    line = error_line(run("realise", "t", "--check-targets", cwd=diamond.root))
    assert "d is not in the store" in line and "planner realise t" in line, line
    assert not list((diamond.root / "store").glob("*-d-1.0"))
    assert run("realise", "t", cwd=diamond.root).returncode == 0
    dry = run("realise", "t", "--check", "--dry-run", cwd=diamond.root)
    assert dry.returncode == 0, dry.stderr
    steps = [l.split()[0] + " " + l.split()[1] for l in dry.stdout.splitlines() if l.startswith(("build ", "check "))]
    assert sorted(steps) == ["check a", "check b", "check c", "check d"], dry.stdout
    assert dry.stdout.splitlines()[-1] == "0 to build, 4 to check, 0 valid", dry.stdout


def test_jobs_below_zero_are_refused_and_an_incomplete_run_is_never_a_no_op(diamond: Project) -> None:
    res = run("realise", "t", "-j", "-1", cwd=diamond.root)
    assert res.returncode == 2 and "-j" in res.stderr, res.stderr
    from planner.errors import PlannerError
    from planner.realise import RealiseOptions, realise

    with pytest.raises(PlannerError, match="jobs must be 0"):
        realise(diamond.root, diamond.set, diamond.store, RealiseOptions(jobs=-1))
    ok = run("realise", "t", "--json", cwd=diamond.root)
    assert ok.returncode == 0 and json.loads(ok.stdout)["output"], ok.stderr


def test_a_no_op_says_a_node_below_a_valid_output_is_not_needed(diamond: Project) -> None:
    """After `store verify --repair` removed `a` (below valid b and c), a realise reuses what
    is valid and says of `a` what is true of it, not 'valid in the store', however answered."""
    first = json.loads(run("realise", "t", "--json", cwd=diamond.root).stdout)
    a = Path(next(n["path"] for n in first["nodes"] if n["name"] == "a"))
    os.chmod(a, 0o755)
    os.chmod(a / "a.txt", 0o644)
    (a / "a.txt").write_text("tampered\n")
    assert run("store", "verify", "--repair", cwd=diamond.root).returncode == 0
    for _ in range(2):  # planned, then answered by the no-op cache
        out = json.loads(run("realise", "t", "--json", cwd=diamond.root).stdout)
        (node,) = [n for n in out["nodes"] if n["name"] == "a"]
        assert node["reason"] == "not needed: what depends on it is valid" and not node["path"], node


def test_push_and_export_help_say_they_realise_the_set(diamond: Project) -> None:
    for cmd in ("push", "export"):
        res = run(cmd, "--help", cwd=diamond.root)
        assert "realised first" in " ".join(res.stdout.split()), res.stdout


# -- 6. --help and README say what the commands are -----------------------------------------

def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + name + " ")
        else:
            yield prefix + name, cmd


def test_help_command_prints_each_commands_help(tmp_path: Path) -> None:
    """`planner help [COMMAND]…` (as git and bazel have it) prints what `--help` prints."""
    for words in ([], ["realise"], ["store", "gc"]):
        via_help = run("help", *words, cwd=tmp_path, module="planner.entry")
        direct = run(*words, "--help", cwd=tmp_path, module="planner.entry")
        assert via_help.returncode == 0 and via_help.stdout == direct.stdout, (words, via_help.stdout, direct.stderr)
    line = error_line(run("help", "store", "gcc", cwd=tmp_path))
    assert "no command 'store gcc'" in line and "did you mean 'gc'?" in line, line


def test_optional_arguments_are_bracketed_in_usage() -> None:
    wrong = []
    for name, cmd in _commands(main):
        usage = cmd.get_usage(click.Context(cmd, info_name=name))
        for p in cmd.params:
            if isinstance(p, click.Argument) and not p.required:
                metavar = p.make_metavar(click.Context(cmd)) if p.metavar is None else p.metavar
                if not (metavar.startswith("[") and metavar in usage):
                    wrong.append(f"{name}: {metavar}")
    assert not wrong, wrong


def _synopses() -> list[str]:
    """The README's command synopsis lines, one per command form (continuations joined)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("\nGlobal options", 1)[0]
    logical: list[str] = []
    for line in (l[4:] for l in block.splitlines() if l.startswith("    ")):
        if line.startswith(" ") and logical:
            logical[-1] += " " + line.strip()
        else:
            logical.append(line)
    return [re.sub(r"^planner ", "", s) for line in logical for s in re.split(r" \| (?=planner |store )", line)]


def test_readme_synopsis_of_each_command_lists_its_options() -> None:
    synopses = _synopses()
    global_opts = {"--root", "--store", "--mirror", "--help"}
    missing = []
    for name, cmd in _commands(main):
        text = " ".join(s for s in synopses if s == name or s.startswith(name + " "))
        if not text:
            missing.append(f"{name}: no synopsis")
            continue
        for p in cmd.params:
            if isinstance(p, click.Option) and not set(p.opts) & global_opts:
                if not any(re.search(re.escape(o) + r"(?![\w-])", text) for o in p.opts + p.secondary_opts):
                    missing.append(f"{name} {p.opts[-1]}")
    assert not missing, missing


def test_readme_transcripts_match_the_demo(tmp_path: Path) -> None:
    """The README's demo transcripts count the demo's real plan and show its real digest."""
    readme = (REPO / "README.md").read_text()
    plan = run("--store", str(tmp_path / "store"), "plan", "demo", "--json", cwd=REPO)
    assert plan.returncode == 0, plan.stderr
    nodes = len(json.loads(plan.stdout)["nodes"])
    for m in re.finditer(r"plan: (\d+) nodes, (\d+) to build or fetch, (\d+) cached", readme):
        assert int(m.group(1)) == int(m.group(2)) + int(m.group(3)) == nodes, m.group(0)
    for m in re.finditer(r"^(\d+) built, (\d+) reused", readme, re.M):
        assert int(m.group(1)) + int(m.group(2)) == nodes, m.group(0)
    first = re.search(r"^    (sha256:[0-9a-f]{64})$", readme, re.M).group(1)
    console = re.findall(r"^(sha256:[0-9a-f]{64})$", readme, re.M)
    assert console and set(console) == {first}, console
    check = run("lock", "slime", "--check", cwd=REPO)
    assert check.returncode == 0, check.stderr
    said = re.search(r"lockfiles/slime\.lock: up to date for .*", readme).group(0)
    assert said == check.stdout.strip(), (said, check.stdout)
