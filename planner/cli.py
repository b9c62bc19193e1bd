"""The command line: parse, call, print. Everything here is callable from Python elsewhere.

Imports are lazy: a no-op `planner realise` must not pay for httpx, networkx or rich.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import PlannerError


class Context:
    def __init__(self, root: Path, store: Path, mirrors: list[str] = ()) -> None:
        self.root = root
        self.store = store
        self.mirrors = list(mirrors)


def _fail(exc: PlannerError) -> None:
    click.echo(f"planner: error: {exc.line()}", err=True)
    sys.exit(exc.exit_code or 1)


class _Group(click.Group):
    """Turns typed errors into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PlannerError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("planner: interrupted; the store is consistent", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=".",
              help="Project folder holding recipes/, lockfiles/, patches/.")
@click.option("--store", "store", type=click.Path(path_type=Path), envvar="PLANNER_STORE", default=None,
              help="Store folder (env PLANNER_STORE; default ./store under --root).")
@click.option("--mirror", "mirrors", multiple=True, metavar="URL",
              help="A source mirror (folder or URL; repeatable; env PLANNER_MIRRORS; planner.toml [mirrors]).")
@click.version_option(package_name="planner")
@click.pass_context
def main(ctx: click.Context, root: Path, store: Path | None, mirrors: tuple[str, ...]) -> None:
    """Reproducible builds of GPU machine-learning container images."""
    root = root.absolute()
    ctx.obj = Context(root, (store or root / "store").absolute(),
                      [m if "://" in m else Path(m).absolute().as_uri() for m in mirrors])


def _default_set(ctx: Context, name: str | None) -> str:
    if name:
        return name
    sets = sorted(p.name for p in (ctx.root / "recipes").glob("*") if (p / "set.toml").is_file())
    if len(sets) == 1:
        return sets[0]
    raise PlannerError(f"name a recipe set (one of: {', '.join(sets) or 'none found under recipes/'})")


# -- lock ------------------------------------------------------------------------------------

@main.command()
@click.argument("set_name", metavar="SET", required=False)
@click.option("--update", multiple=True, metavar="NAME", help="Re-resolve this input or recipe (repeatable).")
@click.option("--check", is_flag=True, help="Fail if the lock is stale or incomplete; no network.")
@click.pass_obj
def lock(ctx: Context, set_name: str | None, update: tuple[str, ...], check: bool) -> None:
    """Resolve every input to a content-hash pin and write lockfiles/SET.lock."""
    from . import lock as lockmod
    from .recipes import load_set

    rs = load_set(ctx.root, _default_set(ctx, set_name))
    if check:
        problems = lockmod.check(rs, lockmod.read(rs.lockfile))
        for p in problems:
            click.echo(f"stale: {p.line()}", err=True)
        if problems:
            raise PlannerError(f"{len(problems)} problem(s) in {rs.lockfile.relative_to(ctx.root)}",
                               where="lock --check")
        click.echo(f"{rs.lockfile.relative_to(ctx.root)}: up to date ({len(lockmod.read(rs.lockfile).inputs)} inputs)")
        return
    from .mirrors import load_mirrors
    from .resolve import UnresolvedInputs, lock_set
    from .store import Store

    store = Store(ctx.store)
    try:
        result, changed = lock_set(rs, store, update=frozenset(update), log=lambda s: click.echo(s, err=True),
                                   mirrors=load_mirrors(ctx.root, ctx.mirrors))
    except UnresolvedInputs as exc:
        for id_ in exc.changed:
            click.echo(f"pinned {id_}")
        for id_, why in exc.failures:
            click.echo(f"unlocked {id_}: {why}", err=True)
        raise
    for id_ in changed:
        click.echo(f"pinned {id_}")
    click.echo(f"wrote {rs.lockfile.relative_to(ctx.root)} ({len(result.inputs)} inputs, {len(changed)} changed)")


# -- plan ------------------------------------------------------------------------------------

@main.command()
@click.argument("set_name", metavar="SET", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "svg"]), default="text")
@click.option("--target", default=None, help="Plan this recipe instead of the set's target.")
@click.option("--sandbox", type=click.Choice(["on", "off"]), default="on")
@click.pass_obj
def plan(ctx: Context, set_name: str | None, as_json: bool, fmt: str, target: str | None, sandbox: str) -> None:
    """Show the derivation graph: each node's key and whether it would be built or reused."""
    from .planview import plan_view

    view = plan_view(ctx.root, _default_set(ctx, set_name), ctx.store, target=target, sandbox=sandbox == "on")
    if as_json:
        click.echo(json.dumps(view.to_json(), indent=2, sort_keys=True))
    elif fmt == "dot":
        click.echo(view.to_dot())
    elif fmt == "svg":
        click.echo(view.to_svg())
    else:
        click.echo(view.to_text())


# -- realise ---------------------------------------------------------------------------------

@main.command()
@click.argument("set_name", metavar="SET", required=False)
@click.option("-j", "--jobs", type=int, default=0, help="Parallel builds (default: number of cores).")
@click.option("--dry-run", is_flag=True, help="Say what would be fetched and built, in order; build nothing.")
@click.option("--check", is_flag=True, help="Rebuild the closure and compare with the stored outputs.")
@click.option("--keep-going", is_flag=True, help="Continue past failed nodes; report all failures at the end.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out-link", type=click.Path(path_type=Path), default=None, help="Symlink to the output (like Nix's result).")
@click.option("--target", default=None, help="Realise this recipe instead of the set's target.")
@click.option("--sandbox", type=click.Choice(["on", "off"]), default="on",
              help="off: build without bubblewrap; outputs are marked impure.")
@click.option("--executor", envvar="PLANNER_EXECUTOR", default=None, metavar="URL",
              help="dask://HOST:PORT to build on a Dask cluster (default: the local pool).")
@click.option("--substituter", "substituters", multiple=True, metavar="URL",
              help="Binary cache to substitute from: oci://HOST/REPO (repeatable; env PLANNER_SUBSTITUTERS).")
@click.option("--cache-to", "cache_to", multiple=True, metavar="URL", help="Binary cache to push outputs to.")
@click.option("--signing-key", type=click.Path(dir_okay=False, path_type=Path), envvar="PLANNER_SIGNING_KEY",
              default=None, help="Secret key that signs pushed entries (planner keys generate).")
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="NAME:KEY",
              help="Public key whose signatures are trusted (repeatable; env PLANNER_TRUSTED_KEYS).")
@click.option("--platform", "platform_", default=None, metavar="OS/ARCH",
              help="Only the targets for this platform (and those without one), e.g. linux/arm64.")
@click.option("--download", type=click.Choice(["toplevel", "all"]), default="toplevel",
              help="With a remote executor: fetch only the targets' outputs (default) or every output.")
@click.pass_obj
def realise(ctx: Context, set_name: str | None, jobs: int, dry_run: bool, check: bool, keep_going: bool,
            as_json: bool, out_link: Path | None, target: str | None, sandbox: str, executor: str | None,
            substituters: tuple[str, ...], cache_to: tuple[str, ...], signing_key: Path | None,
            trusted_keys: tuple[str, ...], platform_: str | None, download: str) -> None:
    """Build what is missing and print the target's output."""
    name = _default_set(ctx, set_name)
    if not (dry_run or check or executor or cache_to or out_link or platform_):
        # The no-op fast path: the standard library and one sqlite query, nothing else.
        from .noop import try_noop

        cache = try_noop(ctx.root, name, ctx.store, target, sandbox == "on")
        if cache is not None:
            if as_json:
                click.echo(json.dumps(_noop_json(name, cache), indent=2, sort_keys=True))
            else:
                click.echo(cache["output"] or "\n".join(n["path"] for n in cache["nodes"]
                                                        if n["id"] in cache["targets"]))
                if cache.get("digest"):
                    click.echo(cache["digest"])
            return
    from .mirrors import load_mirrors
    from .realise import RealiseOptions, realise as do_realise

    subs = substituters or tuple(os.environ.get("PLANNER_SUBSTITUTERS", "").split())
    trusted = trusted_keys or tuple(os.environ.get("PLANNER_TRUSTED_KEYS", "").split())
    opts = RealiseOptions(jobs=jobs, dry_run=dry_run, check=check, keep_going=keep_going, sandbox=sandbox == "on",
                          out_link=out_link, target=target, mirrors=tuple(load_mirrors(ctx.root, ctx.mirrors)),
                          executor=executor, substituters=subs, cache_to=cache_to, signing_key=signing_key,
                          trusted_keys=trusted, platform=platform_, download=download)
    progress = None
    if not as_json and not dry_run:
        from .progress import make_progress

        progress = make_progress()
    try:
        result = do_realise(ctx.root, name, ctx.store, opts, progress=progress)
    finally:
        if progress is not None:
            progress("close", None)
    if progress is None:  # the live display printed them already
        for w in result.warnings:
            click.echo(f"planner: warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    elif dry_run:
        for step in result.steps:
            click.echo(step)
        click.echo(f"{sum(n.action != 'reused' for n in result.nodes)} to build, "
                   f"{sum(n.action == 'reused' for n in result.nodes)} valid")
        if result.blocked:
            raise PlannerError(result.blocked)
    elif not result.failures:
        built = sum(n.action == "built" for n in result.nodes)
        if not result.noop:
            click.echo(f"{built} built, {sum(n.action == 'reused' for n in result.nodes)} reused", err=True)
        for c in result.checks:
            click.echo(f"check {c.node}: {'identical' if c.ok else 'DIFFERS: ' + ', '.join(c.differing[:10])}")
        if result.output:
            click.echo(result.output)
        else:
            for t in result.targets:
                n = next(x for x in result.nodes if x.id == t)
                if n.path:
                    click.echo(n.path)
        if result.digest:
            click.echo(result.digest)
    for f in result.failures:
        click.echo(f"planner: build failed: {f}", err=True)
    if result.failures:
        sys.exit(1)
    if any(not c.ok for c in result.checks):
        click.echo("planner: error: --check found outputs that differ from the stored ones", err=True)
        sys.exit(1)


def _noop_json(set_name: str, cache: dict) -> dict:
    targets = cache["targets"]
    return {
        "set": set_name, "target": targets[0] if len(targets) == 1 else targets, "targets": targets,
        "output": cache["output"], "digest": cache["digest"], "run": None, "failures": [], "checks": [],
        "nodes": [dict(n, action="reused", reason="valid in the store", seconds=0.0) for n in cache["nodes"]],
    }


# -- hashing and store -----------------------------------------------------------------------

@main.command("hash")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--sha256", is_flag=True, help="Also print the sha256 of files.")
def hash_cmd(paths: tuple[Path, ...], sha256: bool) -> None:
    """Tree hash (v1) of folders and files, like `nix hash path`."""
    from .hashing import file_sha256_and_blake3, tree_digest

    for p in paths:
        if sha256 and p.is_file():
            sha, b3 = file_sha256_and_blake3(p)
            click.echo(f"{b3} sha256:{sha}  {p}")
        else:
            click.echo(f"{tree_digest(p)}  {p}")


@main.command()
@click.argument("what", metavar="URL | GIT_URL@REV")
@click.pass_obj
def prefetch(ctx: Context, what: str) -> None:
    """Fetch a URL or a git revision into the store once and print its pins (sha256, tree hash)."""
    from .mirrors import load_mirrors
    from .resolve import prefetch as do_prefetch
    from .store import Store

    decl, li = do_prefetch(Store(ctx.store), what, mirrors=load_mirrors(ctx.root, ctx.mirrors),
                           log=lambda s: click.echo(s, err=True))
    pin = li.pins["any"]
    if pin.commit:
        click.echo(f"commit {pin.commit}")
    if pin.sha256:
        click.echo(f"sha256 {pin.sha256}")
    if pin.size is not None:
        click.echo(f"size {pin.size}")
    click.echo(f"tree {pin.tree}")


@main.group()
def store() -> None:
    """Inspect and maintain the store."""


@store.command("verify")
@click.pass_obj
def store_verify(ctx: Context) -> None:
    """Re-hash every entry and report corruption."""
    from .store import Store

    bad = Store(ctx.store).verify()
    for e, why in bad:
        click.echo(f"corrupt: {e.path.name}: {why}")
    if bad:
        raise PlannerError(f"{len(bad)} corrupt entr{'y' if len(bad) == 1 else 'ies'}", where=str(ctx.store))
    click.echo("store ok")


@store.command("gc")
@click.pass_obj
def store_gc(ctx: Context) -> None:
    """Remove entries unreachable from roots (last realised targets, out-links)."""
    from .store import Store

    removed = Store(ctx.store).gc()
    for r in removed:
        click.echo(f"removed {r}")
    click.echo(f"{len(removed)} entries removed")


@store.command("push")
@click.argument("set_name", metavar="SET")
@click.option("--to", "to", required=True, metavar="URL", help="oci://HOST/REPO")
@click.option("--signing-key", type=click.Path(dir_okay=False, path_type=Path), envvar="PLANNER_SIGNING_KEY",
              required=True)
@click.option("--no-inputs", is_flag=True, help="Push built outputs only, not the fetched sources.")
@click.pass_obj
def store_push(ctx: Context, set_name: str, to: str, signing_key: Path, no_inputs: bool) -> None:
    """Push the closure of the last realise of SET to a binary cache."""
    from .cache import BinaryCache, Signer, TrustedKeys, push_run
    from .store import Store

    st = Store(ctx.store)
    rec = next((r for _i, r in st.runs() if r.get("set") == set_name), None)
    if rec is None:
        raise PlannerError(f"no recorded realise of set {set_name!r}")
    cache = BinaryCache(to, trusted=TrustedKeys(), signer=Signer.from_file(signing_key))
    counts = push_run(cache, st, rec, with_inputs=not no_inputs)
    click.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


@store.command("pull")
@click.argument("set_name", metavar="SET")
@click.option("--from", "sources", multiple=True, required=True, metavar="URL")
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="NAME:KEY")
@click.pass_obj
def store_pull(ctx: Context, set_name: str, sources: tuple[str, ...], trusted_keys: tuple[str, ...]) -> None:
    """Fetch the closure of SET from binary caches into the store, verifying signatures."""
    from . import lock as lockmod
    from .cache import BinaryCache, TrustedKeys, pull_closure
    from .graph import plan as make_plan
    from .host import detect_host
    from .recipes import load_set
    from .store import Store

    rs = load_set(ctx.root, set_name)
    p = make_plan(rs, lockmod.read(rs.lockfile), detect_host())
    trusted = TrustedKeys(trusted_keys)
    caches = [BinaryCache(u, trusted=trusted) for u in sources]
    got, missing = pull_closure(caches, Store(ctx.store), p)
    from .cache import classify_miss

    for nid, misses in missing.items():
        why = classify_miss(misses, built_before=False) if misses else None
        click.echo(f"missing {nid}: " + (f"{why.category}: {why.detail}" if why else "a dependency is missing"))
    click.echo(f"{len(got)} pulled or present, {len(missing)} missing")
    if missing:
        sys.exit(1)


@main.group()
def keys() -> None:
    """Signing keys for binary caches."""


@keys.command("generate")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Key name (default: the host name).")
def keys_generate(path: Path, name: str | None) -> None:
    """Write a new ed25519 secret key to PATH (mode 0600) and print its public key."""
    from .cache import generate_key

    click.echo(generate_key(path, name))


@main.command("log")
@click.argument("node")
@click.argument("set_name", metavar="SET", required=False)
@click.pass_obj
def log_cmd(ctx: Context, node: str, set_name: str | None) -> None:
    """Print the build log of a node (by id, name or key) from the last run."""
    from .store import Store

    st = Store(ctx.store)
    for _id, rec in st.runs():
        for n in rec.get("nodes", []):
            if node in (n["id"], n["name"], n["key"], n.get("build_key")) and n.get("build_key"):
                path = ctx.store / "logs" / f"{n['build_key']}.log"
                if path.exists():
                    click.echo(path.read_text(errors="replace"), nl=False)
                    return
    raise PlannerError(f"no build log for {node!r}")


# -- explanation -----------------------------------------------------------------------------

@main.command()
@click.argument("what", metavar="[SET|NODE]", required=False)
@click.option("--dry-run", is_flag=True, help="Explain what the next realise would build.")
@click.option("--against", "against", type=int, default=None, help="Compare with this run instead of the previous.")
@click.option("--run", "run_id", type=int, default=None, help="Explain this run instead of the last.")
@click.option("--set", "set_name", default=None, help="The recipe set, when WHAT is a node.")
@click.option("--expand", is_flag=True, help="List every rebuilt node under its cause.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def why(ctx: Context, what: str | None, dry_run: bool, against: int | None, run_id: int | None,
        set_name: str | None, expand: bool, as_json: bool) -> None:
    """Why the last realise rebuilt what it rebuilt (or what the next one would): root causes first."""
    from .why import explain_next, explain_run, render

    sets = {p.name for p in (ctx.root / "recipes").glob("*") if (p / "set.toml").is_file()}
    node = None
    if what and what in sets:
        set_name = what
    elif what:
        node = what
    name = _default_set(ctx, set_name)
    if dry_run:
        exp = explain_next(ctx.root, name, ctx.store, node=node)
    else:
        exp = explain_run(ctx.root, name, ctx.store, run_id=run_id, against=against, node=node)
    if as_json:
        click.echo(json.dumps(exp.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(render(exp, expand=expand, node=node))


@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--set", "set_name", default=None)
@click.pass_obj
def diff(ctx: Context, a: str, b: str, set_name: str | None) -> None:
    """Field-level diff of two nodes' preimages (two keys, or one node in the last two runs)."""
    from .why import diff_keys, render_diff

    pa, pb, changes = diff_keys(ctx.store, a, b, set_name)
    click.echo(render_diff(a, b, pa, pb, changes, ctx.store))


@main.command("why-depends")
@click.argument("a")
@click.argument("b")
@click.option("--set", "set_name", default=None)
@click.pass_obj
def why_depends_cmd(ctx: Context, a: str, b: str, set_name: str | None) -> None:
    """The shortest dependency path from A down to B, and the input that carries each step."""
    from .why import why_depends

    path = why_depends(ctx.root, _default_set(ctx, set_name), a, b)
    for i, (nid, via) in enumerate(path):
        click.echo(("  " * i) + nid + (f"  --[{via}]-->" if via else ""))


@main.command()
@click.argument("node")
@click.option("--set", "set_name", default=None)
@click.pass_obj
def show(ctx: Context, node: str, set_name: str | None) -> None:
    """Print a node's preimage (everything its key covers) and its key."""
    from . import lock as lockmod
    from .graph import plan as make_plan
    from .host import detect_host
    from .recipes import load_set

    rs = load_set(ctx.root, _default_set(ctx, set_name))
    p = make_plan(rs, lockmod.read(rs.lockfile), detect_host())
    found = [n for n in p.nodes.values() if node in (n.id, n.name, n.key)]
    if not found:
        raise PlannerError(f"no node {node!r} in set {rs.name!r}")
    for n in found:
        click.echo(f"# {n.id}  key {n.key}")
        click.echo(json.dumps(n.preimage, indent=2, sort_keys=True))


from .oci.cli import push, export  # noqa: E402
main.add_command(push)
main.add_command(export)


if __name__ == "__main__":
    main()
