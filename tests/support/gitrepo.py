"""Real git repositories for tests: builders with fixed identities and dates, and `git daemon`.

Everything runs with no system or global git config, so a developer's settings cannot change
what the tests build.

    repo = GitRepo.init(tmp_path / "up")
    repo.write("run.sh", "#!/bin/sh\\n", executable=True)
    repo.symlink("link", "run.sh")
    c1 = repo.commit("first")
    repo.tag("v1", message="release")          # annotated; message=None for lightweight
    with git_daemon(tmp_path) as base_url:      # git://127.0.0.1:PORT
        resolve(f"{base_url}/up", "v1")
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import attrs

# git refuses `@0` as a date; one second past the epoch is the earliest it takes.
_DATE = "1970-01-01T00:00:01Z"


def git_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@example.invalid",
        GIT_AUTHOR_DATE=_DATE,
        GIT_COMMITTER_DATE=_DATE,
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    env.update(extra)
    return env


def git(*args: str | os.PathLike[str], cwd: Path | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "-c", "protocol.file.allow=always", *map(os.fspath, args)],
        cwd=cwd, env=git_env(), capture_output=True, text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


@attrs.frozen
class GitRepo:
    path: Path

    @classmethod
    def init(cls, path: Path) -> "GitRepo":
        path.mkdir(parents=True, exist_ok=True)
        git("init", "-q", path)
        return cls(path)

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def git(self, *args: str) -> str:
        return git(*args, cwd=self.path)

    def write(self, rel: str, data: str | bytes, *, executable: bool = False) -> None:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        p.chmod(0o755 if executable else 0o644)

    def symlink(self, rel: str, target: str) -> None:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)

    def add_submodule(self, rel: str, url: str, commit: str, *, name: str | None = None) -> None:
        """A gitlink at `rel` pinned to `commit`, with `url` as written in .gitmodules (may be relative)."""
        name = name or rel
        # An empty directory is how an uninitialised submodule looks; without it `add -A`
        # would record the gitlink as deleted.
        (self.path / rel).mkdir(parents=True, exist_ok=True)
        self.git("config", "-f", ".gitmodules", f"submodule.{name}.path", rel)
        self.git("config", "-f", ".gitmodules", f"submodule.{name}.url", url)
        self.git("update-index", "--add", "--cacheinfo", f"160000,{commit},{rel}")
        self.git("add", ".gitmodules")

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        return self.git("rev-parse", f"{ref}^{{commit}}")

    def lose_blob(self, commit: str, path: str) -> None:
        """Delete the (loose) object of `path` at `commit`, as a snapshot that lacks a blob."""
        blob = self.git("rev-parse", f"{commit}:{path}")
        (self.path / ".git" / "objects" / blob[:2] / blob[2:]).unlink()

    def tag(self, name: str, *, message: str | None = None, at: str = "HEAD", force: bool = False) -> None:
        args = ["tag"] + (["-f"] if force else []) + (["-a", "-m", message] if message is not None else [])
        self.git(*args, name, at)

    def branch(self, name: str, at: str = "HEAD") -> None:
        self.git("branch", "-f", name, at)

    def checkout(self, ref: str) -> None:
        self.git("checkout", "-q", ref)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """Serve every repository under `base` read-only over git://; yields `git://127.0.0.1:PORT`."""
    for _ in range(5):  # the free port can be taken between finding and binding it
        port = free_port()
        proc = subprocess.Popen(
            ["git", "daemon", "--listen=127.0.0.1", f"--port={port}", "--export-all", "--reuseaddr",
             "--informative-errors", f"--base-path={base}", str(base)],
            env=git_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if _wait_for_port(port, proc):
            break
        proc.kill()
        proc.wait()
    else:
        raise RuntimeError("git daemon did not start")
    from .registry import stop

    try:
        yield f"git://127.0.0.1:{port}"
    finally:
        stop(proc)
