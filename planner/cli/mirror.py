"""`planner mirror`: make source mirrors (the layout `planner/mirrors.py` reads).

    planner mirror export SET DIR       every locked input of SET, from the store (or fetched again)
    planner mirror add DIR URL [PATH]   a local git repository or file, under its origin URL
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import count, default_set


@click.group()
def mirror() -> None:
    """Write source mirrors for air-gapped sites."""


@mirror.command("export")
@click.argument("set_name", metavar="SET")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def export_cmd(ctx, set_name: str, folder: Path) -> None:
    """Write every locked input of SET into a mirror folder.

    Files by sha256 (URL inputs also by origin URL), git repositories by origin URL holding the
    pinned commit."""
    from .. import lock as lockmod
    from ..errors import PlannerError
    from ..mirrorexport import export_set
    from ..mirrors import load_mirrors
    from ..recipes import load_set
    from ..store import Store

    rs = load_set(ctx.root, default_set(ctx, set_name))
    lock = lockmod.read(rs.lockfile)
    store = Store(ctx.store_for_write())
    with store.gc_lock(exclusive=False):
        results = export_set(rs, store, lock, folder.absolute(), mirrors=load_mirrors(ctx.root, ctx.mirrors),
                             log=lambda s: click.echo(s, err=True))
    counts = {"written": 0, "skipped": 0, "failed": 0}
    for r in results:
        counts[r.status] += 1
        plat = "" if r.platform == "any" else f" [{r.platform}]"
        if r.status != "written":
            click.echo(f"{r.status} {r.id}{plat}: {r.detail}", err=r.status == "failed")
        else:
            click.echo(f"wrote {r.id}{plat}: {r.detail}")
    click.echo(f"{folder}: {counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed")
    if counts["failed"]:
        raise PlannerError(f"{count(counts['failed'], 'input')} could not be exported (the rest are in {folder})",
                           where="mirror export")


@mirror.command("add")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.argument("url", metavar="URL")
@click.argument("path", metavar="[PATH]", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--rev", "revs", multiple=True, metavar="COMMIT",
              help="Add only this commit (repeatable; default: every branch and tag).")
def add_cmd(folder: Path, url: str, path: Path | None, revs: tuple[str, ...]) -> None:
    """Add a git repository or file to a mirror, as URL's content.

    PATH (a git repository, bare or not, or a file) goes into the mirror DIR as the content of
    the origin URL. Without PATH, URL itself is fetched (a git repository if it ends in .git).
    A snapshot that lacks objects of some branches still serves the commits it has: `--rev`."""
    import tempfile

    from ..errors import PlannerError
    from ..mirrors import add_file, add_git, origin_path

    origin_path(url)  # a malformed origin is said first, whatever PATH is
    folder = folder.absolute()
    is_git = (path is not None and path.is_dir()) or (path is None and url.rstrip("/").endswith(".git"))
    if not is_git and revs:
        raise click.UsageError("--rev picks commits of a git repository; PATH is a file")
    if not is_git and url.rstrip("/").endswith(".git"):
        # A git recipe looks for its URL under git/ in a mirror: a file there would never be found.
        raise PlannerError(f"{url} names a git repository, and {path} is a file: give the repository "
                           "(a folder, bare or not)", where="mirror add")
    if is_git:
        rel = add_git(folder, url, str(path) if path is not None else url, commits=revs,
                      warn=lambda line: click.echo(f"planner: warning: {line}", err=True))
        click.echo(f"{folder}/{rel}")
        return
    if path is None:
        from ..fetch import url as urlfetch

        with tempfile.TemporaryDirectory(prefix="planner-mirror-") as tmp:
            got = urlfetch.download(url, Path(tmp) / "download")
            rels = add_file(folder, got.path, url=url)
    else:
        rels = add_file(folder, path, url=url)
    for rel in rels:
        click.echo(f"{folder}/{rel}")
