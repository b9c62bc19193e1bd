""""Did you mean" for names a user typed: a set, a target, a node, a recipe key."""

from __future__ import annotations

import difflib
from typing import Iterable, Optional

from .errors import PlannerError


def did_you_mean(name: str, valid: Iterable[str], *, limit: int = 12, cutoff: float = 0.6) -> str:
    """' (did you mean X?; one of: A, B, …)' for an error line; '' when nothing is valid.
    `cutoff`: how alike a suggestion must be (difflib's ratio); names that share most of their
    letters by kind (platforms: `linux/…64`) need a higher one."""
    names = sorted(set(valid))
    if not names:
        return ""
    close = difflib.get_close_matches(name, names, n=3, cutoff=cutoff)
    if not close:
        # A prefix or substring is a likely typo too (`sglang` for `sglang-mini`).
        close = [n for n in names if name and (n.startswith(name) or name in n)][:3]
    shown = ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f" ({hint}one of: {shown})"


def unknown(kind: str, name: str, valid: Iterable[str], *, where: Optional[str] = None,
            error: type[PlannerError] = PlannerError) -> PlannerError:
    return error(f"no {kind} {name!r}{did_you_mean(name, valid)}", where=where)
