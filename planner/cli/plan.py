"""`planner plan`: the derivation graph, as text, JSON, dot or svg."""

from __future__ import annotations

import json

import click
from click.core import ParameterSource

from .common import Context, default_set


@click.command()
@click.argument("set_name", metavar="[SET]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema: docs/json.md).")
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "svg"]), default="text", show_default=True,
              help="text: one line per node; dot: Graphviz source; svg: the picture (needs graphviz).")
@click.option("--target", default=None, help="Plan this recipe instead of the set's target.")
@click.option("--sandbox", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="Plan keys as `realise --sandbox` would compute them (off: impure keys).")
@click.option("--platform", "platform_", default=None, metavar="OS/ARCH",
              help="Only this platform's nodes (and those without one), as `realise --platform`.")
@click.option("--variant", default=None, metavar="NAME",
              help="Only this CUDA variant of set.toml [cuda] (and nodes without one), as `realise --variant`.")
@click.pass_obj
def plan(ctx: Context, set_name: str | None, as_json: bool, fmt: str, target: str | None, sandbox: str,
         platform_: str | None, variant: str | None) -> None:
    """The derivation graph: keys, what builds, what is reused.

    Reads the store to tell valid outputs; a stale lock is warned about (its keys are the old
    ones until `planner lock SET`)."""
    from ..planview import plan_view

    if as_json and click.get_current_context().get_parameter_source("fmt") == ParameterSource.COMMANDLINE:
        raise click.UsageError("--json and --format are two outputs: pass one of them")
    name = default_set(ctx, set_name)
    store_root = ctx.store_for_write()
    view = plan_view(ctx.root, name, store_root, target=target, sandbox=sandbox == "on",
                     platform=platform_, variant=variant)
    if not store_root.exists():  # said once there is a plan: a refusal stays one line
        click.echo(f"planner: note: no store at {store_root} yet: every node shows as to build", err=True)
    for w in view.warnings:
        click.echo(f"planner: warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps(view.to_json(), indent=2, sort_keys=True))
    elif fmt == "dot":
        click.echo(view.to_dot())
    elif fmt == "svg":
        click.echo(view.to_svg())
    else:
        click.echo(view.to_text())


