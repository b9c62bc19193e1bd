"""The no-op path: `planner` answers an unchanged realise from the plan cache before importing
the command line, and every change that could alter the answer sends it to the full realise.

Real bubblewrap builds of the small diamond set (tests/support/project.py); the `planner`
command is run as a user runs it (bin/planner through the interpreter of this test session).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.project import Project

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap")

REPO = Path(__file__).resolve().parent.parent


def planner(proj: Project, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`planner --root R --store S ARGS` through bin/planner, the installed command."""
    full = dict(os.environ)
    full.pop("PLANNER_STORE", None)
    full.pop("PLANNER_EXECUTOR", None)
    full.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "bin" / "planner"), "--root", str(proj.root),
                           "--store", str(proj.store), *args], capture_output=True, text=True, env=full,
                          cwd=proj.root, timeout=120)


# Only what answering imported counts: an interpreter's start-up may already hold some of these
# (a finder-style editable install's .pth imports pathlib before any planner code runs).
PROBE = """
import sys
started = set(sys.modules)
from planner.entry import answer_noop
hit = answer_noop(sys.argv[1:])
heavy = sorted(m for m in ("click", "planner.cli", "attrs", "planner.recipes", "planner.realise", "sqlite3",
                           "pathlib", "json", "hashlib") if m in sys.modules and m not in started)
print("HIT" if hit else "MISS", ",".join(heavy), file=sys.stderr)
"""


def probe(proj: Project, *args: str) -> tuple[bool, str]:
    """Whether the entry point answered by itself, and which heavy modules it imported."""
    p = subprocess.run([sys.executable, "-c", PROBE, "--root", str(proj.root), "--store", str(proj.store), *args],
                       capture_output=True, text=True, cwd=proj.root, timeout=60)
    assert p.returncode == 0, p.stderr
    verdict, _, heavy = p.stderr.strip().splitlines()[-1].partition(" ")
    return verdict == "HIT", heavy


@pytest.fixture
def built(tmp_path: Path) -> tuple[Project, subprocess.CompletedProcess]:
    proj = Project.diamond(tmp_path)
    proj.lock()
    first = planner(proj, "realise", "t", "-j", "2")
    assert first.returncode == 0, first.stderr
    assert "4 built" in first.stderr
    return proj, first


def test_noop_is_answered_before_the_command_line_is_imported(built) -> None:
    proj, first = built
    hit, heavy = probe(proj, "realise", "t")
    assert hit and heavy == "", heavy
    again = planner(proj, "realise", "t", "-j", "2")
    assert again.returncode == 0 and again.stderr == ""
    # The same answer the full command gives: the output, then nothing else (no image digest).
    assert again.stdout == first.stdout.splitlines(keepends=True)[-1] == proj.cli("realise").stdout
    # The set named by default (the only one under recipes/) and equivalent spellings hit too.
    for args in (["realise"], ["realise", "t", "--jobs=1", "--sandbox", "on", "--keep-going"], ["realise", "-j4", "t"]):
        assert probe(proj, *args)[0], args


@pytest.mark.parametrize("args", [
    ["realise", "t", "--dry-run"], ["realise", "t", "--check"], ["realise", "t", "--json"],
    ["realise", "t", "--out-link", "result"], ["realise", "t", "--platform", "linux/amd64"],
    ["realise", "t", "--help"], ["realise", "t", "-j", "x"], ["realise", "t", "--sandbox", "maybe"],
    ["realise", "t", "u"], ["realise", "../t"], ["plan", "t"], ["--version"], ["realise", "t", "--sandbox", "off"],
    ["realise", "t", "--target", "b"],
])
def test_anything_but_a_plain_cached_realise_goes_to_the_command_line(built, args: list[str]) -> None:
    proj, _ = built
    assert not probe(proj, *args)[0]


def test_a_noop_with_an_out_link_makes_it_a_gc_root(built) -> None:
    """The command line leaves an --out-link no-op to realise(), which registers the link as a
    gc root (the entry point's and the command line's fast paths would only make the link)."""
    proj, first = built
    link = proj.root / "result"
    again = planner(proj, "realise", "t", "--out-link", str(link))
    assert again.returncode == 0, again.stderr
    assert "built" not in again.stderr
    assert again.stdout == first.stdout.splitlines(keepends=True)[-1]
    assert link.is_symlink() and os.readlink(link) == first.stdout.splitlines()[-1]
    roots = planner(proj, "store", "roots")
    assert f"link:{link} -> " in roots.stdout, roots.stdout


def test_executor_from_the_environment_is_not_a_noop(built) -> None:
    proj, _ = built
    p = subprocess.run([sys.executable, "-c", PROBE, "--root", str(proj.root), "--store", str(proj.store),
                        "realise", "t"], capture_output=True, text=True, cwd=proj.root,
                       env=dict(os.environ, PLANNER_EXECUTOR="dask://127.0.0.1:1"))
    assert p.stderr.strip().splitlines()[-1].startswith("MISS")


def test_edited_recipe_is_rebuilt_through_the_fast_entry(built) -> None:
    proj, first = built
    proj.recipe("b", deps=["a"], script="echo changed > $out/b.txt")
    assert not probe(proj, "realise", "t")[0]
    again = planner(proj, "realise", "t")
    assert again.returncode == 0, again.stderr
    assert "2 built" in again.stderr  # b, then d above it
    assert again.stdout != first.stdout
    assert probe(proj, "realise", "t")[0]  # and the new answer is cached


@pytest.mark.parametrize("change", ["edit source", "new source file", "removed source file", "new recipe file",
                                    "lockfile", "deleted output", "index rows"])
def test_every_change_that_could_alter_the_answer_is_seen(built, change: str) -> None:
    proj, _ = built
    assert probe(proj, "realise", "t")[0]
    if change == "edit source":
        (proj.root / "src/a/notes.txt").write_text("# another comment\n")
    elif change == "new source file":
        (proj.root / "src/a/new.txt").write_text("new\n")
    elif change == "removed source file":
        (proj.root / "src/a/notes.txt").unlink()
    elif change == "new recipe file":
        (proj.folder / "e.toml").write_text('name = "e"\nversion = "1"\n\n[build]\nbuilder = "shell"\nscript = "true"\n')
    elif change == "lockfile":
        with open(proj.lockfile, "a") as f:
            f.write("\n")
    elif change == "deleted output":
        st = sqlite3.connect(proj.store / "index.sqlite")
        (path,) = st.execute("SELECT path FROM entries WHERE name='b'").fetchone()
        st.close()
        # A directory moves to another parent only if writable (its `..` changes): entries are not.
        (proj.store / path).chmod(0o755)
        os.rename(proj.store / path, proj.store / "tmp" / "moved-away")
    elif change == "index rows":
        # The entry stays on disk but the index no longer has it: only the index can say so.
        st = sqlite3.connect(proj.store / "index.sqlite")
        with st:
            st.execute("DELETE FROM entries WHERE name='c'")
        st.close()
    assert not probe(proj, "realise", "t")[0]


def test_an_unrelated_commit_to_the_index_keeps_the_noop(built, tmp_path: Path) -> None:
    """Another set realised into the same store changes the index; the cached answer is then
    checked against it once and stays a no-op."""
    proj, _ = built
    other = Project.diamond(tmp_path / "other")
    other.store = proj.store
    (other.folder / "d.toml").write_text((other.folder / "d.toml").read_text().replace("1.0", "2.0"))
    other.lock()
    assert planner(other, "realise", "t").returncode == 0
    assert probe(proj, "realise", "t")[0]
    assert probe(proj, "realise", "t")[0]


VERIFY_PROBE = """
import sys
from planner.entry import answer_store_verify
ok = answer_store_verify(sys.argv[1:])
print("OK" if ok else "FALLBACK", "click" in sys.modules, "attrs" in sys.modules, file=sys.stderr)
"""


def test_store_verify_of_a_sound_store_needs_no_command_line(built) -> None:
    proj, _ = built
    p = subprocess.run([sys.executable, "-c", VERIFY_PROBE, "--store", str(proj.store), "store", "verify"],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout == "store ok\n"
    assert p.stderr.strip().splitlines()[-1] == "OK False False"
    assert planner(proj, "store", "verify").stdout == "store ok\n"


def test_store_verify_of_a_damaged_store_reports_through_the_command_line(built) -> None:
    proj, _ = built
    st = sqlite3.connect(proj.store / "index.sqlite")
    (path,) = st.execute("SELECT path FROM entries WHERE name='b'").fetchone()
    st.close()
    f = proj.store / path / "b.txt"
    os.chmod(f.parent, 0o755)
    os.chmod(f, 0o644)
    f.write_text(f.read_text().upper())
    res = planner(proj, "store", "verify")
    assert res.returncode != 0
    assert f"corrupt: {path}: content hashes to" in res.stdout
    assert res.stderr.startswith("planner: error: ") and ": 1 corrupt entry: `planner store verify --repair`" in res.stderr


def test_store_repair_keeps_a_healthy_index_and_registers_only_what_it_lacks(built) -> None:
    """`store repair` of a healthy index neither moves it aside (as if damaged) nor forgets what
    it records (how each entry was made, the runs): it registers only an entry on disk that it
    lacks (here: one whose row was lost), as `recovered`."""
    proj, _ = built
    index = proj.store / "index.sqlite"
    st = sqlite3.connect(index)
    before = dict(st.execute("SELECT path, kind FROM entries").fetchall())
    runs = st.execute("SELECT count(*) FROM runs").fetchone()[0]
    (lost,) = st.execute("SELECT path FROM entries WHERE name='b'").fetchone()
    st.execute("DELETE FROM entries WHERE path = ?", (lost,))
    st.commit()
    st.close()
    inode = index.stat().st_ino

    res = planner(proj, "store", "repair")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "index healthy: kept; 1 entry registered from disk\n"
    assert index.stat().st_ino == inode and not list(proj.store.glob("index.sqlite.damaged-*"))
    st = sqlite3.connect(index)
    after = dict(st.execute("SELECT path, kind FROM entries").fetchall())
    assert st.execute("SELECT count(*) FROM runs").fetchone()[0] == runs
    st.close()
    assert after == {**before, lost: "recovered"}, (before, after)
    assert planner(proj, "store", "repair").stdout == "index healthy: kept; 0 entries registered from disk\n"
    assert planner(proj, "store", "verify").stdout == "store ok\n"


def test_a_file_edited_during_the_realise_is_not_cached_as_built(tmp_path: Path) -> None:
    """The plan cache records each file's signature after the run: an edit made while the run
    was reading (here: when the first build starts) must not be recorded as what was built."""
    from planner.realise import RealiseOptions, realise

    proj = Project.diamond(tmp_path)
    proj.lock()
    edited = []

    def progress(kind: str, data) -> None:
        if not edited:
            (proj.root / "src/a/notes.txt").write_text("# edited while the realise ran\n")
            edited.append(kind)

    realise(proj.root, proj.set, proj.store, RealiseOptions(jobs=2), progress=progress)
    assert edited
    # The edit made the lock stale: a realise refuses it, so no cached answer may say otherwise.
    assert not probe(proj, "realise", "t")[0]
    assert planner(proj, "realise", "t").returncode != 0
    # Once nothing changes during it, a realise is cached as usual (a's input changed: it rebuilds).
    proj.lock()
    time.sleep(0.05)
    again = planner(proj, "realise", "t")
    assert again.returncode == 0 and "built" in again.stderr, again.stderr
    assert probe(proj, "realise", "t")[0]


HASH_PROBE = """
import sys
from planner.entry import answer_hash
ok = answer_hash(sys.argv[1:])
print("OK" if ok else "FALLBACK", "click" in sys.modules, "attrs" in sys.modules, file=sys.stderr)
"""


def test_planner_hash_is_answered_before_the_command_line_as_the_command_line_answers(tmp_path: Path) -> None:
    """`planner hash` of plain paths prints what the command line prints, without importing it;
    anything else (an option, a path pathlib would spell otherwise, a missing or special file)
    goes to the command line, which answers or reports it as before."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.txt").write_text("x\n")
    (tree / "big.bin").write_bytes(os.urandom(300 << 10))  # over the thread pool's threshold
    os.symlink("sub/x.txt", tree / "link")
    os.mkfifo(tmp_path / "fifo")

    def run(argv: list[str], code: str | None = None) -> subprocess.CompletedProcess:
        pre = [sys.executable, "-c", code] if code else [sys.executable, "-m", "planner.cli"]
        return subprocess.run(pre + argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    for argv in (["hash", "tree"], ["hash", str(tree), "tree/big.bin", "tree/link"], ["--root", ".", "hash", "tree"]):
        fast = run(argv, HASH_PROBE)
        assert fast.stderr.strip().splitlines()[-1] == "OK False False", fast.stderr
        full = run(argv)
        assert full.returncode == 0 and fast.stdout == full.stdout and fast.stdout.count("blake3:") == len(argv) - 1 - (
            2 if argv[0] == "--root" else 0)
    for argv in (["hash", "tree/"], ["hash", "./tree"], ["hash", "--sha256", "tree/big.bin"], ["hash", "nosuch"],
                 ["hash", "fifo"], ["hash"], ["hash", "--help"]):
        fast = run(argv, HASH_PROBE)
        assert fast.stdout == "" and fast.stderr.strip().splitlines()[-1].startswith("FALLBACK"), (argv, fast.stderr)
    # What the command line says of those, through the `planner` entry point.
    entry = [sys.executable, "-m", "planner.entry"]
    assert subprocess.run(entry + ["hash", "tree/"], capture_output=True, text=True, cwd=tmp_path).stdout == \
        run(["hash", "tree"]).stdout
    bad = subprocess.run(entry + ["hash", "fifo"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and bad.stderr.startswith("planner: error: ") and bad.stdout == ""


def test_another_install_of_the_same_version_is_not_answered_from_this_ones_cache(built, tmp_path: Path) -> None:
    """Two checkouts of one version sharing a store watch different sources: the second's
    realise must not take the first's cached answer (a patched checkout would be told that its
    change rebuilt nothing); its own answer is cached for it in turn."""
    proj, _ = built
    other = tmp_path / "other-checkout"
    other.mkdir()
    subprocess.run(["cp", "-a", str(REPO / "planner"), str(other / "planner")], check=True)
    env = dict(os.environ, PYTHONPATH=str(other))
    probe_other = [sys.executable, "-c", PROBE, "--root", str(proj.root), "--store", str(proj.store), "realise", "t"]
    assert probe(proj, "realise", "t")[0]  # this install's own answer
    first = subprocess.run(probe_other, capture_output=True, text=True, cwd=proj.root, env=env, timeout=60)
    assert first.returncode == 0 and first.stderr.strip().splitlines()[-1].startswith("MISS"), first.stderr
    full = subprocess.run([sys.executable, "-m", "planner.entry", "--root", str(proj.root), "--store", str(proj.store),
                           "realise", "t"], capture_output=True, text=True, cwd=proj.root, env=env, timeout=120)
    assert full.returncode == 0, full.stderr
    again = subprocess.run(probe_other, capture_output=True, text=True, cwd=proj.root, env=env, timeout=60)
    assert again.stderr.strip().splitlines()[-1].startswith("HIT"), again.stderr
