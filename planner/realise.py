"""`planner realise`: plan, fetch what is missing, build in the sandbox, record the run.

Callable from Python: `realise(project_root, set_name, store, RealiseOptions(...))`.

Three steps: `decide` what is valid and what is needed (the question `why --dry-run` and `plan`
ask too, through `planner.planning`), then either list a `dry_run` or `execute`: substitute or
build each needed node on the executor, record the run, write the plan cache. Whether the no-op
fast path applies is decided by `planner.plancache.answer_noop`, as on the command line.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import attrs

from .errors import LockError, PlannerError
from .plancache import answer_noop, out_link, write_plan_cache
from .runs import RESULT_SCHEMA, NodeResult, RealiseResult, RunRecord, lock_pins, previous_keys, runs_of  # noqa: F401

Emit = Callable[[str, object], None]


@attrs.frozen
class RealiseOptions:
    jobs: int = 0  # 0: the number of cores
    dry_run: bool = False
    check: bool = False
    # With check: rebuild the targets alone, as `nix-build --check` does (their inputs are
    # taken from the store); else the whole closure.
    check_targets_only: bool = False
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
    variant: Optional[str] = None  # only the targets for this CUDA variant (and those without one)
    # What a remote executor's outputs come back as: "toplevel" fetches the targets and leaves
    # intermediate outputs in the binary cache (Bazel's --remote_download_toplevel); "all"
    # fetches every output into the local store.
    download: str = "toplevel"
    connect_timeout: float = 30.0  # seconds to wait for a remote executor's scheduler


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



def realise(root: Path, set_name: str, store_root: Path, options: RealiseOptions = RealiseOptions(),
            *, progress: Optional[Emit] = None, executor=None,
            substituters: Sequence = (), cache_to: Sequence = ()) -> RealiseResult:
    """Realise the set's target (every platform and variant) into the store at `store_root`.

    `executor`, `substituters` and `cache_to` take ready objects (an `Executor`, `BinaryCache`s)
    for callers that hold them already, such as a Dask client of their own; they are used
    besides what `options` names by URL, and the caller keeps ownership of them."""
    if options.download not in ("toplevel", "all"):
        raise PlannerError(f"download must be toplevel or all, not {options.download!r}")
    if options.jobs < 0:
        raise PlannerError(f"jobs must be 0 (the number of cores) or more, not {options.jobs}")
    root = Path(root).resolve()
    store_root = Path(store_root).absolute()
    emit: Emit = progress or (lambda kind, data: None)
    if store_root.exists():
        cache = answer_noop(root, set_name, store_root, target=options.target, sandboxed=options.sandbox,
                            dry_run=options.dry_run, check=options.check, executor=options.executor or executor,
                            cache_to=options.cache_to or tuple(cache_to), platform=options.platform,
                            variant=options.variant, use_plan_cache=options.use_plan_cache)
        if cache is not None:
            return _noop(cache, set_name, store_root, options)

    from . import planning
    from .store import Store

    started_ns = time.time_ns()  # a file changed after this is not cached as read (plancache.signatures)
    planned = planning.load(root, set_name, sandboxed=options.sandbox, target=options.target, check_lock=True,
                            platform=options.platform, variant=options.variant)
    if options.sandbox:
        from .sandbox import require_bwrap

        require_bwrap()
    if options.dry_run:  # no store yet is an empty store: a dry run makes none
        with Store.or_empty(store_root) as store:
            return _decide_and_run(planned, store, options, executor, substituters, cache_to, emit, started_ns)
    if store_root.is_dir() and not os.access(store_root, os.W_OK):
        with Store.or_empty(store_root) as store:
            return _valid_in_a_store_not_ours(planned, store, options)
    return _decide_and_run(planned, Store(store_root), options, executor, substituters, cache_to, emit, started_ns)


def _valid_in_a_store_not_ours(planned, store, options: RealiseOptions) -> RealiseResult:
    """A realise in a store this user can read, not write: the answer, recording nothing, when all
    it needs is valid there (not only while the owner's plan cache is current); else a refusal."""
    from .errors import StoreError
    from .store import READ_ONLY_HINT

    with store.gc_lock(exclusive=False):
        d = decide(planned, store, options)
    todo = sorted(d.validity.needed)
    if todo or options.check or options.out_link:
        why = (f"{len(todo)} node{'s' if len(todo) != 1 else ''} to build ({todo[0]}{', ...' if len(todo) > 1 else ''})"
               if todo else "--check rebuilds" if options.check else "--out-link adds a gc root to it")
        raise StoreError(f"the store is not writable by this user (uid {os.geteuid()}) and this realise writes "
                         f"to it ({why}); {READ_ONLY_HINT}", where=str(store.root))
    results = [d.settled(nid) for nid in d.validity.closure]
    targets = d.validity.targets
    output = d.validity.valid[targets[0]].path if len(targets) == 1 else None
    builder = planned.plan.nodes[targets[0]].builder
    return RealiseResult(set=planned.set_name, targets=targets, output=None if output is None else str(output),
                         digest=_image_digest(output, builder),
                         nodes=[r for r in results if r is not None], noop=True, warnings=d.warnings)


def _decide_and_run(planned, store, options: RealiseOptions, executor, substituters, cache_to, emit: Emit,
                    started_ns: int) -> RealiseResult:
    from . import planning

    # Hold the gc lock (shared) from deciding what is valid until the run is recorded and
    # rooted: a concurrent `store gc` then never deletes what this realise reuses or built.
    with store.gc_lock(exclusive=False):
        decision = decide(planned, store, options)
        for w in decision.warnings:
            emit("log", f"warning: {w}")
        if not options.dry_run:
            planning.refuse_unlocked(planned, decision.validity.needed)
            _refuse_edited_pins(planned.plan, planned.lock, decision.validity.closure, store, planned.rs)
        jobs = options.jobs or os.cpu_count() or 1
        made, subs, pushes = _scale_out(options, jobs, have_executor=executor is not None)
        run = _Run(decision, store, options, executor if executor is not None else made,
                   own_executor=executor is None, subs=[*subs, *substituters], pushes=[*pushes, *cache_to],
                   jobs=jobs, emit=emit, started_ns=started_ns)
        if not run.executor.remote and not options.dry_run:
            _refuse_foreign(run)
        if options.dry_run:
            return dry_run(run)
        return execute(run)


def _noop(cache: dict, set_name: str, store_root: Path, options: RealiseOptions) -> RealiseResult:
    """The result of a no-op from the plan cache's answer (and a new out-link made a gc root)."""
    nodes = [NodeResult(id=n["id"], name=n["name"], variant=n["variant"], key=n["key"], action="reused",
                        reason=n.get("reason") or "valid in the store", build_key=n["build_key"], digest=n["digest"],
                        path=n["path"]) for n in cache["nodes"]]
    if options.out_link and cache["output"]:
        from .store import Store

        st = Store(store_root)  # a new out-link is a gc root even when nothing was built
        try:
            out_link(options.out_link, Path(cache["output"]), st)
        finally:
            st.close()
    return RealiseResult(set=set_name, targets=cache["targets"], output=cache["output"], digest=cache["digest"],
                         nodes=nodes, noop=True)


# -- decide ----------------------------------------------------------------------------------

@attrs.frozen
class Decision:
    """What a realise found before doing anything: the plan, what is valid, what is needed."""

    planned: Any  # planning.Planned
    validity: Any  # planning.Validity
    durations: dict[str, float]
    priority: dict[str, float]
    previous: dict[str, str]  # node id -> input key in the set's last recorded run
    warnings: list[str]

    def settled(self, nid: str) -> Optional[NodeResult]:
        """The result of a node this realise does not touch: valid, or below a valid node."""
        node = self.planned.plan.nodes[nid]
        v = self.validity
        if nid in v.valid:
            e = v.valid[nid]
            return NodeResult(nid, node.name, node.variant.label(), node.key, "reused", "valid in the store",
                              e.key, e.digest, str(e.path))
        if nid not in v.needed:
            r = v.known.get(nid)
            return NodeResult(nid, node.name, node.variant.label(), node.key, "reused",
                              "not needed: what depends on it is valid",
                              r.build_key if r else None, r.digest if r else None)
        return None

    def reason_for(self, store, nid: str) -> str:
        node = self.planned.plan.nodes[nid]
        prev = self.previous.get(nid)
        if store.realisation(node.key) is not None:
            return "output missing from the store (deleted or collected)"
        if prev is None:
            return "never built"
        if prev != node.key:
            return "inputs changed"
        return "not in the store"


def decide(planned, store, options: RealiseOptions) -> Decision:
    """What is valid (none with --check), what is needed, and what the last run had."""
    from .graph import critical_path
    from .planning import roots_for, stale_outside, unlocked_outside, validity

    plan = planned.plan
    durations = store.durations(planned.set_name)
    v = validity(plan, store, roots_for(planned, options.platform, options.variant), rebuild=options.check,
                 rebuild_roots_only=options.check_targets_only)
    if options.check and options.check_targets_only:
        # As nix-build --check: a target with no stored output has nothing to be compared with.
        missing = [t for t in v.targets if t not in v.known or store.lookup(v.known[t].build_key) is None]
        if missing:
            raise PlannerError(f"--check-targets: {missing[0]} is not in the store, so there is nothing to compare "
                               f"its rebuild with: `planner realise {planned.set_name}` first")
    return Decision(
        planned=planned, validity=v, durations=durations, priority=critical_path(plan, durations),
        previous=previous_keys(runs_of(store, planned.set_name, limit=20)),
        warnings=[*unlocked_outside(planned, v.needed), *stale_outside(planned, set(v.closure))],
    )


@attrs.define
class _Run:
    """One realise in progress: the decision and the machinery it uses."""

    decision: Decision
    store: Any
    options: RealiseOptions
    executor: Any
    own_executor: bool
    subs: list
    pushes: list
    jobs: int
    emit: Emit
    started_ns: Optional[int] = None  # time.time_ns() before planning read anything

    def close_executor(self) -> None:
        if self.own_executor:
            self.executor.close()

    def runnable_problems(self) -> list[str]:
        plan = self.decision.planned.plan
        return self.executor.check_runnable([plan.nodes[n] for n in self.decision.validity.todo()])


# -- dry run ---------------------------------------------------------------------------------

def dry_run(run: _Run) -> RealiseResult:
    """What a realise would fetch and build, in order, and where it would stop."""
    d, store = run.decision, run.store
    steps, blocked = _dry_steps(d, store)
    if blocked is None:
        problems = run.runnable_problems()
        if problems:
            blocked = "; ".join(problems)
    run.close_executor()
    nodes = []
    for nid in d.validity.closure:
        node = d.planned.plan.nodes[nid]
        nodes.append(d.settled(nid) or NodeResult(nid, node.name, node.variant.label(), node.key, "would-build",
                                                  d.reason_for(store, nid), previous_key=d.previous.get(nid)))
    return RealiseResult(set=d.planned.set_name, targets=d.validity.targets, output=None, digest=None, nodes=nodes,
                         steps=steps, blocked=blocked, warnings=d.warnings)


def _dry_steps(d: Decision, store) -> tuple[list[str], Optional[str]]:
    from .derivation import fixed_key

    plan, lock, set_name = d.planned.plan, d.planned.lock, d.planned.set_name
    steps: list[str] = []
    fetched: set[str] = set()
    for nid in d.validity.todo():
        pn = plan.nodes[nid]
        for ref in pn.inputs.values():
            li = lock.inputs[ref.decl]
            if li.status != "locked":
                return steps, (f"stops before {nid}: input {ref.decl} is unlocked ({li.reason or 'not resolved'}); "
                               f"run `planner lock {set_name} --update {ref.decl}` where it can be reached")
            if ref.decl in fetched or store.lookup(fixed_key(ref.tree, ref.unpacks)) is not None:
                continue
            fetched.add(ref.decl)
            steps.append(f"fetch {ref.decl}" + (f" [{ref.platform}]" if ref.platform else "") + f"  ({li.origin})")
        known = d.validity.known.get(nid)
        verb = "check" if known is not None and store.lookup(known.build_key) is not None else "build"
        steps.append(f"{verb} {nid}  (~{d.durations.get(nid, pn.estimate):.0f}s)"
                     + ("  (rebuilt and compared with the stored output)" if verb == "check" else ""))
    return steps, None


# -- execute ---------------------------------------------------------------------------------

def execute(run: _Run) -> RealiseResult:
    """Substitute or build every needed node, record the run, root the output."""
    from .executors import Unrunnable
    from .schedule import run_dag

    problems = run.runnable_problems()
    if problems:
        run.close_executor()
        raise Unrunnable(problems)
    d, store = run.decision, run.store
    plan = d.planned.plan
    from .execution import Execution

    ex = Execution(run)
    store.put_preimages({plan.nodes[n].key: plan.nodes[n].preimage.to_json() for n in d.validity.closure})
    if not run.executor.remote:
        _prefetch_apt(ex.resolver, store, plan, d.validity.todo(), ex.decls, d.planned.lock)
    run.emit("plan", {"total": len(d.validity.closure), "todo": len(d.validity.todo()),
                      "cached": [plan.nodes[n].label() for n in d.validity.closure if n not in d.validity.needed]})
    try:
        outcome = run_dag(ex.jobs(), ex.work_and_keep, slots=run.executor.slots(),
                          memory=run.executor.memory_budget(), keep_going=run.options.keep_going,
                          on_done=ex.on_done, cancel=ex.running.cancel)
    finally:
        run.close_executor()
        ex.resolver.discard_prefetched()
    results = {nid: ex.result_of(nid, outcome) for nid in d.validity.closure}
    return _finish(run, ex, results, outcome)


def _finish(run: _Run, ex, results: dict[str, NodeResult], outcome) -> RealiseResult:
    """Record the run, root its output, write the plan cache."""
    d, store, options = run.decision, run.store, run.options
    planned, plan = d.planned, d.planned.plan
    failures = ex.failures(outcome)
    targets = d.validity.targets
    target_results = [results[t] for t in targets]
    output = target_results[0].path if len(target_results) == 1 else None
    digest = _image_digest(output, plan.nodes[targets[0]].builder)
    record = RunRecord(
        set=planned.set_name, targets=targets, output=output, digest=digest, started=time.time(),
        lock=_lock_digest(planned.rs.lockfile), git=git_state(planned.root), sandbox=options.sandbox,
        check=options.check, executor=options.executor, substituters=list(options.substituters),
        nodes=list(results.values()),
        deps={nid: dict(sorted(plan.nodes[nid].deps.items())) for nid in d.validity.closure},
        checks=ex.checks, pins=lock_pins(planned.lock), root=str(planned.root),
        inputs=sorted(ex.used_inputs | _closure_inputs(store, plan, d.validity.closure)),
    )
    run_id = store.add_run(record.to_json())
    store.record_durations(planned.set_name, {r.id: r.seconds for r in results.values() if r.action == "built"})
    result = RealiseResult(set=planned.set_name, targets=targets, output=output, digest=digest,
                           nodes=list(results.values()), run_id=run_id, failures=failures, checks=ex.checks,
                           warnings=d.warnings)
    if outcome.interrupted:
        raise KeyboardInterrupt
    if not failures and output:
        # One root per target (and platform): realising another target must not unroot this one.
        scope = "".join(f":{k}={v}" for k, v in (("target", options.target), ("platform", options.platform),
                                                          ("variant", options.variant)) if v)
        store.set_root(f"set:{planned.root}:{planned.set_name}{scope}", Path(output))
        # As `nix-build --check`: outputs that differ are an error, and an error makes no link.
        if options.out_link and all(c.ok for c in ex.checks):
            out_link(options.out_link, Path(output), store)
    store.close()
    complete = not any(r.action in ("skipped", "failed") for r in results.values())
    if complete and not failures and not options.check and options.platform is None and options.variant is None:
        # After the index is closed: the cache records the index as this run left it (only a
        # run that made its target: a later no-op must answer with what it made).
        write_plan_cache(planned.rs, planned.rs.lockfile, store.root, options.target, options.sandbox, result,
                         run.started_ns)
    return result


def _refuse_foreign(run: _Run) -> None:
    """Nodes that would build for another platform than this machine's with a builder that only
    builds natively: refused before anything runs, never built wrong."""
    from .emulation import emulator
    from .errors import GraphError
    from .graph import unbuildable_here

    planned = run.decision.planned
    todo = run.decision.validity.todo()
    platforms = {planned.plan.nodes[n].variant.platform for n in todo} - {None, planned.host.platform}
    emulated = frozenset(p for p in platforms if emulator(p) is not None)
    foreign = unbuildable_here(planned.plan, todo, planned.host.platform, emulated)
    if foreign:
        run.close_executor()
        n = foreign[0]
        raise GraphError(f"{n.label()}: {n.builder} builds only for the machine it runs on, and this is "
                         f"{planned.host.platform}, not {n.variant.platform}: realise with --platform "
                         f"{planned.host.platform}, or with an --executor that has a {n.variant.platform} worker"
                         + (" (or build it inside a root filesystem of that platform, emulated here)"
                            if n.variant.platform in emulated else ""),
                         where=planned.rs.get(n.recipe).file)


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
                raise LockError(f"{ref.decl}: {problem}: was the pin edited by hand? run `planner lock {rs.name} --update "
                                f"{ref.decl}`", where=str(rs.lockfile.relative_to(rs.root)))


def _prefetch_apt(resolver, store, plan, todo, decls, lock) -> None:
    """The missing .deb inputs of what will be built that have no pinned URL, in one apt call
    per architecture."""
    from .derivation import fixed_key

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


def _closure_inputs(store, plan, closure: list[str]) -> set[str]:
    """Store paths of the fetched inputs of every node in the closure (gc keeps them)."""
    from .derivation import fixed_key

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


def _lock_digest(path: Path) -> Optional[str]:
    from .hashing import file_digest

    return file_digest(path) if path.exists() else None


def _image_digest(output, builder: str) -> Optional[str]:
    """Only an image's: any other build may leave an index.json (or a link named so) in its output."""
    from .oci.layout import index_digest

    return index_digest(Path(output)) if output and builder == "oci-image" else None
