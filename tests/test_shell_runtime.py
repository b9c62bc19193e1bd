"""A `shell` step runs its script without the Python runtime when there is nothing to unpack or
patch; its script must not be able to tell: same environment, process tree, descriptors,
directory and shell options as a step that went through the runtime. Real bubblewrap builds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from planner.store import Store
from tests.support.project import Project

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="needs bubblewrap")

FACTS = ("{ env | sort; echo \"pid $$ ppid $PPID\"; echo fds $(ls /proc/self/fd); "
         "id; pwd; umask; ulimit -a; trap -p; echo \"flags $-\"; shopt -p; set -o; "
         "cat /proc/self/status | grep -E '^(SigBlk|SigIgn|SigCgt|Cap|NoNewPrivs|Seccomp)'; } > $out/facts")


@pytest.mark.parametrize("sandbox", ["on", "off"])
def test_direct_shell_step_sees_what_the_runtime_gave_it(tmp_path: Path, sandbox: str) -> None:
    proj = Project.empty(tmp_path, target="top")
    proj.source_file("src/s/keep.txt", "x\n")
    proj.recipe("plain", script=FACTS)  # nothing to unpack: no Python in the sandbox
    proj.recipe("sourced", script=FACTS, source="src/s")  # the runtime copies the source first
    proj.recipe("top", deps=["plain", "sourced"], script="cat /deps/plain/facts > $out/facts")
    proj.lock()
    res = proj.cli("realise", "--json", "--sandbox", sandbox)
    assert res.returncode == 0, res.stderr
    paths = {n["id"]: Path(n["path"]) for n in res.json()["nodes"]}
    plain, sourced = (paths[n] / "facts" for n in ("plain", "sourced"))
    if sandbox == "off":  # real, per-build paths: compare with those named alike
        def same_named(text: str) -> list[str]:
            return [l for l in text.splitlines() if not ("/tmp/" in l or "/store/" in l or l.startswith("pid "))]

        assert same_named(plain.read_text()) == same_named(sourced.read_text())
    else:
        assert plain.read_text() == sourced.read_text()
        assert "pid 3 ppid 2" in plain.read_text()
    st = Store(proj.store)
    try:
        logs = {e.name: (proj.store / "logs" / f"{e.key}.log").read_text() for e in st.entries() if e.kind == "build"}
    finally:
        st.close()
    assert logs["plain"].splitlines()[0] == "+ bash -euo pipefail -c " + FACTS


def test_failing_direct_shell_step_names_its_status(tmp_path: Path) -> None:
    proj = Project.empty(tmp_path, target="bad")
    proj.recipe("bad", script="echo partial > $out/x; exit 7")
    proj.lock()
    res = proj.cli("realise")
    assert res.returncode == 1
    assert "bash exited with status 7" in res.stderr, res.stderr


def test_python_runtime_is_compiled_once_where_the_sandbox_reads_it(tmp_path: Path) -> None:
    import planner.builders.runtime as runtime

    cfile = Path(importlib.util.cache_from_source(runtime.__file__))
    if cfile.exists():
        cfile.unlink()
    proj = Project.empty(tmp_path, target="s")
    proj.source_file("src/s/a.txt", "a\n")
    proj.recipe("s", script="cp a.txt $out/", source="src/s")
    proj.lock()
    res = proj.cli("realise")
    assert res.returncode == 0, res.stderr
    assert cfile.exists()
    head = cfile.read_bytes()[:16]
    assert head[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(head[12:16], "little") == Path(runtime.__file__).stat().st_size
