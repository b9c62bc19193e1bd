"""`planner prefetch`: fetch once, print the pins a recipe or lock needs (like nix-prefetch-url)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from planner.hashing import tree_digest

from .conftest import run_planner
from .support.gitrepo import GitRepo
from .support.http_server import LoopbackServer


def _fields(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.strip().splitlines())


def test_prefetch_tarball_over_http(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("pkg-1.0/hello.txt")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"hello\n"))
    body = buf.getvalue()
    with LoopbackServer() as server:
        route = server.add("/pkg-1.0.tar.gz", body)
        out = _fields(run_planner("--store", str(tmp_path / "s"), "prefetch", server.url("/pkg-1.0.tar.gz")).stdout)
        assert len(route.requests) == 1  # hashed while downloading: one request
    assert out["sha256"] == hashlib.sha256(body).hexdigest()
    assert out["size"] == str(len(body))
    expected = tmp_path / "expected"
    expected.mkdir()
    (expected / "hello.txt").write_bytes(b"hello\n")
    assert out["tree"] == tree_digest(expected)  # the single top-level directory is the root


def test_prefetch_git_revision(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "up.git")
    repo.write("run.sh", "#!/bin/sh\necho hi\n", executable=True)
    commit = repo.commit("first")
    repo.tag("v1")
    out = _fields(run_planner("--store", str(tmp_path / "s"), "prefetch", f"git+{repo.url}@v1").stdout)
    assert out["commit"] == commit
    checkout = tmp_path / "co"
    checkout.mkdir()
    (checkout / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (checkout / "run.sh").chmod(0o755)
    assert out["tree"] == tree_digest(checkout)


def test_prefetch_missing_is_one_line(tmp_path: Path) -> None:
    proc = run_planner("--store", str(tmp_path / "s"), "prefetch", (tmp_path / "nothing.tar.gz").as_uri(), check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("planner: error: ")
    assert "Traceback" not in proc.stderr
