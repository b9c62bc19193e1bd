"""The content-addressed store: read-only output trees, a sqlite index, per-key locks.

Layout (`store/` by default):

    <key>-<name>[-<version>]/   a valid entry: read-only, registered in the index
    index.sqlite                 entries, preimages, realisations, runs
    locks/<key>.lock             per-key build locks (flock)
    gc.lock                      builders hold it shared, `store gc` exclusive
    tmp/                         builds in progress; renamed into place when complete
    logs/<key>.log               build logs (<key>.previous.log: the attempt before, kept by a retry)
    cache/<name>/                builders' caches across builds (`cache/layers/`: compressed
                                 image layers, planner.oci.layercache); never trusted, and
                                 `gc` drops blobs in `cache/*/blobs/` that no entry links

An entry becomes valid in two steps: its complete, normalised, hashed tree is renamed into
place, then its row is committed. A crash between the two leaves a directory without a row,
which is treated as absent and replaced by the next build under the key's lock.

This module holds the `Store` (entries, preimages, realisations, runs, gc roots, locks);
`entries` the entry records and read-only trees; `index` the sqlite schema, transactions and
repair.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from ..errors import StoreError
from .entries import (ENTRY_NAME, STORE_MTIME_NS, Entry, Realisation, RemoteEntry, entry_dirs,  # noqa: F401
                      make_read_only, remove_tree)
from .index import SCHEMA, SCHEMA_VERSION, refuse_damaged_index, repair_index, transaction  # noqa: F401


READ_ONLY_HINT = ("commands that only read it (plan, why, show, log, diff, dry runs, store verify, store roots, "
                  "store size, a no-op realise) still work")


# The folders the store writes into and removes from: a link in their place would take the
# store's writes (build logs, checks) and removals (gc of tmp/, caches) out of the store.
OWN_FOLDERS = ("locks", "tmp", "logs", "checks", "cache", "plans")


def _refuse_linked_folders(root: Path) -> None:
    for sub in OWN_FOLDERS:
        try:
            st = os.lstat(root / sub)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{sub} is not a folder of the store (a link or a file in its place); move it away, "
                             "the store makes it again", where=str(root / sub))


def _json_object(text: object) -> Optional[dict]:
    """A row's JSON object, or None where the row holds anything else."""
    try:
        value = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _entry_path(path: object) -> bool:
    return isinstance(path, str) and "/" not in path and ENTRY_NAME.match(path) is not None


def _file_or_folder(p: Path) -> bool:
    try:
        mode = os.lstat(p).st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) or stat.S_ISREG(mode)


class Store:
    """A store rooted at `root`. Thread-safe; several processes may share one store."""

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.root = Path(root).absolute()
        self._lock = threading.RLock()
        if read_only:
            self._open_read_only()
            return
        if self.root.is_dir() and not os.access(self.root, os.W_OK):
            raise StoreError(f"the store is not writable by this user (uid {os.geteuid()}); {READ_ONLY_HINT}",
                             where=str(self.root))
        for sub in ("locks", "tmp", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _refuse_linked_folders(self.root)
        refuse_damaged_index(self.root)
        try:
            self._db = sqlite3.connect(self.root / "index.sqlite", timeout=60, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=60000")
            with self._lock:
                self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            hint = "; `planner store repair` rebuilds it from the entries" if "malformed" in str(exc) else ""
            raise StoreError(f"cannot open the store index: {exc}{hint}", where=str(self.root / "index.sqlite")) from None
        if row is not None and int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"store schema {row[0]} is not {SCHEMA_VERSION}", where=str(self.root))

    @classmethod
    @contextlib.contextmanager
    def or_empty(cls, root: Path) -> Iterator["Store"]:
        """The store at `root` (read-only where this user cannot write it), or, where none
        exists yet, an empty one in a temporary folder: what a dry run reads without making a
        store. Closed on exit."""
        import tempfile

        with contextlib.ExitStack() as stack:
            if not Path(root).exists():
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="planner-empty-store-"))) / "store"
            store = cls.for_reading(root)
            try:
                yield store
            finally:
                store.close()

    @classmethod
    def for_reading(cls, root: Path) -> "Store":
        """A command that only reads: read-only when this user cannot write the store."""
        return cls(root, read_only=Path(root).is_dir() and not os.access(root, os.W_OK))

    def _open_read_only(self) -> None:
        """For commands that only read (verify): works on a store this user cannot write."""
        _refuse_linked_folders(self.root)
        refuse_damaged_index(self.root)
        index = self.root / "index.sqlite"
        try:
            # immutable=1: no -shm/-wal files to create beside a read-only index.
            mode = "ro" if os.access(self.root, os.W_OK) else "ro&immutable=1"
            self._db = sqlite3.connect(f"file:{index}?mode={mode}", uri=True, timeout=60,
                                       check_same_thread=False, isolation_level=None)
            self._db.execute("SELECT 1 FROM entries LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store index: {exc}", where=str(index)) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._db, self.root / "index.sqlite") as db:
            yield db

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"store index: {exc}", where=str(self.root / "index.sqlite")) from None

    # -- locks --------------------------------------------------------------------------

    @contextlib.contextmanager
    def key_lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes: one builder per key at a time."""
        fd = os.open(self.root / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def gc_lock(self, exclusive: bool, *, on_wait: Optional[Callable[[], None]] = None) -> Iterator[None]:
        """Builds hold this shared for their whole run; gc takes it exclusively. `on_wait`:
        called once if the lock is held by another process and this one waits for it."""
        try:
            fd = os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            if exclusive:
                raise
            # A reader of a store this user cannot write (a dry run): flock needs no write access.
            fd = os.open(self.root / "gc.lock", os.O_RDONLY)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, mode)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- entries ------------------------------------------------------------------------

    @staticmethod
    def entry_name(key: str, name: str, version: str | None = None) -> str:
        return f"{key}-{name}-{version}" if version else f"{key}-{name}"

    def lookup(self, key: str) -> Optional[Entry]:
        """The valid entry for a key: registered and present on disk."""
        rows = self._query("SELECT path, key, digest, kind, name, impure FROM entries WHERE key=?", (key,))
        if not rows:
            return None
        path, key, digest, kind, name, impure = rows[0]
        if not _entry_path(path):
            return None
        p = self.root / path
        # An entry is a folder or a file the store made, never a link (to a host folder that
        # dependents would then get mounted): a link there is a damaged entry, absent.
        if not _file_or_folder(p):
            return None
        return Entry(p, key, digest, kind, name, bool(impure))

    def new_build_dir(self, key: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{key}-", dir=self.root / "tmp"))

    def add(self, key: str, name: str, version: str | None, content: Path, *, kind: str,
            digest: str | None = None, impure: bool = False) -> Entry:
        """Move a complete output (file or tree) into the store and register it.

        The caller holds `key_lock(key)`. `content` must be on the store's file system (under
        `tmp/`) so the final rename is atomic.
        """
        from ..hashing import tree_digest

        make_read_only(content, keep_top_writable=True)
        actual = tree_digest(content)
        if digest is not None and digest != actual:
            remove_tree(content)
            raise StoreError(f"content hashes to {actual}, expected {digest}", where=name)
        final = self.root / self.entry_name(key, name, version)
        if os.path.lexists(final):
            # A leftover of a crash between rename and commit, or an invalid entry.
            remove_tree(final)
        os.rename(content, final)
        if stat.S_ISDIR(os.lstat(final).st_mode):
            os.chmod(final, 0o555)  # no row yet: a crash before it leaves an entry that is absent
            os.utime(final, ns=(STORE_MTIME_NS, STORE_MTIME_NS))  # (the rename rewrote its `..`)
        with self._tx() as db:
            db.execute("DELETE FROM entries WHERE key=? OR path=?", (key, final.name))
            db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?)",
                       (final.name, key, actual, kind, name, int(impure)))
        return Entry(final, key, actual, kind, name, impure)

    def entries(self) -> list[Entry]:
        rows = self._query("SELECT path, key, digest, kind, name, impure FROM entries ORDER BY path")
        # A row whose path is not an entry's name (`../../x`, `/etc`) is not this store's to
        # list, verify or collect: gc removed what such a row named.
        return [Entry(self.root / p, k, d, kd, n, bool(i)) for p, k, d, kd, n, i in rows if _entry_path(p)]

    def invalidate(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM entries WHERE key=?", (key,))

    # -- what a fetched entry was fetched as ----------------------------------------------

    def add_origins(self, key: str, origins: list[str]) -> None:
        """Record the identities a fixed-output entry was verified against (`sha256:…` of the
        fetched bytes, `commit:…`, `digest:…`): a lock pin naming this entry's tree with
        other bytes was edited by hand."""
        if origins:
            with self._tx() as db:
                db.executemany("INSERT OR IGNORE INTO origins VALUES (?,?)", [(key, o) for o in origins])

    def origins(self, key: str) -> set[str]:
        return {o for (o,) in self._query("SELECT origin FROM origins WHERE key=?", (key,))}

    # -- preimages and realisations -----------------------------------------------------

    def put_preimage(self, key: str, preimage: object) -> None:
        from ..hashing import canonical_json

        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO preimages VALUES (?,?)", (key, canonical_json(preimage).decode()))

    def put_preimages(self, preimages: dict[str, object]) -> None:
        from ..hashing import canonical_json

        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO preimages VALUES (?,?)",
                           [(k, canonical_json(v).decode()) for k, v in preimages.items()])

    def preimage(self, key: str) -> Optional[dict]:
        rows = self._query("SELECT json FROM preimages WHERE key=?", (key,))
        return _json_object(rows[0][0]) if rows else None

    def realise(self, input_key: str, build_key: str, digest: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO realisations VALUES (?,?,?)", (input_key, build_key, digest))

    def realisation(self, input_key: str) -> Optional[Realisation]:
        rows = self._query("SELECT input_key, build_key, digest FROM realisations WHERE input_key=?", (input_key,))
        return Realisation(*rows[0]) if rows else None

    def realisations(self, input_keys: list[str]) -> dict[str, Realisation]:
        out: dict[str, Realisation] = {}
        for i in range(0, len(input_keys), 500):
            chunk = input_keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT input_key, build_key, digest FROM realisations WHERE input_key IN ({marks})", tuple(chunk)):
                out[row[0]] = Realisation(*row)
        return out

    # -- durations, runs, roots ---------------------------------------------------------

    def record_durations(self, set_name: str, seconds: dict[str, float]) -> None:
        """Build times of a set's nodes, for the scheduler's critical path and `plan` estimates."""
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO durations VALUES (?,?)",
                           [(f"{set_name}/{nid}", s) for nid, s in seconds.items()])

    def durations(self, set_name: str) -> dict[str, float]:
        prefix = f"{set_name}/"
        return {name[len(prefix):]: float(s) for name, s in self._query(
            "SELECT name, seconds FROM durations WHERE substr(name, 1, ?) = ?", (len(prefix), prefix))
            if isinstance(s, (int, float))}

    def add_run(self, record: dict) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO runs (json) VALUES (?)", (json.dumps(record, sort_keys=True),))
            return int(cur.lastrowid)

    def runs(self, limit: int = 50, set_name: Optional[str] = None) -> list[tuple[int, dict]]:
        """The newest `limit` run records, of set `set_name` only when given: the set is chosen
        before the limit, or many runs of another set would hide every run of this one."""
        if set_name is None:
            rows = self._query("SELECT id, json FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        else:  # (json_valid first: a damaged record is skipped, not an error of the query)
            rows = self._query("SELECT id, json FROM runs WHERE CASE WHEN json_valid(json) THEN "
                               "json_extract(json, '$.set') END = ? ORDER BY id DESC LIMIT ?", (set_name, limit))
        # A record that is not a JSON object (the index edited or damaged) is history lost, not
        # a reason for every command that reads history to fail.
        return [(i, rec) for i, j in rows if (rec := _json_object(j)) is not None]

    def run(self, run_id: int) -> Optional[dict]:
        rows = self._query("SELECT json FROM runs WHERE id=?", (run_id,))
        return _json_object(rows[0][0]) if rows else None

    def set_root(self, name: str, path: Path) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO roots VALUES (?,?)", (name, str(path)))

    def roots(self) -> dict[str, str]:
        return dict(self._query("SELECT name, path FROM roots"))

    # -- verify and gc ------------------------------------------------------------------

    def verify(self) -> list[tuple[Entry, str]]:
        """Re-hash every entry; returns (entry, problem) for each that does not match."""
        from ..hashing import tree_digest

        bad = []
        for e in self.entries():
            if not os.path.lexists(e.path):
                bad.append((e, "missing"))
                continue
            if not _file_or_folder(e.path):  # a link to a host folder, a FIFO: no entry the store made
                bad.append((e, "not a file or folder (a link or a special file in its place)"))
                continue
            actual = tree_digest(e.path)
            if actual != e.digest:
                bad.append((e, f"content hashes to {actual}, recorded {e.digest}"))
        return bad

    def repair(self) -> list[tuple[Entry, str]]:
        """`verify`, then each entry that fails it removed (as `nix-store --verify --repair`
        makes a path valid again, here by forgetting it: the next realise that needs it builds
        or fetches it again). Returns what was removed, and why."""
        with self.gc_lock(exclusive=True):
            bad = self.verify()
            for e, _why in bad:
                self._drop(e)
        return bad

    def _drop(self, e: Entry) -> None:
        # Unregister first, then move the tree aside: a crash at any point leaves either a
        # valid entry or none, never a half-deleted one that looks valid.
        self.invalidate(e.key)
        if os.path.lexists(e.path):
            doomed = self.root / "tmp" / f"gc-{e.path.name}"
            if e.path.is_dir() and not e.path.is_symlink():
                os.chmod(e.path, 0o755)  # see make_read_only: a rename needs it
            os.rename(e.path, doomed)
            remove_tree(doomed)

    def live_roots(self) -> dict[str, Path]:
        """The gc roots that still hold: name -> the store path it keeps (out-links resolved;
        a deleted out-link is no longer a root)."""
        out = {}
        for name, target in sorted(self.roots().items()):
            p = Path(target)
            if name.startswith("link:") and not (p.is_symlink() or p.exists()):
                continue
            try:
                out[name] = p.resolve() if p.is_symlink() else p
            except (OSError, RuntimeError):  # a link loop, an unreadable folder: it holds nothing
                continue
        return out

    def _live(self, extra_roots: Iterable[str] = ()) -> set[str]:
        """Basenames reachable from the roots: each root names a store path, and the run that
        produced it lists its closure's paths."""
        live = {p.name for p in self.live_roots().values()}
        # Every run record, however old: a root's closure must not depend on how many runs came
        # after the one that made it (a window of the latest 1000 let gc delete rooted closures).
        for run_id, text in self._query("SELECT id, json FROM runs ORDER BY id DESC"):
            rec = _json_object(text)
            if rec is None:  # gc cannot tell what it roots: it deletes nothing
                raise StoreError(f"run {run_id} of the index is not a readable record, so what it roots is "
                                 "unknown: nothing is collected (remove that row with sqlite3 to collect)",
                                 where=str(self.root / "index.sqlite"))
            if rec.get("output") and Path(rec["output"]).name in live:
                live.update(Path(n["path"]).name for n in rec.get("nodes", []) if n.get("path"))
                live.update(Path(p).name for p in rec.get("inputs", []))
        live.update(Path(r).name for r in extra_roots)
        return live

    def gc(self, extra_roots: list[str] = (), *, dry_run: bool = False,
           on_wait: Optional[Callable[[], None]] = None) -> list[str]:
        """Remove entries not reachable from roots. Returns removed basenames (with
        `dry_run`, those it would remove; nothing is touched). Both wait for every running
        realise to end (`on_wait` says so): what it builds is rooted when it ends, so a dry run
        that did not wait would list what the real gc then keeps."""
        if dry_run:
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(self.gc_lock(exclusive=True, on_wait=on_wait))
                except PermissionError:  # a store this user cannot write: as it stands now
                    held.enter_context(self.gc_lock(exclusive=False))
                live = self._live(extra_roots)
                return [e.path.name for e in self.entries() if e.path.name not in live]
        with self.gc_lock(exclusive=True, on_wait=on_wait):
            live = self._live(extra_roots)
            removed = []
            for e in self.entries():
                if e.path.name not in live:
                    self._drop(e)
                    removed.append(e.path.name)
            for leftover in (self.root / "tmp").iterdir():
                remove_tree(leftover)
            if (self.root / "checks").is_dir():  # differing `--check` rebuilds, kept for comparing
                remove_tree(self.root / "checks")
            self._gc_caches()
            return removed

    def _gc_caches(self) -> None:
        """A cache blob is a hard link of some entry's file: when gc removed the last entry
        holding it (link count 1), it goes too. A record naming a gone blob is a miss."""
        caches = self.root / "cache"
        if not caches.is_dir():
            return
        for cache in caches.iterdir():
            if (cache / "tmp").is_dir():
                remove_tree(cache / "tmp")
            blobs = cache / "blobs"
            if not blobs.is_dir() or blobs.is_symlink():
                continue
            for p in blobs.iterdir():
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
                    p.unlink()
