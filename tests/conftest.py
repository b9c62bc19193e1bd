"""Shared, session-scoped fixtures for the expensive real work (the demo realise, CUDA compiles)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support.cuda_wheels import cuobjdump, wheel_cache  # noqa: F401,E402  (session fixtures)

REPO = Path(__file__).resolve().parent.parent


def _bytecode_in_the_project() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for top in ("recipes", "patches", "lockfiles") for p in (REPO / top).rglob("__pycache__"))


@pytest.fixture(scope="session", autouse=True)
def project_sources_stay_clean():
    """No test may write into the project's recipe sources: a `__pycache__` left under
    recipes/demo/src changes a path input's tree hash, and every realise after it finds the lock
    stale (ignored by git, so nothing else notices)."""
    before = _bytecode_in_the_project()
    yield
    after = _bytecode_in_the_project()
    assert after == before, f"tests wrote bytecode into the project's sources: {sorted(set(after) - set(before))}"


def planner_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "planner.cli", *args]


def run_planner(*args: str, env: dict | None = None, check: bool = True, umask: int | None = None,
                prefix: list[str] = ()) -> subprocess.CompletedProcess:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([*prefix, *planner_cmd(*args)], capture_output=True, text=True, env=full_env,
                          preexec_fn=set_umask, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"planner {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`planner realise demo` twice, into two empty stores under different conditions."""
    base = tmp_path_factory.mktemp("demo")
    store_a = base / "store-a"
    store_b = base / "elsewhere" / "deeper" / "store-b"
    a = run_planner("--store", str(store_a), "realise", "demo", "-j", "2", "--json",
                    env={"TZ": "UTC", "PYTHONHASHSEED": "1"}, umask=0o022)
    # Shift the planner's clock by days, not years: its fetches still need valid TLS certificates.
    prefix = ["faketime", "-f", "+3d"] if shutil.which("faketime") else []
    b = run_planner("--store", str(store_b), "realise", "demo", "-j", "1", "--json",
                    env={"TZ": "Asia/Kolkata", "LC_ALL": "C", "LANG": "C", "PYTHONHASHSEED": "4242"},
                    umask=0o077, prefix=prefix)
    return {"a": json.loads(a.stdout), "b": json.loads(b.stdout), "store_a": store_a, "store_b": store_b,
            "faketime": bool(prefix)}


@pytest.fixture(scope="session")
def build_root_project(tmp_path_factory: pytest.TempPathFactory):
    """A test set whose shell and unpack nodes build in a real build root (tests/support/buildroot.py:
    54 pinned Debian 12 .debs), realised once per test session. Returns (project, realise JSON)."""
    from .support.buildroot import add_build_root
    from .support.project import Project

    proj = Project.empty(tmp_path_factory.mktemp("buildroot"), target="b")
    proj.source_file("src/a/data.txt", "alpha\n")
    proj.recipe("a", source="src/a", script="cat data.txt > $out/a.txt")
    # What the sandbox sees as /usr: the build root's, not this machine's (which has bwrap).
    proj.recipe("b", deps=["a"], script="test ! -e /usr/bin/bwrap && echo pinned-usr > $out/where.txt\n"
                                         "python3 -c 'import sys; print(sys.version.split()[0])' > $out/python.txt\n"
                                         "cat /deps/a/a.txt > $out/a.txt")
    add_build_root(proj, target="b")
    proj.lock()
    res = proj.cli("realise", "--json")
    assert res.returncode == 0, res.stderr
    return proj, res.json()
