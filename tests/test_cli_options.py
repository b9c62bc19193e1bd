"""What the command line does with what it is given and where its output goes: a reader that
leaves (`| head -1`), empty or missing paths, option values checked on every path (the no-op
fast path of planner/entry.py too), pairs of options that exclude each other, a recipe name
that is several nodes, and summaries that say what happened.

Small `shell` sets from tests/support/project.py, built for real; the CLI runs as a
subprocess (`python -m planner.cli`, or bin/planner where the fast path is meant).
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.progress import PlainProgress, make_progress
from tests.support.project import Project
from tests.support.registry import registry  # noqa: F401  (session fixture)

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap")

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "planner.cli"]
ENTRY = [sys.executable, str(REPO / "bin" / "planner")]  # the installed command, fast path first


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PLANNER_STORE", "PLANNER_SUBSTITUTERS", "PLANNER_TRUSTED_KEYS", "PLANNER_SIGNING_KEY",
                        "PLANNER_EXECUTOR", "PLANNER_PROGRESS")}
    env.update(extra or {})
    return env


def run(proj: Project, *args: str, cmd: list[str] = CLI, env: dict | None = None, cwd: Path | None = None,
        globals_: bool = True) -> subprocess.CompletedProcess:
    pre = ["--root", str(proj.root), "--store", str(proj.store)] if globals_ else []
    return subprocess.run([*cmd, *pre, *args], capture_output=True, text=True, env=_env(env),
                          cwd=cwd or proj.root, timeout=300)


def run_closed(proj: Project, *args: str, closed: str, cmd: list[str] = CLI) -> tuple[int, str, str]:
    """Run with stdout, stderr or both going to a pipe whose reader has already gone: the
    moment `head -1` has left, made certain. Returns (status, stdout, stderr) of what is open."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([*cmd, "--root", str(proj.root), "--store", str(proj.store), *args],
                           stdout=w if closed in ("stdout", "both") else subprocess.PIPE,
                           stderr=w if closed in ("stderr", "both") else subprocess.PIPE,
                           env=_env(), cwd=proj.root, timeout=300)
    finally:
        os.close(w)
    return p.returncode, (p.stdout or b"").decode(), (p.stderr or b"").decode()


def one_error(res: subprocess.CompletedProcess) -> str:
    lines = [l for l in res.stderr.splitlines() if l.strip() and not l.startswith("planner: warning: ")]
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert lines[0].startswith("planner: error: "), res.stderr
    return lines[0]


def usage_error(res: subprocess.CompletedProcess) -> str:
    """The refusal of options that go together wrongly (as `lock --update` with `--check`): one
    line, exit status 2, as click's usage errors (whose usage block is not printed)."""
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    (line,) = [l for l in res.stderr.splitlines() if l.strip()]
    assert line.startswith("planner: error: ") and "--help` lists what it takes" in line, line
    return line


@pytest.fixture
def pair(tmp_path: Path) -> Project:
    proj = Project.empty(tmp_path, target="b")
    proj.recipe("a")
    proj.recipe("b", deps=["a"])
    proj.lock()
    return proj


@pytest.fixture
def built(pair: Project) -> Project:
    res = run(pair, "realise", "t")
    assert res.returncode == 0, res.stderr
    return pair


def _outputs(proj: Project) -> list[str]:
    return sorted(p.name.split("-", 1)[1] for p in proj.store.glob("*-*-1.0"))


# -- 1. a reader that leaves ----------------------------------------------------------------

def test_progress_to_a_closed_stderr_never_fails_the_build(pair: Project) -> None:
    """`planner realise --progress=plain 2>&1 | head -1`: the build goes on without its progress."""
    rc, out, _ = run_closed(pair, "realise", "t", "--progress=plain", closed="stderr")
    assert rc == 0, out
    assert out.strip().endswith("-b-1.0") and _outputs(pair) == ["a-1.0", "b-1.0"]
    rc, _, _ = run_closed(pair, "realise", "t", "--progress=plain", closed="both")  # (a no-op now)
    assert rc == 0


def test_a_closed_stdout_after_a_build_is_quiet_and_the_status_is_the_builds(pair: Project) -> None:
    """`planner realise | true`: the build completes, and nothing is said of the pipe."""
    rc, _, err = run_closed(pair, "realise", "t", "--progress=plain", closed="stdout")
    assert rc == 0 and "error" not in err and "finished: 2 built" in err, err
    assert _outputs(pair) == ["a-1.0", "b-1.0"]


@pytest.mark.parametrize("args", [
    ["store", "size", "t"], ["store", "roots"], ["show", "b"], ["plan", "t"], ["realise", "t"], ["realise", "t", "--json"],
    ["why", "t"], ["store", "verify"], ["lock", "t", "--check"], ["log", "b"],
], ids=" ".join)
def test_a_closed_stdout_is_quiet_as_plan_into_head_is(built: Project, args: list[str]) -> None:
    """`store size | head -1`, …: as `plan | head`, nothing said of the pipe and the exit
    status the command has without it."""
    rc, _, err = run_closed(built, *args, closed="stdout")
    assert rc == 0 and "error" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("args", [["realise", "t"], ["store", "verify"], ["hash", "recipes"]], ids=" ".join)
def test_a_closed_stdout_is_quiet_on_the_fast_paths_too(built: Project, args: list[str]) -> None:
    """planner/entry.py answers these before the command line is imported: quiet as well."""
    rc, _, err = run_closed(built, *args, closed="stdout", cmd=ENTRY)
    assert rc == 0 and err == "", err


def test_a_failed_build_still_fails_when_nobody_reads_its_output(pair: Project) -> None:
    pair.recipe("b", deps=["a"], script="exit 3")
    for closed in ("stdout", "stderr", "both"):
        rc, out, err = run_closed(pair, "realise", "t", "--progress=plain", closed=closed)
        assert rc == 1, (closed, out, err)
    assert _outputs(pair) == ["a-1.0"]


class _GoneStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")


def test_plain_progress_stops_writing_once_its_stream_is_gone() -> None:
    stream = _GoneStream()
    progress = PlainProgress(stream)
    progress("plan", {"total": 2, "todo": 2, "cached": []})
    for node in ("a", "b"):
        progress("start", node)
        progress("done", {"node": node, "status": "built", "seconds": 0.0})
    progress("close", None)
    assert stream.writes == 1


class _GoneTerminal(_GoneStream):
    def isatty(self) -> bool:
        return True


def test_rich_progress_stops_without_ending_the_process() -> None:
    """rich's own answer to EPIPE points stdout at /dev/null and raises SystemExit: the build's
    result would go with its progress."""
    progress = make_progress("rich", stream=_GoneTerminal())
    progress("plan", {"total": 2, "todo": 2, "cached": []})
    progress("start", "a")
    progress("log", "a line")
    progress("failed", {"node": "a", "error": "x"})
    progress("close", None)


# -- 2. empty and missing paths -------------------------------------------------------------

@pytest.mark.parametrize("args", [["--store=", "plan", "t"], ["plan", "t", "--store="], ["realise", "t", "--store="],
                                  ["--root=", "plan", "t"], ["plan", "--root="]])
def test_an_empty_store_or_root_is_refused_not_the_current_folder(pair: Project, args: list[str]) -> None:
    res = run(pair, *args, globals_=False)
    line = one_error(res)
    option = "--store" if any(a.startswith("--store") for a in args) else "--root"
    assert f"{option} is empty" in line, line
    assert sorted(p.name for p in pair.root.iterdir()) == ["lockfiles", "recipes"]  # no store made here


def test_a_store_path_with_a_newline_is_refused(pair: Project, tmp_path: Path) -> None:
    """Every output path under it would print on two lines (`out=$(planner realise | head -1)`)."""
    odd = tmp_path / "a\nb"
    for args in (["--store", str(odd), "realise", "t"], ["realise", "t", "--store", str(odd)]):
        line = one_error(run(pair, *args, globals_=False))
        assert "holds a control character" in line, line
    assert not odd.exists()
    res = subprocess.run([*CLI, "realise", "t"], capture_output=True, text=True,
                         env=_env({"PLANNER_STORE": str(odd)}), cwd=pair.root, timeout=300)
    assert res.returncode != 0 and "holds a control character" in res.stderr, res.stderr


def test_an_empty_planner_store_variable_is_the_default_store(pair: Project) -> None:
    res = subprocess.run([*CLI, "realise", "t"], capture_output=True, text=True, env=_env({"PLANNER_STORE": ""}),
                         cwd=pair.root, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(str(pair.root / "store") + "/")


def test_a_root_that_does_not_exist_or_is_no_project_is_said_so(pair: Project, tmp_path: Path) -> None:
    for args in (["plan"], ["plan", "t"], ["realise"], ["lock"]):
        line = one_error(run(pair, "--root", str(tmp_path / "nonexist"), *args, globals_=False))
        assert f"--root {tmp_path / 'nonexist'}: no such folder" in line and "pass --root" not in line, line
    (tmp_path / "empty").mkdir()
    line = one_error(run(pair, "--root", str(tmp_path / "empty"), "plan", globals_=False))
    assert f"--root {tmp_path / 'empty'}: no recipes/ folder" in line and "pass --root" not in line, line


# -- 3. option values, checked on every path --------------------------------------------------

_KEY = "k-1:" + base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize("cmd", [ENTRY, CLI], ids=["entry", "cli"])
@pytest.mark.parametrize("args, env, named", [
    (["--substituter", "http://x"], {}, "--substituter"),
    (["--substituter=oci://h/BAD"], {}, "--substituter oci://h/BAD"),
    (["--trusted-key", "bad"], {}, "--trusted-key"),
    ([], {"PLANNER_TRUSTED_KEYS": "bad"}, "PLANNER_TRUSTED_KEYS"),
    ([], {"PLANNER_SUBSTITUTERS": "http://x"}, "PLANNER_SUBSTITUTERS"),
    (["--cache-to", "oci://127.0.0.1:1/c", "--signing-key", "/nonexist"], {}, "--signing-key /nonexist"),
    (["--cache-to", "http://x", "--signing-key", "/nonexist"], {}, "--cache-to"),
], ids=["substituter", "repository", "trusted-key", "trusted-env", "substituters-env", "signing-key", "cache-to"])
def test_cache_options_are_checked_on_a_no_op_too(built: Project, cmd: list[str], args: list[str], env: dict,
                                                   named: str) -> None:
    line = one_error(run(built, "realise", "t", *args, cmd=cmd, env=env))
    assert line.startswith(f"planner: error: {named}: "), line


@pytest.mark.parametrize("cmd", [ENTRY, CLI], ids=["entry", "cli"])
def test_good_cache_options_keep_the_no_op(built: Project, cmd: list[str]) -> None:
    first = run(built, "realise", "t")
    res = run(built, "realise", "t", "--substituter", "oci://127.0.0.1:1/c", "--trusted-key", _KEY, cmd=cmd)
    assert res.returncode == 0 and res.stdout == first.stdout and "built" not in res.stderr, res.stderr


@pytest.mark.parametrize("cmd", [ENTRY, CLI], ids=["entry", "cli"])
def test_a_signing_key_without_a_cache_to_push_to_is_refused(built: Project, cmd: list[str]) -> None:
    line = usage_error(run(built, "realise", "t", "--signing-key", "/nonexist", cmd=cmd))
    assert "--signing-key" in line and "--cache-to" in line, line
    # PLANNER_SIGNING_KEY is shared with `store push` and the workers: alone, it is no mistake.
    assert run(built, "realise", "t", cmd=cmd, env={"PLANNER_SIGNING_KEY": "/nonexist"}).returncode == 0


def test_options_that_are_alternatives_are_refused_together(built: Project) -> None:
    for cmd in (ENTRY, CLI):
        line = usage_error(run(built, "realise", "t", "--check", "--check-targets", cmd=cmd))
        assert "--check" in line and "--check-targets" in line, line
    for fmt in ("dot", "svg", "text"):
        line = usage_error(run(built, "plan", "t", "--json", "--format", fmt))
        assert "--json" in line and "--format" in line, line
    assert run(built, "plan", "t", "--json").returncode == 0
    assert run(built, "plan", "t", "--format", "dot").returncode == 0


# -- 5. a recipe name that is several nodes -------------------------------------------------

def test_log_of_a_name_with_several_variants_lists_them(tmp_path: Path) -> None:
    proj = Project.empty(tmp_path, target="top")
    set_toml = proj.folder / "set.toml"
    set_toml.write_text(set_toml.read_text() + '\n[cuda]\nwide = ["sm_90a", "sm_100a"]\nsmall = ["sm_100a"]\n')
    proj.recipe("base", script="echo built-base; echo base > $out/base.txt")
    proj.recipe("kern", deps=["base"], script="echo built-kern; echo k > $out/kern.txt", extra='axes = ["cuda"]')
    proj.recipe("top", deps=["kern"])
    proj.lock()
    assert run(proj, "realise", "t").returncode == 0
    ids = ["kern[sm_100a]", "kern[sm_90a+sm_100a]"]
    line = one_error(run(proj, "log", "kern", "--set", "t"))
    assert "'kern' names 2 nodes of set 't'" in line and all(i in line for i in ids), line
    assert "names 2 nodes" in one_error(run(proj, "log", "kern"))
    for i in ids:  # by id, each its own log
        res = run(proj, "log", i)
        assert res.returncode == 0 and "built-kern" in res.stdout, res.stderr
    # A name that is one node stays enough; `show` prints every node a name is, each by its id.
    res = run(proj, "log", "base")
    assert res.returncode == 0 and "built-base" in res.stdout, res.stderr
    assert run(proj, "show", "kern").stdout.count("# kern[") == 2
    # `diff` likewise: a name of several nodes is not resolved to the first the runs list.
    proj.recipe("kern", deps=["base"], script="echo built-kern2; echo k > $out/kern.txt", extra='axes = ["cuda"]')
    assert run(proj, "realise", "t").returncode == 0
    line = one_error(run(proj, "diff", "kern"))
    assert "'kern' names 2 nodes" in line and "planner diff 'kern[sm_100a]'" in line, line
    for i in ids:
        res = run(proj, "diff", i)
        assert res.returncode == 0 and "built-kern2" in res.stdout, res.stdout + res.stderr
    assert run(proj, "diff", "base").returncode == 0


# -- 6. summaries that say what happened ----------------------------------------------------

def test_lock_says_an_unchanged_lockfile_is_up_to_date(pair: Project) -> None:
    before = pair.lockfile.stat()
    res = run(pair, "lock", "t")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "lockfiles/t.lock: up to date, not rewritten (0 inputs, 0 changed)", res.stdout
    assert pair.lockfile.stat().st_mtime_ns == before.st_mtime_ns
    pair.lockfile.write_text(pair.lockfile.read_text() + "\n")
    res = run(pair, "lock", "t")
    assert res.stdout.strip() == "wrote lockfiles/t.lock (0 inputs, 0 changed)", res.stdout


def test_store_push_progress_counts_entries_to_push_not_builds(built: Project, registry: str,
                                                              tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    assert run(built, "keys", "generate", str(key), globals_=False).returncode == 0
    res = run(built, "store", "push", "t", "--to", f"oci://{registry}/options-cache", "--signing-key", str(key),
              "--progress", "plain")
    assert res.returncode == 0, res.stderr
    plan = [l for l in res.stderr.splitlines() if "] plan: " in l]
    assert len(plan) == 1 and "to push" in plan[0] and "build" not in plan[0], res.stderr


@pytest.mark.parametrize("argv, says", [
    (["realise", "--bogus"], "No such option '--bogus'"),
    (["bogus"], "No such command 'bogus'"),
    (["store", "gc", "--dry"], "--dry"),
    (["realise", "-j", "x"], "'x' is not a valid integer"),
])
def test_a_usage_error_is_one_line_naming_the_help(tmp_path: Path, argv: list[str], says: str) -> None:
    """click's usage errors (an unknown option or command, a bad value) are one line too, with
    exit status 2; click printed a usage block, a hint and an `Error:` line."""
    proj = Project.empty(tmp_path, target="a")
    proj.recipe("a")
    res = proj.cli(*argv, set_arg=False)
    line = usage_error(res)
    assert says in line, line
