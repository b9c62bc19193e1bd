"""Executors: where one node's build runs. The planner keeps the schedule; an executor runs
the ready node it is handed and returns `planner.build.Built`, as `planner.build.build` does.

- `LocalExecutor` (default): `build()` in this process's pool, against the local store.
- `DaskExecutor` (`--executor dask://HOST:PORT`): the node becomes a Dask task with resources
  taken from the node (`arch_amd64` / `arch_arm64`, `GPU`, `MEMORY`); the worker opens its own
  store, fetches the node's inputs and dependencies from the binary cache, builds in the same
  sandbox, pushes the signed output to the cache and returns its key and digest. The planner
  verifies the signed entry and fetches the output into its own store only where it is asked
  to (`download=True`: the targets, by default); other outputs stay in the cache as
  `RemoteEntry`s, like Bazel's `--remote_download_toplevel`.

Nothing half-built reaches the cache: a worker pushes only after `build()` added a complete,
hashed output to its store, and the manifest goes up last. A worker that dies mid-build loses
its task to the scheduler, which runs it on another worker (Dask's `allowed-failures`);
exceptions other than build failures are retried (`retries`). A node no current worker can run
is reported before anything is submitted (`check_runnable`), and a submitted node whose
workers all leave fails after `unrunnable_after` seconds instead of waiting forever.

Resource names (what workers declare, e.g. `dask worker --resources "arch_amd64=16,GPU=8,MEMORY=512e9"`):
    arch_<arch>  one per concurrent build the worker may run for that platform (Debian arch name)
    GPU          GPUs a build may use (a recipe asks with `[build.settings] gpu = N`)
    MEMORY       bytes of memory for builds (a recipe's `[resources] memory`)
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from typing import Any, Iterable, Optional, Protocol, Union


from .build import Running, build
from .builders.registry import BUILTIN_BUILDERS
from .derivation import BuildRequest, Built, Node, digests, record, resolve
from .errors import BuildError, PlannerError
from .emulation import can_run
from .host import host_platform
from .store import Entry, RemoteEntry, Store
from .worker import ARCH_PREFIX, PAYLOAD_FORMAT, WorkRequest, arch_of, build_platform, remote_build, worker_facts



class Executor(Protocol):
    def slots(self) -> int:
        """How many builds to keep in flight (the scheduler's pool size)."""

    def memory_budget(self) -> int:
        """Bytes of memory the scheduler may hand out across builds in flight."""

    def check_runnable(self, nodes: Iterable[Node]) -> list[str]:
        """One line per node this executor cannot run, naming what is missing."""

    remote: bool  # builds run elsewhere: dependencies need not be in the local store

    def build(self, req: BuildRequest, store: Store, running: Running, *, priority: float = 0.0,
              download: bool = True) -> Built:
        """Build one ready node (or reuse it) into `store`; with `download=False` a remote
        executor may leave the output in its cache and return a `RemoteEntry`."""

    def close(self) -> None: ...


def gpu_need(node: Node) -> int:
    return node.preimage.gpu()


class LocalExecutor:
    """The default: builds run here, in the planner's thread pool."""

    def __init__(self, jobs: int = 0) -> None:
        self.jobs = jobs or os.cpu_count() or 1

    def slots(self) -> int:
        return self.jobs

    def memory_budget(self) -> int:
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)
        except (ValueError, OSError):
            return 8 << 30

    def check_runnable(self, nodes: Iterable[Node]) -> list[str]:
        host = host_platform()
        out = []
        for n in nodes:
            if "rootfs" in n.deps and n.builder not in BUILTIN_BUILDERS and not can_run(n.variant.platform, host):
                out.append(f"{n.label()}: builds inside a {n.variant.platform} root filesystem; this host is "
                           f"{host}: use a native worker (--executor dask://…), or register a binfmt_misc "
                           "handler with the F flag (qemu-user-static) to build it emulated")
        return out

    remote = False

    def build(self, req: BuildRequest, store: Store, running: Running, *, priority: float = 0.0,
              download: bool = True) -> Built:
        return build(req, store, running)

    def close(self) -> None:
        pass


# -- Dask ------------------------------------------------------------------------------------

def _fmt_res(name: str, v: float) -> str:
    if name == "MEMORY":
        return f"{v / (1 << 30):.1f} GiB"
    return f"{v:g}"


def scheduler_address(url: str) -> str:
    """`dask://HOST:PORT` → `tcp://HOST:PORT`; `dask+tls://` → `tls://`; others pass through.
    A dask URL without a host or a port (1-65535) is refused in one line (PlannerError): Dask
    itself answers a ValueError from inside its client."""
    for scheme, comm in (("dask+tls://", "tls://"), ("dask://", "tcp://")):
        if url.startswith(scheme):
            rest = url[len(scheme):]
            host, sep, port = rest.rpartition(":")
            if (not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536
                    or any(c in rest for c in "/?#@") or not rest.isprintable() or " " in rest):
                raise PlannerError(f"--executor {url!r}: want {scheme}HOST:PORT, the scheduler's address "
                                   "(`dask scheduler` listens on port 8786 by default)")
            return comm + rest
    return url


def check_connect_timeout(seconds: float) -> float:
    """--connect-timeout: a finite number of seconds above 0 (nan and inf are refused)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise PlannerError(f"--connect-timeout {seconds!r}: want a finite number of seconds above 0")
    return value


def connect(url: str, timeout: float):
    """A Dask client of the scheduler at `url` (dask://, dask+tls://), or one PlannerError line.

    Bounded by `timeout` whatever answers there: Dask's own timeout covers the TCP connect,
    not a peer that accepts and never completes the handshake (an HTTP port, the dashboard)."""
    from distributed import Client

    address = scheduler_address(url)
    timeout = check_connect_timeout(timeout)
    box: dict[str, Any] = {}

    def run() -> None:
        client = Client.__new__(Client)
        try:
            client.__init__(address, timeout=timeout, set_as_default=False)  # type: ignore[misc]
            box["client"] = client
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e
            # A client that failed half-way closes itself when collected, by waiting 6 s on
            # a connection that never was and printing a traceback: it is closed already.
            try:
                client.status = "closed"
                client._loop_runner.stop()
            except Exception:  # noqa: BLE001 - failed before it had a loop
                pass

    t = threading.Thread(target=run, name="planner-dask-connect", daemon=True)
    t.start()
    t.join(timeout + 2.0)
    if t.is_alive():
        raise PlannerError(f"the Dask scheduler did not answer within --connect-timeout {timeout:g} s "
                           "(is that the scheduler's port, not its dashboard's?)", where=url)
    exc = box.get("error")
    if exc is None:
        return box["client"]
    if isinstance(exc, (OSError, TimeoutError)):
        from .netdiag import reason

        raise PlannerError(f"cannot reach the Dask scheduler within {timeout:g} s: {reason(exc)} "
                           "(is `dask scheduler` running there? --connect-timeout sets the wait)",
                           where=url) from None
    if isinstance(exc, (ValueError, TypeError)):
        hint = (" (dask+tls:// needs Dask's TLS settings: distributed.comm.tls.ca-file and "
                "distributed.comm.tls.client.cert/key in the Dask configuration)") if address.startswith("tls://") else ""
        line = " ".join(str(exc).split())[:200]
        raise PlannerError(f"cannot connect to the Dask scheduler: {type(exc).__name__}: {line}{hint}",
                           where=url) from None
    raise exc


class DaskExecutor:
    """Runs each node as a Dask task on a worker that has the node's resources.

    `cache` is where workers fetch inputs and push outputs (it needs a signer, unless every
    worker has its own key in `PLANNER_SIGNING_KEY` and `ship_key=False`; then the planner
    must trust those keys). With `ship_key=True` the planner's secret key travels with each
    task: use a TLS scheduler address (`dask+tls://`) on shared networks.
    """

    def __init__(self, address: Any, cache, *, ship_key: bool = True, retries: int = 2,
                 sandboxed: bool = True, unrunnable_after: float = 30.0, wait_workers: float = 0.0,
                 connect_timeout: float = 30.0, oversubscribe: float = 2.0) -> None:
        from distributed import Client

        if isinstance(address, Client):
            self.client = address
            self._own_client = False
        else:
            self.client = connect(str(address), connect_timeout)
            self._own_client = True
        self.cache = cache
        self.ship_key = ship_key
        self.retries = retries
        self.sandboxed = sandboxed
        self.unrunnable_after = unrunnable_after
        self.oversubscribe = oversubscribe
        self._info: tuple[float, dict] = (0.0, {})
        self._info_lock = threading.Lock()
        self._ensure_locks: dict[str, threading.Lock] = {}
        self._ensure_guard = threading.Lock()
        self.timings: list[dict] = []  # per remote build: submit, wait, fetch and worker phases (s)
        if wait_workers:
            deadline = time.monotonic() + wait_workers
            while not self.workers(fresh=True) and time.monotonic() < deadline:
                time.sleep(0.5)

    @classmethod
    def from_url(cls, url: str, cache, **kw) -> "DaskExecutor":
        return cls(url, cache, **kw)

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    # -- workers and resources -----------------------------------------------------------

    def workers(self, *, fresh: bool = False) -> dict[str, dict]:
        """{address: {'name', 'nthreads', 'resources'}} of the cluster's current workers."""
        with self._info_lock:
            at, info = self._info
            if fresh or time.monotonic() - at > 1.0:
                raw = self.client.scheduler_info(n_workers=-1).get("workers", {})
                info = {a: {"name": w.get("name"), "nthreads": int(w.get("nthreads", 1)),
                            "resources": dict(w.get("resources") or {})} for a, w in raw.items()}
                self._info = (time.monotonic(), info)
            return info

    def slots(self) -> int:
        """Builds in flight: the cluster's threads times `oversubscribe`, so a worker finds its
        next task queued when one ends (the planner's fetch-back and the round trip overlap)."""
        threads = sum(w["nthreads"] for w in self.workers(fresh=True).values())
        return max(1, int(threads * self.oversubscribe))

    def memory_budget(self) -> int:
        return 1 << 62  # workers' MEMORY resources do the accounting

    @staticmethod
    def resources_for(node: Node) -> dict[str, float]:
        res: dict[str, float] = {}
        plat = build_platform(node)
        if plat:
            res[ARCH_PREFIX + arch_of(plat)] = 1
        gpu = gpu_need(node)
        if gpu:
            res["GPU"] = gpu
        if node.memory:
            res["MEMORY"] = node.memory
        return res

    def _problem(self, node: Node, workers: dict[str, dict]) -> Optional[str]:
        need = self.resources_for(node)
        if not workers:
            return "the Dask cluster has no workers"
        if any(all(w["resources"].get(r, 0) >= v for r, v in need.items()) for w in workers.values()):
            return None
        missing = []
        for r, v in sorted(need.items()):
            best = max(w["resources"].get(r, 0) for w in workers.values())
            if best < v:
                missing.append(f"{r}={_fmt_res(r, v)} (no worker has it)" if best == 0 else
                               f"{r}={_fmt_res(r, v)} (largest worker offers {_fmt_res(r, best)})")
        if not missing:
            missing = ["all of " + ", ".join(f"{r}={_fmt_res(r, v)}" for r, v in sorted(need.items()))
                       + " on one worker"]
        offered = "; ".join(
            f"{w['name']}: " + (", ".join(f"{r}={_fmt_res(r, v)}" for r, v in sorted(w["resources"].items())) or "none")
            for w in workers.values())
        return f"no worker can run it: needs {', '.join(missing)}; workers offer {offered}"

    def check_runnable(self, nodes: Iterable[Node]) -> list[str]:
        """One line per node no current worker can run (naming the missing resource), and one
        per worker that could not build anything it is sent (other planner version, no
        bubblewrap, an arch_* resource that is not its platform). Also warms the workers'
        imports."""
        workers = self.workers(fresh=True)
        out = []
        try:
            facts = self.client.run(worker_facts)
        except Exception as e:  # noqa: BLE001 - e.g. the workers cannot import planner
            facts = {}
            out.append(f"workers cannot run planner code: {type(e).__name__}: {e}")
        from . import __version__

        for addr, f in sorted(facts.items()):
            name = workers.get(addr, {}).get("name", addr)
            if f.get("planner") != __version__:
                out.append(f"worker {name}: runs planner {f.get('planner')}, this planner is {__version__}")
            if self.sandboxed and not f.get("bwrap"):
                out.append(f"worker {name}: bubblewrap (bwrap) is not installed")
            wrong = [r for r in workers.get(addr, {}).get("resources", {})
                     if r.startswith(ARCH_PREFIX) and r != ARCH_PREFIX + arch_of(f.get("platform", ""))]
            if wrong:
                out.append(f"worker {name}: declares {', '.join(wrong)} but is {f.get('platform')}")
        out += [f"{n.label()}: {p}" for n in nodes if (p := self._problem(n, workers))]
        return out

    # -- payload -------------------------------------------------------------------------

    def _ensure_in_cache(self, store: Store, entry: Union[Entry, RemoteEntry], input_key: str) -> None:
        """Make `entry` available to workers: push it unless the cache already has it."""
        with self._ensure_guard:
            lock = self._ensure_locks.setdefault(entry.key, threading.Lock())
        with lock:
            if self.cache.has(entry.key):
                return
            if isinstance(entry, RemoteEntry):
                raise BuildError(entry.name, f"output {entry.key} is gone from {entry.cache} (evicted?) and not in "
                                             "the local store: run again to rebuild it")
            from .cache.policy import push_retrying

            push_retrying(self.cache, store, entry.key, input_key)

    def payload(self, req: BuildRequest, store: Store) -> dict:
        """Everything a worker needs, as plain data: a narrow request (keys, preimage, input
        file names, cores), never the planner's node; pushes the node's inputs and
        dependencies to the cache first (fixed-output inputs under their fixed keys)."""
        from . import __version__

        node = req.node
        for e in req.inputs.values():
            self._ensure_in_cache(store, e, e.key)
        for mount, e in req.deps.items():
            self._ensure_in_cache(store, e, node.preimage.deps[mount])
        signer = self.cache.signer
        return {
            "format": PAYLOAD_FORMAT,
            "planner": __version__,
            "request": WorkRequest.of(node, resolve(node, digests(req.deps)).build_key).to_json(),
            "inputs": {n: {"key": e.key, "digest": e.digest} for n, e in sorted(req.inputs.items())},
            "deps": {m: {"key": e.key, "digest": e.digest} for m, e in sorted(req.deps.items())},
            "jobs": req.jobs,
            "sandboxed": req.sandboxed and self.sandboxed,
            "cache": {
                "ref": str(self.cache.ref),
                "trusted": self.cache.trusted.texts(),
                "secret": signer.secret_text() if (signer is not None and self.ship_key) else None,
            },
        }

    def submit(self, node: Node, payload: dict, *, priority: float = 0.0):
        """Submit one build; returns a Dask future (`.result()`, `.done()`, `.cancel()`)."""
        key = f"planner-build-{node.id}-{payload['request']['build_key']}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(remote_build, payload, key=key, resources=self.resources_for(node),
                                  retries=self.retries, pure=False, priority=int(priority))

    # -- one build -----------------------------------------------------------------------

    remote = True

    def build(self, req: BuildRequest, store: Store, running: Running, *, priority: float = 0.0,
              download: bool = True) -> Built:
        node = req.node
        resolved = resolve(node, digests(req.deps))
        bkey = resolved.build_key
        existing = store.lookup(bkey)
        if existing is not None:
            store.realise(node.key, bkey, existing.digest)
            return Built(existing, bkey, 0.0, reused=True)
        problem = self._problem(node, self.workers())
        if problem:
            raise BuildError(node.label(), problem)
        before = store.realisation(node.key)
        previous_digest = before.digest if before is not None and before.build_key == bkey else None
        t0 = time.monotonic()
        fut = self.submit(node, self.payload(req, store), priority=priority)
        t1, submitted_at = time.monotonic(), time.time()
        try:
            res = self._wait(fut, node, running)
            result_at = time.time()
        finally:
            if not fut.done():
                fut.cancel()
        t2 = time.monotonic()
        if "error" in res:
            err = res["error"]
            raise BuildError(node.label(), err["message"], log=f"{err.get('worker', '?')}:{err.get('log')}",
                             tail=err.get("tail", ""))
        if res["build_key"] != bkey:
            raise BuildError(node.label(), f"worker built key {res['build_key']}, expected {bkey}")
        entry: Union[Entry, RemoteEntry, None] = store.lookup(bkey)
        if entry is None:
            # Verified (signature, key, digest) whether fetched or not: an output that is not
            # usable from the cache fails here, not in the next worker.
            from .cache.policy import lookup_after_build

            hit = lookup_after_build(self.cache, bkey)
            if not hit.ok:
                raise BuildError(node.label(), f"the worker's output is not usable from the cache: {hit.line()}")  # type: ignore[union-attr]
            if download:
                entry = self.cache.fetch(hit, store)  # type: ignore[arg-type]
            else:
                self.cache.remember(hit)  # dependants' payloads need not ask again
                entry = RemoteEntry(bkey, hit.digest, node.name, str(self.cache.ref))  # type: ignore[union-attr]
        with self._info_lock:
            self.timings.append({"node": node.id, "submit": t1 - t0, "wait": t2 - t1, "submitted_at": submitted_at,
                                 "result_at": result_at,
                                 "fetch": time.monotonic() - t2, "worker": res.get("worker"),
                                 **{f"worker_{k}": v for k, v in (res.get("phases") or {}).items()}})
        if entry.digest != res["digest"]:
            raise BuildError(node.label(), f"cache entry digest {entry.digest} differs from the worker's {res['digest']}")
        record(store, node, resolved, entry.digest)
        seconds = float(res.get("seconds", 0.0))
        return Built(entry, bkey, seconds, reused=bool(res.get("reused")), previous_digest=previous_digest)

    def _wait(self, fut, node: Node, running: Running) -> dict:
        # Woken by the future's own callback, not by polling `distributed.wait` from every
        # waiting thread: with dozens of builds in flight those calls queue on the client's
        # event loop, and a finished build was noticed up to a second late (bench/scale.py's
        # timeline on a 16-worker host).
        done = threading.Event()
        fut.add_done_callback(lambda _f: done.set())
        stuck_since: Optional[float] = None
        while True:
            if running.cancelled:
                fut.cancel()
                raise KeyboardInterrupt
            done.wait(1.0)
            if fut.done():
                try:
                    return fut.result()
                except Exception as e:  # noqa: BLE001 - a remote failure after retries, or KilledWorker
                    raise BuildError(node.label(), f"remote build failed: {type(e).__name__}: {e}") from None
            problem = self._problem(node, self.workers())
            if problem is None:
                stuck_since = None
            else:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > self.unrunnable_after:
                    raise BuildError(node.label(), problem + f" (for {self.unrunnable_after:.0f}s)")


def executor_for(url: Optional[str], *, cache=None, jobs: int = 0, sandboxed: bool = True, **kw) -> Executor:
    """`None`/`local` → LocalExecutor; `dask://HOST:PORT` / `dask+tls://…` → DaskExecutor."""
    if not url or url == "local":
        return LocalExecutor(jobs)
    if url.startswith(("dask://", "dask+tls://")):
        if cache is None:
            raise PlannerError("--executor dask://… needs a binary cache to exchange inputs and outputs: "
                               "pass --cache-to oci://HOST/REPO and --signing-key")
        return DaskExecutor(url, cache, sandboxed=sandboxed, **kw)
    raise PlannerError(f"unknown executor {url!r} (want local or dask://HOST:PORT)")


# -- errors ----------------------------------------------------------------------------------

class Unrunnable(PlannerError):
    """Nodes of the plan that no worker of the executor can run; `problems` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)


def dask_setup(worker=None) -> None:
    """Dask's preload hook (`dask worker --preload planner.executors`): import what a build
    needs while the worker starts, not inside the first build it is given."""
    worker_facts()
