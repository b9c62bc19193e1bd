"""Plain facts about one image build, as the attestations describe them.

The image builder (`planner.builders.image`) gathers them; `planner.oci.attest` writes them
out. Nothing here knows a planner node or build request: the format library stays a library.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

from .descriptor import Descriptor
from .layer import Layer


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


@attrs.frozen
class DependencyFacts:
    """One build output the image was made from."""

    mount: str
    digest: str  # planner tree digest of the output
    build_key: str
    name: str
    input_key: str


@attrs.frozen
class BuildFacts:
    """How the image was asked for: what the provenance's build definition records."""

    target: str
    input_key: str
    build_key: str
    builder: dict[str, Any]  # kind, version, settings as keyed
    image: dict[str, Any]  # the recipe's [image] table
    platforms: tuple[str, ...]
    cuda_variants: dict[str, Any]
    source_date_epoch: int
    deps: tuple[DependencyFacts, ...]
    planner: Optional[str] = None  # the planner version keyed in, if any
    lock: Optional[dict[str, Any]] = None  # the lock summary keyed in, if any
