"""Progress output: a live rich display on a terminal, plain lines otherwise (like buildx's
`--progress=auto|plain|tty`), and build logs streamed with a node prefix (like `nix build -L`).

The events `realise` emits, as (kind, data):

    plan     {"total": int, "todo": int, "cached": [label, …]}   what is valid needs nothing
    start    label                                               a node starts (substitute or build)
    logfile  {"node": label, "path": str}                        a local build's log, while it runs
    done     {"node": label, "status": str, "seconds": float}    built | reused | substituted | checked
    failed   {"node": label, "error": str}
    log      str                                                 a fetch, a warning
    close    None                                                the end of the run

Plain mode writes one whole line per event under a lock, so lines of parallel builds never
merge; each line carries the time since the start, and end lines the node's duration and a
done/total counter.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, Optional, TextIO

Emit = Callable[[str, object], None]

MODES = ("auto", "plain", "rich")


def make_progress(mode: str = "auto", *, print_build_logs: bool = False, stream: Optional[TextIO] = None,
                  task: str = "realise") -> Emit:
    """`task`: what the events are about, `realise` (nodes built or fetched) or `push` (store
    entries sent to a binary cache, where nothing is built)."""
    stream = stream or sys.stderr
    if mode == "auto":
        mode = "rich" if stream.isatty() and os.environ.get("TERM") != "dumb" else "plain"
    if mode == "rich":
        return _rich_progress(print_build_logs, stream, task)
    return PlainProgress(stream, print_build_logs=print_build_logs, task=task)


class _Writer:
    """Whole lines, one at a time, whatever thread writes them."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.gone = False

    def line(self, text: str) -> None:
        with self.lock:
            if self.gone:
                return
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                # The reader went away (`2>&1 | head -1`), the stream was closed, its disk is
                # full: these lines are called from the builds, and progress is never a reason
                # for a build to fail. It stops here; the build goes on.
                self.gone = True


class _LogTail:
    """Follows one build log while the build writes it, handing each complete line on.

    The log's name is its build key, so an older build's log may sit there already: only a
    file written after the node started is followed (the build truncates it when it opens it)."""

    def __init__(self, node: str, path: str, since: float, out: Callable[[str], None]) -> None:
        self.node, self.path, self.since, self.out = node, path, since, out
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"log {node}", daemon=True)
        self.thread.start()

    def _fresh(self) -> bool:
        try:
            return os.stat(self.path).st_mtime >= self.since
        except OSError:
            return False

    def _run(self) -> None:
        while not self._fresh():
            if self.stop.wait(0.05):
                if not self._fresh():
                    return
                break
        pending = b""
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for ln in lines:
                        self.out(f"{self.node}> {ln.decode(errors='replace').rstrip()}")
                    continue
                if self.stop.is_set():
                    break
                self.stop.wait(0.05)
        if pending:
            self.out(f"{self.node}> {pending.decode(errors='replace').rstrip()}")

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()


def _label(data: object) -> str:
    return str(data["node"]) if isinstance(data, dict) else str(data)


def _secs(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{s % 60:04.1f}s"


class PlainProgress:
    """buildx's --progress=plain: a line per start and per end, nothing redrawn."""

    def __init__(self, stream: TextIO, *, print_build_logs: bool = False, clock=time.monotonic,
                 task: str = "realise") -> None:
        self.out = _Writer(stream)
        self.task = task
        self.print_build_logs = print_build_logs
        self.clock = clock
        self.t0 = clock()
        self.todo = 0
        self.ended = 0
        self.counts: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.tails: dict[str, _LogTail] = {}
        self.state = threading.Lock()

    def _line(self, text: str) -> None:
        self.out.line(f"[{self.clock() - self.t0:7.1f}s] {text}")

    def __call__(self, kind: str, data: object) -> None:
        if kind == "plan":
            d = data  # type: ignore[assignment]
            self.todo = int(d["todo"])  # type: ignore[index]
            cached = list(d.get("cached", ()))  # type: ignore[union-attr]
            total = d['total']  # type: ignore[index]
            if self.task == "push":  # store entries (outputs, and the inputs they were made of) sent as they are
                self._line(f"plan: {total} entr{'y' if total == 1 else 'ies'} to push")
            else:
                self._line(f"plan: {total} node{'' if total == 1 else 's'}, {self.todo} to build or fetch, "
                           f"{len(cached)} cached")
            for label in cached:
                self._line(f"CACHED {label}")
        elif kind == "start":
            label = _label(data)
            with self.state:
                self.started[label] = self.clock()
                self.wall[label] = time.time()
            self._line(f"START  {label}")
        elif kind == "logfile" and self.print_build_logs:
            d = data  # type: ignore[assignment]
            label = str(d["node"])  # type: ignore[index]
            with self.state:
                since = self.wall.get(label, time.time()) - 1e-3  # compared with the log's mtime
                self.tails[label] = _LogTail(label, str(d["path"]), since, self.out.line)  # type: ignore[index]
        elif kind in ("done", "failed"):
            label = _label(data)
            with self.state:
                tail = self.tails.pop(label, None)
                began = self.started.pop(label, None)
                self.wall.pop(label, None)
                self.ended += 1
                n = self.ended
            if tail is not None:
                tail.finish()  # the node's output before its end line
            took = _secs(self.clock() - began) if began is not None else "?"
            counter = f"[{n}/{self.todo}]" if self.todo else f"[{n}]"
            if kind == "done":
                status = str(data.get("status", "built")) if isinstance(data, dict) else "built"
                self.counts[status] = self.counts.get(status, 0) + 1
                word = {"built": "DONE", "reused": "REUSED", "substituted": "SUBSTITUTED", "checked": "CHECKED"}.get(
                    status, status.upper())
                self._line(f"{word:<6} {label} {counter} {status} in {took}")
            else:
                self.counts["failed"] = self.counts.get("failed", 0) + 1
                err = data.get("error", "") if isinstance(data, dict) else ""
                self._line(f"FAILED {label} {counter} after {took}" + (f": {err}" if err else ""))
        elif kind == "log":
            self._line(str(data))
        elif kind == "close":
            with self.state:
                tails = list(self.tails.values())
                self.tails.clear()
            for t in tails:
                t.finish()
            if self.ended:
                parts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
                self._line(f"finished: {parts} in {_secs(self.clock() - self.t0)}")


def _rich_progress(print_build_logs: bool, stream: TextIO, task: str = "realise") -> Emit:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's own answer points sys.stdout at /dev/null and exits: the build's result
            # would be lost with its progress. Only the progress stops.
            self.quiet = True

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), transient=False, console=_Console(file=stream))
    state: dict = {"task": None, "running": [], "tails": {}, "started": {}}
    lock = threading.Lock()
    verb = "pushing" if task == "push" else "building"

    def describe() -> str:
        running = state["running"]
        if not running:
            return verb
        return f"{verb} " + ", ".join(running[:3]) + (f" +{len(running) - 3}" if len(running) > 3 else "")

    def console_line(text: str) -> None:
        progress.console.print(escape(text), style="dim", highlight=False)

    def emit(kind: str, data: object) -> None:
        with lock:
            try:
                _emit(kind, data)
            except (OSError, ValueError):
                # As _Writer.line: a display that cannot be written is not the build's failure.
                progress.console.quiet = True
                if kind == "close":
                    _emit(kind, data)  # quiet now: the display and the log tails stop, writing nothing

    def _emit(kind: str, data: object) -> None:
        if kind == "plan":
            if data["todo"]:  # type: ignore[index]
                progress.start()
                state["task"] = progress.add_task(verb, total=data["todo"])  # type: ignore[index]
        elif kind == "start" and state["task"] is not None:
            state["running"].append(_label(data))
            state["started"][_label(data)] = time.time()
            progress.update(state["task"], description=describe())
        elif kind == "logfile" and print_build_logs:
            label = _label(data)
            since = state["started"].get(label, time.time()) - 1e-3
            state["tails"][label] = _LogTail(label, str(data["path"]), since, console_line)  # type: ignore[index]
        elif kind in ("done", "failed") and state["task"] is not None:
            label = _label(data)
            tail = state["tails"].pop(label, None)
            if tail is not None:
                tail.finish()
            if label in state["running"]:
                state["running"].remove(label)
            if kind == "failed":
                progress.console.print(f"[red]FAILED[/red] {escape(label)}")
            progress.update(state["task"], advance=1, description=describe())
        elif kind == "log":
            console_line(str(data))
        elif kind == "close":
            for t in state["tails"].values():
                t.finish()
            state["tails"].clear()
            progress.stop()

    return emit
