"""The variables the planner itself sets in a build's environment.

A recipe's `[build] env` may not declare any of them: the planner would overwrite the value
while the declared one still entered the key (a silent lie), or the declared one would undo
what makes the build reproducible. A clash is refused when the recipe is loaded.
"""

from __future__ import annotations

# Set for every sandboxed build (sandbox.BASE_ENV, build._declared_env, sandbox.cores_env).
COMMON = frozenset({
    "PATH", "HOME", "TMPDIR", "TZ", "LC_ALL", "LANG", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
    "USER", "TERM", "SOURCE_DATE_EPOCH", "PYTHONPATH", "NIX_BUILD_CORES", "OMP_NUM_THREADS",
})
# Set by one builder on top (runtime.build_shell, runtime.pep517_cuda_wheel).
BY_BUILDER = {
    "shell": frozenset({"out", "src"}),
    "cuda-wheel": frozenset({"CUDA_VISIBLE_DEVICES", "MAX_JOBS", "TORCH_CUDA_ARCH_LIST"}),
}


def reserved(builder: str, settings: dict) -> frozenset[str]:
    """Every variable the planner sets for a build of `builder` with these settings."""
    names = COMMON | BY_BUILDER.get(builder, frozenset())
    if builder == "cuda-wheel" and isinstance(settings.get("arch-list-env"), str):
        names |= {settings["arch-list-env"]}
    return names


def clashes(builder: str, settings: dict, declared: dict) -> list[str]:
    return sorted(k for k in declared if k in reserved(builder, settings))
