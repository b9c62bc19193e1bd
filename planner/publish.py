"""Shipping the image layout a set's realise produced: to a registry, or as an OCI archive.

Both realise the set first, which is a no-op when nothing changed (the plan cache answers
without building anything). The command line (`planner push`, `planner export`) only parses,
calls these and prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Optional

from .errors import OciError, PlannerError

if TYPE_CHECKING:
    from .progress import Emit


def realised_layout(root: Path, set_name: str, store: Path, progress: Optional[Emit] = None) -> Path:
    """The OCI layout of the set's target, realising it if needed (`progress`: the realise's
    events, as `planner.realise.realise` takes them; None: quietly)."""
    from .realise import RealiseOptions, realise

    result = realise(root, set_name, store, RealiseOptions(), progress=progress)
    if result.failures:
        raise PlannerError(f"realise {set_name} failed: {result.failures[0].splitlines()[0]}")
    if not result.output or result.digest is None:  # (digest: only an oci-image's output has one)
        raise OciError(f"the target of set {set_name!r} ({', '.join(result.targets)}) is not an OCI image "
                       "(set.toml's target must be an oci-image recipe)")
    return Path(result.output)


def variants(layout: Path) -> list[str]:
    from .oci.descriptor import INDEX_TYPES
    from .oci.layout import read_layout

    lay = read_layout(layout)
    return [d.annotation("org.opencontainers.image.ref.name") or "" for d in lay.manifests
            if d.media_type in INDEX_TYPES]


def pick_variant(layout: Path, variant: Optional[str]) -> str:
    found = variants(layout)
    if variant is not None:
        if variant not in found:
            raise OciError(f"no CUDA variant {variant!r} in the image (variants: {', '.join(found)})")
        return variant
    if "default" in found:
        return "default"
    if len(found) == 1:
        return found[0]
    raise OciError(f"the image has several CUDA variants; name one with --variant ({', '.join(found)})")


def push_image(root: Path, set_name: str, store: Path, ref: str, variant: Optional[str], *,
               plain_http: bool = False, progress: Optional[Emit] = None) -> list:
    """Push the set's image to `ref`; without a tag in `ref`, one tag per variant (or the one
    named). Returns the registry's push results, one per tag."""
    from .oci.registry import Reference, push_layout

    parsed = Reference.parse(ref)  # (before the realise: a bad tag said at once, not after the build)
    layout = realised_layout(root, set_name, store, progress)
    if parsed.tag or parsed.digest:
        jobs = [(pick_variant(layout, variant), ref)]
    else:
        names = [pick_variant(layout, variant)] if variant else variants(layout)
        jobs = [(v, f"{ref}:{v}") for v in names]
    return [(v, push_layout(layout, target, tag_for=v, plain_http=True if plain_http else None))
            for v, target in jobs]


def export_image(root: Path, set_name: str, store: Path, out: "Path | BinaryIO", variant: Optional[str], *,
                 progress: Optional[Emit] = None) -> "Path | BinaryIO":
    """Write the set's image (or one variant of it: its index alone, under the variant's name)
    as an OCI archive at `out`, a path or an open binary stream."""
    from .lock import read as read_lock
    from .oci.layout import check_archive_path, export_oci_archive
    from .recipes import load_set

    if isinstance(out, (str, os.PathLike)):
        out = Path(out).absolute()
        _check_outside_store(out, store)
        check_archive_path(out)  # before the realise: said at once, not after an hour's build
    layout = realised_layout(root, set_name, store, progress)
    sde = read_lock(load_set(root, set_name).lockfile).source_date_epoch
    tag = None if variant is None else pick_variant(layout, variant)
    return export_oci_archive(layout, out, source_date_epoch=sde, tag=tag)


def _check_outside_store(out: Path, store: Path) -> None:
    """OUT (its folder resolved, links followed) must not be the store or inside it: as root
    the store's read-only modes stop nothing, and an archive written there (a store entry's
    oci-layout) corrupted the entry."""
    real = out.parent.resolve() / out.name
    top = Path(store).absolute().resolve()
    if real == top or top in real.parents:
        raise PlannerError(f"is inside the store {top}: an archive may not be written there (give a path outside "
                           "it, or - for standard output)", where=str(out))
