"""The `planner` command: answer a no-op `planner realise` before importing the command line.

Importing click and every subcommand costs more than the answer itself (the plan cache and a
stat of each file planning read), so a plain `planner realise [SET]` is first tried here with
the standard library alone. Anything this parser does not recognise as exactly such a call,
and every miss, goes to `planner.cli`, which parses the command line again and does the work.
"""

from __future__ import annotations

import os
import sys

# realise's options that leave a no-op a no-op, with a value (and the values allowed) or without.
_VALUED = {"-j": None, "--jobs": None, "--target": None, "--sandbox": ("on", "off"), "--substituter": None,
           "--trusted-key": None, "--signing-key": None, "--download": ("toplevel", "all")}
_FLAGS = {"--keep-going"}


def _realise_args(args: list[str]):
    """(root, store, set name or None, target, sandboxed) of a plain `realise`, else None."""
    root, store, i = ".", None, 0
    while i < len(args) and args[i].startswith("-"):
        name, eq, value = args[i].partition("=")
        if name not in ("--root", "--store", "--mirror"):
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            i += 1
            value = args[i]
        if not value:
            return None
        if name == "--root":
            root = value
        elif name == "--store":
            store = value
        i += 1
    if args[i:i + 1] != ["realise"]:
        return None
    set_name, target, sandbox, jobs = None, None, "on", None
    rest = args[i + 1:]
    i = 0
    while i < len(rest):
        a = rest[i]
        if not a.startswith("-"):
            if set_name is not None or not a:
                return None
            set_name = a
            i += 1
            continue
        if a in _FLAGS:
            i += 1
            continue
        if a.startswith("-j") and not a.startswith("--") and len(a) > 2:
            name, value = "-j", a[2:]
        else:
            name, eq, value = a.partition("=")
            if name not in _VALUED:
                return None  # --dry-run, --check, --out-link, --help, ...: the full command
            if not eq:
                if i + 1 >= len(rest):
                    return None
                i += 1
                value = rest[i]
        allowed = _VALUED[name]
        if (allowed is not None and value not in allowed) or (name in ("-j", "--jobs") and not value.isdigit()):
            return None
        if name == "--target":
            target = value
        elif name == "--sandbox":
            sandbox = value
        i += 1
    if os.environ.get("PLANNER_EXECUTOR"):
        return None
    root = os.path.join(os.getcwd(), root)
    if store is None:
        store = os.environ.get("PLANNER_STORE") or os.path.join(root, "store")
    store = os.path.join(os.getcwd(), store)
    if set_name is None:
        try:
            sets = [e for e in os.listdir(os.path.join(root, "recipes"))
                    if not e.startswith(".") and os.path.isfile(os.path.join(root, "recipes", e, "set.toml"))]
        except OSError:
            return None
        if len(sets) != 1:
            return None
        set_name = sets[0]
    if "/" in set_name or "\0" in set_name or set_name.startswith("."):
        return None
    return os.path.realpath(root), store, set_name, target, sandbox == "on"


def answer_noop(args: list[str]) -> bool:
    """Print the no-op answer of a plain `planner realise` and return True, if there is one."""
    parsed = _realise_args(args)
    if parsed is None:
        return False
    root, store, set_name, target, sandboxed = parsed
    from .noop import noop_text, try_noop

    cache = try_noop(root, set_name, store, target, sandboxed)
    if cache is None:
        return False
    sys.stdout.write(noop_text(cache) + "\n")
    sys.stdout.flush()
    return True


def main() -> int:
    if answer_noop(sys.argv[1:]):
        return 0
    from .cli import main as cli

    return cli()
