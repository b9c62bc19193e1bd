"""The planning context: the load -> lock -> host -> plan prelude, and what is valid and needed.

Every command that looks at a set's graph (realise, why, plan, show, store pull) starts here, so
they agree on the plan; and realise, `why --dry-run` and `plan` agree on what a realise would
build, because they ask `validity()` the same question.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import attrs

from .errors import LockError, PlannerError
from .host import HostInfo

if TYPE_CHECKING:
    from .dag import Dag
    from .graph import Plan
    from .lock import Lock
    from .recipes import RecipeSet
    from .store import Store


@attrs.frozen
class Planned:
    """A recipe set, its lock, the host and the plan made from them."""

    root: Path
    rs: "RecipeSet"
    lock: "Lock"
    host: HostInfo
    plan: "Plan"
    # Stale or missing lock entries of single inputs (realise): refused only where a realise
    # builds with them, a warning elsewhere (`stale_outside`).
    deferred: tuple = ()
    # The set as set.toml declares it, before --platform/--variant narrowed `rs`: the lock pins
    # every platform's files, so it is checked against this one.
    whole: Optional["RecipeSet"] = None

    @property
    def lock_set(self) -> "RecipeSet":
        return self.whole if self.whole is not None else self.rs

    @property
    def set_name(self) -> str:
        return self.rs.name


def load(root: Path, set_name: str, *, sandboxed: bool = True, target: Optional[str] = None,
         check_lock: bool = False, platform: Optional[str] = None, variant: Optional[str] = None) -> Planned:
    """Load the set and its lock and plan it for this host.

    `platform`/`variant`: plan the set as if set.toml listed only that platform and CUDA variant,
    so an image (which covers every platform and variant of its set) is made for those alone;
    every other node keeps its key, which depends on its own platform and arch list only.

    `check_lock`: refuse a stale lock (realise). Unlocked inputs are not refused here: they
    matter only where a realise builds (`refuse_unlocked`, once the needed nodes are known)."""
    from . import lock as lockmod
    from .graph import plan as make_plan
    from .host import detect_host
    from .recipes import load_set

    rs = load_set(root, set_name)
    lock = lockmod.read(rs.lockfile)
    deferred: tuple = ()
    if check_lock:
        unlocked_ids = {id_ for id_, li in lock.inputs.items() if li.status != "locked"}
        problems = [p for p in lockmod.check(rs, lock, deep=False) if p.id not in unlocked_ids]
        # So do stale or missing entries of single inputs: judged once the plan says what is needed.
        input_ids = set(lock.inputs) | set(lockmod.declarations(rs))
        deferred = tuple(p for p in problems if p.id in input_ids)
        problems = [p for p in problems if p.id not in input_ids]
        if problems:
            more = f" (and {len(problems) - 1} more; see `planner lock {rs.name} --check`)" if len(problems) > 1 else ""
            raise LockError(f"{problems[0].line()}{more}; `planner lock {rs.name}` re-pins it",
                            where=str(rs.lockfile.relative_to(root)))
    host = detect_host(sandboxed)
    whole, rs = rs, restrict(rs, platform, variant)  # after the lock check, which is about the whole set
    return Planned(root, rs, lock, host, make_plan(rs, lock, host, target=target), deferred, whole)


def restrict(rs, platform: Optional[str], variant: Optional[str]):
    """The set with set.toml's platforms and CUDA variants narrowed to these (None: all)."""
    if platform is None and variant is None:
        return rs
    config = rs.config
    if platform is not None:
        _check_platform(rs, platform)
        config = attrs.evolve(config, platforms=[platform])
    if variant is not None:
        _check_variant(rs, variant)
        config = attrs.evolve(config, cuda={variant: config.cuda[variant]})
    return attrs.evolve(rs, config=config)


def _check_platform(rs, platform: str) -> None:
    if platform not in rs.config.platforms:
        from .suggest import did_you_mean

        raise PlannerError(f"platform {platform} is not one of the set's platforms"
                           f"{did_you_mean(platform, rs.config.platforms, cutoff=0.8)}", where=str(rs.folder / "set.toml"))


def _check_variant(rs, variant: str) -> None:
    if variant not in rs.config.cuda:
        from .suggest import did_you_mean

        known = did_you_mean(variant, rs.config.cuda) or " (it defines none)"
        raise PlannerError(f"CUDA variant {variant!r} is not one of the set's{known}",
                           where=str(rs.folder / "set.toml"))


def roots_for(planned: Planned, platform: Optional[str], variant: Optional[str] = None) -> list[str]:
    """The plan's roots, or those for one platform and/or one CUDA variant (and those without
    that axis)."""
    plan, rs = planned.plan, planned.rs
    roots = list(plan.roots)
    if platform is not None:
        _check_platform(rs, platform)
        roots = [r for r in roots if plan.nodes[r].variant.platform in (None, platform)]
    if variant is not None:
        _check_variant(rs, variant)
        from .builders.cuda_archs import normalise_archs

        def wanted(node) -> bool:
            cuda = node.variant.cuda
            return cuda is None or tuple(cuda) == tuple(normalise_archs(rs.config.archs(variant, node.variant.platform)))

        roots = [r for r in roots if wanted(plan.nodes[r])]
    return roots


@attrs.frozen
class Validity:
    """What a realise of `roots` finds in the store and what it has to build or fetch."""

    roots: list[str]
    targets: list[str]
    closure: list[str]  # every node the roots reach, dependencies first
    known: dict[str, Any]  # node id -> realisation of its input key (present or not)
    valid: dict[str, Any]  # node id -> store entry of a realisation whose output is present
    needed: set[str]  # reached from the roots without passing through a valid node

    def todo(self) -> list[str]:
        return [nid for nid in self.closure if nid in self.needed]


def validity(plan: "Dag", store: "Store", roots: Iterable[str], *, rebuild: bool = False,
             rebuild_roots_only: bool = False) -> Validity:
    """Valid: a realisation for the input key whose entry is present (none with `rebuild`,
    as --check wants; with `rebuild_roots_only` too, every one but the roots'). Needed:
    `Dag.needed`, so nothing below a valid output is rebuilt.
    `plan`: a `graph.Plan`, or the cached table of `planner plan`."""
    roots = list(roots)
    closure = plan.closure(roots)
    by_key = store.realisations([plan.nodes[n].key for n in closure])
    known = {n: by_key[plan.nodes[n].key] for n in closure if plan.nodes[n].key in by_key}
    valid: dict[str, Any] = {}
    for nid, r in known.items():
        if not rebuild or (rebuild_roots_only and nid not in roots):
            e = store.lookup(r.build_key)
            if e is not None:
                valid[nid] = e
    return Validity(roots=roots, targets=[t for t in plan.targets if t in set(roots)], closure=closure,
                    known=known, valid=valid, needed=plan.needed(roots, valid))


def host_root_warning(planned: Planned) -> list[str]:
    """The loud line for a set that opted out of a pinned build root."""
    return host_root_line(planned.rs)


def host_root_line(rs: "RecipeSet") -> list[str]:
    if not rs.config.on_host:
        return []
    return [f"set {rs.name!r} builds with this machine's /usr (recipes/{rs.name}/set.toml: "
            "build-root = \"host\"): NOT HERMETIC, its keys carry this host's package versions"]


def unlocked_outside(planned: Planned, needed: set[str]) -> list[str]:
    """One warning line naming the unlocked inputs that nothing this realise builds uses."""
    unlocked_ids = {id_ for id_, li in planned.lock.inputs.items() if li.status != "locked"}
    used = {ref.decl for nid in needed for ref in planned.plan.nodes[nid].inputs.values()}
    other = sorted(unlocked_ids - used)
    if not other:
        return []
    return [f"{len(other)} unlocked input{'s' if len(other) > 1 else ''} not needed by this realise: "
            + ", ".join(other)]


def stale_outside(planned: Planned, closure: set[str]) -> list[str]:
    """A LockError for the first stale lock entry that a node of the realised closure uses, cached
    or not (a cached output of an edited input would be a wrong answer); one warning line naming
    those nothing in the closure uses."""
    nodes = planned.plan.nodes
    used = {ref.decl for nid in closure for ref in nodes[nid].inputs.values()}
    # A stale pin (an edited local patch, say) may no longer be referenced by the node it belongs
    # to; the lock id's recipe part still names it.
    recipes = {nodes[nid].name for nid in closure}
    used |= {p.id for p in planned.deferred if p.id.split("/", 1)[0] in recipes}
    stale_used = [p for p in planned.deferred if p.id in used]
    if stale_used:
        more = f" (and {len(stale_used) - 1} more; see `planner lock {planned.set_name} --check`)" if len(stale_used) > 1 else ""
        raise LockError(f"{stale_used[0].line()}{more}; `planner lock {planned.set_name}` re-pins it",
                        where=str(planned.rs.lockfile.relative_to(planned.root)))
    stale_other = sorted({p.id for p in planned.deferred} - used)
    if not stale_other:
        return []
    return [f"{len(stale_other)} stale lock entr{'ies' if len(stale_other) > 1 else 'y'} not needed by "
            f"this realise: {', '.join(stale_other[:8])}{', ...' if len(stale_other) > 8 else ''}"]


def _unavailable_line(planned: Planned, needed: set[str], unavailable: list[str]) -> str:
    """Which node cannot be built for its platform, which node of this realise needs it, and
    the two ways out: fewer platforms for the realise, or for the recipe that needs it."""
    nodes = planned.plan.nodes
    first = nodes[unavailable[0]]
    line = f"cannot build {unavailable[0]}: {first.unavailable}"
    users = sorted(nid for nid in needed if unavailable[0] in nodes[nid].deps.values())
    made_for = [p for p in planned.rs.get(first.recipe).platforms if p in planned.lock_set.config.platforms]
    if users and made_for:
        user = nodes[users[0]]
        line += (f"; needed by {users[0]}: realise with --platform {made_for[0]}, or give {user.recipe} "
                 f"platforms = [{', '.join(repr(p).replace(chr(39), chr(34)) for p in made_for)}]")
    return line + (f" (and {len(unavailable) - 1} more)" if len(unavailable) > 1 else "")


def refuse_unlocked(planned: Planned, needed: set[str]) -> None:
    """A LockError naming the first unlocked input that a node this realise must build uses
    (a PlannerError for a node that cannot be built for its platform)."""
    plan, lock, rs = planned.plan, planned.lock, planned.rs
    unavailable = sorted(nid for nid in needed if plan.nodes[nid].unavailable)
    if unavailable:
        raise PlannerError(_unavailable_line(planned, needed, unavailable))
    bad = sorted({ref.decl for nid in needed for ref in plan.nodes[nid].inputs.values() if not ref.locked})
    if not bad:
        return
    li = lock.inputs[bad[0]]
    users = sorted(nid for nid in needed if any(r.decl == bad[0] for r in plan.nodes[nid].inputs.values()))
    more = f" (and {len(bad) - 1} more: {', '.join(bad[1:4])}{', ...' if len(bad) > 4 else ''})" if len(bad) > 1 else ""
    raise LockError(f"{bad[0]}: unlocked: {li.reason or 'not resolved'}; needed by {users[0]}{more}: "
                    f"run `planner lock {rs.name} --update {bad[0]}` where it can be reached",
                    where=str(rs.lockfile.relative_to(rs.root)))
