"""The `oci-image` and `debian-rootfs` builders: from store outputs to an OCI image layout.

`debian_rootfs` unpacks the node's pinned `.deb` inputs (one platform) into a merged-/usr tree
with `assemble_rootfs`; that tree, as it is, is the image's base layer.

`build_image` writes, into the node's output:

    oci-layout, index.json, blobs/sha256/…   one OCI layout: per CUDA variant an image index
                                             over the set's platforms, tagged `<variant>`, and
                                             each platform manifest tagged `<variant>-<os>-<arch>`
    attestations/sbom.spdx.json              SPDX 2.3 SBOM        } separate files, referenced
    attestations/provenance.json             in-toto SLSA v1      } by nothing in the layout

Per variant × platform the layers are: the base rootfs (the `base` recipe's output for that
platform), then one layer per `[image] layers` group, made by installing every wheel of the
group's recipes into an empty staging root. A layer is a function of its inputs' bytes only
(paths, times, owners and modes are normalised by `write_layer`), so a group whose wheels are
the same for every platform and variant (pure-Python packages) is one blob shared by every
manifest, and a change to the top package re-ships only the top layer. Groups with identical
inputs are staged once per build.

The index digest depends only on the layers' bytes, the `[image]` table and SOURCE_DATE_EPOCH:
the attestations (which name the lock, node keys and the planner version) live beside the
layout, never inside it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Mapping, Optional, Sequence, TextIO

import attrs

from ..errors import BuildError, PlannerError, UnsafeTree
from ..safetree import MAX_METADATA, Tree, blob_hex, checked_rel
from .descriptor import Descriptor, Platform, sha256_file
from .image import ImageConfig, cuda_annotations, write_image, write_index
from .layer import Layer, LayerSource, compressor_id, write_layer
from .layout import LayoutImage, write_layout
from .rootfs import assemble_rootfs, install_wheel

if TYPE_CHECKING:
    from ..build import BuildRequest
    from ..graph import Node
    from ..lock import Lock
    from ..recipes import Recipe, RecipeSet

DEFAULT_VARIANT = "default"
ATTESTATIONS_DIR = "attestations"

# Debian's names for the OCI architectures planner builds for.
_DEB_ARCH = {"amd64": "amd64", "arm64": "arm64"}


# ---------------------------------------------------------------------------------------------
# debian-rootfs


def debian_rootfs(node: "Node", req: "BuildRequest", out: Path, log: TextIO) -> None:
    """The node's `.deb` inputs unpacked into `out` for `node.variant.platform` (no scripts run)."""
    platform = node.variant.platform or node.variant.host  # a build root is per build platform
    if not platform:
        raise BuildError(node.label(), "the debian-rootfs builder needs the platform or host axis "
                                       "(axes = [\"platform\"] or [\"host\"])")
    arch = _DEB_ARCH.get(platform.split("/")[1] if "/" in platform else platform)
    if arch is None:
        raise BuildError(node.label(), f"no Debian architecture for platform {platform}")
    from ..safetree import regular_files

    debs: list[Path] = []
    for name, entry in sorted(req.inputs.items()):
        found = [p for p in regular_files(entry.path, where=f"input {name}") if _is_deb(p)]
        if not found:
            raise BuildError(node.label(), f"input {name} is not a .deb (give it kind = \"apt\")")
        debs.extend(found)
    if not debs:
        raise BuildError(node.label(), "no .deb inputs: list the packages as [inputs.NAME] kind = \"apt\"")
    rootfs = assemble_rootfs(debs, out, arch=arch)
    for pkg in rootfs.packages:
        log.write(f"unpacked {pkg.package} {pkg.version} ({pkg.architecture})\n")
    log.write(f"merged-/usr links: {', '.join(rootfs.merged_usr)}\n")
    links = node.preimage["builder"]["settings"].get("links", {})
    if not isinstance(links, dict):
        raise BuildError(node.label(), "settings.links must be a table of path = target")
    for path, target in sorted(links.items()):
        add_link(out, path, target, where=node.label())
        log.write(f"link /{path} -> {target}\n")


def add_link(root: Path, path: str, target: str, *, where: str) -> None:
    """A symlink that a maintainer script (update-alternatives) would have made. The link's own
    path must be new and lie inside the root, under real directories; its target only ever
    resolves inside the sandbox, so any relative name in the same folder is fine."""
    parts = [p for p in str(path).split("/") if p]
    if (not isinstance(target, str) or not parts or str(path).startswith("/") or ".." in parts
            or "/" in target or target in ("", ".", "..") or "\0" in target + str(path)):
        raise BuildError(where, f"settings.links: {path!r} -> {target!r} must be a relative path inside the root "
                                "to a name in the same folder")
    parent = root
    for part in parts[:-1]:
        parent = parent / part
        if parent.is_symlink() or not parent.is_dir():
            raise BuildError(where, f"settings.links: /{'/'.join(parts)} is not under a real directory of the root")
    link = parent / parts[-1]
    if link.exists() or link.is_symlink():
        raise BuildError(where, f"settings.links: /{'/'.join(parts)} already exists")
    if not (parent / target).is_file():
        raise BuildError(where, f"settings.links: /{'/'.join(parts)} -> {target}: no such file in the root")
    os.symlink(target, link)


def _is_deb(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"!<arch>\n"


# ---------------------------------------------------------------------------------------------
# Run-time requirement check (pure)


def requires_problems(layers: Sequence[Sequence[str]], requires: Mapping[str, Sequence[str]]) -> list[str]:
    """What is wrong with the layer groups given each recipe's direct run-time `requires`.

    Every recipe in a group needs the whole run-time closure of what it requires to be in some
    group at or below its own (bottom first). Returns one sentence per problem; none is fine.
    """
    problems: list[str] = []
    position: dict[str, int] = {}
    for i, group in enumerate(layers):
        for name in group:
            if name in position:
                problems.append(f"{name} is listed in layer groups {position[name] + 1} and {i + 1}")
            else:
                position[name] = i
    for i, group in enumerate(layers):
        for name in group:
            via: dict[str, list[str]] = {name: []}
            queue = [name]
            while queue:
                cur = queue.pop(0)
                for dep in requires.get(cur, ()):
                    if dep in via:
                        continue
                    via[dep] = via[cur] + ([cur] if cur != name else [])
                    queue.append(dep)
                    j = position.get(dep)
                    if j is not None and j <= i:
                        continue
                    chain = f" (through {' -> '.join(via[dep])})" if via[dep] else ""
                    where = "is in no layer group" if j is None else f"is in layer group {j + 1}, above it"
                    problems.append(f"{name} (layer group {i + 1}) needs {dep}{chain}, which {where}")
    return problems


def _requires_from_wheels(layers: Sequence[Sequence[str]],
                          wheels: Mapping[str, Sequence[Path]]) -> dict[str, list[str]]:
    """Fallback when the preimage carries no recipe `requires`: the wheels' Requires-Dist,
    kept only where they name a distribution that one of the image's recipes provides (a
    requirement on anything else cannot be judged from here)."""
    provider: dict[str, str] = {}
    metas: dict[str, list[str]] = {}
    for recipe in (n for g in layers for n in g):
        for whl in wheels.get(recipe, ()):
            name, _version, requires = _wheel_metadata(whl)
            provider[_normalise(name)] = recipe
            metas.setdefault(recipe, []).extend(requires)
    out: dict[str, list[str]] = {}
    for recipe, reqs in metas.items():
        deps = [provider[n] for n in map(_normalise, reqs) if n in provider and provider[n] != recipe]
        out[recipe] = sorted(set(deps))
    return out


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_metadata(whl: Path) -> tuple[str, str, list[str]]:
    """Name, version and unconditional Requires-Dist names (no extras) of a wheel."""
    with zipfile.ZipFile(whl) as zf:
        meta_name = next((n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        if meta_name is None:
            raise PlannerError("wheel has no .dist-info/METADATA", where=str(whl))
        # Read in-process: a small wheel can inflate to gigabytes (a zip bomb). Cap what is taken.
        if zf.getinfo(meta_name).file_size > MAX_METADATA:
            raise PlannerError(f"{meta_name} is larger than {MAX_METADATA >> 20} MiB", where=whl.name)
        with zf.open(meta_name) as f:
            raw = f.read(MAX_METADATA + 1)
        if len(raw) > MAX_METADATA:
            raise PlannerError(f"{meta_name} is larger than {MAX_METADATA >> 20} MiB", where=whl.name)
        text = raw.decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    fields: list[tuple[str, str]] = []
    for line in head.splitlines():
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + " " + line.strip())
        elif ":" in line:
            k, v = line.split(":", 1)
            fields.append((k.strip().lower(), v.strip()))
    name = next((v for k, v in fields if k == "name"), whl.name.split("-")[0])
    version = next((v for k, v in fields if k == "version"), "")
    reqs = []
    for k, v in fields:
        if k != "requires-dist":
            continue
        spec, _, marker = v.partition(";")
        if "extra" in marker:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if m:
            reqs.append(m.group(1))
    return name, version, reqs


# ---------------------------------------------------------------------------------------------
# What the graph puts into an oci-image preimage (called by graph.py)


def preimage_extras(rs: "RecipeSet", lock: "Lock", recipe: "Recipe") -> dict[str, Any]:
    """Extra preimage fields of an `oci-image` node, for graph.py to merge into its preimage.

    What the image's bytes or validity depend on:
    - `requires`: each recipe's direct run-time requires, for every recipe in the run-time
      closure of the image's layers (the builder checks the layer order and names what is
      missing);
    - `compressor`: the exact layer compressor (`compressor_id`): another zlib is another key.
    What only the attestations beside the layout depend on, all under `attest` so that `why`
    and `diff` can tell an attestation-only change from one that changes the image:
    - `attest.planner`: the planner version;
    - `attest.lock`: the lockfile's digests, the recipe set digest and the pins of every input
      of every recipe the image is built from.
    Consequence: any lock change rebuilds the image node (seconds; the layout comes out
    byte-identical unless its inputs changed).
    """
    from .. import __version__
    from ..lock import declarations

    assert recipe.image is not None
    layer_recipes = [n for g in recipe.image.layers for n in g]
    requires: dict[str, list[str]] = {}
    queue = list(layer_recipes)
    while queue:
        name = queue.pop(0)
        if name in requires or name not in rs.recipes:
            continue
        requires[name] = list(rs.recipes[name].requires)
        queue.extend(requires[name])
    # Every recipe the image's bytes come from: base, layers, their build inputs, recursively.
    built: set[str] = set()
    queue = ([recipe.image.base] if recipe.image.base else []) + layer_recipes
    while queue:
        name = queue.pop()
        if name in built or name not in rs.recipes:
            continue
        built.add(name)
        queue.extend(rs.recipes[name].deps + rs.recipes[name].toolchains + rs.recipes[name].requires)
    return {
        "requires": dict(sorted(requires.items())),
        "compressor": compressor_id(recipe.image.compression, build_root=rs.config.build_root is not None),
        "attest": {
            "planner": __version__,
            "lock": lock_summary(lock, [d for d in declarations(rs).values() if d.recipe in built]),
        },
    }


def lock_summary(lock: "Lock", decls: Iterable[Any]) -> dict[str, Any]:
    """The lock as the attestations need it: file digests, recipe digest, the given inputs' pins."""
    import hashlib

    from ..hashing import bytes_digest
    from ..lock import to_toml

    text = to_toml(lock).encode()
    inputs: dict[str, Any] = {}
    for d in sorted(decls, key=lambda d: d.id):
        li = lock.inputs.get(d.id)
        if li is None:
            continue
        inputs[d.id] = {
            "recipe": d.recipe,
            "name": d.name,
            "kind": li.kind,
            "origin": li.origin,
            "status": li.status,
            "pins": {p: {k: v for k, v in sorted(attrs.asdict(pin).items()) if v is not None}
                     for p, pin in sorted(li.pins.items())},
        }
    return {
        "sha256": hashlib.sha256(text).hexdigest(),
        "blake3": bytes_digest(text),
        "set": lock.set,
        "recipes": lock.recipes,
        "source_date_epoch": lock.source_date_epoch,
        "inputs": inputs,
    }


# ---------------------------------------------------------------------------------------------
# oci-image


@attrs.frozen
class WheelFacts:
    recipe: str
    filename: str
    sha256: str
    size: int
    distribution: str
    version: str


@attrs.frozen
class ManifestFacts:
    variant: str
    platform: str
    descriptor: Descriptor
    layers: tuple[Layer, ...]
    history: tuple[str, ...]
    wheels: tuple[WheelFacts, ...]
    debian: tuple[tuple[str, str, str], ...]  # (package, version, architecture) of the base


@attrs.frozen
class ImageFacts:
    """What one oci-image build made, for the attestations."""

    name: str
    version: str
    indexes: dict[str, Descriptor]  # variant -> image index
    manifests: tuple[ManifestFacts, ...]
    compressor: str


def _variants(pre: Mapping[str, Any]) -> list[tuple[str, Optional[list[str]]]]:
    """CUDA variants in layout order: `default` first (what realise reports), then by name."""
    cv: dict[str, list[str]] = dict(pre.get("cuda_variants") or {})
    if not cv:
        return [(DEFAULT_VARIANT, None)]
    return sorted(cv.items(), key=lambda kv: (kv[0] != DEFAULT_VARIANT, kv[0]))


def _wheels_of(entry_path: Path) -> list[Path]:
    from ..safetree import regular_files

    return [p for p in regular_files(entry_path, where=entry_path.name) if p.name.endswith(".whl")]


def _base_packages(rootfs: Path) -> tuple[tuple[str, str, str], ...]:
    """(package, version, architecture) from the base's dpkg status, if it has one."""
    from ..archive import parse_deb822

    with Tree(rootfs, where=f"base {rootfs.name}") as tree:
        st = tree.lstat("var/lib/dpkg/status")
        if st is None or not stat.S_ISREG(st.st_mode):
            return ()
        text = tree.read_bytes("var/lib/dpkg/status", limit=MAX_METADATA).decode("utf-8", "replace")
    out = []
    for para in text.split("\n\n"):
        if not para.strip():
            continue
        f = parse_deb822(para)
        if f.get("Package"):
            out.append((f["Package"], f.get("Version", ""), f.get("Architecture", "")))
    return tuple(sorted(out))


def build_image(node: "Node", req: "BuildRequest", out: Path, log: TextIO) -> None:
    pre = node.preimage
    spec: dict[str, Any] = pre["image"]
    platforms: list[str] = list(pre["platforms"])
    sde: int = int(pre["source_date_epoch"])
    compression = spec.get("compression") or "gzip"
    from ..graph import BUILD_ROOT_MOUNT
    from .zlibpin import load as load_zlib

    # With a build root, deflate comes from its pinned zlib, not the zlib this Python links.
    zpin = load_zlib(req.deps[BUILD_ROOT_MOUNT].path) if BUILD_ROOT_MOUNT in req.deps and compression == "gzip" else None
    base: Optional[str] = spec.get("base")
    groups: list[list[str]] = [list(g) for g in spec.get("layers") or []]
    variants = _variants(pre)
    if not groups and not base:
        raise BuildError(node.label(), "the image has no base and no layers")

    def dep(variant: str, platform: str, recipe: str):
        mount = f"{variant}/{platform.replace('/', '-')}/{recipe}"
        try:
            return req.deps[mount]
        except KeyError:
            raise BuildError(node.label(), f"no dependency mounted as {mount}") from None

    # The run-time closure check, before any work.
    first_v, first_p = variants[0][0], platforms[0]
    if "requires" in pre:
        requires = {k: list(v) for k, v in pre["requires"].items()}
    else:
        requires = _requires_from_wheels(
            groups, {r: _wheels_of(dep(first_v, first_p, r).path) for g in groups for r in g})
    problems = requires_problems(groups, requires)
    if problems:
        raise BuildError(node.label(), "run-time requirements missing from the image's layers: "
                         + "; ".join(problems) + " (list them in [image] layers at or below their dependents)")

    blobs = out / "blobs"
    staging_parent = out.parent / "tmp" if (out.parent / "tmp").is_dir() else out.parent
    layer_cache: dict[tuple, tuple[Layer, str, tuple[WheelFacts, ...]]] = {}
    wheel_facts: dict[Path, WheelFacts] = {}
    base_packages: dict[str, tuple[tuple[str, str, str], ...]] = {}
    config = ImageConfig(
        env=[f"{k}={v}" for k, v in sorted((spec.get("env") or {}).items())],
        entrypoint=list(spec["entrypoint"]) if spec.get("entrypoint") else None,
        cmd=list(spec["cmd"]) if spec.get("cmd") else None,
        labels=spec.get("labels") or {},
    )
    base_images = {name.split("/", 1)[1]: e for name, e in req.inputs.items() if name.startswith("base-image/")}

    def wheel_layer(group: list[str], entries: list[Any]) -> tuple[Layer, str, tuple[WheelFacts, ...]]:
        key = ("wheels", tuple(group), tuple(e.digest for e in entries))
        if key in layer_cache:
            return layer_cache[key]
        stage = Path(tempfile.mkdtemp(prefix="layer-", dir=staging_parent))
        facts: list[WheelFacts] = []
        try:
            root = stage / "root"
            root.mkdir()
            layer_tree = Tree(root, where=f"layer {', '.join(group)}")
            for recipe, entry in zip(group, entries):
                wheels = _wheels_of(entry.path)
                if not wheels:
                    # A file tree (apt-tools' unpacked .debs, say): laid down as it is, at /.
                    if not entry.path.is_dir() or entry.path.is_symlink() or not any(entry.path.iterdir()):
                        raise BuildError(node.label(), f"{recipe} has neither wheels nor a file tree to put in "
                                                       f"the image (its output: {entry.path.name})")
                    with Tree(entry.path, where=f"output of {recipe}") as src:
                        layer_tree.copy_from(src)
                    log.write(f"  copied the tree of {recipe}\n")
                    continue
                for whl in wheels:
                    # Installed alone into an empty folder (installer's writes follow links),
                    # then merged without following any link an earlier member planted.
                    one = Path(tempfile.mkdtemp(prefix="wheel-", dir=stage))
                    installed = install_wheel(whl, one)
                    with Tree(one, where=f"wheel {whl.name} of {recipe}") as src:
                        layer_tree.copy_from(src, move=True)
                    shutil.rmtree(one)
                    if whl not in wheel_facts:
                        dist, version, _ = _wheel_metadata(whl)  # as written in METADATA, not the file name
                        wheel_facts[whl] = WheelFacts(recipe, whl.name, sha256_file(whl).split(":", 1)[1], whl.stat().st_size,
                                                      dist, version or installed.version)
                    facts.append(wheel_facts[whl])
                    log.write(f"  installed {whl.name} ({len(installed.files)} files)\n")
            layer_tree.close()
            layer = write_layer([LayerSource(root)], blobs, source_date_epoch=sde, compression=compression,
                                zlib_pin=zpin)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        what = "planner: install " + ", ".join([f"{f.distribution} {f.version}" for f in facts]
                                               + [r for r, e in zip(group, entries) if not _wheels_of(e.path)])
        layer_cache[key] = (layer, what, tuple(facts))
        log.write(f"layer {layer.descriptor.digest} ({layer.descriptor.size} bytes): {', '.join(group)}\n")
        return layer_cache[key]

    manifests: list[ManifestFacts] = []
    images: list[LayoutImage] = []
    indexes: dict[str, Descriptor] = {}
    for vname, archs_of in variants:
        per_platform: list[Descriptor] = []
        for platform in platforms:
            archs = archs_of.get(platform) if isinstance(archs_of, dict) else archs_of
            ann = cuda_annotations(vname, archs) if archs else {}
            layers: list[Layer] = []
            history: list[str] = []
            wheels: list[WheelFacts] = []
            debian: tuple[tuple[str, str, str], ...] = ()
            pconfig = config
            pulled = base_images.get(platform.replace("/", "-"))
            if pulled is not None:
                base_layers, base_history, pconfig = _reuse_base(pulled.path, blobs, config)
                layers.extend(base_layers)
                history.extend(base_history)
                log.write(f"base {base} [{platform}]: {len(base_layers)} layers reused by digest\n")
                entry = dep(vname, platform, base)
                if entry.digest not in base_packages:
                    base_packages[entry.digest] = _base_packages(entry.path)
                debian = base_packages[entry.digest]
            elif base:
                entry = dep(vname, platform, base)
                key = ("base", entry.digest)
                if key not in layer_cache:
                    layer = write_layer([LayerSource(entry.path)], blobs, source_date_epoch=sde,
                                        compression=compression, zlib_pin=zpin)
                    layer_cache[key] = (layer, f"planner: base {base}", ())
                    log.write(f"layer {layer.descriptor.digest} ({layer.descriptor.size} bytes): "
                              f"base {base} [{platform}]\n")
                layers.append(layer_cache[key][0])
                history.append(layer_cache[key][1])
                if entry.digest not in base_packages:
                    base_packages[entry.digest] = _base_packages(entry.path)
                debian = base_packages[entry.digest]
            for group in groups:
                layer, what, facts = wheel_layer(group, [dep(vname, platform, r) for r in group])
                layers.append(layer)
                history.append(what)
                wheels.extend(facts)
            desc = write_image(layers, pconfig, Platform.parse(platform), blobs, source_date_epoch=sde,
                               annotations=ann, history=history)
            per_platform.append(desc)
            manifests.append(ManifestFacts(vname, platform, desc, tuple(layers), tuple(history), tuple(wheels), debian))
        index = write_index(per_platform, blobs, annotations=ann)
        indexes[vname] = index
        images.append(LayoutImage(vname, index))
        log.write(f"{vname}: index {index.digest}\n")
    write_layout(out, images, verify=True)
    _check_no_stray_blobs(node, out)

    from .attest import write_attestations

    facts = ImageFacts(name=node.name, version=node.version, indexes=indexes, manifests=tuple(manifests),
                       compressor=compressor_id(compression, zlib_pin=zpin))
    write_attestations(out / ATTESTATIONS_DIR, node, req, facts)
    log.write(f"attestations in {ATTESTATIONS_DIR}/\n")


def _reuse_base(image: Path, blobs: Path, config: ImageConfig) -> tuple[list[Layer], list[str], ImageConfig]:
    """The pulled base's own layers (blobs copied by digest, not re-packed: the registry
    already holds them, and they keep their digests) and its config under the recipe's.

    As a Dockerfile's FROM: the base's Env, WorkingDir, User, Entrypoint/Cmd and Labels carry
    over; the recipe's env (by name), labels, entrypoint and cmd win."""
    import json

    where = f"base image {image.name}"
    with Tree(image, where=where) as src:
        manifest = json.loads(src.read_bytes("manifest.json", limit=MAX_METADATA))
        base_cfg = json.loads(src.read_bytes(f"blobs/sha256/{blob_hex(manifest['config']['digest'], where)}",
                                             limit=MAX_METADATA))
        diff_ids = base_cfg.get("rootfs", {}).get("diff_ids", [])
        if len(diff_ids) != len(manifest.get("layers", [])):
            raise PlannerError(f"base config lists {len(diff_ids)} diff_ids for {len(manifest.get('layers', []))} layers",
                               where=str(image))
        dest = blobs / "sha256"
        dest.mkdir(parents=True, exist_ok=True)
        layers = []
        with Tree(dest, where="image blobs") as out:
            for raw, diff_id in zip(manifest["layers"], diff_ids):
                hexd = blob_hex(raw["digest"], where)
                if out.lstat(hexd) is None:
                    with src.open_file(f"blobs/sha256/{hexd}") as f:
                        out.write(hexd, f)
                layers.append(Layer(Descriptor(media_type=raw["mediaType"], digest=raw["digest"], size=int(raw["size"])),
                                    diff_id=diff_id, compressor="base image"))
    made = [h.get("created_by", "") for h in base_cfg.get("history", []) if not h.get("empty_layer")]
    history = made if len(made) == len(layers) else [f"base layer {i}" for i in range(len(layers))]
    rc = base_cfg.get("config") or {}
    env = {e.split("=", 1)[0]: e for e in rc.get("Env") or []}
    env.update({e.split("=", 1)[0]: e for e in config.env})
    merged = ImageConfig(
        env=list(env.values()),
        entrypoint=config.entrypoint if config.entrypoint is not None else rc.get("Entrypoint"),
        cmd=config.cmd if (config.cmd is not None or config.entrypoint is not None) else rc.get("Cmd"),
        working_dir=config.working_dir or rc.get("WorkingDir"),
        labels={**(rc.get("Labels") or {}), **dict(config.labels)},
        user=config.user or rc.get("User"),
    )
    return layers, history, merged


def _check_no_stray_blobs(node: "Node", out: Path) -> None:
    """Every blob in the layout is reachable from index.json: nothing else may ship."""
    from .layout import read_layout

    lay = read_layout(out)
    reachable = {d.hex for top in lay.manifests for d in lay.walk(top)}
    present = {p.name for p in (out / "blobs" / "sha256").iterdir()}
    stray = sorted(present - reachable)
    if stray:
        raise BuildError(node.label(), f"blobs not reachable from index.json: {', '.join(stray[:5])}")



def apply_layer(blob: "Path | BinaryIO", root: Tree) -> None:
    """Apply one image layer to `root` the way a container runtime does: later layers replace
    earlier entries, `.wh.NAME` deletes NAME, `.wh..wh..opq` empties its directory. Nothing is
    written, linked or deleted through a symlink (an earlier layer's `etc -> /etc` stays a
    link, and a member under it is refused), no member escapes, times/owners/special files are
    not kept."""
    import tarfile

    where = root.where
    with tarfile.open(fileobj=blob, mode="r:*") as tf:  # type: ignore[call-overload]
        for m in tf:
            name = "/".join(checked_rel(m.name.lstrip("/"), where=where, what="layer member"))
            if not name:
                continue
            parent, base = os.path.split(name)
            if base == ".wh..wh..opq":
                root.empty_dir(parent)
                continue
            if base.startswith(".wh."):
                if parent:
                    root.mkdir(parent)
                root.remove(f"{parent}/{base[4:]}" if parent else base[4:])
                continue
            if m.isdir():
                st = root.lstat(name)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    root.remove(name)
                root.mkdir(name)
                root.chmod(name, 0o755)
            elif m.isreg():
                src = tf.extractfile(m)
                assert src is not None
                root.write(name, src, executable=bool(m.mode & 0o100))
            elif m.issym():
                root.symlink(name, m.linkname)
            elif m.islnk():
                target = "/".join(checked_rel(m.linkname.lstrip("/"), where=where, what="hardlink target"))
                root.hardlink(name, target)
            # devices and fifos are not part of a build root: skipped


def image_rootfs(node: "Node", req: "BuildRequest", out: Path, log) -> None:
    """The root filesystem of a pinned registry image, for builds that run inside it."""
    import json

    from ..errors import BuildError

    (name, entry), = sorted(req.inputs.items())
    where = f"image input {name}"
    with Tree(entry.path, where=where) as src, Tree(out, where=f"{name} root filesystem") as root:
        manifest = json.loads(src.read_bytes("manifest.json", limit=MAX_METADATA))
        for layer in manifest.get("layers", []):
            digest = layer["digest"]
            with src.open_file(f"blobs/sha256/{blob_hex(digest, where)}") as blob:
                try:
                    apply_layer(blob, root)
                except UnsafeTree as e:
                    raise UnsafeTree(e.message, where=f"{where} layer {digest}") from None
            log.write(f"applied layer {digest}\n")
    if not any(out.iterdir()):
        raise BuildError(node.label(), f"image input {name} has no layers")
