"""What every command shares: the global options (--root, --store, --mirror, before or after the
subcommand), finding the project root, the store path checks, the default recipe set, and how
counts are worded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import PlannerError, StoreError
from ..safetree import has_control


class Context:
    """The global options. They may come before or after the subcommand (`planner --store S
    plan` and `planner plan --store S`), so the root is found and the store derived from it
    only when asked: `planner hash` or `keys generate` run anywhere, in a project or not."""

    def __init__(self, root: Path | None, store: Path | None, mirrors: list[str] = ()) -> None:
        self.explicit_root = root
        self._found_root: Path | None = None
        self.explicit_store = store
        self.mirrors = list(mirrors)

    @property
    def root(self) -> Path:
        """--root as given, else the project the current folder is in (`find_root`)."""
        found = self.found_root()
        if found is None:
            raise PlannerError(f"no planner project in {Path.cwd()} or a folder above it (a project holds "
                               "recipes/SET/set.toml); pass --root PROJECT")
        if self.explicit_root is not None and not found.is_dir():
            # Said of the folder named, not "pass --root": the user did, and mistyped it.
            raise PlannerError("no such folder (--root names the project: the folder holding recipes/)",
                               where=f"--root {found}")
        return found

    @root.setter
    def root(self, value: Path) -> None:
        self.explicit_root = value

    def found_root(self) -> Path | None:
        if self.explicit_root is not None:
            return self.explicit_root
        if self._found_root is None:
            self._found_root = find_root(Path.cwd())
        return self._found_root

    @property
    def store(self) -> Path:
        if self.explicit_store is not None:
            return self.explicit_store
        if self.found_root() is None:
            raise StoreError(f"no planner project in {Path.cwd()} or a folder above it, so no default store "
                             "(store/ under the project); pass --root PROJECT or --store PATH")
        return self.root / "store"

    def store_for_read(self) -> Path:
        """The store of a command that only reads one: it must exist and be a folder."""
        _check_store_path(self.store, must_exist=True)
        return self.store

    def store_for_write(self) -> Path:
        """The store of a command that may create one: no file may sit where it goes."""
        _check_store_path(self.store, must_exist=False)
        return self.store


def find_root(start: Path) -> Path | None:
    """The nearest folder, `start` or above it, holding a recipe set (`recipes/SET/set.toml`),
    as git finds `.git` and Bazel its MODULE.bazel: a command run in `recipes/demo/src/` means
    the project around it. A set is the mark, not a bare `recipes/` or `lockfiles/` folder: a
    set may itself be named `recipes`, and a lockfile without its recipes cannot be used."""
    for folder in (start, *start.parents):
        try:
            with os.scandir(folder / "recipes") as entries:
                if any(e.is_dir() and os.path.isfile(os.path.join(e.path, "set.toml")) for e in entries):
                    return folder
        except OSError:
            continue
    return None


def _check_store_path(path: Path, *, must_exist: bool) -> None:
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
    # An explicit --root is used as given, never searched above: scripts and CI name it.
    if value is not None:
        ctx.find_object(Context).root = value.absolute()


def _set_store(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(Context).explicit_store = value.absolute()


def _add_mirrors(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> None:
    ctx.find_object(Context).mirrors.extend(mirror_url(m) for m in value)


ROOT_HELP = ("Project folder holding recipes/, lockfiles/, patches/ (default: the nearest folder, the current "
             "one or above it, holding recipes/SET/set.toml).")
STORE_HELP = "Store folder (env PLANNER_STORE; default: store/ under --root)."
MIRROR_HELP = "A source mirror: folder or URL (repeatable; env PLANNER_MIRRORS; planner.toml [mirrors])."


class FolderOption(click.Path):
    """The path of --root or --store. An empty one (`--store=`, `--store "$UNSET"`) is refused:
    pathlib reads it as the current folder, which would become the store (PLANNER_STORE= empty
    is no value at all: click leaves it out, and the default store is used)."""

    def convert(self, value, param, ctx):
        name = param.opts[0] if param is not None else "the path"
        if isinstance(value, str) and not value:
            raise PlannerError(f"{name} is empty: name a folder (an unset variable?)")
        if isinstance(value, str) and has_control(value):
            # (every line that names an output under it would break in two: `| head -1`)
            raise PlannerError(f"{name} {value[:80]!r} holds a control character (a newline?): name another folder")
        return super().convert(value, param, ctx)


def global_options(cmd: click.Command) -> None:
    """Give a subcommand the global options too, so they work after it (`planner lock demo
    --mirror DIR`). Parsed after the group's, so a later one wins."""
    cmd.params.extend([
        click.Option(["--root"], type=FolderOption(file_okay=False, path_type=Path), default=None,
                     expose_value=False, callback=_set_root, is_eager=True, help=ROOT_HELP),
        click.Option(["--store"], type=FolderOption(path_type=Path), default=None, expose_value=False,
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


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 entry`, `2 entries`: every count a command prints, in one place."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def output_file(path: Path) -> Path:
    """A file a command is asked to write must go into an existing folder, as `cp` refuses: a
    mistyped folder is said before any work, not made (nor is the work lost at the end)."""
    parent = path.absolute().parent
    if not parent.is_dir():
        why = "is not a folder" if parent.exists() else "does not exist"
        raise PlannerError(f"cannot write here: the folder {parent} {why}", where=str(path))
    return path


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
        # Only a --root given can lack sets (a project found is one because it has a set): say
        # what that folder lacks, not to pass the --root that was passed.
        if not (ctx.root / "recipes").is_dir():
            raise PlannerError("no recipes/ folder: not a planner project (a project holds recipes/SET/set.toml)",
                               where=f"--root {ctx.root}")
        raise PlannerError(f"no recipe sets under {ctx.root / 'recipes'} (a folder per set with a set.toml)",
                           where=f"--root {ctx.root}")
    raise PlannerError(f"name a recipe set: one of {', '.join(sets)}")
