"""Typed errors. Each one renders as a single line that names the file, field or input at fault."""

from __future__ import annotations

# Error lines embed hostile values (a member name, a path, a URL, an OSError's text), and a
# few KiB of gzip can carry a megabyte name: whatever it embeds, a line stays one a person can
# read. Each unbroken value keeps its start and end around an ellipsis, and so does the line.
MAX_VALUE = 400  # (a long URL or store path a person may copy from the line still fits)
MAX_LINE = 2000


def clip(text: str, limit: int = MAX_VALUE) -> str:
    """`text`, or its start and end joined by an ellipsis: `limit` characters in all."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head):]}"


def shown(value: object) -> str:
    """An untrusted value quoted for a message (repr, so blanks and escapes show), clipped."""
    return clip(repr(clip(str(value))))  # escapes can make the repr four times as long


def bounded(text: str) -> str:
    """One line of at most MAX_LINE characters, with no value longer than MAX_VALUE."""
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\0", "\\0")
    if len(text) > MAX_VALUE:
        import re  # (here: every command imports this module, and most lines are short)

        text = clip(re.sub(r"\S{%d,}" % (MAX_VALUE + 1), lambda m: clip(m.group()), text), MAX_LINE)
    return text


class PlannerError(Exception):
    """Base class: everything the CLI turns into a one-line message and a non-zero exit."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(self.line())

    def line(self) -> str:
        # One short line, whatever a hostile key or path contains.
        return bounded(f"{self.where}: {self.message}" if self.where else self.message)


class RecipeError(PlannerError):
    """A recipe file is malformed, inconsistent or refers to something that does not exist."""


class LockError(PlannerError):
    """A lockfile is malformed, stale, incomplete or does not match what was fetched."""


class FetchError(PlannerError):
    """An input could not be fetched, or its bytes do not match the pin."""


class HashMismatch(FetchError):
    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"hash mismatch: expected {expected}, got {actual}", where=what)


class InputError(FetchError):
    """A pinned input of a node could not be fetched or verified when a realise needed it: named by
    the input (`recipe/input`) and its file, never as a build failure."""


class UnsafeArchive(FetchError):
    """An archive member would escape the destination or is not a plain file, dir or link."""


class UnsafeTree(PlannerError):
    """An in-process writer or reader would follow a link it did not make, or leave its tree."""


class PatchError(PlannerError):
    """A patch does not apply cleanly."""


class GraphError(PlannerError):
    """The derivation graph is inconsistent (cycles, missing nodes)."""


class StoreError(PlannerError):
    """The store is corrupt, locked by a dead process in a bad state, or out of space."""


class SandboxError(PlannerError):
    """The sandbox cannot be set up (bubblewrap missing, bad mounts)."""


class BuildError(PlannerError):
    """One node failed to build; carries the log path and its last lines."""

    def __init__(self, node: str, message: str, *, log: str | None = None, tail: str = "") -> None:
        self.node = node
        self.log = log
        self.tail = tail
        super().__init__(message, where=node)


class OciError(PlannerError):
    """An image could not be assembled, read or pushed."""
