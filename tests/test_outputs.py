"""What a build's output may hold, read on the host after the sandbox: a build is untrusted, so
its output is walked by descriptors and bounded, its wheels opened only as regular files below
it, and a refusal is one line naming the node, with nothing left in the store's tmp/ and the
store's gc still working (real builds in bubblewrap, a real in-tree PEP 517 backend)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.reliability.support import assert_one_failure
from tests.support.project import Project

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

LONG = "d" * 200


def _leftovers(proj: Project) -> list[str]:
    tmp = proj.store / "tmp"
    return sorted(p.name for p in tmp.iterdir() if not p.name.startswith(("etc-", "cpus-"))) if tmp.is_dir() else []


@pytest.mark.parametrize("script, says", [
    # 30 folders of 200-byte names (6 KB of path: more than PATH_MAX from the store's root)
    (f'cd $out; for i in $(seq 30); do mkdir {LONG}; cd {LONG}; done; echo x > f', "longer than 3072 bytes"),
    ('cd $out; for i in $(seq 300); do mkdir a; cd a; done; echo x > f', "deeper than 256 directories"),
    ('mkfifo $out/pipe', "a fifo"),
    ('python3 -c "import socket; socket.socket(socket.AF_UNIX).bind(\'$out/sock\')"', "a socket"),
], ids=["long-paths", "deep", "fifo", "socket"])
def test_an_output_the_store_cannot_hold_is_one_line_and_leaves_nothing(tmp_path: Path, script: str,
                                                                         says: str) -> None:
    proj = Project.empty(tmp_path, target="s")
    proj.recipe("s", script=script)
    proj.lock()
    line = assert_one_failure(proj.cli("realise"), names=["s:", says])
    assert len(line) < 400 and str(proj.store) not in line, line
    assert _leftovers(proj) == [], _leftovers(proj)
    assert not list(proj.store.glob("*-s-1.0")), "a partial entry"
    gc = proj.cli("store", "gc", set_arg=False)
    assert gc.returncode == 0, gc.stderr


_BACKEND = '''import os, zipfile
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "w-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        z.writestr("w/__init__.py", "")
        z.writestr("w-1.0.dist-info/METADATA", "Metadata-Version: 2.1\\nName: w\\nVersion: 1.0\\n")
        z.writestr("w-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n")
        z.writestr("w-1.0.dist-info/RECORD", "")
    extra = os.path.join(os.environ.get("out", "/build/out"), "aaa.whl")  # beside the wheel the builder copies
    kind = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mode")).read().strip()
    if kind == "fifo":
        os.mkfifo(extra)
    elif kind == "hostlink":
        os.symlink("/etc/passwd", extra)
    elif kind == "garbage":
        open(extra, "w").write("not a zip")
    return name
'''


@pytest.mark.parametrize("mode, says", [
    ("fifo", "/aaa.whl is not a regular file"),
    ("hostlink", "would read through the symlink /aaa.whl"),
    ("garbage", "aaa.whl is not a readable wheel"),
])
def test_a_wheel_builds_stray_whl_is_never_followed_or_waited_on(tmp_path: Path, mode: str, says: str) -> None:
    """A wheel build leaving a FIFO, a link to a host file or garbage named *.whl: refused in
    one line (before, the planner blocked forever on the FIFO, and read the host file)."""
    proj = Project.empty(tmp_path, target="w")
    src = proj.root / "src/w"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                        'backend-path = ["."]\n')
    (src / "backend.py").write_text(_BACKEND)
    (src / "mode").write_text(mode + "\n")
    proj.write_raw("w", 'name = "w"\nversion = "1.0"\n[source]\nkind = "path"\npath = "src/w"\n'
                        '[build]\nbuilder = "python-wheel"\n')
    proj.lock()
    line = assert_one_failure(proj.cli("realise", timeout=60), names=["w:", says])
    assert "root:" not in line, line  # nothing of /etc/passwd
    assert _leftovers(proj) == [], _leftovers(proj)
