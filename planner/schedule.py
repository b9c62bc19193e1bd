"""The scheduler: run a DAG of jobs on a local pool, longest remaining critical path first.

It knows nothing about building: each job is a callable. Resource hints (cores, memory) keep
heavy CUDA builds from running side by side past the machine's memory; a job bigger than the
whole budget still runs, alone.
"""

from __future__ import annotations

import heapq
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Generic, Hashable, Optional, TypeVar

import attrs

T = TypeVar("T")
Id = TypeVar("Id", bound=Hashable)


@attrs.frozen
class Job(Generic[Id]):
    id: Id
    deps: tuple  # ids of jobs that must finish first (only those in this run)
    priority: float  # larger runs first: remaining critical path
    cores: int = 1
    memory: int = 0


@attrs.frozen
class Outcome:
    ok: dict  # id -> result
    failed: dict  # id -> exception
    skipped: list  # ids not run because a dependency failed (with --keep-going) or we stopped
    interrupted: bool = False


def run_dag(jobs: list[Job], work: Callable[[object], object], *, slots: int, memory: int,
            keep_going: bool = False, on_start: Callable[[object], None] = lambda i: None,
            on_done: Callable[[object, Optional[BaseException]], None] = lambda i, e: None,
            cancel: Callable[[], None] = lambda: None) -> Outcome:
    """Run `work(id)` for every job once its deps succeeded. Returns what happened to each."""
    by_id = {j.id: j for j in jobs}
    waiting = {j.id: {d for d in j.deps if d in by_id} for j in jobs}
    dependents: dict = {j.id: [] for j in jobs}
    for j in jobs:
        for d in waiting[j.id]:
            dependents[d].append(j.id)
    ready: list = []
    seq = 0
    for j in jobs:
        if not waiting[j.id]:
            heapq.heappush(ready, (-j.priority, seq, j.id))
            seq += 1
    ok: dict = {}
    failed: dict = {}
    skipped: list = []
    running: dict[Future, object] = {}
    free_slots = slots
    free_mem = memory
    stop = False
    interrupted = False

    def fits(j: Job) -> bool:
        if not running:
            return True  # anything may run alone, however large
        return min(j.cores, slots) <= free_slots and j.memory <= free_mem

    def skip_cone(root) -> None:
        stack = list(dependents[root])
        while stack:
            n = stack.pop()
            if n in skipped_set:
                continue
            skipped_set.add(n)
            skipped.append(n)
            stack.extend(dependents[n])

    skipped_set: set = set()
    with ThreadPoolExecutor(max_workers=max(1, slots)) as pool:
        try:
            while ready or running:
                # Start whatever fits, highest priority first; a job that does not fit yet
                # blocks lower ones only while it waits for memory (no starvation of big jobs).
                deferred = []
                while ready and not stop:
                    prio, s, jid = heapq.heappop(ready)
                    if jid in skipped_set:
                        continue
                    j = by_id[jid]
                    if fits(j) and free_slots > 0:
                        free_slots -= min(j.cores, slots)
                        free_mem -= j.memory
                        on_start(jid)
                        running[pool.submit(work, jid)] = jid
                    else:
                        deferred.append((prio, s, jid))
                        break
                for item in deferred:
                    heapq.heappush(ready, item)
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    jid = running.pop(fut)
                    j = by_id[jid]
                    free_slots += min(j.cores, slots)
                    free_mem += j.memory
                    exc = fut.exception()
                    on_done(jid, exc)
                    if exc is None:
                        ok[jid] = fut.result()
                        for d in dependents[jid]:
                            waiting[d].discard(jid)
                            if not waiting[d] and d not in skipped_set:
                                heapq.heappush(ready, (-by_id[d].priority, seq, d))
                                seq += 1
                    else:
                        failed[jid] = exc
                        skip_cone(jid)
                        if not keep_going:
                            stop = True
        except KeyboardInterrupt:
            interrupted = True
            stop = True
            cancel()
            for fut in list(running):
                try:
                    fut.result()
                except BaseException as exc:  # noqa: BLE001 - collecting the cancelled builds
                    failed[running[fut]] = exc
            running.clear()
    done_ids = set(ok) | set(failed) | skipped_set
    for j in jobs:
        if j.id not in done_ids:
            skipped.append(j.id)
    return Outcome(ok=ok, failed=failed, skipped=skipped, interrupted=interrupted)
