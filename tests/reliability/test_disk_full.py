"""Row 3, disk full: a store on a size-limited tmpfs that fills up mid-build.

The failed realise says so in one line (the disk-full cause in its log tail), registers no entry
for the node, leaves nothing in tmp/ and keeps the index intact; once space is freed (a filler
file deleted, or the tmpfs remounted bigger) the same command succeeds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.http_server import LoopbackServer
from tests.support.project import Project

from .support import (assert_clean_error, assert_store_sound, cli, deterministic_bytes, entries, error_lines,
                      remount, seeded, shell_recipe, tmp_leftovers, tmpfs, trials)

ROW = "3. Disk full"

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

MiB = 1 << 20


def _filler(store: Path, size: int) -> Path:
    f = store / "filler"
    with open(f, "wb") as out:
        out.write(b"\0" * size)
    return f


def _project(tmp_path: Path, out_mib: int) -> Project:
    proj = Project.empty(tmp_path, target="big")
    proj.recipe("small", script="echo small > $out/s.txt")
    proj.recipe("big", deps=["small"],
                script=f"cat /deps/small/s.txt > $out/head.txt\nhead -c {out_mib * MiB} /dev/zero > $out/big.bin\n"
                       "echo done > $out/tail.txt")
    proj.write_set(target="big")
    return proj


def _assert_failed_cleanly(proj: Project, run) -> None:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    failed = [l for l in run.stderr.splitlines() if l.startswith("planner: build failed: ")]
    assert len(failed) == 1 and failed[0].startswith("planner: build failed: big"), run.stderr
    assert "No space left on device" in run.stderr, run.stderr
    names = [e[0] for e in entries(proj.store)]
    assert not [n for n in names if "-big-" in n], names
    assert not list(proj.store.glob("*-big-*"))
    assert tmp_leftovers(proj.store) == []
    assert_store_sound(proj)


def test_build_fills_the_disk_then_space_is_freed(tmp_path: Path, figure: dict) -> None:
    """A build fills the store's disk: one clear error, no partial entry, success once a filler is deleted."""
    rng, seed = seeded("disk-full")
    figure["seed"] = seed
    n = trials(2, scale=0.1, cap=8)
    outcomes = []
    for i in range(n):
        base = tmp_path / f"t{i}"
        proj = _project(base, out_mib=4)
        with tmpfs(proj.store, "8m"):
            proj.lock()
            # Leave between 0.5 and 3.5 MiB free: the 4 MiB output cannot fit.
            free = rng.randint(MiB // 2, 7 * MiB // 2)
            filler = _filler(proj.store, 8 * MiB - free - 256 * 1024)
            run = cli(proj, "realise", proj.set, "-j", "1")
            _assert_failed_cleanly(proj, run)
            filler.unlink()
            ok = cli(proj, "realise", proj.set, "--json", "-j", "1")
            assert ok.returncode == 0, ok.stderr
            out = Path(ok.json()["output"])
            assert (out / "big.bin").stat().st_size == 4 * MiB and (out / "tail.txt").read_text() == "done\n"
            assert_store_sound(proj)
            outcomes.append(f"{free // 1024} KiB free")
    figure["trials"] = n
    figure["faults"] = f"{n} ENOSPC mid-build (8 MiB tmpfs, filler leaving {', '.join(outcomes)})"
    figure["outcomes"] = (f"{n}/{n}: one `build failed` line naming the node + 'No space left on device', "
                          "no entry, tmp/ empty, verify ok; success after deleting the filler")


def test_build_too_big_then_remount_bigger(tmp_path: Path, figure: dict) -> None:
    """An output larger than the whole disk fails cleanly; after remounting bigger the same realise succeeds."""
    proj = _project(tmp_path, out_mib=12)
    with tmpfs(proj.store, "8m"):
        proj.lock()
        run = cli(proj, "realise", proj.set, "-j", "1")
        _assert_failed_cleanly(proj, run)
        remount(proj.store, "32m")
        ok = cli(proj, "realise", proj.set, "--json", "-j", "1")
        assert ok.returncode == 0, ok.stderr
        assert (Path(ok.json()["output"]) / "big.bin").stat().st_size == 12 * MiB
        assert_store_sound(proj)
    figure["trials"] = 1
    figure["faults"] = "1 ENOSPC: a 12 MiB output on an 8 MiB tmpfs"
    figure["outcomes"] = "clean failure, no entry; success after `mount -o remount,size=32m`"


def test_lock_download_fills_the_disk(tmp_path: Path, figure: dict) -> None:
    """`lock` of a download bigger than the free space: one clear error line, nothing left behind."""
    body = deterministic_bytes(12 * MiB, seed=3)
    with LoopbackServer() as srv:
        srv.add("/big.bin", body)
        proj = Project.empty(tmp_path, target="x")
        proj.write_raw("x", shell_recipe("x", "cp /inputs/big/* $out/",
                                         inputs={"big": {"kind": "url", "url": srv.url("/big.bin")}}))
        with tmpfs(proj.store, "8m"):
            run = cli(proj, "lock", proj.set)
            figure["trials"] = 1
            figure["faults"] = "1 ENOSPC while downloading a 12 MiB input into an 8 MiB store"
            figure["outcomes"] = ("traceback (OSError: No space left on device)" if "Traceback" in run.stderr
                                  else f"exit {run.returncode}: {error_lines(run.stderr)}")
            assert tmp_leftovers(proj.store) == []
            assert_clean_error(run, names=["x/big"])
            assert "No space left on device" in run.stderr


def test_full_disk_store_commands_fail_in_one_line(tmp_path: Path, figure: dict) -> None:
    """With the store's disk already full, realise / verify / gc fail with one line, not a traceback."""
    proj = _project(tmp_path, out_mib=1)
    with tmpfs(proj.store, "8m"):
        proj.lock()
        filler = proj.store / "filler"
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
            except OSError:
                pass
        results = {}
        for cmd in (("realise", proj.set, "-j", "1"), ("store", "verify"), ("store", "gc")):
            results[" ".join(cmd[:2])] = cli(proj, *cmd)
        figure["trials"] = len(results)
        figure["faults"] = "store tmpfs 100% full before the command starts"
        figure["outcomes"] = "; ".join(f"{k}: {'traceback' if 'Traceback' in r.stderr else 'one line'}"
                                       for k, r in results.items())
        filler.unlink()
        for r in results.values():
            # Succeeding is fine (verify could open the index read-only); crashing is not.
            assert "Traceback" not in r.stderr, r.stderr
            assert r.returncode == 0 or len(error_lines(r.stderr)) == 1, r.stderr
