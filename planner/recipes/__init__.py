"""Recipes: one TOML file per package, toolchain or image, loaded into typed attrs classes.

A recipe set is a folder `recipes/<set>/` holding `set.toml` (the target, the variant axes'
values, SOURCE_DATE_EPOCH) and one `<name>.toml` per recipe. Validation errors name the file,
the key and, where it can be found, the line.

The package: `model` (the classes), `parse` (TOML into the classes, error locations),
`validate` (rules beyond the types, references, cycles), `sets` (loading a set, aliases, the
parse cache). Imports point model <- parse <- validate <- sets.
"""

from __future__ import annotations

from .model import (  # noqa: F401
    AXES, BUILDERS, PLATFORMS, Build, ImageSpec, Patch, Recipe, RecipeSet, Resources, SetConfig, Source, SourceKind,
    parse_duration, parse_size,
)
from .parse import line_of  # noqa: F401
from .sets import load_recipe, load_set  # noqa: F401
from .validate import find_cycle  # noqa: F401
