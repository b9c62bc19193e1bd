"""Helpers for the reliability and security suite: trial counts, seeds, store checks, process
hunting, a size-limited tmpfs, an authenticated registry and hostile archives.

Trial counts: every randomised test has a small default so the whole suite stays well under two
minutes on a shared two-core machine. `PLANNER_RELIABILITY_TRIALS=N` raises them: the crash tests
run N kills each (use N >= 50 for the figures in docs/reliability.md), the others scale from it.
`PLANNER_RELIABILITY_SEED=S` replays a run; the seed in use is printed and recorded.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pytest

from tests.support.project import Project, Run

TRIALS_ENV = "PLANNER_RELIABILITY_TRIALS"
SEED_ENV = "PLANNER_RELIABILITY_SEED"
RELIABILITY_DIR = Path(__file__).resolve().parent


def heavy() -> int:
    """The trial count asked for with PLANNER_RELIABILITY_TRIALS (0 when not set)."""
    try:
        return max(0, int(os.environ.get(TRIALS_ENV, "0")))
    except ValueError:
        return 0


def trials(default: int, *, scale: float = 1.0, cap: Optional[int] = None) -> int:
    """`default` normally; with the env var set, max(default, N * scale), capped at `cap`."""
    n = heavy()
    if not n:
        return default
    out = max(default, int(n * scale))
    return min(out, cap) if cap else out


def seeded(test_name: str) -> tuple[random.Random, int]:
    """A random generator and its seed (from PLANNER_RELIABILITY_SEED or fresh); the seed is
    printed so a failing run can be replayed."""
    env = os.environ.get(SEED_ENV)
    seed = int(env) if env else random.SystemRandom().randrange(1, 2**31)
    print(f"[reliability] {test_name}: seed {seed} (replay with {SEED_ENV}={seed})")
    return random.Random(seed), seed


# -- the CLI -----------------------------------------------------------------------------------

def clean_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PLANNER_STORE", None)
    env.pop("PLANNER_MIRRORS", None)
    if extra:
        env.update(extra)
    return env


def popen(proj: Project, *args: str, env: Optional[dict[str, str]] = None, store: Optional[Path] = None,
          python_prelude: Optional[str] = None) -> subprocess.Popen:
    """Start a CLI command in its own session; `python_prelude` runs first in the same process
    (used to widen race windows or inject crashes deterministically)."""
    argv = proj.cli_argv(*args)
    if store is not None:
        argv[argv.index("--store") + 1] = str(store)
    if python_prelude is not None:
        code = python_prelude + "\nimport sys\nfrom planner.cli import main\nsys.argv = ['planner'] + sys.argv[1:]\nmain()\n"
        argv = [sys.executable, "-c", code, *argv[3:]]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(env), cwd=proj.root, start_new_session=True)


def cli(proj: Project, *args: str, store: Optional[Path] = None, env: Optional[dict[str, str]] = None,
        python_prelude: Optional[str] = None, timeout: float = 120) -> Run:
    p = popen(proj, *args, env=env, store=store, python_prelude=python_prelude)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        out, err = p.communicate()
        raise AssertionError(f"planner {' '.join(args)} did not finish in {timeout}s:\n{out}\n{err}")
    return Run(p.returncode, out, err)


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL a process we started and everything in its session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, 9)
    with contextlib.suppress(Exception):
        p.wait(timeout=10)


def error_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith("planner: error: ")]


def assert_clean_error(run: Run, *, names: Iterable[str] = ()) -> str:
    """A failed command: non-zero exit, no traceback, exactly one `planner: error:` line, which
    names everything in `names`. Returns that line."""
    assert run.returncode != 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errs = error_lines(run.stderr)
    assert len(errs) == 1, run.stderr
    for n in names:
        assert n in errs[0], (n, errs[0])
    return errs[0]


def assert_one_failure(run: Run, *, names: Iterable[str] = ()) -> str:
    """Like `assert_clean_error`, for a build that fails: one `planner: error:` or `planner: build
    failed:` line (a build failure may add its log path and log tail below it; the tail is the
    build's own output and may hold the build's tracebacks, never the planner's)."""
    assert run.returncode != 0, run.stdout + run.stderr
    assert "Traceback" not in "\n".join(l for l in run.stderr.splitlines() if not l.startswith("  | ")), run.stderr
    lines = [l for l in run.stderr.splitlines() if l.startswith(("planner: error: ", "planner: build failed: "))]
    assert len(lines) == 1, run.stderr
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# -- store checks ------------------------------------------------------------------------------

def integrity(store: Path) -> list[tuple]:
    """PRAGMA integrity_check of the store's sqlite index."""
    db = sqlite3.connect(store / "index.sqlite", timeout=30)
    try:
        return db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()


def rows(store: Path, sql: str, args: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(store / "index.sqlite", timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def entries(store: Path) -> list[tuple[str, str, str, str]]:
    """(path, key, digest, kind) of every registered entry."""
    if not (store / "index.sqlite").exists():
        return []
    # A kill between sqlite creating the file and the planner creating its tables leaves an
    # empty index: a store with no entries (the next Store() creates the schema).
    if not rows(store, "SELECT name FROM sqlite_master WHERE type='table' AND name='entries'"):
        return []
    return rows(store, "SELECT path, key, digest, kind FROM entries ORDER BY path")


def assert_store_sound(proj: Project, store: Optional[Path] = None) -> None:
    """`planner store verify` passes and the sqlite index is not corrupt."""
    store = store or proj.store
    if not (store / "index.sqlite").exists():
        return
    v = cli(proj, "store", "verify", store=store)
    assert v.returncode == 0 and "store ok" in v.stdout, v.stdout + v.stderr
    assert integrity(store) == [("ok",)]


def tmp_leftovers(store: Path) -> list[str]:
    """What a build left in the store's tmp/, except the sandbox's shared read-only files
    (its /etc and CPU lists, named by content and kept for the next build on purpose)."""
    import re

    t = store / "tmp"
    return sorted(p.name for p in t.iterdir() if not re.fullmatch(r"etc-[0-9a-f]{8}|cpus-\d+", p.name)) \
        if t.is_dir() else []


def rmtree(path: Path) -> None:
    """Remove a store (its entries are read-only) with the planner's own helper."""
    from planner.store import remove_tree

    remove_tree(path)


# -- processes ---------------------------------------------------------------------------------

def procs_with(marker: str) -> list[int]:
    """PIDs whose command line (arguments joined by spaces) contains `marker`."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmd:
            pids.append(int(d.name))
    return pids


def wait_gone(marker: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while procs_with(marker):
        if time.monotonic() >= deadline:  # a liveness bound, not a speed claim
            pytest.fail(f"processes with {marker!r} outlived their planner")
        time.sleep(0.05)


def wait_for(cond, timeout: float = 30, what: str = "condition", proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended before {what}: {out}\n{err}")
        if time.monotonic() >= deadline:  # a liveness bound, not a speed claim
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- a size-limited store ----------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` at `path` (root only); skips the test when that is impossible."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


# -- recipes -----------------------------------------------------------------------------------

def toml_str(s: str) -> str:
    return json.dumps(s)


def shell_recipe(name: str, script: str, *, deps: Iterable[str] = (), inputs: Optional[dict[str, dict]] = None,
                 source: Optional[dict] = None, patches: Iterable[str] = (), version: str = "1.0") -> str:
    """A shell recipe with arbitrary inputs: `inputs={"blob": {"kind": "url", "url": ...}}`."""
    out = [f"name = {toml_str(name)}", f"version = {toml_str(version)}"]
    deps = list(deps)
    if deps:
        out.append("deps = [" + ", ".join(toml_str(d) for d in deps) + "]")
    for p in patches:
        out += ["", "[[patches]]", f"file = {toml_str(p)}"]
    if source:
        out += ["", "[source]"] + [f"{k} = {json.dumps(v)}" for k, v in source.items()]
    for iname, spec in (inputs or {}).items():
        out += ["", f"[inputs.{toml_str(iname)}]"] + [f"{k} = {json.dumps(v)}" for k, v in spec.items()]
    out += ["", "[build]", 'builder = "shell"', f"script = {toml_str(script)}"]
    return "\n".join(out) + "\n"


def deterministic_bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# -- archives ----------------------------------------------------------------------------------

def tarball(members: list[tuple[str, str, bytes | str]], compress: bool = True) -> bytes:
    """(name, kind, data-or-target) with kind file | dir | symlink | hardlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "file":
                raw = data.encode() if isinstance(data, str) else data
                info.size = len(raw)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(raw))
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = data if isinstance(data, str) else data.decode()
                tar.addfile(info)
    return buf.getvalue()


# -- scanning for secrets ----------------------------------------------------------------------

def _maybe_decompressed(data: bytes) -> list[bytes]:
    out = [data]
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(Exception):
            out.append(gzip.decompress(data))
    if data[:4] == b"\x28\xb5\x2f\xfd":
        with contextlib.suppress(Exception):
            import zstandard  # type: ignore[import-not-found]

            out.append(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30))
    return out


def files_containing(roots: Iterable[Path], needles: Iterable[bytes]) -> list[str]:
    """Every file under `roots` (compressed layers decompressed) whose bytes contain a needle."""
    needles = [n for n in needles if n]
    hits = []
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        for p in paths:
            try:
                data = p.read_bytes()
            except OSError:
                continue
            for blob in _maybe_decompressed(data):
                if any(n in blob for n in needles):
                    hits.append(str(p))
                    break
    return hits


def secret_forms(secret: str) -> list[bytes]:
    """The secret as it could appear: raw, in base64 forms (docker `auth`), URL-encoded."""
    from urllib.parse import quote

    raw = secret.encode()
    forms = {raw, quote(secret, safe="").encode()}
    for prefix in (b"", b"ci:"):
        forms.add(base64.b64encode(prefix + raw))
        forms.add(base64.b64encode(prefix + raw).rstrip(b"="))
    return sorted(forms)


# -- an authenticated registry -----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def auth_registry(workdir: Path, user: str, password: str) -> Iterator[str]:
    """Distribution's docker-registry on 127.0.0.1 with htpasswd (bcrypt) basic auth."""
    import warnings

    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("docker-registry is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt  # noqa: PLC0415 - bcrypt through libxcrypt; no bcrypt module is installed
        except ImportError:
            pytest.skip("no crypt module to write an htpasswd file")
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("libcrypt has no bcrypt")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "htpasswd").write_text(f"{user}:{hashed}\n")
    (workdir / "storage").mkdir(exist_ok=True)
    import httpx

    for _attempt in range(3):
        port = free_port()
        (workdir / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'storage'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
            f"auth:\n  htpasswd:\n    realm: reliability\n    path: {workdir / 'htpasswd'}\n")
        log = open(workdir / "registry.log", "ab")
        proc = subprocess.Popen([exe, "serve", str(workdir / "config.yml")], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        up = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://{address}/v2/", timeout=1.0).status_code == 401:
                    up = True
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        if up:
            from tests.support.registry import stop

            try:
                yield address
            finally:
                stop(proc)
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise RuntimeError(f"authenticated docker-registry did not start; see {workdir / 'registry.log'}")
