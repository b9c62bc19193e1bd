"""The Builder interface: one record per builder kind, and the one place that lists them.

A builder says its version (part of every key it makes: bump it when its code changes what it
writes), whether it is builtin (runs in the planner process, executing no recipe-controlled
code, like Nix's builtin fetchers) or sandboxed, which host tools a sandboxed build runs (their
Debian versions enter the key), whether one node covers every platform and CUDA variant (an
image), the preimage fields it adds, and how it runs.

Adding a builder is one record here (and its module). Functions are named "module:function" and
imported only when used: recipe validation and planning do not import the builders' code.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

import attrs


@attrs.frozen
class Builder:
    kind: str
    version: int
    builtin: bool = False
    # Groups of `planner.host.HOST_PACKAGES` a sandboxed build runs; more on some platforms.
    host_tools: tuple[str, ...] = ("base",)
    platform_tools: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    covers_variants: bool = False  # one node for every platform and CUDA variant of the set
    run: Optional[str] = None  # builtin: "module:function" (node, request, out, log)
    preimage_fields: Optional[str] = None  # "module:function" (recipe set, lock, recipe) -> fields

    def host_groups(self, platform: Optional[str]) -> tuple[str, ...]:
        if self.builtin:
            return ()
        return self.host_tools + self.platform_tools.get(platform or "", ())

    def runner(self) -> Callable[..., None]:
        assert self.run is not None, self.kind
        return _load(self.run)

    def extra_fields(self, rs: Any, lock: Any, recipe: Any) -> dict[str, Any]:
        return _load(self.preimage_fields)(rs, lock, recipe) if self.preimage_fields else {}


def _load(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


BUILDERS: dict[str, Builder] = {b.kind: b for b in (
    # 2: every nvcc the build reaches runs as process 1 of its own PID namespace (builders/pidns.py)
    Builder("shell", 2),
    Builder("unpack", 1),
    Builder("source-tree", 1),
    # 2: RECORD quotes member names with commas (CSV); 3: nvcc as process 1, as for shell
    Builder("python-wheel", 3),
    # 2: torch-style builds run each nvcc as process 1 of its own PID namespace (builders/pidns.py);
    # 3: every nvcc the build reaches, however started (its file is wrapped in place)
    Builder("cuda-wheel", 3, host_tools=("base", "cuda"), platform_tools={"linux/arm64": ("cuda-arm64",)}),
    Builder("prebuilt-wheel", 1, builtin=True, run="planner.builders.pinned:prebuilt_wheel"),
    Builder("cuda-toolkit", 2, builtin=True, run="planner.builders.pinned:cuda_toolkit"),
    Builder("debian-rootfs", 1, builtin=True, run="planner.builders.roots:debian_rootfs"),
    Builder("oci-image", 1, builtin=True, covers_variants=True, run="planner.builders.image:build_image",
            preimage_fields="planner.builders.image:preimage_extras"),
    Builder("image-rootfs", 1, builtin=True, run="planner.builders.roots:image_rootfs"),
)}
BUILTIN_BUILDERS = frozenset(k for k, b in BUILDERS.items() if b.builtin)


def builder(kind: str) -> Builder:
    """The builder of that kind (recipes are validated against BUILDERS before planning)."""
    return BUILDERS[kind]
