"""Source mirrors for air-gapped sites: where to look for a URL or a git repository.

Standard library only: the CLI reads the mirror configuration before it knows whether any
fetching is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import LockError


def mirror_candidates(url: str, mirrors: list[str], *, sha256: Optional[str] = None, git: bool = False) -> list[str]:
    """Where to look for `url`: each mirror by content hash first, then by origin path, then the origin.

    Mirror layout (a folder served over file:// or HTTP):
        <mirror>/sha256/<hex>          any file, by the sha256 of its bytes
        <mirror>/urls/<host>/<path>    a file, by its origin URL
        <mirror>/git/<host>/<path>     a git repository, by its origin URL
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    origin_path = f"{parts.netloc}{parts.path}".lstrip("/")
    out: list[str] = []
    for m in mirrors:
        m = m.rstrip("/")
        if git:
            out.append(f"{m}/git/{origin_path}")
            continue
        if sha256:
            out.append(f"{m}/sha256/{sha256}")
        out.append(f"{m}/urls/{origin_path}")
    out.append(url)
    return list(dict.fromkeys(out))


def load_mirrors(root: Path, extra: list[str] = ()) -> list[str]:
    """Mirrors from the command line / PLANNER_MIRRORS first, then the project's planner.toml."""
    import os
    import tomllib

    out = list(extra)
    out += os.environ.get("PLANNER_MIRRORS", "").split()
    cfg = root / "planner.toml"
    if cfg.is_file():
        try:
            data = tomllib.loads(cfg.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise LockError(f"invalid TOML: {exc}", where=str(cfg)) from None
        urls = data.get("mirrors", {}).get("urls", [])
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise LockError("mirrors.urls must be a list of URLs", where=f"{cfg}: mirrors.urls")
        out += [u if "://" in u else (root / u).resolve().as_uri() for u in urls]
    return list(dict.fromkeys(out))
