"""Standard output and error whose reader is gone (`planner store roots | head -1`): quiet.

Python ignores SIGPIPE, so a write to a pipe nobody reads raises BrokenPipeError wherever it
happens: in a click.echo, in a progress line from a build's thread, in the interpreter's last
flush. Whether it happens at all depends on timing (`head` may exit before the second line or
after the last), so a command's result must not: what would have gone to the closed pipe goes
nowhere, and the command goes on and ends as it would have (a build completes, a failed build
still exits non-zero). Only EPIPE: a full disk behind `> file` is still an error, raised naming
the stream (`planner: error: standard output: No space left on device`, exit 1), and the
descriptor then goes to /dev/null too, so that the interpreter's last flush of what is still
buffered does not fail again (a traceback, exit 120).
"""

from __future__ import annotations

import io
import os
import sys


def to_devnull(fd: int) -> None:
    """Point `fd` at /dev/null: every later write to it, by this process, a child it starts or
    the interpreter's flush at exit, succeeds and goes nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


class _QuietWhenClosed(io.RawIOBase):
    """A file descriptor's writes; on EPIPE the descriptor becomes /dev/null (`to_devnull`), on
    another error too, after which the error is raised naming the stream."""

    def __init__(self, fd: int, name: str) -> None:
        super().__init__()
        self._fd = fd
        self._name = name

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data) -> int | None:
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return None  # (a non-blocking descriptor: the buffer above tries again, as with FileIO)
        except BrokenPipeError:
            to_devnull(self._fd)
            return len(data)
        except OSError as exc:  # (ENOSPC, EIO: the command's error, said once)
            to_devnull(self._fd)
            raise OSError(exc.errno, exc.strerror, self._name) from None

    # close() is io.RawIOBase's: it marks this object closed and leaves the descriptor open, as
    # the interpreter's own sys.__stdout__ still writes to it.


_NAMES = {"stdout": "standard output", "stderr": "standard error"}


def quiet_when_closed() -> None:
    """Replace sys.stdout and sys.stderr, where they are still the process's own, by streams
    that `_QuietWhenClosed` writes. A stream a caller put there (click's CliRunner, a test's
    capture) is theirs and is left alone, and so is a second call."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or stream is not getattr(sys, f"__{name}__"):
            continue
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # (io.UnsupportedOperation is both)
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            to_devnull(fd)
        setattr(sys, name, io.TextIOWrapper(io.BufferedWriter(_QuietWhenClosed(fd, _NAMES[name])), encoding=stream.encoding,
                                            errors=stream.errors, line_buffering=stream.line_buffering,
                                            write_through=getattr(stream, "write_through", False)))
