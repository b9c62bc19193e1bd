"""A pulled image as the base of another: its layers by digest, its config under the new one's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import OciError
from ..safetree import MAX_METADATA, Tree
from .descriptor import check_digest
from .image import ImageConfig
from .layer import Layer


def reuse_base(image: Path, blobs: Path, config: ImageConfig) -> tuple[list[Layer], list[str], ImageConfig]:
    """The pulled base's own layers (blobs copied by digest, not re-packed: the registry
    already holds them, and they keep their digests) and its config under the recipe's.

    As a Dockerfile's FROM: the base's Env, WorkingDir, User, Entrypoint/Cmd and Labels carry
    over; the recipe's env (by name), labels, entrypoint and cmd win.

    The manifest and config are a registry's words: every field read is type-checked before
    any blob is copied, so a malformed base is one error naming the field, and nothing is
    written for it."""
    # Imported here: the registry module brings httpx, which a build without a pulled base
    # never needs.
    from .descriptor import descriptor_from

    where = f"base image {image.name}"
    with Tree(image, where=where) as src:
        manifest = _json_object(src.read_bytes("manifest.json", limit=MAX_METADATA), "manifest.json", where)
        cfg_desc = descriptor_from(manifest.get("config"), field="config", where=where)
        raw_layers = manifest.get("layers", [])
        if not isinstance(raw_layers, list):
            raise OciError("manifest field layers is not a list", where=where)
        descs = [descriptor_from(raw, field=f"layers[{i}]", where=where) for i, raw in enumerate(raw_layers)]
        base_cfg = _json_object(src.read_bytes(f"blobs/sha256/{cfg_desc.hex}", limit=MAX_METADATA), "config", where)
        diff_ids = _diff_ids(base_cfg, where)
        if len(diff_ids) != len(descs):
            raise OciError(f"base config lists {len(diff_ids)} diff_ids for {len(descs)} layers", where=where)
        made = _history(base_cfg, where)
        rc = _runtime_config(base_cfg, where)
        dest = blobs / "sha256"
        dest.mkdir(parents=True, exist_ok=True)
        with Tree(dest, where="image blobs") as out:
            for desc in descs:
                if out.lstat(desc.hex) is None:
                    with src.open_file(f"blobs/sha256/{desc.hex}") as f:
                        out.write(desc.hex, f)
    layers = [Layer(desc, diff_id=diff_id, compressor="base image") for desc, diff_id in zip(descs, diff_ids)]
    history = made if len(made) == len(layers) else [f"base layer {i}" for i in range(len(layers))]
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


def _json_object(data: bytes, what: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise OciError(f"{what} is not a JSON object", where=where)
    return doc


def _diff_ids(cfg: dict[str, Any], where: str) -> list[str]:
    # Each diff_id is carried into the new image's config as is: a digest, or refused.
    rootfs = cfg.get("rootfs", {})
    if not isinstance(rootfs, dict):
        raise OciError("config.rootfs is not an object", where=where)
    diff_ids = rootfs.get("diff_ids", [])
    if not isinstance(diff_ids, list):
        raise OciError("config.rootfs.diff_ids is not a list", where=where)
    for i, d in enumerate(diff_ids):
        try:
            check_digest(d if isinstance(d, str) else "")
        except OciError:
            raise OciError(f"config.rootfs.diff_ids[{i}] {str(d)[:80]!r} is not sha256:<64 hex digits>",
                           where=where) from None
    return diff_ids


def _history(cfg: dict[str, Any], where: str) -> list[str]:
    """The `created_by` of each history entry that made a layer."""
    history = cfg.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise OciError("config.history is not a list of objects", where=where)
    made = []
    for i, h in enumerate(history):
        created_by, empty = h.get("created_by", ""), h.get("empty_layer", False)
        if not isinstance(created_by, str) or not isinstance(empty, bool):
            raise OciError(f"config.history[{i}] has a created_by that is not a string or an empty_layer "
                           "that is not a boolean", where=where)
        if not empty:
            made.append(created_by)
    return made


def _runtime_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """The base config's `config` object, each field the recipe may inherit checked for its type."""
    rc = cfg.get("config") or {}
    if not isinstance(rc, dict):
        raise OciError("config.config is not an object", where=where)

    def strings(v: object) -> bool:
        return isinstance(v, list) and all(isinstance(s, str) for s in v)

    checks = {
        "Env": (strings, "a list of strings"),
        "Cmd": (strings, "a list of strings"),
        "Entrypoint": (strings, "a list of strings"),
        "Labels": (lambda v: isinstance(v, dict) and all(isinstance(s, str) for s in v.values()), "a map of strings"),
        "WorkingDir": (lambda v: isinstance(v, str), "a string"),
        "User": (lambda v: isinstance(v, str), "a string"),
    }
    for name, (ok, want) in checks.items():
        value = rc.get(name)
        if value is not None and not ok(value):
            raise OciError(f"config.{name} is not {want}", where=where)
    return rc
