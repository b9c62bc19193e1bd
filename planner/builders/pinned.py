"""Builders over pinned wheels, run in-process: `prebuilt-wheel` (a wheel pinned by hash, copied
under its own name) and `cuda-toolkit` (the pinned CUDA compiler wheels merged into one tree).
They only copy, merge or repack pinned inputs with the planner's own deterministic writers."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..derivation import BuildRequest, Node
from ..errors import BuildError


def _files(req: BuildRequest, names: list[str] | None = None) -> list[Path]:
    from ..safetree import regular_files

    out: list[Path] = []
    for name, entry in sorted(req.inputs.items()):
        if names is not None and name not in names:
            continue
        out.extend(Path(p) for p in regular_files(entry.path, where=f"input {name}"))
    return out


def prebuilt_wheel(node: Node, req: BuildRequest, out: Path, log: TextIO) -> None:
    """A wheel pinned by hash (TransformerEngine's core, tilelang): copied under its own name."""
    from ..safetree import Tree, plain_name, regular_files

    with Tree(out, where=node.label()) as dest:
        for name, entry in sorted(req.inputs.items()):
            filename = plain_name(node.inputs[name].filename or entry.path.name, where=f"input {name}",
                                  what="wheel file name")
            if not filename.endswith(".whl"):
                raise BuildError(node.label(), f"input {name} is not a wheel: {filename}")
            files = regular_files(entry.path, where=f"input {name}")
            if files != [entry.path]:
                raise BuildError(node.label(), f"input {name} is not a single regular file")
            with open(entry.path, "rb") as f:
                dest.write(filename, f, replace=False)
            log.write(f"copied {filename}\n")


def cuda_toolkit(node: Node, req: BuildRequest, out: Path, log: TextIO) -> None:
    """Merge the pinned CUDA compiler wheels into one toolkit tree (nvcc, nvvm, headers, libs)."""
    from .cuda import assemble_toolkit

    settings = node.preimage.builder.settings
    targets: dict[str, list[str]] = dict(settings.get("targets", {}))
    target_inputs = {n for names in targets.values() for n in names}
    host_wheels = _files(req, [n for n in req.inputs if n not in target_inputs])
    target_wheels = {t: _files(req, names) for t, names in targets.items()}
    out.rmdir()
    assemble_toolkit(host_wheels, out, target_runtime_wheels=target_wheels or None)
    log.write(f"assembled toolkit from {len(host_wheels)} wheels\n")
