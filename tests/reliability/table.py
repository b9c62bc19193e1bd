"""Render tests/reliability/last_run.json (written by the suite's conftest) as the Markdown table of
docs/reliability.md.

    python -m tests.reliability.table             # print the table
    python -m tests.reliability.table --write     # replace the table between the markers in the doc
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAST_RUN = HERE / "last_run.json"
DOC = HERE.parent.parent / "docs" / "reliability.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render(doc: dict) -> str:
    env = doc.get("trials_env", {})
    host = doc.get("host", {})
    lines = [
        f"Generated {doc.get('generated')} from `tests/reliability/last_run.json` "
        f"(PLANNER_RELIABILITY_TRIALS={env.get('PLANNER_RELIABILITY_TRIALS') or 'unset (defaults)'}; "
        f"{host.get('cpus')} CPUs, Python {host.get('python')}; session {doc.get('session_seconds')} s).",
        "",
        "| Row | Behaviour | Test | Trials | Faults injected | Outcomes | Result |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in doc.get("tests", []):
        test = t["test"].split("::", 1)
        name = f"`{Path(test[0]).name}::{test[1]}`" if len(test) == 2 else f"`{t['test']}`"
        result = t.get("result", "?")
        if t.get("seed") is not None:
            result += f" (seed {t['seed']})"
        lines.append("| " + " | ".join(_cell(x) for x in (
            t.get("row"), t.get("behaviour"), name, t.get("trials"), t.get("faults"), t.get("outcomes"), result)) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=LAST_RUN)
    ap.add_argument("--write", action="store_true", help=f"update the table in {DOC.relative_to(HERE.parent.parent)}")
    args = ap.parse_args()
    table = render(json.loads(args.json.read_text()))
    if not args.write:
        print(table, end="")
        return
    text = DOC.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{DOC}: no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _old, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table}{END}{tail}")
    print(f"updated {DOC}")


if __name__ == "__main__":
    main()
