"""The variables the planner itself sets in a build's environment.

A recipe's `[build] env` may not declare any of them: the planner would overwrite the value
while the declared one still entered the key (a silent lie), or the declared one would undo
what makes the build reproducible. A clash is refused when the recipe is loaded.
"""

from __future__ import annotations

import re

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

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
    names = COMMON
    if builder == "shell":
        names |= BY_BUILDER["shell"]
    if builder == "cuda-wheel" and settings.get("frontend") == "pep517":  # runtime.pep517_cuda_wheel
        names |= BY_BUILDER["cuda-wheel"]
        if isinstance(settings.get("arch-list-env"), str):
            names |= {settings["arch-list-env"]}
    return names


# Variables the planner sets to one constant: declaring that same value overwrites nothing
# (slime's recipes spell out CUDA_VISIBLE_DEVICES = "" for their pep517 CUDA builds).
CONSTANT = {"CUDA_VISIBLE_DEVICES": "", "TZ": "UTC", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "USER": "build", "TERM": "dumb"}


def clashes(builder: str, settings: dict, declared: dict) -> list[str]:
    """Declared variables the planner would overwrite with another value."""
    names = reserved(builder, settings)
    return sorted(k for k, v in declared.items() if k in names and CONSTANT.get(k) != v)


def arch_list_env_problem(settings: dict) -> str | None:
    """What is wrong with a pep517 cuda-wheel's `arch-list-env` (the variable that carries the arch
    list): a name the planner sets for another purpose would drop the arch list (MAX_JOBS) or
    replace one the build needs (PATH), and anything but a variable name fails inside the build."""
    name = settings.get("arch-list-env", "TORCH_CUDA_ARCH_LIST")
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        return f"arch-list-env must be an environment variable name, not {str(name)[:80]!r}"
    if name != "TORCH_CUDA_ARCH_LIST" and name in COMMON | BY_BUILDER["cuda-wheel"]:
        return f"arch-list-env {name!r} is a variable the planner sets for another purpose"
    return None

