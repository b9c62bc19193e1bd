"""Resolving inputs to pins (`planner lock`) and materialising pinned inputs in the store.

Fetched content enters the store as fixed-output entries keyed by its tree hash, so a second
lock or a realise never downloads it again, and a re-compressed tarball with the same content
maps to the same entry. Nothing that fails verification is stored.

`inputs` resolves and materialises one input (the `Resolver`); `locking` locks a whole set.
"""

from __future__ import annotations

from ..derivation import fixed_key  # noqa: F401  (re-exported)
from ..mirrors import load_mirrors, mirror_candidates  # noqa: F401  (re-exported)
from .inputs import Fetched, Resolver  # noqa: F401
from .pins import input_failure, pin_conflict, pin_origins  # noqa: F401
from .locking import UnresolvedInputs, declared_pins, lock_set, lock_store_conflicts, prefetch  # noqa: F401
