"""Recipes: one TOML file per package, toolchain or image, loaded into typed attrs classes.

A recipe set is a folder `recipes/<set>/` holding `set.toml` (the target, the variant axes'
values, SOURCE_DATE_EPOCH) and one `<name>.toml` per recipe. Validation errors name the file,
the key and, where it can be found, the line.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Literal, Optional

import attrs

from .builders.registry import BUILDERS as _REGISTRY
from .errors import RecipeError
from .gcpause import gc_paused

AXES = ("platform", "cuda", "host")
PLATFORMS = ("linux/amd64", "linux/arm64")
SourceKind = Literal["url", "git", "pypi", "path", "apt", "image"]
BUILDERS = tuple(_REGISTRY)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_~-]*\Z")


@attrs.frozen
class Source:
    """One input: where it comes from. What it resolved to lives in the lock, not here."""

    kind: SourceKind
    url: Optional[str] = None  # url, git, image (registry reference)
    rev: Optional[str] = None  # git: tag, branch or commit to resolve
    submodules: bool = False  # git: fetch submodules as separate inputs
    subdir: Optional[str] = None  # git/url: use only this subdirectory
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
    memory: str = "1GiB"
    cores: int = 1

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)


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
    # build of the set runs in instead of the host's /usr: one per build platform.
    build_root: Optional[str] = None
    # name -> recipe: a name that recipes use in deps, toolchains, requires, rootfs and image
    # base/layers, standing for the recipe set.toml chooses (one line picks slime's base).
    aliases: dict[str, str] = attrs.field(factory=dict)

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
            from .suggest import did_you_mean

            raise RecipeError(f"no recipe named {name!r} in set {self.name!r}{did_you_mean(name, self.recipes)}") from None


# -- parsing helpers -------------------------------------------------------------------------

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


def line_of(text: str, dotted: str) -> int | None:
    """Best-effort line number of the last component of a dotted key in TOML text."""
    leaf = dotted.split(".")[-1].split("[")[0]
    if not leaf:
        return None
    pat = re.compile(rf"^\s*(\[+[^\]]*\b{re.escape(leaf)}\b[^\]]*\]+|\"?{re.escape(leaf)}\"?\s*=)")
    inline = re.compile(rf"[{{,]\s*\"?{re.escape(leaf)}\"?\s*=")  # a key inside an inline table
    lines = text.splitlines()
    for p in (pat, inline):
        for i, line in enumerate(lines, 1):
            if p.search(line):
                return i
    return None


_VERBATIM = ("env", "settings", "labels")  # user-named keys kept as written
_NAMED = ("inputs", "cuda")  # tables whose keys are user names but whose values are ours


def _kebab_to_snake(data: object) -> object:
    """TOML uses kebab-case keys; attrs fields are snake_case."""
    if isinstance(data, list):
        return [_kebab_to_snake(v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for k, v in data.items():
        if k in _VERBATIM:
            out[k] = v
        elif k in _NAMED and isinstance(v, dict):
            out[k] = {name: _kebab_to_snake(x) for name, x in v.items()}
        else:
            out[k.replace("-", "_")] = _kebab_to_snake(v)
    return out


_CONVERTER = None


def _strict(kind: type, what: str):
    def hook(value, _type):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"must be {what}, not {type(value).__name__} {value!r}")
        return value
    return hook


def _converter():
    """One converter per process (building one compiles its hooks: milliseconds per class).

    Strict: cattrs' defaults would turn `version = 1` into "1" and `deps = "ab"` into
    ["a", "b"]; a recipe with the wrong type is an error that names the key instead.
    """
    global _CONVERTER
    if _CONVERTER is not None:
        return _CONVERTER
    import typing

    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))

    def is_list(t) -> bool:
        return typing.get_origin(t) is list

    def structure_list(value, t):
        if not isinstance(value, list):
            raise TypeError(f"must be an array, not {type(value).__name__} {value!r}")
        (item,) = typing.get_args(t)
        return [conv.structure(v, item) for v in value]

    def is_dict(t) -> bool:
        return typing.get_origin(t) is dict

    def structure_dict(value, t):
        if not isinstance(value, dict):
            raise TypeError(f"must be a table, not {type(value).__name__} {value!r}")
        k, v = typing.get_args(t)
        return {conv.structure(key, k): conv.structure(val, v) for key, val in value.items()}

    conv.register_structure_hook_func(is_list, structure_list)
    conv.register_structure_hook_func(is_dict, structure_dict)
    # Builder settings are free-form JSON data, checked by the builder (and for floats below).
    conv.register_structure_hook_func(lambda t: t is object, lambda value, _type: value)
    _CONVERTER = conv
    return conv


def _fields_at(cls: type, keypath: str) -> list[str]:
    """The keys an attrs class accepts at a cattrs key path (`build`, `patches[0]`)."""
    import typing

    def unwrap(t: object) -> object:
        # Optional[X], list[X], dict[str, X]: the attrs class inside, if any.
        while typing.get_args(t) and not attrs.has(t):
            t = [a for a in typing.get_args(t) if a is not type(None)][-1]
        return t

    t: object = cls
    for part in [x for x in re.split(r"[.\[\]]+", keypath) if x]:
        if part.isdigit() or part.startswith(("'", '"')):
            continue  # a list index or a table key: the element type follows
        if not attrs.has(t):
            return []
        try:
            hints = typing.get_type_hints(t)
        except Exception:  # an unresolvable annotation: no suggestion rather than a crash
            return []
        if part not in hints:
            return []
        t = unwrap(hints[part])
    return [f.name for f in attrs.fields(t)] if attrs.has(t) else []  # type: ignore[arg-type]


def _where(path: Path, root: Path, text: str, key: str | None) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = path
    if not key:
        return str(rel)
    line = line_of(text, key)
    return f"{rel}:{line}: {key}" if line else f"{rel}: {key}"


def _structure(cls: type, data: dict, path: Path, root: Path, text: str):
    import cattrs

    conv = _converter()
    try:
        return conv.structure(data, cls)
    except cattrs.BaseValidationError as exc:
        msgs = cattrs.transform_error(exc)
        # A mistyped key explains the required one it leaves missing: report the typo first.
        first = next((m for m in msgs if m.startswith("extra fields found")), msgs[0] if msgs else str(exc))
        # cattrs says e.g. "extra fields found (colour) @ $.build"; turn it into a key path.
        m = re.match(r"(.*) @ \$\.?(.*)$", first)
        if m:
            detail, keypath = m.group(1), m.group(2)
            extra = re.match(r"extra fields found \((.*)\)", detail)
            if extra:
                bad = extra.group(1).split(",")[0].strip()
                from .suggest import did_you_mean

                valid = [n.replace("_", "-") for n in _fields_at(cls, keypath)]
                # cattrs drops the table's own name inside a mapping ([inputs.x] bogus = 1 is
                # reported "@ $.inputs"): find the entry that holds the key, so the error names it.
                node: object = data
                for part in filter(None, keypath.split(".")):
                    node = node.get(part) if isinstance(node, dict) else None
                if isinstance(node, dict) and bad not in node:
                    owner = next((k for k, v in node.items() if isinstance(v, dict) and bad in v), None)
                    if owner is not None:
                        keypath = f"{keypath}.{owner}"
                key = ".".join(p for p in (keypath, bad) if p)
                raise RecipeError("unknown key" + did_you_mean(bad.replace("_", "-"), valid),
                                  where=_where(path, root, text, key.replace("_", "-"))) from None
            raise RecipeError(detail, where=_where(path, root, text, keypath.replace("_", "-") or None)) from None
        raise RecipeError(first, where=_where(path, root, text, None)) from None


def _read_toml(path: Path, root: Path, where: Optional[str] = None) -> tuple[dict, str]:
    """Parse one TOML file of the project; `where` (its path relative to `root`) saves the
    path arithmetic when the caller knows it: 100k recipes make every syscall count."""
    if where is None:
        where = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if not path.resolve().is_relative_to(root.resolve()):
                raise RecipeError("a symlink that leaves the project", where=where)
            st = os.stat(path)
    except OSError:
        raise RecipeError("not a regular file", where=where) from None
    if not stat.S_ISREG(st.st_mode):
        raise RecipeError("not a regular file", where=where)
    try:
        with open(path, "rb") as f:
            raw = f.read((1 << 20) + 1)
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror or exc}", where=where) from None
    if len(raw) > 1 << 20:
        raise RecipeError("recipe larger than 1 MiB", where=where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError("not UTF-8 text", where=where) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"invalid TOML: {exc}", where=_where(path, root, text, None)) from None
    except RecursionError:
        raise RecipeError("invalid TOML: nested too deeply", where=str(path)) from None


def load_recipe(path: Path, root: Path, where: Optional[str] = None) -> Recipe:
    if where is None:
        where = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    data, text = _read_toml(path, root, where)
    data = _kebab_to_snake(data)
    if not isinstance(data, dict):
        raise RecipeError("not a table", where=where)
    data["file"] = where  # where it was read from, whatever the file says
    recipe = _structure(Recipe, data, path, root, text)
    _validate_recipe(recipe, path, root, text)
    return recipe


def _validate_recipe(r: Recipe, path: Path, root: Path, text: str) -> None:
    def err(key: str, msg: str) -> RecipeError:
        return RecipeError(msg, where=_where(path, root, text, key))

    if not _VERSION.match(r.version):
        raise err("version", f"invalid version {r.version!r}: letters, digits, '.', '+', '_', '~', '-'")
    if not _NAME.match(r.name):
        raise err("name", f"invalid name {r.name!r}: lowercase letters, digits, '.', '_', '-'")
    if path.stem != r.name:
        raise err("name", f"recipe name {r.name!r} must match its file name {path.stem!r}")
    if r.build.builder not in BUILDERS:
        raise err("builder", f"unknown builder {r.build.builder!r} (one of {', '.join(BUILDERS)})")
    for p in r.platforms:
        if p not in PLATFORMS:
            raise err("platforms", f"unknown platform {p!r} (one of {', '.join(PLATFORMS)})")
    for a in r.axes:
        if a not in AXES:
            raise err("axes", f"unknown variant axis {a!r} (one of {', '.join(AXES)})")
    if r.build.builder == "shell" and not r.build.script:
        raise err("script", "the shell builder needs build.script")
    if r.build.builder == "oci-image" and r.image is None:
        raise err("builder", "the oci-image builder needs an [image] table")
    if r.build.builder == "source-tree":
        place = r.build.settings.get("path")
        if not isinstance(place, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*)*",
                                                          place) or ".." in place.split("/"):
            raise err("settings", "the source-tree builder needs settings.path, a relative path inside the image "
                                  "such as root/slime")
    for key, value in (("estimate", r.estimate), ("memory", r.resources.memory)):
        try:
            parse_duration(value) if key == "estimate" else parse_size(value)
        except ValueError as exc:
            raise err(key, str(exc)) from None
    if isinstance(r.resources.cores, bool) or not 1 <= r.resources.cores <= 1024:
        raise err("cores", f"cores must be a whole number from 1 to 1024, not {r.resources.cores!r}")
    for name, src in r.all_sources().items():
        _validate_source(name, src, err, root)
    for i, p in enumerate(r.patches):
        if bool(p.file) == bool(p.url):
            raise err("patches", f"patch {i + 1}: give exactly one of file or url")
        if p.url and not p.sha256:
            raise err("patches", f"patch {p.label}: a fetched patch needs sha256")
        if p.url:
            _check_http_url(p.url, err, f"patch {p.label}")
        if p.name is not None and (not p.name or "/" in p.name or "\0" in p.name or p.name in (".", "..")):
            raise err("patches", f"patch name {p.name!r} must be a plain file name")
        if p.file:
            _check_inside(root, p.file, err, "file")
    try:
        if r.build.settings:
            from .hashing import canonical_json

            canonical_json(r.build.settings)
    except TypeError as exc:
        raise err("settings", f"settings must be JSON without floats ({exc}); write numbers as integers or strings") from None
    for k in r.build.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise err("env", f"invalid environment variable name {k!r}")
    from .buildenv import clashes

    clash = clashes(r.build.builder, r.build.settings, r.build.env)
    if clash:
        raise err(clash[0], f"[build] env {clash[0]}: the planner sets this variable for every "
                            f"{r.build.builder} build, so a declared value would be overwritten; remove it")


def _check_inside(root: Path, rel: str, err, key: str) -> None:
    if "\0" in rel:
        raise err(key, f"path {rel!r} contains a NUL byte")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise err(key, f"path {rel!r} must be relative and inside the project")
    real = (root / p).resolve()
    if not real.is_relative_to(root.resolve()):
        raise err(key, f"path {rel!r} resolves outside the project")


def _validate_source(name: str, s: Source, err, root: Path) -> None:
    need = {"url": ("url",), "git": ("url", "rev"), "pypi": ("name", "version"), "path": ("path",),
            "apt": ("name",), "image": ("url",)}[s.kind]
    for field in need:
        if getattr(s, field) in (None, ""):
            raise err(name, f"input {name!r} of kind {s.kind} needs {field!r}")
    if s.kind == "path":
        _check_inside(root, s.path or "", err, "path")
        if not (root / (s.path or "")).exists():
            raise err("path", f"input {name!r}: {s.path} does not exist")
    if s.sha256 and not re.fullmatch(r"[0-9a-f]{64}", s.sha256):
        raise err("sha256", f"input {name!r}: sha256 must be 64 lowercase hex digits")
    if s.tree and not re.fullmatch(r"blake3:[0-9a-f]{64}", s.tree):
        raise err("tree", f"input {name!r}: tree must be blake3:<64 hex digits>")
    if s.suite is not None and (s.kind != "apt" or not re.fullmatch(r"[a-z0-9][a-z0-9.-]*/[a-z0-9][a-z0-9.-]*", s.suite)):
        raise err("suite", f"input {name!r}: suite is for apt inputs and reads vendor/codename, e.g. ubuntu/jammy")
    if s.kind == "git" and s.url and s.url.startswith("-"):
        raise err("url", f"input {name!r}: invalid git url")
    if s.kind == "url" and s.url:
        _check_http_url(s.url, err, f"input {name!r}")
    if s.kind == "git" and s.url:
        _check_git_url(root, s.url, err, f"input {name!r}")
    if s.subdir is not None:
        _check_subdir(s.subdir, err, f"input {name!r}")


_REMOTE_GIT = re.compile(r"^(https?|git|ssh|git\+ssh)://[^/\s]+", re.IGNORECASE)
_SCP_GIT = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!/)")


def _check_http_url(url: str, err, what: str) -> None:
    """Downloads come from http(s) only: a `file://` URL would copy a host file (say
    /etc/shadow) into the store. Local files reach a build as `path` inputs or through a mirror."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https") or not url[len(scheme):].startswith("://") or "\0" in url:
        raise err("url", f"{what}: only http:// and https:// URLs are fetched, not {url[:60]!r} "
                         f"(serve local files through a mirror, or use a path input)")


def _check_git_url(root: Path, url: str, err, what: str) -> None:
    """A git source is remote (https, git, ssh, user@host:path) or a repository inside the
    project: a local path outside it would copy whatever repository the machine holds."""
    if _REMOTE_GIT.match(url) or _SCP_GIT.match(url):
        return
    local = url[len("file://"):] if url.lower().startswith("file://") else url
    if "://" in local or not local:
        raise err("url", f"{what}: git URL {url[:60]!r} is neither remote (https, git, ssh) nor a local path")
    real = (root / local).resolve() if not local.startswith("/") else Path(local).resolve()
    if "\0" in local or not real.is_relative_to(root.resolve()):
        raise err("url", f"{what}: local git repository {url[:60]!r} is outside the project "
                         f"(serve it through a mirror, or over git:// or https)")


def _check_subdir(subdir: str, err, what: str) -> None:
    """`subdir` picks a folder of the fetched tree; absolute or climbing out, it once made
    `planner lock` move that host folder into the store."""
    parts = subdir.split("/")
    if (not subdir or subdir.startswith("/") or ".." in parts or "\0" in subdir or "\\" in subdir
            or all(p in ("", ".") for p in parts)):
        raise err("subdir", f"{what}: subdir {subdir!r} must be a relative folder inside the source, without '..'")


@gc_paused()
def load_set(root: Path, name: str) -> RecipeSet:
    root = root.resolve()
    folder = root / "recipes" / name
    if not folder.is_dir():
        raise RecipeError(f"no recipe set {name!r} (expected folder {folder.relative_to(root)}/)")
    cfg_path = folder / "set.toml"
    if not cfg_path.is_file():
        raise RecipeError("missing set.toml (target, source-date-epoch, variants)", where=str(cfg_path.relative_to(root)))
    data, text = _read_toml(cfg_path, root)
    config = _structure(SetConfig, _kebab_to_snake(data), cfg_path, root, text)
    for p in config.platforms:
        if p not in PLATFORMS:
            raise RecipeError(f"unknown platform {p!r} (one of {', '.join(PLATFORMS)})",
                              where=_where(cfg_path, root, text, "platforms"))
    _check_cuda(config, lambda key, msg: RecipeError(msg, where=_where(cfg_path, root, text, key)))
    if config.resolve_as_of is not None:
        from .errors import FetchError
        from .fetch.simple_index import parse_as_of

        try:
            parse_as_of(config.resolve_as_of)
        except FetchError as exc:
            raise RecipeError(exc.message, where=_where(cfg_path, root, text, "resolve-as-of")) from None
    recipes: dict[str, Recipe] = {}
    cache = _ParseCache(root, name)
    # Sorting names, not Path objects: pathlib's comparison is slow for 100k recipes.
    for fname in sorted(e.name for e in os.scandir(folder) if e.name.endswith(".toml")):
        if fname == "set.toml":
            continue
        path = folder / fname
        sig = cache.signature(path)  # before reading: a file edited meanwhile is parsed again next time
        r = cache.get(path, sig)
        if r is None:
            r = load_recipe(path, root, f"recipes/{name}/{fname}")
            cache.put(path, sig, r)
        recipes[r.name] = r
    cache.save()
    if config.aliases:
        recipes = _apply_aliases(config.aliases, recipes,
                                 lambda key, msg: RecipeError(msg, where=_where(cfg_path, root, text, key)))
    rs = RecipeSet(name=name, root=root, config=config, recipes=recipes)
    _check_references(rs)
    return rs


def _apply_aliases(aliases: dict[str, str], recipes: dict[str, Recipe], err) -> dict[str, Recipe]:
    """Every reference to an alias replaced by the recipe it stands for."""
    for alias, target in sorted(aliases.items()):
        if not isinstance(target, str) or target not in recipes:
            raise err("aliases", f"alias {alias!r} names {target!r}, which is not a recipe of this set")
        if alias in recipes:
            raise err("aliases", f"alias {alias!r} is also the name of a recipe")

    def sub(names):
        return [aliases.get(n, n) for n in names]

    out: dict[str, Recipe] = {}
    for n, r in recipes.items():
        build = attrs.evolve(r.build, rootfs=aliases.get(r.build.rootfs, r.build.rootfs)) if r.build.rootfs else r.build
        image = r.image
        if image is not None:
            image = attrs.evolve(image, base=aliases.get(image.base, image.base) if image.base else image.base,
                                 layers=[sub(g) for g in image.layers])
        out[n] = attrs.evolve(r, deps=sub(r.deps), toolchains=sub(r.toolchains), requires=sub(r.requires),
                              build=build, image=image)
    return out


def _check_cuda(config: SetConfig, err) -> None:
    from .builders.cuda_archs import normalise_archs

    def check_list(name: str, value: object) -> None:
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            raise err(name, f"cuda variant {name!r} must be a non-empty array of arch names")
        try:
            normalise_archs(value)
        except ValueError as exc:
            raise err(name, f"cuda variant {name!r}: {exc}") from None

    for name, value in config.cuda.items():
        if isinstance(value, dict):
            for plat, archs in value.items():
                if plat not in config.platforms:
                    raise err(name, f"cuda variant {name!r} names platform {plat!r}, which set.toml does not build")
                check_list(name, archs)
            missing = [p for p in config.platforms if p not in value]
            if missing:
                raise err(name, f"cuda variant {name!r} has no arch list for {', '.join(missing)}")
        else:
            check_list(name, value)


class _ParseCache:
    """Parsed recipes keyed by their file's stat signature (like Python's __pycache__), so
    planning a large set does not re-parse and re-validate TOML that did not change.

    Lives under $PLANNER_CACHE (default ~/.cache/planner); a miss just parses the file.
    """

    VERSION = 4

    @staticmethod
    def _schema() -> tuple:
        """What the pickled classes look like: this module's own stat signature, so a planner
        with other recipe classes (an upgrade, a checkout in development) never reads them."""
        from . import __version__

        st = Path(__file__).stat()
        return (_ParseCache.VERSION, __version__, st.st_mtime_ns, st.st_size)

    def __init__(self, root: Path, set_name: str) -> None:
        import hashlib

        base = Path(os.environ.get("PLANNER_CACHE") or Path.home() / ".cache" / "planner")
        key = hashlib.sha256(f"{root}\0{set_name}".encode()).hexdigest()[:24]
        self.path = base / "recipes" / f"{set_name}-{key}.pickle"
        self.entries: dict[str, tuple] = {}
        self.dirty = False
        try:
            import pickle

            with open(self.path, "rb") as f:
                data = pickle.load(f)
            if data.get("version") == self._schema():
                self.entries = data["entries"]
        except Exception:  # a missing, stale or unreadable cache is only a miss
            self.entries = {}

    @staticmethod
    def signature(path: Path) -> Optional[tuple[int, int, int, int]]:
        try:
            st = os.stat(path)
        except OSError:
            return None  # load_recipe says what is wrong with it
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def get(self, path: Path, sig: Optional[tuple]) -> Optional[Recipe]:
        hit = self.entries.get(str(path))
        if sig is not None and hit is not None and hit[0] == sig:
            return hit[1]
        return None

    def put(self, path: Path, sig: Optional[tuple], recipe: Recipe) -> None:
        if sig is not None:
            self.entries[str(path)] = (sig, recipe)
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        import pickle

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            with open(tmp, "wb") as f:
                pickle.dump({"version": self._schema(), "entries": self.entries}, f,
                            protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only home: planning still works, only slower


class _LazyText(str):
    """A recipe's text, read only if an error message needs its line numbers."""

    def __new__(cls, path: Path) -> "_LazyText":
        obj = super().__new__(cls, "")
        obj._path = path
        return obj

    def splitlines(self, keepends: bool = False) -> list[str]:
        return self._path.read_text().splitlines(keepends)


def _check_references(rs: RecipeSet) -> None:
    if rs.config.target not in rs.recipes:
        raise RecipeError(f"target {rs.config.target!r} is not a recipe of this set",
                          where=f"recipes/{rs.name}/set.toml: target")
    br = rs.config.build_root
    if br is not None:
        if br not in rs.recipes:
            raise RecipeError(f"build-root names {br!r}, which is not a recipe of this set",
                              where=f"recipes/{rs.name}/set.toml: build-root")
        b = rs.recipes[br]
        if b.build.builder != "debian-rootfs" or b.axes != ["host"]:
            raise RecipeError(f"build-root {br!r} must be a debian-rootfs recipe with axes = [\"host\"] "
                              "(one root filesystem per build platform)", where=f"recipes/{rs.name}/set.toml: build-root")
    def where(r: Recipe, key: str) -> str:  # only on an error: the text is read then
        return _where(rs.root / r.file, rs.root, _LazyText(rs.root / r.file), key)

    for r in rs.recipes.values():
        if r.build.rootfs and r.build.rootfs not in rs.recipes:
            raise RecipeError(f"rootfs names {r.build.rootfs!r}, which is not a recipe of set {rs.name!r}",
                              where=where(r, "rootfs"))
        for field in ("deps", "toolchains", "requires"):
            for dep in getattr(r, field):
                if dep not in rs.recipes:
                    raise RecipeError(f"{field} names {dep!r}, which is not a recipe of set {rs.name!r}",
                                      where=where(r, field))
        if r.image:
            for dep in ([r.image.base] if r.image.base else []) + [d for g in r.image.layers for d in g]:
                if dep not in rs.recipes:
                    raise RecipeError(f"image names {dep!r}, which is not a recipe of set {rs.name!r}",
                                      where=where(r, "layers"))
    cycle = find_cycle({n: r.build_inputs() + r.requires for n, r in rs.recipes.items()})
    if cycle:
        first = rs.recipes[cycle[0]]
        text = (rs.root / first.file).read_text()
        raise RecipeError("dependency cycle: " + " -> ".join(cycle),
                          where=_where(rs.root / first.file, rs.root, text, "deps"))


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in a name → dependencies map, as a closed path, or None. Iterative DFS."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = {n: WHITE for n in edges}
    edges = {n: sorted(cs) for n, cs in edges.items()}  # once, not at every visit
    for start in sorted(edges):
        if color[start] != WHITE:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                color[node] = GREY
                path.append(node)
            children = edges.get(node, ())
            if i < len(children):
                stack.append((node, i + 1))
                child = children[i]
                if color.get(child, BLACK) == GREY:
                    return path[path.index(child):] + [child]
                if color.get(child) == WHITE:
                    stack.append((child, 0))
            else:
                color[node] = BLACK
                path.pop()
    return None
