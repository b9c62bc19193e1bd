"""`planner plan`: the derivation graph with keys and what a realise would do to each node."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

import attrs

from .errors import PlannerError


@attrs.frozen
class PlannedNode:
    id: str
    name: str
    variant: str
    key: str
    builder: str
    action: str  # build | reuse | blocked (an unlocked input of its own or below it)
    estimate: float
    deps: list[str]
    impure: bool
    unlocked: list[str]  # its own unlocked inputs
    blocked_by: Optional[str] = None  # the unlocked input that keeps it from being built
    blocked_via: Optional[str] = None  # the node below it that uses that input (itself if its own)


@attrs.frozen
class PlanView:
    set: str
    targets: list[str]
    nodes: list[PlannedNode]
    critical_path: float

    def to_json(self) -> dict:
        return {"set": self.set, "targets": self.targets, "critical_path_seconds": round(self.critical_path, 1),
                "nodes": [attrs.asdict(n) for n in self.nodes]}

    def to_text(self) -> str:
        lines = []
        width = max((len(n.id) for n in self.nodes), default=10)
        for n in self.nodes:
            flags = (" impure" if n.impure else "") + (f" unlocked: {', '.join(n.unlocked)}" if n.unlocked else "")
            if n.blocked_by and not n.unlocked:
                flags += f" blocked by {n.blocked_by} (via {n.blocked_via})"
            lines.append(f"{n.action:<7} {n.key}  {n.id:<{width}}  ~{_dur(n.estimate)}{flags}")
        todo = sum(n.action != "reuse" for n in self.nodes)
        blocked = sum(n.action == "blocked" for n in self.nodes)
        lines.append(f"{len(self.nodes)} nodes, {todo} to build" + (f" ({blocked} blocked by unlocked inputs)" if blocked else "")
                     + f"; critical path ~{_dur(self.critical_path)}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        out = ["digraph plan {", "  rankdir=BT;", '  node [shape=box, fontname="monospace"];']
        for n in self.nodes:
            color = {"build": "orange", "reuse": "palegreen", "blocked": "lightgrey"}[n.action]
            out.append(f'  "{n.id}" [label="{n.id}\\n{n.key[:12]}", style=filled, fillcolor={color}];')
        for n in self.nodes:
            for d in n.deps:
                out.append(f'  "{d}" -> "{n.id}";')
        out.append("}")
        return "\n".join(out)

    def to_svg(self) -> str:
        try:
            proc = subprocess.run(["dot", "-Tsvg"], input=self.to_dot(), capture_output=True, text=True, check=True)
        except FileNotFoundError:
            raise PlannerError("graphviz `dot` is not installed (apt-get install graphviz)") from None
        return proc.stdout


def format_duration(s: float, *, precise: bool = False) -> str:
    """90 -> '2m' (or '1.5m' when precise); hours past an hour."""
    if s >= 3600:
        return f"{s / 3600:.1f}h"
    if s >= 60:
        return f"{s / 60:.1f}m" if precise else f"{s / 60:.0f}m"
    return f"{s:.1f}s" if precise else f"{s:.0f}s"


_dur = format_duration


def plan_view(root: Path, set_name: str, store_root: Path, *, target: Optional[str] = None,
              sandbox: bool = True) -> PlanView:
    from . import lock as lockmod
    from .graph import critical_path, plan
    from .host import detect_host
    from .recipes import load_set
    from .store import Store

    rs = load_set(root, set_name)
    lk = lockmod.read(rs.lockfile)
    p = plan(rs, lk, detect_host(sandbox), target=target)
    realised: dict = {}
    durations: dict = {}
    if (store_root / "index.sqlite").exists():
        st = Store(store_root)
        durations = st.durations(set_name)
        for nid, node in p.nodes.items():
            r = st.realisation(node.key)
            if r is not None and st.lookup(r.build_key) is not None:
                realised[nid] = r
        st.close()
    cp = critical_path(p, durations)
    blocked = p.blocked()
    nodes = []
    for nid, node in p.nodes.items():
        unlocked = sorted({ref.decl for ref in node.inputs.values() if not ref.locked})
        by, via = blocked.get(nid, (None, None))
        action = "reuse" if nid in realised else ("blocked" if by else "build")
        nodes.append(PlannedNode(nid, node.name, node.variant.label(), node.key, node.builder, action,
                                 durations.get(nid, node.estimate), sorted(set(node.deps.values())), node.impure,
                                 unlocked, by, via))
    return PlanView(set_name, list(p.targets), nodes, max(cp.values(), default=0.0))
