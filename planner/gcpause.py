"""The cyclic garbage collector, paused while a set is loaded and planned.

Loading and planning create hundreds of thousands of small objects (recipes, nodes, preimages)
that all stay alive until the plan is dropped, and make no reference cycles worth collecting;
each collection the allocations trigger walks every one of them again. Paused, a plan of 10,000
nodes takes about a quarter less time (docs/benchmarks.md). Used as a decorator or `with`.

On the way out what exists is frozen (moved out of the collector's sight, still freed by
reference counting as usual), so that the first collection afterwards does not walk the whole
plan once more: that cost as much as the pause saved.
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()
