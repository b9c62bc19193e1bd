"""`planner realise`: parse, answer a no-op from the plan cache, else call `planner.realise`, print."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from ..errors import PlannerError
from .common import Context, default_set, output_file


@click.command()
@click.argument("set_name", metavar="[SET]", required=False)
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=0,
              help="Parallel builds (0, the default: the number of cores).")
@click.option("--dry-run", is_flag=True, help="Say what would be fetched and built, in order; build nothing.")
@click.option("--check", is_flag=True, help="Rebuild the closure and compare with the stored outputs.")
@click.option("--check-targets", is_flag=True,
              help="Rebuild only the targets and compare (as nix-build --check); their inputs come from the store.")
@click.option("--keep-going", is_flag=True, help="Continue past failed nodes; report all failures at the end.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result (schema: docs/json.md).")
@click.option("--out-link", type=click.Path(path_type=Path), default=None, help="Symlink to the output (like Nix's result).")
@click.option("--target", default=None, help="Realise this recipe instead of the set's target.")
@click.option("--sandbox", type=click.Choice(["on", "off"]), default="on",
              help="off: build without bubblewrap; outputs are marked impure.")
@click.option("--executor", envvar="PLANNER_EXECUTOR", default=None, metavar="URL",
              help="dask://HOST:PORT to build on a Dask cluster (default: the local pool).")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the --executor's scheduler to answer.")
@click.option("--substituter", "substituters", multiple=True, metavar="URL",
              help="Binary cache to substitute from: oci://HOST/REPO (repeatable; env PLANNER_SUBSTITUTERS).")
@click.option("--cache-to", "cache_to", multiple=True, metavar="URL", help="Binary cache to push outputs to.")
@click.option("--signing-key", type=click.Path(dir_okay=False, path_type=Path), envvar="PLANNER_SIGNING_KEY",
              default=None, help="Secret key that signs pushed entries (planner keys generate).")
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="NAME:KEY",
              help="Public key whose signatures are trusted (repeatable; env PLANNER_TRUSTED_KEYS).")
@click.option("--platform", "platform_", default=None, metavar="OS/ARCH",
              help="Only the targets for this platform (and those without one), e.g. linux/arm64.")
@click.option("--variant", "variant", default=None, metavar="NAME",
              help="Only the targets for this CUDA variant of set.toml [cuda] (and those without one).")
@click.option("--download", type=click.Choice(["toplevel", "all"]), default="toplevel",
              help="With a remote executor: fetch only the targets' outputs (default) or every output.")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "plain", "rich"]), default="auto",
              envvar="PLANNER_PROGRESS", show_default=True,
              help="plain: a line per node start and end (CI logs); rich: a live bar; auto: rich on a terminal.")
@click.option("-L", "--print-build-logs", is_flag=True, help="Stream build output, each line prefixed by its node.")
@click.pass_obj
def realise(ctx: Context, set_name: str | None, jobs: int, dry_run: bool, check: bool, check_targets: bool,
            keep_going: bool,
            as_json: bool, out_link: Path | None, target: str | None, sandbox: str, executor: str | None,
            substituters: tuple[str, ...], cache_to: tuple[str, ...], signing_key: Path | None,
            trusted_keys: tuple[str, ...], platform_: str | None, variant: str | None, download: str, progress_mode: str,
            print_build_logs: bool, connect_timeout: float) -> None:
    """Build what is missing; print the target's store path.

    Like `nix build`: fetches what the lock pins, builds each missing node in a sandbox (in
    parallel, the critical path first) and prints the target's output and image digest."""
    if check and check_targets:
        raise click.UsageError("--check rebuilds the closure, --check-targets the targets alone: pass one of them")
    if not math.isfinite(connect_timeout):  # FloatRange lets nan and inf through
        raise PlannerError(f"--connect-timeout {connect_timeout!r}: want a finite number of seconds above 0")
    source = click.get_current_context().get_parameter_source
    if signing_key is not None and not cache_to and source("signing_key") != ParameterSource.ENVIRONMENT:
        # (PLANNER_SIGNING_KEY alone is no mistake: `store push` and the workers read it too.)
        raise click.UsageError("--signing-key signs what --cache-to pushes: pass --cache-to URL too")
    subs = substituters or tuple(os.environ.get("PLANNER_SUBSTITUTERS", "").split())
    trusted = trusted_keys or tuple(os.environ.get("PLANNER_TRUSTED_KEYS", "").split())
    _check_caches(subs, "--substituter" if substituters else "PLANNER_SUBSTITUTERS", cache_to,
                  trusted, "--trusted-key" if trusted_keys else "PLANNER_TRUSTED_KEYS", signing_key,
                  "PLANNER_SIGNING_KEY" if source("signing_key") == ParameterSource.ENVIRONMENT else "--signing-key")
    name = default_set(ctx, set_name)
    if out_link is not None:
        output_file(out_link)
        from ..plancache import check_out_link

        check_out_link(out_link)
    check = check or check_targets
    ctx.store_for_write()
    # The no-op fast path: the standard library and one sqlite query, nothing else. With an
    # --out-link, realise() answers it: the new link must become a gc root in the store.
    from ..plancache import answer_noop, noop_text

    cache = None if out_link else answer_noop(
        ctx.root.resolve(), name, ctx.store, target=target, sandboxed=sandbox == "on", dry_run=dry_run, check=check,
        executor=executor, cache_to=cache_to, platform=platform_, variant=variant)
    if cache is not None:
        click.echo(json.dumps(_noop_json(name, cache), indent=2, sort_keys=True) if as_json else noop_text(cache))
        return
    from ..mirrors import load_mirrors
    from ..realise import RealiseOptions, realise as do_realise

    opts = RealiseOptions(jobs=jobs, dry_run=dry_run, check=check, check_targets_only=check_targets,
                          keep_going=keep_going, sandbox=sandbox == "on",
                          out_link=out_link, target=target, mirrors=tuple(load_mirrors(ctx.root, ctx.mirrors)),
                          executor=executor, substituters=subs, cache_to=cache_to, signing_key=signing_key,
                          trusted_keys=trusted, platform=platform_, variant=variant, download=download,
                          connect_timeout=connect_timeout)
    progress = None
    if not as_json and not dry_run:
        from ..progress import make_progress

        progress = make_progress(progress_mode, print_build_logs=print_build_logs)
    try:
        result = do_realise(ctx.root, name, ctx.store, opts, progress=progress)
    finally:
        if progress is not None:
            progress("close", None)
    _report(result, name, as_json=as_json, dry_run=dry_run, live=progress is not None)


def _check_caches(subs: tuple[str, ...], subs_from: str, cache_to: tuple[str, ...], trusted: tuple[str, ...],
                  trusted_from: str, signing_key: Path | None, key_from: str) -> None:
    """The binary caches' URLs and keys, parsed as the build parses them (planner.cache) but
    before anything else, a no-op included: a mistyped one is said at once, each error naming
    the option (or variable) it came from, not once something needs building, or never."""
    if not (subs or cache_to or trusted):
        return
    from ..cache import CacheError, CacheRef, Signer, TrustedKeys

    def named(option: str, parse, value) -> None:
        try:
            parse(value)
        except CacheError as e:
            raise CacheError(e.message, where=f"{option} {e.where}" if e.where else option) from None

    for url in subs:
        named(subs_from, CacheRef.parse, url)
    for url in cache_to:
        named("--cache-to", CacheRef.parse, url)
    named(trusted_from, TrustedKeys, trusted)
    if cache_to:
        if signing_key is None:
            raise CacheError("--cache-to needs --signing-key: cache entries are signed")
        named(key_from, Signer.from_file, signing_key)


def _report(result, set_name: str, *, as_json: bool, dry_run: bool, live: bool) -> None:
    """Print a realise's result (or its JSON); exit non-zero on failures or a differing --check."""
    if not live:  # the live display printed them already
        for w in result.warnings:
            click.echo(f"planner: warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    elif dry_run:
        for step in result.steps:
            click.echo(step)
        checks = sum(step.startswith("check ") for step in result.steps)
        builds = sum(n.action != "reused" for n in result.nodes) - checks
        click.echo(f"{builds} to build, " + (f"{checks} to check, " if checks else "")
                   + f"{sum(n.action == 'reused' for n in result.nodes)} valid")
        if result.blocked:
            raise PlannerError(result.blocked)
    else:
        if not result.noop:  # with failures too: what did build stays built
            click.echo(_summary(result.nodes), err=True)
        if not result.failures:
            _print_outputs(result)
        else:  # what --check found is said even when a node failed (its dependent, on it)
            _print_checks(result)
    for f in result.failures:
        click.echo(f"planner: {f}" if f.startswith("error: ") else f"planner: build failed: {f}", err=True)
    if result.failures:
        failed = [n.id for n in result.nodes if n.action == "failed"]
        if failed:
            click.echo(f"planner: hint: `planner log {failed[0]!r}` prints its build log; "
                       f"`planner why {set_name}` names the failed nodes", err=True)
        sys.exit(1)
    if any(not c.ok for c in result.checks):
        click.echo("planner: error: --check found outputs that differ from the stored ones", err=True)
        sys.exit(1)


def _print_checks(result) -> None:
    for c in result.checks:
        click.echo(f"check {c.node}: {'identical' if c.ok else 'DIFFERS: ' + ', '.join(c.differing[:10])}"
                   + (f" (the rebuilt output is kept in {c.kept})" if c.kept else ""))


def _print_outputs(result) -> None:
    _print_checks(result)
    if result.output:
        click.echo(result.output)
    else:
        for t in result.targets:
            n = next(x for x in result.nodes if x.id == t)
            if n.path:
                click.echo(n.path)
    if result.digest:
        click.echo(result.digest)


# The order of a summary's counts; built and reused are always said, the others when they happened.
_ACTIONS = ("built", "reused", "substituted", "checked", "failed", "skipped")


def _summary(nodes) -> str:
    """`2 built, 11 reused`, plus each other action any node had (`13 checked`, `1 failed`): the
    last line counts what the progress's `finished:` line counted, never less."""
    counts = {a: 0 for a in _ACTIONS}
    for n in nodes:
        counts[n.action] = counts.get(n.action, 0) + 1
    return ", ".join(f"{v} {a}" for a, v in counts.items() if v or a in ("built", "reused"))


def _noop_json(set_name: str, cache: dict) -> dict:
    targets = cache["targets"]
    return {
        # "schema" is planner.realise.RESULT_SCHEMA, not imported here: this is the no-op path.
        "schema": 1, "set": set_name, "target": targets[0] if len(targets) == 1 else targets, "targets": targets,
        "output": cache["output"], "digest": cache["digest"], "run": None, "failures": [], "checks": [],
        "nodes": [dict(n, action="reused", reason=n.get("reason") or "valid in the store", seconds=0.0)
                  for n in cache["nodes"]],
    }


