"""The store's sqlite index: its schema, its transactions, a damaged index refused, and its
repair from what is on disk."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sqlite3
from pathlib import Path
from typing import Iterator, Optional

import attrs

from ..errors import StoreError
from .entries import ENTRY_NAME, entry_dirs

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    path TEXT PRIMARY KEY,      -- basename under the store
    key TEXT NOT NULL UNIQUE,   -- build key (or fixed-output key)
    digest TEXT NOT NULL,       -- tree hash of the content
    kind TEXT NOT NULL,         -- 'fixed' | 'build' | 'recovered' (registered again by `store repair`)
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


_SQLITE_MAGIC = b"SQLite format 3\0"


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, index: Path) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error; sqlite's errors become StoreError
    naming the index. The caller holds whatever thread lock guards `db`."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise StoreError(f"store index: {exc}", where=str(index)) from None
    try:
        yield db
    except sqlite3.Error as exc:
        db.execute("ROLLBACK")
        raise StoreError(f"store index: {exc}", where=str(index)) from None
    except BaseException:
        db.execute("ROLLBACK")
        raise
    else:
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise StoreError(f"store index: {exc}", where=str(index)) from None


def refuse_damaged_index(root: Path) -> None:
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
    entries = entry_dirs(root)
    if not entries:
        return  # a new store
    what = "missing" if head is None else "empty" if not head else "truncated or not a SQLite file"
    raise StoreError(f"the store index is {what} but the store holds {len(entries)} entries: "
                     f"run `planner store repair` to rebuild it from them", where=str(index))


@attrs.frozen
class IndexRepair:
    """What `repair_index` did: rows salvaged from the old index, entries found on disk and
    registered again, whether the index was healthy (and kept where it was), where a damaged
    one was moved (None: healthy, or there was none)."""

    kept: int
    added: int
    healthy: bool
    moved: Optional[Path]


_TABLES = ("entries", "preimages", "realisations", "runs", "durations", "roots", "origins")


def repair_index(root: Path) -> IndexRepair:
    """Rebuild `index.sqlite` of the store at `root`: rows that can still be read from the old
    index are kept (entries, realisations, preimages, runs, roots, origins), every entry on disk
    without a row is registered again with its digest recomputed. A healthy index (SQLite's
    own check passes, this schema, every table readable) is kept where it is, and only the
    entries on disk that it lacks are registered."""
    root = Path(root).absolute()
    index = root / "index.sqlite"
    lock_fd = os.open(root / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)  # no realise or gc while the index is replaced
    try:
        return _repair_locked(root, index)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


def _healthy(index: Path) -> bool:
    if not os.path.isfile(index) or os.path.islink(index):
        return False
    try:
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
        try:
            if db.execute("PRAGMA quick_check").fetchall() != [("ok",)]:
                return False
            if db.execute("SELECT v FROM meta WHERE k = 'schema'").fetchall() != [(str(SCHEMA_VERSION),)]:
                return False
            for table in _TABLES:
                db.execute(f"SELECT * FROM {table} LIMIT 1").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return True


def _repair_locked(root: Path, index: Path) -> IndexRepair:
    from ..hashing import tree_digest

    moved: Path | None = None
    salvaged: dict[str, list[tuple]] = {}
    healthy = _healthy(index)
    if os.path.lexists(index) and not healthy:
        moved = root / f"index.sqlite.damaged-{os.getpid()}"
        os.replace(index, moved)
        for side in ("-wal", "-shm"):
            if os.path.lexists(str(index) + side):
                os.replace(str(index) + side, str(moved) + side)
        try:
            old = sqlite3.connect(f"file:{moved}?mode=ro", uri=True)
            for table in _TABLES:
                try:
                    salvaged[table] = old.execute(f"SELECT * FROM {table}").fetchall()
                except sqlite3.Error:
                    salvaged[table] = []
            old.close()
        except sqlite3.Error:
            pass
    db = sqlite3.connect(index, timeout=60, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    kept = 0
    with transaction(db, index):
        for table, rows in salvaged.items():
            for row in rows:
                try:
                    db.execute(f"INSERT OR IGNORE INTO {table} VALUES ({','.join('?' * len(row))})", row)
                    kept += 1
                except sqlite3.Error:
                    pass
    registered = {p for (p,) in db.execute("SELECT path FROM entries").fetchall()}
    added = 0
    for name in entry_dirs(root):
        path = root / name
        if name in registered:
            continue
        mode = os.lstat(path).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):  # a link or a FIFO under an entry's name
            continue
        key, rest = ENTRY_NAME.match(name).groups()  # type: ignore[union-attr]
        digest = tree_digest(path)
        # A fetched input's key is its content's: recognisable. Anything else was not built now
        # and how it was made is not recorded anywhere else: 'recovered', never 'build'.
        from ..hashing import key_of  # derivation.fixed_key's formula (derivation imports the store)

        fixed = {key_of({"fixed": digest, "unpacked": u}) for u in (False, True)}
        kind = "fixed" if key in fixed else "recovered"
        with transaction(db, index):
            db.execute("INSERT OR IGNORE INTO entries VALUES (?,?,?,?,?,?)",
                       (name, key, digest, kind, rest, 0))
        added += 1
    db.close()
    return IndexRepair(kept, added, healthy, moved)


