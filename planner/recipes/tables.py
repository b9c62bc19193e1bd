"""Checks of a recipe's tables that reach other programs: what an `[image]` table writes into an
image's config (read by runtimes, runc, containerd, umoci, that refuse, or worse, split, what they
cannot take) and a builder's settings that become environment variables. Checked when the recipe
loads, at the key's line, not when the image is assembled or the build runs."""

from __future__ import annotations

from ..buildenv import ENV_NAME, arch_list_env_problem
from ..errors import UnsafeTree
from ..safetree import checked_rel, has_control
from .model import ImageSpec, Recipe


def _relative_path(v: object) -> bool:
    try:
        return isinstance(v, str) and bool(checked_rel(v, where=""))
    except UnsafeTree:
        return False


def _one_line(v: object) -> bool:
    return isinstance(v, str) and not has_control(v)


# What the builders read of [build.settings], and what each value must be: the builders run
# inside the sandbox, where a list for a path or "4 -o /x" for a count was a traceback, and a
# newline in a wheel's summary or requirement a header of its METADATA.
_SETTINGS = {
    "subdir": (_relative_path, "a relative path inside the source"),
    "nvcc-threads": (lambda v: type(v) is int and 1 <= v <= 256, "a whole number from 1 to 256"),
    "config-settings": (lambda v: isinstance(v, dict) and all(
        isinstance(x, str) or (isinstance(x, list) and all(isinstance(y, str) for y in x)) for x in v.values()),
        "a table of strings or lists of strings (PEP 517's config_settings)"),
    "sources": (lambda v: isinstance(v, list) and all(_relative_path(x) for x in v), "a list of relative paths"),
    "include-dirs": (lambda v: isinstance(v, list) and all(_relative_path(x) for x in v),
                     "a list of relative paths"),
    "packages": (lambda v: isinstance(v, list) and all(_relative_path(x) for x in v),
                 "a list of relative paths (package folders)"),
    "library": (_relative_path, "a relative path in the wheel"),
    "summary": (_one_line, "one line of text"),
    "requires": (lambda v: isinstance(v, list) and all(_one_line(x) for x in v), "a list of one-line requirements"),
    "backend": (_one_line, "a build backend's name"),
}


def check_tables(r: Recipe, err) -> None:
    """`err(key, message)` makes the RecipeError at that key."""
    for key, value in r.build.settings.items() if r.build.settings else ():
        rule = _SETTINGS.get(key)
        if rule is not None and not rule[0](value):
            raise err(key, f"settings.{key} must be {rule[1]}, not {str(value)[:80]!r}")
    tools = r.build.settings.get("tools") if r.build.settings else None
    if tools is not None:
        # runtime._buildenv puts these inputs' wheel scripts on PATH: each must be an input
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise err("tools", "settings tools must be a list of input names")
        unknown = sorted(set(tools) - set(r.inputs))
        if unknown:
            raise err("tools", f"settings tools names {', '.join(unknown)}, which is not an input of this recipe")
    if r.build.builder == "cuda-wheel" and r.build.settings.get("frontend") == "pep517":
        if (problem := arch_list_env_problem(r.build.settings)) is not None:
            raise err("arch-list-env", problem)
    if r.image is not None:
        check_image(r.image, err)


def check_image(image: ImageSpec, err) -> None:
    """`err(key, message)` makes the RecipeError naming `image.<key>`."""
    for k, v in image.env.items():
        if not ENV_NAME.fullmatch(k):
            raise err("env", f"image.env: {k[:80]!r} is not an environment variable name (letters, digits, '_')")
        if "\0" in v:
            raise err("env", f"image.env.{k}: the value holds a NUL byte, which no environment can")
    for k, v in image.labels.items():
        if not k or has_control(k) or len(k) > 256:
            raise err("labels", f"image.labels: {k[:80]!r} is not a label key (non-empty, no control characters)")
        if "\0" in v:
            raise err("labels", f"image.labels.{k}: the value holds a NUL byte")
    for key, argv in (("entrypoint", image.entrypoint), ("cmd", image.cmd)):
        if any("\0" in a for a in argv):
            raise err(key, f"image.{key}: an argument holds a NUL byte, which no argument can")
