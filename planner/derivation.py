"""Derivations: what a node is, its typed preimage, and its two keys.

A node's preimage is everything that can change its output. Its input key is
`key_of(preimage.to_json())`, known offline from the lock alone. Resolving a node replaces each
dependency's input key by that dependency's output digest (a "resolved derivation", as Nix
calls it): the build key. A dependency rebuilt to identical bytes leaves its dependents' build
keys unchanged (early cutoff).

This module is the one owner of the preimage's shape (`Preimage.to_json` is what keys hash,
byte for byte as before it was typed), of the mount-to-digest mapping, and of recording a
realisation (both preimages, then the realisation). It imports nothing of the planner above
hashing: graph, build, cache, executors and why all read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Union

import attrs

from .hashing import canonical_json, encode_value, key_from_json, key_of

if TYPE_CHECKING:
    from pathlib import Path

    from .limits import Limits
    from .store import Entry, RemoteEntry, Store

# v2: sandboxed builds carry `resources.cores` (their environment's NIX_BUILD_CORES and CPU count).
# v3: in a set with a build root, sandboxed builds and images depend on it (`deps.buildroot`, its
#     digest in the build key) and carry no `host` package versions.
PREIMAGE_FORMAT = "planner/derivation/v3"
# The dependency mount through which a node gets its set's build root (`/` of its sandbox).
BUILD_ROOT_MOUNT = "buildroot"

@attrs.frozen(order=True, cache_hash=True)  # a key of the planner's memo tables, hashed often
class Variant:
    """The values of the axes a node depends on; an absent axis is None."""

    platform: Optional[str] = None
    cuda: Optional[tuple[str, ...]] = None
    host: Optional[str] = None

    def restrict(self, axes: Iterable[str]) -> "Variant":
        keep = set(axes)
        return Variant(
            platform=self.platform if "platform" in keep else None,
            cuda=self.cuda if "cuda" in keep else None,
            host=self.host if "host" in keep else None,
        )

    def as_json(self) -> dict:
        out: dict[str, object] = {}
        if self.platform is not None:
            out["platform"] = self.platform
        if self.cuda is not None:
            out["cuda"] = list(self.cuda)
        if self.host is not None:
            out["host"] = self.host
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Variant":
        cuda = data.get("cuda")
        return cls(platform=data.get("platform"), cuda=tuple(cuda) if cuda is not None else None,
                   host=data.get("host"))

    def label(self) -> str:
        parts = []
        if self.platform:
            parts.append(self.platform)
        if self.cuda is not None:
            parts.append("+".join(self.cuda))
        if self.host:
            parts.append(f"host {self.host}")
        return ", ".join(parts)

    def axes(self) -> list[str]:
        return [a for a in ("platform", "cuda", "host") if getattr(self, a) is not None]


# -- the preimage ------------------------------------------------------------------------------

@attrs.frozen
class BuilderSpec:
    kind: str
    version: int
    settings: dict[str, Any] = attrs.field(factory=dict)
    script: Optional[str] = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "version": self.version, "settings": self.settings}
        if self.script:
            out["script"] = self.script
        return out


@attrs.frozen
class InputPin:
    """A fixed-output input as the preimage names it: its tree hash, and whether it is unpacked."""

    tree: str
    unpacked: bool


@attrs.frozen
class PatchPin:
    name: str
    strip: int
    tree: str


@attrs.frozen
class ImageFields:
    """What an `oci-image` preimage carries besides the common fields (added by its builder).

    `requires`, `compressor` and `attest` are absent from preimages written before the image
    builder added them; readers fall back where they are None."""

    image: dict[str, Any]
    platforms: tuple[str, ...]
    cuda_variants: dict[str, Any]
    requires: Optional[dict[str, list[str]]] = None
    compressor: Optional[str] = None
    attest: Optional[dict[str, Any]] = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"image": self.image, "platforms": list(self.platforms),
                               "cuda_variants": self.cuda_variants}
        for name in ("requires", "compressor", "attest"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


_IMAGE_KEYS = ("image", "platforms", "cuda_variants", "requires", "compressor", "attest")


@attrs.frozen
class Preimage:
    """Everything that can change a node's output. `to_json` is what the keys hash."""

    name: str
    version: str
    variant: Variant
    builder: BuilderSpec
    env: dict[str, str]
    inputs: dict[str, InputPin]
    patches: tuple[PatchPin, ...]
    deps: dict[str, str]  # mount -> dependency's input key (output digest once resolved)
    source_date_epoch: int
    impure: bool
    host: Optional[dict[str, str]] = None  # host-package versions; None for builtin/rootfs-less
    resources: Optional[dict[str, int]] = None  # sandboxed builds: {"cores": n} (v2)
    image: Optional[ImageFields] = None
    resolved: bool = False
    format: str = PREIMAGE_FORMAT
    unavailable: Optional[str] = None  # a node that cannot be built for its variant: why

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "variant": self.variant.as_json(),
            "builder": self.builder.to_json(),
            "env": dict(sorted(self.env.items())),
            "inputs": {k: {"tree": v.tree, "unpacked": v.unpacked} for k, v in sorted(self.inputs.items())},
            "patches": [{"name": p.name, "strip": p.strip, "tree": p.tree} for p in self.patches],
            "deps": dict(sorted(self.deps.items())),
            "source_date_epoch": self.source_date_epoch,
            "impure": self.impure,
        }
        if self.image is not None:
            out.update(self.image.to_json())
        if self.host is not None:
            out["host"] = self.host
        if self.resources is not None:
            out["resources"] = self.resources
        if self.resolved:
            out["resolved"] = True
        if self.unavailable is not None:
            out["unavailable"] = self.unavailable
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Preimage":
        """The typed form of a stored preimage (the store, a binary cache, a worker's request)."""
        b = data["builder"]
        image = None
        if "image" in data:
            image = ImageFields(image=data["image"], platforms=tuple(data.get("platforms", ())),
                                cuda_variants=data.get("cuda_variants", {}), requires=data.get("requires"),
                                compressor=data.get("compressor"), attest=data.get("attest"))
        return cls(
            name=data["name"], version=data["version"], variant=Variant.from_json(data.get("variant", {})),
            builder=BuilderSpec(kind=b["kind"], version=b["version"], settings=b.get("settings", {}),
                                script=b.get("script")),
            env=dict(data.get("env", {})),
            inputs={k: InputPin(tree=v["tree"], unpacked=v["unpacked"]) for k, v in data.get("inputs", {}).items()},
            patches=tuple(PatchPin(name=p["name"], strip=p["strip"], tree=p["tree"]) for p in data.get("patches", ())),
            deps=dict(data.get("deps", {})), source_date_epoch=int(data["source_date_epoch"]),
            impure=bool(data.get("impure", False)), host=data.get("host"), resources=data.get("resources"), image=image,
            resolved=bool(data.get("resolved", False)), format=data.get("format", PREIMAGE_FORMAT),
            unavailable=data.get("unavailable"),
        )

    def key(self) -> str:
        return key_from_json(self.canonical())

    def canonical(self) -> bytes:
        """`canonical_json(self.to_json())`, byte for byte (tests/test_hashing.py compares them).

        Written directly for a preimage without image fields: a plan of 10,000 nodes made
        10,000 `to_json` dicts and encoded each whole, the host package versions (the same
        dict for every node of a kind) every time, for a third of a node's cost. Each value is
        still encoded by the canonical encoder (or, a plain string, by its string encoder);
        only the top level and the builder's table, whose keys are fixed, are joined here, in
        sorted key order."""
        if self.image is not None:
            return canonical_json(self.to_json(), check=False)
        enc = encode_value
        b = self.builder
        parts = ['{"builder":{"kind":', enc(b.kind)]
        if b.script:
            parts += [',"script":', enc(b.script)]
        parts += [',"settings":', enc(b.settings), ',"version":', enc(b.version), '},"deps":', enc(self.deps),
                  ',"env":', enc(self.env), ',"format":', enc(self.format)]
        if self.host is not None:
            parts += [',"host":', _host_json(self.host)]
        parts += [',"impure":', "true" if self.impure is True else enc(self.impure), ',"inputs":']
        if self.inputs:
            parts.append(enc({k: {"tree": v.tree, "unpacked": v.unpacked} for k, v in self.inputs.items()}))
        else:
            parts.append("{}")
        parts += [',"name":', enc(self.name), ',"patches":']
        if self.patches:
            parts.append(enc([{"name": p.name, "strip": p.strip, "tree": p.tree} for p in self.patches]))
        else:
            parts.append("[]")
        if self.resolved:
            parts.append(',"resolved":true')
        if self.resources is not None:
            parts += [',"resources":', enc(self.resources)]
        parts += [',"source_date_epoch":', enc(self.source_date_epoch)]
        if self.unavailable is not None:
            parts += [',"unavailable":', enc(self.unavailable)]
        parts += [',"variant":', _variant_json(self.variant), ',"version":', enc(self.version), "}"]
        return "".join(parts).encode()

    def gpu(self) -> int:
        """GPUs a build asks for (`[build.settings] gpu = N`; true is one)."""
        gpu = self.builder.settings.get("gpu")
        if gpu is None or gpu is False:
            return 0
        if gpu is True:
            return 1
        try:
            return max(0, int(gpu))
        except (TypeError, ValueError):
            return 1


_HOST_JSON: dict[tuple, str] = {}
_VARIANT_JSON: dict["Variant", str] = {}


def _host_json(host: dict) -> str:
    """The host package versions' JSON: one dict per kind of build in a plan, encoded once."""
    k = tuple(host.items())
    found = _HOST_JSON.get(k)
    if found is None:
        if len(_HOST_JSON) > 64:  # a long-lived process (a worker) meets many: stay small
            _HOST_JSON.clear()
        found = _HOST_JSON[k] = encode_value(host)
    return found


def _variant_json(variant: "Variant") -> str:
    found = _VARIANT_JSON.get(variant)
    if found is None:
        if len(_VARIANT_JSON) > 64:
            _VARIANT_JSON.clear()
        found = _VARIANT_JSON[variant] = encode_value(variant.as_json())
    return found


# -- nodes -------------------------------------------------------------------------------------

@attrs.frozen
class InputRef:
    """A pinned input used by a node: which lock entry, for which platform."""

    decl: str  # lock id
    platform: Optional[str]
    tree: str
    unpacks: bool
    filename: Optional[str] = None
    locked: bool = True


@attrs.frozen
class Node:
    id: str
    recipe: str
    name: str
    version: str
    variant: Variant
    key: str
    preimage: Preimage
    builder: str
    deps: dict[str, str]  # mount name -> node id
    requires: tuple[str, ...]  # run-time: recipe names (instantiated per variant by the plan)
    inputs: dict[str, InputRef]  # input name -> pin
    estimate: float
    memory: int
    cores: int
    impure: bool = False
    unavailable: Optional[str] = None  # why it cannot be built for this variant (then it has no inputs)
    limits: Optional["Limits"] = None  # [resources] a sandboxed build is held to; never part of a key

    def label(self) -> str:
        v = self.variant.label()
        return f"{self.name} [{v}]" if v else self.name


def node_id(name: str, variant: Variant) -> str:
    label = variant.label()
    return f"{name}[{label}]" if label else name


# -- resolving ---------------------------------------------------------------------------------

@attrs.frozen
class Resolved:
    """A node's build key and the resolved preimage it hashes."""

    build_key: str
    preimage: Preimage


def resolve(node: Node, dep_digests: Mapping[str, str]) -> Resolved:
    """The node with each dependency's input key replaced by its output digest.

    `dep_digests` maps each of the node's mounts to that dependency's output digest."""
    pre = attrs.evolve(node.preimage, deps={mount: dep_digests[mount] for mount in node.deps}, resolved=True)
    return Resolved(pre.key(), pre)


def digests(deps: Mapping[str, Union["Entry", "RemoteEntry"]]) -> dict[str, str]:
    """mount -> output digest, from mount -> store (or cache) entry."""
    return {mount: e.digest for mount, e in deps.items()}


def build_key(node: Node, deps: Mapping[str, Union["Entry", "RemoteEntry"]]) -> str:
    return resolve(node, digests(deps)).build_key


def record(store: "Store", node: Node, resolved: Resolved, digest: str) -> None:
    """File a realisation: both preimages (so `why` can name what changed), then input key ->
    build key -> digest. The order matters: a realisation never names a missing preimage."""
    store.put_preimage(node.key, node.preimage.to_json())
    store.put_preimage(resolved.build_key, resolved.preimage.to_json())
    store.realise(node.key, resolved.build_key, digest)


def fixed_key(tree: str, unpacked: bool) -> str:
    """The key of a fixed-output input (a fetched source, a pinned file): its content, no recipe."""
    return key_of({"fixed": tree, "unpacked": unpacked})


# -- building ----------------------------------------------------------------------------------

@attrs.frozen
class BuildRequest:
    node: Node
    inputs: dict[str, "Entry"]  # input name -> fixed-output store entry
    deps: dict[str, "Entry"]  # mount -> dependency's output entry
    jobs: int = 1
    sandboxed: bool = True
    # The store's cache/ folder, where a builder may keep what is safe to reuse across builds
    # (verified on every use); None: no cache (`realise --check` rebuilds from scratch).
    caches: Optional[Path] = None


@attrs.frozen
class Built:
    entry: Any  # store.Entry, or a RemoteEntry left in a binary cache
    build_key: str
    seconds: float
    reused: bool  # another process (or an earlier run) already had this build key
    previous_digest: Optional[str] = None  # what this same build key produced before, if known
