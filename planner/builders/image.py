"""The `oci-image` builder: from store outputs to an OCI image layout with attestations.

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
inputs are staged once per build, and across builds the store's layer cache
(`planner.oci.layercache`) gives back any layer whose inputs are unchanged, so a rebuild for
an attestation-only change links its layers instead of compressing them again.

The index digest depends only on the layers' bytes, the `[image]` table and SOURCE_DATE_EPOCH:
the attestations (which name the lock, node keys and the planner version) live beside the
layout, never inside it. The OCI formats themselves are `planner.oci`'s; this module decides
what goes into them.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, TextIO

import attrs

from ..derivation import BUILD_ROOT_MOUNT, BuildRequest, ImageFields, Node, build_key
from ..errors import BuildError
from ..oci.base import reuse_base
from ..oci.descriptor import Descriptor, Platform, sha256_file
from ..oci.facts import BuildFacts, DependencyFacts, ImageFacts, ManifestFacts, WheelFacts
from ..oci.image import ImageConfig, cuda_annotations, write_image, write_index
from ..oci.layer import Layer, LayerSource, compressor_id, write_layer
from ..oci.layercache import CachedLayer, LayerCache, LayerKey, compressor_files
from ..oci.layout import LayoutImage, write_layout
from ..oci.sitepackages import Dist, layer_whiteouts, tree_dists, wheel_dist
from ..oci.wheels import install_wheel
from ..safetree import MAX_METADATA, Tree
from .image_requires import requires_from_wheels, requires_problems, wheel_metadata  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from ..lock import Lock
    from ..recipes import Recipe, RecipeSet

DEFAULT_VARIANT = "default"
ATTESTATIONS_DIR = "attestations"


# ---------------------------------------------------------------------------------------------
# What the image adds to its preimage (asked by graph.py through the builder registry)


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
    Consequence: any lock change rebuilds the image node. The rebuild costs seconds, not a
    recompression: every layer whose inputs are unchanged comes from the store's layer cache
    (`planner.oci.layercache`, keyed by what the layer's bytes depend on, verified by sha256 on
    use) and the layout comes out byte-identical; only new attestations are written.
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
        "compressor": compressor_id(recipe.image.compression, build_root=rs.config.root_recipe is not None),
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


def _variants(image: ImageFields) -> list[tuple[str, Optional[list[str]]]]:
    """CUDA variants in layout order: `default` first (what realise reports), then by name."""
    cv: dict[str, list[str]] = dict(image.cuda_variants or {})
    if not cv:
        return [(DEFAULT_VARIANT, None)]
    return sorted(cv.items(), key=lambda kv: (kv[0] != DEFAULT_VARIANT, kv[0]))


def _wheels_of(entry_path: Path) -> list[Path]:
    from ..safetree import regular_files

    return [p for p in regular_files(entry_path, where=entry_path.name) if p.name.endswith(".whl")]


def _base_packages(rootfs: Path) -> tuple[tuple[str, str, str], ...]:
    """(package, version, architecture) from the base's dpkg status, if it has one."""
    from ..debfile import parse_deb822

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


def build_image(node: Node, req: BuildRequest, out: Path, log: TextIO) -> None:
    pre = node.preimage
    if pre.image is None:
        raise BuildError(node.label(), "the preimage has no image fields")
    _ImageBuild(node, req, pre.image, out, log).run()


class _ImageBuild:
    """One oci-image build: its layers are staged once each and shared by every manifest."""

    def __init__(self, node: Node, req: BuildRequest, fields: ImageFields, out: Path, log: TextIO) -> None:
        self.node, self.req, self.fields, self.out, self.log = node, req, fields, out, log
        spec: dict[str, Any] = fields.image
        self.spec = spec
        self.platforms: list[str] = list(fields.platforms)
        self.sde: int = node.preimage.source_date_epoch
        self.compression = spec.get("compression") or "gzip"
        self.base: Optional[str] = spec.get("base")
        self.groups: list[list[str]] = [list(g) for g in spec.get("layers") or []]
        self.variants = _variants(fields)
        self.blobs = out / "blobs"
        self.staging_parent = out.parent / "tmp" if (out.parent / "tmp").is_dir() else out.parent
        self.layer_cache: dict[LayerKey, tuple[Layer, str, tuple[WheelFacts, ...]]] = {}
        self.wheel_facts: dict[Path, WheelFacts] = {}
        self.base_packages: dict[str, tuple[tuple[str, str, str], ...]] = {}
        self.base_dists: dict[str, dict[str, Dist]] = {}
        self.wheel_dists: dict[Path, Dist] = {}
        self.config = ImageConfig(
            env=[f"{k}={v}" for k, v in sorted((spec.get("env") or {}).items())],
            entrypoint=list(spec["entrypoint"]) if spec.get("entrypoint") else None,
            cmd=list(spec["cmd"]) if spec.get("cmd") else None,
            labels=spec.get("labels") or {},
        )
        # With a build root, deflate comes from its pinned zlib, not the zlib this Python links.
        from ..oci.zlibpin import load as load_zlib

        self.zpin = (load_zlib(req.deps[BUILD_ROOT_MOUNT].path)
                     if BUILD_ROOT_MOUNT in req.deps and self.compression == "gzip" else None)
        # zstd likewise: the build root's binary through its own loader, not the host's zstd.
        from ..oci.zstdpin import load as load_zstd

        self.zstdpin = (load_zstd(req.deps[BUILD_ROOT_MOUNT].path)
                        if BUILD_ROOT_MOUNT in req.deps and self.compression == "zstd" else None)
        self.compressor = compressor_id(self.compression, zlib_pin=self.zpin, zstd_pin=self.zstdpin)
        self.compressor_files = compressor_files(req.deps[BUILD_ROOT_MOUNT].path, self.compression) \
            if BUILD_ROOT_MOUNT in req.deps else ""
        self.cache = (LayerCache(req.caches / "layers", lambda line: self.log.write(line + "\n"))
                      if req.caches is not None else None)
        self.base_images = {name.split("/", 1)[1]: e for name, e in req.inputs.items()
                            if name.startswith("base-image/")}

    def fail(self, message: str) -> BuildError:
        return BuildError(self.node.label(), message)

    def dep(self, variant: str, platform: str, recipe: str):
        mount = f"{variant}/{platform.replace('/', '-')}/{recipe}"
        try:
            return self.req.deps[mount]
        except KeyError:
            raise self.fail(f"no dependency mounted as {mount}") from None

    def check_requires(self) -> None:
        """The run-time closure check, before any work."""
        first_v, first_p = self.variants[0][0], self.platforms[0]
        if self.fields.requires is not None:
            requires = {k: list(v) for k, v in self.fields.requires.items()}
        else:
            requires = requires_from_wheels(
                self.groups, {r: _wheels_of(self.dep(first_v, first_p, r).path) for g in self.groups for r in g})
        problems = requires_problems(self.groups, requires)
        if problems:
            raise self.fail("run-time requirements missing from the image's layers: " + "; ".join(problems)
                            + " (list them in [image] layers at or below their dependents)")

    def layer(self, key: LayerKey, label: str,
              make: Callable[[], tuple[Layer, str, tuple[WheelFacts, ...]]]) -> tuple[Layer, str, tuple[WheelFacts, ...]]:
        """A layer staged once per build, and across builds through the store's layer cache."""
        if key in self.layer_cache:
            return self.layer_cache[key]
        rec = self.cache.fetch(key, self.blobs) if self.cache is not None else None
        if rec is not None:
            got = (rec.layer, rec.what, rec.wheels)
            self.log.write(f"layer {rec.layer.descriptor.digest} ({rec.layer.descriptor.size} bytes): {label}: "
                           "reused from the layer cache\n")
        else:
            got = make()
            self.log.write(f"layer {got[0].descriptor.digest} ({got[0].descriptor.size} bytes): {label}\n")
            if self.cache is not None:
                self.cache.put(CachedLayer(key, *got), self.blobs)
        self.layer_cache[key] = got
        return got

    def layer_key(self, kind: str, recipes: Sequence[str], entries: Sequence[Any],
                  whiteouts: str = "") -> LayerKey:
        return LayerKey(kind, tuple(recipes), tuple(e.digest for e in entries), self.sde,  # type: ignore[arg-type]
                        self.compression, self.compressor, self.compressor_files, whiteouts=whiteouts)

    def wheel_layer(self, group: list[str], entries: list[Any],
                    visible: dict[str, Dist]) -> tuple[Layer, str, tuple[WheelFacts, ...]]:
        """The group's layer over the distributions lower layers installed (`visible`, by name,
        updated with the group's): it deletes what the versions it replaces had, as pip would."""
        dists = [self._wheel_dist(w) for e in entries for w in _wheels_of(e.path)]
        whiteouts, digest = layer_whiteouts(dists, visible)
        visible.update({d.name: d for d in dists})
        return self.layer(self.layer_key("wheels", group, entries, digest), ", ".join(group),
                          lambda: self._stage_wheels(group, entries, whiteouts))

    def _wheel_dist(self, whl: Path) -> Dist:
        if whl not in self.wheel_dists:
            self.wheel_dists[whl] = wheel_dist(whl)
        return self.wheel_dists[whl]

    def _site_dists(self, vname: str, platform: str) -> dict[str, Dist]:
        """The distributions of the base's site-packages (none known for a pulled registry base)."""
        if not self.base or self.base_images.get(platform.replace("/", "-")) is not None:
            return {}
        entry = self.dep(vname, platform, self.base)
        if entry.digest not in self.base_dists:
            self.base_dists[entry.digest] = tree_dists(entry.path)
        return dict(self.base_dists[entry.digest])

    def _stage_wheels(self, group: list[str], entries: list[Any],
                      whiteouts: Sequence[str] = ()) -> tuple[Layer, str, tuple[WheelFacts, ...]]:
        stage = Path(tempfile.mkdtemp(prefix="layer-", dir=self.staging_parent))
        facts: list[WheelFacts] = []
        try:
            root = stage / "root"
            root.mkdir()
            layer_tree = Tree(root, where=f"layer {', '.join(group)}")
            for recipe, entry in zip(group, entries):
                facts.extend(self._install(recipe, entry, layer_tree, stage))
            for path in whiteouts:
                layer_tree.write(path.lstrip("/"), b"")
            if whiteouts:
                self.log.write(f"  {len(whiteouts)} whiteouts delete the replaced versions' files\n")
            layer_tree.close()
            layer = write_layer([LayerSource(root)], self.blobs, source_date_epoch=self.sde,
                                compression=self.compression, zlib_pin=self.zpin,
                                zstd_pin=self.zstdpin)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        what = "planner: install " + ", ".join([f"{f.distribution} {f.version}" for f in facts]
                                               + [r for r, e in zip(group, entries) if not _wheels_of(e.path)])
        return layer, what, tuple(facts)

    def _install(self, recipe: str, entry: Any, layer_tree: Tree, stage: Path) -> list[WheelFacts]:
        wheels = _wheels_of(entry.path)
        if not wheels:
            # A file tree (apt-tools' unpacked .debs, say): laid down as it is, at /.
            if not entry.path.is_dir() or entry.path.is_symlink() or not any(entry.path.iterdir()):
                raise self.fail(f"{recipe} has neither wheels nor a file tree to put in the image "
                                f"(its output: {entry.path.name})")
            with Tree(entry.path, where=f"output of {recipe}") as src:
                layer_tree.copy_from(src)
            self.log.write(f"  copied the tree of {recipe}\n")
            return []
        facts = []
        for whl in wheels:
            # Installed alone into an empty folder (installer's writes follow links),
            # then merged without following any link an earlier member planted.
            one = Path(tempfile.mkdtemp(prefix="wheel-", dir=stage))
            installed = install_wheel(whl, one)
            with Tree(one, where=f"wheel {whl.name} of {recipe}") as src:
                layer_tree.copy_from(src, move=True)
            shutil.rmtree(one)
            if whl not in self.wheel_facts:
                dist, version, _ = wheel_metadata(whl)  # as written in METADATA, not the file name
                self.wheel_facts[whl] = WheelFacts(recipe, whl.name, sha256_file(whl).split(":", 1)[1],
                                                   whl.stat().st_size, dist, version or installed.version)
            facts.append(self.wheel_facts[whl])
            self.log.write(f"  installed {whl.name} ({len(installed.files)} files)\n")
        return facts

    def _debian(self, entry: Any) -> tuple[tuple[str, str, str], ...]:
        if entry.digest not in self.base_packages:
            self.base_packages[entry.digest] = _base_packages(entry.path)
        return self.base_packages[entry.digest]

    def base_layers(self, vname: str, platform: str):
        """(layers, history, config, debian packages) of the base for one variant × platform."""
        pulled = self.base_images.get(platform.replace("/", "-"))
        if pulled is not None:
            layers, history, config = reuse_base(pulled.path, self.blobs, self.config)
            self.log.write(f"base {self.base} [{platform}]: {len(layers)} layers reused by digest\n")
            return layers, history, config, self._debian(self.dep(vname, platform, self.base))
        if not self.base:
            return [], [], self.config, ()
        entry = self.dep(vname, platform, self.base)
        base = self.base

        def make() -> tuple[Layer, str, tuple[WheelFacts, ...]]:
            return (write_layer([LayerSource(entry.path)], self.blobs, source_date_epoch=self.sde,
                                compression=self.compression, zlib_pin=self.zpin, zstd_pin=self.zstdpin),
                    f"planner: base {base}", ())

        layer, what, _ = self.layer(self.layer_key("base", [base], [entry]), f"base {base} [{platform}]", make)
        return [layer], [what], self.config, self._debian(entry)

    def manifest(self, vname: str, platform: str, ann: dict[str, str]) -> ManifestFacts:
        layers, history, config, debian = self.base_layers(vname, platform)
        layers, history = list(layers), list(history)
        wheels: list[WheelFacts] = []
        visible = self._site_dists(vname, platform)
        for group in self.groups:
            layer, what, facts = self.wheel_layer(group, [self.dep(vname, platform, r) for r in group], visible)
            layers.append(layer)
            history.append(what)
            wheels.extend(facts)
        desc = write_image(layers, config, Platform.parse(platform), self.blobs, source_date_epoch=self.sde,
                           annotations=ann, history=history)
        return ManifestFacts(vname, platform, desc, tuple(layers), tuple(history), tuple(wheels), debian)

    def run(self) -> None:
        if not self.groups and not self.base:
            raise self.fail("the image has no base and no layers")
        self.check_requires()
        manifests: list[ManifestFacts] = []
        images: list[LayoutImage] = []
        indexes: dict[str, Descriptor] = {}
        for vname, archs_of in self.variants:
            per_platform: list[Descriptor] = []
            for platform in self.platforms:
                archs = archs_of.get(platform) if isinstance(archs_of, dict) else archs_of
                ann = cuda_annotations(vname, archs) if archs else {}
                m = self.manifest(vname, platform, ann)
                per_platform.append(m.descriptor)
                manifests.append(m)
            index = write_index(per_platform, self.blobs, annotations=ann)
            indexes[vname] = index
            images.append(LayoutImage(vname, index))
            self.log.write(f"{vname}: index {index.digest}\n")
        write_layout(self.out, images, verify=True)
        _check_no_stray_blobs(self.node, self.out)

        from ..oci.attest import write_attestations

        facts = ImageFacts(name=self.node.name, version=self.node.version, indexes=indexes,
                           manifests=tuple(manifests), compressor=self.compressor)
        write_attestations(self.out / ATTESTATIONS_DIR, facts, build_facts(self.node, self.req))
        self.log.write(f"attestations in {ATTESTATIONS_DIR}/\n")


def build_facts(node: Node, req: BuildRequest) -> BuildFacts:
    """What the provenance records of how the image was asked for."""
    pre = node.preimage
    assert pre.image is not None
    attest = pre.image.attest or {}
    deps = tuple(DependencyFacts(mount=m, digest=e.digest, build_key=e.key, name=e.name,
                                 input_key=pre.deps.get(m, "")) for m, e in sorted(req.deps.items()))
    return BuildFacts(target=node.name, input_key=node.key, build_key=build_key(node, req.deps),
                      builder=pre.builder.to_json(), image=pre.image.image, platforms=pre.image.platforms,
                      cuda_variants=pre.image.cuda_variants, source_date_epoch=pre.source_date_epoch, deps=deps,
                      planner=str(attest["planner"]) if "planner" in attest else None, lock=attest.get("lock"))


def _check_no_stray_blobs(node: Node, out: Path) -> None:
    """Every blob in the layout is reachable from index.json: nothing else may ship."""
    from ..oci.layout import read_layout

    lay = read_layout(out)
    reachable = {d.hex for top in lay.manifests for d in lay.walk(top)}
    present = {p.name for p in (out / "blobs" / "sha256").iterdir()}
    stray = sorted(present - reachable)
    if stray:
        raise BuildError(node.label(), f"blobs not reachable from index.json: {', '.join(stray[:5])}")
