"""What every command shares: the global options (--root, --store, --mirror, before or after the
subcommand), the store path checks, and the default recipe set."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import PlannerError


class Context:
    """The global options. They may come before or after the subcommand (`planner --store S
    plan` and `planner plan --store S`), so the store is derived from the root when asked."""

    def __init__(self, root: Path, store: Path | None, mirrors: list[str] = ()) -> None:
        self.root = root
        self.explicit_store = store
        self.mirrors = list(mirrors)

    @property
    def store(self) -> Path:
        return self.explicit_store or self.root / "store"

    def store_for_read(self) -> Path:
        """The store of a command that only reads one: it must exist and be a folder."""
        _check_store_path(self.store, must_exist=True)
        return self.store

    def store_for_write(self) -> Path:
        """The store of a command that may create one: no file may sit where it goes."""
        _check_store_path(self.store, must_exist=False)
        return self.store


def _check_store_path(path: Path, *, must_exist: bool) -> None:
    from ..errors import StoreError

    hint = "pass --store PATH or set PLANNER_STORE"
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():
            what = "the store" if p == path else f"a parent of the store ({p})"
            raise StoreError(f"{what} is a symbolic link to {os.readlink(p)!r}, which does not exist; {hint}",
                             where=str(path))
        if p.exists():
            if not p.is_dir():
                what = "the store" if p == path else f"a parent of the store ({p})"
                raise StoreError(f"{what} is not a folder; {hint}", where=str(path))
            break
    if must_exist and not path.is_dir():
        raise StoreError(f"no store here (nothing realised yet, or a mistyped path); {hint}", where=str(path))


def mirror_url(m: str) -> str:
    from ..mirrors import mirror_url as as_url

    return as_url(m, "--mirror")


def _set_root(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(Context).root = value.absolute()


def _set_store(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(Context).explicit_store = value.absolute()


def _add_mirrors(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> None:
    ctx.find_object(Context).mirrors.extend(mirror_url(m) for m in value)


ROOT_HELP = "Project folder holding recipes/, lockfiles/, patches/ (default: the current folder)."
STORE_HELP = "Store folder (env PLANNER_STORE; default: store/ under --root)."
MIRROR_HELP = "A source mirror: folder or URL (repeatable; env PLANNER_MIRRORS; planner.toml [mirrors])."


def global_options(cmd: click.Command) -> None:
    """Give a subcommand the global options too, so they work after it (`planner lock demo
    --mirror DIR`). Parsed after the group's, so a later one wins."""
    cmd.params.extend([
        click.Option(["--root"], type=click.Path(file_okay=False, path_type=Path), default=None,
                     expose_value=False, callback=_set_root, is_eager=True, help=ROOT_HELP),
        click.Option(["--store"], type=click.Path(path_type=Path), default=None, expose_value=False,
                     callback=_set_store, help=STORE_HELP),
        click.Option(["--mirror"], multiple=True, metavar="URL", expose_value=False, callback=_add_mirrors,
                     help=MIRROR_HELP),
    ])
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            global_options(sub)


def fail(exc: PlannerError) -> None:
    click.echo(f"planner: error: {exc.line()}", err=True)
    sys.exit(exc.exit_code or 1)


def sets_of(ctx: Context) -> list[str]:
    return sorted(p.name for p in (ctx.root / "recipes").glob("*") if (p / "set.toml").is_file())


def default_set(ctx: Context, name: str | None) -> str:
    """SET is optional wherever it is an argument: a project with one set means that one."""
    sets = sets_of(ctx)
    if name:
        if name not in sets:
            from ..suggest import unknown

            raise unknown("recipe set", name, sets, where=str(ctx.root / "recipes"))
        return name
    if len(sets) == 1:
        return sets[0]
    if not sets:
        raise PlannerError(f"no recipe sets under {ctx.root / 'recipes'} (a folder per set with a set.toml); "
                           "pass --root PROJECT")
    raise PlannerError(f"name a recipe set: one of {', '.join(sets)}")


