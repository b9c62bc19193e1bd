"""OCI images as a format library: deterministic layers, image documents, layouts, a registry
client, rootfs assembly, attestations. It knows no planner node, plan or command: it leans only
on planner.errors, planner.hashing and planner.archive, so it could stand alone.

Modules: descriptor (descriptors, platforms, blob writing), layer, image, layout, registry,
rootfs, unpack (applying layers), base (a pulled image as a base), facts and attest (SBOM and
provenance of an image build). Import from the modules; this package only re-exports the most
used names.
"""

from __future__ import annotations

import importlib

# Lazy re-exports: `planner.cli` registers the image commands at start-up, and a no-op
# realise must not pay for the OCI modules' imports.
_EXPORTS = {"Descriptor": "descriptor", "Platform": "descriptor", "ImageConfig": "image",
            "cuda_annotations": "image", "write_config": "image", "write_image": "image", "write_index": "image",
            "write_manifest": "image", "Layer": "layer", "LayerSource": "layer", "compressor_id": "layer",
            "write_layer": "layer", "Layout": "layout", "LayoutImage": "layout", "export_oci_archive": "layout",
            "read_layout": "layout", "write_layout": "layout"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
