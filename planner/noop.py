"""The no-op fast path of `planner realise`: standard library only.

A successful realise leaves a plan cache (stat signatures of every file planning read, and the
nodes' keys and digests). If nothing changed, the answer comes from the cache and one sqlite
query, without importing the recipe loader, attrs, networkx, httpx or rich.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Optional

PLAN_CACHE_VERSION = 1


def stat_sig(p: Path) -> list[int]:
    try:
        st = os.stat(p)
    except OSError:
        return [0, 0, 0, 0]
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino]


def plan_cache_path(store_root: Path, root: Path, set_name: str, target: Optional[str]) -> Path:
    h = hashlib.sha256(f"{root}\0{set_name}\0{target or ''}".encode()).hexdigest()[:24]
    return store_root / "plans" / f"{set_name}-{h}.json"


def try_noop(root: Path, set_name: str, store_root: Path, target: Optional[str], sandboxed: bool) -> Optional[dict]:
    """If nothing changed since the last complete realise, the cached answer; else None.

    Imports only the standard library and sqlite: no recipes, no networkx, no httpx.
    """
    path = plan_cache_path(store_root, root, set_name, target)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if cache.get("version") != PLAN_CACHE_VERSION or cache.get("sandbox") != sandboxed:
        return None
    from . import __version__

    if cache.get("planner") != __version__:
        return None
    for f, sig in cache["files"].items():
        if stat_sig(Path(f)) != sig:
            return None
    for rel in cache.get("absent", []):
        if os.path.exists(rel):
            return None
    # Nodes without a local path (left in a binary cache, or not needed below a valid output)
    # are not checked: only what the run put in this store has to still be there.
    local = [n for n in cache["nodes"] if n.get("path")]
    keys = [n["key"] for n in local]
    try:
        db = sqlite3.connect(f"file:{store_root / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            found = {}
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = ("SELECT r.input_key, e.path, e.digest FROM realisations r JOIN entries e "
                     f"ON e.key = r.build_key WHERE r.input_key IN ({','.join('?' * len(chunk))})")
                for ik, p, d in db.execute(q, chunk):
                    found[ik] = (p, d)
        finally:
            db.close()
    except sqlite3.Error:
        return None
    if len(found) != len(set(keys)):
        return None
    for n in local:
        p, d = found[n["key"]]
        if d != n["digest"] or not os.path.lexists(store_root / p):
            return None
    return cache


