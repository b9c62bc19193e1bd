"""Image config, manifest and index documents, written as canonical-JSON blobs.

Every document is serialised with sorted keys and no whitespace, and every time in it is the
source date, so a document's digest depends only on what it describes.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import attrs

from ..errors import OciError
from .descriptor import (
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    Annotations,
    Descriptor,
    Platform,
    to_annotations,
    write_json_blob,
)
from .layer import Layer

ANNOTATION_CUDA_ARCHS = "dev.planner.cuda.archs"
ANNOTATION_CUDA_VARIANT = "dev.planner.cuda.variant"

PLATFORMS = (Platform.parse("linux/amd64"), Platform.parse("linux/arm64"))


def _strings(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen
class ImageConfig:
    """The runtime part of an image config (the spec's `config` object)."""

    env: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    entrypoint: tuple[str, ...] | None = attrs.field(default=None, converter=_strings)
    cmd: tuple[str, ...] | None = attrs.field(default=None, converter=_strings)
    working_dir: str | None = None
    labels: Annotations = attrs.field(default=(), converter=to_annotations)
    user: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.user:
            out["User"] = self.user
        return out


def rfc3339(source_date_epoch: int) -> str:
    # From the epoch in UTC explicitly: TZ must not change the text.
    return datetime.fromtimestamp(source_date_epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _arch_key(arch: str) -> tuple[int, str]:
    m = re.fullmatch(r"sm_(\d+)([a-z]*)", arch)
    return (int(m.group(1)), m.group(2)) if m else (1 << 30, arch)


def cuda_annotations(variant: str, archs: Iterable[str]) -> dict[str, str]:
    """`dev.planner.cuda.*` annotations; archs in numeric order (sm_90a before sm_100a) so the
    caller's ordering does not change a digest."""
    ordered = sorted(set(archs), key=_arch_key)
    return {ANNOTATION_CUDA_ARCHS: ",".join(ordered), ANNOTATION_CUDA_VARIANT: variant}


def config_document(
    config: ImageConfig,
    platform: Platform,
    layers: Sequence[Layer],
    *,
    source_date_epoch: int,
    history: Sequence[str] | None = None,
) -> dict[str, Any]:
    created = rfc3339(source_date_epoch)
    if history is not None and len(history) != len(layers):
        raise OciError(f"history has {len(history)} entries for {len(layers)} layers")
    comments = history if history is not None else [f"planner layer {i}" for i in range(len(layers))]
    doc: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": created,
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": c} for c in comments],
    }
    if platform.variant:
        doc["variant"] = platform.variant
    return doc


def write_config(
    config: ImageConfig,
    platform: Platform,
    layers: Sequence[Layer],
    blobs_dir: Path,
    *,
    source_date_epoch: int,
    history: Sequence[str] | None = None,
) -> Descriptor:
    doc = config_document(config, platform, layers, source_date_epoch=source_date_epoch, history=history)
    return write_json_blob(blobs_dir, doc, MEDIA_CONFIG)


def write_manifest(
    config_desc: Descriptor,
    layers: Sequence[Layer | Descriptor],
    blobs_dir: Path,
    *,
    annotations: Mapping[str, str] | None = None,
    platform: Platform | None = None,
) -> Descriptor:
    """Write an image manifest; the returned descriptor carries `platform` and the same
    annotations, ready to be listed in an index."""
    layer_descs = [x.descriptor if isinstance(x, Layer) else x for x in layers]
    ann = to_annotations(annotations)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_desc.with_platform(None).to_json(),
        "layers": [d.with_platform(None).to_json() for d in layer_descs],
    }
    if ann:
        doc["annotations"] = dict(ann)
    desc = write_json_blob(blobs_dir, doc, MEDIA_MANIFEST)
    return attrs.evolve(desc, annotations=ann, platform=platform)


def write_image(
    layers: Sequence[Layer],
    config: ImageConfig,
    platform: Platform,
    blobs_dir: Path,
    *,
    source_date_epoch: int,
    annotations: Mapping[str, str] | None = None,
    history: Sequence[str] | None = None,
) -> Descriptor:
    """Config + manifest for one platform; returns the manifest's descriptor."""
    cfg = write_config(config, platform, layers, blobs_dir, source_date_epoch=source_date_epoch, history=history)
    return write_manifest(cfg, layers, blobs_dir, annotations=annotations, platform=platform)


def write_index(
    manifests: Sequence[Descriptor],
    blobs_dir: Path,
    *,
    annotations: Mapping[str, str] | None = None,
) -> Descriptor:
    """Write an image index over platform manifests (each descriptor must carry its platform,
    and no two the same one: a client picks by platform)."""
    seen: dict[Platform, str] = {}
    for m in manifests:
        if m.platform is None:
            raise OciError("manifest in an index has no platform", where=m.digest)
        if m.platform in seen:
            raise OciError(f"two manifests for platform {m.platform} ({seen[m.platform]})", where=m.digest)
        seen[m.platform] = m.digest
    ann = to_annotations(annotations)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [m.to_json() for m in manifests],
    }
    if ann:
        doc["annotations"] = dict(ann)
    desc = write_json_blob(blobs_dir, doc, MEDIA_INDEX)
    return attrs.evolve(desc, annotations=ann)
