"""nvcc's wrapper (planner/builders/pidns.py) in a real bubblewrap sandbox, as builds run: the
program is process 1 of its own PID namespace, has an empty temporary folder of its own at one
fixed path (and still sees the sandbox's /tmp), keeps the build's uid, and its exit status (or
the signal that killed it) is the wrapper's. Wrapped in place (`wrap_in_place`, as the runtime
does it), the program is reached that way by every path to it, and runs from its own path;
where the sandbox refuses namespaces, the probe says why and nothing changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from planner.builders import pidns

PKG = Path(pidns.__file__).parent

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def _sandboxed(work: Path, script: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `script` (Python) as the sandbox's build user, with pidns importable and /work writable."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
           "--uid", "1000", "--gid", "1000", *options, "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            cmd += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            cmd += ["--ro-bind", f"/{link}", f"/{link}"]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind", str(PKG), "/lib-pidns",
            "--bind", str(work), "/work", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "TMPDIR", "/work",
            "--chdir", "/work", "--", "/usr/bin/python3", "-I", "-c",
            "import sys; sys.path.insert(0, '/lib-pidns'); import pidns\n" + script]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


_WRAP = """
import os, subprocess
open('/work/w', 'w').write(pidns.wrapper_script('/bin/sh', sys.executable, '/work/ntmp'))
os.chmod('/work/w', 0o755)
open('/tmp/outer-file', 'w').close()
os.makedirs('/work/ntmp', exist_ok=True)
open('/work/ntmp/outer-file', 'w').close()
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    tmp_path.chmod(0o777)  # the sandbox's uid 1000 is not this test's
    return tmp_path


def test_program_runs_as_process_one_with_its_own_tmp(work):
    r = _sandboxed(work, _WRAP + """
print(pidns.works('/work/ntmp'), flush=True)
print(subprocess.run(['/work/w', '-c', 'echo $$ $TMPDIR $(ls -A $TMPDIR | wc -l) $(ls /tmp) $(id -u) $(id -g); touch /work/made; exit 7']).returncode)
""")
    assert r.returncode == 0, r.stderr
    # Process 1; TMPDIR is the fixed folder, empty for it (the folder beneath holds a file);
    # the sandbox's /tmp is still there; the build's ids; the exit status passed through.
    assert r.stdout.split("\n")[:3] == ["None", "1 /work/ntmp 0 outer-file 1000 1000", "7"], r.stdout
    assert (work / "ntmp" / "outer-file").exists()
    assert (work / "made").stat().st_uid == (work / "w").stat().st_uid


def test_side_by_side_runs_see_the_same_pid_and_names(work):
    """What nvcc does: take the first free `tmpxft_<pid>_<n>` name in $TMPDIR. Three at once, each
    takes the same name; they would not in one shared folder."""
    probe = ('n=0; while [ -e $TMPDIR/t_$$_$n ]; do n=$((n+1)); done; touch $TMPDIR/t_$$_$n; sleep 0.3; '
             'echo t_$$_$n > /work/name-$1')
    r = _sandboxed(work, _WRAP + f"""
ps = [subprocess.Popen(['/work/w', '-c', {probe!r}, 'sh', str(i)]) for i in range(3)]
print([p.wait() for p in ps])
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[0, 0, 0]"
    assert [(work / f"name-{i}").read_text().strip() for i in range(3)] == ["t_1_0"] * 3


def test_a_killed_program_kills_the_wrapper_with_its_signal(work):
    """A fault's SIGSEGV (what kills a crashing compiler; process 1 of a namespace is spared only
    the signals sent to it from inside)."""
    r = _sandboxed(work, """
import os, subprocess
open('/work/w', 'w').write(pidns.wrapper_script(sys.executable, sys.executable, '/work/ntmp'))
os.chmod('/work/w', 0o755)
print(subprocess.run(['/work/w', '-c', 'import ctypes; ctypes.string_at(0)']).returncode)
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "-11"


def test_terminating_the_wrapper_stops_the_program(work):
    """Process 1 ignores a signal it has no handler for: the wrapper passes a SIGTERM on as a kill."""
    r = _sandboxed(work, _WRAP + """
import signal, time
p = subprocess.Popen(['/work/w', '-c', 'touch /work/started; sleep 60; touch /work/survived'])
while not os.path.exists('/work/started'):
    time.sleep(0.05)
p.send_signal(signal.SIGTERM)
print(p.wait(timeout=30))
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "-9"  # the program was killed, and the wrapper with its signal
    assert not (work / "survived").exists()


def test_a_missing_program_fails_with_127(work):
    r = _sandboxed(work, """
import os, subprocess
open('/work/w', 'w').write(pidns.wrapper_script('/no/such/nvcc', sys.executable, '/work/ntmp'))
os.chmod('/work/w', 0o755)
print(subprocess.run(['/work/w', '--version']).returncode)
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "127"


def test_wrapper_is_self_contained():
    """The wrapper carries the module's text: no import of planner inside the sandbox."""
    text = pidns.wrapper_script("/usr/local/cuda/bin/nvcc", "/usr/bin/python3", "/build/nvcc-wrapper/tmp")
    assert text.startswith("#!/usr/bin/python3 -IS\n")
    assert "import planner" not in text and "from planner" not in text
    compile(text, "nvcc", "exec")
    assert text.rstrip().endswith("exec_as_process_one(['/usr/local/cuda/bin/nvcc', *sys.argv[1:]], '/build/nvcc-wrapper/tmp')")



# What nvcc does, as a script: take the first free `tmpxft_<pid>_<n>`-style name in $TMPDIR and
# say which name, pid, uid and own path it had.
_NVCC = """#!/bin/sh
n=0; while [ -e "$TMPDIR/t_$$_$n" ]; do n=$((n+1)); done; touch "$TMPDIR/t_$$_$n"; sleep 0.3
echo "t_$$_$n $(id -u) $0" > "/work/out-$1"
"""


@pytest.fixture
def toolkit(tmp_path_factory) -> Path:
    """A read-only `bin/nvcc` (the script above), with a symbolic link to it elsewhere."""
    root = tmp_path_factory.mktemp("toolkit")
    (root / "bin").mkdir()
    (root / "bin" / "nvcc").write_text(_NVCC)
    (root / "bin" / "nvcc").chmod(0o755)
    (root / "cuda").symlink_to("bin")
    return root


_STARTS = ("import subprocess\n"
           "ps = [subprocess.Popen(argv, env={'PATH': '/tc/cuda:/usr/bin:/bin', 'TMPDIR': '/tmp'}) for argv in\n"
           "      (['/tc/bin/nvcc', 'full'], ['/tc/cuda/nvcc', 'link'], ['nvcc', 'path'],\n"
           "       ['/bin/sh', '-c', 'exec /tc/bin/nvcc \"$0\"', 'shell'])]\n"
           "print([p.wait() for p in ps], flush=True)\n")


def test_a_program_wrapped_in_place_runs_as_process_one_however_it_is_started(work, toolkit):
    """`wrap_in_place` as the runtime calls it: four starts at once, by full path, through a link,
    through PATH and from a shell, each see pid 1, an empty folder of their own and their own
    path; the program's file outside the sandbox is untouched."""
    before = (toolkit / "bin" / "nvcc").read_bytes()
    r = _sandboxed(work, "print(pidns.wrap_in_place(['/tc/bin/nvcc'], '/work/nw', sys.executable, '/work/nw/tmp'), flush=True)\n"
                   + _STARTS, ("--ro-bind", str(toolkit), "/tc"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["None", "[0, 0, 0, 0]"], (r.stdout, r.stderr)
    for how in ("full", "link", "path", "shell"):
        assert (work / f"out-{how}").read_text().split() == ["t_1_0", "1000", "/tc/bin/nvcc"], how
    assert (work / "out-full").stat().st_uid == (work / "nw").stat().st_uid
    assert (toolkit / "bin" / "nvcc").read_bytes() == before


def test_without_namespaces_the_program_runs_unwrapped_and_says_why(work, toolkit):
    """A sandbox that allows no further user namespaces: the probe fails in a child, nothing is
    put in place, and the program still runs (not as process 1)."""
    r = _sandboxed(work, "print(pidns.wrap_in_place(['/tc/bin/nvcc'], '/work/nw', sys.executable, '/work/nw/tmp'), flush=True)\n"
                   + _STARTS, ("--unshare-user", "--disable-userns", "--ro-bind", str(toolkit), "/tc"))
    _refused_and_unwrapped(work, r, "unshare: ")


def _refused_and_unwrapped(work: Path, r: subprocess.CompletedProcess, said: str) -> None:
    """The probe's first line starts with `said`, and the four starts ran, none as process 1."""
    assert r.returncode == 0, r.stderr
    problem, statuses = r.stdout.splitlines()
    assert problem.startswith(said), problem
    assert statuses == "[0, 0, 0, 0]"
    names = [(work / f"out-{how}").read_text().split()[0] for how in ("full", "link", "path", "shell")]
    assert not any(name.startswith("t_1_") for name in names), names


# The native helper (builders/pid1.c) that emulated builds use, in the same sandbox: the same
# namespaces, the same promises, without the runtime's Python.

@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    from planner import pid1

    try:
        return pid1.compiled(tmp_path_factory.mktemp("pid1"))
    except pid1.HelperUnavailable as exc:
        pytest.skip(str(exc))


def _placed(script: str) -> str:
    """Python that probes, then runs `script` (Python) with /tc/bin/nvcc wrapped by the helper."""
    return ("import subprocess\n"
            "probe = subprocess.run(['/helper/pid1', 'probe', '/work/nw', '/work/nw/tmp', '/tc/bin/nvcc'],\n"
            "                       capture_output=True, text=True)\n"
            "print(probe.returncode, probe.stderr.strip(), flush=True)\n"
            "if probe.returncode == 0:\n"
            "    subprocess.run(['/helper/pid1', 'place', '/work/nw', '/work/nw/tmp', '/tc/bin/nvcc', '--',\n"
            f"                    sys.executable, '-I', '-c', {script!r}], check=True)\n"
            "else:\n"
            f"    exec({script!r})\n")


def test_the_native_helper_wraps_in_place_however_the_program_is_started(work, toolkit, native):
    before = (toolkit / "bin" / "nvcc").read_bytes()
    r = _sandboxed(work, _placed(_STARTS), ("--ro-bind", str(toolkit), "/tc", "--ro-bind", str(native), "/helper/pid1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["0 ", "[0, 0, 0, 0]"], (r.stdout, r.stderr)
    for how in ("full", "link", "path", "shell"):
        assert (work / f"out-{how}").read_text().split() == ["t_1_0", "1000", "/tc/bin/nvcc"], how
    assert (toolkit / "bin" / "nvcc").read_bytes() == before


def test_the_native_helper_says_why_where_namespaces_are_refused(work, toolkit, native):
    r = _sandboxed(work, _placed(_STARTS), ("--unshare-user", "--disable-userns", "--ro-bind", str(toolkit), "/tc",
                                            "--ro-bind", str(native), "/helper/pid1"))
    _refused_and_unwrapped(work, r, "3 unshare: ")


@pytest.mark.parametrize("body, status", [
    ("import ctypes; ctypes.string_at(0)", -11),  # a crash: the wrapper dies of the same signal
    ("import sys; sys.exit(7)", 7),
])
def test_the_native_helper_passes_on_the_programs_end(work, tmp_path, native, body, status):
    tc = tmp_path / "tc"
    (tc / "bin").mkdir(parents=True)
    (tc / "bin" / "nvcc").write_text(f"#!/usr/bin/python3\n{body}\n")
    (tc / "bin" / "nvcc").chmod(0o755)
    r = _sandboxed(work, _placed("import subprocess; print(subprocess.run(['/tc/bin/nvcc']).returncode)"),
                   ("--ro-bind", str(tc), "/tc", "--ro-bind", str(native), "/helper/pid1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["0 ", str(status)], (r.stdout, r.stderr)


def test_the_native_helper_stops_the_program_when_terminated(work, tmp_path, native):
    """Process 1 ignores a signal it has no handler for: the helper passes a SIGTERM on as a kill."""
    tc = tmp_path / "tc"
    (tc / "bin").mkdir(parents=True)
    (tc / "bin" / "nvcc").write_text("#!/bin/sh\ntouch /work/started; sleep 60; touch /work/survived\n")
    (tc / "bin" / "nvcc").chmod(0o755)
    script = ("import os, signal, subprocess, time\n"
              "p = subprocess.Popen(['/tc/bin/nvcc'])\n"
              "while not os.path.exists('/work/started'):\n"
              "    time.sleep(0.05)\n"
              "p.send_signal(signal.SIGTERM)\n"
              "print(p.wait(timeout=30))\n")
    r = _sandboxed(work, _placed(script), ("--ro-bind", str(tc), "/tc", "--ro-bind", str(native), "/helper/pid1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["0 ", "-9"], (r.stdout, r.stderr)
    assert not (work / "survived").exists()


@pytest.mark.parametrize("cc", ["false", "/no/such/cc"])
def test_a_helper_that_cannot_be_compiled_is_one_clear_reason_and_no_file(tmp_path, monkeypatch, cc):
    from planner import pid1

    monkeypatch.setenv("CC", cc)
    with pytest.raises(pid1.HelperUnavailable, match="pid1.c"):
        pid1.compiled(tmp_path)
    assert list(tmp_path.iterdir()) == []
