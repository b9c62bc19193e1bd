"""Durations as people read them in plans and explanations."""

from __future__ import annotations


def format_duration(s: float, *, precise: bool = False) -> str:
    """90 -> '2m' (or '1.5m' when precise); hours past an hour."""
    if s >= 3600:
        return f"{s / 3600:.1f}h"
    if s >= 60:
        return f"{s / 60:.1f}m" if precise else f"{s / 60:.0f}m"
    return f"{s:.1f}s" if precise else f"{s:.0f}s"
