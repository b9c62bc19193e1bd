"""The worker side of the Dask executor: what runs ON a worker, and the narrow request it gets.

A worker receives a `WorkRequest` (the node's input and build keys, its preimage as JSON, the
file names of its inputs, its declared cores) plus where to fetch inputs and dependencies from;
it checks the preimage against the input key, fetches what the build needs from the binary
cache, builds in the same sandbox, pushes the signed output, and returns its key and digest.
It never sees the planner's plan or node objects.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import attrs

from .build import Running, build
from .builders.registry import BUILTIN_BUILDERS
from .derivation import BuildRequest, InputRef, Node, Preimage, digests, resolve
from .errors import BuildError, PlannerError
from .hashing import key_of
from .limits import Limits
from .host import host_packages, host_platform
from .store import Entry, Store

PAYLOAD_FORMAT = 2
ARCH_PREFIX = "arch_"


def arch_of(platform: str) -> str:
    parts = platform.split("/")
    return parts[1] if len(parts) > 1 else parts[0]


def build_platform(node: Node) -> Optional[str]:
    """The platform a node's build must run on, or None when any will do.

    Builtin builders run no recipe code and no host tools: anywhere. A build inside a root
    file system runs that file system's binaries: its platform. Otherwise the host axis (a
    cross-compiler's build machine) wins over the target platform; a node with neither axis
    declared its output platform-independent (the worker still checks its host packages).
    """
    if node.builder in BUILTIN_BUILDERS:
        return None
    if "rootfs" in node.deps and node.variant.platform:
        return node.variant.platform
    return node.variant.host or node.variant.platform


class RemoteError(RuntimeError):
    """A worker-side failure that is not the build's own (retried by Dask)."""


@attrs.frozen
class WorkRequest:
    """One build as a worker gets it: keys, preimage and the few facts the build needs."""

    id: str  # the node's id: task names and messages
    input_key: str
    build_key: str
    preimage: dict[str, Any]  # canonical JSON form; its key must be input_key
    filenames: dict[str, Optional[str]]  # input name -> file name inside its store entry
    cores: int
    impure: bool
    limits: Optional[dict[str, float]] = None  # the node's [resources] limits (planner/limits.py)

    @classmethod
    def of(cls, node: Node, build_key: str) -> "WorkRequest":
        return cls(id=node.id, input_key=node.key, build_key=build_key, preimage=node.preimage.to_json(),
                   filenames={n: ref.filename for n, ref in sorted(node.inputs.items())}, cores=node.cores,
                   impure=node.impure, limits=node.limits.to_json() if node.limits is not None else None)

    def to_json(self) -> dict:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "WorkRequest":
        return cls(id=str(data["id"]), input_key=str(data["input_key"]), build_key=str(data["build_key"]),
                   preimage=dict(data["preimage"]), filenames=dict(data["filenames"]), cores=int(data["cores"]),
                   impure=bool(data["impure"]), limits=data.get("limits"))

    def node(self) -> Node:
        """The node this request builds, as far as a build needs one (no plan, no run-time
        requirements); refused when the preimage is not what the input key names."""
        if key_of(self.preimage) != self.input_key:
            raise RemoteError(f"the request's preimage does not hash to its input key {self.input_key}")
        pre = Preimage.from_json(self.preimage)
        pins = {n: (p.tree, p.unpacked) for n, p in pre.inputs.items()}
        pins.update({f"patch/{p.name}": (p.tree, False) for p in pre.patches})
        inputs = {n: InputRef(decl=n, platform=None, tree=pins.get(n, ("", False))[0],
                              unpacks=pins.get(n, ("", False))[1], filename=fn) for n, fn in self.filenames.items()}
        return Node(id=self.id, recipe=pre.name, name=pre.name, version=pre.version, variant=pre.variant,
                    key=self.input_key, preimage=pre, builder=pre.builder.kind, deps={m: m for m in pre.deps},
                    requires=(), inputs=inputs, estimate=0.0, memory=0, cores=self.cores, impure=self.impure,
                    limits=_limits(self.limits))


def _limits(data: Optional[dict]) -> Optional[Limits]:
    if data is None:
        return None
    return Limits(memory=int(data["memory"]), tmp=int(data["tmp"]), processes=int(data["processes"]),
                  timeout=float(data["timeout"]))


_worker_lock = threading.Lock()
_worker_ctx: dict[tuple, tuple] = {}


def worker_store_path() -> Path:
    """`PLANNER_WORKER_STORE`, else `PLANNER_STORE`, else a per-worker folder under the temp dir."""
    for var in ("PLANNER_WORKER_STORE", "PLANNER_STORE"):
        if os.environ.get(var):
            return Path(os.environ[var])
    name = "local"
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        pass
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(tempfile.gettempdir()) / f"planner-worker-{os.getuid()}" / safe / "store"


def _context(cfg: dict):
    from .cache import BinaryCache, Signer, TrustedKeys

    path = worker_store_path()
    ident = (str(path), cfg["ref"], tuple(cfg["trusted"]), cfg.get("secret"))
    with _worker_lock:
        ctx = _worker_ctx.get(ident)
        if ctx is None:
            key_file = os.environ.get("PLANNER_SIGNING_KEY")
            signer = Signer.from_file(Path(key_file)) if key_file else (
                Signer.from_text(cfg["secret"]) if cfg.get("secret") else None)
            ctx = (Store(path), BinaryCache(cfg["ref"], trusted=TrustedKeys(cfg["trusted"]), signer=signer))
            _worker_ctx[ident] = ctx
        return ctx


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return socket.gethostname()


def worker_facts() -> dict:
    """What `check_runnable` asks every worker (via `Client.run`)."""
    from . import __version__
    from . import cache as _cache  # warm the imports a build needs
    from .sandbox import bwrap_path

    _cache._ssl_context()
    return {"planner": __version__, "platform": host_platform(), "bwrap": bwrap_path() is not None,
            "store": str(worker_store_path())}


def _check_host(node: Node) -> None:
    """The build key names the planner host's package versions: refuse to build on a worker
    whose versions differ (its output would be filed under a key that does not describe it)."""
    plat = build_platform(node)
    if plat and host_platform() != plat:
        raise RemoteError(f"worker {_worker_name()} is {host_platform()}, the build needs {plat}: "
                          f"check its {ARCH_PREFIX}* resource")
    want = node.preimage.host or {}
    if not want or node.builder in BUILTIN_BUILDERS:
        return
    have = host_packages(set(want))
    diff = [f"{n} {want[n]} (planner) vs {have.get(n, 'absent')}" for n in sorted(want) if have.get(n, "absent") != want[n]]
    if diff:
        raise RemoteError(f"worker {_worker_name()} has other host packages than the planner's plan: "
                          + "; ".join(diff[:5]))


def _materialise(cache, store: Store, spec: dict, what: str) -> Entry:
    e = store.lookup(spec["key"])
    if e is None:
        hit = cache.lookup(spec["key"])
        if not hit.ok:
            raise RemoteError(f"{what} ({spec['key']}) is not usable from the cache: {hit.line()}")
        e = cache.fetch(hit, store)
    if e.digest != spec["digest"]:
        raise RemoteError(f"{what} ({spec['key']}) has digest {e.digest}, expected {spec['digest']}")
    return e


def _publish(cache, store: Store, bkey: str, entry: Entry, preimage: dict, input_key: str) -> str:
    """Push a built output; returns the digest of the entry the cache holds under `bkey`.

    Never forced: a valid entry another build (another planner on this cluster) pushed between
    this task's lookup and now is kept, first writer wins (docs/scale-out.md), and its digest
    is the answer; this worker's store takes that entry too, so that what it later hands to
    dependants is what the cache and every planner hold."""
    if cache.push(bkey, entry, preimage, input_key) == "pushed":
        return entry.digest
    hit = cache.lookup(bkey)
    if not hit.ok:
        raise RemoteError(f"the cache's entry for {bkey} is not usable after the push: {hit.line()}")
    if hit.digest != entry.digest:
        with store.key_lock(bkey):
            mine = store.lookup(bkey)
            if mine is not None and mine.digest != hit.digest:
                store._drop(mine)
        cache.fetch(hit, store)
    return hit.digest


def remote_build(payload: dict) -> dict:
    """The Dask task: runs ON THE WORKER. Returns {build_key, digest, seconds, reused, worker}
    or {error: {...}} for a build that failed on its own (not retried)."""
    from . import __version__

    phases: dict[str, float] = {"started": time.time()}
    mark = [time.monotonic()]

    def phase(name: str) -> None:
        now = time.monotonic()
        phases[name] = round(now - mark[0], 4)
        mark[0] = now

    try:
        if payload.get("format") != PAYLOAD_FORMAT or payload.get("planner") != __version__:
            raise RemoteError(f"worker {_worker_name()} runs planner {__version__} (payload format "
                              f"{PAYLOAD_FORMAT}); the planner sent {payload.get('planner')} "
                              f"(format {payload.get('format')}): install the same planner on the workers")
        request = WorkRequest.from_json(payload["request"])
        node = request.node()
        if payload["sandboxed"]:
            from .sandbox import require_bwrap

            require_bwrap()
        _check_host(node)
        store, cache = _context(payload["cache"])
        cache.forget_unreachable()  # a retry of a task asks the cache again (one 5xx is no outage)
        bkey = request.build_key
        hit = cache.lookup(bkey)
        phase("setup")
        if hit.ok:  # built already (a retry after a push, or another planner)
            return {"build_key": bkey, "digest": hit.digest, "seconds": 0.0, "reused": True,
                    "worker": _worker_name(), "phases": phases}
        # Fetched in parallel: a node over many dependencies (an image, a wide join) would
        # otherwise pay one cache round trip after another on the critical path.
        from concurrent.futures import ThreadPoolExecutor

        wanted = [("input", n, s) for n, s in payload["inputs"].items()] + \
                 [("dependency", m, s) for m, s in payload["deps"].items()]
        with ThreadPoolExecutor(max_workers=16) as pool:
            got_entries = list(pool.map(lambda w: _materialise(cache, store, w[2], f"{w[0]} {w[1]}"), wanted))
        fetched = {(kind, name): e for (kind, name, _s), e in zip(wanted, got_entries)}
        inputs = {n: fetched[("input", n)] for n in payload["inputs"]}
        deps = {m: fetched[("dependency", m)] for m in payload["deps"]}
        phase("fetch")
        resolved = resolve(node, digests(deps))
        got = resolved.build_key
        if got != bkey:
            raise RemoteError(f"worker computed build key {got}, the planner {bkey}")
        req = BuildRequest(node=node, inputs=inputs, deps=deps, jobs=int(payload["jobs"]),
                           sandboxed=bool(payload["sandboxed"]))
        try:
            built = build(req, store, Running())
        except BuildError as e:
            return {"error": {"message": e.message, "log": e.log, "tail": e.tail, "worker": _worker_name()}}
        if cache.signer is None:
            raise RemoteError(f"worker {_worker_name()} has no signing key (set PLANNER_SIGNING_KEY)")
        phase("build")
        digest = _publish(cache, store, bkey, built.entry, resolved.preimage.to_json(), node.key)
        phase("push")
        phases["ended"] = time.time()
        return {"build_key": bkey, "digest": digest, "seconds": built.seconds,
                "reused": built.reused, "worker": _worker_name(), "phases": phases}
    except RemoteError:
        raise
    except PlannerError as e:
        raise RemoteError(f"{type(e).__name__}: {e.line()}") from None
    except Exception as e:  # noqa: BLE001 - keep the traceback text; exception types may not unpickle
        raise RemoteError(f"{type(e).__name__}: {e}") from None
