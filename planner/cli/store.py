"""`planner store …` (verify, repair, gc, roots, size, push, pull) and `planner keys`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import PlannerError
from .common import Context, count, default_set, output_file


@click.group()
def store() -> None:
    """Verify, collect, size, push and pull the store."""


@store.command("verify")
@click.option("--repair", is_flag=True, help="Remove each corrupt or missing entry, so that the next realise "
                                              "that needs it builds or fetches it again.")
@click.pass_obj
def store_verify(ctx: Context, repair: bool) -> None:
    """Re-hash every entry and report corruption.

    As nix-store --verify --check-contents; with --repair, as --repair too."""
    from ..store import Store

    if repair:
        st = Store(ctx.store_for_read())
        try:
            removed = st.repair()
        finally:
            st.close()
        for e, why in removed:
            click.echo(f"removed {e.path.name}: {why}")
        click.echo(f"store ok: {count(len(removed), 'corrupt entry', 'corrupt entries')} removed; the next realise "
                   "makes what it needs of them again" if removed else "store ok")
        return
    bad = Store(ctx.store_for_read(), read_only=True).verify()
    for e, why in bad:
        click.echo(f"corrupt: {e.path.name}: {why}")
    if bad:
        raise PlannerError(f"{count(len(bad), 'corrupt entry', 'corrupt entries')}: `planner store verify --repair` "
                           "removes them, and the next realise makes them again", where=str(ctx.store))
    click.echo("store ok")


@store.command("repair")
@click.pass_obj
def store_repair(ctx: Context) -> None:
    """Rebuild a damaged or lost index from what is on disk.

    Keeps what is still readable in the old index and registers the entries found on disk.
    A healthy index is kept as it is; only entries on disk that it lacks are registered."""
    from ..store import repair_index

    done = repair_index(ctx.store_for_read())
    registered = f"{count(done.added, 'entry', 'entries')} registered from disk"
    if done.healthy:
        click.echo(f"index healthy: kept; {registered}")
        return
    if done.moved is not None:
        click.echo(f"old index kept as {done.moved.name}")
    click.echo(f"index rebuilt: {count(done.kept, 'row')} salvaged, {registered}")


@store.command("gc")
@click.option("-n", "--dry-run", is_flag=True, help="List what would be removed, and its size; remove nothing.")
@click.pass_obj
def store_gc(ctx: Context, dry_run: bool) -> None:
    """Remove what no root reaches (nix-collect-garbage).

    Roots are the last realised target of each set and out-links (`planner store roots`)."""
    from ..sizes import human, path_size
    from ..store import Store

    def waiting() -> None:
        click.echo("planner: store gc: waiting for the running realise to end (what it builds is kept)", err=True)

    st = Store(ctx.store_for_read())
    checks = st.root / "checks"
    try:
        sizes = {e.path.name: path_size(e.path) for e in st.entries()} if dry_run else {}
        kept_checks = sorted(p.name for p in checks.iterdir()) if checks.is_dir() and not checks.is_symlink() else []
        removed = st.gc(dry_run=dry_run, on_wait=waiting)
    finally:
        st.close()
    verb = "would remove" if dry_run else "removed"
    for r in removed:
        click.echo(f"{verb} {r}" + (f"  {human(sizes.get(r, 0))}" if dry_run else ""))
    if kept_checks:  # (differing `realise --check` rebuilds, kept for comparing: not entries)
        click.echo(f"{verb} checks/ ({count(len(kept_checks), 'rebuild')} kept by realise --check)")
    freed = f", {human(sum(sizes.get(r, 0) for r in removed))}" if dry_run else ""
    # The total after the entries, as nix-collect-garbage prints it ("N store paths deleted"):
    # it does not start like an entry's line, so the lines of entries stay easy to pick out.
    click.echo(f"{count(len(removed), 'entry', 'entries')} {'would be removed' if dry_run else 'removed'}{freed}")


@store.command("roots")
@click.pass_obj
def store_roots(ctx: Context) -> None:
    """List the gc roots and the closure each keeps alive."""
    from ..runs import runs_of
    from ..sizes import human, node_sizes
    from ..store import Store

    st = Store.for_reading(ctx.store_for_read())
    try:
        roots = st.live_roots()
        runs = runs_of(st, None, limit=1000)
    finally:
        st.close()
    if not roots:
        click.echo("no roots: `planner store gc` would remove everything")
    for name, path in roots.items():
        rec = next((r for _i, r in runs if r.output and Path(r.output).name == path.name), None)
        closure = ""
        if rec is not None:
            top = next((n for n in node_sizes(rec) if n.path == rec.output), None)
            if top is not None:
                closure = f"  closure {human(top.closure)}"
        click.echo(f"{name} -> {path}{closure}")


@store.command("size")
@click.argument("set_name", metavar="[SET]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable sizes in bytes.")
@click.pass_obj
def store_size(ctx: Context, set_name: str | None, as_json: bool) -> None:
    """Size and closure size per node (nix path-info -rS).

    For SET's last realise: each output's own size and the size of its closure (it and every
    output it was built from); the target's closure is the whole image."""
    import attrs

    from ..runs import runs_of
    from ..sizes import human, node_sizes
    from ..store import Store

    name = default_set(ctx, set_name)
    st = Store.for_reading(ctx.store_for_read())
    try:
        rec = next((r for _i, r in runs_of(st, name, limit=1000)), None)
    finally:
        st.close()
    if rec is None:
        raise PlannerError(f"no recorded realise of set {name!r}; run `planner realise {name}` first",
                           where=str(ctx.store))
    sizes = node_sizes(rec)
    if as_json:
        click.echo(json.dumps({"schema": 1, "set": name, "nodes": [attrs.asdict(n) for n in sizes]},
                              indent=2, sort_keys=True))
        return
    width = max((len(n.id) for n in sizes), default=4)
    click.echo(f"{'node':<{width}}  {'size':>10}  {'closure':>10}")
    for n in sizes:
        click.echo(f"{n.id:<{width}}  {human(n.size):>10}  {human(n.closure):>10}")
    for t in rec.targets:
        top = next((n for n in sizes if n.id == t), None)
        if top is not None:
            click.echo(f"closure of {t}: {human(top.closure)} in {count(top.closure_paths, 'output')}")


@store.command("push")
@click.argument("set_name", metavar="[SET]", required=False)
@click.option("--to", "to", required=True, metavar="URL", help="oci://HOST/REPO")
@click.option("--signing-key", type=click.Path(dir_okay=False, path_type=Path), envvar="PLANNER_SIGNING_KEY",
              required=True, help="Secret key that signs the entries (env PLANNER_SIGNING_KEY).")
@click.option("--no-inputs", is_flag=True, help="Push built outputs only, not the fetched sources.")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "plain", "rich"]), default="auto",
              envvar="PLANNER_PROGRESS", show_default=True, help="As for realise: a line per entry, or a live bar.")
@click.pass_obj
def store_push(ctx: Context, set_name: str | None, to: str, signing_key: Path, no_inputs: bool, progress_mode: str) -> None:
    """Push SET's last realised closure to a binary cache."""
    from ..cache import BinaryCache, Signer, TrustedKeys, push_run
    from ..runs import runs_of
    from ..store import Store

    set_name = default_set(ctx, set_name)
    st = Store(ctx.store_for_read())
    rec = next((r for _i, r in runs_of(st, set_name, limit=50)), None)
    if rec is None:
        raise PlannerError(f"no recorded realise of set {set_name!r}; run `planner realise {set_name}` first",
                           where=str(ctx.store))
    cache = BinaryCache(to, trusted=TrustedKeys(), signer=Signer.from_file(signing_key))
    from ..progress import make_progress

    progress = make_progress(progress_mode, task="push")
    try:
        counts = push_run(cache, st, rec, with_inputs=not no_inputs, progress=progress)
    finally:
        progress("close", None)
    click.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


@store.command("pull")
@click.argument("set_name", metavar="[SET]", required=False)
@click.option("--from", "sources", multiple=True, required=True, metavar="URL",
              help="Binary cache to pull from: oci://HOST/REPO (repeatable).")
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="NAME:KEY",
              help="Public key whose signatures are trusted (repeatable).")
@click.pass_obj
def store_pull(ctx: Context, set_name: str | None, sources: tuple[str, ...], trusted_keys: tuple[str, ...]) -> None:
    """Fetch SET's closure from binary caches, verified."""
    from .. import planning
    from ..cache import BinaryCache, TrustedKeys, pull_closure
    from ..store import Store

    p = planning.load(ctx.root, default_set(ctx, set_name)).plan
    trusted = TrustedKeys(trusted_keys)
    caches = [BinaryCache(u, trusted=trusted) for u in sources]
    got, missing = pull_closure(caches, Store(ctx.store_for_write()), p)
    from ..cache import classify_miss

    for nid, misses in missing.items():
        why = classify_miss(misses, built_before=False) if misses else None
        click.echo(f"missing {nid}: " + (f"{why.category}: {why.detail}" if why else "a dependency is missing"))
    click.echo(f"{len(got)} pulled or present, {len(missing)} missing")
    if missing:
        sys.exit(1)


@click.group()
def keys() -> None:
    """Signing keys for binary caches."""


@keys.command("generate")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Key name (default: the host name).")
def keys_generate(path: Path, name: str | None) -> None:
    """Write an ed25519 secret key; print its public key."""
    from ..cache import generate_key

    click.echo(generate_key(output_file(path), name))
