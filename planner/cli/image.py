"""`planner push` and `planner export`: parse, call `planner.publish`, print.

Standalone click commands; planner/cli/__init__.py adds them to its group. They read the project root
and store from the group's context object (`.root`, `.store`).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator, Optional

import click

from ..errors import PlannerError
from .common import Context, count, default_set, output_file


def _obj() -> Context:
    obj = click.get_current_context().find_root().obj
    if not isinstance(obj, Context):
        raise PlannerError("internal: push/export must run under the planner command group")
    return obj


@click.command()
@click.argument("set_name", metavar="SET")
@click.argument("ref", metavar="REF")
@click.option("--variant", default=None, metavar="NAME",
              help="CUDA variant to push (default: `default`, or the only one). Without a tag in "
                   "REF, every variant is pushed under its own name unless --variant is given.")
@click.option("--plain-http", is_flag=True, help="Talk HTTP, not HTTPS, to the registry (local test registries).")
def push(set_name: str, ref: str, variant: Optional[str], plain_http: bool) -> None:
    """Push SET's image to a registry REF (host/name:tag).

    REF is `host[:port]/name[:tag]`; the image is an index over the set's platforms. SET is
    realised first, with `planner realise SET`'s progress on stderr: a no-op when it is up to
    date."""
    from ..publish import push_image

    obj = _obj()
    name = default_set(obj, set_name)
    with _progress() as progress:
        pushed = push_image(obj.root, name, obj.store_for_write(), ref, variant, plain_http=plain_http,
                            progress=progress)
    for v, res in pushed:
        click.echo(f"{res.reference} {res.descriptor.digest}")
        click.echo(f"  {v}: {count(res.blobs_uploaded, 'blob')} uploaded ({count(res.bytes_uploaded, 'byte')}), "
                   f"{res.blobs_skipped} already there; {count(res.manifests_pushed, 'manifest')} pushed, "
                   f"{res.manifests_skipped} already there", err=True)


@click.command("export")
@click.argument("set_name", metavar="SET")
@click.argument("out", metavar="OUT.tar", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--variant", default=None, metavar="NAME",
              help="Only this CUDA variant: its index alone, under its name (no NAME-linux-amd64 platform tags); "
                   "default: the whole layout.")
def export(set_name: str, out: Path, variant: Optional[str]) -> None:
    """Write SET's image as an OCI archive (oci-archive:).

    What `oci-archive:` and `docker load` style tools read: `oci-archive:OUT.tar:VARIANT`
    (`default-linux-amd64` for one platform, without --variant), or `oci-archive:OUT.tar` when
    --variant leaves one image in it. OUT's folder must exist; OUT `-` writes the archive to standard output. SET is
    realised first, with `planner realise SET`'s progress on stderr: a no-op when it is up to
    date."""
    from ..publish import export_image

    obj = _obj()
    name = default_set(obj, set_name)
    to_stdout = str(out) == "-"
    if to_stdout and sys.stdout.isatty():
        raise PlannerError("refusing to write an archive to a terminal: redirect standard output, or give a file")
    if not to_stdout:
        output_file(out)
    with _progress() as progress:
        written = export_image(obj.root, name, obj.store_for_write(), sys.stdout.buffer if to_stdout else out,
                               variant, progress=progress)
    if not to_stdout:
        click.echo(str(written))


@contextlib.contextmanager
def _progress() -> Iterator:
    """The realise's progress on stderr (rich on a terminal, plain lines otherwise), closed
    when the realise is done, so that what the command prints after it comes after it."""
    from ..progress import make_progress

    progress = make_progress("auto")
    try:
        yield progress
    finally:
        progress("close", None)
