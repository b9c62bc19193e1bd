"""Source mirrors for air-gapped sites: where to look for a URL or a git repository.

Standard library only: the CLI reads the mirror configuration before it knows whether any
fetching is needed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import LockError


def mirror_candidates(url: str, mirrors: list[str], *, sha256: Optional[str] = None, git: bool = False) -> list[str]:
    """Where to look for `url`: each mirror by content hash first, then by origin path, then the origin.

    Mirror layout (a folder served over file:// or HTTP):
        <mirror>/sha256/<hex>          any file, by the sha256 of its bytes
        <mirror>/urls/<host>/<path>    a file, by its origin URL
        <mirror>/git/<host>/<path>     a git repository, by its origin URL
    """
    from .errors import FetchError

    try:
        # The path `mirror add` and `mirror export` write it under: one function for both, so
        # an origin spelt another way (GitHub.com, :443, %2B) is found where it was put.
        rel: Optional[str] = origin_path(url.split("#", 1)[0])
    except FetchError:
        rel = None  # no origin path (a query, a file:// URL): by content hash only
    out: list[str] = []
    for m in mirrors:
        m = m.rstrip("/")
        if git:
            if rel is not None:
                out.append(f"{m}/git/{rel}")
            continue
        if sha256:
            out.append(f"{m}/sha256/{sha256}")
        if rel is not None:
            out.append(f"{m}/urls/{rel}")
    out.append(url)
    return list(dict.fromkeys(out))


def load_mirrors(root: Path, extra: list[str] = ()) -> list[str]:
    """Mirrors from the command line / PLANNER_MIRRORS first, then the project's planner.toml."""
    import os
    import tomllib

    out = list(extra)
    out += [mirror_url(m, "PLANNER_MIRRORS") for m in os.environ.get("PLANNER_MIRRORS", "").split()]
    cfg = root / "planner.toml"
    if cfg.is_file():
        try:
            data = tomllib.loads(cfg.read_text())
        except ValueError as exc:  # (TOMLDecodeError, not UTF-8, an integer of 5,000 digits)
            raise LockError(f"invalid TOML: {' '.join(str(exc).split())[:200]}", where=str(cfg)) from None
        urls = data.get("mirrors", {}).get("urls", [])
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise LockError("mirrors.urls must be a list of URLs", where=f"{cfg}: mirrors.urls")
        out += [mirror_url(u, f"{cfg}: mirrors.urls", base=root) for u in urls]
    return list(dict.fromkeys(out))


def mirror_url(entry: str, where: str, *, base: Optional[Path] = None) -> str:
    """A mirror as a URL: a folder (relative to `base`, else the current folder) as file://, or
    an http(s) or file URL as given; anything else is an error naming where it came from."""
    from urllib.parse import urlsplit

    if "://" not in entry:
        if not entry or any(c in entry for c in "\0\n\r"):
            raise LockError(f"{entry[:80]!r} is not a folder or an http(s) or file URL", where=where)
        folder = (base / entry).resolve() if base is not None else Path(entry).absolute()
        if not folder.is_dir():
            raise LockError(f"{entry[:80]!r}: no such folder (a mirror is a folder or an http(s) or file URL)",
                            where=where)
        return folder.as_uri()
    try:
        parts = urlsplit(entry)
        parts.port  # noqa: B018  (raises for a port that is not one)
    except ValueError as exc:
        raise LockError(f"{entry[:80]!r} is not a valid URL: {exc}", where=where) from None
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.hostname):
        raise LockError(f"{entry[:80]!r} is not a folder or an http(s) or file URL", where=where)
    return entry


# -- making mirrors ------------------------------------------------------------------------------
#
# A mirror is written by adding content under the origin URL it stands for; each file lands by
# rename, so a reader never sees half of one. Paths come from URLs, which are untrusted: each
# segment is checked, so nothing lands outside the mirror.

_DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}
_SEGMENT_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+-=,:")


def origin_path(url: str) -> str:
    """`<host>/<path>` of an origin URL, as `mirror_candidates` looks it up, or an error."""
    from urllib.parse import unquote, urlsplit

    from .errors import FetchError

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise FetchError(f"not a valid URL: {exc}", where=url) from None
    if parts.scheme not in ("http", "https", "git", "ssh") or not parts.netloc:
        raise FetchError("a mirror entry is named by an http(s), git or ssh origin URL", where=url)
    if "@" in parts.netloc:
        raise FetchError("credentials in an origin URL do not belong in a mirror path", where=url)
    if parts.query or parts.fragment:
        raise FetchError("an origin URL with a query or fragment cannot name a mirror path", where=url)
    try:
        port = parts.port
    except ValueError:
        raise FetchError(f"{parts.netloc!r} is not a host with a valid port", where=url) from None
    # Host names are case-insensitive and a scheme's default port is no port: each origin has
    # one path in the mirror however the recipe spells it.
    host = parts.hostname or ""
    netloc = host if port in (None, _DEFAULT_PORTS[parts.scheme]) else f"{host}:{port}"
    # Split before unescaping: an escaped '/' (%2F) stays inside its segment, and is refused.
    segments = [netloc] + [unquote(seg) for seg in parts.path.split("/")[1:]]
    for seg in segments:
        if seg in ("", ".", "..") or not set(seg) <= _SEGMENT_OK or len(seg) > 200:
            raise FetchError(f"path segment {seg!r} cannot be part of a mirror path", where=url)
    return "/".join(segments)


def _inside(mirror: Path, rel: str) -> Path:
    """`mirror/rel`, refusing any existing symlink on the way (a planted link would redirect writes)."""
    from .errors import FetchError

    path = mirror
    for seg in rel.split("/"):
        path = path / seg
        if path.is_symlink():
            raise FetchError(f"{rel}: {path} is a symbolic link; refusing to write through it", where=str(mirror))
    return path


def _place_file(source: Path, dest: Path) -> None:
    import os
    import shutil
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def add_file(mirror: Path, source: Path, *, url: Optional[str] = None, sha256: Optional[str] = None) -> list[str]:
    """Put a file into the mirror by its sha256 (and by its origin URL when given). With
    `sha256`, the bytes must have it. Returns the mirror paths written, relative."""
    from .errors import FetchError, HashMismatch

    if not source.is_file():
        raise FetchError("not a regular file", where=str(source))
    digest = _sha256(source)
    if sha256 is not None and digest != sha256:
        raise HashMismatch(str(source), sha256, digest)
    rels = [f"sha256/{digest}"] + ([f"urls/{origin_path(url)}"] if url else [])
    dests = [_inside(mirror, rel) for rel in rels]  # every one checked before any is written
    for rel, dest in zip(rels, dests):
        try:
            _place_file(source, dest)
        except OSError as exc:
            raise FetchError(f"cannot write {rel} in the mirror: {exc.strerror or exc}",
                             where=url or str(source)) from None
    return rels


def add_git(mirror: Path, url: str, repo: str, *, commits: tuple[str, ...] = (),
            warn: Optional[Callable[[str], None]] = None, names: Optional[dict[str, str]] = None) -> str:
    """Put the git repository at `repo` (a path or URL) into the mirror under `url`: every
    branch and tag (or only `commits`, each kept by a ref), in a bare repository that git
    serves over file://, smart HTTP and, after `update-server-info`, plain HTTP. `names`: a
    branch or tag name -> the commit it named where the lock was made, each written as a ref
    unless the mirror's repository has that ref already (`lock --update` resolves it there).

    A commit of a repository on this machine that lacks some of the commit's objects (a
    snapshot missing a blob) is copied with the objects it has, and `warn` names the files
    missing: it serves inputs that take only other paths of it (`paths`), over file://."""
    import re
    import subprocess
    import tempfile

    from .errors import FetchError
    from .fetch.git import git_reason

    rel = f"git/{origin_path(url)}"
    for c in commits:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._/-]*", c) or ".." in c:
            raise FetchError(f"{c!r} is not a commit or ref name", where=url)
    dest = _inside(mirror, rel)
    import os

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir(), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}

    def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(["git", "-c", "gc.auto=0", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise FetchError(f"git {args[0]} failed: {git_reason(proc.stderr) or proc.returncode}", where=url)
        return proc

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(dest.parent):  # adds of one origin take turns: none sees another's half
            rel = _add_git_locked(git, dest, rel, repo, url, commits, warn)
            for name, commit in sorted((names or {}).items()):
                _name_commit(git, dest, name, commit)
            return rel
    except OSError as exc:
        raise FetchError(f"cannot write {rel} in the mirror: {exc.strerror or exc}", where=url) from None


def _name_commit(git: Callable, repo: Path, name: str, commit: str) -> None:
    """`name` (a recipe's `rev`: a branch, a tag, or a full ref) as a ref to `commit` in the
    mirror's bare `repo`, unless it is there already or is not a ref name git takes."""
    import re

    from .errors import FetchError

    if re.fullmatch(r"[0-9a-fA-F]{40}", name) or name == "HEAD":
        return  # a commit names itself
    ref = name if name.startswith("refs/") else f"refs/heads/{name}"
    try:
        git("check-ref-format", ref)
    except FetchError:
        return  # not a ref name git takes
    try:
        git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", cwd=repo)
        return  # what the repository says it names wins over the lock's memory of it
    except FetchError:
        pass
    git("update-ref", ref, commit, cwd=repo)
    git("update-server-info", cwd=repo)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` itself (no lock file in the mirror), released on exit."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_bare_repository(path: Path) -> bool:
    return (not path.is_symlink() and (path / "HEAD").is_file() and (path / "objects").is_dir()
            and (path / "refs").is_dir())


def _add_git_locked(git: Callable, dest: Path, rel: str, repo: str, url: str, commits: tuple[str, ...],
                    warn: Optional[Callable[[str], None]]) -> str:
    import os
    import shutil
    import tempfile

    from .errors import FetchError

    if os.path.lexists(dest):
        if not _is_bare_repository(dest):
            raise FetchError(f"{rel} is already in the mirror and is not a bare git repository: "
                             "not replacing it", where=url)
        fresh = False
    else:
        fresh = True
    work = dest
    if fresh:  # made aside and renamed: a crash leaves no half-made repository in the mirror
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        os.chmod(work, 0o755)  # served to others (a web server, other users), as the files are
        git("init", "--bare", "-q", str(work))
    try:
        source = repo if "://" in repo else str(Path(repo).absolute())
        if commits:
            for c in commits:
                _fetch_pinned(git, work, source, c, url, warn)
        else:
            git("fetch", "-q", "--update-shallow", "--", source, "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*", cwd=work)
        if (work / "shallow").exists():
            # Over plain HTTP git walks the whole history: a shallow copy serves file:// only.
            try:
                git("fetch", "-q", "--unshallow", "--", url, "+refs/heads/*:refs/planner/origin/*", cwd=work)
            except FetchError:
                pass
        git("update-server-info", cwd=work)
        if fresh:
            work.rename(dest)
    finally:
        if fresh and work.exists() and work != dest:
            shutil.rmtree(work, ignore_errors=True)
    return rel


def _fetch_pinned(git: Callable, work: Path, source: str, commit: str, url: str,
                  warn: Optional[Callable[[str], None]]) -> None:
    """`commit` of `source` into `work`, kept by a tag: a tag keeps the pinned commit reachable
    from what a server advertises (git's plain-HTTP walker and hosts without reachable-SHA1
    fetches only see refs)."""
    from .errors import FetchError

    spec = f"+{commit}:refs/tags/planner/{commit}"
    try:
        git("fetch", "-q", "--no-tags", "--update-shallow", "--", source, spec, cwd=work)
        return
    except FetchError:
        pass
    # A snapshot may lack objects of older history: the commit and its tree alone still serve
    # a pinned build (over file:// and smart HTTP).
    try:
        git("fetch", "-q", "--no-tags", "--depth", "1", "--update-shallow", "--", source, spec, cwd=work)
        return
    except FetchError:
        from .fetch.git import local_objects

        objects = local_objects(source)
        if objects is None:
            raise
    # ... or lack some of the commit's own objects: copy those there are.
    missing = _copy_present_objects(git, work, objects, commit, url)
    git("update-ref", f"refs/tags/planner/{commit}", commit, cwd=work)
    if warn is not None:
        warn(f"{source} lacks {len(missing)} file{'s' if len(missing) != 1 else ''} of commit {commit} "
             f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): the mirror "
             "serves it over file:// to inputs whose `paths` leave them out")


def _copy_present_objects(git: Callable, work: Path, objects: Path, commit: str, url: str) -> list[str]:
    """Copy into `work` the commit and those of its trees and files that `objects` has (only
    objects are read there, never the source's config); the commit is marked shallow. Returns
    the paths of the files it lacks."""
    import subprocess

    from .errors import FetchError

    alternates = work / "objects" / "info" / "alternates"
    before = alternates.read_text() if alternates.exists() else None
    alternates.parent.mkdir(parents=True, exist_ok=True)
    alternates.write_text((before or "") + f"{objects}\n")
    try:
        try:
            kind = git("cat-file", "-t", commit, cwd=work).stdout.strip()
        except FetchError:
            raise FetchError(f"no commit {commit} in {url}'s repository", where=url) from None
        if kind != "commit":
            raise FetchError(f"{commit} is not a commit", where=url)
        listed = git("rev-list", "--objects", "--no-walk", "--missing=print", commit, cwd=work).stdout.splitlines()
        have = [line.split(" ", 1)[0] for line in listed if line and not line.startswith("?")]
        gone = {line[1:].strip() for line in listed if line.startswith("?")}
        names = git("ls-tree", "-r", "-z", "--full-tree", commit, cwd=work).stdout.split("\0")
        missing = sorted(e.split("\t", 1)[1] for e in names if e and e.split("\t", 1)[0].split()[2] in gone)
        pack = subprocess.run(["git", "-c", "gc.auto=0", "pack-objects", "-q", str(work / "objects" / "pack" / "pack")],
                              cwd=work, input="".join(f"{o}\n" for o in have), capture_output=True, text=True,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_DIR": str(work),
                                   "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C"})
        if pack.returncode != 0:
            raise FetchError(f"copying the objects of {commit} failed: {pack.stderr.strip()[-200:]}", where=url)
    finally:
        if before is None:
            alternates.unlink(missing_ok=True)
        else:
            alternates.write_text(before)
    with open(work / "shallow", "a") as f:  # its parents are not copied
        f.write(f"{commit}\n")
    return missing

