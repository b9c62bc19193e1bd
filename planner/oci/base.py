"""A pulled image as the base of another: its layers by digest, its config under the new one's."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PlannerError
from ..safetree import MAX_METADATA, Tree, blob_hex
from .descriptor import Descriptor
from .image import ImageConfig
from .layer import Layer


def reuse_base(image: Path, blobs: Path, config: ImageConfig) -> tuple[list[Layer], list[str], ImageConfig]:
    """The pulled base's own layers (blobs copied by digest, not re-packed: the registry
    already holds them, and they keep their digests) and its config under the recipe's.

    As a Dockerfile's FROM: the base's Env, WorkingDir, User, Entrypoint/Cmd and Labels carry
    over; the recipe's env (by name), labels, entrypoint and cmd win."""
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
