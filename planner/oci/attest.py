"""SBOM (SPDX 2.3 JSON) and provenance (in-toto Statement v1, SLSA provenance v1) of an image.

Both are files beside the OCI layout in the oci-image node's output (`attestations/`), never
blobs of the layout and never referenced from an index or manifest: the image digest stays a
function of the image's content, while the attestations may name the lock, node keys and the
planner version. They are deterministic too (canonical ordering, times = SOURCE_DATE_EPOCH,
no store paths), so the node's output digest is reproducible like any other.

What they can say depends on the preimage: with the `attest` field `preimage_extras` adds (the
lock's pins of every input the image is built from, its digests, the planner version), the SBOM lists
every source, patch and Debian package with hashes; without them it lists what the build itself
sees: the wheels installed (sha256 of each file) and the base's Debian packages (from its dpkg
status: name, version, architecture).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from .facts import BuildFacts, ImageFacts
from .image import rfc3339

SBOM_FILE = "sbom.spdx.json"
PROVENANCE_FILE = "provenance.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:planner:build-type:oci-image:v1"
BUILDER_ID = "urn:planner:builder:local"
TREE_DIGEST_KEY = "planner-tree-v1"  # planner's tree hash (reference/tree-hash.md), not a plain blake3


def _spdx_id(*parts: str) -> str:
    return "SPDXRef-" + "-".join(re.sub(r"[^A-Za-z0-9.]+", ".", p).strip(".") or "x" for p in parts)


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def _dump(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)


def _planner_version(build: BuildFacts) -> str:
    if build.planner is not None:
        return build.planner
    from .. import __version__

    return __version__


def _deb_arch(platform: str) -> str:
    return platform.split("/")[1] if "/" in platform else platform


# ---------------------------------------------------------------------------------------------
# SBOM


class _Spdx:
    """The packages and relationships of one SPDX document, deduplicated by SPDX id."""

    def __init__(self) -> None:
        self.packages: dict[str, dict[str, Any]] = {}
        self.relationships: set[tuple[str, str, str]] = set()

    def package(self, spdx_id: str, **fields: Any) -> str:
        doc = {
            "SPDXID": spdx_id,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
        }
        doc.update({k: v for k, v in fields.items() if v not in (None, [], "")})
        self.packages.setdefault(spdx_id, doc)
        return spdx_id

    def relate(self, a: str, kind: str, b: str) -> None:
        self.relationships.add((a, kind, b))


def sbom_document(facts: ImageFacts, build: BuildFacts) -> dict[str, Any]:
    doc = _Spdx()
    image_ids = _image_packages(doc, facts)
    deb_pins, input_ids = _lock_packages(doc, build.lock)
    image_recipes = _manifest_packages(doc, facts, image_ids, deb_pins, input_ids)
    # Inputs of recipes that are not installed themselves (toolchains, the base's debs aside):
    # they are build dependencies of every image.
    for recipe, ids in sorted(input_ids.items()):
        if recipe in image_recipes:
            continue
        for sid in ids:
            for iid in image_ids.values():
                doc.relate(sid, "BUILD_DEPENDENCY_OF", iid)

    digests = sorted(d.digest for d in facts.indexes.values())
    namespace_id = hashlib.sha256("\n".join(digests).encode()).hexdigest()[:32]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{facts.name}-{facts.version}",
        "documentNamespace": f"urn:planner:spdx:{quote(facts.name)}-{quote(facts.version)}:{namespace_id}",
        "creationInfo": {
            "created": rfc3339(build.source_date_epoch),
            "creators": [f"Tool: planner-{_planner_version(build)}"],
        },
        "documentDescribes": [image_ids[v] for v in sorted(image_ids)],
        "packages": [doc.packages[k] for k in sorted(doc.packages)],
        "relationships": [
            {"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b}
            for a, kind, b in sorted(doc.relationships)
        ],
    }




def _image_packages(doc: _Spdx, facts: ImageFacts) -> dict[str, str]:
    """One package per image index (variant), described by the document."""
    image_ids = {}
    for variant, index in sorted(facts.indexes.items()):
        ann = dict(index.annotations)
        image_ids[variant] = doc.package(
            _spdx_id("Image", variant),
            name=f"{facts.name}:{variant}",
            versionInfo=facts.version,
            primaryPackagePurpose="CONTAINER",
            checksums=[{"algorithm": "SHA256", "checksumValue": index.hex}],
            externalRefs=[{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                           "referenceLocator": f"pkg:oci/{quote(facts.name)}@sha256%3A{index.hex}?tag={quote(variant)}"}],
            comment=("OCI image index over " + ", ".join(sorted({m.platform for m in facts.manifests}))
                     + (f"; CUDA archs {ann['dev.planner.cuda.archs']}" if "dev.planner.cuda.archs" in ann else "")),
        )
        doc.relate("SPDXRef-DOCUMENT", "DESCRIBES", image_ids[variant])

    return image_ids


def _lock_packages(doc: _Spdx, lock: Optional[dict]) -> tuple[dict[tuple[str, str], dict], dict[str, list[str]]]:
    """Pins from the lock (when the graph put them in the preimage), by recipe: the Debian pins
    by (platform, package), and the SPDX ids of every other input."""
    lock_inputs: dict[str, dict] = (lock or {}).get("inputs", {})
    deb_pins: dict[tuple[str, str], dict] = {}  # (platform, package) -> pin
    input_ids: dict[str, list[str]] = {}  # recipe -> SPDX ids of its (non-apt) inputs
    for id_, li in sorted(lock_inputs.items()):
        if li["kind"] == "apt":
            pkg = li["origin"].split("=", 1)[0]
            for plat, pin in li["pins"].items():
                deb_pins[(plat, pkg)] = pin
            continue
        for plat, pin in sorted(li["pins"].items()):
            plat_part = [] if plat == "any" else [plat]
            checks = [{"algorithm": "SHA256", "checksumValue": pin["sha256"]}] if pin.get("sha256") else []
            location = "NOASSERTION"
            if li["kind"] == "git" and pin.get("url") and pin.get("commit"):
                location = f"git+{pin['url']}@{pin['commit']}"
            elif pin.get("url") and li["kind"] in ("url", "patch"):
                location = pin["url"]
            refs = []
            if li["kind"] == "pypi" and pin.get("version"):
                pname = li["origin"].split("==", 1)[0]
                refs.append({"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                             "referenceLocator": f"pkg:pypi/{quote(pname.lower())}@{quote(pin['version'])}"
                                                 + (f"?file_name={quote(pin['filename'])}" if pin.get("filename") else "")})
            sid = doc.package(
                _spdx_id("Input", li["recipe"], li["name"], *plat_part),
                name=id_,
                versionInfo=pin.get("version") or pin.get("commit"),
                packageFileName=pin.get("filename"),
                downloadLocation=location,
                primaryPackagePurpose="SOURCE",
                checksums=checks,
                externalRefs=refs,
                comment=f"{li['kind']} input {li['origin']}" + (f" [{plat}]" if plat_part else "")
                        + (f"; planner tree hash {pin['tree']}" if pin.get("tree") else ""),
            )
            input_ids.setdefault(li["recipe"], []).append(sid)

    return deb_pins, input_ids


def _manifest_packages(doc: _Spdx, facts: ImageFacts, image_ids: dict[str, str],
                       deb_pins: dict[tuple[str, str], dict], input_ids: dict[str, list[str]]) -> set[str]:
    """Per platform manifest: its wheels (generated from their recipes' inputs) and Debian
    packages; returns the recipes installed in the image."""
    image_recipes = {w.recipe for m in facts.manifests for w in m.wheels}
    for m in facts.manifests:
        plat = m.platform
        mid = doc.package(
            _spdx_id("Manifest", m.variant, plat),
            name=f"{facts.name}:{m.variant}-{plat.replace('/', '-')}",
            versionInfo=facts.version,
            primaryPackagePurpose="CONTAINER",
            checksums=[{"algorithm": "SHA256", "checksumValue": m.descriptor.hex}],
            comment=f"image manifest for {plat}; layers " + ", ".join(layer.descriptor.digest for layer in m.layers),
        )
        doc.relate(image_ids[m.variant], "CONTAINS", mid)
        for w in m.wheels:
            wid = doc.package(
                _spdx_id("Wheel", w.distribution, w.version, w.sha256[:16]),
                name=w.distribution,
                versionInfo=w.version,
                packageFileName=w.filename,
                primaryPackagePurpose="LIBRARY",
                checksums=[{"algorithm": "SHA256", "checksumValue": w.sha256}],
                externalRefs=[{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                               "referenceLocator": f"pkg:pypi/{quote(w.distribution.lower())}@{quote(w.version)}"
                                                   f"?file_name={quote(w.filename)}"}],
                comment=f"wheel built by planner recipe {w.recipe}, installed under /usr/local",
            )
            doc.relate(mid, "CONTAINS", wid)
            for sid in input_ids.get(w.recipe, ()):
                doc.relate(wid, "GENERATED_FROM", sid)
        for pkg, version, arch in m.debian:
            pin = deb_pins.get((plat, pkg), {})
            did = doc.package(
                _spdx_id("Deb", pkg, version, arch),
                name=pkg,
                versionInfo=version,
                packageFileName=pin.get("filename"),
                primaryPackagePurpose="OPERATING-SYSTEM" if pkg.startswith("libc6") else "LIBRARY",
                checksums=[{"algorithm": "SHA256", "checksumValue": pin["sha256"]}] if pin.get("sha256") else [],
                externalRefs=[{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                               "referenceLocator": f"pkg:deb/debian/{quote(pkg)}@{quote(version)}?arch={quote(arch)}"}],
                comment=f"Debian package unpacked into the base layer for {plat}",
            )
            doc.relate(mid, "CONTAINS", did)
    return image_recipes


# ---------------------------------------------------------------------------------------------
# Provenance


def _lock_dependencies(lock: dict) -> list[dict[str, Any]]:
    """The lockfile, the recipe set and every pinned input as resolved dependencies."""
    deps: list[dict[str, Any]] = []
    deps.append({
        "uri": f"planner:lockfiles/{lock['set']}.lock",
        "digest": {"sha256": lock["sha256"], "blake3": _hex(lock["blake3"])},
    })
    deps.append({
        "uri": f"planner:recipes/{lock['set']}",
        "digest": {"blake3": _hex(lock["recipes"])},
        "annotations": {"what": "deep checksum of the recipe set and its local patches (lock `recipes`)"},
    })
    for id_, li in sorted(lock["inputs"].items()):
        for plat, pin in sorted(li["pins"].items()):
            digest: dict[str, str] = {}
            if pin.get("sha256"):
                digest["sha256"] = pin["sha256"]
            if pin.get("tree"):
                digest[TREE_DIGEST_KEY] = _hex(pin["tree"])
            if li["kind"] == "git" and pin.get("commit"):
                digest["gitCommit"] = pin["commit"]
            entry: dict[str, Any] = {"name": id_ if plat == "any" else f"{id_} [{plat}]", "digest": digest}
            if pin.get("url"):
                entry["uri"] = pin["url"]
            entry["annotations"] = {"kind": li["kind"], "origin": li["origin"]}
            deps.append(entry)
    return deps


def provenance_statement(facts: ImageFacts, build: BuildFacts) -> dict[str, Any]:
    lock: Optional[dict] = build.lock
    deps = _lock_dependencies(lock) if lock else []
    for d in sorted(build.deps, key=lambda d: d.mount):
        deps.append({
            "name": f"node:{d.mount}",
            "digest": {TREE_DIGEST_KEY: _hex(d.digest)},
            "annotations": {"input_key": d.input_key, "build_key": d.build_key, "name": d.name},
        })
    seen_wheels: set[str] = set()
    for m in facts.manifests:
        for w in m.wheels:
            if w.sha256 in seen_wheels:
                continue
            seen_wheels.add(w.sha256)
            deps.append({"name": w.filename, "digest": {"sha256": w.sha256},
                         "annotations": {"recipe": w.recipe}})

    external: dict[str, Any] = {
        "target": build.target,
        "image": build.image,
        "platforms": list(build.platforms),
        "cuda_variants": build.cuda_variants,
    }
    if lock:
        external["set"] = lock["set"]
        external["recipes"] = lock["recipes"]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": f"{facts.name}:{variant}", "digest": {"sha256": index.hex}}
            for variant, index in sorted(facts.indexes.items())
        ],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {
                    "planner": _planner_version(build),
                    "builder": build.builder,
                    "source_date_epoch": build.source_date_epoch,
                    "compressor": facts.compressor,
                    "input_key": build.input_key,
                    "build_key": build.build_key,
                    "manifests": {
                        f"{m.variant}-{m.platform.replace('/', '-')}": m.descriptor.digest
                        for m in facts.manifests
                    },
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"planner": _planner_version(build)}},
                "metadata": {"invocationId": build.build_key},
            },
        },
    }


def write_attestations(dest: Path, facts: ImageFacts, build: BuildFacts) -> tuple[Path, Path]:
    sbom = dest / SBOM_FILE
    prov = dest / PROVENANCE_FILE
    _write(sbom, _dump(sbom_document(facts, build)))
    _write(prov, _dump(provenance_statement(facts, build)))
    return sbom, prov
