"""What a pin names, and a pinned input's failure in words: the store's record of what each
fetched entry was verified against (sha256, commit, digest), and one wording of a fetch or
verification failure whatever raised it."""

from __future__ import annotations

from typing import Optional

from ..derivation import fixed_key
from ..errors import InputError, PlannerError
from ..lock import InputDecl, Pin
from ..store import Store


def input_failure(decl: InputDecl, filename: Optional[str], needed_by: str, exc: PlannerError) -> InputError:
    """A fetch or verification failure of a pinned input, worded the same whatever raised it: the
    input (`recipe/input`) and its file first, what went wrong, where the bytes came from last."""
    from ..fetch.url import _redact

    if isinstance(exc, InputError):
        return exc
    src = decl.source
    url = str(src.url) if src is not None and src.url else None
    file = filename or (url.rstrip("/").rsplit("/", 1)[-1] if url else None) or decl.id.rsplit("/", 1)[-1]
    where = exc.where or ""
    suffix = ""
    if where.startswith(decl.id):  # "x/blob (tree)": keep what part of the pin it was
        suffix, where = where[len(decl.id):].strip(), ""
    origin = f" (from {_redact(where)})" if where and where not in (file,) else ""
    return InputError(f"{file}{' ' + suffix if suffix else ''}: {exc.message}{origin}; needed by {needed_by}",
                      where=decl.id)


def pin_origins(pin: Pin) -> list[str]:
    return [o for o in (f"sha256:{pin.sha256}" if pin.sha256 else None,
                        f"commit:{pin.commit}" if pin.commit else None,
                        f"digest:{pin.digest}" if pin.digest else None) if o]


def pin_conflict(store: Store, pin: Pin, unpacks: bool) -> Optional[str]:
    """Why the store's entry for `pin.tree` cannot be what `pin` names, or None.

    Pins are looked up by tree hash: a tree copied from another input would otherwise give
    that input's bytes. The store remembers what each entry was verified against when it was
    fetched; a pin whose sha256, commit or digest is not among them names other bytes."""
    if pin.tree is None:
        return None
    mine = pin_origins(pin)
    if not mine:
        return None
    known = store.origins(fixed_key(pin.tree, unpacks))
    if not known:
        return None  # fetched before origins were recorded, or by a path pin: nothing to compare
    for o in mine:
        kind = o.split(":", 1)[0]
        same_kind = {k for k in known if k.startswith(kind + ":")}
        if same_kind and o not in same_kind:
            return (f"tree {pin.tree[:19]}… is held in the store for {kind} {sorted(same_kind)[0].split(':', 1)[1][:16]}…, "
                    f"the lock says {o.split(':', 1)[1][:16]}…")
    return None
