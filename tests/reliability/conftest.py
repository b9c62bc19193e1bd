"""Figures for docs/reliability.md: every test here fills a `figure` (trials, faults injected,
outcomes); at the end of the session they are merged into tests/reliability/last_run.json, which
`python -m tests.reliability.table --write` renders into the doc's table.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import pytest

from .support import SEED_ENV, TRIALS_ENV, heavy

LAST_RUN = Path(__file__).resolve().parent / "last_run.json"
_FIGURES: dict[str, dict] = {}
_STARTED = time.time()


@pytest.fixture(scope="session", autouse=True)
def _private_planner_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep per-user planner caches (PLANNER_CACHE, default ~/.cache/planner) out of the user's
    home: the fuzzers alone load hundreds of throwaway recipe sets. Subprocesses inherit it."""
    old = os.environ.get("PLANNER_CACHE")
    os.environ["PLANNER_CACHE"] = str(tmp_path_factory.mktemp("planner-cache"))
    yield
    if old is None:
        os.environ.pop("PLANNER_CACHE", None)
    else:
        os.environ["PLANNER_CACHE"] = old


@pytest.fixture(autouse=True)
def figure(request: pytest.FixtureRequest) -> dict:
    """This test's row in the figures table; tests set trials, faults and outcomes on it."""
    doc = (request.function.__doc__ or "").strip().splitlines()
    fig = {
        "row": getattr(request.module, "ROW", "?"),
        "test": request.node.nodeid,
        "behaviour": doc[0].strip() if doc else request.function.__name__,
        "trials": None,
        "faults": None,
        "outcomes": None,
        "seed": None,
    }
    _FIGURES[request.node.nodeid] = fig
    return fig


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    fig = _FIGURES.get(item.nodeid)
    if fig is None:
        return
    if rep.when == "setup" and rep.skipped:
        fig["result"] = "skipped"
        fig["outcomes"] = fig["outcomes"] or (str(rep.longrepr[-1]) if isinstance(rep.longrepr, tuple) else "skipped")
    elif rep.when == "call":
        if hasattr(rep, "wasxfail"):
            fig["result"] = "xfailed (known bug)" if rep.skipped else "XPASS"
            fig["bug"] = rep.wasxfail
        elif rep.skipped:
            fig["result"] = "skipped"
        else:
            fig["result"] = rep.outcome
        fig["seconds"] = round(rep.duration, 2)
    elif rep.when == "setup" and rep.failed:
        fig["result"] = "error"


def _tidy(value: object) -> object:
    """Drop what differs between machines and runs: temporary paths, loopback ports."""
    if not isinstance(value, str):
        return value
    value = re.sub(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^\s'\":)]*", "<tmp>", value)
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", value)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    done = {k: {f: _tidy(x) for f, x in v.items() if not f.startswith("_")}
            for k, v in _FIGURES.items() if "result" in v}
    if not done or os.environ.get("PLANNER_RELIABILITY_NO_RECORD"):
        return
    try:
        old = json.loads(LAST_RUN.read_text())
    except (OSError, ValueError):
        old = {}
    tests = {t["test"]: t for t in old.get("tests", [])}
    tests.update(done)
    doc = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trials_env": {TRIALS_ENV: heavy() or None, SEED_ENV: os.environ.get(SEED_ENV)},
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "session_seconds": round(time.time() - _STARTED, 1),
        "tests": sorted(tests.values(), key=lambda t: (t["row"], t["test"])),
    }
    LAST_RUN.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
