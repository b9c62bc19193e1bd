"""An ordinary user runs the README's commands on a fresh store (issue 13, class 6).

Only root may rename a read-only directory into another parent (the rename rewrites its `..`):
a store that made an output read-only before moving it into place worked for root alone.
"""

from __future__ import annotations

import shutil
import subprocess

from tests.support.project import Project
from tests.support.users import chown_tree, prefix, python_for, require_unprivileged, scratch

ROW = "9. Ordinary user"

# Outputs an unprivileged store must take in and later delete: nested directories the build
# made read-only itself, a file-only output, a symlink, an executable.
_SCRIPTS = {
    "a": "cat data.txt > $out/a.txt; mkdir -p $out/ro/deeper; echo x > $out/ro/deeper/f; chmod -R a-w $out/ro",
    "b": "cat /deps/a/a.txt > $out/b.txt; ln -s b.txt $out/link; printf '#!/bin/sh\\n' > $out/run; chmod 0500 $out/run",
    "c": "cat /deps/a/a.txt > $out/c.txt; chmod 0500 $out",
}


def _digests(run_json: dict) -> dict[str, str]:
    return {n["id"]: n["digest"] for n in run_json["nodes"]}


def test_lock_realise_gc_verify_as_an_ordinary_user(figure):
    """lock, realise, no-op, rebuild, --check, verify, gc --dry-run and gc as an ordinary user on a fresh store; digests equal root's."""
    user = require_unprivileged()
    base = scratch(user)
    steps: list[str] = []
    try:
        proj = Project.diamond(base, scripts=_SCRIPTS)
        (base / "home").mkdir()
        chown_tree(base, user)

        def planner(*args: str) -> subprocess.CompletedProcess:
            argv = [*prefix(user, base / "home"), *python_for(user), "-m", "planner.cli",
                    "--root", str(proj.root), "--store", str(proj.store), *args]
            p = subprocess.run(argv, capture_output=True, text=True, cwd=str(proj.root), timeout=300)
            steps.append(f"{' '.join(args[:2])}: {p.returncode}")
            assert p.returncode == 0, f"planner {' '.join(args)} as {user.pw_name if user else 'self'}:\n{p.stderr}"
            return p

        import json

        planner("lock", "t")
        first = json.loads(planner("realise", "t", "--json", "--out-link", str(base / "result")).stdout)
        assert {n["action"] for n in first["nodes"]} == {"built"}
        noop = planner("realise", "t", "--json")
        assert _digests(json.loads(noop.stdout)) == _digests(first)
        (proj.root / "src/a/data.txt").write_text("beta\n")  # as root, readable by all
        planner("lock", "t")
        second = json.loads(planner("realise", "t", "--json").stdout)
        assert _digests(second) != _digests(first)
        planner("realise", "t", "--check")
        planner("store", "verify")
        planner("store", "gc")
        # The first run's outputs are gone only where nothing (the out-link) roots them.
        planner("store", "verify")
        again = json.loads(planner("realise", "t", "--json").stdout)
        assert {n["action"] for n in again["nodes"]} == {"reused"}

        # The same project realised by root (or the session's own user) gives the same bytes.
        theirs = base.parent / (base.name + "-self")
        shutil.copytree(proj.root, theirs / "proj")
        other = Project(root=theirs / "proj", store=theirs / "store")
        other.lock()
        mine = other.cli("realise", "--json")
        assert mine.returncode == 0, mine.stderr
        assert _digests(mine.json()) == _digests(second)
        figure.update(trials=len(steps), faults="6 nodes' outputs with read-only dirs, a 0500 output root, "
                      "links and executables; a rebuild; gc of the superseded entries",
                      outcomes=f"{len(steps)}/{len(steps)} commands succeeded as {user.pw_name if user else 'self'}; "
                               f"digests equal to root's: {len(_digests(second))}/{len(_digests(second))}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(base.parent / (base.name + "-self"), ignore_errors=True)
