"""Typed errors. Each one renders as a single line that names the file, field or input at fault."""

from __future__ import annotations


class PlannerError(Exception):
    """Base class: everything the CLI turns into a one-line message and a non-zero exit."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(self.line())

    def line(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        # One line, whatever a hostile key or path contains.
        return text.replace("\r", "\\r").replace("\n", "\\n").replace("\0", "\\0")


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
