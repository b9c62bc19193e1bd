"""Git sources: resolve a ref to a commit, export a commit's tree, list its submodules.

The tree of a commit is what `git clone` + `git checkout` writes on Linux with default
settings (tree hash v1 relies on it): in-tree `.gitattributes` apply, symlinks stay links,
executable bits follow the tree, submodules are empty directories. Nothing the user has
configured may change that, so git runs with no system or global config, a throwaway HOME
and no inherited GIT_* variables, and never prompts.

Objects are fetched into bare repositories (cached per URL under `cache_dir` when given), one
commit at a time with `--depth 1`; servers that refuse to serve an unadvertised commit get a
full fetch of their branches and tags instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import attrs
import blake3

from ..errors import FetchError

__all__ = ["Submodule", "resolve", "export", "submodules", "resolve_submodule_url", "local_objects",
           "reads_outside"]

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
# `-c` settings for every git command. Auto-gc is off so that one process never prunes objects
# another is checking out of a shared cache.
_CONFIG: tuple[tuple[str, str], ...] = (
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("init.defaultBranch", "main"),
    ("advice.detachedHead", "false"),
)
# Transport settings that do not change what a checkout contains.
_KEEP_ENV = ("GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSH_VARIANT", "GIT_PROXY_COMMAND")
_GITLINK_MODE = "160000"


@attrs.frozen
class Submodule:
    path: str  # inside the superproject, '/'-separated
    url: str  # absolute: relative .gitmodules URLs are resolved against the superproject's
    commit: str  # the gitlink: the commit the superproject pins


# -- running git ------------------------------------------------------------------------------


@attrs.frozen
class _Git:
    """git with a clean environment; `home` is a private temporary directory."""

    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GIT_") and k not in ("HOME", "XDG_CONFIG_HOME")}
        env.update({k: os.environ[k] for k in _KEEP_ENV if k in os.environ})
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_TERMINAL_PROMPT="0",
            GIT_ASKPASS="true",  # answers any credential question with nothing
            LC_ALL="C",  # stable messages for the errors we quote
        )
        env.update(extra)
        return env

    def run(self, args: Sequence[str | os.PathLike[str]], *, where: str, what: str,
            git_dir: Path | None = None, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        cmd: list[str] = ["git"]
        for key, value in _CONFIG:
            cmd += ["-c", f"{key}={value}"]
        if git_dir is not None:
            cmd.append(f"--git-dir={git_dir}")
        cmd += [os.fspath(a) for a in args]
        # umask 022: a checkout's modes are the tree's, not the caller's umask (0177 drops x bits)
        proc = subprocess.run(cmd, env=self.env(**env), stdin=subprocess.DEVNULL, umask=0o022,
                              capture_output=True, text=True, errors="surrogateescape")
        if check and proc.returncode != 0:
            raise FetchError(f"{what}: {git_reason(proc.stderr) or f'git exited with {proc.returncode}'}",
                             where=where)
        return proc


def git_reason(text: str) -> str:
    """git's reason: its first `fatal:`/`error:` line (the lines after it are advice such as
    "Please make sure you have the correct access rights and the repository exists."), else
    the last line it wrote."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith(("fatal:", "error:"))), None)
    return reason or (lines[-1] if lines else "")


@contextlib.contextmanager
def _git() -> Iterator[_Git]:
    with tempfile.TemporaryDirectory(prefix="planner-git-home-") as home:
        _usable(home)
        yield _Git(Path(home))


def _usable(folder: "str | Path", mode: int = 0o700) -> None:
    """A folder made here gets its mode set, not the caller's umask's: under umask 0177 mkdtemp
    makes 0600, a folder its own user (if not root) cannot enter, so git could not work in it."""
    os.chmod(folder, mode)


# -- bare repositories and fetching -----------------------------------------------------------


def _cache_name(url: str) -> str:
    """A readable, collision-free directory name for one URL's bare repository."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:40]
    return f"{tail or 'repo'}-{blake3.blake3(url.encode()).hexdigest()[:16]}.git"


@contextlib.contextmanager
def _bare_repo(git: _Git, url: str, cache_dir: Path | None) -> Iterator[Path]:
    """A bare repository for `url`, locked for the caller's exclusive use while it is held."""
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="planner-git-") as tmp:
            _usable(tmp)
            repo = Path(tmp) / "repo.git"
            git.run(["init", "--bare", "-q", repo], where=url, what="git init")
            yield repo
        return
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    repo = cache_dir / _cache_name(url)
    with open(cache_dir / (repo.name + ".lock"), "w") as lock:
        # Concurrent fetches into one repository race on the shallow file and refs.
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in ("shallow.lock", "packed-refs.lock", "config.lock"):
            # left by a git killed mid-fetch: under our lock no other git is at work here
            with contextlib.suppress(FileNotFoundError):
                os.unlink(repo / stale)
        if not (repo / "HEAD").exists():
            # Initialise aside and rename, so a crash never leaves a half-made repository.
            tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.", dir=cache_dir))
            try:
                _usable(tmp)
                git.run(["init", "--bare", "-q", tmp], where=url, what="git init")
                if repo.exists():
                    shutil.rmtree(repo)
                os.rename(tmp, repo)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        yield repo


def _has_commit(git: _Git, repo: Path, commit: str, *, complete: bool = True) -> bool:
    """`repo` has `commit` and, when `complete`, every tree and blob of it: a fetch killed
    part way (Ctrl-C, SIGKILL) can leave the commit object without its blobs, which only the
    checkout would find, on every later run."""
    if not complete:
        args = ["cat-file", "-e", f"{commit}^{{commit}}"]
    else:
        args = ["rev-list", "--objects", "--no-walk", "--missing=error", "--quiet", f"{commit}^{{commit}}"]
    return git.run(args, git_dir=repo, where="", what="", check=False).returncode == 0


def _fetch_commit(git: _Git, repo: Path, url: str, commit: str) -> None:
    """Make `commit` (and its whole tree) present in `repo`, pinned by a ref so gc keeps it."""
    keep = f"refs/planner/commits/{commit}"
    if _has_commit(git, repo, commit):
        return
    if _has_commit(git, repo, commit, complete=False):
        # The commit without all its objects (a fetch killed part way): git would not fetch
        # what it believes it has, so the repository starts again, empty (we hold its lock).
        shutil.rmtree(repo)
        git.run(["init", "--bare", "-q", repo], where=url, what="git init")
    shallow = git.run(["fetch", "--quiet", "--no-tags", "--depth", "1", "--", url, f"+{commit}:{keep}"],
                      git_dir=repo, where=url, what="", check=False)
    if shallow.returncode == 0 and _has_commit(git, repo, commit):
        return
    # Servers without uploadpack.allowReachableSHA1InWant (protocol v0 and older hosts)
    # only hand out what they advertise: take every branch and tag, then look.
    full = ["fetch", "--quiet", "--no-tags"]
    if (repo / "shallow").exists():
        full.append("--unshallow")
    full += ["--", url, "+refs/heads/*:refs/planner/heads/*", "+refs/tags/*:refs/planner/tags/*"]
    proc = git.run(full, git_dir=repo, where=url, what="", check=False)
    if proc.returncode != 0:
        reason = git_reason(proc.stderr) or git_reason(shallow.stderr)
        raise FetchError(f"cannot fetch commit {commit}: {reason}", where=url)
    if not _has_commit(git, repo, commit):
        raise FetchError(f"commit {commit} is not reachable from any branch or tag", where=url)
    git.run(["update-ref", keep, commit], git_dir=repo, where=url, what=f"pinning {commit}")


def _check_commit(commit: str, url: str) -> str:
    if not _COMMIT_RE.fullmatch(commit.lower()):
        raise FetchError(f"{commit!r} is not a full 40-hex commit id (resolve the ref first)", where=url)
    return commit.lower()


# -- public API -------------------------------------------------------------------------------


def resolve(url: str, ref: str) -> str:
    """The commit `ref` names at `url`: a full commit id is returned as is (lowercased, not
    checked); a branch or tag is looked up with `git ls-remote`, annotated tags peeled.

    Lookup order follows git's own: the exact name (`HEAD`, `refs/...`), then `refs/<ref>`,
    `refs/tags/<ref>`, `refs/heads/<ref>`.
    """
    if _COMMIT_RE.fullmatch(ref.lower()):
        return ref.lower()
    with _git() as git:
        # A pattern matches the tail of ref names; the peeled `^{}` line needs its own.
        proc = git.run(["ls-remote", "--", url, ref, f"{ref}^{{}}"], where=url, what=f"git ls-remote {ref}")
    refs: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        sha, _, name = line.partition("\t")
        refs[name.strip()] = sha.strip().lower()
    for name in (ref, f"refs/{ref}", f"refs/tags/{ref}", f"refs/heads/{ref}"):
        # `^{}` is the commit an annotated tag points at; the plain entry is the tag object.
        for key in (f"{name}^{{}}", name):
            if key in refs:
                return refs[key]
    raise FetchError(f"no branch or tag named {ref!r} (a commit must be given as 40 hex digits)",
                     where=url)


def export(url: str, commit: str, dest: Path, *, cache_dir: Path | None = None,
           paths: Sequence[str] | None = None) -> None:
    """Write the tree of `commit` to `dest` (which must not exist), without `.git`.

    `paths`: only these files and folders of the tree (a sparse export): git reads the blobs
    of those alone, so a commit whose other blobs are missing (a partial mirror) exports.
    Submodules are left as empty directories. The tree is assembled next to `dest` and
    renamed into place, so `dest` either is complete or does not exist.
    """
    commit = _check_commit(commit, url)
    dest = Path(dest)
    if os.path.lexists(dest):
        raise FetchError(f"cannot export {commit}: destination already exists", where=str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _git() as git, _repo_with(git, url, commit, cache_dir, sparse=paths is not None) as repo:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".checkout", dir=dest.parent))
        try:
            _usable(tmp, 0o755)  # a checkout's root is 0755 (mkdtemp makes it 0700, less the umask)
            # `read-tree --reset -u` into an empty index is the one-way merge that `git clone`
            # does for its checkout: same attribute handling, links, modes and gitlinks.
            if paths is None:
                git.run(["--work-tree", tmp, "read-tree", "--reset", "-u", commit], git_dir=repo,
                        where=url, what=f"checking out {commit}", GIT_INDEX_FILE=str(git.home / "index"))
            else:
                _check_paths(git, repo, url, commit, paths)
                index = str(git.home / "index")
                # The whole tree in the index first (trees only, no blob is read): a checkout
                # takes its .gitattributes from there, the root's included when it is not a path.
                git.run(["read-tree", commit], git_dir=repo, where=url, what=f"reading {commit}",
                        GIT_INDEX_FILE=index)
                # The same checkout restricted to the paths; literal: a `*` in a name is a `*`.
                git.run(["--literal-pathspecs", "--work-tree", tmp, "checkout", "--", *paths],
                        git_dir=repo, where=url, what=f"checking out {', '.join(paths)} of {commit}",
                        GIT_INDEX_FILE=index)
            os.rename(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _repo_with(git: _Git, url: str, commit: str, cache_dir: Path | None, *, sparse: bool) -> Iterator[Path]:
    """A bare repository that has `commit`: the URL's cached one, fetched into; for a sparse
    export from a repository on this machine, an empty one that borrows its objects in place
    (as `git clone --shared` does). A fetch packs every object of the commit and fails on the
    first one the source lacks, which a sparse export may not need (a snapshot missing a
    blob). Only objects are borrowed, never the source's config, hooks or attributes."""
    objects = local_objects(url) if sparse else None
    if objects is None:
        with _bare_repo(git, url, cache_dir) as repo:
            _fetch_commit(git, repo, url, commit)
            yield repo
        return
    repo = git.home / "borrowed.git"
    git.run(["init", "--bare", "-q", repo], where=url, what="git init")
    (repo / "objects" / "info" / "alternates").write_text(f"{objects}\n")
    if not _has_commit(git, repo, commit, complete=False):  # blobs outside the paths may be missing
        raise FetchError(f"cannot fetch commit {commit}: the repository does not have it", where=url)
    yield repo


def local_objects(url: str) -> Path | None:
    """The object folder of a git repository on this machine named by a path or a file:// URL."""
    from urllib.parse import unquote, urlsplit

    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None
        path = Path(unquote(parts.path))
    elif url.startswith("/"):
        path = Path(url)
    else:
        return None
    try:
        path = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if "\n" in str(path) or "\r" in str(path):
        return None  # one line of an alternates file
    if (path / ".git").is_dir():
        path = path / ".git"
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return path / "objects"
    return None


def reads_outside(real: Path, root: Path) -> Path | None:
    """Where git, reading the repository at `real`, would read outside `root`: a `.git` file's
    `gitdir:`, a worktree's `commondir`, the object store's `alternates`; None when nowhere."""
    seen: list[Path] = []
    try:
        gitdir = real / ".git"
        if gitdir.is_file():
            line = gitdir.read_text(errors="replace").strip()
            gitdir = (real / line.removeprefix("gitdir:").strip()).resolve()
        else:
            gitdir = gitdir.resolve() if gitdir.is_dir() else real  # else a bare repository
        seen.append(gitdir)
        common = gitdir / "commondir"
        if common.is_file():
            seen.append((gitdir / common.read_text(errors="replace").strip()).resolve())
        objects = [(d / "objects").resolve() for d in seen]  # a link elsewhere is read there
        for o in objects:  # and each alternate's own alternates (git follows five deep)
            alternates = o / "info" / "alternates"
            if alternates.is_file() and len(objects) < 64:
                objects += [(o / a.strip()).resolve() for a in alternates.read_text(errors="replace").splitlines()
                            if a.strip() and not a.startswith("#")]
        seen += objects
    except (OSError, RuntimeError, ValueError):
        return real
    return next((p for p in seen if not p.is_relative_to(root)), None)


def _check_paths(git: _Git, repo: Path, url: str, commit: str, paths: Sequence[str]) -> None:
    """Each of `paths` names a file or folder of the commit's tree (checked from its trees
    alone: the blobs outside the paths may be missing)."""
    listing = git.run(["--literal-pathspecs", "ls-tree", "-z", "--name-only", "--full-tree", commit, "--", *paths],
                      git_dir=repo, where=url, what=f"listing {commit}").stdout
    found = set(listing.split("\0"))
    for p in paths:
        if p not in found:
            raise FetchError(f"no file or folder {p} at {commit}", where=url)


def submodules(url: str, commit: str, *, cache_dir: Path | None = None) -> list[Submodule]:
    """The submodules pinned by `commit`: its gitlinks, with URLs from its `.gitmodules`."""
    commit = _check_commit(commit, url)
    where = f"{url} at {commit}"
    with _git() as git, _bare_repo(git, url, cache_dir) as repo:
        _fetch_commit(git, repo, url, commit)
        tree = git.run(["ls-tree", "-r", "-z", "--full-tree", commit], git_dir=repo, where=where,
                       what="git ls-tree")
        links: dict[str, str] = {}
        for entry in tree.stdout.split("\0"):
            meta, _, path = entry.partition("\t")
            fields = meta.split()
            if len(fields) == 3 and fields[0] == _GITLINK_MODE:
                links[path] = fields[2].lower()
        if not links:
            return []
        config = git.run(["config", "-z", "--blob", f"{commit}:.gitmodules", "--list"], git_dir=repo,
                         where=where, what="reading .gitmodules", check=False)
    if config.returncode != 0:
        raise FetchError(f"submodules at {', '.join(sorted(links))} but no readable .gitmodules: "
                         f"{git_reason(config.stderr)}", where=where)
    urls = _gitmodules_urls(config.stdout)
    out = []
    for path, sha in sorted(links.items()):
        if path not in urls:
            raise FetchError(f"submodule {path} has no url in .gitmodules", where=where)
        out.append(Submodule(path=path, url=resolve_submodule_url(url, urls[path]), commit=sha))
    return out


def _gitmodules_urls(listing: str) -> dict[str, str]:
    """path -> url from `git config -z --list` of a .gitmodules (entries are `key\\nvalue\\0`)."""
    by_name: dict[str, dict[str, str]] = {}
    for item in listing.split("\0"):
        key, _, value = item.partition("\n")
        if not key.startswith("submodule."):
            continue
        name, _, field = key[len("submodule."):].rpartition(".")
        by_name.setdefault(name, {})[field] = value
    return {fields["path"]: fields["url"] for fields in by_name.values() if "path" in fields and "url" in fields}


def resolve_submodule_url(parent: str, url: str) -> str:
    """Resolve a `.gitmodules` URL against the superproject's, as `git submodule` does.

    Only `./` and `../` URLs are relative; each `../` drops one path component of the parent
    (for scp-like `host:path` URLs the colon counts as a separator too).
    """
    if not (url.startswith("./") or url.startswith("../")):
        return url
    original, base, colon = url, parent.rstrip("/"), False
    while True:
        if url.startswith("../"):
            url = url[3:]
            slash = base.rfind("/")
            # Never chop into `scheme://`: that would make a host out of a path.
            if slash > 0 and base[slash - 1] != "/":
                base = base[:slash]
            elif ":" in base and "://" not in base:
                base, colon = base[: base.rfind(":")], True
            else:
                raise FetchError(f"cannot resolve relative submodule url {original!r}: too many '../'", where=parent)
        elif url.startswith("./"):
            url = url[2:]
        else:
            break
    return f"{base}{':' if colon else '/'}{url}"
