"""`planner mirror export`: every locked input of a set written into a mirror folder (files by
sha256 and origin URL, git repositories by origin URL holding the pinned commit and the
recipe's branch or tag at it), from the store or fetched again by hash."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

from .mirrors import add_file, add_git, mirror_candidates


class Exported(NamedTuple):
    id: str
    platform: str
    status: str  # "written", "skipped" (not a file or repository a mirror serves) or "failed"
    detail: str


def _git_caches_with(store_root: Path, commit: str) -> list[Path]:
    import subprocess

    found = []
    for repo in sorted((store_root / "git-cache").glob("*.git")):
        if repo.is_symlink() or not (repo / "HEAD").is_file():
            continue
        proc = subprocess.run(["git", "--git-dir", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True, stdin=subprocess.DEVNULL)
        if proc.returncode == 0:
            found.append(repo)
    return found


def export_set(rs, store, lock, mirror: Path, *, mirrors: list[str] = (), log=lambda s: None) -> list[Exported]:
    """Write every locked input of a set into `mirror`: files by sha256 (and URL inputs by their
    origin URL), git repositories by origin URL with the pinned commit. Content comes from the
    store where it is there as fetched (a file, a git cache holding the commit); otherwise it is
    fetched again (from `mirrors`, then the origin) and checked against the lock."""
    from .errors import PlannerError
    from .lock import ANY, declarations

    mirror = Path(mirror)
    mirror.mkdir(parents=True, exist_ok=True)
    out: list[Exported] = []
    decls = declarations(rs)
    for id_, decl in decls.items():
        li = lock.inputs.get(id_)
        if decl.local:
            out.append(Exported(id_, ANY, "skipped", "local to the project"))
            continue
        if li is None or li.status != "locked":
            out.append(Exported(id_, ANY, "failed", "not locked" + (f": {li.reason}" if li and li.reason else "")))
            continue
        for platform, pin in sorted(li.pins.items()):
            log(f"exporting {id_}" + ("" if platform == ANY else f" [{platform}]"))
            try:
                detail = _export_one(decl, pin, platform, store, mirror, list(mirrors), rs.name)
                out.append(Exported(id_, platform, "written" if detail[0] else "skipped", detail[1]))
            except PlannerError as exc:
                out.append(Exported(id_, platform, "failed", exc.line()))
    return out


def _export_one(decl, pin, platform, store, mirror: Path, mirrors: list[str], set_name: str) -> tuple[bool, str]:
    import tempfile

    from .derivation import fixed_key
    from .errors import FetchError

    src, patch = decl.source, decl.patch
    kind = decl.kind
    if kind == "image":
        return False, "registry images are mirrored by a registry (skopeo copy --all), not a folder"
    if kind == "git":
        url, commit = str(src.url), str(pin.commit)
        caches = _git_caches_with(store.root, commit)
        sources = [str(c) for c in caches] + mirror_candidates(url, mirrors, git=True)
        errors = []
        for repo in sources:
            notes: list[str] = []
            try:
                # The recipe's branch or tag too, at the pinned commit: `lock --update` on an
                # air-gapped site then resolves it from the mirror (to the same commit).
                rev = str(src.rev) if src.rev else None
                rel = add_git(mirror, url, repo, commits=(commit,), warn=notes.append,
                              names={rev: commit} if rev else None)
                return True, rel + "".join(f" (warning: {n})" for n in notes)
            except FetchError as exc:
                errors.append(exc.message)
        raise FetchError(f"commit {commit} found nowhere: {errors[-1] if errors else 'no source'}", where=decl.id)
    if not pin.sha256:
        raise FetchError("the lock has no sha256 for it", where=decl.id)
    origin = (str(src.url) if src is not None and src.kind == "url" else patch.url if patch is not None
              else pin.url if kind == "apt" and pin.url else None)  # (a .deb comes by hash from where apt found it)
    entry = store.lookup(fixed_key(pin.tree, decl.unpacks)) if pin.tree else None
    if entry is not None and entry.path.is_file() and not entry.path.is_symlink():
        return True, ", ".join(add_file(mirror, entry.path, url=origin, sha256=pin.sha256))
    # Only the unpacked tree is stored (or nothing): fetch the bytes again, by hash.
    with tempfile.TemporaryDirectory(prefix="planner-mirror-") as tmp:
        dest = Path(tmp) / (pin.filename or "download")
        if origin is not None:
            from .fetch import url as urlfetch

            last: Optional[Exception] = None
            for cand in mirror_candidates(origin, mirrors, sha256=pin.sha256):
                try:
                    urlfetch.download(cand, dest, sha256=pin.sha256, size=pin.size)
                    break
                except FetchError as exc:
                    last = exc
            else:
                raise FetchError(f"cannot fetch it again: {last}", where=decl.id)
        elif kind == "pypi":
            from .fetch import pypi
            from .fetch.simple_index import parse_as_of

            dest = pypi.download(str(src.name), str(src.version), dist=src.dist, dest_dir=Path(tmp),
                                 platform=src.platform or (None if platform == "any" else platform),
                                 python_version=src.python,
                                 as_of=parse_as_of(decl.as_of) if decl.as_of else None)
        else:
            raise FetchError(f"not in the store as fetched, and its pin names no URL to fetch it again from; "
                             f"run `planner lock {set_name} --update {decl.id}` first", where=decl.id)
        return True, ", ".join(add_file(mirror, dest, url=origin, sha256=pin.sha256))
