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
    from .errors import StoreError

    hint = "pass --store PATH or set PLANNER_STORE"
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "the store" if p == path else f"a parent of the store ({p})"
                raise StoreError(f"{what} is not a folder; {hint}", where=str(path))
            break
    if must_exist and not path.is_dir():
        raise StoreError(f"no store here (nothing realised yet, or a mistyped path); {hint}", where=str(path))


def _mirror_url(m: str) -> str:
    return m if "://" in m else Path(m).absolute().as_uri()


def _set_root(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(Context).root = value.absolute()


def _set_store(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(Context).explicit_store = value.absolute()


def _add_mirrors(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> None:
    ctx.find_object(Context).mirrors.extend(_mirror_url(m) for m in value)


_ROOT_HELP = "Project folder holding recipes/, lockfiles/, patches/ (default: the current folder)."
_STORE_HELP = "Store folder (env PLANNER_STORE; default: store/ under --root)."
_MIRROR_HELP = "A source mirror: folder or URL (repeatable; env PLANNER_MIRRORS; planner.toml [mirrors])."


def _global_options(cmd: click.Command) -> None:
    """Give a subcommand the global options too, so they work after it (`planner lock demo
    --mirror DIR`). Parsed after the group's, so a later one wins."""
    cmd.params.extend([
        click.Option(["--root"], type=click.Path(file_okay=False, path_type=Path), default=None,
                     expose_value=False, callback=_set_root, is_eager=True, help=_ROOT_HELP),
        click.Option(["--store"], type=click.Path(path_type=Path), default=None, expose_value=False,
                     callback=_set_store, help=_STORE_HELP),
        click.Option(["--mirror"], multiple=True, metavar="URL", expose_value=False, callback=_add_mirrors,
                     help=_MIRROR_HELP),
    ])
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _global_options(sub)


def _fail(exc: PlannerError) -> None:
    click.echo(f"planner: error: {exc.line()}", err=True)
    sys.exit(exc.exit_code or 1)


_ORDER = ("lock", "plan", "realise", "why", "diff", "why-depends", "show", "log", "push", "export", "store", "mirror",
          "prefetch", "hash", "keys")


class _Group(click.Group):
    """Turns typed errors into one line on stderr and a non-zero exit."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        # The top level in the order of the workflow (lock, plan, realise, why, …), not the alphabet.
        names = list(self.commands)
        return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PlannerError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("planner: interrupted; the store is consistent", err=True)
            sys.exit(130)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:
            # A file system refusal the typed errors did not foresee: still one line, naming the path.
            if os.environ.get("PLANNER_DEBUG"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"planner: error: {where}{exc.strerror or exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            if os.environ.get("PLANNER_DEBUG"):
                raise
            text = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
            click.echo(f"planner: internal error: {text} (a bug: PLANNER_DEBUG=1 shows the traceback)", err=True)
            sys.exit(70)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=".", help=_ROOT_HELP)
@click.option("--store", "store", type=click.Path(path_type=Path), envvar="PLANNER_STORE", default=None,
              help=_STORE_HELP)
@click.option("--mirror", "mirrors", multiple=True, metavar="URL", help=_MIRROR_HELP)
@click.version_option(package_name="planner", help="Show the version and exit.")
@click.pass_context
def main(ctx: click.Context, root: Path, store: Path | None, mirrors: tuple[str, ...]) -> None:
    """Reproducible builds of GPU machine-learning container images.

    Global options (--root, --store, --mirror) go before or after the command.
    """
    ctx.obj = Context(root.absolute(), store.absolute() if store else None, [_mirror_url(m) for m in mirrors])


def _sets(ctx: Context) -> list[str]:
    return sorted(p.name for p in (ctx.root / "recipes").glob("*") if (p / "set.toml").is_file())


def _default_set(ctx: Context, name: str | None) -> str:
    """SET is optional wherever it is an argument: a project with one set means that one."""
    sets = _sets(ctx)
    if name:
        if name not in sets:
            from .suggest import unknown

            raise unknown("recipe set", name, sets, where=str(ctx.root / "recipes"))
        return name
    if len(sets) == 1:
        return sets[0]
    if not sets:
        raise PlannerError(f"no recipe sets under {ctx.root / 'recipes'} (a folder per set with a set.toml); "
                           "pass --root PROJECT")
    raise PlannerError(f"name a recipe set: one of {', '.join(sets)}")


# -- lock ------------------------------------------------------------------------------------

@main.command()
@click.argument("set_name", metavar="SET", required=False)
@click.option("--update", multiple=True, metavar="NAME", help="Re-resolve this input or recipe (repeatable).")
@click.option("--check", is_flag=True, help="Fail if the lock is stale or incomplete; no network.")
@click.pass_obj
def lock(ctx: Context, set_name: str | None, update: tuple[str, ...], check: bool) -> None:
    """Pin every input by content hash (lockfiles/SET.lock)."""
    from . import lock as lockmod
    from .recipes import load_set

    rs = load_set(ctx.root, _default_set(ctx, set_name))
    if check:
        problems: list = list(lockmod.check(rs, lockmod.read(rs.lockfile)))
        for p in problems:
            click.echo(f"stale: {p.line()}", err=True)
        if (ctx.store / "index.sqlite").is_file():
            from .resolve import lock_store_conflicts
            from .store import Store

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
        if problems:
            raise PlannerError(f"{len(problems)} problem(s) in {rs.lockfile.relative_to(ctx.root)}",
                               where="lock --check")
        click.echo(f"{rs.lockfile.relative_to(ctx.root)}: up to date ({len(lockmod.read(rs.lockfile).inputs)} inputs)")
        return
    from .mirrors import load_mirrors
    from .resolve import UnresolvedInputs, lock_set
    from .store import Store

    store = Store(ctx.store_for_write())
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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema: docs/json.md).")
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "svg"]), default="text", show_default=True,
              help="text: one line per node; dot: Graphviz source; svg: the picture (needs graphviz).")
@click.option("--target", default=None, help="Plan this recipe instead of the set's target.")
@click.option("--sandbox", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="Plan keys as `realise --sandbox` would compute them (off: impure keys).")
@click.pass_obj
def plan(ctx: Context, set_name: str | None, as_json: bool, fmt: str, target: str | None, sandbox: str) -> None:
    """The derivation graph: keys, what builds, what is reused.

    Reads the store to tell valid outputs; a stale lock is warned about (its keys are the old
    ones until `planner lock SET`)."""
    from .planview import plan_view

    name = _default_set(ctx, set_name)
    store_root = ctx.store_for_write()
    if not store_root.exists():
        click.echo(f"planner: note: no store at {store_root} yet: every node shows as to build", err=True)
    view = plan_view(ctx.root, name, store_root, target=target, sandbox=sandbox == "on")
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


# -- realise ---------------------------------------------------------------------------------

@main.command()
@click.argument("set_name", metavar="SET", required=False)
@click.option("-j", "--jobs", type=int, default=0, help="Parallel builds (default: number of cores).")
@click.option("--dry-run", is_flag=True, help="Say what would be fetched and built, in order; build nothing.")
@click.option("--check", is_flag=True, help="Rebuild the closure and compare with the stored outputs.")
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
def realise(ctx: Context, set_name: str | None, jobs: int, dry_run: bool, check: bool, keep_going: bool,
            as_json: bool, out_link: Path | None, target: str | None, sandbox: str, executor: str | None,
            substituters: tuple[str, ...], cache_to: tuple[str, ...], signing_key: Path | None,
            trusted_keys: tuple[str, ...], platform_: str | None, variant: str | None, download: str, progress_mode: str,
            print_build_logs: bool, connect_timeout: float) -> None:
    """Build what is missing; print the target's store path.

    Like `nix build`: fetches what the lock pins, builds each missing node in a sandbox (in
    parallel, the critical path first) and prints the target's output and image digest."""
    name = _default_set(ctx, set_name)
    ctx.store_for_write()
    # The no-op fast path: the standard library and one sqlite query, nothing else.
    from .plancache import fast_path_applies, noop_text, try_noop

    if fast_path_applies(dry_run=dry_run, check=check, executor=executor, cache_to=cache_to, platform=platform_,
                         variant=variant):
        cache = try_noop(ctx.root.resolve(), name, ctx.store, target, sandbox == "on")
        if cache is not None:
            if out_link and cache["output"]:
                from .plancache import out_link as make_link

                make_link(out_link, Path(cache["output"]))
            if as_json:
                click.echo(json.dumps(_noop_json(name, cache), indent=2, sort_keys=True))
            else:
                click.echo(noop_text(cache))
            return
    from .mirrors import load_mirrors
    from .realise import RealiseOptions, realise as do_realise

    subs = substituters or tuple(os.environ.get("PLANNER_SUBSTITUTERS", "").split())
    trusted = trusted_keys or tuple(os.environ.get("PLANNER_TRUSTED_KEYS", "").split())
    opts = RealiseOptions(jobs=jobs, dry_run=dry_run, check=check, keep_going=keep_going, sandbox=sandbox == "on",
                          out_link=out_link, target=target, mirrors=tuple(load_mirrors(ctx.root, ctx.mirrors)),
                          executor=executor, substituters=subs, cache_to=cache_to, signing_key=signing_key,
                          trusted_keys=trusted, platform=platform_, variant=variant, download=download,
                          connect_timeout=connect_timeout)
    progress = None
    if not as_json and not dry_run:
        from .progress import make_progress

        progress = make_progress(progress_mode, print_build_logs=print_build_logs)
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
        failed = [n.id for n in result.nodes if n.action == "failed"]
        if failed:
            click.echo(f"planner: hint: `planner log {failed[0]!r}` prints its build log; "
                       f"`planner why {name}` names the failed nodes", err=True)
        sys.exit(1)
    if any(not c.ok for c in result.checks):
        click.echo("planner: error: --check found outputs that differ from the stored ones", err=True)
        sys.exit(1)


def _noop_json(set_name: str, cache: dict) -> dict:
    targets = cache["targets"]
    return {
        # "schema" is planner.realise.RESULT_SCHEMA, not imported here: this is the no-op path.
        "schema": 1, "set": set_name, "target": targets[0] if len(targets) == 1 else targets, "targets": targets,
        "output": cache["output"], "digest": cache["digest"], "run": None, "failures": [], "checks": [],
        "nodes": [dict(n, action="reused", reason="valid in the store", seconds=0.0) for n in cache["nodes"]],
    }


# -- hashing and store -----------------------------------------------------------------------

@main.command("hash")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--sha256", is_flag=True, help="Also print the sha256 of files.")
def hash_cmd(paths: tuple[Path, ...], sha256: bool) -> None:
    """Tree hash (v1) of folders and files (nix hash path)."""
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
    """Fetch a URL or git revision once; print its pins."""
    from .mirrors import load_mirrors
    from .resolve import prefetch as do_prefetch
    from .store import Store

    decl, li = do_prefetch(Store(ctx.store_for_write()), what, mirrors=load_mirrors(ctx.root, ctx.mirrors),
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
    """Verify, collect, size, push and pull the store."""


@store.command("verify")
@click.pass_obj
def store_verify(ctx: Context) -> None:
    """Re-hash every entry and report corruption."""
    from .store import Store

    bad = Store(ctx.store_for_read(), read_only=True).verify()
    for e, why in bad:
        click.echo(f"corrupt: {e.path.name}: {why}")
    if bad:
        raise PlannerError(f"{len(bad)} corrupt entr{'y' if len(bad) == 1 else 'ies'}", where=str(ctx.store))
    click.echo("store ok")


@store.command("repair")
@click.pass_obj
def store_repair(ctx: Context) -> None:
    """Rebuild a damaged or lost index from what is on disk.

    Keeps what is still readable in the old index and registers the entries found on disk."""
    from .store import repair_index

    kept, added, moved = repair_index(ctx.store_for_read())
    if moved is not None:
        click.echo(f"old index kept as {moved.name}")
    click.echo(f"index rebuilt: {kept} rows salvaged, {added} entries registered from disk")


@store.command("gc")
@click.option("-n", "--dry-run", is_flag=True, help="List what would be removed, and its size; remove nothing.")
@click.pass_obj
def store_gc(ctx: Context, dry_run: bool) -> None:
    """Remove what no root reaches (nix-collect-garbage).

    Roots are the last realised target of each set and out-links (`planner store roots`)."""
    from .sizes import human, path_size
    from .store import Store

    st = Store(ctx.store_for_read())
    try:
        sizes = {e.path.name: path_size(e.path) for e in st.entries()} if dry_run else {}
        removed = st.gc(dry_run=dry_run)
    finally:
        st.close()
    verb = "would remove" if dry_run else "removed"
    for r in removed:
        click.echo(f"{verb} {r}" + (f"  {human(sizes.get(r, 0))}" if dry_run else ""))
    freed = f", {human(sum(sizes.get(r, 0) for r in removed))}" if dry_run else ""
    click.echo(f"{len(removed)} entries {verb}{freed}")


@store.command("roots")
@click.pass_obj
def store_roots(ctx: Context) -> None:
    """List the gc roots and the closure each keeps alive."""
    from .sizes import human, node_sizes
    from .store import Store

    st = Store(ctx.store_for_read())
    try:
        roots = st.live_roots()
        runs = st.runs(limit=1000)
    finally:
        st.close()
    if not roots:
        click.echo("no roots: `planner store gc` would remove everything")
    for name, path in roots.items():
        rec = next((r for _i, r in runs if r.get("output") and Path(r["output"]).name == path.name), None)
        closure = ""
        if rec is not None:
            top = next((n for n in node_sizes(rec) if n.path == rec["output"]), None)
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

    from .sizes import human, node_sizes
    from .store import Store

    name = _default_set(ctx, set_name)
    st = Store(ctx.store_for_read())
    try:
        rec = next((r for _i, r in st.runs(limit=1000) if r.get("set") == name), None)
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
    for t in rec.get("targets", []):
        top = next((n for n in sizes if n.id == t), None)
        if top is not None:
            click.echo(f"closure of {t}: {human(top.closure)} in {top.closure_paths} outputs")


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
    from .cache import BinaryCache, Signer, TrustedKeys, push_run
    from .runs import runs_of
    from .store import Store

    set_name = _default_set(ctx, set_name)
    st = Store(ctx.store_for_read())
    rec = next((r for _i, r in runs_of(st, set_name, limit=50)), None)
    if rec is None:
        raise PlannerError(f"no recorded realise of set {set_name!r}; run `planner realise {set_name}` first",
                           where=str(ctx.store))
    cache = BinaryCache(to, trusted=TrustedKeys(), signer=Signer.from_file(signing_key))
    from .progress import make_progress

    progress = make_progress(progress_mode)
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
    from . import planning
    from .cache import BinaryCache, TrustedKeys, pull_closure
    from .store import Store

    p = planning.load(ctx.root, _default_set(ctx, set_name)).plan
    trusted = TrustedKeys(trusted_keys)
    caches = [BinaryCache(u, trusted=trusted) for u in sources]
    got, missing = pull_closure(caches, Store(ctx.store_for_write()), p)
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
    """Write an ed25519 secret key; print its public key."""
    from .cache import generate_key

    click.echo(generate_key(path, name))


@main.command("log")
@click.argument("node")
@click.option("--set", "set_name", default=None, help="The recipe set (default: any set's runs).")
@click.pass_obj
def log_cmd(ctx: Context, node: str, set_name: str | None) -> None:
    """Print a node's latest build log (failed builds too)."""
    from .store import Store

    store_root = ctx.store_for_read()
    st = Store(store_root)
    try:
        runs = [r for _i, r in st.runs(limit=200) if set_name is None or r.get("set") == set_name]
    finally:
        st.close()
    seen: set[str] = set()
    for rec in runs:
        for n in rec.get("nodes", []):
            seen.update((n["id"], n["name"]))
            if node not in (n["id"], n["name"], n["key"], n.get("build_key")):
                continue
            if n.get("build_key"):
                path = store_root / "logs" / f"{n['build_key']}.log"
                if path.exists():
                    click.echo(path.read_text(errors="replace"), nl=False)
                    return
            if n.get("action") == "failed":
                # Its latest attempt failed before building (a fetch, say): an older log would mislead.
                raise PlannerError(f"no build log: {n['id']} failed before its build started: "
                                   f"{n.get('reason') or 'no reason recorded'}")
    if node in seen:
        raise PlannerError(f"no build log for {node!r}: it was reused or fetched, not built, in the recorded runs")
    from .suggest import unknown

    raise unknown("node", node, {x for x in seen if "[" not in x}, where=f"runs of set {set_name!r}" if set_name else "recorded runs")


# -- explanation -----------------------------------------------------------------------------

@main.command()
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
    from .why import explain_next, explain_run, render

    sets = {p.name for p in (ctx.root / "recipes").glob("*") if (p / "set.toml").is_file()}
    node = None
    if what and what in sets:
        set_name = what
    elif what:
        node = what
    name = _default_set(ctx, set_name)
    if dry_run:
        exp = explain_next(ctx.root, name, ctx.store_for_write(), node=node)
    else:
        exp = explain_run(ctx.root, name, ctx.store_for_read(), run_id=run_id, against=against, node=node)
    if as_json:
        click.echo(json.dumps(exp.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(render(exp, expand=expand, node=node))


@main.command()
@click.argument("a", metavar="NODE|KEY")
@click.argument("b", metavar="[NODE|KEY]", required=False)
@click.option("--set", "set_name", default=None, help="The recipe set whose runs name the nodes.")
@click.pass_obj
def diff(ctx: Context, a: str, b: str | None, set_name: str | None) -> None:
    """Field-level diff of two preimages (like nix-diff).

    With one NODE: its last build against its build before."""
    from .why import diff_keys, render_diff

    store_root = ctx.store_for_read()
    pa, pb, changes, (la, lb) = diff_keys(store_root, a, b, set_name)
    click.echo(render_diff(la, lb, pa, pb, changes, store_root))


@main.command("why-depends")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--set", "set_name", default=None, help="The recipe set (default: the only one).")
@click.pass_obj
def why_depends_cmd(ctx: Context, a: str, b: str, set_name: str | None) -> None:
    """Why A depends on B: the shortest path, edge by edge."""
    from .why import why_depends

    path = why_depends(ctx.root, _default_set(ctx, set_name), a, b)
    for i, (nid, via) in enumerate(path):
        click.echo(("  " * i) + nid + (f"  --[{via}]-->" if via else ""))


@main.command()
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
        cctx.invoke(store_roots)
        return
    from . import planning

    planned = planning.load(ctx.root, _default_set(ctx, set_name))
    p = planned.plan
    found = [n for n in p.nodes.values() if node in (n.id, n.name, n.key)]
    if not found:
        from .suggest import unknown

        raise unknown("node", node, {n.name for n in p.nodes.values()}, where=f"set {planned.set_name!r}")
    from .derivation import BUILD_ROOT_MOUNT

    store = None
    if any(BUILD_ROOT_MOUNT in n.deps for n in found) and (Path(ctx.store) / "index.sqlite").exists():
        from .store import Store

        store = Store(Path(ctx.store))
    for n in found:
        click.echo(f"# {n.id}  key {n.key}")
        if BUILD_ROOT_MOUNT in n.deps:
            root = p.nodes[n.deps[BUILD_ROOT_MOUNT]]
            real = store.realisation(root.key) if store is not None else None
            click.echo(f"# build root {root.id}  key {root.key}  output "
                       + (real.digest if real is not None else "not built yet (its key pins every .deb)"))
        click.echo(json.dumps(n.preimage.to_json(), indent=2, sort_keys=True))
    if store is not None:
        store.close()


from .cli_image import push, export  # noqa: E402
main.add_command(push)
main.add_command(export)
from .mirror_cli import mirror  # noqa: E402
main.add_command(mirror)
for _cmd in main.commands.values():
    _global_options(_cmd)


if __name__ == "__main__":
    main()
