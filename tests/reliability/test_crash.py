"""Row 1, crash consistency: SIGKILL `realise`, `lock` and `store gc` at random moments.

After every kill: `planner store verify` passes (no entry whose content differs from its recorded
digest, none registered but missing), `PRAGMA integrity_check` says ok, and the next run finishes
with the same digests as an uninterrupted one. A killed `lock` leaves the old lockfile or the new
one, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from planner.store import Store
from tests.support.http_server import Fault, LoopbackServer
from tests.support.project import Project

from .support import (assert_store_sound, cli, deterministic_bytes, entries, integrity, popen, rmtree, seeded,
                      shell_recipe, tmp_leftovers, trials, wait_gone)

ROW = "1. Crash consistency"

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

BLOB = deterministic_bytes(1 << 20, seed=7)


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as srv:
        srv.add("/blob.bin", BLOB, ranges=True)
        yield srv


def crash_project(tmp_path: Path, server: LoopbackServer) -> Project:
    """a (path source, 200 files) -> b (+ a 1 MiB url input), c -> d.

    Many files and a large input widen the windows a kill can land in: fetching, hashing,
    making read-only, renaming into place, committing the row.
    """
    proj = Project.empty(tmp_path, target="d")
    proj.source_file("src/a/data.txt", "alpha\n")
    proj.write_raw("a", shell_recipe(
        "a", "cat data.txt > $out/a.txt\nfor i in $(seq 1 200); do echo $i > $out/f$i; done",
        source={"kind": "path", "path": "src/a"}))
    proj.write_raw("b", shell_recipe(
        "b", "cp /inputs/blob/blob.bin $out/\ncat /deps/a/a.txt > $out/b.txt", deps=["a"],
        inputs={"blob": {"kind": "url", "url": server.url("/blob.bin")}}))
    proj.write_raw("c", shell_recipe("c", "cat /deps/a/a.txt > $out/c.txt\nmkdir -p $out/sub/dir\n"
                                          "echo deep > $out/sub/dir/x", deps=["a"]))
    proj.write_raw("d", shell_recipe("d", "cat /deps/b/b.txt /deps/c/c.txt > $out/d.txt\n"
                                          "sha256sum /deps/b/blob.bin > $out/sum", deps=["b", "c"]))
    proj.lock()
    return proj


def sound(store: Path) -> None:
    """What `planner store verify` checks (in-process, to keep trials cheap) plus the index."""
    if not (store / "index.sqlite").exists():
        return
    st = Store(store)
    try:
        assert st.verify() == []
    finally:
        st.close()
    assert integrity(store) == [("ok",)]


def digests(run_json: dict) -> dict[str, str]:
    return {n["id"]: n["digest"] for n in run_json["nodes"]}


def test_sigkill_realise_at_random_moments(tmp_path: Path, server: LoopbackServer, figure: dict) -> None:
    """SIGKILL `realise` at random moments: store verifies, index intact, rerun gives the same digests."""
    proj = crash_project(tmp_path, server)
    rng, seed = seeded("realise-kill")
    figure["seed"] = seed

    ref_store = tmp_path / "ref-store"
    t0 = time.monotonic()
    ref = cli(proj, "realise", proj.set, "--json", "-j", "2", store=ref_store)
    span = time.monotonic() - t0
    assert ref.returncode == 0, ref.stderr
    expected = digests(ref.json())

    n = trials(8)
    phases: Counter = Counter()
    rmtree(ref_store)
    for i in range(n):
        store = tmp_path / f"store-{i}"
        delay = rng.uniform(0.0, span * 1.1)
        p = popen(proj, "realise", proj.set, "--json", "-j", "2", store=store)
        time.sleep(delay)
        finished = p.poll() is not None
        if not finished:
            os.kill(p.pid, signal.SIGKILL)  # the planner only: its sandboxes must die with it
        p.communicate(timeout=30)
        wait_gone(str(store))  # bwrap --die-with-parent: no build outlives the planner

        # Where the kill landed, from the store's own records.
        valid = [e for e in entries(store) if e[3] == "build"]
        phases["after completion" if finished else f"{len(valid)}/4 builds registered"] += 1

        sound(store)
        again = cli(proj, "realise", proj.set, "--json", "-j", "2", store=store)
        assert again.returncode == 0, again.stderr
        assert digests(again.json()) == expected, (i, delay)
        # Whatever the kill left in tmp/ is cleanable, and cleaning keeps the closure.
        st = Store(store)
        try:
            st.gc()
        finally:
            st.close()
        assert tmp_leftovers(store) == []
        sound(store)
        assert Path(again.json()["output"]).is_dir()
        if i == n - 1:
            assert_store_sound(proj, store)  # once through the CLI itself
        rmtree(store)

    figure["trials"] = n
    figure["faults"] = f"{n} SIGKILLs, uniform over 0-{span * 1.1:.1f}s of a {span:.1f}s realise"
    figure["outcomes"] = ("kill landed: " + ", ".join(f"{k}: {v}" for k, v in sorted(phases.items()))
                          + f"; verify ok {n}/{n}, integrity ok {n}/{n}, rerun digests equal {n}/{n}")


def test_sigkill_lock_leaves_old_or_new_lockfile(tmp_path: Path, figure: dict) -> None:
    """SIGKILL `lock --update` mid-download: the lockfile is the old one or the new one, byte for byte."""
    rng, seed = seeded("lock-kill")
    figure["seed"] = seed
    names = ("one", "two", "three")
    old_bodies = {k: deterministic_bytes(200_000, seed=i) for i, k in enumerate(names)}
    new_bodies = {k: deterministic_bytes(200_000, seed=100 + i) for i, k in enumerate(names)}
    with LoopbackServer() as srv:
        for k in names:
            srv.add(f"/{k}.bin", old_bodies[k])
        proj = Project.empty(tmp_path, target="x")
        proj.write_raw("x", shell_recipe("x", "cat /inputs/*/* > $out/all",
                                         inputs={k: {"kind": "url", "url": srv.url(f"/{k}.bin")} for k in names}))
        first = cli(proj, "lock", proj.set)
        assert first.returncode == 0, first.stderr
        old = proj.lockfile.read_bytes()

        # Upstream re-publishes, slowly: each body arrives in two halves 0.15 s apart.
        for k in names:
            srv.add(f"/{k}.bin", new_bodies[k], fault=Fault.SLOW, times=10**9, delay=0.15)
        t0 = time.monotonic()
        ref = cli(proj, "lock", proj.set, "--update", "x")
        span = time.monotonic() - t0
        assert ref.returncode == 0, ref.stderr
        new = proj.lockfile.read_bytes()
        assert new != old
        for k in names:
            assert hashlib.sha256(new_bodies[k]).hexdigest() in new.decode()

        n = trials(8)
        seen: Counter = Counter()
        strays = 0
        for i in range(n):
            proj.lockfile.write_bytes(old)
            store = tmp_path / f"lock-store-{i}"
            p = popen(proj, "lock", proj.set, "--update", "x", store=store)
            time.sleep(rng.uniform(0.0, span * 1.1))
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.communicate(timeout=30)
            got = proj.lockfile.read_bytes()
            assert got in (old, new), f"trial {i}: a mixed lockfile:\n{got.decode(errors='replace')}"
            seen["old" if got == old else "new"] += 1
            strays += len([q for q in proj.lockfile.parent.iterdir() if q.name.endswith(".tmp")])
            for q in proj.lockfile.parent.glob(".*.tmp"):
                q.unlink()
            sound(store)
            rmtree(store)
        # And an uninterrupted run still produces exactly the new lock.
        proj.lockfile.write_bytes(old)
        done = cli(proj, "lock", proj.set, "--update", "x")
        assert done.returncode == 0 and proj.lockfile.read_bytes() == new

    figure["trials"] = n
    figure["faults"] = f"{n} SIGKILLs over 0-{span * 1.1:.1f}s of a {span:.1f}s `lock --update` (3 slow downloads)"
    figure["outcomes"] = (f"lockfile old: {seen['old']}, new: {seen['new']}, mixed: 0; "
                          f"stray .tmp files left in lockfiles/: {strays}")


# -- store gc ----------------------------------------------------------------------------------
#
# `Store.gc` deletes an entry's tree and only then deletes its row. A crash between the two (or
# in the middle of the tree's deletion) leaves a row whose content is missing or partial. The
# crash is injected deterministically (os._exit at the exact point) so the tests do not depend
# on a random kill landing in a window of a few milliseconds.

def _gc_fixture(tmp_path: Path) -> tuple[Project, str]:
    """A store holding one unreachable entry (the old `many`) with 400 files."""
    proj = Project.empty(tmp_path, target="many")
    v1 = "for i in $(seq 1 400); do echo $i > $out/f$i; done"
    proj.recipe("many", script=v1)
    proj.lock()
    assert cli(proj, "realise", proj.set, "-j", "1").returncode == 0
    proj.recipe("many", script=v1 + "\necho v2 > $out/v")
    proj.lock()
    assert cli(proj, "realise", proj.set, "-j", "1").returncode == 0
    return proj, v1


def test_gc_crash_between_delete_and_unregister(tmp_path: Path, figure: dict) -> None:
    """`store gc` killed between deleting an entry and unregistering it: the store still verifies."""
    proj, _v1 = _gc_fixture(tmp_path)
    crash = ("import os, planner.store as s\n"
             "s.Store.invalidate = lambda self, key: os._exit(137)\n")
    r = cli(proj, "store", "gc", python_prelude=crash)
    figure["trials"] = 1
    figure["faults"] = "1 crash injected (os._exit) right after an entry's tree was removed"
    assert r.returncode == 137
    v = cli(proj, "store", "verify")
    figure["outcomes"] = f"store verify exit {v.returncode}: {v.stdout.strip().splitlines()[0] if v.stdout.strip() else ''}"
    assert v.returncode == 0, v.stdout


def test_gc_crash_mid_delete_never_serves_a_partial_entry(tmp_path: Path, figure: dict) -> None:
    """`store gc` killed mid-delete: no partial entry is ever reused by a later realise."""
    proj, v1 = _gc_fixture(tmp_path)
    crash = ("import os, shutil\n"
             "def half(path, *a, **k):\n"
             "    names = sorted(os.listdir(path))\n"
             "    for n in names[: len(names) // 2]:\n"
             "        os.unlink(os.path.join(path, n))\n"
             "    os._exit(137)\n"
             "shutil.rmtree = half\n")
    r = cli(proj, "store", "gc", python_prelude=crash)
    figure["trials"] = 1
    figure["faults"] = "1 crash injected half-way through deleting a 400-file entry"
    assert r.returncode == 137
    # Back to the old recipe: its realisation and (half of) its entry are still there.
    proj.recipe("many", script=v1)
    proj.lock()
    again = cli(proj, "realise", proj.set, "--json", "-j", "1")
    assert again.returncode == 0, again.stderr
    out = Path(again.json()["output"])
    count = len(list(out.iterdir()))
    action = again.json()["nodes"][0]["action"]
    figure["outcomes"] = f"next realise: {action}, output holds {count}/400 files"
    assert count == 400
    assert_store_sound(proj)


# -- realise: a crash at each step of making an entry valid ------------------------------------
#
# The random kills above rarely land in the few microseconds between these steps; here the crash
# is injected exactly there (os._exit in the planner process), once per step.

_CRASH_POINTS = {
    # make_read_only() has run on the finished build; nothing renamed yet.
    "before rename into place": ("import os, planner.store as s\n"
                                 "_orig = s.make_read_only\n"
                                 "def crash(p, **kw):\n    _orig(p, **kw)\n    os._exit(137)\n"
                                 "s.make_read_only = crash\n"),
    # The tree is in place under its final name; its row is not committed.
    "after rename, before the row": ("import os, planner.store as s\n"
                                     "_orig = os.rename\n"
                                     "def crash(a, b, *k, **kw):\n    _orig(a, b, *k, **kw)\n"
                                     "    if '/tmp/' in str(a):\n        os._exit(137)\n"
                                     "s.os.rename = crash\n"),
    # The row is committed; the input key's realisation is not.
    "after the row, before the realisation": ("import os, planner.store as s\n"
                                              "s.Store.realise = lambda self, *a: os._exit(137)\n"),
}


@pytest.fixture(scope="module")
def diamond_digests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Digests of an uninterrupted realise of the diamond fixture set (they do not depend on paths)."""
    proj = Project.diamond(tmp_path_factory.mktemp("ref"))
    proj.lock()
    ref = cli(proj, "realise", proj.set, "--json", "-j", "1")
    assert ref.returncode == 0, ref.stderr
    return digests(ref.json())


@pytest.mark.parametrize("point", list(_CRASH_POINTS))
def test_realise_crash_at_each_commit_step(tmp_path: Path, point: str, diamond_digests: dict,
                                           figure: dict) -> None:
    """A crash injected at each step of adding an entry: the store verifies and the next realise matches."""
    proj = Project.diamond(tmp_path)
    proj.lock()
    crashed = cli(proj, "realise", proj.set, "--json", "-j", "1", python_prelude=_CRASH_POINTS[point])
    assert crashed.returncode == 137, crashed.stderr
    wait_gone(str(proj.store))
    leftovers = [p.name for p in proj.store.iterdir() if p.name.endswith("-a-1.0")]
    registered = [e[0] for e in entries(proj.store) if e[3] == "build"]
    assert_store_sound(proj)
    again = cli(proj, "realise", proj.set, "--json", "-j", "1")
    assert again.returncode == 0, again.stderr
    assert digests(again.json()) == diamond_digests
    assert_store_sound(proj)
    figure["trials"] = 1
    figure["faults"] = f"os._exit injected {point}"
    figure["outcomes"] = (f"left: {len(leftovers)} tree(s) on disk, {len(registered)} row(s); verify ok; "
                          f"rerun: {dict(Counter(n['action'] for n in again.json()['nodes']))}, digests equal")


def test_ctrl_c_stops_at_once_and_leaves_a_sound_store(tmp_path: Path, figure: dict) -> None:
    """Ctrl-C while a build runs and a pinned input downloads (stalled): the planner exits 130 within seconds with one line, kills the build, leaves a sound store, and the next realise finishes."""
    with LoopbackServer() as srv:
        srv.add("/blob.bin", BLOB, ranges=True)
        proj = Project.empty(tmp_path, target="top")
        proj.write_raw("slow", shell_recipe("slow", "sleep 120; echo late > $out/x"))
        proj.write_raw("fetching", shell_recipe("fetching", "cp /inputs/blob/blob.bin $out/",
                                                inputs={"blob": {"kind": "url", "url": srv.url("/blob.bin")}}))
        proj.write_raw("top", shell_recipe("top", "cat /deps/slow/x > $out/x", deps=["slow", "fetching"]))
        proj.lock()
        # A fresh store fetches the pinned input again, from a server that now stalls half-way.
        srv.add("/blob.bin", BLOB, fault=Fault.SLOW, times=1000, delay=60)
        store = tmp_path / "store-int"
        # As from a terminal: a suite started in the background (CI) inherits SIGINT ignored,
        # which Python then leaves ignored; a user's Ctrl-C finds its default handler.
        p = popen(proj, "realise", proj.set, "-j", "2", "--progress=plain", store=store,
                  python_prelude="import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)")
        # (3 s: both under way, the sleep in its sandbox, the download in a planner thread)
        took, _err = _stopped_by(p, signal.SIGINT, store, code=130, line="planner: interrupted; the store is consistent")
        srv.add("/blob.bin", BLOB, ranges=True)
        proj.write_raw("slow", shell_recipe("slow", "echo late > $out/x"))
        again = cli(proj, "realise", proj.set, "--json", store=store)
        assert again.returncode == 0, again.stderr
    figure.update(trials=1, faults="SIGINT during a 120 s build and a download stalled for 60 s",
                  outcomes=f"exit 130 after {took:.1f} s, one line; store sound; the next realise finished")


def _stopped_by(p, sig: int, store: Path, *, code: int, line: str) -> tuple[float, str]:
    """Send `sig` to a planner 3 s into its work: it must end within seconds with exit `code`,
    `line` its only planner line, no traceback, its builds gone and the store sound. Returns
    (seconds it took, stderr)."""
    time.sleep(3)
    assert p.poll() is None, p.communicate()
    t0 = time.monotonic()
    os.kill(p.pid, sig)
    _out, err = p.communicate(timeout=60)
    took = time.monotonic() - t0
    wait_gone(str(store))
    assert p.returncode == code, err
    assert took < 15, f"signal {sig} took {took:.1f} s (work in flight was waited for)"
    assert [l for l in err.splitlines() if l.startswith("planner:")] == [line], err
    assert "Traceback" not in err, err
    sound(store)
    return took, err


def test_sigterm_stops_as_ctrl_c_does(tmp_path: Path, figure: dict) -> None:
    """SIGTERM (a cancelled CI job, `timeout`) while a build runs: the planner stops as on Ctrl-C, exit 143 with one line, the build killed, no temporary file left beside an export, a sound store."""
    proj = Project.empty(tmp_path, target="img")
    proj.write_raw("slow", shell_recipe("slow", "sleep 120; echo late > $out/x"))
    proj.write_raw("img", 'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n[image]\nlayers = [["slow"]]\n')
    proj.lock()
    store = tmp_path / "store-term"
    out = tmp_path / "out"
    out.mkdir()
    p = popen(proj, "export", proj.set, str(out / "img.tar"), store=store)
    took, err = _stopped_by(p, signal.SIGTERM, store, code=143, line="planner: terminated; the store is consistent")
    assert list(out.iterdir()) == [], (err, list(out.iterdir()))
    figure.update(trials=1, faults="SIGTERM during a 120 s build under `planner export`",
                  outcomes=f"exit 143 after {took:.1f} s, one line; nothing beside the export; store sound")
