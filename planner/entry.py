"""The `planner` command: answer a no-op `planner realise` before importing the command line.

Importing click and every subcommand costs more than the answer itself (the plan cache and a
stat of each file planning read), so a plain `planner realise [SET]` is first tried here with
the standard library alone. Anything this parser does not recognise as exactly such a call,
and every miss, goes to `planner.cli`, which parses the command line again and does the work.
"""

from __future__ import annotations

import os
import sys

# realise's options this parser reads, with a value (and the values allowed) or without. Which
# of them rule a no-op out is not decided here but by `plancache.fast_path_applies`; any other
# option (--json, --out-link, --help, ...) goes to the full command line, which prints those.
# Not --substituter, --trusted-key or --signing-key: the command line checks their values
# (planner.cache parses them) before it answers a no-op, and that parser imports more than this
# path may; a no-op with them goes there, so that a bad value is never answered with exit 0.
_VALUED = {"-j": None, "--jobs": None, "--target": None, "--sandbox": ("on", "off"),
           "--download": ("toplevel", "all"), "--executor": None, "--cache-to": None, "--platform": None,
           "--variant": None}
_FLAGS = {"--keep-going", "--dry-run", "--check"}
# The environment's spelling of those options, which the command line checks as well.
_CHECKED_ENV = ("PLANNER_SUBSTITUTERS", "PLANNER_TRUSTED_KEYS")


def _global_options(args: list[str]):
    """(root, store, the rest of args) when only --root, --store and --mirror precede the
    subcommand, else None. Paths as the command line makes them (absolute, not resolved)."""
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
    root = os.path.join(os.getcwd(), root)
    if store is None:
        store = os.environ.get("PLANNER_STORE") or os.path.join(root, "store")
    return root, os.path.join(os.getcwd(), store), args[i:]


def _realise_args(root: str, store: str, args: list[str]):
    """(root, store, set name, the options by name) of a `realise` this parser reads, else None."""
    if args[:1] != ["realise"] or any(os.environ.get(v, "").strip() for v in _CHECKED_ENV):
        return None
    set_name, opts = None, {}
    rest = args[1:]
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
            opts[a] = True
            i += 1
            continue
        if a.startswith("-j") and not a.startswith("--") and len(a) > 2:
            name, value = "-j", a[2:]
        else:
            name, eq, value = a.partition("=")
            if name not in _VALUED:
                return None  # --json, --out-link, --help, ...: the full command
            if not eq:
                if i + 1 >= len(rest):
                    return None
                i += 1
                value = rest[i]
        allowed = _VALUED[name]
        if (allowed is not None and value not in allowed) or (name in ("-j", "--jobs") and not value.isdigit()):
            return None
        opts[name] = value
        i += 1
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
    return os.path.realpath(root), store, set_name, opts


def answer_noop(args: list[str]) -> bool:
    """Print the no-op answer of a plain `planner realise` and return True, if there is one."""
    opts = _global_options(args)
    parsed = opts and _realise_args(*opts)
    if not parsed:
        return False
    root, store, set_name, o = parsed
    from .plancache import answer_noop as cached_answer, noop_text

    cache = cached_answer(root, set_name, store, target=o.get("--target"), sandboxed=o.get("--sandbox", "on") == "on",
                          dry_run="--dry-run" in o, check="--check" in o,
                          executor=o.get("--executor") or os.environ.get("PLANNER_EXECUTOR"),
                          cache_to=o.get("--cache-to"), platform=o.get("--platform"), variant=o.get("--variant"))
    if cache is None:
        return False
    _print(noop_text(cache) + "\n")
    return True


def _print(text: str) -> None:
    """Write an answer to stdout. A reader gone (`planner realise | true`) is no error, as on
    the command line (planner/cli/pipes.py): the answer was complete, only nobody reads it, so
    stdout becomes /dev/null (the interpreter's flush at exit is quiet too) and the exit is 0."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def answer_store_verify(args: list[str]) -> bool:
    """`planner store verify` of a sound store: re-hash every entry, print `store ok`, return
    True. Any entry that is missing or differs, or a store it cannot read, returns False: the
    command line then verifies again and reports each problem."""
    opts = _global_options(args)
    if not opts or opts[2] != ["store", "verify"]:
        return False
    store = opts[1]
    index = os.path.join(store, "index.sqlite")
    if not os.path.isfile(index):
        return False
    try:
        # The C module itself: the sqlite3 package around it imports datetime and collections
        # for its adapters, which costs a small store's verification as much again.
        from _sqlite3 import connect
    except ImportError:
        from sqlite3 import connect

    from .hashing import tree_digest

    try:
        db = connect(f"file:{index}?mode=ro", uri=True, timeout=60)
        try:
            rows = db.execute("SELECT path, digest FROM entries").fetchall()
        finally:
            db.close()
    except Exception:  # noqa: BLE001 - a locked or damaged index: the full command says
        return False
    # Most of an entry's hash is system calls (scandir, stat, open, read), which release the
    # GIL: a few threads over interleaved slices keep the cores busy. `_thread`, not threading
    # or concurrent.futures: their imports cost more than a small store's verification.
    import _thread

    bad: list[bool] = []

    def check(part: list, done=None) -> None:
        try:
            for path, digest in part:
                if bad or tree_digest(os.path.join(store, path)) != digest:
                    bad.append(True)
                    return
        except Exception:  # noqa: BLE001 - missing entries, odd files: the full command says
            bad.append(True)
        finally:
            if done is not None:
                done.release()

    n = max(1, min(4, os.cpu_count() or 1, len(rows) // 64))
    waits = []
    for i in range(1, n):
        done = _thread.allocate_lock()
        done.acquire()
        _thread.start_new_thread(check, (rows[i::n], done))
        waits.append(done)
    check(rows[0::n])
    for done in waits:
        done.acquire()
    if bad:
        return False
    _print("store ok\n")
    return True


def answer_hash(args: list[str]) -> bool:
    """`planner hash PATH...` (the tree hash of each, as `planner.cli.lock.hash_cmd` prints it)
    without the command line, whose import costs a small tree's hash several times over. Any
    option, a path the command line would spell otherwise (it prints paths as pathlib does),
    a missing path or any error: False, and the command line does it and reports."""
    opts = _global_options(args)
    if not opts or opts[2][:1] != ["hash"]:
        return False
    paths = opts[2][1:]
    if not paths or any(not p or p.startswith("-") or os.path.normpath(p) != p or not os.path.exists(p)
                        for p in paths):
        return False
    from .hashing import tree_digest

    try:
        lines = [f"{tree_digest(p)}  {p}\n" for p in paths]
    except Exception:  # noqa: BLE001 - a special file, a race: the command line says what
        return False
    _print("".join(lines))
    return True


def main() -> int:
    args = sys.argv[1:]
    if answer_noop(args) or answer_store_verify(args) or answer_hash(args):
        return 0
    from .cli import main as cli

    return cli()


if __name__ == "__main__":
    sys.exit(main())
