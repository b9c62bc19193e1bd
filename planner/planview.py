"""`planner plan`: the derivation graph with keys and what a realise would do to each node.

`plan --json` schema (version `SCHEMA_VERSION`; fields are only ever added within a version):

    schema                 int, this version
    set                    str, the recipe set
    targets                [node id], the nodes `realise` prints
    critical_path_seconds  float, the longest chain of expected build times through the graph
    critical_path          [node id], that chain, first build first
    generations            [[node id]], nodes that could build at once: each only needs earlier ones
    warnings               [str], e.g. a stale lock (the keys shown are then the old lock's)
    nodes                  [{id, name, variant, platform, key, builder, action, estimate, deps,
                             requires, impure, unlocked}]
        action     "build" (not in the store), "reuse" (a valid output is there), or "blocked"
                   (an input of it or below it is unlocked: `planner lock SET --update ID` first)
        estimate   float seconds: the last recorded build time, or the recipe's estimate
        deps       [node id], build-time dependencies (mounted at /deps/<name>)
        requires   [node id], run-time dependencies, resolved for this node's platform/variant
        platform   the node's platform axis, or null when one output serves every platform
        unlocked   [lock id], this node's own unlocked inputs
        blocked_by, blocked_via   for a blocked node: the unlocked input, and the node using it
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import attrs

from .durations import format_duration

from .errors import PlannerError
from .gcpause import gc_paused

SCHEMA_VERSION = 1

# Fill colours of the picture and its legend: one per action.
_COLOURS = {"build": "#f6c177", "reuse": "#b8e0b8", "blocked": "#d9d9d9"}
_ROW = 4  # nodes side by side per generation and platform in the picture
_MEANING = {"build": "build: not in the store", "reuse": "reuse: valid output in the store",
            "blocked": "blocked: an input is unlocked"}


@attrs.frozen
class PlannedNode:
    id: str
    name: str
    variant: str
    platform: Optional[str]
    key: str
    builder: str
    action: str  # build | reuse | blocked
    estimate: float
    deps: list[str]
    requires: list[str]
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
    critical_nodes: list[str] = attrs.field(factory=list)
    generations: list[list[str]] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)

    def to_json(self) -> dict:
        return {"schema": SCHEMA_VERSION, "set": self.set, "targets": self.targets,
                "critical_path_seconds": round(self.critical_path, 1), "critical_path": self.critical_nodes,
                "generations": self.generations, "warnings": self.warnings,
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
        lines.append(f"{len(self.nodes)} nodes, {todo} to build"
                     + (f" ({blocked} blocked: an unlocked input or an unsupported platform below them)" if blocked else "")
                     + f"; critical path ~{_dur(self.critical_path)}"
                     + (f" ({' -> '.join(self.critical_nodes)})" if 1 < len(self.critical_nodes) <= 6 else ""))
        return "\n".join(lines)

    def to_dot(self) -> str:
        """Top to bottom, dependencies above what they feed; one box per platform; run-time
        (`requires`) edges dashed; a legend of the actions."""
        import html

        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        def label(n: PlannedNode) -> str:
            # An HTML-like label: the name bold, the variant minus the platform (the cluster
            # says that) and the key's head small, so 40+ boxes stay narrow.
            rows = [f"<B>{html.escape(n.name)}</B>"]
            for part in (p for p in n.variant.split(", ") if p and p != n.platform):
                archs = part.split("+")  # a long CUDA arch list wraps, three to a line
                for i in range(0, len(archs), 3):
                    text = "+".join(archs[i:i + 3]) + ("+" if i + 3 < len(archs) else "")
                    rows.append(f'<FONT POINT-SIZE="9">{html.escape(text)}</FONT>')
            rows.append(f'<FONT POINT-SIZE="8" COLOR="#555555">{n.key[:12]} · ~{_dur(n.estimate)}</FONT>')
            return "<" + "<BR/>".join(rows) + ">"

        out = ["digraph plan {", "  rankdir=TB; newrank=true; concentrate=true;",
               "  graph [fontname=\"Helvetica\", fontsize=12, nodesep=0.25, ranksep=0.45, labelloc=t,"
               f" label={q(f'planner plan {self.set}: {len(self.nodes)} nodes')}];",
               '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, margin="0.08,0.04"];',
               '  edge [color="#666666", arrowsize=0.6, fontname="Helvetica", fontsize=10];']
        groups: dict[str, list[PlannedNode]] = {}
        for n in self.nodes:
            groups.setdefault(n.platform or "", []).append(n)
        level = {nid: i for i, gen in enumerate(self.generations) for nid in gen}
        # Platform boxes stacked top to bottom (the platform-free one, holding the image, last):
        # side by side, two platforms of 15 nodes would be a picture eight times wider than high.
        order = sorted(groups.items(), key=lambda kv: (kv[0] == "", kv[0]))
        previous_last: Optional[str] = None
        for i, (platform, members) in enumerate(order):
            out.append(f"  subgraph cluster_{i} {{")
            out.append(f"    label={q(platform or 'every platform')}; style=rounded; color=\"#9999bb\";"
                       " fontname=\"Helvetica-Bold\";")
            for n in members:
                pen = ", penwidth=2.5" if n.id in self.targets else ""
                out.append(f"    {q(n.id)} [label={label(n)}, fillcolor={q(_COLOURS[n.action])}{pen}];")
            # Each generation wraps into rows of _ROW nodes, one rank each, stacked by an
            # invisible edge: 40+ independent nodes then make a block, not one long line.
            by_level: dict[int, list[str]] = {}
            for n in members:
                by_level.setdefault(level.get(n.id, 0), []).append(n.id)
            rows = [ids[k:k + _ROW] for _lv, ids in sorted(by_level.items()) for k in range(0, len(ids), _ROW)]
            for row in rows:
                out.append("    { rank=same; " + " ".join(q(x) + ";" for x in row) + " }")
            for upper, lower in zip(rows, rows[1:]):
                out.append(f"    {q(upper[0])} -> {q(lower[0])} [style=invis, weight=20];")
            out.append("  }")
            if previous_last is not None and rows:
                out.append(f"  {q(previous_last)} -> {q(rows[0][0])} [style=invis, weight=20];")
            if rows:
                previous_last = rows[-1][0]
        for n in self.nodes:
            for d in n.deps:
                out.append(f"  {q(d)} -> {q(n.id)};")
        for n in self.nodes:
            for r in n.requires:
                out.append(f"  {q(r)} -> {q(n.id)} [style=dashed, color=\"#3366cc\", constraint=false];")
        out.append("  subgraph cluster_legend {")
        out.append('    label="legend"; style=rounded; color="#bbbbbb"; fontname="Helvetica-Bold";')
        for action in ("build", "reuse", "blocked"):
            out.append(f"    {q('legend:' + action)} [label={q(_MEANING[action])}, fillcolor={q(_COLOURS[action])}];")
        for tag, text, style in (("dep", "built from", ""), ("req", "needs at run time",
                                                            ', style=dashed, color="#3366cc"')):
            out.append(f'    "legend:{tag}-a" [label="A", shape=plaintext, style=""];')
            out.append(f'    "legend:{tag}-b" [label="B", shape=plaintext, style=""];')
            out.append(f'    "legend:{tag}-a" -> "legend:{tag}-b" [label=" B {text} A", fontsize=10{style}];')
        out.append('    "legend:build" -> "legend:reuse" -> "legend:blocked" [style=invis];')
        out.append("  }")
        out.append("}")
        return "\n".join(out)

    def to_svg(self) -> str:
        import subprocess

        source = self.to_dot()
        try:
            proc = subprocess.run(["dot", "-Tsvg"], input=source, capture_output=True, text=True)
            if proc.returncode != 0:
                # Merged edges (concentrate) trip some graphviz versions on some graphs: the
                # same picture with every edge drawn apart is still a picture.
                proc = subprocess.run(["dot", "-Tsvg"], input=source.replace(" concentrate=true;", ""),
                                      capture_output=True, text=True)
        except FileNotFoundError:
            raise PlannerError("graphviz `dot` is not installed (apt-get install graphviz)") from None
        if proc.returncode != 0:
            raise PlannerError(f"graphviz `dot` failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        return proc.stdout


_dur = format_duration


@gc_paused()
def plan_view(root: Path, set_name: str, store_root: Path, *, target: Optional[str] = None,
              sandbox: bool = True, platform: Optional[str] = None, variant: Optional[str] = None) -> PlanView:
    """The plan as `realise` with the same target, platform and CUDA variant would build it."""
    from . import planning, replan

    if platform is None and variant is None:
        table = replan.table_for(root, set_name, target, sandbox)
    else:
        # The set narrowed as `realise --platform/--variant` narrows it (every node keeps the key
        # it has in the whole set's plan); not cached, the cache holds the whole set's table.
        from . import plantable

        table = plantable.from_planned(planning.load(root, set_name, sandboxed=sandbox, target=target,
                                                     platform=platform, variant=variant))
    settled: set[str] = set()  # valid, or below a valid node: what a realise would not build
    durations: dict = {}
    if (store_root / "index.sqlite").exists():
        from .store import Store

        st = Store.for_reading(store_root)
        durations = st.durations(set_name)
        v = planning.validity(table, st, table.roots)
        settled = set(v.closure) - v.needed
        st.close()
    nodes = []
    for nid, n in table.nodes.items():  # dependencies first
        action = "reuse" if nid in settled else ("blocked" if n.blocked_by else "build")
        nodes.append(PlannedNode(nid, n.name, n.variant, n.platform, n.key, n.builder, action,
                                 durations.get(nid, n.estimate), sorted(set(n.deps.values())), n.requires,
                                 n.impure, n.unlocked, n.blocked_by, n.blocked_via))
    seconds = {n.id: n.estimate for n in nodes}
    gens, chain = _shape({n.id: n.deps for n in nodes}, seconds)
    # The chain is the longest path; summed from its end, as `dag.critical_path` sums it.
    total = 0.0
    for nid in reversed(chain):
        total = seconds[nid] + total
    return PlanView(set_name, list(table.targets), nodes, total, chain, gens, list(table.warnings))


def _shape(deps: dict[str, list[str]], seconds: dict[str, float]) -> tuple[list[list[str]], list[str]]:
    """Topological generations (each node one past its deepest dependency) and the critical
    chain (the path with the most expected seconds). `deps` is in topological order, as a plan's
    nodes are. Hand-written, not networkx: bench/graph_nx.py measures networkx 4-9x slower on
    10k nodes plus its import, for what one pass in topological order gives."""
    level: dict[str, int] = {}
    finish: dict[str, float] = {}
    via: dict[str, Optional[str]] = {}
    for nid, ds in deps.items():
        # max() of the levels, and of (finish, id) for the slowest, in one loop without a key
        # function: a call per edge was most of a warm plan's view of 10,000 nodes.
        lv, slowest, best = -1, None, 0.0
        for d in ds:
            if level[d] > lv:
                lv = level[d]
            f = finish[d]
            if slowest is None or f > best or (f == best and d > slowest):
                slowest, best = d, f
        level[nid] = lv + 1
        via[nid] = slowest
        finish[nid] = seconds.get(nid, 0.0) + (best if slowest is not None else 0.0)
    gens: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for nid, lv in level.items():
        gens[lv].append(nid)
    chain: list[str] = []
    node = max(finish, key=lambda n: (finish[n], n), default=None)
    while node is not None:
        chain.append(node)
        node = via[node]
    return [sorted(g) for g in gens], chain[::-1]
