"""zstd-compressed streams through the host's `zstd -dc`: Python 3.11 has no zstd module, and
the decompressed bytes do not depend on zstd's version (only a compressor's output would)."""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from typing import BinaryIO

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


class ZstdReader:
    """`zstd -dc` as a stream filter over `raw`: read `stdout`, then `close(check=...)`.
    `error`: the exception type (taking a message and `where=`) to refuse with."""

    def __init__(self, raw: io.RawIOBase | BinaryIO, where: str, error: type) -> None:
        if shutil.which("zstd") is None:
            raise error("a zstd-compressed stream needs the zstd command (apt-get install zstd)", where=where)
        self.where, self.error = where, error
        self.proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)

        def feed() -> None:
            assert self.proc.stdin is not None
            try:
                while chunk := raw.read(_CHUNK):
                    self.proc.stdin.write(chunk)
            except (BrokenPipeError, ValueError):  # (the reader stopped early, or closed raw)
                pass
            finally:
                try:
                    self.proc.stdin.close()
                except BrokenPipeError:
                    pass

        self.thread = threading.Thread(target=feed, daemon=True)
        self.thread.start()
        assert self.proc.stdout is not None
        self.stdout: BinaryIO = self.proc.stdout

    def close(self, *, check: bool) -> None:
        self.stdout.close()
        self.thread.join()
        # A reader that stopped early (the file it wanted was found) makes zstd fail on EPIPE.
        if self.proc.wait() != 0 and check:
            raise self.error("zstd could not decompress it (not zstd data, or cut short)", where=self.where)
