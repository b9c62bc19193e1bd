"""Row 5, tampering: a flipped byte in a store entry, a pin edited by hand in the lockfile, a patch or
a path source changed after locking. Each is detected, named and refused.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from planner.resolve import fixed_key
from tests.support.http_server import LoopbackServer
from tests.support.project import Project

from .support import (assert_clean_error, assert_store_sound, cli, deterministic_bytes, entries, rmtree,
                      shell_recipe, tmp_leftovers)

ROW = "5. Tampering"

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

BLOB = deterministic_bytes(50_000, seed=5)
PATCH = "--- a/f.txt\n+++ b/f.txt\n@@ -1 +1 @@\n-hello\n+howdy\n"


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as srv:
        srv.add("/blob.bin", BLOB)
        yield srv


def _project(tmp_path: Path, server: LoopbackServer) -> Project:
    """x: a path source with a local patch, and a url input; y depends on x."""
    proj = Project.empty(tmp_path, target="y")
    proj.source_file("src/x/f.txt", "hello\n")
    proj.source_file("patches/t/fix.patch", PATCH)
    proj.write_raw("x", shell_recipe("x", "cp f.txt $out/\ncp /inputs/blob/blob.bin $out/",
                                     source={"kind": "path", "path": "src/x"}, patches=["patches/t/fix.patch"],
                                     inputs={"blob": {"kind": "url", "url": server.url("/blob.bin")}}))
    proj.write_raw("y", shell_recipe("y", "cat /deps/x/f.txt > $out/y.txt", deps=["x"]))
    proj.lock()
    return proj


def _flip_byte(path: Path) -> None:
    mode = path.stat().st_mode
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.chmod(path, mode)


def test_flipped_byte_in_store_entries_is_named(tmp_path: Path, server: LoopbackServer, figure: dict) -> None:
    """A flipped byte in a build output and in a fetched input: `store verify` names both; `realise --check` refuses."""
    proj = _project(tmp_path, server)
    ok = cli(proj, "realise", proj.set, "--json", "-j", "1")
    assert ok.returncode == 0, ok.stderr
    x = next(Path(n["path"]) for n in ok.json()["nodes"] if n["id"] == "x")
    fixed = [proj.store / e[0] for e in entries(proj.store) if e[3] == "fixed" and e[0].endswith("blob.bin")]
    assert len(fixed) == 1
    _flip_byte(x / "f.txt")
    _flip_byte(fixed[0])
    v = cli(proj, "store", "verify")
    line = assert_clean_error(v, names=["2 corrupt entries"])
    corrupt = sorted(l.split(":")[1].strip() for l in v.stdout.splitlines() if l.startswith("corrupt: "))
    assert corrupt == sorted([x.name, fixed[0].name]), v.stdout
    check = cli(proj, "realise", proj.set, "--check", "-j", "1")
    assert check.returncode != 0 and "Traceback" not in check.stderr
    assert re.search(r"check x: DIFFERS: .*f\.txt", check.stdout), check.stdout
    # --repair removes both (as nix-store --verify --repair): the next realise makes them again.
    repaired = cli(proj, "store", "verify", "--repair")
    assert repaired.returncode == 0, repaired.stderr
    removed = sorted(l.split()[1].rstrip(":") for l in repaired.stdout.splitlines() if l.startswith("removed "))
    assert removed == sorted([x.name, fixed[0].name]), repaired.stdout
    assert cli(proj, "store", "verify").stdout.strip() == "store ok"
    # (y is valid, so the set needs x no more; asked for, x is built again, its input fetched again.)
    again = cli(proj, "realise", proj.set, "--target", "x", "--json", "-j", "1")
    assert again.returncode == 0, again.stderr
    assert {n["id"]: n["action"] for n in again.json()["nodes"]}["x"] == "built", again.stdout
    assert cli(proj, "store", "verify").stdout.strip() == "store ok"
    figure["trials"] = 1
    figure["faults"] = "2 flipped bytes: one in a build output, one in a fetched input"
    figure["outcomes"] = (f"verify names both ({line}); `realise --check` reports `x: DIFFERS: f.txt`; "
                          "a plain realise trusts the store (by design, like Nix)")


def _edit_pin(lockfile: Path, field: str, new: str) -> str:
    text = lockfile.read_text()
    block = text[text.index('[inputs."x/blob"]'):]
    m = re.search(rf'^{field} = "([^"]+)"$', block, re.M)
    assert m, block
    old = m.group(1)
    lockfile.write_text(text.replace(f'{field} = "{old}"', f'{field} = "{new}"', 1))
    return old


@pytest.mark.parametrize("field,remove", [("tree", False), ("tree", True), ("sha256", True)],
                         ids=["tree-entry-present", "tree-entry-removed", "sha256-entry-removed"])
def test_hand_edited_pin_is_refused(tmp_path: Path, server: LoopbackServer, field: str, remove: bool,
                                    figure: dict) -> None:
    """A pin edited by hand in the lockfile: realise re-verifies the fetched bytes and refuses, naming the input."""
    proj = _project(tmp_path, server)
    if field == "tree":
        fake = "blake3:" + "ab" * 32
    else:
        fake = "cd" * 32
    old = _edit_pin(proj.lockfile, field, fake)
    store = proj.store
    if remove:
        rmtree(store)  # nothing cached: the fetch path must verify
    run = cli(proj, "realise", proj.set, "-j", "1")
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert "hash mismatch" in run.stderr and fake in run.stderr, run.stderr
    assert ("x/blob" in run.stderr) if field == "tree" else ("blob.bin" in run.stderr), run.stderr
    # Nothing stored under the forged pin; nothing half-made; nothing built.
    if field == "tree":
        assert fixed_key(fake, False) not in [e[1] for e in entries(store)]
    assert not [e for e in entries(store) if e[3] == "build"]
    assert tmp_leftovers(store) == []
    assert_store_sound(proj, store)
    figure["trials"] = 1
    figure["faults"] = f"lockfile `{field}` of a url input replaced by hand" + ("; store emptied" if remove else "")
    figure["outcomes"] = "refused: " + next(l for l in run.stderr.splitlines() if "hash mismatch" in l)[:110]


def test_patch_or_source_changed_after_locking_is_refused(tmp_path: Path, server: LoopbackServer,
                                                          figure: dict) -> None:
    """A patch, or a path source, changed after locking: realise refuses naming it; `lock --check` names it."""
    proj = _project(tmp_path, server)
    assert cli(proj, "realise", proj.set, "-j", "1").returncode == 0
    patch = proj.root / "patches/t/fix.patch"
    patch.write_text(PATCH.replace("howdy", "pwned"))
    run = cli(proj, "realise", proj.set, "-j", "1")
    line = assert_clean_error(run, names=["patches/t/fix.patch", "changed since locking"])
    check = cli(proj, "lock", proj.set, "--check")
    assert check.returncode != 0 and "x/patch/fix.patch" in check.stderr and "patches/t/fix.patch" in check.stderr
    patch.write_text(PATCH)
    src = proj.root / "src/x/f.txt"
    src.write_text("hullo\n")
    run2 = cli(proj, "realise", proj.set, "-j", "1")
    line2 = assert_clean_error(run2, names=["src/x", "changed since locking"])
    figure["trials"] = 2
    figure["faults"] = "patch edited after locking; path source edited after locking"
    figure["outcomes"] = f"refused: `{line[:80]}…`; `{line2[:60]}…`; lock --check names both"


@pytest.mark.parametrize("what", ["patch", "recipe"])
def test_edit_with_mtime_preserved_is_noticed(tmp_path: Path, server: LoopbackServer, what: str,
                                              figure: dict) -> None:
    """A same-size edit with the mtime restored (touch -r) of a patch or a recipe: realise still notices it."""
    proj = _project(tmp_path, server)
    first = cli(proj, "realise", proj.set, "--json", "-j", "1")
    assert first.returncode == 0, first.stderr
    path = proj.root / "patches/t/fix.patch" if what == "patch" else proj.folder / "y.toml"
    old, new = ("howdy", "HOWDY") if what == "patch" else ("cat /deps/x/f.txt", "tac /deps/x/f.txt")
    text = path.read_text()
    assert old in text
    st = os.stat(path)
    with open(path, "r+") as f:  # in place: same inode, same size
        f.write(text.replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    run = cli(proj, "realise", proj.set, "--json", "-j", "1")
    figure["trials"] = 1
    figure["faults"] = f"{what} rewritten in place, same size, mtime restored"
    if what == "patch":
        figure["outcomes"] = (f"realise exit {run.returncode}"
                              + (" (answered from the plan cache)" if run.returncode == 0 else ""))
        assert_clean_error(run, names=["patches/t/fix.patch"])
    else:
        assert run.returncode == 0, run.stderr
        actions = {n["id"]: n["action"] for n in run.json()["nodes"]}
        figure["outcomes"] = f"realise: y {actions['y']}" + (" (stale plan cache)" if actions["y"] == "reused" else "")
        assert actions["y"] == "built"
