"""Running the planner as an ordinary user (the README's commands must work unprivileged).

`.ci/setup` creates the user `planner-ci` when it runs as root. Tests that run as root drop to it
with `setpriv`; a test session that already runs unprivileged uses itself.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest

CI_USER = "planner-ci"
REPO = Path(__file__).resolve().parents[2]


def _user() -> Optional[pwd.struct_passwd]:
    try:
        return pwd.getpwnam(CI_USER)
    except KeyError:
        return None


def require_unprivileged() -> Optional[pwd.struct_passwd]:
    """The user to drop to (None: this session is unprivileged already); skips when root has no
    such user, which `.ci/setup` creates."""
    if os.geteuid() != 0:
        return None
    user = _user()
    if user is None or not shutil.which("setpriv"):
        pytest.skip(f"running as root without the user {CI_USER} (.ci/setup creates it) or setpriv")
    return user


def python_for(user: Optional[pwd.struct_passwd]) -> list[str]:
    """An interpreter that `user` can run with the planner importable.

    The test's own interpreter when the user can execute it; otherwise (a venv made from an
    interpreter under root's home) the system python3 with the venv's site-packages on the path.
    """
    if user is None or _can_run(user, sys.executable):
        return [sys.executable]
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    return ["env", f"PYTHONPATH={REPO}:{site}", "/usr/bin/python3"]


def _can_run(user: pwd.struct_passwd, exe: str) -> bool:
    probe = subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                            "env", exe, "-c", "import planner"], capture_output=True, cwd="/")
    return probe.returncode == 0


def prefix(user: Optional[pwd.struct_passwd], home: Path) -> list[str]:
    """The command prefix running what follows as `user` with its own HOME and planner cache."""
    env = ["env", f"HOME={home}", f"PLANNER_CACHE={home / 'cache'}"]
    if user is None:
        return env
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", *env]


def scratch(user: Optional[pwd.struct_passwd]) -> Path:
    """A fresh folder owned by `user` that it can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="planner-user-", dir="/tmp"))
    os.chmod(path, 0o755)
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def chown_tree(path: Path, user: Optional[pwd.struct_passwd]) -> None:
    if user is None:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, user.pw_uid, user.pw_gid)
