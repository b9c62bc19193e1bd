"""`planner lock`, `planner prefetch` and `planner hash`: pinning inputs by content."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PlannerError
from .common import Context, count, default_set


@click.command()
@click.argument("set_name", metavar="[SET]", required=False)
@click.option("--update", multiple=True, metavar="NAME", help="Re-resolve this input or recipe (repeatable).")
@click.option("--check", is_flag=True, help="Fail if the lock is stale, edited, or leaves an input of the "
              "target's closure unlocked; no network.")
@click.option("--target", metavar="RECIPE", help="With --check: check this recipe's closure instead of the set's target.")
@click.option("--profile", metavar="NAME", help="With --check: plan with this [profiles] entry of set.toml instead "
              "of its `profile` line.")
@click.option("--platform", metavar="PLATFORM", help="With --check: only this platform's closure (linux/arm64).")
@click.option("--variant", metavar="NAME", help="With --check: only this CUDA variant's closure (set.toml [cuda]).")
@click.option("--all", "every_input", is_flag=True, help="With --check: every input the set declares must be locked.")
@click.pass_obj
def lock(ctx: Context, set_name: str | None, update: tuple[str, ...], check: bool, target: str | None,
         profile: str | None, platform: str | None, variant: str | None, every_input: bool) -> None:
    """Pin every input by content hash (lockfiles/SET.lock)."""
    from .. import lock as lockmod
    from ..recipes import load_set

    if not check and (target or profile or platform or variant or every_input):
        raise click.UsageError("--target, --profile, --platform, --variant and --all go with --check "
                               "(`planner lock` pins every input)")
    if check and update:
        raise click.UsageError("--check changes nothing: it takes no --update (`planner lock --update NAME` "
                               "re-pins NAME)")
    if every_input and (target or platform or variant):
        raise click.UsageError("--all checks every input of the set: it takes no --target, --platform or --variant")
    rs = load_set(ctx.root, default_set(ctx, set_name), profile=profile)
    if update:
        _check_update_names(rs, update)
    if check:
        from ..lockscope import check_scoped

        scoped = check_scoped(rs, lockmod.read(rs.lockfile), target=target, platform=platform, variant=variant,
                              every_input=every_input)
        problems: list = list(scoped.problems)
        for p in problems:
            click.echo(p.line() if p.unlocked else f"stale: {p.line()}", err=True)
        if (ctx.store / "index.sqlite").is_file():
            from ..resolve import lock_store_conflicts
            from ..store import Store

            try:
                st = Store(ctx.store)
            except PlannerError:
                st = None  # a store this user cannot open: the pins are checked at realise
            if st is not None:
                try:
                    for line in lock_store_conflicts(rs, lockmod.read(rs.lockfile), st):
                        click.echo(f"edited: {line}", err=True)
                        problems.append(line)
                finally:
                    st.close()
        warning = scoped.warning()
        if warning:
            click.echo(f"planner: warning: {warning}", err=True)
        if problems:
            raise PlannerError(f"{count(len(problems), 'problem')} in {rs.lockfile.relative_to(ctx.root)} for "
                               f"{scoped.scope}", where="lock --check")
        n = len(lockmod.read(rs.lockfile).inputs)
        click.echo(f"{rs.lockfile.relative_to(ctx.root)}: up to date for {scoped.scope} ({count(n, 'input')}"
                   + (f", {len(scoped.outside)} unlocked outside it)" if scoped.outside else ")"))
        return
    from ..mirrors import load_mirrors
    from ..resolve import UnresolvedInputs, lock_set
    from ..store import Store

    store = Store(ctx.store_for_write())
    before = _contents(rs.lockfile)
    try:
        result, changed = lock_set(rs, store, update=frozenset(update), log=lambda s: click.echo(s, err=True),
                                   mirrors=load_mirrors(ctx.root, ctx.mirrors))
    except UnresolvedInputs as exc:
        unlocked = {f.id for f in exc.failures if not f.kept}
        for id_ in exc.changed:
            if id_ not in unlocked:
                click.echo(f"pinned {id_}")
        for f in exc.failures:
            click.echo(f"kept the old pin of {f.id}: {f.reason}" if f.kept else f"unlocked {f.id}: {f.reason}",
                       err=True)
        rel, n = rs.lockfile.relative_to(ctx.root), count(len(unlocked), 'input')
        click.echo(f"{rel}: unchanged ({n} unlocked)" if _contents(rs.lockfile) == before
                   else f"wrote {rel} ({n} unlocked)", err=True)
        raise
    for id_ in changed:
        click.echo(f"pinned {id_}")
    if _contents(rs.lockfile) == before:
        # The lock writer leaves a file that already says this alone (planner.lock.write_atomic):
        # "wrote" would send a reader looking for a change, or a commit, that is not there.
        click.echo(f"{rs.lockfile.relative_to(ctx.root)}: up to date, not rewritten "
                   f"({count(len(result.inputs), 'input')}, {len(changed)} changed)")
        return
    click.echo(f"wrote {rs.lockfile.relative_to(ctx.root)} ({count(len(result.inputs), 'input')}, "
               f"{len(changed)} changed)")


def _contents(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _check_update_names(rs, update: tuple[str, ...]) -> None:
    """Refuse a mistyped --update before anything is fetched, with the names it may have meant."""
    from ..errors import LockError
    from ..lock import declarations
    from ..suggest import did_you_mean

    valid = set(declarations(rs)) | set(rs.recipes)
    for name in update:
        if name not in valid:
            raise LockError(f"--update {name!r} names no input or recipe of set {rs.name!r}"
                            f"{did_you_mean(name, valid)}")




@click.command("hash")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--sha256", is_flag=True, help="Also print the sha256 of files.")
def hash_cmd(paths: tuple[Path, ...], sha256: bool) -> None:
    """Tree hash (v1) of folders and files (nix hash path)."""
    from ..hashing import file_sha256_and_blake3, tree_digest

    for p in paths:
        if sha256 and p.is_file():
            sha, b3 = file_sha256_and_blake3(p)
            click.echo(f"{b3} sha256:{sha}  {p}")
        else:
            click.echo(f"{tree_digest(p)}  {p}")


@click.command()
@click.argument("what", metavar="URL | GIT_URL@REV")
@click.pass_obj
def prefetch(ctx: Context, what: str) -> None:
    """Fetch a URL or git revision once; print its pins."""
    from ..mirrors import load_mirrors
    from ..resolve import prefetch as do_prefetch
    from ..store import Store

    # A prefetch belongs to no set, so it runs outside a project too (given --store): its
    # planner.toml is then the current folder's.
    mirrors = load_mirrors(ctx.found_root() or Path.cwd(), ctx.mirrors)
    decl, li = do_prefetch(Store(ctx.store_for_write()), what, mirrors=mirrors,
                           log=lambda s: click.echo(s, err=True))
    pin = li.pins["any"]
    if pin.commit:
        click.echo(f"commit {pin.commit}")
    if pin.sha256:
        click.echo(f"sha256 {pin.sha256}")
    if pin.size is not None:
        click.echo(f"size {pin.size}")
    click.echo(f"tree {pin.tree}")
