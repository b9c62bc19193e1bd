"""What a structured recipe or set must satisfy beyond its types: names, versions, paths inside the
project, URLs, CUDA variants, references between recipes and the absence of cycles."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..buildenv import ENV_NAME
from ..errors import RecipeError
from ..fetch.git import reads_outside
from .model import AXES, BUILDERS, INPUT_NAME, PATCH_LABEL, PLATFORMS, Recipe, RecipeSet, SetConfig, Source, parse_duration, parse_size
from .parse import DEFAULT_RESOURCES, _LazyText, _relative, _where
from .tables import check_tables


_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_~-]*\Z")


def _validate_recipe(r: Recipe, path: Path | str, root: Path, text: str) -> None:
    def err(key: str, msg: str) -> RecipeError:
        return RecipeError(msg, where=_where(path, root, text, key))

    if not _VERSION.match(r.version) or len(r.version) > 128:
        raise err("version", f"invalid version {r.version[:80]!r}: letters, digits, '.', '+', '_', '~', '-' "
                             "(at most 128: it is part of a store path's name)")
    if not _NAME.match(r.name) or len(r.name) > 128:
        raise err("name", f"invalid name {r.name[:80]!r}: lowercase letters, digits, '.', '_', '-', starting with "
                          "a letter or digit (at most 128: it is part of a store path's name)")
    stem = os.path.splitext(os.path.basename(path))[0]  # Path.stem, without making a Path
    if stem != r.name:
        raise err("name", f"recipe name {r.name!r} must match its file name {stem!r}")
    if r.build.builder not in BUILDERS:
        from ..suggest import did_you_mean

        raise err("builder", f"unknown builder {r.build.builder[:80]!r}{did_you_mean(r.build.builder, BUILDERS)}")
    for p in r.platforms:
        if p not in PLATFORMS:
            raise err("platforms", unknown_platform(p))
    for a in r.axes:
        if a not in AXES:
            from ..suggest import did_you_mean

            raise err("axes", f"unknown variant axis {a[:80]!r}{did_you_mean(a, AXES)}")
    if r.resolve_as_of is not None:
        from ..errors import FetchError
        from ..fetch.simple_index import parse_as_of

        try:
            parse_as_of(r.resolve_as_of)
        except FetchError as exc:
            raise err("resolve-as-of", exc.message) from None
    if r.build.builder == "shell" and not r.build.script:
        raise err("script", "the shell builder needs build.script")
    check_tables(r, err)
    if r.build.builder == "oci-image" and r.image is None:
        raise err("builder", "the oci-image builder needs an [image] table")
    if r.build.builder == "source-tree":
        place = r.build.settings.get("path")
        if not isinstance(place, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*)*",
                                                          place) or ".." in place.split("/"):
            raise err("settings", "the source-tree builder needs settings.path, a relative path inside the image "
                                  "such as root/slime")
    _validate_resources(r, err)
    if r.inputs or r.source is not None:
        for name, src in r.all_sources().items():
            _validate_source(name, src, _source_err(r, name, path, root, text), root)
    if r.patches:
        _validate_patches(r, err, root)
    try:
        if r.build.settings:
            from ..hashing import canonical_json

            canonical_json(r.build.settings)
    except TypeError as exc:
        raise err("settings", f"settings must be JSON without floats ({exc}); write numbers as integers or strings") from None
    if r.build.script is not None and "\0" in r.build.script:
        raise err("script", "the build script holds a NUL byte (\\u0000), which no shell argument can")
    if r.build.env:  # (most recipes declare none: nothing to name, nothing to clash)
        for k, v in r.build.env.items():
            if not ENV_NAME.fullmatch(k):
                raise err("env", f"invalid environment variable name {k[:80]!r}")
            # A NUL would end the value where the sandbox's arguments are written, and what
            # follows would be arguments of the recipe's own (`--bind / /x`).
            if not isinstance(v, str) or "\0" in v:
                raise err(k, f"[build] env {k}: the value must be a string without a NUL byte (\\u0000)")
        from ..buildenv import clashes

        clash = clashes(r.build.builder, r.build.settings, r.build.env)
        if clash:
            raise err(clash[0], f"[build] env {clash[0]}: the planner sets this variable for every "
                                f"{r.build.builder} build, so a declared value would be overwritten; remove it")


def unknown_platform(p: str) -> str:
    """The platforms share most of their letters: a suggestion must be closer than most."""
    from ..suggest import did_you_mean

    return f"unknown platform {p[:80]!r}{did_you_mean(p, PLATFORMS, cutoff=0.85)}"


def _validate_patches(r: Recipe, err, root: Path) -> None:
    for i, p in enumerate(r.patches):
        if bool(p.file) == bool(p.url):
            raise err("patches", f"patch {i + 1}: give exactly one of file or url")
        if p.url and not p.sha256:
            raise err("patches", f"patch {p.label}: a fetched patch needs sha256")
        if p.url:
            _check_http_url(p.url, err, f"patch {p.label}")
        if p.name is not None and (not p.name or "/" in p.name or "\0" in p.name or p.name in (".", "..")):
            raise err("patches", f"patch name {p.name!r} must be a plain file name")
        if not PATCH_LABEL.fullmatch(p.label):
            raise err("patches", f"patch {p.label[:80]!r}: its name must be letters, digits, '.', '_', '+', '~', "
                                 "'=', ',', '-' (give the patch a `name`)")
        if p.file:
            _check_inside(root, p.file, err, "file")
            if not (root / p.file).is_file():
                # Said here, with what was meant, rather than as "not in the lock" by plan and
                # "No such file" by lock (a loop of hints that named neither file nor line).
                from ..suggest import did_you_mean

                folder = (root / p.file).parent
                near = [str((folder / q.name).relative_to(root)) for q in folder.glob("*") if q.is_file()] \
                    if folder.is_dir() else []
                raise err("file", f"patch {p.file} does not exist" + did_you_mean(p.file, near, limit=6))


def _validate_resources(r: Recipe, err) -> None:
    """The estimate and [resources]: sizes, durations and counts within their bounds."""
    checks = [("estimate", r.estimate)]
    plain = r.resources is DEFAULT_RESOURCES  # a plain recipe's: the defaults, within their bounds
    if not plain:
        checks += [("memory", r.resources.memory), ("tmp", r.resources.tmp), ("timeout", r.resources.timeout)]
    for key, value in checks:
        if value is None:
            continue
        try:
            amount = parse_duration(value) if key in ("estimate", "timeout") else parse_size(value)
        except ValueError as exc:
            raise err(key, str(exc)) from None
        if key in ("memory", "tmp") and not 1 << 20 <= amount <= 1 << 50:
            raise err(key, f"{key} must be from 1MiB to 1024TiB, not {value!r}")
        if key == "timeout" and not 0 < amount <= 1e7:
            raise err(key, f"timeout must be from 1s to 10000000s, not {value!r}")
    if plain:
        return
    if isinstance(r.resources.processes, bool) or not 1 <= r.resources.processes <= 1 << 22:
        raise err("processes", f"processes must be a whole number from 1 to {1 << 22}, not {r.resources.processes!r}")
    if isinstance(r.resources.cores, bool) or not 1 <= r.resources.cores <= 1024:
        raise err("cores", f"cores must be a whole number from 1 to 1024, not {r.resources.cores!r}")


def _check_inside(root: Path, rel: str, err, key: str) -> None:
    if "\0" in rel:
        raise err(key, f"path {rel!r} contains a NUL byte")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise err(key, f"path {rel!r} must be relative and inside the project")
    real = (root / p).resolve()
    if not real.is_relative_to(root.resolve()):
        raise err(key, f"path {rel!r} resolves outside the project")


def _source_err(r: Recipe, name: str, path: Path | str, root: Path, text: str):
    """The error maker for one source: a field's place is `inputs.NAME.FIELD` (or `source.FIELD`)
    at the line of that key in its own table, not the first line writing a key of that name (a
    [source] and an [inputs.x] both have `path`, `url`, `sha256`)."""
    base = ("source",) if name == "source" and r.source is not None else ("inputs", name)

    def err(field: str, msg: str) -> RecipeError:
        from .shape import where_at

        return RecipeError(msg, where=where_at(_relative(path, root), text, base if field == name else (*base, field)))

    return err


def _validate_source(name: str, s: Source, err, root: Path) -> None:
    if not INPUT_NAME.fullmatch(name):
        raise err(name, f"input name {name[:80]!r} must be letters, digits, '.', '_', '+', '-' "
                        "(starting with a letter, digit or '_'; a submodule's: source/its/path)")
    need = {"url": ("url",), "git": ("url", "rev"), "pypi": ("name", "version"), "path": ("path",),
            "apt": () if s.names is not None else ("name",), "image": ("url",)}[s.kind]
    if s.names is not None:
        _check_apt_names(name, s, err)
    if s.platforms is not None:
        _check_input_platforms(name, s, err)
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
    if s.paths is not None:
        _check_paths(s, err, f"input {name!r}")


_DEB_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
_PLATFORM = re.compile(r"linux/[a-z0-9]+(/v[0-9]+)?")


def _check_input_platforms(name: str, s: Source, err) -> None:
    if not s.platform_dependent():
        raise err("platforms", f"input {name!r}: platforms is for inputs whose bytes differ by platform "
                               "(per-platform = true, apt, image)")
    if not s.platforms:
        raise err("platforms", f"input {name!r}: platforms is empty; list the platforms the input exists on")
    for plat in s.platforms:
        if not isinstance(plat, str) or not _PLATFORM.fullmatch(plat):
            raise err("platforms", f"input {name!r}: {str(plat)[:60]!r} is not a platform such as linux/arm64")


def _check_apt_names(name: str, s: Source, err) -> None:
    if s.kind != "apt":
        raise err("names", f"input {name!r}: names (a package name per platform) is for apt inputs")
    if s.name is not None:
        raise err("names", f"input {name!r}: give either name or names (per platform), not both")
    if not s.names:
        raise err("names", f"input {name!r}: names is empty; list at least one platform = package")
    for plat, pkg in s.names.items():
        if not _PLATFORM.fullmatch(plat):
            raise err("names", f"input {name!r}: names key {plat[:60]!r} is not a platform such as linux/arm64")
        if not _DEB_PACKAGE.fullmatch(pkg):
            raise err("names", f"input {name!r}: names.{plat} = {pkg[:60]!r} is not a Debian package name")


_REMOTE_GIT = re.compile(r"^(https?|git|ssh|git\+ssh)://[^/\s]+", re.IGNORECASE)
_SCP_GIT = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!/)")


def _check_http_url(url: str, err, what: str) -> None:
    """Downloads come from http(s) only: a `file://` URL would copy a host file (say
    /etc/shadow) into the store. Local files reach a build as `path` inputs or through a mirror."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https") or not url[len(scheme):].startswith("://") or "\0" in url:
        raise err("url", f"{what}: only http:// and https:// URLs are fetched, not {url[:60]!r} "
                         f"(serve local files through a mirror, or use a path input)")
    _refuse_credentials(url, err, what, https=True)


def _refuse_credentials(url: str, err, what: str, *, https: bool) -> None:
    """A user or password in a recipe's URL would be copied into the lockfile (origin, url)
    and every attestation: a secret committed twice. A mirror (planner.toml) holds them."""
    authority = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    userinfo = authority.rpartition("@")[0]
    if userinfo and (":" in userinfo or https):
        raise err("url", f"{what}: credentials in a URL ({userinfo[:1]}…@) would be written to the lockfile "
                         "too: give the URL without them and a mirror that holds them (planner.toml [mirrors])")


def _check_git_url(root: Path, url: str, err, what: str) -> None:
    """A git source is remote (https, git, ssh, user@host:path) or a repository inside the
    project: a local path outside it would copy whatever repository the machine holds."""
    if _REMOTE_GIT.match(url) or _SCP_GIT.match(url):
        # (ssh's user, git@, is no secret: only a password, or an https user, which is a token)
        _refuse_credentials(url, err, what, https=url.lower().startswith(("http://", "https://")))
        return
    is_file = url.lower().startswith("file://")
    local = url[len("file://"):] if is_file else url
    # git ignores a file:// URL's host (file://x/tmp/r reads /tmp/r), and %-escapes are decoded
    if is_file and (not local.startswith("/") or "%" in local):
        raise err("url", f"{what}: a file:// git URL names no host and no %-escapes: "
                         f"write file:///path or a path relative to the project, not {url[:60]!r}")
    # git reads `word:rest` before any slash as a host (scp form) or a transport (`ext::`,
    # `fd::`): never a local path, and not one of the remotes above either.
    if "://" in local or not local or ":" in local.split("/", 1)[0]:
        raise err("url", f"{what}: git URL {url[:60]!r} is neither remote (https, git, ssh) nor a local path")
    real = (root / local).resolve() if not local.startswith("/") else Path(local).resolve()
    inside = "\0" not in local and real.is_relative_to(root.resolve())
    outside = reads_outside(real, root.resolve()) if inside else real
    if outside is not None:
        raise err("url", f"{what}: local git repository {url[:60]!r} is outside the project"
                         f"{f' (git reads {str(outside)[:80]})' if inside else ''} "
                         f"(serve it through a mirror, or over git:// or https)")


def _check_paths(s, err, what: str) -> None:
    """`paths` picks files and folders of a git tree, each once, each inside it."""
    if s.kind != "git":
        raise err("paths", f"{what}: paths is for git inputs")
    if s.subdir is not None:
        raise err("paths", f"{what}: give subdir or paths, not both")
    if not s.paths:
        raise err("paths", f"{what}: paths must list at least one file or folder")
    for p in s.paths:
        parts = p.split("/")
        if ("\0" in p or "\\" in p
                or any(part in ("", ".", "..") for part in parts) or parts[0] == ".git"):
            raise err("paths", f"{what}: path {p!r} must be a file or folder inside the tree, written "
                               "a/b (no leading, trailing or double '/', no '.' or '..', not .git)")
    if len(set(s.paths)) != len(s.paths) or any(
            q.startswith(p + "/") for p in s.paths for q in s.paths):
        raise err("paths", f"{what}: paths must not repeat a file or folder or name one inside another")


def _check_subdir(subdir: str, err, what: str) -> None:
    """`subdir` picks a folder of the fetched tree; absolute or climbing out, it once made
    `planner lock` move that host folder into the store."""
    parts = subdir.split("/")
    if (not subdir or subdir.startswith("/") or ".." in parts or "\0" in subdir or "\\" in subdir
            or all(p in ("", ".") for p in parts)):
        raise err("subdir", f"{what}: subdir {subdir!r} must be a relative folder inside the source, without '..'")



# The image-layout ref.name component grammar (annotations.md), as planner/oci/layout.py's
# _TAG_RE: the variant is a tag (`sm100a`, `sm100a-linux-arm64`) that skopeo and umoci must read.
_VARIANT = re.compile(r"(?=.{1,64}\Z)[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


def _check_cuda(config: SetConfig, err) -> None:
    from ..builders.cuda_archs import normalise_archs

    def check_list(name: str, value: object) -> None:
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            raise err(name, f"cuda variant {name!r} must be a non-empty array of arch names")
        try:
            normalise_archs(value)
        except ValueError as exc:
            raise err(name, f"cuda variant {name!r}: {exc}") from None

    for name, value in config.cuda.items():
        if not _VARIANT.fullmatch(name):  # an image tag and a node id part: `sm100a-linux-arm64`
            raise err(name, f"cuda variant name {name[:80]!r} must be letters, digits, '_', '.', '-' (one at a time, "
                            "between letters or digits), at most 64")
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


def _check_references(rs: RecipeSet) -> None:
    if rs.config.target not in rs.recipes:
        raise RecipeError(f"target {rs.config.target!r} is not a recipe of this set"
                          + (_did_you_mean_recipe(rs, rs.config.target) if rs.recipes else " (it has no recipes: "
                             f"recipes/{rs.name}/*.toml)"), where=_set_toml_where(rs, "target"))
    br = rs.config.root_recipe
    if br is not None:
        if br not in rs.recipes:
            raise RecipeError(f"build-root names {br!r}, which is not a recipe of this set",
                              where=f"recipes/{rs.name}/set.toml: build-root")
        b = rs.recipes[br]
        if b.build.builder != "debian-rootfs" or b.axes != ["host"]:
            raise RecipeError(f"build-root {br!r} must be a debian-rootfs recipe with axes = [\"host\"] "
                              "(one root filesystem per build platform)", where=f"recipes/{rs.name}/set.toml: build-root")
    names = rs.recipes
    for r in names.values():
        # Most recipes name other recipes only (no inputs, no image): those names looked up
        # here; any other recipe, or a name not found, goes to the check that says what is wrong.
        if r.inputs or r.source is not None or r.image is not None or (r.build.rootfs and r.build.rootfs not in names):
            check_recipe_references(rs, r, names)
            continue
        for field in (r.deps, r.toolchains, r.requires):
            for dep in field:
                if dep not in names:
                    check_recipe_references(rs, r, names)
    edges = {n: r.build_inputs() + r.requires for n, r in rs.recipes.items()}
    cycle = None if _acyclic(edges) else find_cycle(edges)
    if cycle:
        first = rs.recipes[cycle[0]]
        from .shape import cycle_where

        raise RecipeError("dependency cycle: " + " -> ".join(cycle), where=cycle_where(rs, first, cycle[1]))


def check_recipe_references(rs: RecipeSet, r: Recipe, names) -> None:
    """What one recipe names must exist among `names` (the set's recipe names), and its inputs'
    per-platform names must be the set's platforms (a re-plan after an edit asks it of the
    edited recipes alone)."""
    def where(key: str) -> str:  # only on an error: the text is read then
        return _where(rs.root / r.file, rs.root, _LazyText(rs.root / r.file), key)

    for iname, src in r.all_sources().items():
        for key, given in (("platforms", src.platforms), ("names", src.names)):
            if given is None:
                continue
            other = sorted(set(given) - set(rs.config.platforms))
            if other:
                what = f"platforms lists {other[0]}, which" if key == "platforms" else f"names.{other[0]}"
                raise RecipeError(f"input {iname!r}: {what} is not one of the set's platforms "
                                  f"({', '.join(rs.config.platforms)})", where=where(key))
            if r.platforms and not set(given) & set(r.platforms):
                raise RecipeError(f"input {iname!r}: {key} covers none of the platforms {r.name} is built for "
                                  f"({', '.join(r.platforms)})", where=where(key))
    if r.build.rootfs and r.build.rootfs not in names:
        raise RecipeError(f"rootfs names {r.build.rootfs!r}, which is not a recipe of set {rs.name!r}",
                          where=where("rootfs"))
    for field in ("deps", "toolchains", "requires"):
        for dep in getattr(r, field):
            if dep not in names:
                raise RecipeError(f"{field} names {dep!r}, which is not a recipe of set {rs.name!r}"
                                  + _did_you_mean_recipe(rs, dep), where=where(field))
    if r.image:
        for dep in ([r.image.base] if r.image.base else []) + [d for g in r.image.layers for d in g]:
            if dep not in names:
                raise RecipeError(f"image names {dep!r}, which is not a recipe of set {rs.name!r}"
                                  + _did_you_mean_recipe(rs, dep), where=where("layers"))


def _did_you_mean_recipe(rs: RecipeSet, name: str) -> str:
    """' (did you mean …? one of: …)', or where a file of that name lies that is not read: a
    subfolder (a set's recipes are its folder's *.toml, not below it)."""
    from ..suggest import did_you_mean

    folder = rs.root / "recipes" / rs.name
    if isinstance(name, str) and "/" not in name and name not in (".", ".."):
        try:
            import glob

            below = next((p for p in sorted(folder.glob(f"*/**/{glob.escape(name)}.toml"))), None)
        except (OSError, ValueError):
            below = None
        if below is not None:
            return (f" ({below.relative_to(rs.root)} is in a subfolder: a set's recipes are the *.toml files "
                    f"of recipes/{rs.name}/ itself)")
    return did_you_mean(str(name), rs.recipes)


def _set_toml_where(rs: RecipeSet, key: str) -> str:
    path = rs.root / "recipes" / rs.name / "set.toml"
    try:
        return _where(path, rs.root, path.read_text(), key)
    except (OSError, UnicodeDecodeError):
        return f"recipes/{rs.name}/set.toml: {key}"


def _acyclic(edges: dict[str, list[str]]) -> bool:
    """Whether `edges` (name -> names; names without an entry are leaves) has no cycle: Kahn's
    count of what points at each name, half the cost of `find_cycle`'s walk, which is asked
    only when there is a cycle to name."""
    count = dict.fromkeys(edges, 0)
    for children in edges.values():
        for c in children:
            if c in count:
                count[c] += 1
    ready = [n for n, k in count.items() if k == 0]
    done = 0
    while ready:
        done += 1
        for c in edges[ready.pop()]:
            k = count.get(c)
            if k is not None:
                count[c] = k - 1
                if k == 1:
                    ready.append(c)
    return done == len(edges)


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
