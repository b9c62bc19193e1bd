"""Resolving one input to pins and materialising pinned inputs in the store (the `Resolver`).

Fetched content enters the store as fixed-output entries keyed by its tree hash, so a second
lock or a realise never downloads it again, and a re-compressed tarball with the same content
maps to the same entry. Nothing that fails verification is stored.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import attrs

from ..debfile import open_deb_control
from ..errors import FetchError, HashMismatch, LockError, UnsafeArchive, UnsafeTree
from ..derivation import fixed_key
from ..mirrors import mirror_candidates
from ..lock import ANY, InputDecl, LockedInput, Pin, local_pin
from ..recipes import RecipeSet, Source
from ..store import Entry, Store, remove_tree
from .pins import pin_conflict, pin_origins


def _entry_name(decl: InputDecl, pin: Pin) -> str:
    base = pin.filename or f"{decl.recipe}-{decl.name}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", base)[:120]


def _refuse_special_files(folder: Path, root: Path, where: str) -> None:
    """A path source holds files, folders and links only: a fifo, socket or device is named."""
    import stat

    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                from ..safetree import kind_of

                rel = os.path.relpath(os.path.join(dirpath, name), root)
                raise FetchError(f"{rel} is {kind_of(mode)}: a path source holds only files, folders and links",
                                 where=where)


def _take_subdir(dest: Path, subdir: str, tmp: Path, where: str, shown: str) -> Path:
    """The folder `subdir` of a fetched tree, moved to `tmp/subdir`; the rest is deleted.

    Walked without following links: a `subdir` through a link (`a -> /home`, subdir `a/b`)
    would otherwise move a host folder into the store."""
    from ..safetree import Tree, checked_rel

    try:
        parts = checked_rel(subdir, where=where, what="subdir")
        with Tree(dest, where=where) as tree:
            os.close(tree.dir_fd(parts, create=False, purpose="subdir goes through"))
    except UnsafeTree as e:
        raise FetchError(f"no subdirectory {subdir} {shown} ({e.message})", where=where) from None
    if not parts:
        return dest
    os.rename(dest.joinpath(*parts), tmp / "subdir")
    remove_tree(dest)
    return tmp / "subdir"


@attrs.frozen
class Fetched:
    content: Path  # a file or an unpacked tree inside the store's tmp/
    pin: Pin
    # The temporary folder `_fetch` made for it, removed once the content is stored: never a
    # folder derived from the content's path (an index's file name once made that a host folder).
    work: Optional[Path] = None


def _remove_work(fetched: Fetched) -> None:
    if fetched.work is not None:
        remove_tree(fetched.work)


class Resolver:
    """Resolves and materialises the inputs of one recipe set against one store."""

    def __init__(self, rs: RecipeSet, store: Store, *, log: Callable[[str], None] = lambda s: None,
                 mirrors: list[str] = ()) -> None:
        self.rs = rs
        self.store = store
        self.log = log
        self.mirrors = list(mirrors)
        # Resolved once: a store named `../store` is `/cwd/../store`, and the checks that fetched
        # content stays inside its temporary folder compare normalised paths against it.
        self._work = Path(os.path.realpath(store.root / "tmp"))
        # (arch, package, version) -> (.deb, the URL apt fetched it from)
        self._apt_ready: dict[tuple[str, str, Optional[str]], tuple[Path, Optional[str]]] = {}

    def prefetch_apt(self, wanted: list[tuple[InputDecl, str, Optional[str]]]) -> None:
        """Download many apt inputs (decl, platform, version or None) in one apt call per
        architecture; `_fetch` then takes them from here and verifies them as usual."""
        from ..fetch import apt

        by_arch: dict[str, list[tuple[str, Optional[str]]]] = {}
        for decl, platform, version in wanted:
            src = decl.source
            if src is None or src.kind != "apt" or src.suite or platform == ANY:
                continue  # a suite is checked package by package
            by_arch.setdefault(apt.debian_arch(platform), []).append((src.apt_name(platform), version))
        for arch, items in sorted(by_arch.items()):
            if len(items) < 2:
                continue
            self.log(f"downloading {len(items)} Debian packages for {arch}")
            folder = Path(tempfile.mkdtemp(prefix="apt-batch-", dir=self._work))
            got = apt.download_many(items, arch, folder, state_dir=self.store.root / "apt-state")
            for (name, version), pkg in got.items():
                self._apt_ready[(arch, name, version)] = (pkg.path, pkg.url)

    def discard_prefetched(self) -> None:
        for folder in {p.parent for p, _url in self._apt_ready.values()}:
            remove_tree(folder)
        self._apt_ready.clear()

    def _first_that_works(self, candidates: list[str], attempt: Callable[[str], object], what: str):
        errors = []
        mismatch: Optional[HashMismatch] = None
        for cand in candidates:
            try:
                return cand, attempt(cand)
            except HashMismatch as exc:
                # Name the input first (what the user can act on), then where the bytes came from.
                if exc.where and not exc.where.startswith(what):
                    exc = HashMismatch(f"{what} (from {exc.where})", exc.expected, exc.actual)
                if cand == candidates[-1]:
                    raise exc from None
                # A mirror with other bytes than the pin (corrupt, or another file under that
                # name) is one bad source, not the input's verdict: the next one may have them.
                # Nothing of it was stored; if no source has the pinned bytes, this is the error.
                mismatch = mismatch or exc
                from ..fetch.url import _redact

                self.log(f"{what}: {_redact(cand)} has other bytes than the pin ({exc.line()}), "
                         "trying the next source")
                continue
            except FetchError as exc:
                errors.append(exc)
                if cand != candidates[-1]:
                    from ..fetch.url import _redact

                    self.log(f"{what}: {_redact(cand)} failed ({exc.line()}), trying the next source")
        if mismatch is not None:
            raise mismatch
        if len(errors) == 1:
            raise errors[0]
        # Every mirror and the origin failed: each one's own reason (git's, HTTP's) matters, the
        # mirror's most of all on an air-gapped site where the origin is expected to fail.
        from ..fetch.url import _redact

        raise FetchError("every source failed: " + "; ".join(
            f"{_redact(c)}: {e.message if e.where in (None, c) else e.line()}" for c, e in zip(candidates, errors)),
            where=what)

    # -- fetching ----------------------------------------------------------------------

    def _fetch(self, decl: InputDecl, platform: str, pin: Optional[Pin]) -> Fetched:
        """Fetch one input into a temporary place. With `pin`, reproduce exactly that pin."""
        tmp = Path(tempfile.mkdtemp(prefix="fetch-", dir=self._work))
        try:
            fetched = self._fetch_into(decl, platform, pin, tmp)
            if not Path(os.path.abspath(fetched.content)).is_relative_to(tmp):  # (lexically: `..` counts)
                raise FetchError(f"fetched content is outside its temporary folder: {fetched.content}", where=decl.id)
            return attrs.evolve(fetched, work=tmp)
        except BaseException:
            remove_tree(tmp)
            raise

    def _fetch_into(self, decl: InputDecl, platform: str, pin: Optional[Pin], tmp: Path) -> Fetched:
        src, patch = decl.source, decl.patch
        if decl.local:
            return self._fetch_local(decl, tmp)
        if src is not None and src.kind == "git":
            return self._fetch_git(decl, src, pin, tmp)
        if src is not None and src.kind in ("pypi", "apt") and pin is not None and pin.sha256:
            # A pinned file is the same bytes wherever it comes from: a mirror has it by hash
            # (`planner mirror export`), so an air-gapped site needs no index or apt archive.
            got = self._pinned_file_from_mirror(decl, src, pin, tmp)
            if got is not None:
                return got
        if src is not None and src.kind == "pypi":
            return self._fetch_pypi(decl, src, platform, pin, tmp)
        if src is not None and src.kind == "apt":
            return self._fetch_apt(decl, src, platform, pin, tmp)
        if (src is not None and src.kind == "url") or (patch is not None and patch.url):
            return self._fetch_url(decl, pin, tmp)
        if src is not None and src.kind == "image":
            return self._fetch_image(decl, platform, pin, tmp)
        raise LockError(f"inputs of kind {decl.kind} cannot be fetched by this planner yet", where=decl.id)

    def _fetch_local(self, decl: InputDecl, tmp: Path) -> Fetched:
        src, patch = decl.source, decl.patch
        rel = src.path if src is not None else patch.file  # type: ignore[union-attr]
        origin = self.rs.root / str(rel)
        dest = tmp / origin.name
        if origin.is_dir():
            _refuse_special_files(origin, self.rs.root, decl.id)
            shutil.copytree(origin, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        else:
            shutil.copyfile(origin, dest)
        got = local_pin(self.rs, decl)
        return Fetched(dest, got)

    def _fetch_git(self, decl: InputDecl, src: Source, pin: Optional[Pin], tmp: Path) -> Fetched:
        from ..fetch import git

        url = str(src.url)
        if self.rs is not None and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://|^[^/]+@[^/]+:", url) \
                and not url.startswith("/"):
            url = str(self.rs.root / url)  # a repository inside the project, not the cwd's
        cands = mirror_candidates(url, self.mirrors, git=True)
        if pin and pin.commit:
            commit = pin.commit
        else:
            _, commit = self._first_that_works(cands, lambda u: git.resolve(u, str(src.rev)), decl.id)
        dest = tmp / "checkout"
        used, _ = self._first_that_works(
            cands, lambda u: git.export(u, commit, dest, cache_dir=self.store.root / "git-cache", paths=src.paths),
            decl.id)
        if src.submodules and self.rs is not None:
            self._check_submodules(decl, used, commit)
        if src.subdir:
            dest = _take_subdir(dest, src.subdir, tmp, decl.id, f"at {commit}")
        return Fetched(dest, Pin(commit=commit, url=src.url))

    def _pinned_file_from_mirror(self, decl: InputDecl, src: Source, pin: Pin, tmp: Path) -> Optional[Fetched]:
        from ..hashing import file_sha256_and_blake3

        got_path = self._from_mirror_by_hash(decl, pin, tmp)
        if got_path is not None:
            sha, b3 = file_sha256_and_blake3(got_path)
            found = attrs.evolve(pin, sha256=sha, size=got_path.stat().st_size, filename=got_path.name, tree=b3)
            return self._maybe_unpack(decl, got_path, found, tmp) if src.kind == "pypi" else Fetched(got_path, found)
        return None

    def _fetch_pypi(self, decl: InputDecl, src: Source, platform: str, pin: Optional[Pin], tmp: Path) -> Fetched:
        from ..fetch import pypi
        from ..fetch.simple_index import parse_as_of
        from ..hashing import file_sha256_and_blake3

        path = pypi.download(str(src.name), str(src.version), dist=src.dist, dest_dir=tmp,
                             platform=src.platform or (None if platform == ANY else platform),
                             python_version=src.python,
                             as_of=parse_as_of(decl.as_of) if decl.as_of is not None else None)
        sha, b3 = file_sha256_and_blake3(path)
        for expected in (pin.sha256 if pin else None, src.sha256):  # the lock's, the recipe's
            if expected and expected != sha:
                raise HashMismatch(f"{decl.id} ({path.name})", expected, sha)
        got = Pin(sha256=sha, size=path.stat().st_size, filename=path.name, version=src.version, tree=b3)
        return self._maybe_unpack(decl, path, got, tmp)

    def _fetch_apt(self, decl: InputDecl, src: Source, platform: str, pin: Optional[Pin], tmp: Path) -> Fetched:
        from ..fetch import apt
        from ..hashing import file_sha256_and_blake3

        version = pin.version if pin and pin.version else src.version
        # Not popped: two recipes may pin the same package (base and the build root do).
        ready = self._apt_ready.get((apt.debian_arch(platform), src.apt_name(platform), version)) \
            if platform != ANY else None
        pkg = None
        if ready is not None and ready[0].exists():
            dest = tmp / ready[0].name
            shutil.copyfile(ready[0], dest)
            control = open_deb_control(dest)
            pkg = apt.AptPackage(path=dest, package=control.get("Package", ""), version=control.get("Version", ""),
                                 arch=control.get("Architecture", ""), url=ready[1])
        elif pin and pin.url and pin.sha256 and pin.filename:
            # A .deb pinned with its URL comes by hash from there (or a mirror): a host of
            # another distribution, whose apt knows nothing of this one, fetches it too.
            from ..fetch import url as urlfetch

            name = re.sub(r"[^A-Za-z0-9._+~-]", "_", pin.filename)
            try:
                _, got = self._first_that_works(
                    mirror_candidates(pin.url, self.mirrors, sha256=pin.sha256),
                    lambda u: urlfetch.download(u, tmp / name, sha256=pin.sha256, size=pin.size), decl.id)
                control = open_deb_control(got.path)
                pkg = apt.AptPackage(path=got.path, package=control.get("Package", ""),
                                     version=control.get("Version", ""), arch=control.get("Architecture", ""),
                                     url=pin.url)
            except HashMismatch:
                raise
            except FetchError as exc:
                self.log(f"{decl.id}: {exc.line()}; trying apt")
        try:
            pkg = pkg or apt.download(src.apt_name(platform), version, platform, tmp,
                                      state_dir=self.store.root / "apt-state", suite=src.suite)
        except FetchError as exc:
            raise FetchError(exc.message.replace(f"--update {src.apt_name(platform)}", f"--update {decl.id}"),
                             where=decl.id) from None
        sha, b3 = file_sha256_and_blake3(pkg.path)
        if pin and pin.sha256 and pin.sha256 != sha:
            raise HashMismatch(f"{decl.id} ({pkg.path.name})", pin.sha256, sha)
        return Fetched(pkg.path, Pin(sha256=sha, size=pkg.path.stat().st_size, filename=pkg.path.name,
                                     version=pkg.version, tree=b3, url=pkg.url or (pin.url if pin else None)))

    def _fetch_url(self, decl: InputDecl, pin: Optional[Pin], tmp: Path) -> Fetched:
        from ..fetch import url as urlfetch

        src, patch = decl.source, decl.patch
        url = str(src.url if src is not None else patch.url)  # type: ignore[union-attr]
        expected = (pin.sha256 if pin else None) or (src.sha256 if src is not None else patch.sha256)  # type: ignore[union-attr]
        filename = re.sub(r"[?#].*$", "", url).rstrip("/").rsplit("/", 1)[-1]
        if filename in ("", ".", "..") or "\0" in filename or "\\" in filename:
            filename = "download"  # the URL's last segment becomes a file name: never a path
        _, got = self._first_that_works(
            mirror_candidates(url, self.mirrors, sha256=expected),
            lambda u: urlfetch.download(u, tmp / filename, sha256=expected, size=pin.size if pin else None), decl.id)
        p = Pin(sha256=got.sha256, size=got.size, filename=filename, url=url, tree=got.blake3)
        return self._maybe_unpack(decl, got.path, p, tmp)

    def _from_mirror_by_hash(self, decl: InputDecl, pin: Pin, tmp: Path) -> Optional[Path]:
        if not self.mirrors or not pin.filename:
            return None
        name = pin.filename
        # Debian writes a version's epoch as %3a in file names (cpp_4%3a12.2.0-3_amd64.deb).
        if not re.fullmatch(r"[A-Za-z0-9_+~-][A-Za-z0-9._+~%-]*", name) or len(name) > 255:
            raise LockError(f"file name {name!r} in the lock is not a plain file name", where=decl.id)
        from ..fetch import url as urlfetch

        for m in self.mirrors:
            cand = f"{m.rstrip('/')}/sha256/{pin.sha256}"
            try:
                urlfetch.download(cand, tmp / name, sha256=pin.sha256, size=pin.size, retries=1)
                return tmp / name
            except HashMismatch:
                raise
            except FetchError:
                continue
        return None

    def _fetch_image(self, decl: InputDecl, platform: str, pin: Optional[Pin], tmp: Path) -> Fetched:
        """A registry image for one platform, by manifest digest: its manifest, config and layer
        blobs as an OCI layout-like folder (`manifest.json`, `blobs/sha256/…`).

        Every document is shape-checked as it is pulled (`pull_manifest`), so a registry's
        index entry without a digest, or a manifest whose layers are not descriptors, is one
        error naming this input and the field, and is never pinned."""
        from ..errors import OciError
        from ..oci.descriptor import INDEX_TYPES, MANIFEST_TYPES
        from ..oci.registry import Reference, client_for

        src = decl.source
        assert src is not None
        where = f"{decl.id} ({src.url})"
        try:
            ref = Reference.parse(str(src.url))
            with client_for(ref) as client:
                digest = pin.digest if pin and pin.digest else None
                if digest is None:
                    top = client.pull_manifest(ref.ref)
                    if top.descriptor.media_type in INDEX_TYPES:  # an index: pick this platform's manifest
                        os_, _, arch = platform.partition("/")
                        match = [d for d in top.children
                                 if d.platform is not None and (d.platform.os, d.platform.architecture) == (os_, arch)]
                        if not match:
                            raise FetchError(f"{src.url} has no {platform} image", where=decl.id)
                        digest = match[0].digest
                    else:
                        digest = top.descriptor.digest
                manifest = client.pull_manifest(digest)
                if manifest.descriptor.media_type not in MANIFEST_TYPES:
                    raise FetchError(f"{digest} ({platform}) is an index, not an image manifest", where=where)
                dest = tmp / "image"
                blobs = dest / "blobs" / "sha256"
                blobs.mkdir(parents=True)
                (dest / "manifest.json").write_bytes(manifest.data)
                for blob in manifest.children:  # the config, then the layers
                    client.pull_blob(blob.digest, blobs / blob.hex, size=blob.size)
        except OciError as exc:
            raise FetchError(exc.message, where=where) from None
        except OSError as exc:
            raise FetchError(f"cannot pull {src.url}: {exc}", where=decl.id) from None
        return Fetched(dest, Pin(digest=digest, url=str(src.url)))

    def _check_submodules(self, decl: InputDecl, url: str, commit: str) -> None:
        """`submodules = true`: every gitlink of the commit must be declared as an input
        `source/sub/<path>` of the recipe, pinned to the gitlink's commit, and nothing else.
        Submodules are separate inputs with their own tree hashes (tree hash v1)."""
        from ..fetch import git

        recipe = self.rs.recipes[decl.recipe]
        declared = {name[len("source/sub/"):]: s for name, s in recipe.inputs.items() if name.startswith("source/sub/")}
        links = {m.path: m for m in git.submodules(url, commit, cache_dir=self.store.root / "git-cache")}
        for path, m in sorted(links.items()):
            s = declared.get(path)
            if s is None:
                raise FetchError(f"{commit[:12]} has submodule {path} ({m.url} at {m.commit[:12]}); declare it as "
                                 f'[inputs."source/sub/{path}"] with rev = "{m.commit}"', where=decl.id)
            if s.rev != m.commit:
                raise FetchError(f"submodule {path}: the recipe pins {s.rev}, the commit's gitlink is {m.commit}",
                                 where=f"{decl.recipe}/source/sub/{path}")
        for path in sorted(set(declared) - set(links)):
            raise FetchError(f"source/sub/{path} is declared but {commit[:12]} has no submodule there",
                             where=decl.id)

    def _maybe_unpack(self, decl: InputDecl, path: Path, pin: Pin, tmp: Path) -> Fetched:
        if not decl.unpacks:
            return Fetched(path, pin)
        from ..archive import safe_extract

        dest = tmp / "unpacked"
        try:
            safe_extract(path, dest)
        except FetchError as exc:
            if isinstance(exc, HashMismatch):
                raise
            # Named by the input and the file it came as, not by a temporary path about to vanish.
            raise type(exc)(f"{pin.filename or path.name}: {exc.message}", where=decl.id) from None
        except UnsafeTree as exc:
            # The writer's refusal (a hardlink to nothing, a member through a link it did not
            # make) is the archive's fault: an unsafe archive of this input, which lock marks
            # unlocked like any other fetch failure.
            raise UnsafeArchive(f"{pin.filename or path.name}: {exc.message}", where=decl.id) from None
        path.unlink()
        src = decl.source
        if src is not None and src.subdir:
            dest = _take_subdir(dest, src.subdir, tmp, decl.id, f"in {pin.filename}")
        return Fetched(dest, pin)

    def _store(self, decl: InputDecl, fetched: Fetched, expected_tree: Optional[str]) -> tuple[Entry, Pin]:
        from ..hashing import tree_digest

        tree = tree_digest(fetched.content)
        if expected_tree is not None and tree != expected_tree:
            _remove_work(fetched)
            raise HashMismatch(f"{decl.id} (tree)", expected_tree, tree)
        pin = attrs.evolve(fetched.pin, tree=tree)
        key = fixed_key(tree, decl.unpacks)
        with self.store.key_lock(key):
            entry = self.store.lookup(key)
            if entry is None:
                entry = self.store.add(key, _entry_name(decl, pin), None, fetched.content, kind="fixed", digest=tree)
            self.store.add_origins(key, pin_origins(pin))
        _remove_work(fetched)
        return entry, pin

    # -- public ------------------------------------------------------------------------

    def resolve(self, decl: InputDecl, expected: Optional[dict[str, Pin]] = None) -> LockedInput:
        """Pin every platform of `decl`. `expected` holds prefetched pins (a commit, a tree hash)
        that the fetched content must match."""
        pins: dict[str, Pin] = {}
        for platform in decl.platforms:
            self.log(f"resolving {decl.id}" + ("" if platform == ANY else f" [{platform}]"))
            want = (expected or {}).get(platform)
            try:
                fetched = self._fetch(decl, platform, Pin(commit=want.commit, sha256=want.sha256) if want else None)
                _entry, pins[platform] = self._store(decl, fetched, want.tree if want else None)
            except OSError as e:  # this input unlocked, with a line naming it; the others still pinned
                raise FetchError(f"cannot fetch: {e.strerror or e}"
                                 f"{f' ({os.path.basename(e.filename)[:60]})' if e.filename else ''}",
                                 where=decl.id) from None
        return LockedInput(id=decl.id, kind=decl.kind, origin=decl.origin, spec=decl.spec(), pins=pins)

    def materialise(self, decl: InputDecl, li: LockedInput, platform: str | None) -> Entry:
        """The store entry of a pinned input, fetching (and verifying) it if absent."""
        if li.status != "locked":
            raise LockError(f"input is not locked: {li.reason or 'unresolved'}; run `planner lock {self.rs.name} --update {decl.id}`",
                            where=decl.id)
        pin = li.pin(platform)
        if pin.tree is None:
            raise LockError("pin has no tree hash", where=decl.id)
        entry = self.store.lookup(fixed_key(pin.tree, decl.unpacks))
        if entry is not None:
            problem = pin_conflict(self.store, pin, decl.unpacks)
            if problem:
                raise LockError(f"{problem}: was the pin edited by hand? run `planner lock {self.rs.name} --update {decl.id}`",
                                where=decl.id)
            return entry
        self.log(f"fetching {decl.id}")
        fetched = self._fetch(decl, platform or ANY, pin)
        entry, _ = self._store(decl, fetched, pin.tree)
        return entry

