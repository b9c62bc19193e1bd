"""Variant expansion: from a recipe set and its lock to a plan of derivations (pure).

Each recipe becomes one node per value of the variant axes it really uses: its own `axes`
plus the axes of whatever its build consumes. A pure-Python wheel therefore stays one node
for every platform, and a CUDA arch list reaches only nodes that compile device code.

What a node is, its preimage and its keys live in `planner.derivation`; this module decides
which nodes exist and fills in their preimages.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import attrs

from .dag import Dag, critical_path  # noqa: F401  (critical_path: for callers of this module)
from .errors import GraphError, LockError
from .builders.registry import builder
from .builders.registry import BUILTIN_BUILDERS
from .derivation import BUILD_ROOT_MOUNT, BuilderSpec, ImageFields, InputPin, InputRef, Node, PatchPin, Preimage, Variant, node_id
from .gcpause import gc_paused
from .host import HOST_PACKAGES, HostInfo
from .lock import ANY, InputDecl, Lock, declarations
from .recipes import Recipe, RecipeSet



def uses_build_root(builder_kind: str, rootfs: Optional[str]) -> bool:
    """Sandboxed builds on the build machine's side run in the build root; a build inside a
    target root filesystem (`build.rootfs`) does not; the image takes its compressor from it."""
    return (builder_kind not in BUILTIN_BUILDERS and not rootfs) or builder_kind == "oci-image"



@attrs.frozen
class Plan(Dag):
    """Closures, needed nodes and dependents come from `planner.dag`."""

    set: str
    nodes: dict[str, Node]  # in topological order: dependencies first
    targets: tuple[str, ...]
    source_date_epoch: int
    roots: tuple[str, ...] = ()  # targets and their run-time closures, for every variant
    # How the plan was made, for re-planning after an edit (`planner.replan`): the walk's order
    # below each node, and each recipe's effective axes. Not part of what a plan is.
    walk: dict[str, list[str]] = attrs.field(factory=dict, eq=False, repr=False)
    axes: dict[str, frozenset[str]] = attrs.field(factory=dict, eq=False, repr=False)

    def blocked(self) -> dict[str, tuple[str, str]]:
        """Node id -> (the unlocked input that keeps it from being built, the node that uses
        that input): its own, or the first found below it. Nodes absent are buildable."""
        out: dict[str, tuple[str, str]] = {}
        for nid, node in self.nodes.items():  # dependencies first
            if node.unavailable:
                out[nid] = (node.unavailable, nid)
                continue
            own = sorted(ref.decl for ref in node.inputs.values() if not ref.locked)
            if own:
                out[nid] = (own[0], nid)
                continue
            for dep in sorted(node.deps.values()):
                if dep in out:
                    out[nid] = out[dep]
                    break
        return out

    def to_networkx(self):
        import networkx as nx

        g = nx.DiGraph()
        for node in self.nodes.values():
            g.add_node(node.id, key=node.key, name=node.name, variant=node.variant.label())
            for mount, dep in node.deps.items():
                g.add_edge(dep, node.id, mount=mount)
        return g


class _Planner:
    def __init__(self, rs: RecipeSet, lock: Lock, host: HostInfo) -> None:
        self.rs = rs
        self.lock = lock
        self.host = host
        self.decls = declarations(rs)
        self.nodes: dict[str, Node] = {}
        self._axes: dict[str, frozenset[str]] = {}
        self._ids: dict[tuple[str, Variant], str] = {}  # (recipe, full variant) -> node id
        self._variants: dict[str, Variant] = {}  # node id -> its variant (the full one restricted)
        self._host_dicts: dict[tuple[str, ...], dict[str, str]] = {}
        self._decls_of: dict[str, list[InputDecl]] = {}  # recipe -> its input declarations
        # node id -> the ids the walk visited below it, in order (its deps' ids; an unavailable
        # node has no deps but the walk still made its children): what lets `planner.replan`
        # repeat this walk's order over a cached plan without the recipes.
        self.walk: dict[str, list[str]] = {}
        for decl in self.decls.values():
            self._decls_of.setdefault(decl.recipe, []).append(decl)

    def _build_inputs(self, r: Recipe) -> list[str]:
        if builder(r.build.builder).covers_variants:
            return []  # an image covers every platform and CUDA variant: no axes of its own
        return r.deps + r.toolchains + ([r.build.rootfs] if r.build.rootfs else [])

    def effective_axes(self, name: str) -> frozenset[str]:
        """A recipe's own axes plus those of everything its build consumes (iterative: deep
        chains must not hit Python's recursion limit)."""
        known = self._axes.get(name)
        if known is not None:
            return known
        stack: list[tuple[str, bool]] = [(name, False)]
        on_path: set[str] = set()
        while stack:
            n, ready = stack.pop()
            if n in self._axes:
                continue
            r = self.rs.get(n)
            children = self._build_inputs(r) + list(r.requires)
            if not ready:
                if n in on_path:
                    raise GraphError(f"dependency cycle through {n}", where=r.file)
                on_path.add(n)
                stack.append((n, True))
                stack.extend(reversed([(c, False) for c in children if c not in self._axes]))
                continue
            on_path.discard(n)
            axes = set(r.axes)
            if "host" not in axes and any(src.platform_dependent() for src in r.all_sources().values()):
                axes.add("platform")
            for dep in self._build_inputs(r):
                axes |= self._axes[dep]
            if r.platforms and not builder(r.build.builder).covers_variants and "host" not in r.axes:
                axes.add("platform")  # (a host-axis recipe's `platforms` are the build platforms it supports)
            self._axes[n] = frozenset(axes)
        return self._axes[name]

    def _image_platforms(self, r: Recipe) -> list[str]:
        """An image's platforms: the set's, or those of them its recipe is restricted to."""
        return [p for p in self.rs.config.platforms if not r.platforms or p in r.platforms]

    def _children(self, r: Recipe, full: Variant) -> list[tuple[str, str, Variant]]:
        """(mount, recipe, variant to instantiate it with) for each build input of `r`."""
        if builder(r.build.builder).covers_variants:
            assert r.image is not None
            parts = ([r.image.base] if r.image.base else []) + [d for g in r.image.layers for d in g]
            from .builders.cuda_archs import normalise_archs

            out = []
            for vname in sorted(self.rs.config.cuda) or ["default"]:
                for platform in self._image_platforms(r):
                    cuda = (tuple(normalise_archs(self.rs.config.archs(vname, platform)))
                            if self.rs.config.cuda else None)
                    pv = attrs.evolve(full, platform=platform, cuda=cuda)
                    out.extend((f"{vname}/{platform.replace('/', '-')}/{part}", part, pv) for part in parts)
            return out + self._build_root(r, full)
        return ([(dep, dep, full) for dep in r.deps] + [(f"toolchain/{tc}", tc, full) for tc in r.toolchains]
                + ([("rootfs", r.build.rootfs, full)] if r.build.rootfs else []) + self._build_root(r, full))

    def _build_root(self, r: Recipe, full: Variant) -> list[tuple[str, str, Variant]]:
        """The set's build root for this build platform, for every node that runs a sandboxed
        build on the build machine's side (and the image, whose compressor comes from it).
        Its digest is in the key through `deps`; its host axis is not one of the node's."""
        if not uses_build_root(r.build.builder, r.build.rootfs):
            return []
        cfg = self.rs.config
        if cfg.build_root is None:
            # As Nix's sandbox: no silent fallback to the machine's own tools.
            raise GraphError(f"{r.name} is a sandboxed {r.build.builder} build and the set names no build root: "
                             "set build-root to a debian-rootfs recipe of pinned .debs (axes = [\"host\"]), or "
                             "build-root = \"host\" to build with this machine's /usr (not hermetic: keys then "
                             "carry its package versions)", where=f"recipes/{self.rs.name}/set.toml: build-root")
        if cfg.root_recipe is None:
            return []  # build-root = "host": the host packages go into the key instead
        return [(BUILD_ROOT_MOUNT, cfg.root_recipe, Variant(host=full.host))]

    def _id(self, name: str, full: Variant) -> str:
        key = (name, full)
        nid = self._ids.get(key)
        if nid is None:
            variant = full.restrict(self.effective_axes(name))
            nid = self._ids[key] = node_id(name, variant)
            self._variants[nid] = variant  # what `_make_node` keys the node with
        return nid

    # Re-planning after an edit (`planner.replan`): the cached plan's rows by node id, and the
    # recipes whose nodes are made again; every other node the walk reaches keeps its row and
    # is visited by `keep`. None for a plan from scratch.
    old_rows: Optional[dict] = None
    dirty: frozenset[str] = frozenset()

    def keep(self, stack: list, nid: str, row: Optional[tuple]) -> None:
        raise NotImplementedError  # set by `planner.replan.replanner`

    def instantiate(self, name: str, full: Variant) -> str:
        """The node of recipe `name` for variant `full`, creating it and its build inputs
        (iteratively, dependencies first). Re-planning walks the same way, with the kept
        nodes' entries (recipe None) visited by `keep` (tests/test_replan.py)."""
        # A node's entry is visited twice: first its children are pushed (their ids, the
        # children and the recipe are kept in the entry), then it is made, once they are.
        stack: list[tuple[Optional[str], Any, Optional[tuple]]] = [(name, full, None)]
        nodes, old = self.nodes, self.old_rows
        while stack:
            n, v, made_from = stack.pop()
            if n is None:  # a kept node, by id (v)
                self.keep(stack, v, made_from)
                continue
            if made_from is None:
                nid = self._id(n, v)
                if nid in nodes:
                    continue
                if old is not None and nid in old and n not in self.dirty:
                    stack.append((None, nid, None))
                    continue
                r = self.rs.get(n)
                below = [(mount, self._id(c, cv), c, cv) for mount, c, cv in self._children(r, v)]
                stack.append((n, v, (r, below, nid)))
                # reversed: the first declared dependency is created first, as recursion would
                stack.extend(reversed([(c, cv, None) for _m, cid, c, cv in below if cid not in nodes]))
                continue
            r, below, nid = made_from
            if nid in nodes:  # (a cycle would bring it here twice; validation refuses those)
                continue
            self.walk[self._make_node(r, v, nid, {mount: cid for mount, cid, _c, _cv in below})] = [
                cid for _m, cid, _c, _cv in below]
        return self._id(name, full)

    def _unavailable(self, r: Recipe, variant: Variant, why: str) -> str:
        nid = node_id(r.name, variant)
        pre = Preimage(name=r.name, version=r.version, variant=variant,
                       builder=BuilderSpec(kind=r.build.builder, version=builder(r.build.builder).version),
                       env={}, inputs={}, patches=(), deps={}, source_date_epoch=self.lock.source_date_epoch,
                       impure=False, unavailable=why)
        self.nodes[nid] = Node(id=nid, recipe=r.name, name=r.name, version=r.version, variant=variant,
                               key=pre.key(), preimage=pre, builder=r.build.builder, deps={}, requires=(),
                               inputs={}, estimate=0.0, memory=r.resources.memory_bytes, cores=r.resources.cores,
                               unavailable=why)
        return nid

    def _make_node(self, r: Recipe, full: Variant, nid: str, deps: dict[str, str]) -> str:
        """Node `nid` (`_id(r.name, full)`) of recipe `r`, its build inputs `deps` made."""
        variant = self._variants[nid]
        if r.platforms and "host" in r.axes and variant.host not in r.platforms:
            raise GraphError(f"{r.name} is made only for build platforms {', '.join(r.platforms)}, and this "
                             f"machine is {variant.host}", where=r.file)
        if (r.platforms and "host" not in r.axes and variant.platform not in r.platforms
                and r.build.builder != "oci-image"):  # an image's platforms are its manifests'
            if variant.platform is None:
                raise GraphError(f"{r.name} is built only for {', '.join(r.platforms)}, not {variant.platform}",
                                 where=r.file)
            # Needed on a platform it is not built for (a base built for amd64 only, under an
            # arm64 build): a node that cannot be built, shown as blocked, refused by realise.
            return self._unavailable(r, variant, f"{r.name} is built only for {', '.join(r.platforms)}")
        if full.cuda is None and "cuda" in self._axes[r.name]:
            raise GraphError(f"{r.name} uses the cuda axis but set.toml defines no cuda variants",
                             where=r.file)
        requires = tuple(r.requires)
        inputs = self._inputs(r, variant)
        b = builder(r.build.builder)
        impure = r.build.impure or (not self.host.sandbox and not b.builtin)
        image = None
        if b.covers_variants:
            from .builders.cuda_archs import normalise_archs

            assert r.image is not None
            inputs.update(self._base_image_inputs(r))
            image = ImageFields(
                image=attrs.asdict(r.image), platforms=tuple(self._image_platforms(r)),
                # As the kernels' own nodes spell them: `9.0a` and ` sm_90a ` are one arch list.
                cuda_variants={k: {p: normalise_archs(self.rs.config.archs(k, p)) for p in self._image_platforms(r)}
                               if isinstance(v, dict) else normalise_archs(v)
                               for k, v in sorted(self.rs.config.cuda.items())},
                **b.extra_fields(self.rs, self.lock, r))
        pre = Preimage(
            name=r.name, version=r.version, variant=variant,
            builder=BuilderSpec(kind=r.build.builder, version=b.version,
                                settings=r.build.settings, script=r.build.script or None),
            env=dict(sorted(r.build.env.items())),
            inputs={k: InputPin(tree=v.tree, unpacked=v.unpacks) for k, v in sorted(inputs.items())
                    if not k.startswith("patch/")},
            patches=tuple(PatchPin(name=p.label, strip=p.strip, tree=inputs[f"patch/{p.label}"].tree)
                          for p in r.patches),
            deps={mount: self.nodes[dep].key for mount, dep in sorted(deps.items())},
            source_date_epoch=self.lock.source_date_epoch, impure=impure,
            host=None if b.builtin or BUILD_ROOT_MOUNT in deps or r.build.rootfs else self._host_packages(r, variant),
            resources=None if b.builtin else {"cores": r.resources.cores},
            image=image,
        )
        node = Node(
            id=nid, recipe=r.name, name=r.name, version=r.version, variant=variant, key=pre.key(),
            preimage=pre, builder=r.build.builder, deps=deps, requires=requires, inputs=inputs,
            estimate=r.estimate_seconds, memory=r.resources.memory_bytes, cores=r.resources.cores,
            impure=impure, limits=None if b.builtin else r.resources.limits(),
        )
        self.nodes[nid] = node
        return nid

    def _base_image_inputs(self, r: Recipe) -> dict[str, InputRef]:
        """An image on a pulled registry base reuses that base's own layer blobs and config:
        the base's pinned image input, per platform, is an input of the image node too."""
        assert r.image is not None
        base = self.rs.get(r.image.base) if r.image.base else None
        if base is None or base.build.builder != "image-rootfs":
            return {}
        out = {}
        for platform in self._image_platforms(r):
            (ref,) = self._inputs(base, Variant(platform=platform)).values()
            out[f"base-image/{platform.replace('/', '-')}"] = ref
        return out

    def _host_packages(self, r: Recipe, variant: Variant) -> dict[str, str]:
        if r.build.rootfs:
            return {}  # the build runs inside its root filesystem, whose digest is a dep
        names = [n for group in builder(r.build.builder).host_groups(variant.platform) for n in HOST_PACKAGES[group]]
        key = tuple(names)
        found = self._host_dicts.get(key)
        if found is None:  # one dict per kind of build, not one per node (shared: never mutated)
            found = self._host_dicts[key] = {n: self.host.packages.get(n, "absent") for n in sorted(names)}
        return found

    def _inputs(self, r: Recipe, variant: Variant) -> dict[str, InputRef]:
        out: dict[str, InputRef] = {}
        for decl in self._decls_of.get(r.name, ()):
            li = self.lock.inputs.get(decl.id)
            if li is None:
                raise LockError(f"not in the lock: run `planner lock {self.rs.name}`", where=decl.id)
            platform = None if decl.platforms == (ANY,) else (variant.platform or variant.host)
            if decl.source is not None and not decl.source.for_platform(platform):
                continue  # an apt input whose per-platform names leave this platform out
            if li.status != "locked":
                # A prefetched tree hash keys the node as the real content will; without one,
                # the key names the input, not the error text of the machine that tried.
                pin = li.pins.get(platform or ANY) or li.pins.get(ANY)
                tree = pin.tree if pin is not None and pin.tree else f"unlocked:{decl.id}"
                filename = pin.filename if pin is not None else None
            else:
                pin = li.pin(platform)
                tree = pin.tree or ""
                filename = pin.filename
            out[decl.name] = InputRef(decl=decl.id, platform=platform, tree=tree, unpacks=decl.unpacks,
                                      filename=filename, locked=li.status == "locked")
        return out


@gc_paused()
def plan(rs: RecipeSet, lock: Lock, host: HostInfo, *, target: str | None = None) -> Plan:
    """Expand the set's target for every platform × CUDA variant into a node graph."""
    return expand(_Planner(rs, lock, host), target)


def expand(p: _Planner, target: str | None) -> Plan:
    """The plan of `target` (default: the set's) made by planner `p`."""
    rs, lock, host = p.rs, p.lock, p.host
    target = rs.config.target if target is None else target  # (an empty --target is no recipe's name)
    r = rs.get(target)
    variant_names: list[Optional[str]] = list(rs.config.cuda) or [None]
    targets: list[str] = []
    roots: list[str] = []
    from .builders.cuda_archs import normalise_archs

    covers = builder(r.build.builder).covers_variants
    if covers:
        variant_names = [None]
    for vname in variant_names:
        platforms = [None] if covers else [
            pl for pl in rs.config.platforms if not r.platforms or pl in r.platforms]
        for platform in platforms:
            cuda = tuple(normalise_archs(rs.config.archs(vname, platform))) if vname is not None else None
            full = Variant(platform=platform, cuda=cuda, host=host.platform)
            nid = p.instantiate(target, full)
            if nid not in targets:
                targets.append(nid)
            roots.append(nid)
            # Run-time requirements are resolved for the consumer's variant: a pure-Python
            # package needs the CUDA kernel of whichever platform it is installed on.
            queue, seen = list(r.requires), set()
            while queue:
                req = queue.pop(0)
                if req in seen:
                    continue
                seen.add(req)
                roots.append(p.instantiate(req, full))
                queue.extend(rs.get(req).requires)
    # Insertion order of `nodes` is already dependencies-first (post-order instantiation).
    return Plan(set=rs.name, nodes=p.nodes, targets=tuple(targets), source_date_epoch=lock.source_date_epoch,
                roots=tuple(dict.fromkeys(roots)), walk=p.walk, axes=p._axes)


def builds_natively(node: Node) -> bool:
    """Whether the node's builder can only build for the machine it runs on: a PEP 517 wheel
    compiles with the build's own Python and compiler (nvcc cross-compiles, the pep517 CUDA
    frontend does not)."""
    settings = node.preimage.builder.settings
    return node.builder == "python-wheel" or (node.builder == "cuda-wheel" and settings.get("frontend") == "pep517")


def unbuildable_here(plan: Plan, ids: Iterable[str], build_platform: str,
                     emulated: frozenset[str] = frozenset()) -> list[Node]:
    """Nodes among `ids` that would build for another platform than `build_platform` with a
    builder that only builds natively: refused before anything runs, never built wrong. Inside
    a root filesystem of their own platform they build where that platform is `emulated` (its
    Python and compilers run under the emulator, as natively)."""
    out = []
    for nid in ids:
        n = plan.nodes[nid]
        if builds_natively(n) and n.variant.platform not in (None, build_platform) and not (
                "rootfs" in n.deps and n.variant.platform in emulated):
            out.append(n)
    return out


def cuda_variant_name(rs: RecipeSet, archs: Optional[tuple[str, ...]]) -> Optional[str]:
    from .builders.cuda_archs import normalise_archs

    for name in rs.config.cuda:
        for platform in rs.config.platforms:
            if archs is not None and tuple(normalise_archs(rs.config.archs(name, platform))) == archs:
                return name
    return None
