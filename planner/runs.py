"""What a realise did: per-node outcomes, the result it returns, and the run record it stores.

Outcomes are typed: a node reused by early cutoff says so in `cutoff`, a node built after the
binary caches missed carries the miss's class in `miss`. `why` reads those fields; the `reason`
text is for people only. Run records are stored as JSON (`RunRecord.to_json`) and read back
with `RunRecord.from_json`, which accepts records written before a field existed.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import attrs


@attrs.frozen
class MissNote:
    """Why the binary caches could not substitute a node (planner.cache.classify_miss)."""

    category: str
    detail: str = ""


@attrs.frozen
class NodeResult:
    id: str
    name: str
    variant: str
    key: str
    action: str  # built | reused | substituted | would-build | failed | skipped | checked
    reason: str
    build_key: Optional[str] = None
    digest: Optional[str] = None
    path: Optional[str] = None
    seconds: float = 0.0
    previous_key: Optional[str] = None
    previous_digest: Optional[str] = None  # set when the same build key once gave other bytes
    cutoff: bool = False  # reused: its dependencies were rebuilt to identical outputs
    miss: Optional[MissNote] = None  # built after the substituters missed

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "NodeResult":
        miss = data.get("miss")
        return cls(
            id=data["id"], name=data.get("name", data["id"]), variant=data.get("variant", ""), key=data["key"],
            action=data.get("action", ""), reason=data.get("reason", ""), build_key=data.get("build_key"),
            digest=data.get("digest"), path=data.get("path"), seconds=float(data.get("seconds", 0.0)),
            previous_key=data.get("previous_key"), previous_digest=data.get("previous_digest"),
            cutoff=bool(data.get("cutoff", False)),
            miss=MissNote(miss["category"], miss.get("detail", "")) if isinstance(miss, dict) else None,
        )


@attrs.frozen
class CheckResult:
    node: str
    ok: bool
    differing: list[str] = attrs.field(factory=list)
    kept: Optional[str] = None  # where the differing rebuilt output is kept for comparing


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
        checks     [{node, ok, differing, kept}]: `--check` comparisons (kept: the differing
                   rebuilt output's path, else null)
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


@attrs.frozen
class RunRecord:
    """One realise as the store keeps it (`planner why`, `store push`, `log`, gc roots read it)."""

    set: str
    targets: list[str]
    nodes: list[NodeResult]
    output: Optional[str] = None
    digest: Optional[str] = None
    started: float = 0.0
    lock: Optional[str] = None  # digest of the lockfile
    git: Optional[dict[str, Any]] = None
    sandbox: bool = True
    check: bool = False
    executor: Optional[str] = None
    substituters: list[str] = attrs.field(factory=list)
    deps: dict[str, dict[str, str]] = attrs.field(factory=dict)  # node id -> mount -> node id
    checks: list[CheckResult] = attrs.field(factory=list)
    pins: dict[str, Any] = attrs.field(factory=dict)  # lock id -> platform -> [sha256, tree]
    root: str = ""
    inputs: list[str] = attrs.field(factory=list)  # store paths of the fetched inputs used

    def to_json(self) -> dict:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunRecord":
        deps = data.get("deps") or {}
        return cls(
            set=data.get("set", ""), targets=list(data.get("targets") or []),
            nodes=[NodeResult.from_json(n) for n in data.get("nodes") or []],
            output=data.get("output"), digest=data.get("digest"), started=float(data.get("started") or 0.0),
            lock=data.get("lock"), git=data.get("git"), sandbox=bool(data.get("sandbox", True)),
            check=bool(data.get("check", False)), executor=data.get("executor"),
            substituters=list(data.get("substituters") or []),
            deps={k: dict(v) for k, v in deps.items() if isinstance(v, dict)},
            checks=[CheckResult(c["node"], bool(c["ok"]), list(c.get("differing") or []), c.get("kept"))
                    for c in data.get("checks") or []],
            pins=dict(data.get("pins") or {}), root=data.get("root", ""), inputs=list(data.get("inputs") or []),
        )


def runs_of(store, set_name: Optional[str], limit: int = 200) -> list[tuple[int, RunRecord]]:
    """The store's recorded runs of a set (every set for None), newest first."""
    out = []
    for i, r in store.runs(limit=limit, set_name=set_name):
        if set_name is not None and r.get("set") != set_name:
            continue
        try:
            out.append((i, RunRecord.from_json(r)))
        except (KeyError, TypeError, ValueError, AttributeError):  # a record edited out of shape: skipped
            continue
    return out


def previous_keys(records: Iterable[tuple[int, RunRecord]]) -> dict[str, str]:
    """node id -> input key in the newest of the records that has nodes."""
    for _id, rec in records:
        if rec.nodes:
            return {n.id: n.key for n in rec.nodes}
    return {}


def lock_pins(lock) -> dict:
    """What each lock entry pinned, so `why` can tell a re-packed upstream from a real change."""
    return {id_: {plat: [pin.sha256, pin.tree] for plat, pin in sorted(li.pins.items())}
            for id_, li in sorted(lock.inputs.items())}
