"""OCI images: deterministic layers, image documents, layouts, a registry client, rootfs assembly.

Modules: descriptor (descriptors, platforms, blob writing), layer, image, layout, registry,
rootfs. Import from the modules; this package only re-exports the most used names.
"""

from __future__ import annotations

from .descriptor import Descriptor, Platform
from .image import ImageConfig, cuda_annotations, write_config, write_image, write_index, write_manifest
from .layer import Layer, LayerSource, compressor_id, write_layer
from .layout import Layout, LayoutImage, export_oci_archive, read_layout, write_layout

__all__ = [
    "Descriptor",
    "ImageConfig",
    "Layer",
    "LayerSource",
    "Layout",
    "LayoutImage",
    "Platform",
    "compressor_id",
    "cuda_annotations",
    "export_oci_archive",
    "read_layout",
    "write_config",
    "write_image",
    "write_index",
    "write_layer",
    "write_layout",
    "write_manifest",
]
