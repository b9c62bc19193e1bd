"""Fetch ahead of pip's resolver: pip asks for one project page, then one METADATA, then the
next page, one round trip at a time (a closure of 300 projects is 600 sequential requests). A
`Prefetcher` watches what a `DatedIndex` serves and, in a pool of threads, fetches what pip will
most likely ask for next: for every page, the METADATA of the wheel pip would take first (the
newest release with a wheel for the target); for every METADATA, the pages of its requirements
(markers evaluated for the target). pip then finds them answered from memory or the cache.

What is prefetched only warms caches: pip's resolver still decides everything, so a wrong guess
costs a request and nothing else.
"""

from __future__ import annotations

import email.parser
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from ..errors import FetchError
from .simple_index import IndexFile, normalise_name

# Enough for a closure of a few hundred projects and a little backtracking; a bound, so that a
# requirement graph that fans out (every extra of every package) cannot run away.
MAX_PREFETCH = 3000


@functools.lru_cache(maxsize=65536)
def _wheel_info(filename: str):
    """(name, Version, tags) of a wheel file name, parsed once per process; None if malformed."""
    from .pypi import _packaging

    _, _, utils, pver = _packaging()
    try:
        name, version, _build, tags = utils.parse_wheel_filename(filename)
        return name, version, tags
    except (utils.InvalidWheelFilename, pver.InvalidVersion):
        return None


class Prefetcher:
    def __init__(self, platform: str, python: str, marker_env: dict[str, str], *, workers: int = 6) -> None:
        from .pypi import supported_tags

        self.python = python if python.count(".") == 2 else python + ".0"
        self.supported = supported_tags(platform, ".".join(self.python.split(".")[:2]))
        self._supported_set = frozenset(self.supported)
        self._rank = {t: i for i, t in enumerate(self.supported)}
        self._rp: dict[str, bool] = {}
        self.env = dict(marker_env)
        self.view = None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="prefetch")
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.submitted = 0

    def _python_ok(self, requires_python: Optional[str]) -> bool:
        if not requires_python:
            return True
        ok = self._rp.get(requires_python)
        if ok is None:
            from .pypi import _packaging

            specifiers = _packaging()[0]
            try:
                ok = specifiers.SpecifierSet(requires_python).contains(self.python, prereleases=True)
            except specifiers.InvalidSpecifier:
                ok = True  # pip decides
            self._rp[requires_python] = ok
        return ok

    def usable(self, f: IndexFile, sdists: frozenset[str] = frozenset()) -> bool:
        """Whether pip (binary only, but for the projects in `sdists`) could take `f` for the
        target: a wheel with a supported tag, or an sdist of such a project, whose
        Requires-Python admits the target (pip would reject the rest; a yanked file stays: pip
        takes one that is pinned exactly)."""
        if not self._python_ok(f.requires_python):
            return False
        if f.filename.endswith(".whl"):
            info = _wheel_info(f.filename)
            return info is None or not self._supported_set.isdisjoint(info[2])  # None: pip decides
        for ext in (".tar.gz", ".zip", ".tar.bz2", ".tgz"):
            if f.filename.endswith(ext):
                return normalise_name(f.filename[: -len(ext)].rpartition("-")[0]) in sdists
        return False

    def attach(self, view) -> "Prefetcher":
        self.view = view
        return self

    def _submit(self, key: str, fn, *args) -> None:
        with self._lock:
            if self._closed or key in self._seen or self.submitted >= MAX_PREFETCH:
                return
            self._seen.add(key)
            self.submitted += 1
        self._pool.submit(self._quietly, fn, *args)

    @staticmethod
    def _quietly(fn, *args) -> None:
        try:
            fn(*args)
        except (FetchError, OSError, ValueError, RuntimeError):
            pass  # only a guess (RuntimeError: the view closed under it): pip asks again and reports what is wrong

    # -- what the view tells -----------------------------------------------------------------

    def page(self, name: str, files: list[IndexFile]) -> None:
        best = self.first_choice(name, files)
        if best is not None:
            self._submit("m:" + best.sha256, self.view.metadata, best)

    def metadata(self, f: IndexFile, data: bytes) -> None:
        for name in self.requirements(data):
            self._submit("p:" + name, self._page, name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- guesses -------------------------------------------------------------------------------

    def _page(self, name: str) -> None:
        files = self.view.files(name)
        if files is not None:
            self.page(name, files)

    def first_choice(self, name: str, files: list[IndexFile]) -> Optional[IndexFile]:
        """The wheel pip tries first: of the newest final release with a wheel for the target,
        the wheel of the best-ranked tag (one pass over the listing: a page can list thousands)."""
        best: Optional[tuple] = None
        for f in files:
            if not f.filename.endswith(".whl") or f.yanked or not f.sha256:
                continue
            info = _wheel_info(f.filename)
            if info is None or info[1].is_prerelease or not self._python_ok(f.requires_python):
                continue
            ranks = [self._rank[t] for t in info[2] if t in self._rank]
            if ranks:
                key = (info[1], -min(ranks))
                if best is None or key > best[0]:
                    best = (key, f)
        return best[1] if best else None

    def requirements(self, data: bytes) -> list[str]:
        """The names in METADATA's Requires-Dist whose marker holds for the target (no extras)."""
        from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore

        msg = email.parser.BytesParser().parsebytes(data, headersonly=True)
        out = []
        for line in msg.get_all("Requires-Dist") or []:
            try:
                req = Requirement(line)
                if req.marker is not None and not req.marker.evaluate({**self.env, "extra": ""}):
                    continue
            except (InvalidRequirement, ValueError, TypeError):
                continue
            out.append(normalise_name(req.name))
        return out
