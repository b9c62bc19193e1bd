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


# Seconds a Ctrl-C waits for the jobs in flight to end once their processes are killed.
CANCEL_GRACE = 2.0


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
    dag = _Dag(jobs, slots=slots, memory=memory)
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=max(1, slots))
    try:
        while dag.ready or dag.running:
            dag.start_ready(pool, work, on_start)
            if not dag.running:
                break
            done, _ = wait(list(dag.running), return_when=FIRST_COMPLETED)
            for fut in done:
                dag.finish(fut, on_done, keep_going)
    except KeyboardInterrupt:
        interrupted = True
        dag.stop = True
        cancel()  # the builds' processes are killed; they end at once
        dag.collect_cancelled(grace=CANCEL_GRACE)
    finally:
        # After Ctrl-C, work in the planner's own threads (a download, an unpack) is not waited
        # for: it would hold the user for as long as it runs. The caller stops; what such work
        # leaves in the store's tmp/ is what a crash leaves, and `store gc` removes it.
        pool.shutdown(wait=not interrupted, cancel_futures=interrupted)
    done_ids = set(dag.ok) | set(dag.failed) | dag.skipped_set
    for j in jobs:
        if j.id not in done_ids:
            dag.skipped.append(j.id)
    return Outcome(ok=dag.ok, failed=dag.failed, skipped=dag.skipped, interrupted=interrupted)


class _Dag:
    """The scheduler's state: what waits on what, what is ready, what runs and what it holds."""

    def __init__(self, jobs: list[Job], *, slots: int, memory: int) -> None:
        self.by_id = {j.id: j for j in jobs}
        self.waiting = {j.id: {d for d in j.deps if d in self.by_id} for j in jobs}
        self.dependents: dict = {j.id: [] for j in jobs}
        for j in jobs:
            for d in self.waiting[j.id]:
                self.dependents[d].append(j.id)
        self.ready: list = []
        self.seq = 0
        for j in jobs:
            if not self.waiting[j.id]:
                self._push(j.id)
        self.ok: dict = {}
        self.failed: dict = {}
        self.skipped: list = []
        self.skipped_set: set = set()
        self.running: dict[Future, object] = {}
        self.slots = slots
        self.free_slots = slots
        self.free_mem = memory
        self.stop = False

    def _push(self, jid) -> None:
        heapq.heappush(self.ready, (-self.by_id[jid].priority, self.seq, jid))
        self.seq += 1

    def fits(self, j: Job) -> bool:
        if not self.running:
            return True  # anything may run alone, however large
        return min(j.cores, self.slots) <= self.free_slots and j.memory <= self.free_mem

    def start_ready(self, pool: ThreadPoolExecutor, work: Callable[[object], object],
                    on_start: Callable[[object], None]) -> None:
        """Start whatever fits, highest priority first; a job that does not fit yet blocks
        lower ones only while it waits for memory (no starvation of big jobs)."""
        while self.ready and not self.stop:
            prio, s, jid = heapq.heappop(self.ready)
            if jid in self.skipped_set:
                continue
            j = self.by_id[jid]
            if self.fits(j) and self.free_slots > 0:
                self.free_slots -= min(j.cores, self.slots)
                self.free_mem -= j.memory
                on_start(jid)
                self.running[pool.submit(work, jid)] = jid
            else:
                heapq.heappush(self.ready, (prio, s, jid))
                break

    def finish(self, fut: Future, on_done: Callable[[object, Optional[BaseException]], None],
               keep_going: bool) -> None:
        jid = self.running.pop(fut)
        j = self.by_id[jid]
        self.free_slots += min(j.cores, self.slots)
        self.free_mem += j.memory
        exc = fut.exception()
        on_done(jid, exc)
        if exc is None:
            self.ok[jid] = fut.result()
            for d in self.dependents[jid]:
                self.waiting[d].discard(jid)
                if not self.waiting[d] and d not in self.skipped_set:
                    self._push(d)
        else:
            self.failed[jid] = exc
            self.skip_cone(jid)
            if not keep_going:
                self.stop = True

    def skip_cone(self, root) -> None:
        stack = list(self.dependents[root])
        while stack:
            n = stack.pop()
            if n in self.skipped_set:
                continue
            self.skipped_set.add(n)
            self.skipped.append(n)
            stack.extend(self.dependents[n])

    def collect_cancelled(self, grace: float) -> None:
        """What the cancelled jobs ended with, within `grace` seconds; one still running then
        counts as interrupted."""
        done, _ = wait(list(self.running), timeout=grace)
        for fut in list(self.running):
            try:
                if fut not in done:
                    raise KeyboardInterrupt
                fut.result()
            except BaseException as exc:  # noqa: BLE001 - collecting the cancelled builds
                self.failed[self.running[fut]] = exc
        self.running.clear()
