"""The everyday command line: options anywhere, help for everything, plain progress for CI logs,
logs of failed builds, pictures, JSON schemas, one-line errors with hints, store housekeeping.

Small `shell` sets from tests/support/project.py built for real in bubblewrap; subprocesses
run `python -m planner.cli` as a user would; click's CliRunner walks the command tree.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import click
import pytest

from planner.cli import main
from tests.support.project import Project
from tests.support.registry import registry  # noqa: F401  (session fixture)

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap")

REPO = Path(__file__).resolve().parent.parent
PLAIN_LINE = re.compile(r"^\[ *\d+\.\d+s\] \S.*$")


def one_error_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("planner: error: "), stderr
    return lines[0]


def planner(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    import os

    full = dict(os.environ)
    full.pop("PLANNER_STORE", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=timeout)


@pytest.fixture
def diamond(tmp_path: Path) -> Project:
    proj = Project.diamond(tmp_path, scripts={
        "b": "echo hello-from-b\necho second-line-of-b\necho b > $out/b.txt",
        "c": "echo hello-from-c\necho c > $out/c.txt",
    })
    proj.lock()
    return proj


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in sorted(group.commands.items()):
        yield prefix + name, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + name + " ")


# -- 1. options, help, arguments ------------------------------------------------------------

def test_every_option_and_command_has_help() -> None:
    missing = []
    for name, cmd in _commands(main):
        if not (cmd.help or "").strip():
            missing.append(f"{name}: no help")
        for p in cmd.params:
            if isinstance(p, click.Option) and not (p.help or "").strip():
                missing.append(f"{name} {p.opts[0]}")
    assert not missing, missing


def test_top_level_help_lists_every_command_on_one_line() -> None:
    res = planner("--help")
    assert res.returncode == 0
    section = res.stdout.split("Commands:\n", 1)[1]
    lines = [l for l in section.splitlines() if l.strip()]
    listed = {l.split()[0]: l for l in lines}
    assert set(listed) == set(main.commands), (set(listed) ^ set(main.commands))
    assert len(lines) == len(main.commands), "a command's help wrapped onto a second line"
    for line in lines:
        assert not line.rstrip().endswith("..."), f"truncated: {line}"
    for name, cmd in _commands(main):
        if isinstance(cmd, click.Group):
            sub = planner(*name.split(), "--help")
            sub_lines = [l for l in sub.stdout.split("Commands:\n", 1)[1].splitlines() if l.strip()]
            assert len(sub_lines) == len(cmd.commands) and not any(l.endswith("...") for l in sub_lines), sub.stdout


def test_readme_lists_every_command_and_option() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("## Recipes", 1)[0]
    for name, cmd in _commands(main):
        if not isinstance(cmd, click.Group):
            assert re.search(rf"planner (store )?{re.escape(name.split()[-1])}\b", block) or name in block, name
    for opt in ("--progress", "-L", "--connect-timeout", "--dry-run", "--roots"):
        assert opt in readme, opt


def test_global_options_work_before_and_after_the_command(diamond: Project, tmp_path: Path) -> None:
    before = planner("--root", str(diamond.root), "--store", str(diamond.store), "plan", "t", "--json", cwd=tmp_path)
    after = planner("plan", "t", "--json", "--root", str(diamond.root), "--store", str(diamond.store), cwd=tmp_path)
    assert before.returncode == 0 and after.returncode == 0, after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)
    # --root after the command also moves the default store under it.
    rooted = planner("realise", "t", "--root", str(diamond.root), "--json", cwd=tmp_path)
    assert rooted.returncode == 0, rooted.stderr
    assert all(n["path"].startswith(str(diamond.root / "store")) for n in json.loads(rooted.stdout)["nodes"])
    # A mirror after a nested command is accepted (and used: the lock has nothing to fetch).
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    locked = planner("lock", "t", "--mirror", str(mirror), "--root", str(diamond.root), cwd=tmp_path)
    assert locked.returncode == 0, locked.stderr
    gc = planner("store", "gc", "--dry-run", "--root", str(diamond.root), cwd=tmp_path)
    assert gc.returncode == 0, gc.stderr


def test_set_is_optional_when_the_project_has_one(diamond: Project) -> None:
    for cmd in (["lock", "--check"], ["plan"], ["realise", "--dry-run"]):
        res = diamond.cli(*cmd, set_arg=False)
        assert res.returncode == 0, (cmd, res.stderr)
    (diamond.root / "recipes" / "other").mkdir()
    (diamond.root / "recipes" / "other" / "set.toml").write_text((diamond.folder / "set.toml").read_text())
    res = diamond.cli("plan", set_arg=False)
    assert "name a recipe set: one of other, t" in one_error_line(res.stderr)


def test_diff_one_node_against_its_previous_build(diamond: Project) -> None:
    assert diamond.cli("realise").returncode == 0
    diamond.recipe("b", deps=["a"], env={"GREETING": "hi"},
                   script="echo hello-from-b\necho second-line-of-b\necho b > $out/b.txt")
    diamond.lock()
    assert diamond.cli("realise").returncode == 0
    d = diamond.cli("diff", "b", "--set", "t")
    assert d.returncode == 0, d.stderr
    assert "env.GREETING: (none) -> hi" in d.stdout, d.stdout
    assert "root cause: environment variable GREETING of b" in d.stdout
    # `log NODE --set SET`, the same shape as `show` and `diff`.
    log = diamond.cli("log", "b", "--set", "t")
    assert log.returncode == 0 and "hello-from-b" in log.stdout
    unchanged = diamond.cli("diff", "c")
    assert unchanged.returncode == 0 and "0 field(s) differ" in unchanged.stdout


# -- 2. progress and logs -------------------------------------------------------------------

def test_plain_progress_lines_counter_durations_and_cached(diamond: Project) -> None:
    res = diamond.cli("realise", "-j", "2", "--progress=plain")
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.startswith("[")]
    for l in lines:
        assert PLAIN_LINE.match(l), l
        # Never two events on one line (parallel builds write whole lines).
        assert len(re.findall(r"\[ *\d+\.\d+s\]", l)) == 1, l
    for nid in "abcd":
        assert any(re.search(rf"\] START  {nid}$", l) for l in lines), res.stderr
        assert any(re.search(rf"\] DONE   {nid} \[\d/4\] built in \d+\.\ds$", l) for l in lines), res.stderr
    counters = sorted(int(m.group(1)) for l in lines if (m := re.search(r" \[(\d)/4\] ", l)))
    assert counters == [1, 2, 3, 4]
    assert any("finished: 4 built in" in l for l in lines)
    # Change only d: a, b, c are CACHED (valid, or below a valid output), d builds.
    diamond.recipe("d", deps=["b", "c"], env={"X": "1"})
    diamond.lock()
    again = diamond.cli("realise", "--progress", "plain")
    assert again.returncode == 0, again.stderr
    cached = {l.split("CACHED ", 1)[1] for l in again.stderr.splitlines() if "] CACHED " in l}
    assert cached == {"a", "b", "c"}, again.stderr
    assert re.search(r"\] DONE   d \[1/1\] built in", again.stderr)


def test_print_build_logs_prefixes_each_line_with_its_node(diamond: Project) -> None:
    res = diamond.cli("realise", "-j", "2", "--progress=plain", "-L")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert "b> hello-from-b" in lines and "b> second-line-of-b" in lines and "c> hello-from-c" in lines, res.stderr
    # A node's output comes between its start and its end line.
    start = next(i for i, l in enumerate(lines) if l.endswith("START  b"))
    end = next(i for i, l in enumerate(lines) if "DONE   b " in l)
    assert start < lines.index("b> hello-from-b") < end


def test_failed_build_has_a_log_and_why_names_it_failed(tmp_path: Path) -> None:
    proj = Project.diamond(tmp_path, scripts={"b": "echo about-to-fail\necho boom >&2\nexit 3"})
    proj.lock()
    res = proj.cli("realise", "-j", "1", "--progress=plain")
    assert res.returncode != 0
    assert re.search(r"\] FAILED b \[\d/\d\] after \d+\.\ds: ", res.stderr), res.stderr
    assert "planner log 'b'" in res.stderr  # the hint
    log = proj.cli("log", "b")
    assert log.returncode == 0, log.stderr
    assert "about-to-fail" in log.stdout and "boom" in log.stdout
    why = proj.cli("why", "t", "--json")
    assert why.returncode == 0, why.stderr
    doc = why.json()
    assert [f["node"] for f in doc["failures"]] == ["b"] and "b" not in doc["built"]
    assert "status 3" in doc["failures"][0]["reason"] or doc["failures"][0]["reason"]
    text = proj.cli("why", "t")
    assert re.search(r"^FAILED b: ", text.stdout, re.M), text.stdout
    assert ", 1 failed," in text.stdout
    # The first realise: b failed, a was built; the cause line counts them apart.
    assert "-> rebuilt a; 1 failed (b)" in text.stdout, text.stdout
    # d was skipped (b failed): its log is not "reused or fetched", it was skipped.
    skipped = proj.cli("log", "d")
    assert skipped.returncode != 0 and "skipped" in skipped.stderr and "reused" not in skipped.stderr, skipped.stderr


def test_why_after_a_no_op_points_at_the_last_rebuild(tmp_path: Path) -> None:
    """A realise that rebuilt nothing (past the no-op cache: it records a run) is what `why`
    explains by default; it then names the last run that rebuilt something."""
    proj = Project.diamond(tmp_path)
    proj.lock()
    assert proj.cli("realise").returncode == 0
    proj.recipe("d", deps=["b", "c"], env={"X": "1"})
    proj.lock()
    rebuilt = proj.cli("realise", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    (proj.folder / "d.toml").write_text((proj.folder / "d.toml").read_text())  # same bytes: the no-op cache misses
    noop = proj.cli("realise", "--json")
    assert noop.returncode == 0 and {n["action"] for n in noop.json()["nodes"]} == {"reused"}, noop.stdout
    why = proj.cli("why", "t", "--json").json()
    assert why["built"] == [] and why["last_rebuild"] == rebuilt.json()["run"], why
    text = proj.cli("why", "t").stdout
    assert f"the last run that rebuilt something is run {why['last_rebuild']}: `planner why t --run " in text, text
    assert "root causes:" in proj.cli("why", "t", "--run", str(why["last_rebuild"])).stdout


# -- 3. the picture -------------------------------------------------------------------------

def _svg(stdout: str) -> ET.Element:
    return ET.fromstring(stdout[stdout.index("<svg"):])


def test_plan_svg_top_to_bottom_with_legend_platforms_and_dashed_requires(tmp_path: Path) -> None:
    proj = Project.empty(tmp_path, target="app")
    (proj.folder / "set.toml").write_text('target = "app"\nsource-date-epoch = 1700000000\nbuild-root = "host"\n'
                                          'platforms = ["linux/amd64", "linux/arm64"]\n')
    proj.recipe("lib", extra='axes = ["platform"]')
    proj.recipe("tool")
    proj.recipe("app", deps=["lib"], extra='requires = ["tool"]')
    proj.lock()
    dot = proj.cli("plan", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert "rankdir=TB" in dot.stdout
    assert 'label="linux/amd64"' in dot.stdout and 'label="linux/arm64"' in dot.stdout
    assert re.search(r'"tool" -> "app\[linux/amd64\]" \[style=dashed', dot.stdout), dot.stdout
    svg = proj.cli("plan", "--format", "svg")
    assert svg.returncode == 0, svg.stderr
    root = _svg(svg.stdout)
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for word in ("legend", "build: not in the store", "reuse: valid output in the store",
                 "blocked: an input is unlocked", "linux/amd64", "linux/arm64", "lib", "app"):
        assert word in texts, word
    dashed = [p for p in root.iter("{http://www.w3.org/2000/svg}path") if p.get("stroke-dasharray")]
    assert dashed, "no dashed run-time edge"


def test_plan_narrows_to_a_platform_and_variant_as_realise_does(tmp_path: Path) -> None:
    """`plan --platform/--variant` shows what `realise` with the same options builds: that
    platform's and variant's nodes, with the keys they have in the whole set's plan."""
    store = str(tmp_path / "store")
    whole = json.loads(planner("--store", store, "plan", "demo", "--json").stdout)
    keys = {n["id"]: n["key"] for n in whole["nodes"]}
    res = planner("--store", store, "plan", "demo", "--json", "--platform", "linux/arm64", "--variant", "sm100a")
    assert res.returncode == 0, res.stderr
    narrowed = json.loads(res.stdout)["nodes"]
    assert narrowed and len(narrowed) < len(whole["nodes"])
    for n in narrowed:
        assert n["platform"] in (None, "linux/arm64"), n["id"]
        assert "sm_90a" not in n["id"], n["id"]  # the default variant's arch list is not planned
        if "image" not in n["id"]:  # an image covers the narrowed set: its key is the narrowed image's
            assert keys[n["id"]] == n["key"], n["id"]
    dry = planner("--store", store, "realise", "demo", "--dry-run", "--platform", "linux/arm64", "--variant", "sm100a")
    assert dry.returncode == 0, dry.stderr
    shown = {line[len("build "):].rsplit("  (", 1)[0] for line in dry.stdout.splitlines() + dry.stderr.splitlines()
             if line.startswith("build ")}
    assert shown and shown <= {n["id"] for n in narrowed}
    bad = planner("--store", store, "plan", "demo", "--platform", "linux/s390x")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "linux/s390x is not one of the set's platforms" in bad.stderr


def test_slime_plan_svg_is_a_readable_shape(tmp_path: Path) -> None:
    res = planner("--store", str(tmp_path / "store"), "plan", "slime", "--format", "svg")
    assert res.returncode == 0, res.stderr
    root = _svg(res.stdout)
    width, height = (float(root.get(k).rstrip("pt")) for k in ("width", "height"))
    nodes = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"]
    assert len(nodes) >= 37
    # Not one long row: the slime plan (37 nodes, 20 of them independent) must wrap.
    assert width / height < 3, (width, height)
    assert width < 2500, width


# -- 4. machine output ----------------------------------------------------------------------

def test_json_outputs_carry_a_schema(diamond: Project) -> None:
    plan = diamond.cli("plan", "--json")
    assert plan.json()["schema"] == 1
    assert set(plan.json()) >= {"critical_path", "generations", "warnings", "nodes"}
    assert plan.json()["generations"] == [["a"], ["b", "c"], ["d"]]
    first = diamond.cli("realise", "--json")
    noop = diamond.cli("realise", "--json")
    assert first.json()["schema"] == noop.json()["schema"] == 1
    assert set(noop.json()) <= set(first.json())
    # In why --json, file and line are separate fields.
    diamond.recipe("c", deps=["a"], env={"Y": "2"}, script="echo c > $out/c.txt")
    diamond.lock()
    assert diamond.cli("realise").returncode == 0
    why = diamond.cli("why", "t", "--json").json()
    assert why["schema"] == 1
    cause = why["causes"][0]["cause"]
    assert cause["file"] == "recipes/t/c.toml" and isinstance(cause["line"], int)
    lines = (diamond.root / cause["file"]).read_text().splitlines()
    assert "Y" in lines[cause["line"] - 1] or "env" in lines[cause["line"] - 1]
    for doc in (REPO / "docs" / "json.md",):
        assert "schema" in doc.read_text()


# -- 5. errors ------------------------------------------------------------------------------

def test_a_dry_run_makes_no_store(diamond: Project, tmp_path: Path) -> None:
    """As `nix build --dry-run`: a store that does not exist yet is an empty one, and stays absent."""
    fresh = tmp_path / "fresh-store"
    dry = planner("--root", str(diamond.root), "--store", str(fresh), "realise", "t", "--dry-run")
    assert dry.returncode == 0 and "to build, 0 valid" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    why = planner("--root", str(diamond.root), "--store", str(fresh), "why", "t", "--dry-run")
    assert why.returncode == 0 and "first recorded realise" in why.stdout, why.stdout + why.stderr
    assert not fresh.exists()


def test_store_that_is_a_file_or_missing(diamond: Project, tmp_path: Path) -> None:
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    for cmd in (["plan", "t"], ["realise", "t"], ["why", "t"], ["store", "gc"], ["log", "a"], ["lock", "t"],
                ["export", "t", str(tmp_path / "x.tar")], ["push", "t", "127.0.0.1:1/x"], ["store", "size"]):
        res = planner("--root", str(diamond.root), "--store", str(afile), *cmd)
        assert res.returncode != 0
        assert "is not a folder" in one_error_line(res.stderr), cmd
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    for cmd in (["realise", "t", "--dry-run"], ["realise", "t"], ["lock", "t"]):
        res = planner("--root", str(diamond.root), "--store", str(dangling), *cmd)
        assert res.returncode != 0
        line = one_error_line(res.stderr)
        assert "symbolic link" in line and "does not exist" in line, (cmd, line)
        assert not (tmp_path / "gone").exists()
    missing = tmp_path / "typo"
    for cmd in (["why", "t"], ["store", "gc"], ["store", "verify"], ["log", "a"], ["diff", "a"]):
        res = planner("--root", str(diamond.root), "--store", str(missing), *cmd)
        assert res.returncode != 0
        assert "no store here" in one_error_line(res.stderr), cmd
        assert not missing.exists()
    plan = planner("--root", str(diamond.root), "--store", str(missing), "plan", "t")
    assert plan.returncode == 0 and f"no store at {missing}" in plan.stderr


def test_unknown_names_get_did_you_mean(diamond: Project) -> None:
    res = diamond.cli("plan", "tt", set_arg=False)
    assert "no recipe set 'tt' (did you mean 't'? one of: t)" in one_error_line(res.stderr)
    res = diamond.cli("plan", "--target", "dd")
    assert "did you mean 'd'?" in one_error_line(res.stderr)
    res = diamond.cli("show", "bb")
    assert "did you mean 'b'?" in one_error_line(res.stderr) and "one of: a, b, c, d" in res.stderr
    diamond.write_raw("b", (diamond.folder / "b.toml").read_text().replace("[build]", "[build]\nsript = 'x'"))
    res = diamond.cli("plan")
    line = one_error_line(res.stderr)
    assert "recipes/t/b.toml" in line and "unknown key (did you mean 'script'?" in line, line


def test_stale_lock_warned_by_plan_and_realise_hints_lock(diamond: Project) -> None:
    diamond.source_file("src/a/data.txt", "changed\n")
    diamond.recipe("a", source="src/a", script="cat data.txt > $out/a.txt", env={"NEW": "1"})
    plan = diamond.cli("plan")
    assert plan.returncode == 0
    assert "planner: warning: lockfiles/t.lock is stale" in plan.stderr and "`planner lock t`" in plan.stderr
    real = diamond.cli("realise")
    assert real.returncode != 0
    assert "`planner lock t` re-pins it" in one_error_line(real.stderr)


@pytest.mark.parametrize("args", [("demo", "--platform", "linux/arm64"), ("demo", "--variant", "sm100a"),
                                  ("slime", "--target", "int4-qat", "--platform", "linux/amd64", "--variant", "sm100a")])
def test_narrowing_to_a_platform_or_variant_keeps_an_up_to_date_lock_up_to_date(args, tmp_path: Path) -> None:
    """The lock pins every platform's files: a plan narrowed to one platform checks it against the
    whole set (it called the committed locks stale, naming one input's "now X, locked X")."""
    proc = planner("plan", *args, env={"PLANNER_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "stale" not in proc.stderr, proc.stderr


def test_executor_at_a_dead_port_is_one_line_within_the_timeout(diamond: Project, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        key = tmp_path / "k.key"
        assert planner("keys", "generate", str(key)).returncode == 0
        res = diamond.cli("realise", "--executor", f"dask://127.0.0.1:{port}", "--connect-timeout", "2",
                          "--cache-to", f"oci://127.0.0.1:{port}/c", "--signing-key", str(key), timeout=90)
    line = one_error_line(res.stderr)
    assert f"dask://127.0.0.1:{port}" in line and "within 2 s" in line and "--connect-timeout" in line, line


# -- 6. store housekeeping ------------------------------------------------------------------

def test_gc_dry_run_sizes_and_roots(diamond: Project) -> None:
    r1 = diamond.cli("realise", "--json")
    assert r1.returncode == 0
    old_d = Path(next(n["path"] for n in r1.json()["nodes"] if n["id"] == "d")).name
    diamond.recipe("d", deps=["b", "c"], env={"X": "1"})
    diamond.lock()
    assert diamond.cli("realise").returncode == 0
    dry = diamond.cli("store", "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert re.search(rf"^would remove {re.escape(old_d)}  \d+ B$", dry.stdout, re.M), dry.stdout
    assert re.search(r"^1 entry would be removed, \d+ B$", dry.stdout, re.M), dry.stdout
    assert (diamond.store / old_d).is_dir()  # nothing removed
    roots = diamond.cli("store", "roots")
    assert roots.returncode == 0 and re.search(r"^set:.*:t -> .*closure \d", roots.stdout, re.M), roots.stdout
    assert diamond.cli("show", "--roots").stdout == roots.stdout
    size = diamond.cli("store", "size", "--json")
    nodes = {n["id"]: n for n in size.json()["nodes"]}
    assert size.json()["schema"] == 1
    assert nodes["a"]["closure"] == nodes["a"]["size"] > 0
    assert nodes["d"]["closure"] == sum(nodes[x]["size"] for x in "abcd")
    assert nodes["d"]["closure_paths"] == 4
    text = diamond.cli("store", "size")
    assert "closure of d:" in text.stdout and "in 4 outputs" in text.stdout
    gc = diamond.cli("store", "gc")
    assert f"removed {old_d}" in gc.stdout and not (diamond.store / old_d).exists()


def test_store_push_progress_and_registry_errors(diamond: Project, registry: str, tmp_path: Path) -> None:
    assert diamond.cli("realise").returncode == 0
    key = tmp_path / "k.key"
    assert planner("keys", "generate", str(key)).returncode == 0
    push = diamond.cli("store", "push", "t", "--to", f"oci://{registry}/cli-cache", "--signing-key", str(key),
                       "--progress=plain")
    assert push.returncode == 0, push.stderr
    ends = [l for l in push.stderr.splitlines() if re.search(r"\] PUSHED ", l)]
    assert len(ends) >= 4 and all(PLAIN_LINE.match(l) for l in ends), push.stderr
    assert re.search(r"\[\d+/\d+\] pushed in", ends[-1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        cases = {
            f"oci://127.0.0.1:{dead}/c": "connection refused",
            "oci://no-such-host.invalid/c": "name not resolved (DNS)",
            f"oci://{registry}/c?plain-http=0": "TLS handshake failed",  # TLS spoken to a plain-HTTP registry
        }
        for url, words in cases.items():
            res = diamond.cli("store", "push", "t", "--to", url, "--signing-key", str(key), "--progress=plain")
            assert res.returncode != 0
            errors = [l for l in res.stderr.splitlines() if l.startswith("planner: error: ")]
            assert len(errors) == 1 and words in errors[0], (url, res.stderr)
            assert "Traceback" not in res.stderr


def test_mirror_miss_keeps_each_sources_git_reason(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    res = planner("--store", str(tmp_path / "store"), "prefetch", "git+https://github.invalid/x/y.git@main",
                  "--mirror", str(mirror), cwd=tmp_path)
    assert res.returncode != 0
    line = [l for l in res.stderr.splitlines() if l.startswith("planner: error: ")]
    assert len(line) == 1 and "Traceback" not in res.stderr, res.stderr
    # The mirror's own reason (git's fatal line, not its closing advice) and the origin's.
    assert "every source failed" in line[0]
    assert f"file://{mirror}/git/github.invalid/x/y.git" in line[0] and "does not appear to be a git repository" in line[0]
    assert "https://github.invalid/x/y.git" in line[0] and "Could not resolve host" in line[0]


def test_rich_progress_runs_without_a_terminal(diamond: Project) -> None:
    res = diamond.cli("realise", "-j", "2", "--progress=rich", "-L")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "b> hello-from-b" in res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith(str(diamond.store))


def test_log_of_a_node_that_failed_before_building(tmp_path: Path) -> None:
    from tests.support.http_server import LoopbackServer
    from tests.support.project import recipe_toml

    proj = Project.empty(tmp_path, target="u")
    with LoopbackServer() as server:
        url = server.url("/payload.txt")
        server.add("/payload.txt", b"fetched once\n")
        proj.write_raw("u", recipe_toml("u", script="cat /inputs/source/* > $out/u.txt")
                       .replace("[build]", f'[source]\nkind = "url"\nurl = "{url}"\n\n[build]'))
        assert proj.cli("lock").returncode == 0
    # The server is gone and this store never fetched the input: the node fails in its fetch.
    fresh = tmp_path / "fresh-store"
    res = planner("--root", str(proj.root), "--store", str(fresh), "realise", "t", "--progress=plain", timeout=180)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert re.search(r"\] FAILED u \[1/1\] after ", res.stderr), res.stderr
    log = planner("--root", str(proj.root), "--store", str(fresh), "log", "u")
    line = one_error_line(log.stderr)
    assert "u failed before its build started" in line and "connection refused" in line, line


def test_a_retry_keeps_the_failed_attempts_log(tmp_path: Path) -> None:
    """The same build key attempted again (an automatic relaunch, say) must not erase why the
    last attempt failed: `planner log NODE --previous` prints it."""
    proj = Project.diamond(tmp_path, scripts={"b": "echo attempt-$(cat /proc/sys/kernel/random/uuid)\nexit 3"})
    proj.lock()
    assert proj.cli("realise", "-j", "1").returncode != 0
    first = proj.cli("log", "b")
    assert first.returncode == 0 and "attempt-" in first.stdout, first.stderr
    assert proj.cli("log", "b", "--previous").returncode != 0  # one attempt: nothing earlier
    assert proj.cli("realise", "-j", "1").returncode != 0
    second, previous = proj.cli("log", "b"), proj.cli("log", "b", "--previous")
    assert previous.returncode == 0, previous.stderr
    assert previous.stdout == first.stdout and second.stdout != first.stdout and "attempt-" in second.stdout
