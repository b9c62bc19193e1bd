"""Row 4, network faults during `lock` (and the fetches of `realise`), from a loopback server with
scripted faults: connection resets, stalls past the timeout, 5xx, truncated bodies, wrong content.

Expected: a bounded number of attempts (1 + 4 retries for transient faults, 1 for a 4xx or a hash
mismatch), a clear error naming the input, nothing wrong in the store (no fixed entry whose
content is not what was pinned, nothing left in tmp/), and a second `lock` that succeeds once the
server behaves. Timeouts and backoff are shortened in-process so a stall costs 0.4 s, not 30 s.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from planner import lock as lockmod
from planner.errors import HashMismatch, PlannerError
from planner.recipes import load_set
from planner.resolve import UnresolvedInputs, lock_set
from planner.store import Store
from tests.support.http_server import Fault, LoopbackServer
from tests.support.project import Project

from .support import (assert_store_sound, cli, deterministic_bytes, entries, error_lines, shell_recipe,
                      tmp_leftovers)

ROW = "4. Network faults"

BODY = deterministic_bytes(300_000, seed=11)
SHA = hashlib.sha256(BODY).hexdigest()
TIMEOUT = 0.4
ATTEMPTS = 5  # planner/fetch/url.py: retries=4

# For CLI subprocesses: the same short timeout and backoff, set before the command runs.
FAST_PRELUDE = ("import planner.fetch.url as u\n"
                "_orig = u.download\n"
                f"def fast(url, dest, **kw):\n    kw.setdefault('timeout', {TIMEOUT})\n"
                "    kw.setdefault('backoff', 0.01)\n    return _orig(url, dest, **kw)\n"
                "u.download = fast\n")


@pytest.fixture
def fast_net(monkeypatch: pytest.MonkeyPatch) -> None:
    import planner.fetch.url as u

    orig = u.download

    def fast(url, dest, **kw):
        kw.setdefault("timeout", TIMEOUT)
        kw.setdefault("backoff", 0.01)
        return orig(url, dest, **kw)

    monkeypatch.setattr(u, "download", fast)


@pytest.fixture
def server():
    with LoopbackServer() as srv:
        yield srv


def _project(tmp_path: Path, url: str, sha256: str | None = None) -> Project:
    spec = {"kind": "url", "url": url}
    if sha256:
        spec["sha256"] = sha256
    proj = Project.empty(tmp_path, target="x")
    proj.write_raw("x", shell_recipe("x", "cp /inputs/src/* $out/", inputs={"src": spec}))
    return proj


def _lock(proj: Project):
    st = Store(proj.store)
    try:
        return lock_set(load_set(proj.root, proj.set), st)
    finally:
        st.close()


def _fixed(proj: Project) -> list[tuple]:
    return [e for e in entries(proj.store) if e[3] == "fixed"]


def _nothing_stored(proj: Project) -> None:
    assert _fixed(proj) == []
    assert tmp_leftovers(proj.store) == []
    assert_store_sound(proj)


def _pinned_right(proj: Project) -> None:
    lock = lockmod.read(proj.lockfile)
    li = lock.inputs["x/src"]
    assert li.status == "locked"
    pin = li.pin(None)
    assert pin.sha256 == SHA and pin.size == len(BODY)
    fixed = _fixed(proj)
    assert [e[2] for e in fixed] == [pin.tree]
    assert tmp_leftovers(proj.store) == []
    assert_store_sound(proj)


PERSISTENT = [Fault.RESET, Fault.STATUS_500, Fault.TRUNCATE, Fault.SLOW]


@pytest.mark.parametrize("fault", PERSISTENT, ids=lambda f: f.name.lower())
def test_persistent_fault_is_bounded_clear_and_resumable(tmp_path: Path, server: LoopbackServer, fast_net,
                                                         fault: Fault, figure: dict) -> None:
    """A fault on every request: exactly 5 attempts, an error naming the input, nothing stored; then resumes."""
    route = server.add("/src.bin", BODY, fault=fault, times=10**9, delay=3 * TIMEOUT)
    proj = _project(tmp_path, server.url("/src.bin"))
    with pytest.raises(UnresolvedInputs) as info:
        _lock(proj)
    err = info.value
    assert isinstance(err, PlannerError)
    line = err.line()
    assert "\n" not in line and "x/src" in line and f"failed after {ATTEMPTS} attempts" in line, line
    assert len(route.requests) == ATTEMPTS
    # The lock was still written, with the input marked unlocked and why: in words that do not
    # depend on the machine (planner/lockreason.py), the attempts stay on stderr (`line`).
    li = lockmod.read(proj.lockfile).inputs["x/src"]
    assert li.status == "unlocked" and li.reason and "127.0.0.1" in li.reason and "where this lock was made" in li.reason
    assert f":{server.port}" not in li.reason
    _nothing_stored(proj)
    # Realise refuses an unlocked input in one line, before building anything.
    real = cli(proj, "realise", proj.set, "-j", "1")
    assert "Traceback" not in real.stderr and len(error_lines(real.stderr)) == 1 and "unlocked" in real.stderr
    # The server recovers: a second lock pins the right bytes.
    server.add("/src.bin", BODY)
    _lock(proj)
    _pinned_right(proj)
    figure["trials"] = 1
    figure["faults"] = f"{ATTEMPTS} x {fault.name} (every request)"
    figure["outcomes"] = f"{len(route.requests)} attempts then `{line[:90]}...`; nothing stored; 2nd lock ok"


@pytest.mark.parametrize("fault", PERSISTENT, ids=lambda f: f.name.lower())
def test_transient_fault_is_retried(tmp_path: Path, server: LoopbackServer, fast_net, fault: Fault,
                                    figure: dict) -> None:
    """Two faulty answers, then good ones: the lock succeeds on the third attempt with the right pin."""
    route = server.add("/src.bin", BODY, fault=fault, times=2, delay=3 * TIMEOUT, ranges=True)
    proj = _project(tmp_path, server.url("/src.bin"))
    _lock(proj)
    assert len(route.requests) == 3
    _pinned_right(proj)
    resumed = sum(1 for r in route.requests[1:] if "range" in r)
    if fault in (Fault.TRUNCATE, Fault.SLOW):
        assert resumed, route.requests  # half the body was kept: the retry asks only for the rest
    figure["trials"] = 1
    figure["faults"] = f"2 x {fault.name}"
    figure["outcomes"] = f"3 requests ({resumed} resumed with Range); pinned sha256 correct"


def test_wrong_content_is_refused_and_never_stored(tmp_path: Path, server: LoopbackServer, fast_net,
                                                   figure: dict) -> None:
    """A body that does not match the recipe's sha256: refused at once (no retry), no lock written, nothing stored."""
    route = server.add("/src.bin", BODY, fault=Fault.WRONG)
    proj = _project(tmp_path, server.url("/src.bin"), sha256=SHA)
    with pytest.raises(HashMismatch) as info:
        _lock(proj)
    assert SHA in info.value.line() and len(route.requests) == 1
    assert not proj.lockfile.exists()
    _nothing_stored(proj)
    server.add("/src.bin", BODY)
    _lock(proj)
    _pinned_right(proj)
    figure["trials"] = 1
    figure["faults"] = "1 body of the right length with every byte flipped"
    figure["outcomes"] = "HashMismatch after 1 request; no lockfile, no entry; 2nd lock ok"


def test_wrong_content_at_realise_is_refused(tmp_path: Path, server: LoopbackServer, fast_net,
                                             figure: dict) -> None:
    """Upstream changes bytes after locking: realise into an empty store refuses them and stores nothing."""
    server.add("/src.bin", BODY)
    proj = _project(tmp_path, server.url("/src.bin"))
    _lock(proj)
    fresh = tmp_path / "fresh-store"
    route = server.add("/src.bin", BODY, fault=Fault.WRONG)
    run = cli(proj, "realise", proj.set, "-j", "1", store=fresh, python_prelude=FAST_PRELUDE)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert "hash mismatch" in run.stderr and SHA in run.stderr, run.stderr
    assert len(route.requests) == 1
    assert [e for e in entries(fresh) if e[3] == "fixed"] == [] and tmp_leftovers(fresh) == []
    assert not list(fresh.glob("*-x-*"))
    server.add("/src.bin", BODY)
    ok = cli(proj, "realise", proj.set, "-j", "1", store=fresh, python_prelude=FAST_PRELUDE)
    assert ok.returncode == 0, ok.stderr
    figure["trials"] = 1
    figure["faults"] = "1 re-published (wrong) body served to a realise fetching a pinned input"
    figure["outcomes"] = "refused (hash mismatch naming the pinned sha256), nothing stored; ok once upstream is fixed"


def test_not_found_is_not_retried(tmp_path: Path, server: LoopbackServer, fast_net, figure: dict) -> None:
    """A 404 is the recipe's mistake: one request, an error saying HTTP 404."""
    route = server.add("/src.bin", BODY, fault=Fault.NOT_FOUND)
    proj = _project(tmp_path, server.url("/src.bin"))
    with pytest.raises(UnresolvedInputs) as info:
        _lock(proj)
    assert "HTTP 404" in info.value.line() and len(route.requests) == 1
    _nothing_stored(proj)
    figure["trials"] = 1
    figure["faults"] = "1 x 404"
    figure["outcomes"] = "1 request; `HTTP 404` error naming the input; nothing stored"


@pytest.mark.parametrize("fault", [Fault.RESET, Fault.WRONG], ids=lambda f: f.name.lower())
def test_cli_error_is_one_line(tmp_path: Path, server: LoopbackServer, fault: Fault, figure: dict) -> None:
    """Through the CLI: a failing lock ends in exactly one `planner: error:` line and no traceback."""
    server.add("/src.bin", BODY, fault=fault, times=10**9, delay=3 * TIMEOUT)
    proj = _project(tmp_path, server.url("/src.bin"), sha256=SHA if fault is Fault.WRONG else None)
    run = cli(proj, "lock", proj.set, python_prelude=FAST_PRELUDE)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    errs = error_lines(run.stderr)
    assert len(errs) == 1, run.stderr
    assert ("hash mismatch" in errs[0]) if fault is Fault.WRONG else ("x/src" in errs[0]), errs
    assert tmp_leftovers(proj.store) == []
    server.add("/src.bin", BODY)
    ok = cli(proj, "lock", proj.set, python_prelude=FAST_PRELUDE)
    assert ok.returncode == 0, ok.stderr
    figure["trials"] = 1
    figure["faults"] = f"{fault.name} on every request, through `planner lock`"
    figure["outcomes"] = f"exit {run.returncode}, `{errs[0][:100]}`; next lock exit 0"
