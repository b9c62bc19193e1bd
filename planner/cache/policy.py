"""Several caches at once, closures, and the classification of misses (for `why`)."""

from __future__ import annotations

import time
from typing import Iterable, Optional, Sequence

import attrs

from ..errors import PlannerError
from ..store import Entry, Store
from .ref import CacheUnreachable
from .results import CacheHit, CacheMiss
from .client import BinaryCache

def lookup_any(caches: Sequence[BinaryCache], build_key: str, *, preimage: Optional[dict] = None
               ) -> tuple[Optional[tuple[BinaryCache, CacheHit]], list[CacheMiss]]:
    """The first cache holding a valid entry, and the misses of those tried before it."""
    misses: list[CacheMiss] = []
    for c in caches:
        r = c.lookup(build_key, preimage=preimage)
        if r.ok:
            return (c, r), misses  # type: ignore[return-value]
        misses.append(r)  # type: ignore[arg-type]
    return None, misses


def substitute(caches: Sequence[BinaryCache], store: Store, build_key: str) -> Optional[Entry]:
    """Fetch `build_key` from the first cache that has it (valid and trusted), else None."""
    found, _ = lookup_any(caches, build_key)
    if found is None:
        return None
    cache, hit = found
    return cache.fetch(hit, store)


@attrs.frozen
class MissReport:
    category: str  # never-built | evicted | unsigned | untrusted | bad-signature | bad-entry | unreachable | near-miss
    detail: str
    misses: list[CacheMiss] = attrs.field(factory=list)


def classify_miss(misses: Sequence[CacheMiss], *, built_before: bool) -> MissReport:
    """One cause for a node no substituter could provide (`planner why`).

    A refused entry (bytes that are not what their signature says, unsigned, untrusted, bad
    signature) wins: the bytes exist but may not be
    used. Then unreachable caches (when none answered), then near misses (name the differing
    axis), then `evicted` (this store built or fetched it once: the entry was collected since),
    else `never-built`."""
    misses = list(misses)
    for reason in ("bad-entry", "bad-signature", "untrusted", "unsigned"):
        for m in misses:
            if m.reason == reason:
                return MissReport(reason, f"{m.cache}: {m.detail}", misses)
    if misses and all(m.reason == "unreachable" for m in misses):
        return MissReport("unreachable", "; ".join(f"{m.cache}: {m.detail}" for m in misses), misses)
    for m in misses:
        if m.near_miss:
            return MissReport("near-miss", f"{m.cache} has it for another variant: {m.near_miss[0].describe()}",
                              misses)
    unreachable = [m for m in misses if m.reason == "unreachable"]
    note = f" ({len(unreachable)} cache(s) unreachable)" if unreachable else ""
    if built_before:
        return MissReport("evicted", "built before, but no longer in the store or any cache" + note, misses)
    return MissReport("never-built", "no cache has it and it was never built here" + note, misses)


def push_closure(cache: BinaryCache, store: Store, nodes: Iterable[tuple[str, str]], *,
                 inputs: Iterable[str] = (), progress=None) -> dict[str, int]:
    """`planner store push`: push (input key, build key) pairs and fixed-output entries by key.

    `progress` gets planner.progress events (one start and one done per entry). Returns
    counts {'pushed': n, 'present': m}."""
    emit = progress or (lambda kind, data: None)
    items = [(bkey, input_key) for input_key, bkey in nodes] + [(key, key) for key in inputs]
    emit("plan", {"total": len(items), "todo": len(items), "cached": []})
    counts = {"pushed": 0, "present": 0}
    for key, input_key in items:
        e = store.lookup(key)
        label = e.path.name if e is not None else key
        emit("start", label)
        try:
            got = cache.push_from_store(store, key, input_key)
        except PlannerError as exc:
            emit("failed", {"node": label, "error": exc.message})
            raise
        counts[got] += 1
        emit("done", {"node": label, "status": got, "seconds": 0.0})
    return counts


def push_run(cache: BinaryCache, store: Store, record, *, with_inputs: bool = True,
             progress=None) -> dict[str, int]:
    """Push everything a run record (`planner.runs.RunRecord`) produced (its nodes) and,
    optionally, the inputs it used."""
    nodes = [(n.key, n.build_key) for n in record.nodes
             if n.build_key and n.path and n.action in ("built", "reused", "substituted", "checked")]
    inputs: list[str] = []
    if with_inputs:
        by_path = {str(e.path): e.key for e in store.entries()}
        inputs = [by_path[p] for p in record.inputs if p in by_path]
    return push_closure(cache, store, nodes, inputs=inputs, progress=progress)


def pull_closure(caches: Sequence[BinaryCache], store: Store, plan, node_ids: Optional[Iterable[str]] = None
                 ) -> tuple[dict[str, Entry], dict[str, list[CacheMiss]]]:
    """`planner store pull`: substitute a plan's closure, dependencies first.

    A node's build key needs its dependencies' output digests, so a node whose dependency is
    missing is itself reported missing (with no misses of its own). Returns (entries, misses)."""
    from ..derivation import digests, record, resolve

    ids = plan.closure(node_ids if node_ids is not None else plan.roots)
    got: dict[str, Entry] = {}
    missing: dict[str, list[CacheMiss]] = {}
    for nid in ids:
        node = plan.nodes[nid]
        if any(d not in got for d in node.deps.values()):
            missing[nid] = []
            continue
        deps = {m: got[d] for m, d in node.deps.items()}
        resolved = resolve(node, digests(deps))
        e = store.lookup(resolved.build_key)
        if e is None:
            found, misses = lookup_any(caches, resolved.build_key, preimage=resolved.preimage.to_json())
            if found is None:
                missing[nid] = misses
                continue
            e = found[0].fetch(found[1], store)
        record(store, node, resolved, e.digest)
        got[nid] = e
    return got, missing


def lookup_after_build(cache, bkey: str, *, waits: tuple[float, ...] = (0.5, 2.0)):
    """The cache's entry for an output a worker has just pushed. The cache answered the worker
    a moment ago: an `unreachable` now (one 5xx, a timeout) is asked again, twice, rather than
    failing a build that succeeded (and every other node's lookup for 30 s with it)."""
    hit = cache.lookup(bkey)
    for wait in waits:
        if hit.ok or hit.reason != "unreachable":
            break
        time.sleep(wait)
        cache.forget_unreachable()
        hit = cache.lookup(bkey)
    return hit


def push_retrying(cache, store, key: str, input_key: str, *, waits: tuple[float, ...] = (0.5, 2.0)) -> str:
    """`push_from_store`, asked again (twice) when the cache did not answer (one 5xx, a
    timeout: CacheUnreachable), not when it refused the entry."""
    for wait in waits:
        try:
            return cache.push_from_store(store, key, input_key)
        except CacheUnreachable:
            time.sleep(wait)
            cache.forget_unreachable()
    return cache.push_from_store(store, key, input_key)
