"""A reader for the plainest TOML, which most recipe files are; everything else goes to tomli.

A cold plan parses every recipe file, and tomli (compiled) still costs about 40 µs for a
six-line recipe: a third of reading, parsing and validating it. Most recipes are a few
`key = value` lines and a table header or two. `loads` reads exactly that subset and declines
(returns None) at the first thing outside it, so that the full parser reads the file instead,
with its own values and its own error messages:

- lines of `key = value`, `[table]` or `[table.sub]` headers (bare keys only, at most
  `MAX_HEADER` parts), comments and blank lines, LF or CRLF line ends;
- values: basic strings with the escapes \\" \\\\ \\b \\t \\n \\f \\r, literal strings, decimal
  integers of at most 18 characters, true and false, and one-line arrays of those.

Declined: every other value (floats, dates, inline tables, multi-line strings and arrays,
\\u escapes), quoted or dotted keys, arrays of tables, and anything TOML forbids or that needs
care to get right: a key given twice, a header naming a table or key that already exists
(even where TOML would allow it), control characters. What it accepts it reads to the same
values, types and key order as tomli (tests/test_simpletoml.py compares them on random and
damaged documents).
"""

from __future__ import annotations

import re
from typing import Optional

MAX_HEADER = 4  # parts of a [a.b.c.d] header: the nesting depth stays far below parse.MAX_DEPTH

_KEY = r"[A-Za-z0-9_-]+"
# A basic string: anything but a quote, a backslash or a control character other than tab, and
# the escapes above; a literal string: anything but a quote or such a control character.
_BASIC = r'"([^"\\\x00-\x08\x0a-\x1f\x7f]*(?:\\[\\"btnfr][^"\\\x00-\x08\x0a-\x1f\x7f]*)*)"'
_LITERAL = r"'([^'\x00-\x08\x0a-\x1f\x7f]*)'"
_INT = r"([+-]?(?:0|[1-9](?:_?[0-9])*))(?![0-9A-Za-z_.:+-])"
_BOOL = r"(true|false)(?![0-9A-Za-z_.:+-])"
_SCALAR = re.compile(rf"{_BASIC}|{_LITERAL}|{_INT}|{_BOOL}")
_ASSIGN = re.compile(rf"[ \t]*({_KEY})[ \t]*=[ \t]*")
_HEADER = re.compile(rf"[ \t]*\[[ \t]*({_KEY}(?:[ \t]*\.[ \t]*{_KEY})*)[ \t]*\][ \t]*")
_TAIL = re.compile(r"[ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?")  # white space and a comment, to the end
_ARRAY_START = re.compile(r"\[[ \t]*")
_ARRAY_NEXT = re.compile(r"[ \t]*(?:,[ \t]*|(?=\]))")  # a comma (a trailing one too), or the end
# The common line, `key = scalar`, in one match.
_LINE = re.compile(rf"[ \t]*({_KEY})[ \t]*=[ \t]*(?:{_BASIC}|{_LITERAL}|{_INT}|{_BOOL})"
                   r"[ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?")
# The common array, of strings without escapes, in one match; its items found by `_ITEM`.
_PLAIN = r'"[^"\\\x00-\x08\x0a-\x1f\x7f]*"'
_STRINGS = re.compile(rf"[ \t]*({_KEY})[ \t]*=[ \t]*(\[[ \t]*(?:{_PLAIN}[ \t]*,[ \t]*)*(?:{_PLAIN}[ \t]*)?\])"
                      r"[ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?")
_ITEM = re.compile(r'"([^"]*)"')


class _Decline(Exception):
    pass


def loads(text: str) -> Optional[dict]:
    """The TOML document `text` as tomli reads it, if it is in the subset; else None."""
    try:
        return _loads(text)
    except (_Decline, ValueError):  # (a value it cannot take, an integer of 5,000 digits: the full parser says)
        return None


def _loads(text: str) -> dict:
    root: dict = {}
    table = root
    if "\r" in text:
        lines = text.split("\n")
        if lines[-1].endswith("\r"):
            raise _Decline  # a carriage return not followed by a line feed
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    else:
        lines = text.split("\n")
    for line in lines:
        if not line:
            continue
        if line[0] == "[":  # a header: no key starts with a bracket
            m = _HEADER.match(line)
            if m is not None:
                table = _header(root, line, m)
                continue
        m = _LINE.fullmatch(line)
        if m is not None:
            key, basic, literal, integer, boolean = m.groups()
            if key in table:
                raise _Decline
            if basic is not None:
                table[key] = _unescaped(basic) if "\\" in basic else basic
            elif literal is not None:
                table[key] = literal
            else:
                table[key] = _scalar(line, m.start(4) if integer is not None else m.start(5))[0]
            continue
        m = _STRINGS.fullmatch(line)
        if m is not None:
            if m.group(1) in table:
                raise _Decline
            table[m.group(1)] = _ITEM.findall(m.group(2))
            continue
        m = _ASSIGN.match(line)
        if m is not None:
            key = m.group(1)
            if key in table:
                raise _Decline
            value, pos = _value(line, m.end())
            if _TAIL.fullmatch(line, pos) is None:
                raise _Decline
            table[key] = value
            continue
        m = _HEADER.match(line)
        if m is not None:
            table = _header(root, line, m)
            continue
        if _TAIL.fullmatch(line) is None:
            raise _Decline
    return root


def _header(root: dict, line: str, m: re.Match) -> dict:
    """The table a `[a.b]` header line opens (made here; declined if it exists)."""
    if _TAIL.fullmatch(line, m.end()) is None:
        raise _Decline
    parts = [p.strip(" \t") for p in m.group(1).split(".")]
    if len(parts) > MAX_HEADER:
        raise _Decline
    table = root
    for p in parts[:-1]:
        sub = table.get(p)
        if sub is None:
            sub = table[p] = {}
        elif type(sub) is not dict:
            raise _Decline
        table = sub
    if parts[-1] in table:
        raise _Decline
    table[parts[-1]] = table = {}
    return table


def _value(line: str, pos: int) -> tuple[object, int]:
    if not line.startswith("[", pos):
        return _scalar(line, pos)
    items: list = []
    pos = _ARRAY_START.match(line, pos).end()  # type: ignore[union-attr]
    while not line.startswith("]", pos):
        value, pos = _scalar(line, pos)  # (a nested array is declined there)
        items.append(value)
        m = _ARRAY_NEXT.match(line, pos)
        if m is None:
            raise _Decline
        pos = m.end()
    return items, pos + 1


def _scalar(line: str, pos: int) -> tuple[object, int]:
    if line.startswith(('"""', "'''"), pos):
        raise _Decline  # multi-line strings
    m = _SCALAR.match(line, pos)
    if m is None:
        raise _Decline
    basic, literal, integer, boolean = m.groups()
    if basic is not None:
        value: object = _unescaped(basic) if "\\" in basic else basic
    elif literal is not None:
        value = literal
    elif integer is not None:
        if len(integer) > 18:
            raise _Decline
        value = int(integer)
    else:
        value = boolean == "true"
    return value, m.end()


_PAIRS = (('\\"', '"'), ("\\n", "\n"), ("\\t", "\t"), ("\\r", "\r"), ("\\b", "\b"), ("\\f", "\f"))


def _unescaped(basic: str) -> str:
    """A basic string's value, its escapes (already checked: each backslash starts one that
    `_BASIC` allows) replaced. Split at the escaped backslashes first, so that every backslash left
    starts an escape of one other character and replacing them one kind after another cannot
    make or break another (a Python call per escape, as re.sub makes, cost more)."""
    parts = basic.split("\\\\")
    for i, part in enumerate(parts):
        if "\\" in part:
            for escape, char in _PAIRS:
                if escape in part:
                    part = part.replace(escape, char)
            parts[i] = part
    return "\\".join(parts)
