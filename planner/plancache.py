"""The plan cache around a realise: whether the no-op fast path applies, what a complete
realise records for the next one, and the out-link. Standard library only.

The cache itself (its format, and answering a no-op from it with os, marshal and zlib) is
`planner.noop`, which `planner.entry` calls before anything else is imported. Whether a realise
may take the fast path at all is decided here, once (`fast_path_applies`): the command line asks
before importing the planner, and `realise()` asks the same question.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .noop import noop_text, try_noop  # noqa: F401  (the answer, for callers of this module)


def fast_path_applies(*, dry_run: bool = False, check: bool = False, executor: object = None,
                      cache_to: object = (), platform: Optional[str] = None, use_plan_cache: bool = True,
                      variant: Optional[str] = None) -> bool:
    """A no-op answer is possible only for a plain realise of everything into the local store:
    a dry run, a --check rebuild, a remote executor, a cache to push to or one platform of the
    set (or one CUDA variant) all need the plan."""
    return use_plan_cache and not (dry_run or check or executor or cache_to or platform or variant)


def watched_files(rs, lock_path: Path) -> list[Path]:
    """Every file (and folder) planning read: a change to any of them invalidates the cache."""
    # Folders too (their own stat changes when an entry is added, removed or renamed): a new
    # recipe or a new file in a path source changes the plan without touching any listed file.
    # Sorted by string: comparing Path objects costs more than the rest for 10,000 recipes.
    files = [rs.folder, *sorted(rs.folder.rglob("*"), key=os.fspath)]
    files.append(lock_path)
    for r in rs.recipes.values():
        for p in r.patches:
            if p.file:
                files.append(rs.root / p.file)
        for s in r.all_sources().values():
            if s.kind == "path" and s.path:
                base = rs.root / s.path
                files.extend([base, *sorted(base.rglob("*"), key=os.fspath)] if base.is_dir() else [base])
    pkg = Path(__file__).resolve().parent
    files.extend(sorted(pkg.rglob("*.py"), key=os.fspath))
    files.append(Path("/var/lib/dpkg/status"))
    return [f for f in dict.fromkeys(files)]


def write_plan_cache(rs, lock_path: Path, store_root: Path, target: Optional[str], sandboxed: bool, result) -> None:
    """After a complete realise (and after its last commit to the store's index): what the next
    one needs to answer without planning."""
    from .noop import write_plan_cache as write

    write(store_root, rs.root, rs.name, target, sandboxed, watched_files(rs, lock_path),
          [{"id": n.id, "name": n.name, "variant": n.variant, "key": n.key, "build_key": n.build_key,
            "digest": n.digest, "path": n.path} for n in result.nodes],
          result.targets, result.output, result.digest)


def out_link(link: Path, target: Path, store=None) -> None:
    """Point `link` at `target` atomically; with a store, the link is a gc root too."""
    link = Path(link).absolute()
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    if store is not None:
        store.set_root(f"link:{link}", link)
