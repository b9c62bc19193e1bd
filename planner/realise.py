"""`planner realise`: plan, fetch what is missing, build in the sandbox, record the run.

Callable from Python: `realise(project_root, set_name, store, RealiseOptions(...))`.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import attrs

from .errors import BuildError, GraphError, LockError, PlannerError

from .host import detect_host
from .noop import try_noop, write_plan_cache


@attrs.frozen
class RealiseOptions:
    jobs: int = 0  # 0: the number of cores
    dry_run: bool = False
    check: bool = False
    keep_going: bool = False
    sandbox: bool = True
    out_link: Optional[Path] = None
    target: Optional[str] = None
    use_plan_cache: bool = True
    mirrors: tuple[str, ...] = ()
    executor: Optional[str] = None  # None: the local pool; dask://HOST:PORT
    substituters: tuple[str, ...] = ()  # oci://HOST/REPO binary caches to read
    cache_to: tuple[str, ...] = ()  # binary caches to write (needs signing_key)
    signing_key: Optional[Path] = None
    trusted_keys: tuple[str, ...] = ()
    platform: Optional[str] = None  # only the targets for this platform (and platform-free ones)
    # What a remote executor's outputs come back as: "toplevel" fetches the targets and leaves
    # intermediate outputs in the binary cache (Bazel's --remote_download_toplevel); "all"
    # fetches every output into the local store.
    download: str = "toplevel"
    connect_timeout: float = 30.0  # seconds to wait for a remote executor's scheduler


@attrs.frozen
class NodeResult:
    id: str
    name: str
    variant: str
    key: str
    action: str  # built | reused | substituted | would-build | failed | skipped
    reason: str
    build_key: Optional[str] = None
    digest: Optional[str] = None
    path: Optional[str] = None
    seconds: float = 0.0
    previous_key: Optional[str] = None
    previous_digest: Optional[str] = None  # set when the same build key once gave other bytes


@attrs.frozen
class CheckResult:
    node: str
    ok: bool
    differing: list[str] = attrs.field(factory=list)


RESULT_SCHEMA = 1  # `realise --json`; documented on RealiseResult


@attrs.frozen
class RealiseResult:
    """What a realise did. `realise --json` (version `RESULT_SCHEMA`; fields are only ever
    added within a version):

        schema     int, this version
        set        str
        target     node id, or [node id] when the set has several targets
        targets    [node id]
        output     str | null: the target's store path (null with several targets)
        digest     str | null: the image index digest when the target is an OCI image
        run        int | null: the run record's id (`planner why --run N`); null for a no-op
        nodes      [{id, name, variant, key, build_key, action, reason, digest, path, seconds}]
            action   built | reused | substituted | checked | failed | skipped | would-build
            reason   why: "never built", "inputs changed", "valid in the store", "early cutoff: …",
                     for a failed node the error line
        failures   [str]: one line per failed node (with its log's path and last lines)
        checks     [{node, ok, differing}]: `--check` comparisons
        steps, blocked   only with --dry-run: the fetches and builds in order, and why it would stop
    """

    set: str
    targets: list[str]
    output: Optional[str]
    digest: Optional[str]
    nodes: list[NodeResult]
    run_id: Optional[int] = None
    failures: list[str] = attrs.field(factory=list)
    checks: list[CheckResult] = attrs.field(factory=list)
    noop: bool = False
    steps: list[str] = attrs.field(factory=list)  # --dry-run: fetches and builds, in order
    blocked: Optional[str] = None  # --dry-run: why it would stop
    warnings: list[str] = attrs.field(factory=list)  # e.g. unlocked inputs this realise does not need

    def to_json(self) -> dict:
        return {
            "schema": RESULT_SCHEMA,
            "set": self.set,
            "target": self.targets[0] if len(self.targets) == 1 else self.targets,
            "targets": self.targets,
            "output": self.output,
            "digest": self.digest,
            "run": self.run_id,
            "nodes": [
                {"id": n.id, "name": n.name, "variant": n.variant, "key": n.key, "build_key": n.build_key,
                 "action": n.action, "reason": n.reason, "digest": n.digest, "path": n.path,
                 "seconds": round(n.seconds, 3)}
                for n in self.nodes
            ],
            "failures": self.failures,
            "checks": [attrs.asdict(c) for c in self.checks],
            **({"steps": self.steps, "blocked": self.blocked} if self.steps or self.blocked else {}),
            **({"warnings": self.warnings} if self.warnings else {}),
        }


def git_state(root: Path) -> Optional[dict]:
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


# -- plan cache (the no-op fast path) --------------------------------------------------------

def _watched_files(rs, lock_path: Path) -> list[Path]:
    # Folders too (their own stat changes when an entry is added, removed or renamed): a new
    # recipe or a new file in a path source changes the plan without touching any listed file.
    files = [rs.folder, *sorted(rs.folder.rglob("*"))]
    files.append(lock_path)
    for r in rs.recipes.values():
        for p in r.patches:
            if p.file:
                files.append(rs.root / p.file)
        for s in r.all_sources().values():
            if s.kind == "path" and s.path:
                base = rs.root / s.path
                files.extend([base, *sorted(base.rglob("*"))] if base.is_dir() else [base])
    pkg = Path(__file__).resolve().parent
    files.extend(sorted(pkg.rglob("*.py")))
    files.append(Path("/var/lib/dpkg/status"))
    return [f for f in dict.fromkeys(files)]


def _write_plan_cache(rs, lock_path: Path, store_root: Path, target: Optional[str], sandboxed: bool,
                      result: RealiseResult) -> None:
    write_plan_cache(store_root, rs.root, rs.name, target, sandboxed, _watched_files(rs, lock_path),
                     [{"id": n.id, "name": n.name, "variant": n.variant, "key": n.key, "build_key": n.build_key,
                       "digest": n.digest, "path": n.path} for n in result.nodes],
                     result.targets, result.output, result.digest)


# -- realise ---------------------------------------------------------------------------------

def _previous_keys(store, set_name: str) -> dict[str, str]:
    for _id, rec in store.runs(limit=20):
        if rec.get("set") == set_name and rec.get("nodes"):
            return {n["id"]: n["key"] for n in rec["nodes"]}
    return {}


def image_digest(output: Path) -> Optional[str]:
    """The digest of the image index a layout's top-level index.json points at, if any."""
    import json

    index = output / "index.json"
    if not index.is_file():
        return None
    data = json.loads(index.read_text())
    for m in data.get("manifests", []):
        if m.get("mediaType") == "application/vnd.oci.image.index.v1+json":
            return m["digest"]
    return None


def realise(root: Path, set_name: str, store_root: Path, options: RealiseOptions = RealiseOptions(),
            *, progress: Optional[Callable[[str, object], None]] = None, executor=None,
            substituters: Sequence = (), cache_to: Sequence = ()) -> RealiseResult:
    """Realise the set's target (every platform and variant) into the store at `store_root`.

    `executor`, `substituters` and `cache_to` take ready objects (an `Executor`, `BinaryCache`s)
    for callers that hold them already, such as a Dask client of their own; they are used
    besides what `options` names by URL, and the caller keeps ownership of them."""
    if options.download not in ("toplevel", "all"):
        raise PlannerError(f"download must be toplevel or all, not {options.download!r}")
    root = Path(root).resolve()
    store_root = Path(store_root).absolute()
    emit = progress or (lambda kind, data: None)
    if (options.use_plan_cache and not options.dry_run and not options.check and store_root.exists()
            and not options.cache_to and not options.executor and executor is None and not cache_to
            and options.platform is None):
        cache = try_noop(root, set_name, store_root, options.target, options.sandbox)
        if cache is not None:
            nodes = [NodeResult(id=n["id"], name=n["name"], variant=n["variant"], key=n["key"], action="reused",
                                reason="valid in the store", build_key=n["build_key"], digest=n["digest"],
                                path=n["path"]) for n in cache["nodes"]]
            result = RealiseResult(set=set_name, targets=cache["targets"], output=cache["output"],
                                   digest=cache["digest"], nodes=nodes, noop=True)
            if options.out_link:
                from .store import Store

                st = Store(store_root)  # a new out-link is a gc root even when nothing was built
                try:
                    _out_link(options.out_link, Path(cache["output"]), st)
                finally:
                    st.close()
            return result

    from . import lock as lockmod
    from .build import BuildRequest, Running, build_key, differing_files, rebuild_for_check
    from .graph import critical_path, plan as make_plan, unbuildable_here
    from .recipes import load_set
    from .resolve import Resolver
    from .schedule import Job, run_dag
    from .store import Store, remove_tree

    rs = load_set(root, set_name)
    lock = lockmod.read(rs.lockfile)
    problems = lockmod.check(rs, lock, deep=False)
    # Unlocked inputs matter only where this realise builds: checked below, once the plan says
    # which nodes that is (per target, per platform).
    unlocked_ids = {id_ for id_, li in lock.inputs.items() if li.status != "locked"}
    problems = [p for p in problems if p.id not in unlocked_ids]
    if problems:
        more = f" (and {len(problems) - 1} more; see `planner lock --check`)" if len(problems) > 1 else ""
        raise LockError(f"{problems[0].line()}{more}; `planner lock {set_name}` re-pins it",
                        where=str(rs.lockfile.relative_to(root)))
    if options.sandbox:
        from .sandbox import require_bwrap

        require_bwrap()
    host = detect_host(options.sandbox)
    plan = make_plan(rs, lock, host, target=options.target)
    store = Store(store_root)
    # Hold the gc lock (shared) from deciding what is valid until the run is recorded and
    # rooted: a concurrent `store gc` then never deletes what this realise reuses or built.
    with store.gc_lock(exclusive=False):
        resolver = Resolver(rs, store, log=lambda s: emit("log", s), mirrors=list(options.mirrors))
        decls = lockmod.declarations(rs)
        durations = store.durations(set_name)
        priority = critical_path(plan, durations)
        previous = _previous_keys(store, set_name)
        roots = _roots_for(plan, rs, options.platform)
        targets = [t for t in plan.targets if t in roots]
        closure = plan.closure(roots)

        # What is already valid: a realisation for the input key whose entry is present.
        by_key = store.realisations([plan.nodes[n].key for n in closure])
        known = {n: by_key[plan.nodes[n].key] for n in closure if plan.nodes[n].key in by_key}
        valid: dict[str, object] = {}
        for nid in closure:
            r = known.get(nid)
            if r is not None:
                e = store.lookup(r.build_key)
                if e is not None and not options.check:
                    valid[nid] = e
        needed = plan.needed(roots, valid)
        warnings = _unlocked_outside(plan, lock, needed, unlocked_ids)
        for w in warnings:
            emit("log", f"warning: {w}")
        if not options.dry_run:
            _refuse_unlocked(plan, lock, needed, set_name, rs)
            _refuse_edited_pins(plan, lock, closure, store, rs)
        results: dict[str, NodeResult] = {}

        def reason_for(nid: str) -> str:
            node = plan.nodes[nid]
            prev = previous.get(nid)
            if store.realisation(node.key) is not None:
                return "output missing from the store (deleted or collected)"
            if prev is None:
                return "never built"
            if prev != node.key:
                return "inputs changed"
            return "not in the store"

        todo = [nid for nid in closure if nid in needed]
        jobs_n = options.jobs or os.cpu_count() or 1
        own_executor = executor is None
        made, subs, pushes = _scale_out(options, jobs_n, have_executor=not own_executor)
        executor = executor if executor is not None else made
        subs = [*subs, *substituters]
        pushes = [*pushes, *cache_to]

        def close_executor() -> None:
            if own_executor:
                executor.close()

        if not executor.remote and not options.dry_run:
            foreign = unbuildable_here(plan, todo, host.platform)
            if foreign:
                close_executor()
                n = foreign[0]
                raise GraphError(f"{n.label()}: {n.builder} builds only for the machine it runs on, and this is "
                                 f"{host.platform}, not {n.variant.platform}: realise with --platform {host.platform}, "
                                 f"or with an --executor that has a {n.variant.platform} worker",
                                 where=rs.get(n.recipe).file)

        # Leave a remote build's output in the cache unless it is a root, or something has to
        # read it here: a --check rebuild, or a cache to copy it to that its worker did not use.
        exec_cache = str(getattr(getattr(executor, "cache", None), "ref", ""))
        keep_remote = (executor.remote and options.download == "toplevel" and not options.check
                       and all(str(c.ref) == exec_cache for c in pushes))
        fetch_back = set(roots) if keep_remote else None
        if options.dry_run:
            from .resolve import fixed_key

            steps: list[str] = []
            blocked = None
            fetched: set[str] = set()
            for nid in todo:
                pn = plan.nodes[nid]
                stop = None
                for ref in pn.inputs.values():
                    li = lock.inputs[ref.decl]
                    if li.status != "locked":
                        stop = (f"stops before {nid}: input {ref.decl} is unlocked ({li.reason or 'not resolved'}); "
                                f"run `planner lock {set_name} --update {ref.decl}` where it can be reached")
                        break
                    if ref.decl in fetched or store.lookup(fixed_key(ref.tree, ref.unpacks)) is not None:
                        continue
                    fetched.add(ref.decl)
                    steps.append(f"fetch {ref.decl}" + (f" [{ref.platform}]" if ref.platform else "") + f"  ({li.origin})")
                if stop:
                    blocked = stop
                    break
                steps.append(f"build {nid}  (~{durations.get(nid, pn.estimate):.0f}s)")
            if blocked is None:
                problems_run = executor.check_runnable([plan.nodes[n] for n in todo])
                if problems_run:
                    blocked = "; ".join(problems_run)
            close_executor()
            nodes = []
            for nid in closure:
                node = plan.nodes[nid]
                if nid in valid:
                    e = valid[nid]
                    nodes.append(NodeResult(nid, node.name, node.variant.label(), node.key, "reused", "valid in the store",
                                            e.key, e.digest, str(e.path)))
                elif nid not in needed:
                    nodes.append(_unneeded(nid, node, known.get(nid)))
                else:
                    nodes.append(NodeResult(nid, node.name, node.variant.label(), node.key, "would-build",
                                            reason_for(nid), previous_key=previous.get(nid)))
            return RealiseResult(set=set_name, targets=targets, output=None, digest=None, nodes=nodes,
                                 steps=steps, blocked=blocked, warnings=warnings)

        from .executors import Unrunnable

        problems_run = executor.check_runnable([plan.nodes[n] for n in todo])
        if problems_run:
            close_executor()
            raise Unrunnable(problems_run)
        running = Running()
        entries: dict[str, object] = dict(valid)
        nondeterministic: dict[str, str] = {}
        store.put_preimages({plan.nodes[n].key: plan.nodes[n].preimage for n in closure})
        checks: list[CheckResult] = []

        used_inputs: set[str] = set()
        if not executor.remote:
            _prefetch_apt(resolver, store, plan, todo, decls, lock)

        def inputs_of(nid: str) -> dict:
            node = plan.nodes[nid]
            got = {name: resolver.materialise(decls[ref.decl], lock.inputs[ref.decl], ref.platform)
                   for name, ref in node.inputs.items()}
            used_inputs.update(str(e.path) for e in got.values())
            return got

        def push(node, bkey: str, entry, deps: dict) -> None:
            from .cache import CacheError
            from .graph import resolved_preimage

            for c in pushes:
                if getattr(entry, "path", None) is None:
                    continue  # a RemoteEntry: its worker pushed it to this very cache
                try:
                    c.push(bkey, entry, resolved_preimage(node, {node.deps[m]: e.digest for m, e in deps.items()}), node.key)
                except CacheError as exc:
                    emit("log", f"warning: could not push {node.label()} to {c.ref}: {exc.line()}")

        def substitute(node, deps: dict):
            """A signed entry from a substituter, or (None, why the caches missed)."""
            from .cache import classify_miss, lookup_any
            from .graph import resolved_preimage

            bkey = build_key(node, deps)
            if not subs or options.check or store.lookup(bkey) is not None:
                return None, ""
            pre = resolved_preimage(node, {node.deps[m]: e.digest for m, e in deps.items()})
            found, misses = lookup_any(subs, bkey, preimage=pre)
            if found:
                cache, hit = found
                entry = cache.fetch(hit, store)
                store.put_preimage(node.key, node.preimage)
                store.put_preimage(bkey, pre)
                store.realise(node.key, bkey, entry.digest)
                return (entry, bkey, f"substituted from {cache.ref} (signed by {hit.signer})"), ""
            miss = classify_miss(misses, built_before=store.realisation(node.key) is not None)
            return None, f"; cache miss: {miss.category}: {miss.detail}"

        attempted: dict[str, str] = {}  # node -> the build key it was built under (its log's name)
        corrupted: set[str] = set()  # --check: entries whose bytes on disk differ from their record

        def work(nid: str):
            node = plan.nodes[nid]
            deps = {m: entries[d] for m, d in node.deps.items()}
            emit("start", node.label())
            got, miss_note = substitute(node, deps)
            if got is not None:
                entry, bkey, why = got
                push(node, bkey, entry, deps)
                return entry, bkey, 0.0, "substituted", why
            cores = max(1, min(node.cores, jobs_n))
            req = BuildRequest(node=node, inputs=inputs_of(nid), deps=deps, jobs=cores, sandboxed=options.sandbox)
            if options.check and nid in known:
                stored = store.lookup(known[nid].build_key)
                if stored is not None and build_key(node, deps) == known[nid].build_key:
                    bad_deps = sorted(d for d in node.deps.values() if d in corrupted)
                    if bad_deps:
                        # Built from corrupted bytes, a difference here would blame the wrong node.
                        checks.append(CheckResult(nid, False, [f"(not compared: its dependency {bad_deps[0]} is "
                                                                f"corrupted in the store)"]))
                        return stored, known[nid].build_key, 0.0, "checked", "not compared"
                    from .hashing import tree_digest

                    # The bytes on disk, not the digest recorded when the entry was made.
                    on_disk = tree_digest(stored.path)
                    digest, out, bdir = rebuild_for_check(req, store, running)
                    try:
                        ok = digest == stored.digest == on_disk
                        diff = [] if ok else differing_files(stored.path, out)
                        if not ok and not diff:
                            diff = ["(metadata)"]
                        if on_disk != stored.digest:
                            corrupted.add(nid)
                            diff = [f"CORRUPTED in the store (hashes to {on_disk}, recorded {stored.digest}): "
                                    + ", ".join(diff[:10])]
                    finally:
                        remove_tree(bdir)
                    checks.append(CheckResult(nid, ok, diff))
                    return stored, known[nid].build_key, 0.0, "checked", "rebuilt and compared"
            reason = reason_for(nid)  # before building: the build records a realisation
            attempted[nid] = build_key(node, deps)
            if not executor.remote:
                emit("logfile", {"node": node.label(), "path": str(store.root / "logs" / f"{attempted[nid]}.log")})
            built = executor.build(req, store, running, priority=priority[nid],
                                   download=fetch_back is None or nid in fetch_back)
            push(node, built.build_key, built.entry, deps)
            if built.reused:
                why = "early cutoff: dependencies rebuilt to identical outputs" if nid in known or previous.get(nid) \
                    else "built by another process"
                return built.entry, built.build_key, 0.0, "reused", why
            if built.previous_digest is not None and built.previous_digest != built.entry.digest:
                nondeterministic[nid] = built.previous_digest
            return built.entry, built.build_key, built.seconds, "built", reason + miss_note

        node_results: dict[str, tuple] = {}

        def on_done(nid, exc):
            if exc is None:
                _e, _bkey, secs, action, _why = node_results[nid]
                emit("done", {"node": plan.nodes[nid].label(), "status": action, "seconds": secs})
            else:
                emit("failed", {"node": plan.nodes[nid].label(),
                                "error": exc.message if isinstance(exc, PlannerError) else f"{type(exc).__name__}: {exc}"})

        def work_and_keep(nid):
            res = work(nid)
            entries[nid] = res[0]
            node_results[nid] = res
            return res

        local = options.executor is None
        jobs = [Job(id=nid, deps=tuple(plan.nodes[nid].deps.values()), priority=priority[nid],
                    cores=max(1, min(plan.nodes[nid].cores, jobs_n)) if local else 1,
                    memory=plan.nodes[nid].memory if local else 0)
                for nid in todo]
        emit("plan", {"total": len(closure), "todo": len(todo),
                      "cached": [plan.nodes[n].label() for n in closure if n not in needed]})
        try:
            outcome = run_dag(jobs, work_and_keep, slots=executor.slots(), memory=executor.memory_budget(),
                              keep_going=options.keep_going, on_done=on_done, cancel=running.cancel)
        finally:
            close_executor()
            resolver.discard_prefetched()

        for nid in closure:
            node = plan.nodes[nid]
            if nid in valid:
                e = valid[nid]
                results[nid] = NodeResult(nid, node.name, node.variant.label(), node.key, "reused", "valid in the store",
                                          e.key, e.digest, str(e.path))
            elif nid not in needed:
                results[nid] = _unneeded(nid, node, known.get(nid))
            elif nid in node_results:
                e, bkey, secs, action, why = node_results[nid]
                if e.path is None:
                    why += f" (output left in {e.cache})"
                results[nid] = NodeResult(nid, node.name, node.variant.label(), node.key, action, why, bkey, e.digest,
                                          None if e.path is None else str(e.path), secs, previous.get(nid),
                                          nondeterministic.get(nid))
            elif nid in outcome.failed:
                exc = outcome.failed[nid]
                msg = exc.line() if isinstance(exc, PlannerError) else f"{type(exc).__name__}: {exc}"
                results[nid] = NodeResult(nid, node.name, node.variant.label(), node.key, "failed", msg,
                                          attempted.get(nid), previous_key=previous.get(nid))
            else:
                results[nid] = NodeResult(nid, node.name, node.variant.label(), node.key, "skipped",
                                          "a dependency failed" if outcome.failed else "interrupted",
                                          previous_key=previous.get(nid))

        failures = []
        for nid, exc in outcome.failed.items():
            if isinstance(exc, BuildError):
                failures.append(exc.line() + (f"\n  log: {exc.log}\n" + "\n".join("  | " + l for l in exc.tail.splitlines()[-10:]) if exc.log else ""))
            elif isinstance(exc, PlannerError):
                failures.append(exc.line())
            else:
                failures.append(f"{plan.nodes[nid].label()}: {type(exc).__name__}: {exc}")

        target_results = [results[t] for t in targets]
        output = target_results[0].path if len(target_results) == 1 else None
        digest = image_digest(Path(output)) if output else None
        record = {
            "set": set_name,
            "targets": targets,
            "output": output,
            "digest": digest,
            "started": time.time(),
            "lock": _lock_digest(rs.lockfile),
            "git": git_state(root),
            "sandbox": options.sandbox,
            "check": options.check,
            "executor": options.executor,
            "substituters": list(options.substituters),
            "nodes": [attrs.asdict(r) for r in results.values()],
            "deps": {nid: dict(sorted(plan.nodes[nid].deps.items())) for nid in closure},
            "checks": [attrs.asdict(c) for c in checks],
            "pins": _pins(lock),
            "root": str(root),
            "inputs": sorted(used_inputs | _closure_inputs(store, plan, closure)),
        }
        run_id = store.add_run(record)
        store.record_durations(set_name, {r.id: r.seconds for r in results.values() if r.action == "built"})
        result = RealiseResult(set=set_name, targets=targets, output=output, digest=digest,
                               nodes=list(results.values()), run_id=run_id, failures=failures, checks=checks,
                               warnings=warnings)
        if outcome.interrupted:
            raise KeyboardInterrupt
        if not failures and output:
            # One root per target (and platform): realising another target must not unroot this one.
            scope = "".join(f":{k}={v}" for k, v in (("target", options.target), ("platform", options.platform)) if v)
            store.set_root(f"set:{root}:{set_name}{scope}", Path(output))
            if options.out_link:
                _out_link(options.out_link, Path(output), store)
        store.close()
        if not failures and not options.check and options.platform is None:
            # After the index is closed: the cache records the index as this run left it.
            _write_plan_cache(rs, rs.lockfile, store_root, options.target, options.sandbox, result)
        return result


def _unlocked_outside(plan, lock, needed: set[str], unlocked_ids: set[str]) -> list[str]:
    """One warning line naming the unlocked inputs that nothing this realise builds uses."""
    used = {ref.decl for nid in needed for ref in plan.nodes[nid].inputs.values()}
    other = sorted(unlocked_ids - used)
    if not other:
        return []
    return [f"{len(other)} unlocked input{'s' if len(other) > 1 else ''} not needed by this realise: "
            + ", ".join(other)]


def _refuse_edited_pins(plan, lock, closure, store, rs) -> None:
    """A LockError naming the first pin whose tree the store holds as other bytes (a sha256,
    commit or digest edited, or a tree copied from another input), even where nothing is built."""
    from .resolve import pin_conflict

    seen: set[tuple[str, Optional[str]]] = set()
    for nid in sorted(closure):
        for ref in plan.nodes[nid].inputs.values():
            if not ref.locked or (ref.decl, ref.platform) in seen or ref.decl not in lock.inputs:
                continue
            seen.add((ref.decl, ref.platform))
            problem = pin_conflict(store, lock.inputs[ref.decl].pin(ref.platform), ref.unpacks)
            if problem:
                raise LockError(f"{ref.decl}: {problem}: was the pin edited by hand? run `planner lock --update "
                                f"{ref.decl}`", where=str(rs.lockfile.relative_to(rs.root)))


def _refuse_unlocked(plan, lock, needed: set[str], set_name: str, rs) -> None:
    """A LockError naming the first unlocked input that a node this realise must build uses."""
    bad = sorted({ref.decl for nid in needed for ref in plan.nodes[nid].inputs.values() if not ref.locked})
    if not bad:
        return
    li = lock.inputs[bad[0]]
    users = sorted(nid for nid in needed if any(r.decl == bad[0] for r in plan.nodes[nid].inputs.values()))
    more = f" (and {len(bad) - 1} more: {', '.join(bad[1:4])}{', ...' if len(bad) > 4 else ''})" if len(bad) > 1 else ""
    raise LockError(f"{bad[0]}: unlocked: {li.reason or 'not resolved'}; needed by {users[0]}{more}: "
                    f"run `planner lock {set_name} --update {bad[0]}` where it can be reached",
                    where=str(rs.lockfile.relative_to(rs.root)))


def _prefetch_apt(resolver, store, plan, todo, decls, lock) -> None:
    """The missing .deb inputs of what will be built that have no pinned URL, in one apt call
    per architecture."""
    from .resolve import fixed_key

    wanted, seen = [], set()
    for nid in todo:
        for ref in plan.nodes[nid].inputs.values():
            decl, li = decls[ref.decl], lock.inputs.get(ref.decl)
            if decl.kind != "apt" or li is None or li.status != "locked" or (ref.decl, ref.platform) in seen:
                continue
            seen.add((ref.decl, ref.platform))
            pin = li.pin(ref.platform)
            if pin.url:
                continue  # fetched by URL and hash: no apt at all (another distribution's host too)
            if pin.tree and store.lookup(fixed_key(pin.tree, decl.unpacks)) is None:
                wanted.append((decl, ref.platform, pin.version))
    resolver.prefetch_apt(wanted)


def _roots_for(plan, rs, platform: Optional[str]) -> list[str]:
    """The plan's roots, or those for one platform (and those without a platform axis)."""
    if platform is None:
        return list(plan.roots)
    if platform not in rs.config.platforms:
        raise PlannerError(f"platform {platform} is not one of the set's platforms "
                           f"({', '.join(rs.config.platforms)})", where=str(rs.folder / "set.toml"))
    return [r for r in plan.roots if plan.nodes[r].variant.platform in (None, platform)]


def _unneeded(nid: str, node, realisation) -> NodeResult:
    """A node below a valid output: nothing was built or fetched for it."""
    return NodeResult(nid, node.name, node.variant.label(), node.key, "reused",
                      "not needed: what depends on it is valid",
                      realisation.build_key if realisation else None, realisation.digest if realisation else None)


def _closure_inputs(store, plan, closure: list[str]) -> set[str]:
    """Store paths of the fetched inputs of every node in the closure (gc keeps them)."""
    from .resolve import fixed_key

    out = set()
    for nid in closure:
        for ref in plan.nodes[nid].inputs.values():
            if ref.locked:
                e = store.lookup(fixed_key(ref.tree, ref.unpacks))
                if e is not None:
                    out.add(str(e.path))
    return out


def _scale_out(options: RealiseOptions, jobs: int, *, have_executor: bool = False):
    """The executor (None where the caller brings one), and the binary caches to read from and
    write to, from the options' URLs."""
    from .executors import executor_for

    if not (options.executor or options.substituters or options.cache_to):
        return None if have_executor else executor_for(None, jobs=jobs, sandboxed=options.sandbox), [], []
    from .cache import BinaryCache, Signer, TrustedKeys

    if options.cache_to and options.signing_key is None:
        raise PlannerError("--cache-to needs --signing-key: cache entries are signed")
    trusted = TrustedKeys(options.trusted_keys)
    signer = Signer.from_file(Path(options.signing_key)) if options.signing_key else None
    subs = [BinaryCache(u, trusted=trusted) for u in options.substituters]
    pushes = [BinaryCache(u, trusted=trusted, signer=signer) for u in options.cache_to]
    if have_executor:
        return None, subs, pushes
    executor = executor_for(options.executor, cache=pushes[0] if pushes else None, jobs=jobs,
                            sandboxed=options.sandbox, connect_timeout=options.connect_timeout)
    return executor, subs, pushes


def _pins(lock) -> dict:
    """What each lock entry pinned, so `why` can tell a re-packed upstream from a real change."""
    return {id_: {plat: [pin.sha256, pin.tree] for plat, pin in sorted(li.pins.items())}
            for id_, li in sorted(lock.inputs.items())}


def _lock_digest(path: Path) -> Optional[str]:
    from .hashing import file_digest

    return file_digest(path) if path.exists() else None


def _out_link(link: Path, target: Path, store) -> None:
    link = Path(link).absolute()
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    if store is not None:
        store.set_root(f"link:{link}", link)
