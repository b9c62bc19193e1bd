"""The recipe model: typed attrs classes for a recipe, its sources, patches, build and image, and
the set (set.toml and its recipes). Sizes and durations as recipes write them."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import attrs

from ..builders.registry import BUILDERS as _REGISTRY
from ..errors import RecipeError

if TYPE_CHECKING:
    from ..limits import Limits


AXES = ("platform", "cuda", "host")
PLATFORMS = ("linux/amd64", "linux/arm64")
SourceKind = Literal["url", "git", "pypi", "path", "apt", "image"]
BUILDERS = tuple(_REGISTRY)


@attrs.frozen
class Source:
    """One input: where it comes from. What it resolved to lives in the lock, not here."""

    kind: SourceKind
    url: Optional[str] = None  # url, git, image (registry reference)
    rev: Optional[str] = None  # git: tag, branch or commit to resolve
    submodules: bool = False  # git: fetch submodules as separate inputs
    subdir: Optional[str] = None  # git/url: use only this subdirectory
    # git: only these files and folders of the commit (a sparse export), where the others are
    # not wanted or not there (a snapshot missing a blob that no build reads)
    paths: Optional[list[str]] = None
    name: Optional[str] = None  # pypi project name; apt package name
    version: Optional[str] = None  # pypi exact version; apt version (None = candidate)
    dist: Literal["sdist", "wheel"] = "sdist"  # pypi
    path: Optional[str] = None  # path: a folder or file of this repository
    sha256: Optional[str] = None  # url: an expected digest may be given up front
    unpack: Optional[bool] = None  # default: archives unpack, wheels/debs/patches do not
    per_platform: bool = False  # pypi wheels, apt packages, images: bytes differ by platform
    python: Optional[str] = None  # pypi wheels: python tag, e.g. "3.11"
    platform: Optional[str] = None  # pypi wheels: always this platform (a cross target's runtime)
    tree: Optional[str] = None  # expected tree hash (a prefetched pin, checked when fetched)
    suite: Optional[str] = None  # apt: the distribution it must come from, e.g. "ubuntu/jammy"
    # apt: the package's name per platform, instead of `name`, where Debian spells it per
    # architecture (binutils-x86-64-linux-gnu / binutils-aarch64-linux-gnu); a platform absent
    # from the table has no such input (libquadmath0 exists for amd64 only).
    names: Optional[dict[str, str]] = None
    # A per-platform input that exists on these platforms only (a wheel the layer needs on amd64
    # alone, because the arm64 base already has it): the others get no pin and no input.
    platforms: Optional[list[str]] = None

    def apt_name(self, platform: Optional[str]) -> str:
        """The Debian package this apt input stands for on `platform`."""
        if self.names is not None:
            return self.names[str(platform)]
        return str(self.name)

    def for_platform(self, platform: Optional[str]) -> bool:
        """Whether the input exists on `platform` (per-platform apt names or `platforms` may
        leave some out)."""
        return ((self.names is None or platform in self.names)
                and (self.platforms is None or platform in self.platforms))

    def unpacks(self) -> bool:
        if self.unpack is not None:
            return self.unpack
        if self.kind in ("git", "path"):
            return True
        if self.kind == "pypi":
            return self.dist == "sdist"
        if self.kind == "url":
            return bool(re.search(r"\.(tar(\.\w+)?|tgz|txz|zip)$", self.url or ""))
        return False

    def platform_dependent(self) -> bool:
        return self.per_platform or self.kind in ("apt", "image")


@attrs.frozen
class Patch:
    """A local patch file (path) or one fetched by URL and pinned by hash (like fetchpatch)."""

    file: Optional[str] = None
    url: Optional[str] = None
    sha256: Optional[str] = None
    name: Optional[str] = None
    strip: int = 1
    tree: Optional[str] = None  # expected blake3 of the bytes (a prefetched pin)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return Path(self.file or self.url or "patch").name


@attrs.frozen
class Resources:
    """What a build may use. Enforced in the sandbox (planner/limits.py); none of it enters a key
    except `cores`, which a build sees (its environment's job count and CPU list)."""

    memory: str = "1GiB"
    cores: int = 1
    tmp: str = "1GiB"  # the sandbox's /tmp and /dev/shm, each a tmpfs of this size
    processes: int = 4096  # processes and threads at once
    timeout: Optional[str] = None  # wall-clock time, e.g. "2h"; none by default

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    def limits(self) -> "Limits":
        return _limits(self.memory, self.tmp, self.processes, self.timeout)


@functools.lru_cache(maxsize=None)
def _limits(memory: str, tmp: str, processes: int, timeout: Optional[str]) -> "Limits":
    """One (immutable) Limits per distinct [resources]: planning asks for every node's."""
    from ..limits import Limits

    return Limits(memory=parse_size(memory), tmp=parse_size(tmp), processes=processes,
                  timeout=parse_duration(timeout) if timeout is not None else 0.0)


@attrs.frozen
class Build:
    builder: str
    env: dict[str, str] = attrs.field(factory=dict)
    script: Optional[str] = None  # shell builder
    settings: dict[str, object] = attrs.field(factory=dict)
    impure: bool = False  # asks for host access that makes output non-reproducible
    rootfs: Optional[str] = None  # recipe whose output is a root filesystem to build inside


@attrs.frozen
class ImageSpec:
    """The image recipe's own table: the image's layers, environment and entrypoint."""

    base: Optional[str] = None  # recipe producing the base root filesystem
    layers: list[list[str]] = attrs.field(factory=list)  # groups of recipe names, bottom first
    env: dict[str, str] = attrs.field(factory=dict)
    entrypoint: list[str] = attrs.field(factory=list)
    cmd: list[str] = attrs.field(factory=list)
    labels: dict[str, str] = attrs.field(factory=dict)
    compression: Literal["gzip", "zstd"] = "gzip"


@attrs.frozen
class Recipe:
    name: str
    version: str
    build: Build
    description: str = ""
    axes: list[str] = attrs.field(factory=list)
    source: Optional[Source] = None
    inputs: dict[str, Source] = attrs.field(factory=dict)
    patches: list[Patch] = attrs.field(factory=list)
    deps: list[str] = attrs.field(factory=list)  # build-time: outputs mounted at /deps/<name>
    toolchains: list[str] = attrs.field(factory=list)  # mounted at /toolchains/<name>
    requires: list[str] = attrs.field(factory=list)  # run-time: installed beside it in images
    resources: Resources = attrs.field(factory=Resources)
    estimate: str = "10s"
    image: Optional[ImageSpec] = None
    platforms: list[str] = attrs.field(factory=list)  # only these platforms (empty: all)
    # This recipe's PyPI inputs as of another date than set.toml's `resolve-as-of` (a recipe pinned
    # to releases made after the set's date, such as a base built from newer pins).
    resolve_as_of: Optional[str] = None
    file: str = ""  # where it was loaded from (not part of the TOML)

    @property
    def estimate_seconds(self) -> float:
        return parse_duration(self.estimate)

    def all_sources(self) -> dict[str, Source]:
        """Every named input, the primary source as `source`."""
        out = dict(self.inputs)
        if self.source is not None:
            out["source"] = self.source
        return out

    def build_inputs(self) -> list[str]:
        """Recipes whose outputs this recipe's build consumes."""
        out = list(self.deps) + list(self.toolchains)
        if self.build.rootfs:
            out.append(self.build.rootfs)
        if self.image is not None:
            if self.image.base:
                out.append(self.image.base)
            for group in self.image.layers:
                out.extend(group)
        return out


# `build-root = "host"`: the opt-out from a pinned build root (not a recipe name).
HOST_ROOT = "host"


@attrs.frozen
class SetConfig:
    target: str
    source_date_epoch: int
    platforms: list[str] = attrs.field(factory=lambda: list(PLATFORMS))
    # variant name -> arch list, or -> {platform -> arch list} where platforms differ (slime's
    # arm64 images carry fewer architectures than its amd64 ones).
    cuda: dict[str, object] = attrs.field(factory=dict)
    # Like uv's exclude-newer: PyPI files uploaded after this date or time are not candidates,
    # so re-locking later gives the same files (fetch/simple_index.py says how it is read).
    resolve_as_of: Optional[str] = None
    # The recipe (a debian-rootfs with the host axis) whose root filesystem every sandboxed
    # build of the set runs in instead of the host's /usr: one per build platform. HOST_ROOT
    # ("host") is the explicit opt-out: the host's /usr, keys carry host package versions, and
    # `planner plan`/`show`/`why` say so. A set with sandboxed builds must choose one.
    build_root: Optional[str] = None
    # name -> recipe: a name that recipes use in deps, toolchains, requires, rootfs and image
    # base/layers, standing for the recipe set.toml chooses (one line picks slime's base).
    aliases: dict[str, str] = attrs.field(factory=dict)
    # `profile = "NAME"` picks `[profiles.NAME]`: what differs between, say, two bases, chosen by
    # one line. A profile maps a name to the recipe that stands for it wherever recipes refer to
    # it: an alias (a name no recipe has), a recipe replaced by another, or a recipe left out
    # ("" : dropped from requires and image layers; a build dependency on it is an error).
    profile: Optional[str] = None
    profiles: dict[str, dict[str, str]] = attrs.field(factory=dict)

    @property
    def root_recipe(self) -> Optional[str]:
        """The build root recipe, None when the set has none or opts out to the host's /usr."""
        return None if self.build_root in (None, HOST_ROOT) else self.build_root

    @property
    def on_host(self) -> bool:
        return self.build_root == HOST_ROOT

    def archs(self, variant: str, platform: Optional[str]) -> list[str]:
        value = self.cuda[variant]
        if isinstance(value, dict):
            return list(value[platform]) if platform in value else []
        return list(value)  # type: ignore[arg-type]


@attrs.frozen
class RecipeSet:
    name: str
    root: Path  # project root (holds recipes/, lockfiles/, patches/)
    config: SetConfig
    recipes: dict[str, Recipe]
    # The stat signatures (plancache.stat_sig) of the recipe files as loading took them, before
    # reading each: what a cache of the plan records for them, without a second stat per file.
    signatures: dict[str, tuple] = attrs.field(factory=dict, eq=False, repr=False)
    # What is derived from the set once and asked for more than once per plan (the input
    # declarations: the planner, the lock check and the plan cache each ask); a set evolved
    # from this one starts empty.
    memo: dict = attrs.field(factory=dict, eq=False, repr=False, init=False)

    @property
    def folder(self) -> Path:
        return self.root / "recipes" / self.name

    @property
    def lockfile(self) -> Path:
        return self.root / "lockfiles" / f"{self.name}.lock"

    def get(self, name: str) -> Recipe:
        try:
            return self.recipes[name]
        except KeyError:
            from ..suggest import did_you_mean

            raise RecipeError(f"no recipe named {name!r} in set {self.name!r}{did_you_mean(name, self.recipes)}") from None


# -- parsing helpers -------------------------------------------------------------------------

# An input's name and a patch's label become part of a lock id (`recipe/name`,
# `recipe/patch/label`), a folder or file name in the build and a log line: plain names only,
# and for a submodule `<source>/<its path>`, of plain names (never '.', '..' or empty).
INPUT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}){0,15}")
PATCH_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+~=,-]{0,254}")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.I)
_DUR = re.compile(r"^\s*(\d+)\s*(ms|s|m|h)?\s*$")


def parse_size(text: str) -> int:
    return _parse_size(str(text))


def parse_duration(text: str) -> float:
    return _parse_duration(str(text))


# Memoised: every node of a plan asks for its recipe's memory and estimate.
@functools.lru_cache(maxsize=1024)
def _parse_size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 512MiB, 4GiB)")
    n, unit = int(m.group(1)), (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    return n * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]


@functools.lru_cache(maxsize=1024)
def _parse_duration(text: str) -> float:
    m = _DUR.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 5m, 2h)")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
