"""Locking a recipe set (`planner lock`): every declared input resolved or kept, the lock
written, the inputs that could not be reached marked unlocked; `lock --check` against the
store; `planner prefetch`."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Optional

import attrs

from ..errors import FetchError, HashMismatch, LockError
from ..lock import ANY, InputDecl, Lock, LockedInput, Pin, declarations, recipes_digest
from ..recipes import RecipeSet, Source
from ..store import Store
from .inputs import Resolver
from .pins import pin_conflict


def lock_store_conflicts(rs: RecipeSet, lock: Lock, store: Store) -> list[str]:
    """`lock --check` against what the store holds: pins whose tree the store knows as other bytes."""
    out = []
    for decl_id, decl in sorted(declarations(rs).items()):
        li = lock.inputs.get(decl_id)
        if li is None or li.status != "locked":
            continue
        for plat, pin in sorted(li.pins.items()):
            problem = pin_conflict(store, pin, decl.unpacks)
            if problem:
                out.append(f"{decl_id}{'' if plat == ANY else f' [{plat}]'}: {problem}")
    return out


def prefetch(store: Store, what: str, *, mirrors: list[str] = (), log: Callable[[str], None] = lambda s: None
             ) -> tuple[InputDecl, LockedInput]:
    """`planner prefetch`: fetch a URL or `GIT_URL@REV` once into the store and pin it, like
    nix-prefetch-url / nix-prefetch-git. Prints what a recipe or lock needs."""
    is_git = what.startswith(("git+", "git://")) or re.search(r"\.git(@[^/]*)?$", what) is not None
    if is_git:
        spec = what[4:] if what.startswith("git+") else what
        url, at, rev = spec.rpartition("@") if "@" in spec.rsplit("/", 1)[-1] else (spec, "", "")
        source = Source(kind="git", url=url, rev=rev or "HEAD")
    else:
        source = Source(kind="url", url=what)
    decl = InputDecl(id=f"prefetch/{source.kind}", recipe="prefetch", name="source", source=source)
    resolver = Resolver(None, store, log=log, mirrors=list(mirrors))  # type: ignore[arg-type]
    with store.gc_lock(exclusive=False):
        return decl, resolver.resolve(decl)


def declared_pins(decl: InputDecl) -> Optional[dict[str, Pin]]:
    """Pins a recipe states up front (a full git commit, a sha256, a tree hash): what a
    machine without network records, and what a machine with network must then find."""
    src, patch = decl.source, decl.patch
    tree = src.tree if src is not None else patch.tree if patch is not None else None
    sha = src.sha256 if src is not None else patch.sha256 if patch is not None else None
    commit = src.rev if src is not None and src.kind == "git" and re.fullmatch(r"[0-9a-f]{40}", src.rev or "") else None
    if decl.platforms != (ANY,) or not (tree or sha or commit):
        return None
    url = src.url if src is not None and src.kind in ("git", "url") else patch.url if patch is not None else None
    filename = url.rsplit("/", 1)[-1] if patch is not None and url else None
    return {ANY: Pin(tree=tree, sha256=sha, commit=commit, url=url, filename=filename)}


def lock_set(rs: RecipeSet, store: Store, *, update: frozenset[str] = frozenset(),
             log: Callable[[str], None] = lambda s: None, mirrors: list[str] = ()) -> tuple[Lock, list[str]]:
    """Resolve every input not already pinned (or named in `update`). Returns the lock and the
    ids that changed. Local inputs are always re-hashed. An input that cannot be reached is
    written as `unlocked` with the reason (keeping any prefetched pins), and the others are
    still pinned; `UnresolvedInputs` is raised after the lock is written.

    Two `planner lock` of one project take turns, from reading the lock to writing it: each
    writes the whole file, so the one that read first would drop the other's update."""
    with _lockfiles_held(rs.lockfile, log):
        return _lock_set(rs, store, update=update, log=log, mirrors=mirrors)


@contextlib.contextmanager
def _lockfiles_held(lockfile: Path, log: Callable[[str], None]) -> Iterator[None]:
    """An exclusive flock on the lockfile's folder (the file itself is replaced by a rename,
    so its inode cannot be the lock); a folder that cannot be made is not locked."""
    try:
        lockfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lockfile.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another `planner lock` of {lockfile.parent.name}/")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _lock_set(rs: RecipeSet, store: Store, *, update: frozenset[str], log: Callable[[str], None],
              mirrors: list[str]) -> tuple[Lock, list[str]]:
    from .. import lock as lockmod

    old: Optional[Lock] = None
    if os.path.lexists(rs.lockfile):
        try:
            old = lockmod.read(rs.lockfile)
        except LockError as exc:
            # Never replaced silently: what it pins (a commit a branch has since left, a file
            # upstream has since changed) would be re-pinned to whatever upstream has now.
            raise LockError(f"{exc.message}; `planner lock` keeps what a lock pins, so it does not replace one it "
                            "cannot read: repair it (a merge conflict?) or delete it to pin every input anew",
                            where=exc.where) from None
    resolver = Resolver(rs, store, log=log, mirrors=list(mirrors))
    decls = declarations(rs)
    unknown = [u for u in update if u not in decls and u not in rs.recipes]
    if unknown:
        raise LockError(f"--update {unknown[0]!r} names no input or recipe of set {rs.name!r}")
    with store.gc_lock(exclusive=False):  # gc must not empty tmp/ under our downloads
        try:
            resolver.prefetch_apt(_apt_to_resolve(decls, old, update))
            inputs, changed, failures = _resolve_all(decls, old, update, resolver)
        finally:
            resolver.discard_prefetched()
    lock = Lock(set=rs.name, recipes=recipes_digest(rs), source_date_epoch=rs.config.source_date_epoch,
                inputs=inputs)
    lockmod.write_atomic(rs.lockfile, lockmod.to_toml(lock))
    if failures:
        raise UnresolvedInputs(failures, changed)
    return lock, changed


def _apt_to_resolve(decls: dict[str, InputDecl], old: Optional[Lock], update: frozenset[str]
                    ) -> list[tuple[InputDecl, str, Optional[str]]]:
    out = []
    for id_, decl in decls.items():
        prev = old.inputs.get(id_) if old else None
        if decl.kind != "apt" or (prev is not None and id_ not in update and decl.recipe not in update
                                  and prev.status == "locked" and prev.spec == decl.spec()):
            continue
        kept = _pins_kept_for_new_platforms(decl, prev) if id_ not in update and decl.recipe not in update else None
        out.extend((decl, platform, decl.source.version if decl.source else None) for platform in decl.platforms
                   if not kept or platform not in kept)  # only the platforms that were added
    return out


def _resolve_all(decls: dict[str, InputDecl], old: Optional[Lock], update: frozenset[str], resolver: Resolver
                 ) -> tuple[dict[str, LockedInput], list[str], list["Unresolved"]]:
    inputs: dict[str, LockedInput] = {}
    changed: list[str] = []
    failures: list[Unresolved] = []
    for id_, decl in decls.items():
        prev = old.inputs.get(id_) if old else None
        wanted = id_ in update or decl.recipe in update
        if (prev is not None and not wanted and not decl.local and prev.status == "locked"
                and prev.spec == decl.spec()):
            inputs[id_] = prev
            continue
        kept = _pins_kept_for_new_platforms(decl, prev) if not wanted else None
        if kept is not None:
            # Only platforms were added (a recipe or set now builds for arm64 too): the pins of
            # the old ones stay, and only the new ones are fetched.
            missing = attrs.evolve(decl, platforms=tuple(p for p in decl.platforms if p not in kept))
            try:
                new = resolver.resolve(missing)
            except HashMismatch:
                raise
            except (FetchError, LockError) as exc:
                failures.append(Unresolved(id_, exc.line(), kept=True))
                inputs[id_] = prev
                continue
            inputs[id_] = attrs.evolve(new, spec=decl.spec(), pins={**kept, **new.pins})
            changed.append(id_)
            continue
        expected = prev.pins if prev is not None and prev.status == "unlocked" and prev.spec == decl.spec() else None
        expected = expected or declared_pins(decl)
        try:
            new = resolver.resolve(decl, expected)
        except HashMismatch:
            raise
        except (FetchError, LockError) as exc:
            if prev is not None and prev.status == "locked" and prev.spec == decl.spec():
                failures.append(Unresolved(id_, exc.line(), kept=True))
                inputs[id_] = prev  # an --update that cannot reach upstream keeps the old pin
                continue
            failures.append(Unresolved(id_, exc.line(), kept=False))
            new = LockedInput(id=id_, kind=decl.kind, origin=decl.origin, spec=decl.spec(),
                              pins=dict(expected or {}), status="unlocked", reason=decl.unlocked_reason(exc.line()))
        inputs[id_] = new
        if prev is None or prev.pins != new.pins or prev.spec != new.spec or prev.status != new.status:
            changed.append(id_)
    return inputs, changed, failures


def _pins_kept_for_new_platforms(decl: InputDecl, prev: Optional[LockedInput]) -> Optional[dict[str, Pin]]:
    """The previous pins, when `decl` differs from what was locked only by added platforms."""
    if prev is None or prev.status != "locked" or prev.spec == decl.spec() or ANY in decl.platforms:
        return None
    old = tuple(p for p in decl.platforms if p in prev.pins)
    if not old or len(old) == len(decl.platforms):
        return None
    if attrs.evolve(decl, platforms=old).spec() != prev.spec:
        return None
    return {p: prev.pins[p] for p in old}


@attrs.frozen
class Unresolved:
    """An input `lock` could not resolve: why, and whether its old pin was kept (an --update
    that could not reach upstream) or it is written as unlocked."""

    id: str
    reason: str
    kept: bool


class UnresolvedInputs(LockError):
    """Some inputs could not be resolved; the lock was written with each either marked
    unlocked or, where it had a pin, keeping it."""

    def __init__(self, failures: list[Unresolved], changed: list[str]) -> None:
        self.failures = failures
        self.changed = changed  # (the unlocked ones among them are not pinned)
        first = failures[0]
        what = "its old pin is kept" if first.kept else "marked unlocked in the lock"
        more = f"; and {len(failures) - 1} more" if len(failures) > 1 else ""
        super().__init__(f"could not resolve {first.id}: {first.reason} ({what}{more})")
