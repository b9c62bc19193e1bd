"""Progress output: a live rich display on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Callable


def make_progress() -> Callable[[str, object], None]:
    if sys.stderr.isatty():
        return _rich_progress()
    return _plain_progress()


def _plain_progress() -> Callable[[str, object], None]:
    start = time.monotonic()

    def emit(kind: str, data: object) -> None:
        t = time.monotonic() - start
        if kind == "start":
            print(f"[{t:7.1f}s] building {data}", file=sys.stderr, flush=True)
        elif kind == "failed":
            print(f"[{t:7.1f}s] FAILED {data}", file=sys.stderr, flush=True)
        elif kind == "log":
            print(f"[{t:7.1f}s] {data}", file=sys.stderr, flush=True)

    return emit


def _rich_progress() -> Callable[[str, object], None]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), transient=False)
    state = {"task": None, "running": []}

    def describe() -> str:
        running = state["running"]
        if not running:
            return "building"
        return "building " + ", ".join(running[:3]) + (f" +{len(running) - 3}" if len(running) > 3 else "")

    def emit(kind: str, data: object) -> None:
        if kind == "plan":
            if data["todo"]:  # type: ignore[index]
                progress.start()
                state["task"] = progress.add_task("building", total=data["todo"])  # type: ignore[index]
        elif kind == "start" and state["task"] is not None:
            state["running"].append(str(data))
            progress.update(state["task"], description=describe())
        elif kind in ("done", "failed") and state["task"] is not None:
            if str(data) in state["running"]:
                state["running"].remove(str(data))
            if kind == "failed":
                progress.console.print(f"[red]FAILED[/red] {data}")
            progress.update(state["task"], advance=1, description=describe())
        elif kind == "log":
            progress.console.print(str(data), style="dim")
        elif kind == "close":
            progress.stop()

    return emit
