"""The engine end to end: keys, the store under concurrency and crashes, the sandbox, early
cutoff, verify/gc, scheduling failures, plan output, and one-line errors for bad input.

Everything here uses small sets of `shell` nodes written by tests/support/project.py; no CUDA,
no network beyond loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from planner import lock as lockmod
from planner.graph import plan
from planner.host import HostInfo
from planner.recipes import load_set
from planner.store import Store
from tests.support.project import EPOCH, Project, recipe_toml

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap")

FIXED_HOST = HostInfo(platform="linux/amd64", packages={})


def keys_of(proj: Project, host: HostInfo = FIXED_HOST) -> dict[str, str]:
    rs = load_set(proj.root, proj.set)
    return {nid: n.key for nid, n in plan(rs, lockmod.read(rs.lockfile), host).nodes.items()}


def one_error_line(stderr: str) -> str:
    """The CLI's contract for bad input: exactly one line, no traceback."""
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("planner: error: "), stderr
    return lines[0]


def build_entries(store: Path) -> dict[str, list[str]]:
    """name -> basenames of valid build entries in the store."""
    st = Store(store)
    try:
        out: dict[str, list[str]] = {}
        for e in st.entries():
            if e.kind == "build":
                out.setdefault(e.name, []).append(e.path.name)
        return out
    finally:
        st.close()


@pytest.fixture
def diamond(tmp_path: Path) -> Project:
    proj = Project.diamond(tmp_path)
    proj.lock()
    return proj


# -- keys -----------------------------------------------------------------------------------

# Keys are a compatibility promise: a change to hashing or the preimage layout rebuilds every
# user's store. If this test fails, the change must be deliberate: bump PREIMAGE_FORMAT or a
# builder version and update these keys in the same commit.
PINNED_KEYS = {
    "a": "jafxqzczij3zvckd6m93g1xpfnysq378",
    "b": "8h3q4a7mw60ry4shvj16f2ypcd1jsk8m",
    "c": "lhzyljc8yvi0c1j2d4x9pc8pqkkvhin7",
    "d": "hnqz94li8s0dn9k47znax4i2icd1k45y",
}
PINNED_SOURCE_TREE = "blake3:5a973680e47d19145ac6813e2b25909adbd376e8d3f298ef644e76701f78afd8"


def test_pinned_keys_of_fixture_set(tmp_path: Path) -> None:
    # Written out in full here (not via the fixture's defaults) so the pinned keys only move
    # when hashing or the preimage layout does.
    proj = Project.empty(tmp_path, target="d")
    proj.source_file("src/a/data.txt", "alpha\n")
    proj.source_file("src/a/notes.txt", "# a comment the build ignores\n")
    proj.recipe("a", source="src/a", script="cat data.txt > $out/a.txt")
    proj.recipe("b", deps=["a"], script="echo b > $out/b.txt\ncat /deps/a/a.txt >> $out/b.txt")
    proj.recipe("c", deps=["a"], script="echo c > $out/c.txt\ncat /deps/a/a.txt >> $out/c.txt")
    proj.recipe("d", deps=["b", "c"],
                script="echo d > $out/d.txt\ncat /deps/b/b.txt >> $out/d.txt\ncat /deps/c/c.txt >> $out/d.txt")
    lock = proj.lock()
    assert lock.inputs["a/source"].pin(None).tree == PINNED_SOURCE_TREE
    assert keys_of(proj) == PINNED_KEYS
    # Keys do not depend on where the project lives.
    other = Project.empty(tmp_path / "elsewhere", target="d")
    shutil.rmtree(other.root)
    shutil.copytree(proj.root, other.root)
    other.lock()
    assert keys_of(other) == PINNED_KEYS


def test_keys_change_exactly_where_inputs_changed(diamond: Project) -> None:
    before = keys_of(diamond)
    assert len(set(before.values())) == 4

    # An env var of b: b and its dependent d change; siblings and dependencies do not.
    diamond.recipe("b", deps=["a"], env={"FLAVOUR": "salty"})
    after = keys_of(diamond)
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"b", "d"}

    # d's script: only d.
    diamond.recipe("d", deps=["b", "c"], script="echo other > $out/d.txt")
    after2 = keys_of(diamond)
    assert {n for n in after if after[n] != after2[n]} == {"d"}

    # a's source content (re-locked): everything downstream of a, i.e. all four.
    (diamond.root / "src/a/data.txt").write_text("beta\n")
    diamond.lock()
    after3 = keys_of(diamond)
    assert {n for n in after2 if after2[n] != after3[n]} == {"a", "b", "c", "d"}

    # A host package version enters preimages of sandboxed builders: all four change.
    host2 = HostInfo(platform="linux/amd64", packages={"bash": "5.2.15-2+b2"})
    after4 = keys_of(diamond, host2)
    assert all(after3[n] != after4[n] for n in after3)


# -- store under concurrency and crashes ----------------------------------------------------

def test_two_concurrent_realises_build_each_node_once(tmp_path: Path) -> None:
    slow = {n: f"sleep 0.3\necho {n} > $out/{n}.txt" for n in "abcd"}
    slow["a"] = "sleep 0.3\ncat data.txt > $out/a.txt"
    proj = Project.diamond(tmp_path, scripts=slow)
    proj.lock()
    env = dict(os.environ)
    env.pop("PLANNER_STORE", None)
    procs = [subprocess.Popen(proj.cli_argv("realise", proj.set, "--json", "-j", "2"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = [json.loads(out) for out, _ in outs]
    built = [n["id"] for r in results for n in r["nodes"] if n["action"] == "built"]
    assert sorted(built) == ["a", "b", "c", "d"], results
    # Both agree on every build key and output.
    for a, b in zip(results[0]["nodes"], results[1]["nodes"]):
        assert (a["id"], a["build_key"], a["digest"]) == (b["id"], b["build_key"], b["digest"])
    # The store's own records, which a build cannot fake: one entry per key, and the run
    # records of both processes together say "built" once per node.
    entries = build_entries(proj.store)
    assert {k: len(v) for k, v in entries.items()} == {"a": 1, "b": 1, "c": 1, "d": 1}
    st = Store(proj.store)
    runs = st.runs()
    st.close()
    assert len(runs) == 2
    assert sorted(n["id"] for _i, r in runs for n in r["nodes"] if n["action"] == "built") == ["a", "b", "c", "d"]
    dirs = [p.name for p in proj.store.iterdir() if p.name.endswith("-1.0")]
    assert len(dirs) == 4


def _procs_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd:
            pids.append(int(d.name))
    return pids


def test_sigkill_midway_leaves_no_valid_entry(tmp_path: Path) -> None:
    marker = f"2.{uuid.uuid4().int % 10**8:08d}"  # a unique sleep argument to find the process by
    proj = Project.diamond(tmp_path, scripts={"b": f"sleep {marker}\necho b > $out/b.txt"})
    proj.lock()
    env = dict(os.environ)
    env.pop("PLANNER_STORE", None)
    proc = subprocess.Popen(proj.cli_argv("realise", proj.set, "-j", "1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not _procs_with(marker):
            if time.monotonic() >= deadline:  # a liveness bound, not a speed claim
                pytest.fail("b's build never started")
            assert proc.poll() is None, "realise ended before b's build started"
            time.sleep(0.05)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The sandboxed build dies with its planner (bwrap --die-with-parent).
    deadline = time.monotonic() + 10
    while _procs_with(marker):  # neither bash -c "sleep <marker>..." nor sleep itself
        if time.monotonic() >= deadline:  # a liveness bound, not a speed claim
            pytest.fail("the build outlived the killed planner")
        time.sleep(0.05)

    verify = proj.cli("store", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    entries = build_entries(proj.store)
    assert "b" not in entries and "d" not in entries
    assert not list(proj.store.glob("*-b-1.0"))

    # The next realise completes (the sleep is ~2 s).
    res = proj.cli("realise", "--json", "-j", "2")
    assert res.returncode == 0, res.stderr
    acts = res.actions()
    assert acts["b"] == "built" and acts["d"] == "built"
    assert proj.cli("store", "verify").returncode == 0


# -- sandbox --------------------------------------------------------------------------------

def test_build_cannot_reach_loopback_server_outside(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    seen: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, addr = server.accept()
            except (socket.timeout, OSError):
                continue
            seen.append(addr)
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        proj = Project.empty(tmp_path, target="net")
        proj.recipe("net", script=f"exec 3<>/dev/tcp/127.0.0.1/{port}\necho connected > $out/x")
        proj.lock()
        res = proj.cli("realise", "-j", "1")
        assert res.returncode != 0
        assert "planner: build failed" in res.stderr
        assert not list(proj.store.glob("*-net-1.0"))
        time.sleep(0.3)
        assert seen == []
        # Control: the same server is reachable from outside the sandbox.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(seen) == 1
    finally:
        stop.set()
        t.join()
        server.close()


def test_build_cannot_read_home_or_store(tmp_path: Path) -> None:
    secret = Path.home() / f".planner-test-secret-{uuid.uuid4().hex}"
    secret.write_text("TOP-SECRET\n")
    try:
        proj = Project.empty(tmp_path, target="probe")
        store_real = tmp_path / "store"
        probes = [str(secret), str(store_real), str(store_real / "index.sqlite"), str(proj.root)]
        script = "\n".join(
            [f'if cat "{secret}" > $out/stolen 2>/dev/null; then :; else rm -f $out/stolen; fi']
            + [f'if [ -e "{p}" ]; then echo "visible {p}"; else echo "hidden {p}"; fi >> $out/probe.txt'
               for p in probes])
        proj.recipe("probe", script=script)
        proj.lock()
        res = proj.realise(jobs=1)
        out = Path(res.output)
        assert not (out / "stolen").exists()
        lines = (out / "probe.txt").read_text().splitlines()
        assert lines == [f"hidden {p}" for p in probes]
        assert "TOP-SECRET" not in "".join(p.read_text() for p in out.iterdir())
    finally:
        secret.unlink()


@pytest.mark.parametrize("sandbox", ["on", "off"])
def test_build_environment_is_cleared(tmp_path: Path, sandbox: str) -> None:
    proj = Project.empty(tmp_path, target="env")
    proj.recipe("env", script="env | sort > $out/env.txt", env={"DECLARED": "yes"})
    proj.lock()
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    res = proj.cli("realise", "--json", "-j", "1", "--sandbox", sandbox,
                   env={"PLANNER_FAKE_SECRET": secret, "AWS_SECRET_ACCESS_KEY": secret})
    assert res.returncode == 0, res.stderr
    text = (Path(res.json()["output"]) / "env.txt").read_text()
    assert secret not in text
    assert "PLANNER_FAKE_SECRET" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    env = dict(l.split("=", 1) for l in text.splitlines() if "=" in l)
    assert env["DECLARED"] == "yes"
    assert env["SOURCE_DATE_EPOCH"] == str(EPOCH)
    assert env["TZ"] == "UTC"
    assert env["PATH"] == "/usr/bin:/bin"


def test_build_sees_the_recipes_cores_not_the_machines(tmp_path: Path) -> None:
    """NIX_BUILD_CORES, nproc, sysconf and os.cpu_count() all say `[resources] cores`, whatever
    -j is and however many CPUs this machine has: the same key gives the same output."""
    script = ("{ echo $NIX_BUILD_CORES; nproc; getconf _NPROCESSORS_ONLN; nproc --all;"
              " python3 -c 'import os; print(os.cpu_count())'; } > $out/cores.txt")
    proj = Project.empty(tmp_path, target="cores")
    proj.recipe("cores", script=script, extra="[resources]\ncores = 3")
    proj.lock()
    res = proj.cli("realise", "--json", "-j", "1")
    assert res.returncode == 0, res.stderr
    assert (Path(res.json()["output"]) / "cores.txt").read_text() == "3\n3\n3\n3\n3\n"
    again = proj.cli("realise", "--json", "-j", "2", "--check")  # rebuilt with -j 2: same bytes
    assert again.returncode == 0 and [c["ok"] for c in again.json()["checks"]] == [True], again.stdout
    # The cores are part of the key, and `why` names the change.
    proj.recipe("cores", script=script, extra="[resources]\ncores = 2")
    res = proj.cli("realise", "--json", "-j", "1")
    assert (Path(res.json()["output"]) / "cores.txt").read_text() == "2\n2\n2\n2\n2\n"
    why = proj.cli("why", "t")
    assert "[resources] cores of cores: 3 -> 2" in why.stdout, why.stdout


@pytest.mark.parametrize("name", ["PYTHONPATH", "SOURCE_DATE_EPOCH", "NIX_BUILD_CORES", "PATH", "out"])
def test_declared_variable_the_planner_sets_is_refused(tmp_path: Path, name: str) -> None:
    proj = Project.empty(tmp_path, target="x")
    proj.recipe("x", script="true", env={name: "/mine"})
    for cmd in (("lock",), ("realise", "-j", "1")):
        res = proj.cli(*cmd)
        assert res.returncode != 0
        line = one_error_line(res.stderr)
        assert "recipes/t/x.toml:" in line and f"[build] env {name}:" in line and "overwritten" in line, line


# -- early cutoff ---------------------------------------------------------------------------

def test_early_cutoff(diamond: Project) -> None:
    first = diamond.cli("realise", "--json", "-j", "2")
    assert first.returncode == 0, first.stderr
    by_id1 = {n["id"]: n for n in first.json()["nodes"]}
    keys1 = keys_of(diamond)

    (diamond.root / "src/a/notes.txt").write_text("# an edited comment, still ignored\n")
    assert diamond.cli("lock", "--check").returncode != 0
    diamond.lock()
    keys2 = keys_of(diamond)
    assert all(keys1[n] != keys2[n] for n in "abcd")  # input keys all move...

    second = diamond.cli("realise", "--json", "-j", "2")
    assert second.returncode == 0, second.stderr
    by_id2 = {n["id"]: n for n in second.json()["nodes"]}
    assert by_id2["a"]["action"] == "built"
    assert by_id2["a"]["digest"] == by_id1["a"]["digest"]  # ...but a's output did not
    for n in "bcd":
        assert by_id2[n]["action"] == "reused", by_id2[n]
        assert by_id2[n]["build_key"] == by_id1[n]["build_key"]
        assert by_id2[n]["path"] == by_id1[n]["path"]
    assert "early cutoff" in by_id2["b"]["reason"]
    assert {k: len(v) for k, v in build_entries(diamond.store).items()} == {"a": 2, "b": 1, "c": 1, "d": 1}


def test_first_build_reason_is_never_built(diamond: Project) -> None:
    res = diamond.cli("realise", "--json", "-j", "1")
    assert res.returncode == 0, res.stderr
    assert {n["reason"] for n in res.json()["nodes"]} == {"never built"}


# -- verify and gc --------------------------------------------------------------------------

def test_store_verify_finds_flipped_byte(diamond: Project) -> None:
    res = diamond.cli("realise", "--json", "-j", "2")
    assert res.returncode == 0, res.stderr
    ok = diamond.cli("store", "verify")
    assert ok.returncode == 0 and "store ok" in ok.stdout
    b = Path(next(n["path"] for n in res.json()["nodes"] if n["id"] == "b"))
    f = b / "b.txt"
    os.chmod(f, 0o644)
    data = bytearray(f.read_bytes())
    data[0] ^= 0x01
    f.write_bytes(bytes(data))
    bad = diamond.cli("store", "verify")
    assert bad.returncode != 0
    assert f"corrupt: {b.name}:" in bad.stdout
    assert [l for l in bad.stdout.splitlines() if l.startswith("corrupt:")] == [l for l in bad.stdout.splitlines()
                                                                             if b.name in l]
    assert one_error_line(bad.stderr)


def test_store_gc_keeps_last_closure(diamond: Project) -> None:
    r1 = diamond.cli("realise", "--json", "-j", "2")
    assert r1.returncode == 0, r1.stderr
    old = {n["id"]: Path(n["path"]).name for n in r1.json()["nodes"]}
    # A new b (and so a new d) makes the old b and d unreachable.
    diamond.recipe("b", deps=["a"], script="echo b2 > $out/b.txt")
    diamond.lock()
    r2 = diamond.cli("realise", "--json", "-j", "2")
    assert r2.returncode == 0, r2.stderr
    new = {n["id"]: Path(n["path"]).name for n in r2.json()["nodes"]}
    assert new["a"] == old["a"] and new["c"] == old["c"]
    assert new["b"] != old["b"] and new["d"] != old["d"]

    gc = diamond.cli("store", "gc")
    assert gc.returncode == 0, gc.stderr
    removed = {l.split(" ", 1)[1] for l in gc.stdout.splitlines() if l.startswith("removed ")}
    assert {old["b"], old["d"]} <= removed
    assert not removed & set(new.values())
    for name in new.values():
        assert (diamond.store / name).is_dir()
    for name in (old["b"], old["d"]):
        assert not (diamond.store / name).exists()
    assert diamond.cli("store", "verify").returncode == 0
    # Nothing of the kept closure needs rebuilding.
    again = diamond.cli("realise", "--json", "-j", "2")
    assert again.returncode == 0
    assert set(again.actions().values()) == {"reused"}
    # A second gc finds nothing more to remove from the closure.
    gc2 = diamond.cli("store", "gc")
    assert not {l for l in gc2.stdout.splitlines() if l.startswith("removed ")} & {f"removed {n}" for n in new.values()}


# -- failures and scheduling ----------------------------------------------------------------

def _failing(tmp_path: Path) -> Project:
    proj = Project.diamond(tmp_path, scripts={
        "b": "echo building-b\necho boom-b-tail >&2\nexit 3",
        "c": "echo building-c\necho boom-c-tail >&2\nexit 4",
    })
    proj.lock()
    return proj


def _failure_lines(stderr: str) -> int:
    return sum(l.startswith("planner: build failed: ") for l in stderr.splitlines())


def test_keep_going_reports_all_failures(tmp_path: Path) -> None:
    proj = _failing(tmp_path)
    res = proj.cli("realise", "--json", "-j", "1", "--keep-going")
    assert res.returncode != 0
    acts = res.actions()
    assert acts == {"a": "built", "b": "failed", "c": "failed", "d": "skipped"}
    assert len(res.json()["failures"]) == 2
    # Plain output: both failures, each with its log tail.
    plain = proj.cli("realise", "-j", "1", "--keep-going")
    assert plain.returncode != 0
    assert _failure_lines(plain.stderr) == 2
    assert "boom-b-tail" in plain.stderr and "boom-c-tail" in plain.stderr
    assert "Traceback" not in plain.stderr


def test_without_keep_going_first_failure_stops(tmp_path: Path) -> None:
    proj = _failing(tmp_path)
    res = proj.cli("realise", "--json", "-j", "1")
    assert res.returncode != 0
    acts = res.actions()
    assert acts["a"] == "built" and acts["d"] == "skipped"
    assert sorted([acts["b"], acts["c"]]) == ["failed", "skipped"]
    assert len(res.json()["failures"]) == 1
    plain = proj.cli("realise", "-j", "1")
    assert plain.returncode != 0
    assert _failure_lines(plain.stderr) == 1
    failed = "b" if "boom-b-tail" in plain.stderr else "c"
    assert f"boom-{failed}-tail" in plain.stderr
    assert f"  | boom-{failed}-tail" in plain.stderr  # the log tail, indented
    assert "Traceback" not in plain.stderr


# -- dry run and plan -----------------------------------------------------------------------

def _would_build(stdout: str) -> list[str]:
    """Node ids from `realise --dry-run`'s `build <id>  (~Ns)` steps, in order."""
    return [l.split()[1] for l in stdout.splitlines() if l.startswith("build ")]


def test_dry_run_lists_what_would_build(diamond: Project) -> None:
    dry = diamond.cli("realise", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert _would_build(dry.stdout) == ["a", "b", "c", "d"]
    assert "4 to build, 0 valid" in dry.stdout
    assert build_entries(diamond.store) == {}
    assert not (diamond.store / "plans").exists() or not any((diamond.store / "plans").iterdir())
    # Against a store that lacks a's source, the fetch is listed before the build that needs it.
    diamond.store = diamond.store.parent / "empty-store"
    dry2 = diamond.cli("realise", "--dry-run")
    assert dry2.returncode == 0, dry2.stderr
    steps = [l.split()[0] + " " + l.split()[1] for l in dry2.stdout.splitlines() if l.startswith(("fetch ", "build "))]
    assert steps == ["fetch a/source", "build a", "build b", "build c", "build d"]


# Regression: realise.py once queried `store.realisations(closure)` with node ids instead of input
# keys, so nothing was ever "valid": --dry-run listed every node and --check compared nothing.
def test_dry_run_after_realise_lists_only_changed(diamond: Project) -> None:
    assert diamond.cli("realise", "-j", "2").returncode == 0
    diamond.recipe("c", deps=["a"], script="echo c2 > $out/c.txt")
    diamond.lock()
    dry = diamond.cli("realise", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert _would_build(dry.stdout) == ["c", "d"]
    assert "2 to build, 2 valid" in dry.stdout
    dj = diamond.cli("realise", "--dry-run", "--json")
    assert dj.returncode == 0, dj.stderr
    assert dj.actions() == {"a": "reused", "b": "reused", "c": "would-build", "d": "would-build"}


def test_realise_check_rebuilds_and_compares(diamond: Project) -> None:
    assert diamond.cli("realise", "-j", "2").returncode == 0
    res = diamond.cli("realise", "--check", "--json", "-j", "2")
    assert res.returncode == 0, res.stderr
    checks = res.json()["checks"]
    assert sorted(c["node"] for c in checks) == ["a", "b", "c", "d"]
    assert all(c["ok"] for c in checks)
    assert all(n["action"] == "checked" for n in res.json()["nodes"])
    # --check-targets: the target alone, as nix-build --check; what it is built from is reused.
    top = diamond.cli("realise", "--check-targets", "--json", "-j", "2")
    assert top.returncode == 0, top.stderr
    assert [(c["node"], c["ok"]) for c in top.json()["checks"]] == [("d", True)]
    assert top.actions() == {"a": "reused", "b": "reused", "c": "reused", "d": "checked"}


def test_plan_json_and_dot(diamond: Project) -> None:
    pj = diamond.cli("plan", "--json")
    assert pj.returncode == 0, pj.stderr
    data = json.loads(pj.stdout)
    nodes = {n["id"]: n for n in data["nodes"]}
    assert data["targets"] == ["d"]
    assert list(nodes) == ["a", "b", "c", "d"]
    assert nodes["d"]["deps"] == ["b", "c"]
    assert {n["action"] for n in nodes.values()} == {"build"}
    assert {n["impure"] for n in nodes.values()} == {False}
    assert {nid: n["key"] for nid, n in nodes.items()} == keys_of(diamond, _detected_host())

    dot = diamond.cli("plan", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith("digraph plan {") and dot.stdout.rstrip().endswith("}")
    for edge in ('"a" -> "b"', '"a" -> "c"', '"b" -> "d"', '"c" -> "d"'):
        assert edge in dot.stdout

    assert diamond.cli("realise", "-j", "2").returncode == 0
    after = json.loads(diamond.cli("plan", "--json").stdout)
    assert {n["action"] for n in after["nodes"]} == {"reuse"}


def _detected_host() -> HostInfo:
    from planner.host import detect_host

    return detect_host(True)


def test_plan_works_offline_from_lockfile(tmp_path: Path) -> None:
    from tests.support.http_server import LoopbackServer

    proj = Project.empty(tmp_path, target="u")
    with LoopbackServer() as server:
        url = server.url("/payload.txt")
        server.add("/payload.txt", b"fetched once\n")
        proj.write_raw("u", recipe_toml("u", script="cat /inputs/source/* > $out/u.txt")
                       .replace("[build]", f'[source]\nkind = "url"\nurl = "{url}"\n\n[build]'))
        locked = proj.cli("lock")
        assert locked.returncode == 0, locked.stderr
    # Server gone, no network at all, an empty store that plan must not even create.
    fresh = tmp_path / "fresh-store"
    argv = ["bwrap", "--dev-bind", "/", "/", "--unshare-net", "--",
            sys.executable, "-m", "planner.cli", "--root", str(proj.root), "--store", str(fresh),
            "plan", proj.set, "--json"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    nodes = json.loads(p.stdout)["nodes"]
    assert [(n["id"], n["action"]) for n in nodes] == [("u", "build")]
    assert not fresh.exists()


# -- sandbox off and missing bubblewrap -----------------------------------------------------

def _diamond_not_reading_deps(tmp_path: Path) -> Project:
    """Scripts that do not read /deps (see the xfail below for those that do)."""
    proj = Project.diamond(tmp_path, scripts={n: f"echo {n} > $out/{n}.txt" for n in "bcd"})
    proj.lock()
    return proj


def test_sandbox_off_marks_outputs_impure(tmp_path: Path) -> None:
    diamond = _diamond_not_reading_deps(tmp_path)
    on0 = json.loads(diamond.cli("plan", "--json").stdout)
    assert {n["impure"] for n in on0["nodes"]} == {False}
    pj = json.loads(diamond.cli("plan", "--json", "--sandbox", "off").stdout)
    assert {n["impure"] for n in pj["nodes"]} == {True}
    res = diamond.cli("realise", "--json", "-j", "2", "--sandbox", "off")
    assert res.returncode == 0, res.stderr
    assert set(res.actions().values()) == {"built"}
    assert (Path(res.json()["output"]) / "d.txt").read_text() == "d\n"
    assert (Path(res.json()["nodes"][0]["path"]) / "a.txt").read_text() == "alpha\n"  # cwd = the source
    st = Store(diamond.store)
    impure = {e.name: e.impure for e in st.entries() if e.kind == "build"}
    st.close()
    assert impure == {"a": True, "b": True, "c": True, "d": True}
    # Impure outputs never stand in for sandboxed ones: other keys.
    on = json.loads(diamond.cli("plan", "--json").stdout)
    assert {n["action"] for n in on["nodes"]} == {"build"}


def test_sandbox_off_build_finds_its_deps(diamond: Project) -> None:
    res = diamond.cli("realise", "--json", "-j", "2", "--sandbox", "off")
    assert res.returncode == 0, res.stderr
    assert (Path(res.json()["output"]) / "d.txt").read_text() == "d\nb\nalpha\nc\nalpha\n"


def test_missing_bwrap_refused_unless_sandbox_off(tmp_path: Path) -> None:
    diamond = _diamond_not_reading_deps(tmp_path)
    nobin = tmp_path / "nobin"
    nobin.mkdir()
    res = diamond.cli("realise", "-j", "1", env={"PATH": str(nobin)})
    assert res.returncode != 0
    line = one_error_line(res.stderr)
    assert "bwrap" in line and "--sandbox=off" in line
    assert build_entries(diamond.store) == {}
    off = diamond.cli("realise", "-j", "1", "--sandbox", "off", env={"PATH": str(nobin)})
    assert off.returncode == 0, off.stderr


# -- bad input ------------------------------------------------------------------------------

B_TOML = recipe_toml("b", deps=["a"])


@pytest.mark.parametrize("text, expect", [
    (B_TOML.replace('version = "1.0"', 'version = "1.0"\ncolour = "red"'), ["recipes/t/b.toml:3", "colour", "unknown key"]),
    (B_TOML + "colour = 1\n", ["recipes/t/b.toml:", "build.colour", "unknown key"]),
    (B_TOML + '\n[resources]\ncores = "many"\n', ["recipes/t/b.toml:", "resources.cores",
                                                  "expected a whole number, not a string 'many'"]),
    (B_TOML.replace('deps = ["a"]', 'deps = ["nope"]'), ["recipes/t/b.toml:3", "deps", "nope"]),
    (B_TOML.replace('builder = "shell"', 'builder = "make"'), ["recipes/t/b.toml:", "builder", "make"]),
    (B_TOML.replace('version = "1.0"', 'version = "1.0"\n[[oops'), ["recipes/t/b.toml", "invalid TOML"]),
], ids=["unknown-key", "unknown-nested-key", "wrong-type-int", "missing-dependency", "unknown-builder",
        "bad-toml"])
def test_bad_recipe_is_one_line(diamond: Project, text: str, expect: list[str]) -> None:
    (diamond.folder / "b.toml").write_text(text)
    res = diamond.cli("lock")
    assert res.returncode != 0
    line = one_error_line(res.stderr)
    for part in expect:
        assert part in line, line


def test_bad_recipe_is_one_line_from_every_command(diamond: Project) -> None:
    (diamond.folder / "b.toml").write_text(B_TOML.replace('deps = ["a"]', 'deps = ["nope"]'))
    for cmd in (("plan",), ("plan", "--json"), ("realise", "-j", "1"), ("realise", "--dry-run"), ("lock", "--check")):
        res = diamond.cli(*cmd)
        assert res.returncode != 0, cmd
        line = one_error_line(res.stderr)
        assert "recipes/t/b.toml:3" in line and "nope" in line, (cmd, line)


def test_dependency_cycle_is_one_line(diamond: Project) -> None:
    diamond.recipe("a", deps=["d"], source="src/a", script="true")
    res = diamond.cli("lock")
    assert res.returncode != 0
    line = one_error_line(res.stderr)
    assert "recipes/t" in line and "cycle" in line
    # The cycle is named as a closed path of recipe names, each pointing at what it depends on.
    assert line.endswith(("a -> d -> b -> a", "a -> d -> c -> a")), line


@pytest.mark.parametrize("edit", [
    lambda t: t.replace('version = "1.0"', "version = 1"),
    lambda t: t.replace('deps = ["a"]', 'deps = "a"'),
    lambda t: t.replace('builder = "shell"', 'builder = "shell"\nimpure = "false"'),
    lambda t: t + "\n[build.env]\nFOO = 1\n",
], ids=["version-int", "deps-string", "impure-string", "env-int"])
def test_wrong_scalar_types_are_rejected(diamond: Project, edit) -> None:
    (diamond.folder / "b.toml").write_text(edit(B_TOML))
    res = diamond.cli("lock")
    assert res.returncode != 0
    line = one_error_line(res.stderr)
    assert "recipes/t/b.toml" in line


def test_stale_lock_is_caught_by_check(diamond: Project) -> None:
    ok = diamond.cli("lock", "--check")
    assert ok.returncode == 0, ok.stderr
    # The recipe's source declaration edited after locking: the entry is named.
    diamond.source_file("src/a2/data.txt", "alpha\n")
    diamond.recipe("a", source="src/a2", script="cat data.txt > $out/a.txt")
    res = diamond.cli("lock", "--check")
    assert res.returncode != 0
    assert "a/source" in res.stderr and "recipe changed since locking" in res.stderr
    assert "Traceback" not in res.stderr
    diamond.lock()
    assert diamond.cli("lock", "--check").returncode == 0
    # The local source's content edited: named too.
    (diamond.root / "src/a2/data.txt").write_text("changed\n")
    res = diamond.cli("lock", "--check")
    assert res.returncode != 0 and "a/source" in res.stderr and "src/a2 changed since locking" in res.stderr
    diamond.lock()
    # Another recipe's script edited: the recipes checksum catches it.
    diamond.recipe("c", deps=["a"], script="echo c-edited > $out/c.txt")
    res = diamond.cli("lock", "--check")
    assert res.returncode != 0 and "recipes" in res.stderr and "changed since locking" in res.stderr
    # And realise refuses a lock whose pins are stale.
    (diamond.root / "src/a2/data.txt").write_text("changed again\n")
    rr = diamond.cli("realise", "-j", "1")
    assert rr.returncode != 0
    assert "a/source" in one_error_line(rr.stderr)


def test_locking_twice_is_byte_identical(diamond: Project, tmp_path: Path) -> None:
    first = diamond.lockfile.read_bytes()
    diamond.lockfile.unlink()
    diamond.store = tmp_path / "other-store"
    again = diamond.cli("lock")
    assert again.returncode == 0, again.stderr
    assert diamond.lockfile.read_bytes() == first
    # Re-locking over an existing lock rewrites the same bytes too.
    assert diamond.cli("lock").returncode == 0
    assert diamond.lockfile.read_bytes() == first


def test_plan_handles_a_deep_chain() -> None:
    from planner.host import HostInfo as H
    from planner.lock import Lock
    from planner.recipes import Build, Recipe, RecipeSet, SetConfig

    n = 2000
    recipes = {f"n{i}": Recipe(name=f"n{i}", version="1", build=Build(builder="shell", script="true"),
                               deps=[f"n{i - 1}"] if i else []) for i in range(n)}
    rs = RecipeSet(name="t", root=Path("/nonexistent"),
                   config=SetConfig(target=f"n{n - 1}", source_date_epoch=1, platforms=["linux/amd64"], build_root="host"),
                   recipes=recipes)
    p = plan(rs, Lock(set="t", recipes="x", source_date_epoch=1), H(platform="linux/amd64"))
    assert len(p.nodes) == n
