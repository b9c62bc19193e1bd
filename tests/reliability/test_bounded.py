"""Bounded builds (issue 13, class 5): a build is held to its `[resources]` memory, /tmp size,
process count and time, as root and as an ordinary user; what the planner itself reads whole
into memory outside the sandbox is capped (a small wheel whose METADATA inflates to 64 MiB)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path

import attrs
import pytest

from tests.support.project import Project, Run
from tests.support.users import chown_tree, prefix, python_for, require_unprivileged, scratch

from .support import assert_one_failure, kill_group, procs_with, shell_recipe, wait_gone

ROW = "14. Bounded builds"


def test_inflating_metadata_is_refused(tmp_path: Path, figure: dict) -> None:
    """A wheel of a few hundred KiB whose METADATA inflates to 64 MiB, in an image layer group: refused in one line, not read whole."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("bomb-1.0.dist-info/METADATA", b"Name: bomb\nVersion: 1.0\n" + b"X" * (64 << 20))
        zf.writestr("bomb-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("bomb-1.0.dist-info/RECORD", "")
    proj = Project.empty(tmp_path, target="img")
    (proj.root / "src/w").mkdir(parents=True)
    (proj.root / "src/w/bomb-1.0-py3-none-any.whl").write_bytes(buf.getvalue())
    proj.recipe("w", source="src/w", script="cp bomb-1.0-py3-none-any.whl $out/")
    proj.write_raw("img", 'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n[image]\nlayers = [["w"]]\n')
    proj.lock()
    line = assert_one_failure(proj.cli("realise"), names=["bomb-1.0-py3-none-any.whl", "METADATA", "larger than"])
    assert "METADATA" in line or "RECORD" in line, line
    figure.update(trials=1, faults=f"a {len(buf.getvalue()) >> 10} KiB wheel whose METADATA inflates to 64 MiB",
                  outcomes=f"refused: {line[-100:]}")


# -- bounded builds: memory, processes, time, /tmp ----------------------------------------------

@attrs.frozen
class _Case:
    id: str
    script: str
    resources: str
    as_user: bool = False  # run lock and realise as the ordinary user planner-ci
    runtime: bool = False  # a path source, so the step runs under the Python runtime, not bash directly


def _sandboxed() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap")


class _Attempt:
    """One recipe `m` realised on a fresh store as root or as planner-ci; the host watches the
    build's processes (their command lines carry a marker) while it runs."""

    def __init__(self, case: _Case, tmp_path: Path) -> None:
        self.case = case
        self.user = require_unprivileged() if case.as_user else None
        self.base = scratch(self.user) if case.as_user else tmp_path / case.id
        self.base.mkdir(parents=True, exist_ok=True)
        self.marker = f"mark{uuid.uuid4().hex[:12]}"
        self.proj = Project.empty(self.base, target="m")
        src = None
        if case.runtime:
            (self.proj.root / "src/m").mkdir(parents=True)
            (self.proj.root / "src/m/README").write_text("m\n")
            src = {"kind": "path", "path": "src/m"}
        script = f": {self.marker}; {case.script.replace('MARK', self.marker)}"
        self.proj.write_raw("m", shell_recipe("m", script, source=src) + "\n[resources]\n" + case.resources + "\n")
        (self.base / "home").mkdir(exist_ok=True)
        if self.user is not None:
            chown_tree(self.base, self.user)
        self.peak = 0

    def planner(self, *args: str, watch: bool = False) -> Run:
        argv = [*prefix(self.user, self.base / "home"), *python_for(self.user), "-m", "planner.cli",
                "--root", str(self.proj.root), "--store", str(self.proj.store), *args]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=str(self.proj.root), start_new_session=True)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                self.peak = max(self.peak, _tasks(procs_with(self.marker)))
                time.sleep(0.05)

        t = threading.Thread(target=sample, daemon=True)
        if watch:
            t.start()
        try:
            out, err = p.communicate(timeout=240)  # a liveness bound: an unbounded build never ends
        except subprocess.TimeoutExpired:
            kill_group(p)
            raise AssertionError(f"planner {' '.join(args)} did not finish: the build was not bounded")
        finally:
            done.set()
        return Run(p.returncode, out, err)

    def realise(self) -> Run:
        locked = self.planner("lock", "t")
        assert locked.returncode == 0, locked.stderr
        return self.planner("realise", "t", watch=True)

    def store_entries(self) -> list:
        """The build's output entries (the locked source is an entry too, and stays)."""
        return sorted(p.name for p in self.proj.store.glob("*-m-1.0"))

    def close(self) -> None:
        wait_gone(self.marker)
        if self.case.as_user:
            shutil.rmtree(self.base, ignore_errors=True)


_HOST_USERNS = os.readlink("/proc/self/ns/user")


def _tasks(pids: list[int]) -> int:
    """Processes and their threads (what RLIMIT_NPROC and pids.max count), but not bubblewrap's
    own supervisor outside the sandbox: its command line holds the script (so the marker), yet it
    is the planner's, not the build's, and RLIMIT_NPROC inside the sandbox does not count it
    (counting it, an ordinary user's thread bomb showed 65 of 64)."""
    n = 0
    for pid in pids:
        try:
            if (os.readlink(f"/proc/{pid}/ns/user") == _HOST_USERNS
                    and Path(f"/proc/{pid}/comm").read_text().strip() == "bwrap"):
                continue
            n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return n


def _who(case: _Case) -> str:
    return "planner-ci" if case.as_user else ("root" if os.geteuid() == 0 else "self")


# A build allocating past `memory`: one process (bash running python, or the runtime's child),
# several processes that each stay under it (only a whole-build limit catches those, a cgroup),
# and as an ordinary user.
_MEMORY = [
    _Case("one-process-200MiB", 'python3 -c "x = bytearray(200 << 20)"; echo ok > $out/x', 'memory = "64MiB"'),
    _Case("one-process-under-the-runtime", 'python3 -c "x = bytearray(200 << 20)"; echo ok > $out/x',
          'memory = "64MiB"', runtime=True),
    _Case("growing-list", 'python3 -c "x = []\nwhile True: x.append(bytes(1 << 20))"; echo ok > $out/x',
          'memory = "96MiB"'),
    _Case("four-processes-of-40MiB",
          'for i in 1 2 3 4; do python3 -c "import time; x = bytearray(40 << 20); x[::4096] = bytes(len(x[::4096])); '
          'time.sleep(3)" & done; for j in $(jobs -p); do wait $j; done; echo ok > $out/x', 'memory = "64MiB"'),
    _Case("one-process-as-an-ordinary-user", 'python3 -c "x = bytearray(200 << 20)"; echo ok > $out/x',
          'memory = "64MiB"', as_user=True),
]


@pytest.mark.parametrize("case", _MEMORY, ids=[c.id for c in _MEMORY])
def test_memory_past_the_limit_fails_naming_it(case: _Case, tmp_path: Path, figure: dict) -> None:
    """A build allocating past its `[resources] memory`: one line naming the limit, nothing stored."""
    _sandboxed()
    from planner.limits import enforcement

    if case.id.startswith("four-") and enforcement().cgroup is None:
        pytest.skip(f"a whole-build memory limit needs a cgroup: {enforcement().why}")
    a = _Attempt(case, tmp_path)
    try:
        line = assert_one_failure(a.realise(), names=["m:", "[resources] memory = "])
        assert a.store_entries() == [], a.store_entries()
        out = a.planner("show", "m", "--set", "t").stdout
        limits = [ln for ln in out.splitlines() if ln.startswith("# limits (not part of the key): ")]
        assert len(limits) == 1, out
        shown = limits[0]
        assert shown.startswith("# limits (not part of the key): memory "), shown
        how = shown.split("enforced by ", 1)[1].split(":")[0]
    finally:
        a.close()
    figure.update(trials=1, faults=f"{case.id} as {_who(case)} ({case.resources}); enforced by {how}",
                  outcomes=f"refused: {line[len('planner: build failed: '):][:140]}")


_BOMBS = [
    _Case("bash-function-bomb", "b() { b | b & }; b; sleep 60", 'processes = 64\ntimeout = "8s"'),
    _Case("python-fork-loop", 'python3 -c "import os, time  # MARK\nwhile True: os.fork()"', 'processes = 64\ntimeout = "20s"'),
    _Case("threads", 'python3 -c "import threading, time  # MARK\nfor i in range(10000): threading.Thread(target=time.sleep, '
          'args=(30,), daemon=True).start()"', 'processes = 64\ntimeout = "20s"'),
    _Case("bash-bomb-as-an-ordinary-user", "b() { b | b & }; b; sleep 60", 'processes = 64\ntimeout = "8s"',
          as_user=True),
]


@pytest.mark.parametrize("case", _BOMBS, ids=[c.id for c in _BOMBS])
def test_fork_bomb_is_contained(case: _Case, tmp_path: Path, figure: dict) -> None:
    """A fork bomb (processes or threads): never more than `[resources] processes` at once, killed, one line, nothing left."""
    _sandboxed()
    from planner.limits import enforcement

    if enforcement().cgroup is None and os.geteuid() == 0 and not case.as_user:
        pytest.skip(f"root's builds need a pids cgroup (RLIMIT_NPROC does not apply to root): {enforcement().why}")
    a = _Attempt(case, tmp_path)
    try:
        line = assert_one_failure(a.realise(), names=["m:"])
        assert "[resources] processes = 64" in line or "timed out after" in line, line
        assert a.store_entries() == [], a.store_entries()
        # Every process of the bomb carries the marker; threads count as processes here too.
        assert a.peak <= 64, a.peak
    finally:
        a.close()
    figure.update(trials=1, faults=f"{case.id} as {_who(case)} ({case.resources.replace(chr(10), ', ')})",
                  outcomes=f"at most {a.peak} processes and threads seen from the host; {line[len('planner: build failed: '):][:110]}")


_SLEEPS = [
    _Case("sleep", "sleep 600; echo late > $out/x", 'timeout = "2s"'),
    _Case("half-written-output-then-sleep", "echo part > $out/a; sleep 600; echo rest > $out/b", 'timeout = "2s"'),
    _Case("detached-child-under-the-runtime", "setsid sleep 600 & sleep 600", 'timeout = "3s"', runtime=True),
    _Case("ignores-sigterm", "trap '' TERM; while :; do sleep 1; done", 'timeout = "2s"'),
    _Case("sleep-as-an-ordinary-user", "echo part > $out/a; sleep 600", 'timeout = "2s"', as_user=True),
]


@pytest.mark.parametrize("case", _SLEEPS, ids=[c.id for c in _SLEEPS])
def test_timeout_kills_the_whole_build(case: _Case, tmp_path: Path, figure: dict) -> None:
    """A build running past `[resources] timeout`: its whole process tree killed, one "timed out after N s" line, nothing stored."""
    _sandboxed()
    a = _Attempt(case, tmp_path)
    try:
        line = assert_one_failure(a.realise(), names=["m:", "timed out after", "[resources] timeout"])
        assert a.store_entries() == [], a.store_entries()
        leftovers = [p.name for p in (a.proj.store / "tmp").iterdir()] if (a.proj.store / "tmp").is_dir() else []
        assert not [n for n in leftovers if not n.startswith(("etc-", "cpus-"))], leftovers
        assert not procs_with(a.marker), "a build process outlived the timeout"
    finally:
        a.close()
    figure.update(trials=1, faults=f"{case.id} as {_who(case)} ({case.resources})",
                  outcomes=f"killed, no entry, no process left: {line[len('planner: build failed: '):][:80]}")


_FILLS = [
    _Case("tmp", "head -c 64M /dev/zero > /tmp/fill || true; du -k /tmp/fill | cut -f1 > $out/kib", 'tmp = "8MiB"'),
    _Case("dev-shm", "head -c 64M /dev/zero > /dev/shm/fill || true; du -k /dev/shm/fill | cut -f1 > $out/kib",
          'tmp = "8MiB"'),
    _Case("tmp-under-the-runtime", "head -c 64M /dev/zero > /tmp/fill || true; du -k /tmp/fill | cut -f1 > $out/kib",
          'tmp = "8MiB"', runtime=True),
    _Case("tmp-as-an-ordinary-user", "head -c 64M /dev/zero > /tmp/fill || true; du -k /tmp/fill | cut -f1 > $out/kib",
          'tmp = "8MiB"', as_user=True),
]


@pytest.mark.parametrize("case", _FILLS, ids=[c.id for c in _FILLS])
def test_tmp_fill_stops_at_the_bound(case: _Case, tmp_path: Path, figure: dict) -> None:
    """Filling the sandbox's /tmp or /dev/shm: the write stops at `[resources] tmp`; without `|| true` the build fails naming the disk."""
    _sandboxed()
    a = _Attempt(case, tmp_path)
    try:
        ok = a.realise()
        assert ok.returncode == 0, ok.stderr
        out = next(p for p in a.proj.store.iterdir() if p.name.endswith("-m-1.0"))
        kib = int((out / "kib").read_text())
        assert 0 < kib <= 8 * 1024, kib
        # The same fill with errors on: the build fails and its log says why.
        strict = case.script.replace(" || true", "")
        a.proj.write_raw("m", a.proj.folder.joinpath("m.toml").read_text().replace(case.script, strict))
        if a.user is not None:
            chown_tree(a.base, a.user)
        line = assert_one_failure(a.realise(), names=["m:", "[resources] tmp = 8MiB"])
        assert "No space left on device" in a.planner("log", "m", "--set", "t").stdout
    finally:
        a.close()
    figure.update(trials=2, faults=f"{case.id} as {_who(case)}: 64 MiB written into an 8 MiB bound",
                  outcomes=f"stopped at {kib} KiB; strict: {line[len('planner: build failed: '):][:110]}")


def test_limits_are_not_part_of_the_key(tmp_path: Path, figure: dict) -> None:
    """Changing memory, tmp, processes or timeout keeps the key and reuses the output (they cannot change a successful build's bytes); cores changes it."""
    _sandboxed()
    a = _Attempt(_Case("key", "echo ok > $out/x", 'memory = "256MiB"'), tmp_path)
    try:
        first = a.realise()
        assert first.returncode == 0, first.stderr

        def key() -> str:
            return a.planner("show", "m", "--set", "t").stdout.split("key ", 1)[1].split()[0]

        before = key()
        text = a.proj.folder.joinpath("m.toml").read_text()
        kept = []
        for res in ('memory = "512MiB"', 'tmp = "64MiB"', "processes = 100", 'timeout = "1h"'):
            a.proj.write_raw("m", text.replace('memory = "256MiB"', res))
            assert key() == before, res
            again = a.planner("realise", "t", "--json")
            assert again.returncode == 0 and {n["action"] for n in again.json()["nodes"]} <= {"reused", "cached"}, again.stdout
            kept.append(res.split()[0])
        a.proj.write_raw("m", text.replace('memory = "256MiB"', "cores = 2"))
        assert key() != before
    finally:
        a.close()
    figure.update(trials=5, faults="memory, tmp, processes, timeout changed one at a time; then cores",
                  outcomes=f"key kept and output reused for {', '.join(kept)}; cores changed the key")


# -- what the planner reads whole, in-process ---------------------------------------------------

def _wheel(files: dict[str, bytes], *, lie: str | None = None) -> bytes:
    """A small wheel; `lie` names a member whose central-directory size is rewritten to 100 bytes
    (it still inflates to its real size)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    raw = buf.getvalue()
    if lie is not None:
        eocd = raw.rindex(b"PK\x05\x06")
        at = int.from_bytes(raw[eocd + 16:eocd + 20], "little")  # the central directory
        while raw[at:at + 4] == b"PK\x01\x02":
            nlen, xlen, clen = (int.from_bytes(raw[at + o:at + o + 2], "little") for o in (28, 30, 32))
            if raw[at + 46:at + 46 + nlen] == lie.encode():
                raw = raw[:at + 24] + (100).to_bytes(4, "little") + raw[at + 28:]  # uncompressed size
                break
            at += 46 + nlen + xlen + clen
        else:
            raise AssertionError(f"{lie} not in the central directory")
    return raw


_BIG = b"X" * (64 << 20)
_WHEELS = {
    "RECORD-inflating-to-64MiB": {"bomb-1.0.dist-info/RECORD": _BIG},
    "WHEEL-inflating-to-64MiB": {"bomb-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n" + _BIG},
    "METADATA-with-a-lying-size": {"bomb-1.0.dist-info/METADATA": b"Name: bomb\nVersion: 1.0\n" + _BIG},
    "METADATA-of-17MiB": {"bomb-1.0.dist-info/METADATA": b"Name: bomb\nVersion: 1.0\n" + b"Y" * (17 << 20)},
}


@pytest.mark.parametrize("variant", list(_WHEELS))
def test_oversized_wheel_metadata_is_refused(variant: str, tmp_path: Path, figure: dict) -> None:
    """Wheels in an image layer whose .dist-info files inflate past 16 MiB (or lie about their size): refused in one line naming the wheel."""
    files = {"bomb-1.0.dist-info/METADATA": b"Name: bomb\nVersion: 1.0\n",
             "bomb-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             "bomb-1.0.dist-info/RECORD": b"", "bomb/__init__.py": b""}
    files.update(_WHEELS[variant])
    import base64
    import hashlib

    def rec(d: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()

    if "RECORD" not in variant:
        files["bomb-1.0.dist-info/RECORD"] = "".join(
            f"{n},{rec(d)},{len(d)}\n" for n, d in files.items() if not n.endswith("RECORD")).encode() + \
            b"bomb-1.0.dist-info/RECORD,,\n"
    data = _wheel(files, lie="bomb-1.0.dist-info/METADATA" if "lying" in variant else None)
    proj = Project.empty(tmp_path, target="img")
    (proj.root / "src/w").mkdir(parents=True)
    (proj.root / "src/w/bomb-1.0-py3-none-any.whl").write_bytes(data)
    proj.recipe("w", source="src/w", script="cp bomb-1.0-py3-none-any.whl $out/")
    proj.write_raw("img", 'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n[image]\nlayers = [["w"]]\n')
    proj.lock()
    line = assert_one_failure(proj.cli("realise"), names=["bomb-1.0-py3-none-any.whl"])
    # A member lying about its size is read only as far as it claims: then it fails its RECORD hash.
    assert any(w in line for w in ("larger than 16 MiB", "Bad CRC", "does not match", "hash")), line
    assert str(proj.store) not in line, line
    assert not list(proj.store.glob("*-img-1")), "an image was stored"
    figure.update(trials=1, faults=f"a {len(data) >> 10} KiB wheel: {variant}",
                  outcomes=f"refused: {line[len('planner: build failed: '):][:110]}")


def test_oversized_manifest_deb_control_and_build_json_are_refused(tmp_path: Path, figure: dict) -> None:
    """A registry manifest of 20 MiB (a loopback registry), a .deb whose control file inflates to 64 MiB, a build output's index.json of 20 MiB: one line each, none read whole."""
    from tests.support.http_server import LoopbackServer

    from planner.errors import PlannerError
    from planner.oci.rootfs import assemble_rootfs

    from .test_writers import _ar
    from .support import tarball

    outcomes = []
    # 1. A registry whose manifest is 20 MiB of JSON.
    with LoopbackServer() as server:
        server.add("/v2/", b"{}", content_type="application/json")
        big = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "annotations": {"x": "y" * (20 << 20)}}).encode()
        server.add("/v2/huge/manifests/v1", big, content_type="application/vnd.oci.image.manifest.v1+json")
        proj = Project.empty(tmp_path / "reg", target="pulled")
        ref = f"127.0.0.1:{server.port}/huge:v1"
        proj.write_raw("pulled", f'name = "pulled"\nversion = "1"\n[source]\nkind = "image"\nurl = "{ref}"\n'
                                 '[build]\nbuilder = "image-rootfs"\n')
        run = proj.cli("lock", env={"PLANNER_INSECURE_REGISTRIES": f"127.0.0.1:{server.port}"})
        line = assert_one_failure(run, names=["pulled", "manifest", "larger than 16 MiB"])
        outcomes.append(f"manifest: {line[len('planner: error: '):][:100]}")
    # 2. A .deb whose control file inflates to 64 MiB.
    control = b"Package: bomb\nVersion: 1.0\nArchitecture: amd64\nDescription: " + b"z" * (64 << 20) + b"\n"
    deb = tmp_path / "bomb.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.gz", tarball([("control", "file", control)])),
                         ("data.tar.gz", tarball([("./etc/x", "file", "x")]))]))
    with pytest.raises(PlannerError) as info:
        assemble_rootfs([deb], tmp_path / "root", arch="amd64")
    assert "larger than 16 MiB" in str(info.value) and "bomb.deb" in str(info.value), info.value
    outcomes.append(f"deb control: {str(info.value)[-90:]}")
    # 3. A build whose output is an index.json of 20 MiB: a shell build's output is no image,
    # so realise reads none of it (docs/reliability.md bug 49); the layout reader that gives an
    # image its digest reads a bounded amount all the same.
    proj = Project.empty(tmp_path / "out", target="j")
    proj.recipe("j", script='python3 -c "import sys; sys.stdout.write(\'{\\"manifests\\": [\' + \'0,\' * (10 << 20) + \'0]}\')" > $out/index.json')
    proj.lock()
    run = proj.cli("realise", "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["digest"] is None, run.stderr
    from planner.oci.layout import index_digest

    with pytest.raises(PlannerError) as info:
        index_digest(Path(json.loads(run.stdout)["output"]))
    line = info.value.line()
    assert "index.json" in line and "larger than 16 MiB" in line, line
    outcomes.append(f"index.json: {line[:80]}")
    figure.update(trials=3, faults="a 20 MiB registry manifest (loopback registry), a .deb control inflating to 64 MiB, "
                                   "a 20 MiB index.json in a build output", outcomes="; ".join(outcomes))


def test_a_kept_cgroup_holds_each_build_to_its_own_limits(tmp_path: Path, figure: dict) -> None:
    """A cgroup kept for the process's next build gets that build's limits and counters (an earlier build's OOM kill is not the next build's), and none outlives the process."""
    from planner import limits

    if limits.enforcement().cgroup is None:
        pytest.skip(f"no cgroups here: {limits.enforcement().why}")
    # Four processes of 40 MiB each: over 64 MiB only as a whole (the cgroup's limit, not an rlimit).
    four = ['/bin/sh', '-c', 'for i in 1 2 3 4; do python3 -c "import time; x = bytearray(40 << 20); '
            'x[::4096] = bytes(len(x[::4096])); time.sleep(1)" & pids="$pids $!"; done; s=0; for p in $pids; do '
            'wait $p || s=1; done; exit $s']
    small = limits.acquire(limits.Limits(memory=64 << 20))
    first = subprocess.run(small.wrap(four), capture_output=True)
    assert first.returncode != 0 and small.oom_killed(), first
    limits.release(small)
    deadline = time.monotonic() + 10
    while small.pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    big = limits.acquire(limits.Limits(memory=512 << 20))
    try:
        assert big is small, "an empty kept cgroup is used again"
        assert not big.oom_killed(), "the last build's OOM kill counted against this one"
        second = subprocess.run(big.wrap(four), capture_output=True)
        assert second.returncode == 0 and not big.oom_killed(), second
    finally:
        limits.release(big)
    dirs = list(big.dirs.values())
    limits.remove_idle()
    assert not [d for d in dirs if d.exists()], dirs

    # A planner process removes the cgroups it kept when it exits.
    made = subprocess.run([sys.executable, "-c", "from planner import limits\n"
                           "g = limits.acquire(limits.Limits(memory=64 << 20)); limits.release(g)\n"
                           "print('\\n'.join(map(str, g.dirs.values())))"], capture_output=True, text=True, check=True)
    left = [d for d in made.stdout.split() if Path(d).exists()]
    assert made.stdout.split() and not left, left
    figure.update(trials=3, faults="a build OOM-killed at 64 MiB, then one given 512 MiB in the same kept cgroup",
                  outcomes="the second ran with its own limit and counters; no cgroup left after exit")
