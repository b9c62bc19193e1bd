"""A real OCI registry for tests: Debian's `docker-registry` (Distribution 2.8) on 127.0.0.1.

Use from a test module with `from tests.support.registry import registry  # noqa: F401`; the
fixture is session-scoped and yields `127.0.0.1:PORT`. It runs with a config of its own (never
the packaged one, which listens on all interfaces with auth) and is stopped by its PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

_START_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(root: Path, port: int) -> str:
    return (
        "version: 0.1\n"
        "log:\n"
        "  level: warn\n"
        "  accesslog:\n"
        "    disabled: true\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {root}\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
    )


def start_registry(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("docker-registry is not installed")
    storage = workdir / "storage"
    storage.mkdir(parents=True)
    for _attempt in range(3):  # the free port can be taken between probe and bind
        port = free_port()
        config = workdir / "config.yml"
        config.write_text(_config(storage, port))
        log = open(workdir / "registry.log", "ab")
        proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://{address}/v2/", timeout=1.0).status_code == 200:
                    return proc, address
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        stop(proc)
    raise RuntimeError(f"docker-registry did not start; see {workdir / 'registry.log'}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, address = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield address
    finally:
        stop(proc)
