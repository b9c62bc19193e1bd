"""`planner push` and `planner export`: ship the image layout a set's realise produced.

Standalone click commands; planner/cli.py adds them to its group. They read the project root
and store from the group's context object (`.root`, `.store`). Both realise the set first,
which is a no-op when nothing changed (the plan cache answers without building anything).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import click

from ..errors import OciError, PlannerError


def _obj():
    obj = click.get_current_context().find_root().obj
    if obj is None or not hasattr(obj, "root") or not hasattr(obj, "store_for_write"):
        raise PlannerError("internal: push/export must run under the planner command group")
    return obj


def realised_layout(root: Path, set_name: str, store: Path) -> Path:
    """The OCI layout of the set's target, realising it if needed (quietly)."""
    from ..realise import RealiseOptions, realise

    result = realise(root, set_name, store, RealiseOptions())
    if result.failures:
        raise PlannerError(f"realise {set_name} failed: {result.failures[0].splitlines()[0]}")
    if not result.output or not (Path(result.output) / "index.json").is_file():
        raise OciError(f"the target of set {set_name!r} ({', '.join(result.targets)}) is not an OCI image "
                       "(set.toml's target must be an oci-image recipe)")
    return Path(result.output)


def _variants(layout: Path) -> list[str]:
    from .descriptor import INDEX_TYPES
    from .layout import read_layout

    lay = read_layout(layout)
    return [d.annotation("org.opencontainers.image.ref.name") or "" for d in lay.manifests
            if d.media_type in INDEX_TYPES]


def _pick_variant(layout: Path, variant: Optional[str]) -> str:
    variants = _variants(layout)
    if variant is not None:
        if variant not in variants:
            raise OciError(f"no CUDA variant {variant!r} in the image (variants: {', '.join(variants)})")
        return variant
    if "default" in variants:
        return "default"
    if len(variants) == 1:
        return variants[0]
    raise OciError(f"the image has several CUDA variants; name one with --variant ({', '.join(variants)})")


@click.command()
@click.argument("set_name", metavar="SET")
@click.argument("ref", metavar="REF")
@click.option("--variant", default=None, metavar="NAME",
              help="CUDA variant to push (default: `default`, or the only one). Without a tag in "
                   "REF, every variant is pushed under its own name unless --variant is given.")
@click.option("--plain-http", is_flag=True, help="Talk HTTP, not HTTPS, to the registry (local test registries).")
def push(set_name: str, ref: str, variant: Optional[str], plain_http: bool) -> None:
    """Push SET's image to a registry REF (host/name:tag).

    REF is `host[:port]/name[:tag]`; the image is an index over the set's platforms."""
    from .registry import Reference, push_layout

    obj = _obj()
    layout = realised_layout(obj.root, set_name, obj.store_for_write())
    parsed = Reference.parse(ref)
    if parsed.tag or parsed.digest:
        jobs = [(_pick_variant(layout, variant), ref)]
    else:
        # No tag: one tag per variant (or just the one named).
        names = [_pick_variant(layout, variant)] if variant else _variants(layout)
        jobs = [(v, f"{ref}:{v}") for v in names]
    for v, target in jobs:
        res = push_layout(layout, target, tag_for=v, plain_http=True if plain_http else None)
        click.echo(f"{res.reference} {res.descriptor.digest}")
        click.echo(f"  {v}: {res.blobs_uploaded} blobs uploaded ({res.bytes_uploaded} bytes), "
                   f"{res.blobs_skipped} already there; {res.manifests_pushed} manifests pushed, "
                   f"{res.manifests_skipped} already there", err=True)


@click.command("export")
@click.argument("set_name", metavar="SET")
@click.argument("out", metavar="OUT.tar", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--variant", default=None, metavar="NAME",
              help="Only this CUDA variant (and its platform tags); default: the whole layout.")
def export(set_name: str, out: Path, variant: Optional[str]) -> None:
    """Write SET's image as an OCI archive (oci-archive:).

    What `oci-archive:` and `docker load` style tools read."""
    from ..lock import read as read_lock
    from ..recipes import load_set
    from .layout import export_oci_archive

    obj = _obj()
    layout = realised_layout(obj.root, set_name, obj.store_for_write())
    sde = read_lock(load_set(obj.root, set_name).lockfile).source_date_epoch
    out = Path(out).absolute()
    if variant is None:
        export_oci_archive(layout, out, source_date_epoch=sde)
    else:
        export_variant(layout, out, _pick_variant(layout, variant), source_date_epoch=sde)
    click.echo(str(out))


def export_variant(layout: Path, out: Path, variant: str, *, source_date_epoch: int) -> Path:
    """An OCI archive holding one variant: its index and platform tags, and their blobs only."""
    from .layout import LayoutImage, export_oci_archive, read_layout, write_layout

    lay = read_layout(layout)
    top = lay.resolve(variant)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent if out.parent.is_dir() else None) as tmp:
        sub = Path(tmp) / "layout"
        sub.mkdir()
        # The blobs are read in place: the archive writer only needs paths for them.
        os.symlink(lay.blobs_dir.absolute(), sub / "blobs")
        write_layout(sub, [LayoutImage(variant, top)])
        return export_oci_archive(sub, out, source_date_epoch=source_date_epoch)
