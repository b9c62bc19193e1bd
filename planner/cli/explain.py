"""`planner why`, `diff`, `why-depends`, `show` and `log`: explaining keys, rebuilds and builds."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click

from ..errors import PlannerError
from .common import Context, default_set, sets_of


@click.command("log")
@click.argument("node")
@click.option("--set", "set_name", default=None, help="The recipe set (default: any set's runs).")
@click.option("--previous", is_flag=True, help="The attempt before the latest under the same key (a retry keeps it).")
@click.pass_obj
def log_cmd(ctx: Context, node: str, set_name: str | None, previous: bool) -> None:
    """Print a node's latest build log (failed builds too)."""
    from ..runs import runs_of
    from ..store import Store

    store_root = ctx.store_for_read()
    st = Store.for_reading(store_root)
    try:
        runs = [r for _i, r in runs_of(st, set_name)]
        if set_name is not None and not runs:
            _check_recorded_set(st, set_name)
    finally:
        st.close()
    if not any(node in (n.key, n.build_key) for rec in runs for n in rec.nodes):  # (a key is one node)
        from ..why import refuse_several_sets

        refuse_several_sets(node, [(0, rec) for rec in runs], set_name, "log")
    exact = any(node in (n.id, n.key, n.build_key) for rec in runs for n in rec.nodes)
    if not exact:
        _refuse_ambiguous(node, runs, set_name)
    seen: set[str] = set()
    for rec in runs:
        for n in rec.nodes:
            seen.update((n.id, n.name))
            if node not in ((n.id, n.key, n.build_key) if exact else (n.name,)):
                continue
            if n.build_key and re.fullmatch(r"[0-9a-z]{32}", n.build_key):  # (a run record is read, not trusted)
                path = store_root / "logs" / f"{n.build_key}.log"
                if previous:
                    from ..build import previous_log

                    path = previous_log(path)
                    if not os.path.lexists(path):
                        raise PlannerError(f"no earlier attempt of {n.id} under key {n.build_key} kept a log")
                if os.path.lexists(path):
                    from ..buildrun import read_log

                    click.echo(read_log(path), nl=False)
                    return
            if n.action == "failed":
                # Its latest attempt failed before building (a fetch, say): an older log would mislead.
                raise PlannerError(f"no build log: {n.id} failed before its build started: "
                                   f"{n.reason or 'no reason recorded'}")
    if node in seen:
        skipped = next((n for rec in runs for n in rec.nodes if node in (n.id, n.name) and n.action == "skipped"), None)
        if skipped is not None:
            raise PlannerError(f"no build log for {node!r}: its latest run skipped it ({skipped.reason or 'not built'})")
        raise PlannerError(f"no build log for {node!r}: it was reused or fetched, not built, in the recorded runs")
    from ..suggest import unknown

    raise unknown("node", node, {x for x in seen if "[" not in x}, where=f"runs of set {set_name!r}" if set_name else "recorded runs")


def _refuse_ambiguous(name: str, runs, set_name: str | None) -> None:
    """A recipe name that is several nodes (a platform or CUDA variant each): which log is
    meant is not guessed. `show` prints every node a name matches, each under its id, as a
    preimage is short; a log is not, and `--previous` or `> file` want one: name it by its id."""
    ids = sorted({n.id for rec in runs for n in rec.nodes if n.name == name})
    if len(ids) > 1:
        of = f" of set {set_name!r}" if set_name else ""
        raise PlannerError(f"{name!r} names {len(ids)} nodes{of}: {', '.join(ids)}; name one by its id "
                           f"(planner log {ids[0]!r})")


def _check_recorded_set(st, set_name: str) -> None:
    """--set of a command that reads the recorded runs: a name none of them has is most likely
    mistyped, and the sets that were realised are what it may have meant."""
    from ..runs import runs_of
    from ..suggest import unknown

    if runs_of(st, set_name, limit=1):  # (asked by set: the newest runs may all be another set's)
        return
    recorded = runs_of(st, None)
    if not any(r.set == set_name for _i, r in recorded):
        raise unknown("recorded realise of set", set_name, {r.set for _i, r in recorded}, where=str(st.root))


# -- explanation -----------------------------------------------------------------------------

@click.command()
@click.argument("what", metavar="[SET|NODE]", required=False)
@click.option("--dry-run", is_flag=True, help="Explain what the next realise would build.")
@click.option("--against", "against", type=int, default=None, help="Compare with this run instead of the previous.")
@click.option("--run", "run_id", type=int, default=None, help="Explain this run instead of the last.")
@click.option("--set", "set_name", default=None, help="The recipe set, when WHAT is a node.")
@click.option("--expand", is_flag=True, help="List every rebuilt node under its cause.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable explanation (schema: docs/json.md).")
@click.pass_obj
def why(ctx: Context, what: str | None, dry_run: bool, against: int | None, run_id: int | None,
        set_name: str | None, expand: bool, as_json: bool) -> None:
    """Why the last realise rebuilt what it did: root causes.

    With --dry-run: what the next realise would rebuild, and why."""
    from ..why import explain_next, explain_run, render

    sets = sets_of(ctx)
    node = None
    if what and what in sets:
        set_name = what
    elif what:
        if set_name is None and len(sets) > 1:
            # A mistyped set, or a node without the --set that says whose: name both readings.
            from ..suggest import did_you_mean

            raise PlannerError(f"no recipe set {what!r}{did_you_mean(what, sets)}; for a node, add --set SET",
                               where=str(ctx.root / "recipes"))
        node = what
    name = default_set(ctx, set_name)
    if dry_run and (run_id is not None or against is not None):
        raise click.UsageError("--dry-run explains the next realise against the last run: it takes no --run "
                               "or --against")
    if dry_run:
        exp = explain_next(ctx.root, name, ctx.store_for_write(), node=node)
    else:
        exp = explain_run(ctx.root, name, ctx.store_for_read(), run_id=run_id, against=against, node=node)
    if as_json:
        click.echo(json.dumps(exp.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(render(exp, expand=expand, node=node))


@click.command()
@click.argument("a", metavar="NODE|KEY")
@click.argument("b", metavar="[NODE|KEY]", required=False)
@click.option("--set", "set_name", default=None, help="The recipe set whose runs name the nodes.")
@click.pass_obj
def diff(ctx: Context, a: str, b: str | None, set_name: str | None) -> None:
    """Field-level diff of two preimages (like nix-diff).

    With one NODE: its last build against its build before."""
    from ..why import diff_keys, render_diff

    store_root = ctx.store_for_read()
    if set_name is not None:
        from ..store import Store

        st = Store.for_reading(store_root)
        try:
            _check_recorded_set(st, set_name)
        finally:
            st.close()
    pa, pb, changes, (la, lb) = diff_keys(store_root, a, b, set_name)
    click.echo(render_diff(la, lb, pa, pb, changes, store_root))


@click.command("why-depends")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--set", "set_name", default=None, help="The recipe set (default: the only one).")
@click.pass_obj
def why_depends_cmd(ctx: Context, a: str, b: str, set_name: str | None) -> None:
    """Why A depends on B: the shortest path, edge by edge."""
    from ..why import why_depends

    path = why_depends(ctx.root, default_set(ctx, set_name), a, b)
    for i, (nid, via) in enumerate(path):
        click.echo(("  " * i) + nid + (f"  --[{via}]-->" if via else ""))


@click.command()
@click.argument("node", required=False)
@click.option("--set", "set_name", default=None, help="The recipe set (default: the only one).")
@click.option("--roots", is_flag=True, help="Instead: the store's gc roots and their closures (store roots).")
@click.pass_context
def show(cctx: click.Context, node: str | None, set_name: str | None, roots: bool) -> None:
    """Print a node's key and preimage (all its key covers)."""
    ctx = cctx.obj
    if roots or node is None:
        if node is not None or not roots:
            raise click.UsageError("name a NODE, or pass --roots for the gc roots")
        from .store import store_roots

        cctx.invoke(store_roots)
        return
    from .. import planning

    planned = planning.load(ctx.root, default_set(ctx, set_name))
    p = planned.plan
    found = [n for n in p.nodes.values() if node in (n.id, n.name, n.key)]
    if not found:
        from ..suggest import unknown

        raise unknown("node", node, {n.name for n in p.nodes.values()}, where=f"set {planned.set_name!r}")
    from ..derivation import BUILD_ROOT_MOUNT

    store = None
    if any(BUILD_ROOT_MOUNT in n.deps for n in found) and (Path(ctx.store) / "index.sqlite").exists():
        from ..store import Store

        store = Store.for_reading(Path(ctx.store))
    for n in found:
        click.echo(f"# {n.id}  key {n.key}")
        if BUILD_ROOT_MOUNT in n.deps:
            root = p.nodes[n.deps[BUILD_ROOT_MOUNT]]
            real = store.realisation(root.key) if store is not None else None
            click.echo(f"# build root {root.id}  key {root.key}  output "
                       + (real.digest if real is not None else "not built yet (its key pins every .deb)"))
        elif n.preimage.host is not None:
            click.echo("# build root: HOST /usr (set.toml build-root = \"host\"): NOT HERMETIC, the key "
                       "carries this machine's package versions")
        if n.limits is not None:
            from ..limits import describe_limits

            click.echo(f"# {describe_limits(n.limits)}")
        click.echo(json.dumps(n.preimage.to_json(), indent=2, sort_keys=True))
    if store is not None:
        store.close()
