"""What is wrong with a table that cattrs refused, in the user's words: the key path as the file
writes it (`inputs.x.version`, `deps[0]`, `patches[0].file`), what the model wants there
(Optional[str] is "a string") and what was given; and the line of that key in the TOML text.

Only the error path comes here: cattrs structures every table first, and only a table it
refuses is walked again, so loading a set of 10,000 recipes does no extra work. The walk has
its own rules rather than cattrs' error tree, which loses the key inside a mapping or a list,
says "Optional" and, for a table where a string is, "'str' object has no attribute 'keys'".
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import typing
from typing import Iterator, Literal, Optional, Union

import attrs

from ..errors import clip

KeyPath = tuple  # of str (a key as the file writes it) and int (a list index)


@attrs.frozen
class Problem:
    """One thing wrong at `path`; `unknown`: a key the model does not have (reported first: a
    mistyped key explains the required one it leaves missing)."""

    path: KeyPath
    message: str
    unknown: bool = False


def first_problem(cls: type, data: dict, hidden: tuple[str, ...] = ()) -> Optional[Problem]:
    """The problem to report of `data` (kebab-case keys already snake_case) as an attrs `cls`:
    the first unknown key, else the first problem in the file's key order. `hidden`: fields of
    `cls` the file may not write (a recipe's `file`), never suggested."""
    found = list(_problems(cls, data, (), hidden))
    return next((p for p in found if p.unknown), found[0] if found else None)


def dotted(path: KeyPath) -> str:
    """`inputs.x.version`, `deps[0]`, `patches[0].file`; a key that is not bare, quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{key}" if out else key
    return out


# -- the walk ------------------------------------------------------------------------------------

_GIVEN = {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list",
          dict: "a table"}
_WANTED = {str: "a string", int: "a whole number", bool: "true or false"}


def _given(value: object) -> str:
    """What a TOML value is and what it says: `a list ['cp f $out/']`, `a boolean true`."""
    if hasattr(value, "isoformat"):  # a TOML date, time or date-time
        return f"a date {value.isoformat()}"  # type: ignore[attr-defined]
    return f"{_GIVEN.get(type(value), type(value).__name__)} {clip(_toml(value), 80)}"


def _toml(value: object) -> str:
    """A value as TOML would write it, near enough for a message: true, 'x', [1, 2]."""
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


def _key(name: str) -> str:
    return name.replace("_", "-")


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _unoptional(t: object) -> object:
    """Optional[T] is T: a TOML file can leave a key out, never give it as null."""
    if typing.get_origin(t) is Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


def _problems(t: object, value: object, path: KeyPath, hidden: tuple[str, ...] = ()) -> Iterator[Problem]:
    t = _unoptional(t)
    origin = typing.get_origin(t)
    if t is object:
        return  # free-form (builder settings, CUDA variants): checked where they are used
    if attrs.has(t):
        yield from _table(t, value, path, hidden)  # type: ignore[arg-type]
    elif origin is Literal:
        yield from _choice(typing.get_args(t), value, path)
    elif origin is list:
        yield from _list(typing.get_args(t)[0], value, path)
    elif origin is dict:
        yield from _mapping(typing.get_args(t)[1], value, path)
    elif t in _WANTED and (type(value) is not t):
        yield Problem(path, f"expected {_WANTED[t]}, not {_given(value)}")  # type: ignore[index]


def _table(cls: type, value: object, path: KeyPath, hidden: tuple[str, ...]) -> Iterator[Problem]:
    if type(value) is not dict:
        yield Problem(path, f"expected a table, not {_given(value)}")
        return
    hints = _hints(cls)
    fields = [f.name for f in attrs.fields(cls) if f.name not in hidden]
    for key in value:
        if key not in hints:
            from ..suggest import did_you_mean

            yield Problem(path + (_key(key),), "unknown key" + did_you_mean(_key(key), map(_key, fields)),
                          unknown=True)
    for key, item in value.items():
        if key in hints:
            yield from _problems(hints[key], item, path + (_key(key),))
    for f in attrs.fields(cls):
        if f.default is attrs.NOTHING and f.name not in value:
            yield Problem(path + (_key(f.name),), "required key missing")


def _choice(choices: tuple, value: object, path: KeyPath) -> Iterator[Problem]:
    if value in choices and type(value) is str:
        return
    allowed = ", ".join(repr(c) for c in choices)
    if type(value) is not str:
        yield Problem(path, f"expected one of {allowed}, not {_given(value)}")
        return
    # (difflib misses two letters swapped in a short word: `pipy` is pypi's anagram)
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6) or \
        [c for c in choices if sorted(c) == sorted(value)][:1]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    yield Problem(path, f"{clip(value, 80)!r} is not one of {allowed}{hint}")


def _list(item: object, value: object, path: KeyPath) -> Iterator[Problem]:
    if type(value) is list:
        for i, v in enumerate(value):
            yield from _problems(item, v, path + (i,))
        return
    key = next((p for p in reversed(path) if isinstance(p, str)), "")
    hint = f' (write {key} = ["{clip(value, 40)}"])' if isinstance(value, str) else ""
    yield Problem(path, f"expected a list, not {_given(value)}{hint}")


def _mapping(item: object, value: object, path: KeyPath) -> Iterator[Problem]:
    if type(value) is not dict:
        yield Problem(path, f"expected a table, not {_given(value)}")
        return
    for key, v in value.items():
        if item is str and type(v) in (int, float, bool):
            # A number or boolean in a table of strings (an environment): the fix is quotes.
            text, name = _toml(v), dotted((key,))
            yield Problem(path + (key,), f'{name} = {text}: the values of this table are strings (write '
                                         f'{name} = "{text}")')
        else:
            yield from _problems(item, v, path + (key,))


# -- the line of a key path ----------------------------------------------------------------------

_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_PART}(?:[ \t]*\.[ \t]*{_PART})*"
_HEADER = re.compile(rf"[ \t]*(\[\[?)[ \t]*({_DOTTED})[ \t]*\]\]?[ \t]*(?:#.*)?$")
_ASSIGN = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=")


def _parts(text: str) -> tuple[str, ...]:
    out = []
    for m in re.finditer(_PART, text):
        part = m.group()
        if part.startswith('"'):
            try:
                part = json.loads(part)
            except ValueError:  # a TOML escape JSON lacks (\e, \U): close enough to find a line
                part = part[1:-1]
        elif part.startswith("'"):
            part = part[1:-1]
        out.append(part)
    return tuple(out)


def _entries(text: str) -> Iterator[tuple[int, KeyPath]]:
    """(line, full key path) of each table header and key of a TOML text: `[[patches]]` as
    ("patches", 0), its `file = ` as ("patches", 0, "file"). Lines inside a multi-line string
    are skipped (a script may hold `version = 2`)."""
    table: KeyPath = ()
    arrays: dict[tuple, int] = {}  # an array of tables' path -> the index of its last header
    open_quote: Optional[str] = None
    for n, line in enumerate(text.splitlines(), 1):
        if open_quote is not None:
            if line.count(open_quote) % 2:
                open_quote = None
            continue
        m = _HEADER.match(line)
        if m is not None:
            table = _resolved(_parts(m.group(2)), arrays, new=m.group(1) == "[[")
            yield n, table
            continue
        m = _ASSIGN.match(line)
        if m is not None:
            yield n, table + _parts(m.group(1))
            rest = line[m.end():].lstrip(" \t")  # a multi-line string is a value's start
            open_quote = next((q for q in ('"""', "'''") if rest.startswith(q) and rest.count(q) % 2), None)


def _resolved(parts: tuple[str, ...], arrays: dict[tuple, int], *, new: bool) -> KeyPath:
    """A header's key path with the index of each array of tables it passes through (a new
    `[[x]]` header starts the next element of x)."""
    out: KeyPath = ()
    for i, part in enumerate(parts):
        out += (part,)
        last = i == len(parts) - 1
        if last and new:
            arrays[out] = arrays.get(out, -1) + 1
        if out in arrays:
            out += (arrays[out],)
    return out


def line_of_path(text: str, path: KeyPath) -> Optional[int]:
    """The line that writes `path`, else the one of the deepest table or key above it (a
    missing key: its table's header; `deps[0]`: the `deps = ` line); None if none does."""
    want = tuple(_key(p) if isinstance(p, str) else p for p in path)
    best, best_len = None, 0
    for n, keys in _entries(text):
        got = tuple(_key(p) if isinstance(p, str) else p for p in keys)
        if want[:len(got)] == got:  # the key itself, or a table or key that holds it
            common = len(got)
        elif got[:len(want)] == want:  # a table inside it (the path is a table's)
            common = len(want)
        else:
            continue
        if common > best_len:
            best, best_len = n, common
    return best


def where_at(rel: str, text: Optional[str], path: KeyPath) -> str:
    """`file:line: key.path` for the key at `path` of a file (`rel`) whose text is `text`; the
    line left out where the text is not known or writes no such key."""
    line = line_of_path(text, path) if text is not None else None
    return f"{rel}:{line}: {dotted(path)}" if line else f"{rel}: {dotted(path)}"


def cycle_where(rs, r, to: str) -> str:
    """Where recipe `r` names `to`, its next step round a dependency cycle: the field (deps,
    toolchains, requires, build.rootfs, image.base, image.layers) and its line in r's file."""
    fields = [(("deps",), r.deps), (("toolchains",), r.toolchains), (("requires",), r.requires),
              (("build", "rootfs"), [r.build.rootfs]),
              (("image", "base"), [r.image.base] if r.image is not None else []),
              (("image", "layers"), [d for g in r.image.layers for d in g] if r.image is not None else [])]
    path = next((key for key, names in fields if to in names), ("deps",))
    try:
        text = (rs.root / r.file).read_text()
    except (OSError, UnicodeDecodeError):  # (changed since it was read: no line then)
        text = None
    return where_at(r.file, text, path)

