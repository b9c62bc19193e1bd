"""The plan cache and the no-op answer of `planner realise`: one owner for both.

A successful realise leaves a plan cache: the stat signature of every file planning read, and
the nodes' keys and digests. If none of those files changed and the store still holds every
output, the answer comes from the cache, without loading a recipe.

Whether a realise may take the fast path at all is decided here, once (`fast_path_applies`,
asked by `answer_noop`): `planner.entry` asks before anything else is imported, the command
line asks before importing the planner, and `realise()` asks the same question.

This module is the whole cost of a no-op, so at import it keeps to what the interpreter has
built in: os, marshal and zlib; sqlite3 only when the store's index changed since the cache was
written; pathlib only in what a realise that did work calls. No json or hashlib: each costs
more to import than the answer takes.
"""

from __future__ import annotations

import marshal
import os
import zlib

PLAN_CACHE_VERSION = 2
_MISSING = (0, 0, 0, 0)


def fast_path_applies(*, dry_run: bool = False, check: bool = False, executor: object = None,
                      cache_to: object = (), platform: str | None = None, use_plan_cache: bool = True,
                      variant: str | None = None) -> bool:
    """A no-op answer is possible only for a plain realise of everything into the local store:
    a dry run, a --check rebuild, a remote executor, a cache to push to or one platform of the
    set (or one CUDA variant) all need the plan."""
    return use_plan_cache and not (dry_run or check or executor or cache_to or platform or variant)


def answer_noop(root, set_name: str, store_root, *, target: str | None = None, sandboxed: bool = True,
                dry_run: bool = False, check: bool = False, executor: object = None, cache_to: object = (),
                platform: str | None = None, variant: str | None = None, use_plan_cache: bool = True
                ) -> dict | None:
    """The cached answer of a realise with these options when it is a no-op, else None: the
    one decision every caller (entry point, command line, `realise()`) asks."""
    if not fast_path_applies(dry_run=dry_run, check=check, executor=executor, cache_to=cache_to,
                             platform=platform, variant=variant, use_plan_cache=use_plan_cache):
        return None
    return try_noop(root, set_name, store_root, target, sandboxed)


def stat_sig(p) -> tuple[int, int, int, int]:
    try:
        st = os.stat(p)
    except OSError:
        return _MISSING
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def files_unchanged(files: dict) -> bool:
    """Whether every file (or folder) still has the signature recorded (`stat_sig`); a missing
    one must have been missing. The one rule for every cache of planning's inputs."""
    stat = os.stat
    for f, sig in files.items():
        try:
            st = stat(f)
        except OSError:
            if sig != _MISSING:
                return False
            continue
        if (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino) != sig:
            return False
    return True


def changed_files(files: dict) -> list[str]:
    """The files (or folders) whose signature is not the one recorded (`files_unchanged`'s
    rule, every one of them listed: what a re-plan after an edit starts from)."""
    stat = os.stat
    out = []
    for f, sig in files.items():
        try:
            st = stat(f)
        except OSError:
            if sig != _MISSING:
                out.append(f)
            continue
        if (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino) != sig:
            out.append(f)
    return out


def _index_sigs(store_root: str) -> tuple:
    """What changes with every commit to the store's index: a commit appends to the write-ahead
    log (it grows), or restarts the log (its header's salts change), and a checkpoint writes the
    database file. Reading 32 bytes is cheaper than loading sqlite to ask."""
    index = os.path.join(store_root, "index.sqlite")
    try:
        with open(index + "-wal", "rb") as f:
            wal = (os.fstat(f.fileno()).st_size, f.read(32))
    except OSError:
        wal = None
    return (stat_sig(index), wal)


def plan_cache_path(store_root, root, set_name: str, target: str | None) -> str:
    """Where the plan cache of (project root, set, target) lives. The name only spreads caches
    over files; the cache itself records whose it is (`identity`), so a clash is a miss."""
    ident = f"{os.fspath(root)}\0{set_name}\0{target or ''}".encode()
    return os.path.join(os.fspath(store_root), "plans",
                        f"{set_name}-{zlib.crc32(ident):08x}{zlib.adler32(ident):08x}.plan")


def _identity(root, set_name: str, target: str | None, sandboxed: bool) -> tuple:
    from . import __version__

    # The install too: two checkouts of one version on one store watch different sources, so
    # the answer one of them cached is not the other's (a patched checkout would be told its
    # edit changed nothing).
    return (PLAN_CACHE_VERSION, __version__, INSTALL, os.fspath(root), set_name, target, bool(sandboxed))


INSTALL = os.path.realpath(os.path.dirname(__file__))


# A file changed this close to the start of the work (or during it) may have been read before
# or after the change, so no cache is written from it. The kernel stamps ctime from a clock that
# lags the precise one by at most a tick (1-10 ms).
RACY_NS = 20_000_000


def signatures(files, started_ns: int | None, known: dict | None = None) -> dict | None:
    """Each file's `stat_sig`, or None when any of them changed (its ctime) since shortly
    before `started_ns` (time.time_ns() before the first of them was read): a cache written
    from it could hold the old content under the new signature. The one rule for every cache of
    planning's inputs (the no-op cache here, the plan table of `planner plan`).

    `known`: signatures taken before the file was read (`RecipeSet.signatures`), used as they
    are: a file changed after it was read then no longer matches them, a miss next time."""
    out = {}
    limit = None if started_ns is None else started_ns - RACY_NS
    known = known or {}
    for f in files:
        f = os.fspath(f)
        sig = known.get(f)
        if sig is None:
            sig = stat_sig(f)
        out[f] = sig
        if limit is not None and sig[1] >= limit:
            return None
    return out


def _write(store_root, root, set_name: str, target: str | None, sandboxed: bool, files: list,
           nodes: list[dict], targets: list[str], output: str | None, digest: str | None,
           started_ns: int | None = None) -> None:
    """Record a complete realise. Written after the run's last commit to the index, so that the
    index's own signature tells a later no-op whether anything was committed since; not written
    when a file changed during the run (`signatures`)."""
    store_root = os.fspath(store_root)
    sigs = signatures(files, started_ns)
    if sigs is None:
        return
    cache = {
        "identity": _identity(root, set_name, target, sandboxed),
        "files": sigs,
        "index": _index_sigs(store_root),
        "nodes": nodes,
        "targets": list(targets),
        "output": output,
        "digest": digest,
    }
    _save(plan_cache_path(store_root, root, set_name, target), cache)


def _save(path: str, cache: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        marshal.dump(cache, f)
    os.replace(tmp, path)


def _an_entry(store_root: str, path) -> bool:
    """`path` is an entry of the store at `store_root`: `<store>/<32 base32>-<name>`, no more."""
    if not isinstance(path, str):
        return False
    folder, name = os.path.split(os.path.normpath(path))
    return (folder == os.path.normpath(store_root) and len(name) > 33 and name[32] == "-"
            and all(c in "0123456789abcdfghijklmnpqrsvwxyz" for c in name[:32]))


def try_noop(root, set_name: str, store_root, target: str | None, sandboxed: bool) -> dict | None:
    """If nothing changed since the last complete realise, the cached answer; else None."""
    store_root = os.fspath(store_root)
    try:
        with open(plan_cache_path(store_root, root, set_name, target), "rb") as f:
            cache = marshal.loads(f.read())  # load(f) reads the file a few bytes at a time
        if cache["identity"] != _identity(root, set_name, target, sandboxed):
            return None
        if not files_unchanged(cache["files"]):
            return None
        for p in cache.get("absent", ()):
            if os.path.lexists(p):
                return None
        # Nodes without a local path (left in a binary cache, or not needed below a valid output)
        # are not checked: only what the run put in this store has to still be there.
        local = [n for n in cache["nodes"] if n.get("path")]
        lexists = os.path.lexists
        for n in local:
            if not _an_entry(store_root, n["path"]) or not lexists(os.path.join(store_root, n["path"])):
                return None
        # The answer names only this store's entries (a cache is a file in the store: one
        # written by another hand could name /etc as the output to link, export or push).
        if cache["output"] is not None and not _an_entry(store_root, cache["output"]):
            return None
    except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):
        return None  # no cache, or one this planner cannot read: plan as usual
    index = _index_sigs(store_root)
    if cache["index"] != index:
        if not _index_agrees(store_root, local):
            return None
        # Still valid: remember the index as it is now, so the next no-op need not ask it.
        cache["index"] = _index_sigs(store_root)
        try:
            _save(plan_cache_path(store_root, root, set_name, target), cache)
        except OSError:
            pass
    return cache


def _index_agrees(store_root: str, local: list[dict]) -> bool:
    """Something was committed to the index since: do the nodes' realisations still hold?"""
    import sqlite3

    keys = [n["key"] for n in local]
    found = {}
    try:
        # A store this user cannot write (another user's): immutable, so sqlite needs no -shm file.
        mode = "ro" if os.access(store_root, os.W_OK) else "ro&immutable=1"
        db = sqlite3.connect(f"file:{os.path.join(store_root, 'index.sqlite')}?mode={mode}", uri=True, timeout=30)
        try:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = ("SELECT r.input_key, e.path, e.digest FROM realisations r JOIN entries e "
                     f"ON e.key = r.build_key WHERE r.input_key IN ({','.join('?' * len(chunk))})")
                for ik, p, d in db.execute(q, chunk):
                    found[ik] = (p, d)
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return all(found.get(n["key"]) == (os.path.basename(n["path"]), n["digest"]) for n in local)


def noop_text(cache: dict) -> str:
    """What `planner realise` prints when there is nothing to do: the output, then its digest."""
    lines = [cache["output"] or "\n".join(n["path"] for n in cache["nodes"] if n["id"] in cache["targets"])]
    if cache.get("digest"):
        lines.append(cache["digest"])
    return "\n".join(lines)


def watched_files(rs, lock_path: os.PathLike) -> list[str]:
    """Every file (and folder) planning read: a change to any of them invalidates the cache."""
    from pathlib import Path

    # Folders too (their own stat changes when an entry is added, removed or renamed): a new
    # recipe or a new file in a path source changes the plan without touching any listed file.
    folder = os.fspath(rs.folder)
    files = [folder, *_below(folder)]
    files.append(os.fspath(lock_path))
    for r in rs.recipes.values():
        for p in r.patches:
            if p.file:
                files.append(os.fspath(rs.root / p.file))
        for s in r.all_sources().values():
            if s.kind == "path" and s.path:
                base = rs.root / s.path
                files.extend([os.fspath(base), *_below(os.fspath(base))] if base.is_dir() else [os.fspath(base)])
    pkg = Path(__file__).resolve().parent
    files.extend(sorted(os.fspath(p) for p in pkg.rglob("*.py")))
    files.append("/var/lib/dpkg/status")
    return list(dict.fromkeys(files))


def _below(folder: str) -> list[str]:
    """Everything below `folder` as `Path.rglob("*")` finds it (hidden entries too; links
    listed, not followed), as sorted strings: Path objects cost more than the rest for
    10,000 recipes."""
    out: list[str] = []
    stack = [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                entries = list(it)
        except OSError:
            continue  # as rglob: an unreadable folder lists nothing
        for e in entries:
            out.append(e.path)
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
            except OSError:
                pass
    out.sort()
    return out


def write_plan_cache(rs, lock_path: os.PathLike, store_root: os.PathLike, target: str | None, sandboxed: bool,
                     result, started_ns: int | None = None) -> None:
    """After a complete realise (and after its last commit to the store's index): what the next
    one needs to answer without planning. `started_ns`: time.time_ns() before the realise read
    anything; a file changed since is not cached as read."""
    _write(store_root, rs.root, rs.name, target, sandboxed, watched_files(rs, lock_path),
          [{"id": n.id, "name": n.name, "variant": n.variant, "key": n.key, "build_key": n.build_key,
            "digest": n.digest, "path": n.path, "reason": _noop_reason(n)} for n in result.nodes],
          result.targets, result.output, result.digest, started_ns)


def _noop_reason(n) -> str:
    """What a no-op answered from this cache says of a node: only one with a local output is
    valid in the store; one below a valid output may be gone from it (collected, repaired)."""
    if n.path:
        return "valid in the store"
    if n.action == "reused":
        return "not needed: what depends on it is valid"
    return "valid: its output stays in the binary cache it was built into"


def check_out_link(link: os.PathLike) -> None:
    """An out-link replaces a link, never a file or a folder the user made (said before any
    work)."""
    from .errors import PlannerError

    path = os.path.abspath(link)
    if os.path.lexists(path) and not os.path.islink(path):
        what = "a folder" if os.path.isdir(path) else "a file"
        raise PlannerError(f"{what} is in the way: an out-link replaces only a link", where=path)


def out_link(link: os.PathLike, target: os.PathLike, store=None) -> None:
    """Point `link` at `target` atomically; with a store, the link is a gc root too, under its
    normalised absolute path (`sub/../result` is `result`: a root must not depend on a folder
    that may go)."""
    from pathlib import Path

    check_out_link(link)
    link = Path(os.path.abspath(link))
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        os.unlink(tmp)
        raise
    if store is not None:
        store.set_root(f"link:{link}", link)
