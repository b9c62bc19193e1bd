"""The command line: parse, call, print. Everything here is callable from Python elsewhere.

One module per command group (lock, plan, realise, explain, store, image, mirror); this one
holds the group, its error handling, and the order of the commands in `--help`. Imports are
lazy: a no-op `planner realise` must not pay for httpx, networkx or rich.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import PlannerError
from .common import MIRROR_HELP, ROOT_HELP, STORE_HELP, Context, FolderOption, fail, global_options, mirror_url
from .explain import diff, log_cmd, show, why, why_depends_cmd
from .image import export, push
from .lock import hash_cmd, lock, prefetch
from .mirror import mirror
from .pipes import quiet_when_closed
from .plan import plan
from .realise import realise
from .store import keys, store

_ORDER = ("lock", "plan", "realise", "why", "diff", "why-depends", "show", "log", "push", "export", "store", "mirror",
          "prefetch", "hash", "keys", "help")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, `timeout`, a container stopped): stopped as a Ctrl-C stops
    the planner, its temporary files removed on the way out, never left half-written."""


_terminated = False


def _stop_on_sigterm() -> None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # (a command run from a thread of another program: its handlers are its own)

    def terminate(signum, frame):
        global _terminated
        _terminated = True  # (what stops on the way may raise a plain KeyboardInterrupt again)
        raise Terminated()

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, terminate)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # (click >= 8.2)


class _Group(click.Group):
    """Turns typed errors into one line on stderr and a non-zero exit."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        # The top level in the order of the workflow (lock, plan, realise, why, …), not the alphabet.
        names = list(self.commands)
        return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        # Before anything prints: a reader that goes away (`| head -1`) silences the rest of the
        # output, never the command (its exit status is its own, whenever the reader left).
        quiet_when_closed()
        if not standalone_mode:  # (a caller of our own that handles click's exceptions)
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except PlannerError as exc:  # a global option refused while the group parses it (`--store=`)
            fail(exc)
        except _NO_ARGS_IS_HELP as exc:  # (`planner store`: its help, as click prints it)
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            # One line, as every other refusal: click's own is a usage block and an `Error:` line.
            where = exc.ctx.command_path if exc.ctx is not None else "planner"
            click.echo(f"planner: error: {exc.format_message()} (`{where} --help` lists what it takes)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(0)

    def invoke(self, ctx: click.Context):
        _stop_on_sigterm()
        try:
            return super().invoke(ctx)
        except PlannerError as exc:
            fail(exc)
        except KeyboardInterrupt as exc:
            terminated = _terminated or isinstance(exc, Terminated)
            click.echo(f"planner: {'terminated' if terminated else 'interrupted'}; the store is consistent", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            # Not sys.exit: the interpreter would wait for the planner's own threads still at
            # work (a download, an unpack; the builds' processes are already killed). What they
            # leave in the store's tmp/ is what a crash leaves: `store gc` removes it.
            os._exit(143 if terminated else 130)
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
@click.option("--root", type=FolderOption(file_okay=False, path_type=Path), default=None, help=ROOT_HELP)
@click.option("--store", "store", type=FolderOption(path_type=Path), envvar="PLANNER_STORE", default=None,
              help=STORE_HELP)
@click.option("--mirror", "mirrors", multiple=True, metavar="URL", help=MIRROR_HELP)
@click.version_option(package_name="planner", help="Show the version and exit.")
@click.pass_context
def main(ctx: click.Context, root: Path | None, store: Path | None, mirrors: tuple[str, ...]) -> None:
    """Reproducible builds of GPU machine-learning container images.

    Global options (--root, --store, --mirror) go before or after the command.
    """
    ctx.obj = Context(root.absolute() if root else None, store.absolute() if store else None,
                      [mirror_url(m) for m in mirrors])


@click.command("help")
@click.argument("words", metavar="[COMMAND]...", nargs=-1)
@click.pass_context
def help_cmd(ctx: click.Context, words: tuple[str, ...]) -> None:
    """Print a command's help (`planner help store gc`)."""
    # Each word's context a child of the one before, as when the command line is parsed: the
    # usage line and the help options (-h) come out as `--help` prints them.
    at = ctx.find_root()
    cmd: click.Command = at.command
    for i, word in enumerate(words):
        sub = cmd.get_command(at, word) if isinstance(cmd, click.Group) else None
        if sub is None:
            from ..suggest import did_you_mean

            known = cmd.list_commands(at) if isinstance(cmd, click.Group) else []
            raise PlannerError(f"no command {' '.join(words[:i + 1])!r}{did_you_mean(word, known)}")
        cmd, at = sub, click.Context(sub, info_name=word, parent=at)
    click.echo(cmd.get_help(at))


for _cmd in (lock, plan, realise, why, diff, why_depends_cmd, show, log_cmd, push, export, store, mirror, prefetch,
             hash_cmd, keys, help_cmd):
    main.add_command(_cmd)
    global_options(_cmd)

