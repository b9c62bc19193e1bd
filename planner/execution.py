"""Executing a realise's decision: each needed node substituted from a binary cache, rebuilt
for --check, or built on the executor, from the scheduler's threads; per-node outcomes typed
(`planner.runs.NodeResult`: cutoff, cache miss) as they happen."""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from .errors import BuildError, InputError, PlannerError, bounded
from .runs import CheckResult, MissNote, NodeResult

# Cache misses where a cache had the entry and it was refused (not merely absent or unreachable).
_REFUSED = frozenset({"bad-entry", "bad-signature", "untrusted", "unsigned"})


class Execution:
    """The work of `execute`: one node at a time, from the scheduler's threads."""

    def __init__(self, run) -> None:
        from .build import Running
        from .lock import declarations
        from .resolve import Resolver

        self.run = run
        self.d = run.decision
        self.store = run.store
        self.plan = self.d.planned.plan
        rs = self.d.planned.rs
        self.resolver = Resolver(rs, run.store, log=lambda s: run.emit("log", s), mirrors=list(run.options.mirrors))
        self.decls = declarations(rs)
        self.running = Running()
        self.entries: dict[str, Any] = dict(self.d.validity.valid)
        self.nondeterministic: dict[str, str] = {}
        self.checks: list[CheckResult] = []
        self.used_inputs: set[str] = set()
        self.done: dict[str, NodeResult] = {}  # node id -> what happened to it
        self.corrupted: set[str] = set()  # --check: entries whose bytes on disk differ from their record
        self.attempted: dict[str, str] = {}  # node id -> the build key it was built under (its log's name)
        # Leave a remote build's output in the cache unless it is a root, or something has to
        # read it here: a --check rebuild, or a cache to copy it to that its worker did not use.
        exec_cache = str(getattr(getattr(run.executor, "cache", None), "ref", ""))
        keep_remote = (run.executor.remote and run.options.download == "toplevel" and not run.options.check
                       and all(str(c.ref) == exec_cache for c in run.pushes))
        self.fetch_back = set(self.d.validity.roots) if keep_remote else None

    def jobs(self) -> list:
        from .schedule import Job

        local = self.run.options.executor is None
        return [Job(id=nid, deps=tuple(self.plan.nodes[nid].deps.values()), priority=self.d.priority[nid],
                    cores=self._cores(nid) if local else 1, memory=self.plan.nodes[nid].memory if local else 0)
                for nid in self.d.validity.todo()]

    def _cores(self, nid: str) -> int:
        return max(1, min(self.plan.nodes[nid].cores, self.run.jobs))

    def on_done(self, nid: str, exc: Optional[BaseException]) -> None:
        label = self.plan.nodes[nid].label()
        if exc is None:
            r = self.done[nid]
            self.run.emit("done", {"node": label, "status": r.action, "seconds": r.seconds})
        else:
            self.run.emit("failed", {"node": label, "error": exc.message if isinstance(exc, PlannerError)
                                     else f"{type(exc).__name__}: {exc}"})

    def inputs_of(self, nid: str) -> dict:
        from .resolve import input_failure

        lock = self.d.planned.lock
        got = {}
        for name, ref in self.plan.nodes[nid].inputs.items():
            decl = self.decls[ref.decl]
            try:
                got[name] = self.resolver.materialise(decl, lock.inputs[ref.decl], ref.platform)
            except PlannerError as exc:
                raise input_failure(decl, ref.filename, self.plan.nodes[nid].label(), exc) from None
        self.used_inputs.update(str(e.path) for e in got.values())
        return got

    def push(self, node, resolved, entry) -> None:
        from .cache import CacheError

        for c in self.run.pushes:
            if getattr(entry, "path", None) is None:
                continue  # a RemoteEntry: its worker pushed it to this very cache
            try:
                c.push(resolved.build_key, entry, resolved.preimage.to_json(), node.key)
            except CacheError as exc:
                self.run.emit("log", f"warning: could not push {node.label()} to {c.ref}: {exc.line()}")

    def substitute(self, node, resolved) -> tuple[Optional[tuple[Any, str]], Optional[MissNote]]:
        """(entry, why) from a signed substituter entry, or (None, the caches' miss if asked)."""
        from .cache import CacheError, classify_miss, lookup_any
        from .cache.ref import CacheUnreachable
        from .cache.results import CacheMiss
        from .derivation import record

        if not self.run.subs or self.run.options.check or self.store.lookup(resolved.build_key) is not None:
            return None, None
        caches = list(self.run.subs)
        misses: list = []
        while caches:
            found, tried = lookup_any(caches, resolved.build_key, preimage=resolved.preimage.to_json())
            misses += tried
            if not found:
                break
            cache, hit = found
            try:
                entry = cache.fetch(hit, self.store)
            except CacheError as exc:
                # Signed, but its bytes are not what it says (a corrupt or replaced blob): a
                # miss like a bad signature, never a failed node; the next cache, then a build.
                # A cache that stopped answering mid-fetch is `unreachable`, not a bad entry.
                why = "unreachable" if isinstance(exc, CacheUnreachable) else "bad-entry"
                misses.append(CacheMiss(str(cache.ref), resolved.build_key, why, exc.line()))
                caches = caches[caches.index(cache) + 1:]
                continue
            record(self.store, node, resolved, entry.digest)
            return (entry, f"substituted from {cache.ref} (signed by {hit.signer})"), None
        miss = classify_miss(misses, built_before=self.store.realisation(node.key) is not None)
        return None, MissNote(miss.category, miss.detail)

    def _result(self, nid: str, action: str, reason: str, entry, build_key: str, seconds: float = 0.0,
                **extra: Any) -> NodeResult:
        node = self.plan.nodes[nid]
        if entry.path is None:
            reason += f" (output left in {entry.cache})"
        return NodeResult(nid, node.name, node.variant.label(), node.key, action, reason, build_key, entry.digest,
                          None if entry.path is None else str(entry.path), seconds, self.d.previous.get(nid),
                          self.nondeterministic.get(nid), **extra)

    def work_and_keep(self, nid: str) -> None:
        entry, result = self.work(nid)
        self.entries[nid] = entry
        self.done[nid] = result

    def work(self, nid: str) -> tuple[Any, NodeResult]:
        from .derivation import BuildRequest, digests, resolve

        node = self.plan.nodes[nid]
        deps = {m: self.entries[d] for m, d in node.deps.items()}
        self.run.emit("start", node.label())
        resolved = resolve(node, digests(deps))
        got, miss = self.substitute(node, resolved)
        if got is not None:
            entry, why = got
            self.push(node, resolved, entry)
            return entry, self._result(nid, "substituted", why, entry, resolved.build_key)
        if miss is not None and miss.category in _REFUSED:
            # As Nix warns of a substitute it ignores: bytes were there and were not used.
            self.run.emit("log", f"warning: {node.label()}: not substituted ({miss.category}: {miss.detail}); "
                                 "building it")
        req = BuildRequest(node=node, inputs=self.inputs_of(nid), deps=deps, jobs=self._cores(nid),
                           sandboxed=self.run.options.sandbox)
        known = self.d.validity.known.get(nid)
        if self.run.options.check and known is not None and resolved.build_key == known.build_key:
            checked = self.check(nid, req, known.build_key)
            if checked is not None:
                return checked
        bad = sorted(d for d in node.deps.values() if d in self.corrupted)
        if bad:  # (--check found its bytes differ from their record: built on, the output would lie)
            from .errors import BuildError

            raise BuildError(node.label(), f"its dependency {bad[0]} is corrupted in the store (its bytes differ "
                                           "from their record): `planner store verify --repair`, then realise again")
        reason = self.d.reason_for(self.store, nid)  # before building: the build records a realisation
        self.attempted[nid] = resolved.build_key
        if not self.run.executor.remote:
            self.run.emit("logfile", {"node": node.label(), "path": str(self.store.root / "logs" / f"{resolved.build_key}.log")})
        built = self.run.executor.build(req, self.store, self.running, priority=self.d.priority[nid],
                                        download=self.fetch_back is None or nid in self.fetch_back)
        self.push(node, resolved, built.entry)
        if built.reused:
            cutoff = known is not None or bool(self.d.previous.get(nid))
            why = "early cutoff: dependencies rebuilt to identical outputs" if cutoff else "built by another process"
            return built.entry, self._result(nid, "reused", why, built.entry, built.build_key, cutoff=cutoff)
        if built.previous_digest is not None and built.previous_digest != built.entry.digest:
            self.nondeterministic[nid] = built.previous_digest
        note = f"; cache miss: {miss.category}: {miss.detail}" if miss is not None else ""
        return built.entry, self._result(nid, "built", reason + note, built.entry, built.build_key, built.seconds,
                                         miss=miss)

    def check(self, nid: str, req, build_key: str) -> Optional[tuple[Any, NodeResult]]:
        """--check: build again and compare with the stored output (and the bytes on disk with
        the digest recorded when the entry was made)."""
        from .build import differing_files, rebuild_for_check
        from .hashing import tree_digest
        from .store import remove_tree

        stored = self.store.lookup(build_key)
        if stored is None:
            return None
        bad_deps = sorted(d for d in self.plan.nodes[nid].deps.values() if d in self.corrupted)
        if bad_deps:
            # Built from corrupted bytes, a difference here would blame the wrong node.
            self.checks.append(CheckResult(nid, False, [f"(not compared: its dependency {bad_deps[0]} is "
                                                        f"corrupted in the store)"]))
            return stored, self._result(nid, "checked", "not compared", stored, build_key)
        on_disk = tree_digest(stored.path)
        started = time.monotonic()
        digest, out, bdir = rebuild_for_check(req, self.store, self.running)
        seconds = time.monotonic() - started
        try:
            ok = digest == stored.digest == on_disk
            kept = None
            diff = [] if ok else differing_files(stored.path, out)
            if not ok and not diff:
                diff = ["(metadata)"]
            if on_disk != stored.digest:
                self.corrupted.add(nid)
                diff = [f"CORRUPTED in the store (hashes to {on_disk}, recorded {stored.digest}): "
                        + ", ".join(diff[:10])]
            elif not ok:
                # Kept beside the store, as Nix keeps a `.check` output: what differs can only be
                # found by comparing the two (diffoscope), and the rebuild may have taken hours.
                kept = self.store.root / "checks" / f"{build_key}-{self.plan.nodes[nid].name}"
                kept.parent.mkdir(exist_ok=True)
                if kept.exists() or kept.is_symlink():
                    remove_tree(kept)
                os.rename(out, kept)
        finally:
            remove_tree(bdir)
        self.checks.append(CheckResult(nid, ok, diff, None if kept is None else str(kept)))
        return stored, self._result(nid, "checked", "rebuilt and compared", stored, build_key, seconds)

    def result_of(self, nid: str, outcome) -> NodeResult:
        settled = self.d.settled(nid)
        if settled is not None:
            return settled
        if nid in self.done:
            return self.done[nid]
        node = self.plan.nodes[nid]
        if nid in outcome.failed:
            exc = outcome.failed[nid]
            msg = exc.line() if isinstance(exc, PlannerError) else bounded(f"{type(exc).__name__}: {exc}")
            return NodeResult(nid, node.name, node.variant.label(), node.key, "failed", msg,
                              self.attempted.get(nid), previous_key=self.d.previous.get(nid))
        return NodeResult(nid, node.name, node.variant.label(), node.key, "skipped",
                          "a dependency failed" if outcome.failed else "interrupted",
                          previous_key=self.d.previous.get(nid))

    def failures(self, outcome) -> list[str]:
        out = []
        for nid, exc in outcome.failed.items():
            if isinstance(exc, InputError):  # not a build failure: the CLI prints it as an error
                out.append(f"error: {exc.line()}")
            elif isinstance(exc, BuildError):
                out.append(exc.line() + (f"\n  log: {exc.log}\n" + "\n".join("  | " + l for l in exc.tail.splitlines()[-10:])
                                         if exc.log else ""))
            elif isinstance(exc, PlannerError):
                out.append(exc.line())
            else:
                out.append(bounded(f"{self.plan.nodes[nid].label()}: {type(exc).__name__}: {exc}"))
        return out
