"""The lockfile is input, not trusted state (issue 13, class 3).

Editing a prebuilt wheel's `filename` to `../../../../tmp/X.whl` made `realise` write outside
the store while `lock --check` said up to date; pins were looked up by tree hash alone, so a
`tree` copied from another input built from the other bytes. Every pin field is validated like a
recipe's, and the store remembers what each fetched entry was verified against (sha256, commit,
digest), so `lock --check` and `realise` notice a pin that names another input's content.
"""

from __future__ import annotations

import tomllib
import uuid
from pathlib import Path

import pytest
import tomli_w

from tests.support.http_server import LoopbackServer
from tests.support.project import Project

from .support import assert_clean_error, assert_one_failure, cli, deterministic_bytes, rmtree, shell_recipe
from .test_writers import wheel_bytes

ROW = "12. Lockfile as input"
A, B = deterministic_bytes(30_000, seed=11), deterministic_bytes(30_000, seed=12)
WHEEL = wheel_bytes("evil", {"evil/__init__.py": b"x = 1\n"})


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as srv:
        srv.add("/a.bin", A, times=1000)
        srv.add("/b.bin", B, times=1000)
        srv.add("/evil-1.0-py3-none-any.whl", WHEEL, times=1000)
        yield srv


def _project(tmp_path: Path, server: LoopbackServer) -> Project:
    proj = Project.empty(tmp_path, target="top")
    proj.write_raw("x", shell_recipe("x", "cp /inputs/a/a.bin /inputs/b/b.bin $out/",
                                     inputs={"a": {"kind": "url", "url": server.url("/a.bin")},
                                             "b": {"kind": "url", "url": server.url("/b.bin")}}))
    proj.write_raw("w", 'name = "w"\nversion = "1"\n[inputs.wheel]\nkind = "url"\n'
                        f'url = "{server.url("/evil-1.0-py3-none-any.whl")}"\n[build]\nbuilder = "prebuilt-wheel"\n')
    proj.write_raw("top", shell_recipe("top", "cat /deps/x/a.bin /deps/w/*.whl > $out/all", deps=["x", "w"]))
    proj.lock()
    return proj


def _edit(proj: Project, entry: str, **fields) -> None:
    data = tomllib.loads(proj.lockfile.read_text())
    for k, v in fields.items():
        if v is None:
            data["inputs"][entry].pop(k, None)
        else:
            data["inputs"][entry][k] = v
    proj.lockfile.write_text(tomli_w.dumps(data))


def test_hand_edited_lock_fields_are_refused(tmp_path: Path, server: LoopbackServer, figure: dict) -> None:
    """Lock fields edited into paths, bad hashes or other schemes: `lock --check` and `realise` refuse in one line naming the lockfile entry; nothing is written outside the store."""
    escape = f"planner-escape-{uuid.uuid4().hex}.whl"
    cases = {
        "filename-climbing-out": ("w/wheel", {"filename": f"../../../../../../../../tmp/{escape}"}, "filename"),
        "filename-with-slash": ("w/wheel", {"filename": f"sub/{escape}"}, "filename"),
        "filename-dotdot": ("w/wheel", {"filename": ".."}, "filename"),
        "filename-empty": ("w/wheel", {"filename": ""}, "filename"),
        "filename-escape-sequence": ("w/wheel", {"filename": "evil-1.0-py3-none-any\x1b[31m.whl"}, "filename"),
        "filename-tab": ("w/wheel", {"filename": "evil-1.0\t-py3-none-any.whl"}, "filename"),
        "commit-not-a-commit": ("x/a", {"commit": "HEAD"}, "commit"),
        "digest-with-a-path": ("x/a", {"digest": "sha256:../../../etc/shadow"}, "digest"),
        "url-file-scheme": ("x/a", {"url": "file:///etc/shadow"}, "url"),
        "size-negative": ("x/a", {"size": -1}, "size"),
        "sha256-not-hex": ("x/a", {"sha256": "Z" * 64}, "sha256"),
        "tree-not-blake3": ("x/a", {"tree": "sha1:" + "0" * 40}, "tree"),
        "version-with-slash": ("x/a", {"version": "1/../../2"}, "version"),
        "platform-key-a-path": ("x/b", {"platforms": {"../../x": {"tree": "blake3:" + "0" * 64}}}, "platforms"),
        "size-not-a-files": ("x/a", {"size": 1 << 62}, "size"),
        "kind-unknown": ("x/a", {"kind": "bogus"}, "kind"),
        "platform-url-file-scheme": ("x/b", {"platforms": {"linux/amd64": {"tree": "blake3:" + "0" * 64,
                                                                         "url": "file:///dev/zero"}}}, "url"),
    }
    outcomes = []
    for name, (entry, fields, key) in cases.items():
        proj = _project(tmp_path / name, server)
        _edit(proj, entry, **fields)
        check = cli(proj, "lock", proj.set, "--check")
        line = assert_clean_error(check, names=["lockfiles/t.lock", entry, key])
        run = cli(proj, "realise", proj.set, "-j", "1")
        assert_clean_error(run, names=[entry, key])
        assert not Path("/tmp", escape).exists() and not (proj.store / escape).exists(), name
        outcomes.append(line)
    figure.update(trials=len(cases), faults=", ".join(cases),
                  outcomes=f"{len(outcomes)}/{len(cases)} refused by `lock --check` and by `realise` in one line "
                           f"naming the entry and field; files written outside the store: 0")


def test_pin_naming_another_inputs_content_is_noticed(tmp_path: Path, server: LoopbackServer, figure: dict) -> None:
    """A pin whose tree or sha256 was copied from another input: `lock --check` and `realise` name the edited input instead of building from the other bytes."""
    outcomes = []
    for name in ("tree-from-b", "sha256-from-b", "tree-from-b-store-emptied"):
        proj = _project(tmp_path / name, server)
        assert cli(proj, "realise", proj.set, "-j", "1").returncode == 0
        data = tomllib.loads(proj.lockfile.read_text())
        field = "sha256" if name.startswith("sha256") else "tree"
        _edit(proj, "x/a", **{field: data["inputs"]["x/b"][field]})
        if name.endswith("store-emptied"):
            rmtree(proj.store)  # its entries are read-only: an ordinary user cannot rmtree them
            run = cli(proj, "realise", proj.set, "-j", "1")
            assert run.returncode != 0 and "x/a" in run.stderr and "hash mismatch" in run.stderr, run.stderr
            outcomes.append(f"{name}: realise: hash mismatch naming x/a")
            continue
        check = cli(proj, "lock", proj.set, "--check")
        assert check.returncode != 0 and "edited: x/a" in check.stderr, check.stderr
        run = cli(proj, "realise", proj.set, "-j", "1")
        line = assert_one_failure(run, names=["x/a", "edited by hand"])
        outcomes.append(f"{name}: {line[-110:]}")
    figure.update(trials=3, faults="x/a's tree, then its sha256, set to x/b's (store holding both); tree set to "
                                   "x/b's with the store emptied",
                  outcomes=f"3/3 noticed naming x/a, nothing built from x/b's bytes")


def test_hand_edited_lock_ids_and_kinds_are_refused(tmp_path: Path, server: LoopbackServer) -> None:
    """An input id that is not `recipe/input` (a line break that would forge an error line, a NUL)
    is refused where the lock is read; a kind, set or pin that does not match the recipe is a
    stale entry for `lock --check` and `realise`, never used as it stands."""
    for name, edit, names in (
        ("id-newline", lambda d: d["inputs"].__setitem__("x/a\nplanner: error: forged", d["inputs"].pop("x/a")),
         ["lockfiles/t.lock", "inputs", "is not recipe/input"]),
        ("id-nul", lambda d: d["inputs"].__setitem__("x/a\0", d["inputs"].pop("x/a")),
         ["lockfiles/t.lock", "inputs", "is not recipe/input"]),
        ("kind-of-another", lambda d: d["inputs"]["x/a"].__setitem__("kind", "pypi"), ["x/a", "kind pypi"]),
        ("set-of-another", lambda d: d.__setitem__("set", "other"), ["set 'other'"]),
        ("sha256-removed", lambda d: d["inputs"]["x/a"].pop("sha256"), ["x/a", "no sha256"]),
    ):
        proj = _project(tmp_path / name, server)
        data = tomllib.loads(proj.lockfile.read_text())
        edit(data)
        proj.lockfile.write_text(tomli_w.dumps(data))
        check = cli(proj, "lock", proj.set, "--check")
        assert_clean_error(check)  # one error line (after the stale entries' lines, for a stale one)
        assert all(n in check.stderr for n in names), (names, check.stderr)
        assert not [ln for ln in check.stderr.splitlines() if ln.startswith("planner: error: forged")], check.stderr
        run = cli(proj, "realise", proj.set, "-j", "1")
        assert_clean_error(run)
        assert all(n in run.stderr for n in names), (names, run.stderr)
        assert not any(proj.store.glob("*-top-*")), name  # nothing was built from the edited lock
