"""Row 8, secrets: registry credentials never reach logs, the store index, run records, provenance,
image layers or the lockfile.

A known token is planted as the password of a docker `config.json` (HOME points to a temporary
home for every planner process) and in environment variables; `lock`, `realise` and `push` (to a
registry that really demands those credentials, so they are read and used) run on a small image
set; then every byte the planner wrote, and everything it printed, is searched for the token in
its raw, base64 and URL-encoded forms, inside compressed layers too.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.http_server import LoopbackServer
from tests.support.project import Project

from .support import auth_registry, cli, deterministic_bytes, files_containing, secret_forms, shell_recipe

ROW = "8. Secrets"

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


def _image_set(proj: Project, url: str, fake_home: Path) -> None:
    proj.write_raw("fs", shell_recipe(
        "fs",
        # The build tries to pick up credentials the way a careless script would.
        f'mkdir -p $out/app $out/etc\ncp /inputs/blob/* $out/app/\n'
        f'cat "$HOME/.docker/config.json" > $out/app/home-docker 2>/dev/null || true\n'
        f'cat "{fake_home}/.docker/config.json" > $out/app/real-docker 2>/dev/null || true\n'
        'env > $out/app/env.txt\n',
        inputs={"blob": {"kind": "url", "url": url}}))
    proj.write_raw("image", 'name = "image"\nversion = "1"\n[build]\nbuilder = "oci-image"\n'
                            '[image]\nbase = "fs"\ncmd = ["/bin/true"]\n[image.env]\nGREETING = "hi"\n')
    proj.write_set(target="image")


def test_registry_credentials_never_leak(tmp_path: Path, figure: dict) -> None:
    """Token in ~/.docker/config.json and env: lock + realise + authenticated push; the token is nowhere the planner wrote."""
    token = f"tok-{uuid.uuid4().hex}"
    env_token = f"envtok-{uuid.uuid4().hex}"
    fake_home = tmp_path / "home"
    (fake_home / ".docker").mkdir(parents=True)
    env = {"HOME": str(fake_home), "PLANNER_REGISTRY_TOKEN": env_token, "REGISTRY_PASSWORD": env_token,
           "DOCKER_PASSWORD": env_token}
    outputs: list[str] = []
    with auth_registry(tmp_path / "registry", "ci", token) as address, LoopbackServer() as srv:
        (fake_home / ".docker" / "config.json").write_text(json.dumps(
            {"auths": {address: {"auth": base64.b64encode(f"ci:{token}".encode()).decode()}}}))
        srv.add("/blob.bin", deterministic_bytes(10_000, seed=8))
        proj = Project.empty(tmp_path, target="image")
        _image_set(proj, srv.url("/blob.bin"), fake_home)
        steps = [("lock", proj.set), ("realise", proj.set, "--json", "-j", "1"),
                 ("push", proj.set, f"{address}/reliability/img:v1"), ("store", "verify")]
        for step in steps:
            r = cli(proj, *step, env=env)
            assert r.returncode == 0, (step, r.stderr)
            outputs += [r.stdout, r.stderr]
        # The push really used the credentials: the registry refuses anonymous reads, accepts ours.
        base = f"http://{address}/v2/reliability/img/manifests/v1"
        accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
        assert httpx.get(base, headers=accept, timeout=10).status_code == 401
        assert httpx.get(base, headers=accept, auth=("ci", token), timeout=10).status_code == 200

        needles = secret_forms(token) + secret_forms(env_token)
        # Control: the search does find the token where it was planted.
        assert files_containing([fake_home], needles) == [str(fake_home / ".docker" / "config.json")]
        written = [proj.store, proj.lockfile, proj.root / "recipes", tmp_path / "registry" / "storage"]
        hits = files_containing(written, needles)
        printed = [o for o in outputs if any(n.decode() in o for n in needles)]
        db = sqlite3.connect(proj.store / "index.sqlite")
        try:
            dump = "\n".join(db.iterdump())
        finally:
            db.close()
        in_index = [n for n in needles if n.decode() in dump]
        n_files = sum(1 for root in written for p in (root.rglob("*") if root.is_dir() else [root]) if p.is_file())
    figure["trials"] = 1
    figure["faults"] = (f"token planted in docker config.json (+ base64) and 4 env vars; lock, realise, "
                        f"authenticated push; {n_files} files searched (layers decompressed) + all output")
    figure["outcomes"] = f"files with the token: {len(hits)}; printed: {len(printed)}; in the index dump: {len(in_index)}"
    assert hits == [], hits
    assert printed == [], printed
    assert in_index == []


def test_mirror_credentials_are_not_logged(tmp_path: Path, figure: dict) -> None:
    """A mirror URL with credentials (PLANNER_MIRRORS) that fails over: the password is never printed."""
    token = f"mirrortok-{uuid.uuid4().hex}"
    with LoopbackServer() as srv:
        srv.add("/f.bin", b"hello")
        proj = Project.empty(tmp_path, target="x")
        proj.write_raw("x", shell_recipe("x", "cp /inputs/src/* $out/",
                                         inputs={"src": {"kind": "url", "url": srv.url("/f.bin")}}))
        mirror = f"http://ci:{token}@127.0.0.1:{srv.port}/mirror"
        r = cli(proj, "lock", proj.set, env={"PLANNER_MIRRORS": mirror})
    assert r.returncode == 0, r.stderr
    leaked = [l for l in (r.stdout + r.stderr).splitlines() if token in l]
    hits = files_containing([proj.store, proj.lockfile], secret_forms(token))
    figure["trials"] = 1
    figure["faults"] = "a mirror with user:password@ in PLANNER_MIRRORS that answers 404"
    figure["outcomes"] = f"lines printing the password: {len(leaked)}; files: {len(hits)}"
    assert leaked == [] and hits == [], leaked + hits
