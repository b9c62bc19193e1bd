"""Reading recipe TOML into the model: strict cattrs structuring (unknown keys are errors), kebab-case
keys, and error locations (file, key and, where it can be found, line)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Optional

from ..errors import RecipeError
from . import simpletoml
from .model import Build, Recipe, Resources



def full_parser():
    """The TOML parser for what `simpletoml` declines, imported on first use (most plans read
    only plain files, and the import is a few milliseconds of every command's start): tomli,
    the parser tomllib was made from, compiled (2-3x faster over 10,000 recipes), else tomllib.
    tomli is pinned below 2.3 in pyproject.toml: later versions read TOML 1.1, and a recipe
    set or a lockfile must not parse on one machine and fail on another."""
    try:
        import tomli as parser
    except ImportError:  # the same TOML 1.0 grammar, pure Python
        import tomllib as parser
    return parser


def loads(text: str) -> dict:
    """A TOML document: `simpletoml` where it is plain, else the full parser (whose
    TOMLDecodeError and RecursionError reach the caller)."""
    data = simpletoml.loads(text)
    return data if data is not None else full_parser().loads(text)


def line_of(text: str, dotted: str) -> int | None:
    """Best-effort line number of the last component of a dotted key in TOML text."""
    leaf = dotted.split(".")[-1].split("[")[0]
    if not leaf:
        return None
    pat = re.compile(rf"^\s*(\[+[^\]]*\b{re.escape(leaf)}\b[^\]]*\]+|\"?{re.escape(leaf)}\"?\s*=)")
    inline = re.compile(rf"[{{,]\s*\"?{re.escape(leaf)}\"?\s*=")  # a key inside an inline table
    lines = text.splitlines()
    for p in (pat, inline):
        for i, line in enumerate(lines, 1):
            if p.search(line):
                return i
    return None


_VERBATIM = ("env", "settings", "labels", "aliases", "profiles")  # user-named keys kept as written
_NAMED = ("inputs", "cuda")  # tables whose keys are user names but whose values are ours


def _kebab_to_snake(data: object) -> object:
    """TOML uses kebab-case keys; attrs fields are snake_case."""
    if isinstance(data, list):
        return [_kebab_to_snake(v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for k, v in data.items():
        if k in _VERBATIM:
            out[k] = v
        elif k in _NAMED and isinstance(v, dict):
            out[k] = {name: _kebab_to_snake(x) for name, x in v.items()}
        else:
            out[k.replace("-", "_")] = _kebab_to_snake(v)
    return out


_CONVERTER = None


def _strict(kind: type, what: str):
    def hook(value, _type):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"must be {what}, not {type(value).__name__} {value!r}")
        return value
    return hook


def _converter():
    """One converter per process (building one compiles its hooks: milliseconds per class).

    Strict: cattrs' defaults would turn `version = 1` into "1" and `deps = "ab"` into
    ["a", "b"]; a recipe with the wrong type is an error that names the key instead.
    """
    global _CONVERTER
    if _CONVERTER is not None:
        return _CONVERTER
    import typing

    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))

    def is_list(t) -> bool:
        return typing.get_origin(t) is list

    def structure_list(value, t):
        if not isinstance(value, list):
            raise TypeError(f"must be an array, not {type(value).__name__} {value!r}")
        (item,) = typing.get_args(t)
        return [conv.structure(v, item) for v in value]

    def is_dict(t) -> bool:
        return typing.get_origin(t) is dict

    def structure_dict(value, t):
        if not isinstance(value, dict):
            raise TypeError(f"must be a table, not {type(value).__name__} {value!r}")
        k, v = typing.get_args(t)
        return {conv.structure(key, k): conv.structure(val, v) for key, val in value.items()}

    conv.register_structure_hook_func(is_list, structure_list)
    conv.register_structure_hook_func(is_dict, structure_dict)
    # Builder settings are free-form JSON data, checked by the builder (and for floats below).
    conv.register_structure_hook_func(lambda t: t is object, lambda value, _type: value)
    _CONVERTER = conv
    return conv


# The shape most recipes have (a build step and references, no inputs, patches, resources or
# image), structured by hand: cattrs' generated hooks and the kebab-case pass cost a cold plan
# of 10,000 recipes more than parsing the TOML. Anything else, including every wrong type or
# unknown key, goes to cattrs, which structures it or says what is wrong.
_PLAIN_TOP = frozenset({"name", "version", "description", "axes", "deps", "toolchains", "requires", "estimate",
                        "platforms", "resolve-as-of", "build"})
_PLAIN_STR = (("description", "description"), ("estimate", "estimate"), ("resolve-as-of", "resolve_as_of"))
_PLAIN_LISTS = ("axes", "deps", "toolchains", "requires", "platforms")
_PLAIN_BUILD = frozenset({"builder", "env", "script", "settings", "impure", "rootfs"})


def plain_recipe(data: dict, where: str):
    """The Recipe cattrs would make of `data` (a TOML table as read), when it has the plain
    shape; else None."""
    build = data.get("build")
    if not _PLAIN_TOP.issuperset(data) or type(build) is not dict or not _PLAIN_BUILD.issuperset(build):
        return None
    name, version, builder = data.get("name"), data.get("version"), build.get("builder")
    if type(name) is not str or type(version) is not str or type(builder) is not str:
        return None
    kw: dict = {}
    for key, field in _PLAIN_STR:
        if key in data:
            if type(data[key]) is not str:
                return None
            kw[field] = data[key]
    for key in _PLAIN_LISTS:
        if key in data:
            value = data[key]
            if type(value) is not list or any(type(v) is not str for v in value):
                return None
            kw[key] = list(value)
    b: dict = {}
    for key in ("script", "rootfs"):
        if key in build:
            if type(build[key]) is not str:
                return None
            b[key] = build[key]
    if "impure" in build:
        if type(build["impure"]) is not bool:
            return None
        b["impure"] = build["impure"]
    if "env" in build:
        env = build["env"]
        if type(env) is not dict or any(type(v) is not str for v in env.values()):
            return None
        b["env"] = dict(env)
    if "settings" in build:
        if type(build["settings"]) is not dict:
            return None
        b["settings"] = dict(build["settings"])
    return Recipe(name=name, version=version, build=Build(builder=builder, **b), file=where,
                  resources=DEFAULT_RESOURCES, **kw)


# The [resources] of every plain recipe (they have none): one immutable object, checked once.
DEFAULT_RESOURCES = Resources()


_PLAIN_CONFIG_STR = (("target", "target"), ("resolve-as-of", "resolve_as_of"), ("build-root", "build_root"))


def plain_config(data: dict):
    """The SetConfig cattrs would make of set.toml's table when it has the plain shape (a
    target, the epoch, platforms, resolve-as-of, build-root; no CUDA variants, aliases or
    profiles), else None. A cold plan need not import cattrs (tens of milliseconds) for it."""
    from .model import SetConfig

    if not {"target", "source-date-epoch", "platforms", "resolve-as-of", "build-root"}.issuperset(data):
        return None
    kw: dict = {}
    for key, field in _PLAIN_CONFIG_STR:
        if key in data:
            if type(data[key]) is not str:
                return None
            kw[field] = data[key]
    epoch = data.get("source-date-epoch")
    if "target" not in kw or type(epoch) is not int:
        return None
    if "platforms" in data:
        value = data["platforms"]
        if type(value) is not list or any(type(v) is not str for v in value):
            return None
        kw["platforms"] = list(value)
    return SetConfig(source_date_epoch=epoch, **kw)


def _relative(path: Path | str, root: Path) -> str:
    path = Path(path)
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _where(path: Path | str, root: Path, text: str, key: str | None) -> str:
    rel = _relative(path, root)
    if not key:
        return str(rel)
    line = line_of(text, key)
    return f"{rel}:{line}: {key}" if line else f"{rel}: {key}"


def _structure(cls: type, data: dict, path: Path, root: Path, text: str):
    """`data` as a `cls`, or a RecipeError naming the key at fault (`shape` says which and
    why: asked only when cattrs refuses, so loading pays nothing for it)."""
    try:
        return _converter().structure(data, cls)
    except Exception:  # cattrs' validation errors, and whatever a hook raised inside them
        from .shape import first_problem, where_at

        problem = first_problem(cls, data, hidden=("file",))
        rel = _relative(path, root)
        if problem is None:  # (the walk and cattrs agree, as tests/test_recipe_types.py checks)
            raise RecipeError("a value of a type this file does not take", where=rel) from None
        raise RecipeError(problem.message, where=where_at(rel, text, problem.path)) from None


def _read_toml(path: Path | str, root: Path, where: Optional[str] = None, st: Optional[os.stat_result] = None
               ) -> tuple[dict, str]:
    """Parse one TOML file of the project; `where` (its path relative to `root`) saves the
    path arithmetic when the caller knows it, and `st` (its lstat, when the caller made one)
    a system call: 100k recipes make every syscall count."""
    if where is None:
        where = _relative(path, root)
    try:
        if st is None:
            st = os.lstat(path)
        link = stat.S_ISLNK(st.st_mode)
        if link:
            if not Path(path).resolve().is_relative_to(root.resolve()):
                raise RecipeError("a symlink that leaves the project", where=where)
            st = os.stat(path)
    except OSError:
        raise RecipeError("not a regular file", where=where) from None
    if not stat.S_ISREG(st.st_mode):
        raise RecipeError("not a regular file", where=where)
    raw = _read_regular(path, where, follow=link)
    if len(raw) > 1 << 20:
        raise RecipeError("recipe larger than 1 MiB", where=where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError("not UTF-8 text", where=where) from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark some editors write: not part of the TOML
    data = simpletoml.loads(text)  # most recipes: key = value lines and a table or two
    if data is not None:
        return data, text
    toml = full_parser()
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        # As every other recipe error: `file:line: what`, the parser's position moved in front.
        msg = str(exc)
        at = re.search(r" \(at line (\d+), column (\d+)\)$", msg)
        if at:
            raise RecipeError(f"invalid TOML: {msg[:at.start()]} (column {at.group(2)})",
                              where=f"{where}:{at.group(1)}") from None
        raise RecipeError(f"invalid TOML: {msg}", where=_where(path, root, text, None)) from None
    except RecursionError:
        raise RecipeError("invalid TOML: nested too deeply", where=where) from None
    except ValueError as exc:  # (tomli's own limits: an integer of more than 4,300 digits)
        raise RecipeError(f"invalid TOML: {' '.join(str(exc).split())[:200]}", where=where) from None
    if _too_deep(data):
        raise RecipeError(f"invalid TOML: nested more than {MAX_DEPTH} levels deep", where=where)
    return data, text


def _read_regular(path: Path | str, where: str, *, follow: bool) -> bytes:
    """Up to 1 MiB + 1 byte of a file checked to be regular. Opened without following a
    symlink (unless it was one, already checked) and without blocking, then checked again: a
    recipe swapped for a link or a FIFO after the check is refused, never followed or waited
    on. os.open/os.read: `open()` adds an isatty ioctl and buffer objects per file."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    limit = (1 << 20) + 1
    try:
        fd = os.open(path, flags)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RecipeError("not a regular file", where=where)
            # The first read asks for the size fstat gives, plus one byte: os.read allocates
            # what it is asked for, and a 1 MiB buffer per recipe cost more than the read. Read
            # on to the end all the same (the file may have grown since). A read that returns
            # all fstat's size and no more has reached the end: no second read to be told so
            # (one system call a recipe). Any other short read (a network or FUSE file system
            # may return one before the end) reads on, as before.
            want = min(st.st_size + 1, limit)
            chunks, total = [], 0
            while total < limit:
                chunk = os.read(fd, want)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if len(chunk) < want and total == st.st_size:
                    break
                want = min(1 << 16, limit - total)
        finally:
            os.close(fd)
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror or exc}", where=where) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# How deep tables and arrays may nest. Explicit, so that what is accepted does not depend on the
# parser in use (the compiled tomli has no recursion limit; the pure-Python tomllib stops near
# 300 levels) and later walks over the data cannot exhaust the stack.
MAX_DEPTH = 32


def _too_deep(data: object) -> bool:
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return False



class _LazyText(str):
    """A recipe's text, read only if an error message needs its line numbers."""

    def __new__(cls, path: Path) -> "_LazyText":
        obj = super().__new__(cls, "")
        obj._path = path
        return obj

    def splitlines(self, keepends: bool = False) -> list[str]:
        return self._path.read_text().splitlines(keepends)

