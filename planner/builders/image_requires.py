"""The image's run-time requirement check: every layer group's recipes need the run-time closure
of what they require at or below their own group. Pure, apart from reading wheels' METADATA
when the preimage carries no recipe `requires`."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import PlannerError
from ..safetree import MAX_METADATA


def requires_problems(layers: Sequence[Sequence[str]], requires: Mapping[str, Sequence[str]]) -> list[str]:
    """What is wrong with the layer groups given each recipe's direct run-time `requires`.

    Every recipe in a group needs the whole run-time closure of what it requires to be in some
    group at or below its own (bottom first). Returns one sentence per problem; none is fine.
    """
    problems: list[str] = []
    position: dict[str, int] = {}
    for i, group in enumerate(layers):
        for name in group:
            if name in position:
                problems.append(f"{name} is listed in layer groups {position[name] + 1} and {i + 1}")
            else:
                position[name] = i
    for i, group in enumerate(layers):
        for name in group:
            via: dict[str, list[str]] = {name: []}
            queue = [name]
            while queue:
                cur = queue.pop(0)
                for dep in requires.get(cur, ()):
                    if dep in via:
                        continue
                    via[dep] = via[cur] + ([cur] if cur != name else [])
                    queue.append(dep)
                    j = position.get(dep)
                    if j is not None and j <= i:
                        continue
                    chain = f" (through {' -> '.join(via[dep])})" if via[dep] else ""
                    where = "is in no layer group" if j is None else f"is in layer group {j + 1}, above it"
                    problems.append(f"{name} (layer group {i + 1}) needs {dep}{chain}, which {where}")
    return problems


def requires_from_wheels(layers: Sequence[Sequence[str]],
                          wheels: Mapping[str, Sequence[Path]]) -> dict[str, list[str]]:
    """Fallback when the preimage carries no recipe `requires`: the wheels' Requires-Dist,
    kept only where they name a distribution that one of the image's recipes provides (a
    requirement on anything else cannot be judged from here)."""
    provider: dict[str, str] = {}
    metas: dict[str, list[str]] = {}
    for recipe in (n for g in layers for n in g):
        for whl in wheels.get(recipe, ()):
            name, _version, requires = wheel_metadata(whl)
            provider[_normalise(name)] = recipe
            metas.setdefault(recipe, []).extend(requires)
    out: dict[str, list[str]] = {}
    for recipe, reqs in metas.items():
        deps = [provider[n] for n in map(_normalise, reqs) if n in provider and provider[n] != recipe]
        out[recipe] = sorted(set(deps))
    return out


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_metadata(whl: Path) -> tuple[str, str, list[str]]:
    """Name, version and unconditional Requires-Dist names (no extras) of a wheel."""
    with zipfile.ZipFile(whl) as zf:
        meta_name = next((n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        if meta_name is None:
            raise PlannerError("wheel has no .dist-info/METADATA", where=str(whl))
        # Read in-process: a small wheel can inflate to gigabytes (a zip bomb). Cap what is taken.
        if zf.getinfo(meta_name).file_size > MAX_METADATA:
            raise PlannerError(f"{meta_name} is larger than {MAX_METADATA >> 20} MiB", where=whl.name)
        with zf.open(meta_name) as f:
            raw = f.read(MAX_METADATA + 1)
        if len(raw) > MAX_METADATA:
            raise PlannerError(f"{meta_name} is larger than {MAX_METADATA >> 20} MiB", where=whl.name)
        text = raw.decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    fields: list[tuple[str, str]] = []
    for line in head.splitlines():
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + " " + line.strip())
        elif ":" in line:
            k, v = line.split(":", 1)
            fields.append((k.strip().lower(), v.strip()))
    name = next((v for k, v in fields if k == "name"), whl.name.split("-")[0])
    version = next((v for k, v in fields if k == "version"), "")
    reqs = []
    for k, v in fields:
        if k != "requires-dist":
            continue
        spec, _, marker = v.partition(";")
        if "extra" in marker:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if m:
            reqs.append(m.group(1))
    return name, version, reqs
