"""What `planner lock --check` holds a lock to: the inputs of one closure, strictly.

A set may declare inputs that its chosen closure never uses: slime's registry base, Ubuntu .debs
and GitHub-only sources that the profile `pins` leaves out. Like `nix flake check` evaluating the
outputs it is asked about, `lock --check` fails for every entry the closure of the set's target
(under the set's profile, on every platform and CUDA variant it plans) needs and that is missing,
stale or unlocked; an unlocked entry outside that closure is reported, not failed. Everything
else stays set-wide whatever the scope: an entry that no longer matches its recipe, an entry no
recipe declares, an edited local input, the recipes digest and the source-date-epoch, so a
hand-edited or out-of-date lock fails wherever the edit is.

The closure is the one a realise of that target would plan (`graph.plan`), for each of the
set's platforms as the build machine, so the answer does not depend on the machine asking.
"""

from __future__ import annotations

from typing import Optional

import attrs

from .errors import GraphError, LockError
from .graph import plan
from .host import HostInfo
from .lock import Lock, LockedInput, Problem, check, declarations
from .recipes import RecipeSet


@attrs.frozen
class ScopedCheck:
    """The outcome of checking a lock for one closure."""

    scope: str  # what was checked, in words: "the closure of image (profile pins)", "every input"
    problems: list[Problem]  # each one fails the check
    outside: list[str]  # unlocked entries the closure does not use: one warning line, no failure

    def warning(self) -> Optional[str]:
        if not self.outside:
            return None
        n = len(self.outside)
        return (f"{n} unlocked input{'s' if n > 1 else ''} outside {self.scope}, not needed by it: "
                + ", ".join(self.outside))


def scope_name(rs: RecipeSet, target: Optional[str], platform: Optional[str] = None,
               variant: Optional[str] = None) -> str:
    profile = f" (profile {rs.config.profile})" if rs.config.profile else ""
    narrowed = "".join(f", {what} {value}" for what, value in (("platform", platform), ("variant", variant)) if value)
    return f"the closure of {target or rs.config.target}{profile}{narrowed}"


def closure_inputs(rs: RecipeSet, lock: Lock, target: Optional[str] = None, *, platform: Optional[str] = None,
                   variant: Optional[str] = None) -> frozenset[str]:
    """Ids of the inputs used by the nodes that realising `target` (default: the set's) plans,
    on any build machine among the set's platforms; `platform`/`variant` narrow it as they
    narrow a realise (`planning.restrict`)."""
    from .planning import restrict

    # Entries the lock lacks are placeholders here (check() reports them): the graph needs an
    # entry per declared input, not a pin.
    decls = declarations(rs)
    filled = {id_: LockedInput(id=id_, kind=d.kind, origin=d.origin, spec="", status="unlocked")
              for id_, d in decls.items() if id_ not in lock.inputs}
    whole = attrs.evolve(lock, inputs={**lock.inputs, **filled}) if filled else lock
    used: set[str] = set()
    planned = 0
    first_error: Optional[GraphError] = None
    narrowed = restrict(rs, platform, variant)
    for host in rs.config.platforms:
        try:
            p = plan(narrowed, whole, HostInfo(platform=host), target=target)
        except GraphError as exc:
            # A set whose build root is made for some build platforms only cannot be built on
            # the others: their closures are not the set's.
            first_error = first_error or exc
            continue
        planned += 1
        used |= {ref.decl for nid in p.closure(p.roots) for ref in p.nodes[nid].inputs.values()}
    if not planned and first_error is not None:
        raise first_error
    return frozenset(used)


def check_scoped(rs: RecipeSet, lock: Lock, *, target: Optional[str] = None, platform: Optional[str] = None,
                 variant: Optional[str] = None, every_input: bool = False) -> ScopedCheck:
    """`lock.check` for the closure of `target` (or for every declared input), on `platform`
    and CUDA `variant` alone where given."""
    from .planning import restrict

    problems = check(rs, lock)
    if every_input:
        return ScopedCheck(scope="every input of the set", problems=problems, outside=[])
    scope = scope_name(rs, target, platform, variant)
    if not any(p.unlocked for p in problems):
        # A target, platform or variant the set does not have is an error, not a clean check.
        if target is not None:
            rs.get(target)
        restrict(rs, platform, variant)
        return ScopedCheck(scope=scope, problems=problems, outside=[])
    try:
        needed = closure_inputs(rs, lock, target, platform=platform, variant=variant)
    except LockError:
        # The lock is too broken to plan with (a locked entry without a platform's pin): its
        # problems are listed, and every unlocked entry counts, as with --all.
        return ScopedCheck(scope=scope, problems=problems, outside=[])
    kept = [p for p in problems if not p.unlocked or p.id in needed]
    outside = sorted(p.id for p in problems if p.unlocked and p.id not in needed)
    return ScopedCheck(scope=scope, problems=kept, outside=outside)

