"""Air-gapped sites: a local mirror (a folder, or a loopback HTTP server) stands in for GitHub
and release servers. Sources are found by content hash first, origin URL second."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from planner.errors import FetchError
from planner.mirrors import origin_path
from planner.resolve import mirror_candidates

from .conftest import run_planner
from .support.gitrepo import GitRepo
from .support.http_server import LoopbackServer

APEX = "https://github.com/NVIDIA/apex.git"
TARBALL = "https://developer.download.nvidia.com/hpc-sdk/hpcx-v2.25.1.tar.gz"


def _tarball(text: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("hpcx-v2.25.1/VERSION")
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def _project(root: Path, *, sha256: str | None) -> None:
    folder = root / "recipes/air"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "top"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n')
    (folder / "apex.toml").write_text(
        f'name = "apex"\nversion = "0.1"\n[source]\nkind = "git"\nurl = "{APEX}"\nrev = "main"\n'
        '[build]\nbuilder = "shell"\nscript = "cp README $out/"\n')
    sha = f'sha256 = "{sha256}"\n' if sha256 else ""
    (folder / "hpcx.toml").write_text(
        f'name = "hpcx"\nversion = "2.25.1"\n[source]\nkind = "url"\nurl = "{TARBALL}"\n{sha}'
        '[build]\nbuilder = "shell"\nscript = "cp VERSION $out/"\n')
    (folder / "top.toml").write_text('name = "top"\nversion = "1"\ndeps = ["apex", "hpcx"]\n'
                                     '[build]\nbuilder = "shell"\nscript = "cat /deps/apex/README /deps/hpcx/VERSION > $out/all"\n')


def _git_mirror(mirror: Path) -> str:
    repo = GitRepo.init(mirror / "git/github.com/NVIDIA/apex.git")
    repo.write("README", "apex stand-in\n")
    return repo.commit("stand-in")


def test_candidates_order() -> None:
    assert mirror_candidates(TARBALL, ["file:///m", "http://127.0.0.1:1/x/"], sha256="ab" * 32) == [
        "file:///m/sha256/" + "ab" * 32,
        "file:///m/urls/developer.download.nvidia.com/hpc-sdk/hpcx-v2.25.1.tar.gz",
        "http://127.0.0.1:1/x/sha256/" + "ab" * 32,
        "http://127.0.0.1:1/x/urls/developer.download.nvidia.com/hpc-sdk/hpcx-v2.25.1.tar.gz",
        TARBALL,
    ]
    assert mirror_candidates(APEX, ["file:///m"], git=True) == ["file:///m/git/github.com/NVIDIA/apex.git", APEX]


def test_candidates_are_where_mirror_add_puts_an_origin_however_it_is_spelt() -> None:
    # A host's case, a default port and percent-escapes do not make another origin.
    for spelt in ("https://GitHub.com/NVIDIA/apex.git", "https://github.com:443/NVIDIA/apex.git",
                  "https://github.com/NVIDIA/ap%65x.git", APEX + "#main"):
        assert origin_path(spelt.split("#")[0]) == "github.com/NVIDIA/apex.git"
        assert mirror_candidates(spelt, ["file:///m"], git=True)[0] == "file:///m/git/github.com/NVIDIA/apex.git"
    assert origin_path("http://127.0.0.1:8080/a/b.whl") == "127.0.0.1:8080/a/b.whl"
    # A URL that names no path inside the mirror is looked up by content hash alone, never by a
    # path that would leave the mirror.
    for url in ("https://x.org/../../../etc/passwd", "https://x.org/a/%2e%2e/%2e%2e/b", "https://x.org/f?v=1"):
        assert mirror_candidates(url, ["file:///m"], sha256="ab" * 32) == ["file:///m/sha256/" + "ab" * 32, url]
        assert mirror_candidates(url, ["file:///m"], git=True) == [url]
    with pytest.raises(FetchError, match="valid port"):
        origin_path("https://host:99999/x.git")


def test_folder_mirror_by_origin_then_realise(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    commit = _git_mirror(mirror)
    body = _tarball(b"2.25.1\n")
    by_url = mirror / "urls/developer.download.nvidia.com/hpc-sdk/hpcx-v2.25.1.tar.gz"
    by_url.parent.mkdir(parents=True)
    by_url.write_bytes(body)
    root, store = tmp_path / "proj", tmp_path / "store"
    _project(root, sha256=None)
    # Without the mirror: both inputs are unreachable; the lock is written with them unlocked.
    bare = run_planner("--root", str(root), "--store", str(store), "lock", "air", check=False)
    assert bare.returncode != 0
    assert "planner: error: could not resolve apex/source" in bare.stderr
    assert 'status = "unlocked"' in (root / "lockfiles/air.lock").read_text()
    dry = run_planner("--root", str(root), "--store", str(store), "realise", "air", "--dry-run", check=False)
    assert dry.returncode != 0 and "stops before apex: input apex/source is unlocked" in dry.stderr
    # With the mirror (command line): everything resolves, and realise builds offline.
    run_planner("--root", str(root), "--store", str(store), "--mirror", str(mirror), "lock", "air")
    lock = (root / "lockfiles/air.lock").read_text()
    assert "unlocked" not in lock and commit in lock
    assert hashlib.sha256(body).hexdigest() in lock
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "air", "--json").stdout)
    assert (Path(out["output"]) / "all").read_text() == "apex stand-in\n2.25.1\n"


def test_http_mirror_by_hash_first(tmp_path: Path) -> None:
    body = _tarball(b"by-hash\n")
    sha = hashlib.sha256(body).hexdigest()
    mirror = tmp_path / "mirror"
    _git_mirror(mirror)
    root, store = tmp_path / "proj", tmp_path / "store"
    _project(root, sha256=sha)
    (root / "planner.toml").write_text(f'[mirrors]\nurls = ["{(mirror).as_uri()}"]\n')
    with LoopbackServer() as server:
        by_hash = server.add(f"/m/sha256/{sha}", body)
        by_url = server.add("/m/urls/developer.download.nvidia.com/hpc-sdk/hpcx-v2.25.1.tar.gz", b"wrong bytes")
        run_planner("--root", str(root), "--store", str(store), "--mirror", server.url("/m"), "lock", "air")
        assert len(by_hash.requests) == 1 and len(by_url.requests) == 0
        # realise --dry-run lists what it would fetch and build, in order, with nothing unlocked
        fresh = tmp_path / "store2"
        dry = run_planner("--root", str(root), "--store", str(fresh), "--mirror", server.url("/m"),
                          "realise", "air", "--dry-run").stdout.splitlines()
    assert dry[0].startswith("fetch apex/source") or dry[0].startswith("fetch hpcx/source")
    assert [l.split()[1] for l in dry if l.startswith("build")] == ["apex", "hpcx", "top"]
    assert sha in (root / "lockfiles/air.lock").read_text()


def test_a_mirror_file_with_other_bytes_is_one_bad_source_not_the_verdict(tmp_path: Path) -> None:
    """A file under the mirror's sha256/ whose bytes are not its name's (corrupt, same size)
    does not stop the fetch: the origin path beside it has the pinned bytes and is used. With
    no source holding them, the mismatch is the error, naming the input; nothing is stored."""
    body = _tarball(b"pinned\n")
    sha = hashlib.sha256(body).hexdigest()
    mirror = tmp_path / "mirror"
    _git_mirror(mirror)
    by_hash = mirror / "sha256" / sha
    by_hash.parent.mkdir(parents=True)
    by_hash.write_bytes(bytes(len(body)))  # as long as the pinned file: only its hash tells
    by_url = mirror / "urls/developer.download.nvidia.com/hpc-sdk/hpcx-v2.25.1.tar.gz"
    by_url.parent.mkdir(parents=True)
    by_url.write_bytes(body)
    root, store = tmp_path / "proj", tmp_path / "store"
    _project(root, sha256=sha)
    run = run_planner("--root", str(root), "--store", str(store), "--mirror", str(mirror), "lock", "air")
    assert "has other bytes than the pin" in run.stderr and "trying the next source" in run.stderr, run.stderr
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "--mirror", str(mirror),
                                 "realise", "air", "--json").stdout)
    assert (Path(out["output"]) / "all").read_text() == "apex stand-in\npinned\n"
    # Only the corrupt file: the realise of a fresh store fails on the mismatch, stores nothing.
    by_url.unlink()
    fresh = tmp_path / "fresh"
    bad = run_planner("--root", str(root), "--store", str(fresh), "--mirror", str(mirror), "realise", "air",
                      check=False)
    assert bad.returncode != 0 and "hash mismatch" in bad.stderr and "hpcx/source" in bad.stderr, bad.stderr
    assert not [p for p in fresh.glob("*") if "hpcx" in p.name], list(fresh.iterdir())


def test_slime_recipes_resolve_from_a_mirror(tmp_path: Path) -> None:
    """The slime recipes themselves, with their GitHub origin URLs, resolved from a folder
    mirror of stand-ins: every git input (apex with its two submodule gitlinks, the slime
    checkout that int4-qat takes a subdirectory of, ...) and both patches fetched by URL.

    Stand-ins cannot have the real commits and patch hashes, so the copied recipes differ from
    the real ones in exactly those values (`rev`, a patch's `sha256`, the prefetched `tree`);
    URLs are untouched. What
    no mirror here can serve (the registry base image, Ubuntu's .debs) stays unlocked, and
    `realise --dry-run` stops on it, not on a git input."""
    import re
    import shutil

    from planner.recipes import load_set

    from .conftest import REPO

    proj, mirror = tmp_path / "proj", tmp_path / "mirror"
    shutil.copytree(REPO / "recipes/slime", proj / "recipes/slime")
    shutil.copytree(REPO / "patches/slime", proj / "patches/slime")
    (proj / "lockfiles").mkdir()
    shutil.copy(REPO / "lockfiles/slime.lock", proj / "lockfiles/slime.lock")
    rs = load_set(REPO, "slime")
    gits = {(s.url, s.rev, s.subdir) for r in rs.recipes.values() for s in r.all_sources().values() if s.kind == "git"}
    paths = {s.url: s.paths for r in rs.recipes.values() for s in r.all_sources().values() if s.paths}
    assert list(paths) == ["https://github.com/ISEEKYAN/mbridge.git"]
    standin: dict[str, str] = {}  # original rev -> stand-in commit

    def repo_for(url: str) -> GitRepo:
        host_path = re.sub(r"^https://", "", url)
        return GitRepo.init(mirror / "git" / host_path)

    apex_subs = {name[len("source/sub/"):]: s for name, s in rs.get("apex").inputs.items() if name.startswith("source/sub/")}
    for sub in apex_subs.values():  # submodules first: apex's gitlinks point at their stand-in commits
        repo = repo_for(sub.url)
        repo.write("README", f"stand-in for {sub.url}\n")
        standin[sub.rev] = repo.commit("stand-in")
    for url, rev, subdir in sorted(gits, key=lambda g: (g[0], g[2] or "")):
        if rev in standin:
            continue
        repo = repo_for(url)
        repo.write("README", f"stand-in for {url}\n")
        for _u, _r, sd in gits:
            if _u == url and sd:
                repo.write(f"{sd}/setup.py", "from setuptools import setup\nsetup()\n")
        for path in paths.get(url, ()):  # a sparse input's files and folders (mbridge)
            repo.write(f"{path}/__init__.py" if "." not in path else path, "# stand-in\n")
        repo.write("not-fetched/big.pdf", "a file outside the paths\n")
        if url.endswith("/apex.git"):
            for path, sub in apex_subs.items():
                repo.add_submodule(path, sub.url, standin[sub.rev])
        standin[rev] = repo.commit("stand-in")
    patch_shas = {}
    for r in rs.recipes.values():
        for p in r.patches:
            if p.url:
                body = f"--- a/STANDIN\n+++ b/STANDIN\n@@ -0,0 +1 @@\n+{p.url}\n".encode()
                dest = mirror / "urls" / re.sub(r"^https://", "", p.url)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(body)
                patch_shas[p.sha256] = hashlib.sha256(body).hexdigest()
    # 8 git inputs (TE's binding takes cudnn-frontend at TE v2.10's pin): int4-qat and slime share a commit
    assert len(standin) == 7 and len(patch_shas) == 2
    for f in (proj / "recipes/slime").glob("*.toml"):
        text = f.read_text()
        for old, new in standin.items():
            text = text.replace(f'rev = "{old}"', f'rev = "{new}"')
        for old, new in patch_shas.items():
            text = text.replace(f'sha256 = "{old}"', f'sha256 = "{new}"')
        text = re.sub(r'(?m)^tree = "blake3:[0-9a-f]{64}"\n', "", text)  # the real trees, not the stand-ins'
        f.write_text(text)

    before = (proj / "lockfiles/slime.lock").read_text()
    store = tmp_path / "store"
    proc = run_planner("--root", str(proj), "--store", str(store), "--mirror", str(mirror), "lock", "slime",
                       check=False)
    from planner import lock as lockmod

    lock = lockmod.read(proj / "lockfiles/slime.lock")
    unlocked = sorted(i for i, li in lock.inputs.items() if li.status != "locked")
    assert unlocked == ["apt-tools/dnsutils", "apt-tools/nvtop", "sglang-base/source"], proc.stderr
    for id_, li in lock.inputs.items():
        if li.kind == "git":
            assert li.pin(None).commit in standin.values(), id_
    assert sum(li.kind == "pypi" for li in lock.inputs.values()) == before.count('kind = "pypi"')
    # The PyPI pins are untouched: nothing was downloaded again.
    old_lock = lockmod.read(REPO / "lockfiles/slime.lock")
    assert all(lock.inputs[i].pins == li.pins for i, li in old_lock.inputs.items() if li.kind == "pypi")
    # set.toml's profile "pins" leaves apt-tools and the registry base out of the image: ask for them.
    dry = run_planner("--root", str(proj), "--store", str(store), "--mirror", str(mirror), "realise", "slime",
                      "--dry-run", "--target", "apt-tools", "--platform", "linux/amd64", check=False)
    assert dry.returncode != 0
    stop = dry.stderr.strip().splitlines()[-1]
    assert re.search(r"input (sglang-base/source|apt-tools/\w+) is unlocked", stop), stop
    # A target whose inputs the mirror serves: the dry run lists its fetches and builds in order.
    mb = run_planner("--root", str(proj), "--store", str(tmp_path / "fresh"), "--mirror", str(mirror), "realise",
                     "slime", "--dry-run", "--target", "mbridge").stdout.splitlines()
    assert any(line.startswith("fetch mbridge/source") and "github.com/ISEEKYAN/mbridge.git" in line for line in mb), mb
    # mbridge and the build root it builds in (set.toml build-root), nothing else.
    assert [line.split()[1].split("[")[0] for line in mb if line.startswith("build")] == ["buildroot", "mbridge"], mb


def test_debian_file_names_with_an_epoch_come_from_a_mirror_by_hash(tmp_path: Path) -> None:
    """Debian's file names carry the version's epoch as `%3a` (`cpp_4%3a12.2.0-3_amd64.deb`):
    a plain file name, taken from a mirror by hash under that name (the base built from pins has
    several such .debs; a fresh store once refused them as "not a plain file name")."""
    import shutil

    if shutil.which("apt-get") is None:
        import pytest

        pytest.skip("needs apt")
    root, store = tmp_path / "proj", tmp_path / "store"
    folder = root / "recipes/deb"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "tool"\nsource-date-epoch = 1700000000\nplatforms = ["linux/amd64"]\n'
                                     'build-root = "host"\n')
    (folder / "tool.toml").write_text('name = "tool"\nversion = "1"\n[inputs.cpp]\nkind = "apt"\nname = "cpp"\n'
                                      '[build]\nbuilder = "shell"\nscript = "ls /inputs/cpp > $out/name"\n')
    run_planner("--root", str(root), "--store", str(store), "lock", "deb")
    lock = (root / "lockfiles/deb.lock").read_text()
    sha = next(line.split('"')[1] for line in lock.splitlines() if line.startswith("sha256 ="))
    filename = next(line.split('"')[1] for line in lock.splitlines() if line.startswith("filename ="))
    assert "%3a" in filename, filename
    mirror = tmp_path / "mirror"
    (mirror / "sha256").mkdir(parents=True)
    deb = next(p for p in store.iterdir() if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == sha)
    shutil.copy(deb, mirror / "sha256" / sha)
    fresh = tmp_path / "fresh"
    out = json.loads(run_planner("--root", str(root), "--store", str(fresh), "--mirror", mirror.as_uri(),
                                 "realise", "deb", "--json").stdout)
    assert (Path(out["output"]) / "name").read_text() == filename + "\n"
