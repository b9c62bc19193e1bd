"""The content-addressed store: read-only output trees, a sqlite index, per-key locks.

Layout (`store/` by default):

    <key>-<name>[-<version>]/   a valid entry: read-only, registered in the index
    index.sqlite                 entries, preimages, realisations, runs
    locks/<key>.lock             per-key build locks (flock)
    gc.lock                      builders hold it shared, `store gc` exclusive
    tmp/                         builds in progress; renamed into place when complete
    logs/<key>.log               build logs

An entry becomes valid in two steps: its complete, normalised, hashed tree is renamed into
place, then its row is committed. A crash between the two leaves a directory without a row,
which is treated as absent and replaced by the next build under the key's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator, Optional

import attrs

from .errors import StoreError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    path TEXT PRIMARY KEY,      -- basename under the store
    key TEXT NOT NULL UNIQUE,   -- build key (or fixed-output key)
    digest TEXT NOT NULL,       -- tree hash of the content
    kind TEXT NOT NULL,         -- 'fixed' | 'build'
    name TEXT NOT NULL,
    impure INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS preimages (key TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS realisations (
    input_key TEXT PRIMARY KEY,
    build_key TEXT NOT NULL,
    digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS durations (name TEXT PRIMARY KEY, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS roots (name TEXT PRIMARY KEY, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS origins (key TEXT NOT NULL, origin TEXT NOT NULL, PRIMARY KEY (key, origin));
"""


@attrs.frozen
class Entry:
    path: Path
    key: str
    digest: str
    kind: str
    name: str
    impure: bool = False


@attrs.frozen
class RemoteEntry:
    """An output known by key and digest that lives in a binary cache, not in this store.

    Bazel's "build without the bytes": a remote build's intermediate output stays in the cache
    its worker pushed it to; dependants need only its digest (for their build keys) and its
    key (for the next worker to fetch it). `path` is None: nothing local may read it."""

    key: str
    digest: str
    name: str
    cache: str  # the binary cache holding it (oci://HOST/REPO)
    kind: str = "build"
    impure: bool = False
    path: None = None


@attrs.frozen
class Realisation:
    input_key: str
    build_key: str
    digest: str


def _make_writable(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o755)
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) tree or file."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    _make_writable(path)
    shutil.rmtree(path)


def make_read_only(path: Path, *, keep_top_writable: bool = False) -> None:
    """Normalise permissions and make an entry read-only: 0555 dirs and executables, 0444 files.

    With `keep_top_writable` the top directory stays 0755: renaming a directory into another
    parent rewrites its `..`, which needs write permission on it (only root bypasses that), so
    the store makes the top read-only after the rename."""
    if path.is_symlink():
        return
    if path.is_file():
        mode = os.lstat(path).st_mode
        os.chmod(path, 0o555 if mode & stat.S_IXUSR else 0o444)
        return
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"output holds something that is not a file, dir or link: {p}")
            os.chmod(p, 0o555 if st.st_mode & stat.S_IXUSR else 0o444)
        os.chmod(dirpath, 0o755 if keep_top_writable and dirpath == str(path) else 0o555)


_ENTRY_NAME = __import__("re").compile(r"^([0-9a-z]{32})-(.+)$")
_SQLITE_MAGIC = b"SQLite format 3\0"


def _entry_dirs(root: Path) -> list[str]:
    """Names under the store root that look like entries (`<32 base32 key>-<name>`)."""
    try:
        return sorted(n for n in os.listdir(root) if _ENTRY_NAME.match(n))
    except OSError:
        return []


def _refuse_damaged_index(root: Path) -> None:
    """An index that is missing, empty or not a SQLite file beside entries was truncated or
    lost: opening it would silently start a new one and drop history, realisations and `why`."""
    index = root / "index.sqlite"
    try:
        with open(index, "rb") as f:
            head = f.read(100)
    except FileNotFoundError:
        head = None
    except OSError:
        return  # unreadable: sqlite says why
    if head is not None and len(head) == 100 and head.startswith(_SQLITE_MAGIC):
        return
    entries = _entry_dirs(root)
    if not entries:
        return  # a new store
    what = "missing" if head is None else "empty" if not head else "truncated or not a SQLite file"
    raise StoreError(f"the store index is {what} but the store holds {len(entries)} entries: "
                     f"run `planner store repair` to rebuild it from them", where=str(index))


def repair_index(root: Path) -> tuple[int, int, Path | None]:
    """Rebuild `index.sqlite` of the store at `root`: rows that can still be read from the old
    index are kept (entries, realisations, preimages, runs, roots, origins), every entry on disk
    without a row is registered again with its digest recomputed. Returns (rows salvaged,
    entries re-registered, where the old index was moved)."""
    from .hashing import tree_digest

    root = Path(root).absolute()
    index = root / "index.sqlite"
    moved: Path | None = None
    lock_fd = os.open(root / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)  # no realise or gc while the index is replaced
    try:
        return _repair_locked(root, index)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


def _repair_locked(root: Path, index: Path) -> tuple[int, int, Path | None]:
    from .hashing import tree_digest

    moved: Path | None = None
    salvaged: dict[str, list[tuple]] = {}
    if os.path.lexists(index):
        moved = root / f"index.sqlite.damaged-{os.getpid()}"
        os.replace(index, moved)
        for side in ("-wal", "-shm"):
            if os.path.lexists(str(index) + side):
                os.replace(str(index) + side, str(moved) + side)
        try:
            old = sqlite3.connect(f"file:{moved}?mode=ro", uri=True)
            for table in ("entries", "preimages", "realisations", "runs", "durations", "roots", "origins"):
                try:
                    salvaged[table] = old.execute(f"SELECT * FROM {table}").fetchall()
                except sqlite3.Error:
                    salvaged[table] = []
            old.close()
        except sqlite3.Error:
            pass
    st = Store.__new__(Store)
    st.root = root
    st._lock = threading.RLock()
    st._db = sqlite3.connect(index, timeout=60, check_same_thread=False, isolation_level=None)
    st._db.execute("PRAGMA journal_mode=WAL")
    st._db.executescript(_SCHEMA)
    st._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    kept = 0
    with st._tx() as db:
        for table, rows in salvaged.items():
            for row in rows:
                try:
                    db.execute(f"INSERT OR IGNORE INTO {table} VALUES ({','.join('?' * len(row))})", row)
                    kept += 1
                except sqlite3.Error:
                    pass
    registered = {p for (p,) in st._db.execute("SELECT path FROM entries").fetchall()}
    added = 0
    for name in _entry_dirs(root):
        path = root / name
        if name in registered:
            continue
        key, rest = _ENTRY_NAME.match(name).groups()  # type: ignore[union-attr]
        with st._tx() as db:
            db.execute("INSERT OR IGNORE INTO entries VALUES (?,?,?,?,?,?)",
                       (name, key, tree_digest(path), "build", rest, 0))
        added += 1
    st._db.close()
    return kept, added, moved


class Store:
    """A store rooted at `root`. Thread-safe; several processes may share one store."""

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.root = Path(root).absolute()
        self._lock = threading.RLock()
        if read_only:
            self._open_read_only()
            return
        if self.root.is_dir() and not os.access(self.root, os.W_OK):
            raise StoreError(f"the store is not writable by this user (uid {os.geteuid()}); commands that only "
                             f"read it (store verify, store roots, a no-op realise) still work", where=str(self.root))
        for sub in ("locks", "tmp", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _refuse_damaged_index(self.root)
        try:
            self._db = sqlite3.connect(self.root / "index.sqlite", timeout=60, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=60000")
            with self._lock:
                self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            hint = "; `planner store repair` rebuilds it from the entries" if "malformed" in str(exc) else ""
            raise StoreError(f"cannot open the store index: {exc}{hint}", where=str(self.root / "index.sqlite")) from None
        if row is not None and int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"store schema {row[0]} is not {SCHEMA_VERSION}", where=str(self.root))

    def _open_read_only(self) -> None:
        """For commands that only read (verify): works on a store this user cannot write."""
        _refuse_damaged_index(self.root)
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
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"store index: {exc}", where=str(self.root / "index.sqlite")) from None
            try:
                yield self._db
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"store index: {exc}", where=str(self.root / "index.sqlite")) from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise StoreError(f"store index: {exc}", where=str(self.root / "index.sqlite")) from None

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
    def gc_lock(self, exclusive: bool) -> Iterator[None]:
        """Builds hold this shared for their whole run; gc takes it exclusively."""
        fd = os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
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
        p = self.root / path
        if not os.path.lexists(p):
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
        from .hashing import tree_digest

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
        if final.is_dir():
            os.chmod(final, 0o555)  # no row yet: a crash before it leaves an entry that is absent
        with self._tx() as db:
            db.execute("DELETE FROM entries WHERE key=? OR path=?", (key, final.name))
            db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?)",
                       (final.name, key, actual, kind, name, int(impure)))
        return Entry(final, key, actual, kind, name, impure)

    def entries(self) -> list[Entry]:
        rows = self._query("SELECT path, key, digest, kind, name, impure FROM entries ORDER BY path")
        return [Entry(self.root / p, k, d, kd, n, bool(i)) for p, k, d, kd, n, i in rows]

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
        from .hashing import canonical_json

        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO preimages VALUES (?,?)", (key, canonical_json(preimage).decode()))

    def put_preimages(self, preimages: dict[str, object]) -> None:
        from .hashing import canonical_json

        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO preimages VALUES (?,?)",
                           [(k, canonical_json(v).decode()) for k, v in preimages.items()])

    def preimage(self, key: str) -> Optional[dict]:
        rows = self._query("SELECT json FROM preimages WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else None

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
        return {name[len(prefix):]: s for name, s in self._query(
            "SELECT name, seconds FROM durations WHERE substr(name, 1, ?) = ?", (len(prefix), prefix))}

    def add_run(self, record: dict) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO runs (json) VALUES (?)", (json.dumps(record, sort_keys=True),))
            return int(cur.lastrowid)

    def runs(self, limit: int = 50) -> list[tuple[int, dict]]:
        rows = self._query("SELECT id, json FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        return [(i, json.loads(j)) for i, j in rows]

    def run(self, run_id: int) -> Optional[dict]:
        rows = self._query("SELECT json FROM runs WHERE id=?", (run_id,))
        return json.loads(rows[0][0]) if rows else None

    def set_root(self, name: str, path: Path) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO roots VALUES (?,?)", (name, str(path)))

    def roots(self) -> dict[str, str]:
        return dict(self._query("SELECT name, path FROM roots"))

    # -- verify and gc ------------------------------------------------------------------

    def verify(self) -> list[tuple[Entry, str]]:
        """Re-hash every entry; returns (entry, problem) for each that does not match."""
        from .hashing import tree_digest

        bad = []
        for e in self.entries():
            if not os.path.lexists(e.path):
                bad.append((e, "missing"))
                continue
            actual = tree_digest(e.path)
            if actual != e.digest:
                bad.append((e, f"content hashes to {actual}, recorded {e.digest}"))
        return bad

    def live_roots(self) -> dict[str, Path]:
        """The gc roots that still hold: name -> the store path it keeps (out-links resolved;
        a deleted out-link is no longer a root)."""
        out = {}
        for name, target in sorted(self.roots().items()):
            p = Path(target)
            if name.startswith("link:") and not (p.is_symlink() or p.exists()):
                continue
            out[name] = p.resolve() if p.is_symlink() else p
        return out

    def _live(self, extra_roots: Iterable[str] = ()) -> set[str]:
        """Basenames reachable from the roots: each root names a store path, and the run that
        produced it lists its closure's paths."""
        live = {p.name for p in self.live_roots().values()}
        for _id, rec in self.runs(limit=1000):
            if rec.get("output") and Path(rec["output"]).name in live:
                live.update(Path(n["path"]).name for n in rec.get("nodes", []) if n.get("path"))
                live.update(Path(p).name for p in rec.get("inputs", []))
        live.update(Path(r).name for r in extra_roots)
        return live

    def gc(self, extra_roots: list[str] = (), *, dry_run: bool = False) -> list[str]:
        """Remove entries not reachable from roots. Returns removed basenames (with
        `dry_run`, those it would remove; nothing is touched)."""
        if dry_run:
            with self.gc_lock(exclusive=False):
                live = self._live(extra_roots)
                return [e.path.name for e in self.entries() if e.path.name not in live]
        with self.gc_lock(exclusive=True):
            live = self._live(extra_roots)
            removed = []
            for e in self.entries():
                if e.path.name not in live:
                    # Unregister first, then move the tree aside: a crash at any point leaves
                    # either a valid entry or none, never a half-deleted one that looks valid.
                    self.invalidate(e.key)
                    if os.path.lexists(e.path):
                        doomed = self.root / "tmp" / f"gc-{e.path.name}"
                        if e.path.is_dir() and not e.path.is_symlink():
                            os.chmod(e.path, 0o755)  # see make_read_only: a rename needs it
                        os.rename(e.path, doomed)
                        remove_tree(doomed)
                    removed.append(e.path.name)
            for leftover in (self.root / "tmp").iterdir():
                remove_tree(leftover)
            return removed
