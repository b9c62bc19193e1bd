"""Loading a recipe set: set.toml, every recipe (through a stat-keyed parse cache), aliases, and the
checks across recipes."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from stat import S_ISREG
from typing import Optional

import attrs

from ..errors import RecipeError
from ..gcpause import gc_paused
from .model import PLATFORMS, Recipe, RecipeSet, SetConfig
from .parse import _kebab_to_snake, _read_toml, _relative, _structure, _where, plain_config, plain_recipe
from .validate import _check_cuda, _check_references, _validate_recipe, unknown_platform


def load_recipe(path: Path | str, root: Path, where: Optional[str] = None, st: Optional[os.stat_result] = None
                ) -> Recipe:
    """One recipe file, parsed and validated; `st`: its lstat, if the caller made one."""
    return _load_recipe(path, root, where, st)[0]


def _load_recipe(path: Path | str, root: Path, where: Optional[str], st: Optional[os.stat_result]
                 ) -> tuple[Recipe, Optional[dict]]:
    """The recipe, and its TOML table as read when it has the plain shape (`plain_recipe`
    makes the recipe again from it: what the parse cache keeps of a plain recipe)."""
    data, text = _read_toml(path, root, where, st)
    where = where or _relative(path, root)
    if isinstance(data, dict) and "file" in data:
        # (the model's `file` is where the recipe was read from: the planner's to set, not a key)
        raise RecipeError("unknown key: file (a patch's file goes in [[patches]])",
                          where=_where(path, root, text, "file"))
    recipe = plain_recipe(data, where) if isinstance(data, dict) else None
    plain = data if recipe is not None else None
    if recipe is None:
        data = _kebab_to_snake(data)
        if not isinstance(data, dict):
            raise RecipeError("not a table", where=where)
        data["file"] = where  # where it was read from, whatever the file says
        recipe = _structure(Recipe, data, path, root, text)
    _validate_recipe(recipe, path, root, text)
    return recipe, plain



def load_config(root: Path, name: str, *, profile: Optional[str] = None) -> tuple[SetConfig, str]:
    """set.toml of set `name` (root resolved), checked; and its text, for error locations."""
    folder = root / "recipes" / name
    if not folder.is_dir():
        raise RecipeError(f"no recipe set {name!r} (expected folder {folder.relative_to(root)}/)")
    cfg_path = folder / "set.toml"
    if not cfg_path.is_file():
        raise RecipeError("missing set.toml (target, source-date-epoch, variants)", where=str(cfg_path.relative_to(root)))
    data, text = _read_toml(cfg_path, root)
    config = plain_config(data) if type(data) is dict else None
    if config is None:
        config = _structure(SetConfig, _kebab_to_snake(data), cfg_path, root, text)
    if profile is not None:
        config = attrs.evolve(config, profile=profile)
    for p in config.platforms:
        if p not in PLATFORMS:
            raise RecipeError(unknown_platform(p),
                              where=_where(cfg_path, root, text, "platforms"))
    _check_cuda(config, lambda key, msg: RecipeError(msg, where=_where(cfg_path, root, text, key)))
    if config.resolve_as_of is not None:
        from ..errors import FetchError
        from ..fetch.simple_index import parse_as_of

        try:
            parse_as_of(config.resolve_as_of)
        except FetchError as exc:
            raise RecipeError(exc.message, where=_where(cfg_path, root, text, "resolve-as-of")) from None
    return config, text


# The last second of the year 9999: image timestamps are RFC 3339 dates, which end there.
MAX_EPOCH = 253402300799


def _check_config_values(config: SetConfig, err) -> None:
    """What set.toml's types allow but no build can use: no platform to build for (a plan of
    no nodes that "succeeds"), a SOURCE_DATE_EPOCH before 1970 or after the year 9999."""
    if not config.platforms:
        raise err("platforms", f"platforms lists no platform: name at least one of {', '.join(PLATFORMS)} "
                               "(or leave the key out for all of them)")
    epoch = config.source_date_epoch
    if not 0 <= epoch <= MAX_EPOCH:
        raise err("source-date-epoch", f"source-date-epoch must be a non-negative whole number of seconds since "
                                       f"1970-01-01 (at most {MAX_EPOCH}, the end of the year 9999), not {epoch}")


def recipe_file_names(folder: str) -> list[str]:
    """The set's recipe files, sorted: `*.toml` but set.toml and hidden files, which editors
    leave beside the file being edited (Emacs' `.#x.toml` lock link, vim's swap and backup
    names), and which no user means as a recipe."""
    return sorted(e.name for e in os.scandir(folder)
                  if e.name.endswith(".toml") and e.name != "set.toml" and not e.name.startswith("."))


@gc_paused()
def load_set(root: Path, name: str, *, profile: Optional[str] = None) -> RecipeSet:
    """The recipe set; `profile` chooses another of set.toml's [profiles] than its own line."""
    root = root.resolve()
    folder = root / "recipes" / name
    cfg_path = folder / "set.toml"
    config, text = load_config(root, name, profile=profile)

    def cfg_err(key, msg):
        return RecipeError(msg, where=_where(cfg_path, root, text, key))

    _check_config_values(config, cfg_err)
    recipes: dict[str, Recipe] = {}
    sigs: dict[str, tuple] = {}
    cache = _ParseCache(root, name)
    # Sorting names, not Path objects: pathlib's comparison is slow for 100k recipes.
    folder_s = os.fspath(folder)
    fnames = recipe_file_names(folder_s)
    helper = _Helper.start(fnames, folder_s, root, name) if not cache.entries else None
    mine = fnames[:len(fnames) - len(helper.fnames)] if helper is not None else fnames

    def load_one(fname: str) -> None:
        path = f"{folder_s}/{fname}"  # a string: pathlib's joins and str() cost 100k recipes
        # The signature before reading: a file edited meanwhile is parsed again next time. A
        # regular file's lstat is its stat, and the read reuses it.
        try:
            st: Optional[os.stat_result] = os.lstat(path)
        except OSError:
            st = None
        if st is not None and S_ISREG(st.st_mode):
            sig: Optional[tuple] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        else:
            sig, st = cache.signature(path), None
        if sig is not None:
            sigs[path] = sig
        where = f"recipes/{name}/{fname}"
        r = cache.get(path, sig, where)
        if r is None:
            r, plain = _load_recipe(path, root, where, st)
            cache.put(path, sig, plain if plain is not None else r)
        recipes[r.name] = r

    for fname in mine:
        load_one(fname)
    if helper is not None:
        # After every file before them, in order: the first error found is still the first
        # file's in sorted order, as when one process reads them all.
        for fname, sig, table in helper.results():
            if table is None:
                load_one(fname)
                continue
            path = f"{folder_s}/{fname}"
            sigs[path] = sig
            r = plain_recipe(table, f"recipes/{name}/{fname}")
            cache.put(path, sig, table)
            recipes[r.name] = r
    cache.save()
    if config.aliases:
        recipes = _apply_aliases(config.aliases, recipes, cfg_err)
    if config.profile is not None or config.profiles:
        recipes = _apply_profile(config, recipes, cfg_err)
    rs = RecipeSet(name=name, root=root, config=config, recipes=recipes, signatures=sigs)
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



# A cold plan of this many recipes or more reads the second half of them in a forked child
# on a second core: reading, parsing and validating is most of a cold plan's first half, and a
# validated plain table (`parse.plain_recipe`) costs the parent a fifth of that to take back.
PARALLEL_FROM = 2000


class _Helper:
    """A forked child that reads, parses and validates the last half of a set's recipe files
    and sends back, for each, its signature and its plain TOML table, or nothing: a recipe that
    is not plain, a file it could not read or that is wrong; the parent loads those itself, as
    it loads every file without a helper, and so says the same of them."""

    def __init__(self, fnames: list[str], pid: int, fd: int) -> None:
        self.fnames, self.pid, self.fd = fnames, pid, fd

    @classmethod
    def start(cls, fnames: list[str], folder_s: str, root: Path, set_name: str) -> Optional["_Helper"]:
        if len(fnames) < PARALLEL_FROM or not hasattr(os, "fork"):
            return None
        try:
            if len(os.sched_getaffinity(0)) < 2:
                return None
            read, write = os.pipe()
        except (AttributeError, OSError):
            return None
        theirs = fnames[len(fnames) // 2:]
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            return None
        if pid == 0:  # the child: never returns, never runs the parent's exit handlers
            code = 1
            try:
                os.close(read)
                _parse_for_parent(theirs, folder_s, root, set_name, write)
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        return cls(theirs, pid, read)

    def results(self) -> list[tuple[str, Optional[tuple], Optional[dict]]]:
        """(file name, signature, table or None) for each of the helper's files, in order."""
        import marshal

        chunks = []
        with os.fdopen(self.fd, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        _, status = os.waitpid(self.pid, 0)
        got: list = []
        if os.waitstatus_to_exitcode(status) == 0:
            try:
                got = marshal.loads(b"".join(chunks))
            except (EOFError, ValueError, TypeError):
                got = []
        if len(got) != len(self.fnames):  # the child failed: every file is the parent's again
            return [(f, None, None) for f in self.fnames]
        return [(f, sig, table) for f, (sig, table) in zip(self.fnames, got)]


def _parse_for_parent(fnames: list[str], folder_s: str, root: Path, set_name: str, fd: int) -> None:
    import marshal

    out: list[tuple[Optional[tuple], Optional[dict]]] = []
    for fname in fnames:
        path = f"{folder_s}/{fname}"
        try:
            st = os.lstat(path)
            if not S_ISREG(st.st_mode):
                out.append((None, None))
                continue
            where = f"recipes/{set_name}/{fname}"
            data, text = _read_toml(path, root, where, st)
            recipe = plain_recipe(data, where) if type(data) is dict else None
            if recipe is None:
                out.append((None, None))
                continue
            _validate_recipe(recipe, path, root, text)
        except Exception:  # said by the parent, which loads this file itself
            out.append((None, None))
            continue
        out.append(((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino), data))
    try:
        data = marshal.dumps(out)
    except ValueError:  # a table marshal cannot write (a TOML date in settings): all the parent's
        data = marshal.dumps([])
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class _ParseCache:
    """Parsed recipes keyed by their file's stat signature (like Python's __pycache__), so
    planning a large set does not re-parse and re-validate TOML that did not change.

    Lives under $PLANNER_CACHE (default ~/.cache/planner); a miss just parses the file.

    A plain recipe (`parse.plain_recipe`) is kept as its TOML table, which it is made again
    from: pickling a dict of strings costs a fifth of pickling the attrs objects (a cold plan
    of 10,000 recipes writes them all), and reading it back no more than unpickling those.
    The tables are marshalled (half of pickle's cost again, both ways), the other recipes
    pickled into one string of the same file.
    """

    VERSION = 6

    @staticmethod
    @functools.cache
    def _schema() -> tuple:
        """What the pickled classes look like, and what made them: the stat signatures of the
        recipes package's modules (model, parsing, validation, this one), so a planner with
        other recipe classes or rules (an upgrade, a checkout in development) never reads them.
        Taken once, when the cache is first read: a process whose modules were edited while it
        ran must save its (old) classes under the old signatures, not the new ones."""
        from .. import __version__

        sigs = []
        for st in (p.stat() for p in sorted(Path(__file__).parent.glob("*.py"))):
            sigs += [st.st_mtime_ns, st.st_size]
        return (_ParseCache.VERSION, __version__, *sigs)

    def __init__(self, root: Path, set_name: str) -> None:
        import blake3  # (what the plan's keys are hashed with: loaded anyway, unlike hashlib's OpenSSL)

        base = Path(os.environ.get("PLANNER_CACHE") or Path.home() / ".cache" / "planner")
        key = blake3.blake3(f"{root}\0{set_name}".encode()).hexdigest()[:24]
        self.path = base / "recipes" / f"{set_name}-{key}.pickle"
        self.entries: dict[str, tuple] = {}
        self.dirty = False
        try:
            import marshal

            with open(self.path, "rb") as f:
                data = marshal.loads(f.read())
            if data.get("version") == self._schema():
                entries = data["plain"]
                if data["objects"]:
                    import pickle

                    entries.update(pickle.loads(data["objects"]))
                self.entries = entries
        except Exception:  # a missing, stale or unreadable cache is only a miss
            self.entries = {}

    @staticmethod
    def signature(path: Path | str) -> Optional[tuple[int, int, int, int]]:
        try:
            st = os.stat(path)
        except OSError:
            return None  # load_recipe says what is wrong with it
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def get(self, path: Path | str, sig: Optional[tuple], where: str) -> Optional[Recipe]:
        """The cached recipe of the file at `path` (`where`: its name relative to the project,
        the recipe's `file`) if `sig` is still its signature."""
        hit = self.entries.get(str(path))
        if sig is None or hit is None or hit[0] != sig:
            return None
        if type(hit[1]) is dict:
            return plain_recipe(hit[1], where)
        return hit[1]

    def put(self, path: Path | str, sig: Optional[tuple], recipe: "Recipe | dict") -> None:
        """Cache a recipe, or the plain TOML table it was made from."""
        if sig is not None:
            self.entries[str(path)] = (sig, recipe)
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        import marshal

        def pickled(entries: dict) -> bytes:
            if not entries:  # (most sets have only plain recipes: no pickle to import)
                return b""
            import pickle

            return pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL)

        plain = {p: e for p, e in self.entries.items() if type(e[1]) is dict}
        objects = {p: e for p, e in self.entries.items() if type(e[1]) is not dict}
        try:
            try:
                data = marshal.dumps({"version": self._schema(), "plain": plain, "objects": pickled(objects)})
            except ValueError:  # a table marshal cannot write (a TOML date in settings): pickle it
                data = marshal.dumps({"version": self._schema(), "plain": {}, "objects": pickled(self.entries)})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only home: planning still works, only slower


def _apply_profile(config: SetConfig, recipes: dict[str, Recipe], err) -> dict[str, Recipe]:
    """The chosen profile's substitutions applied to every reference (see SetConfig.profile)."""
    for name, table in sorted(config.profiles.items()):
        for key, target in sorted(table.items()):
            if not isinstance(target, str) or (target and target not in recipes):
                raise err("profiles", f"profile {name!r}: {key!r} names {target!r}, which is not a recipe "
                          "of this set (\"\" leaves it out)")
    if config.profile is None:
        raise err("profiles", f"[profiles] given but no `profile = ...` chooses one of {sorted(config.profiles)}")
    if config.profile not in config.profiles:
        from ..suggest import did_you_mean

        raise err("profile", f"profile {config.profile!r} is not one of [profiles]"
                             f"{did_you_mean(config.profile, config.profiles)}")
    subst = config.profiles[config.profile]
    clash = sorted(set(subst) & set(config.aliases))
    if clash:
        raise err("profile", f"{clash[0]!r} is both an alias and in profile {config.profile!r}")
    left_out = {k for k, v in subst.items() if v == ""}

    def sub(names: list[str]) -> list[str]:
        return [subst.get(n, n) for n in names if n not in left_out]

    out: dict[str, Recipe] = {}
    for n, r in recipes.items():
        needs = [("deps", d) for d in r.deps] + [("toolchains", t) for t in r.toolchains]
        needs += [("rootfs", r.build.rootfs)] if r.build.rootfs else []
        needs += [("image base", r.image.base)] if r.image is not None and r.image.base else []
        for field, dep in needs:
            if dep in left_out:
                raise err("profile", f"profile {config.profile!r} leaves out {dep!r}, which recipe {n!r} "
                          f"builds with ({field}); only requires and image layers can lose a recipe")
        build = attrs.evolve(r.build, rootfs=subst.get(r.build.rootfs, r.build.rootfs)) if r.build.rootfs else r.build
        image = r.image
        if image is not None:
            layers = [g for g in (sub(g) for g in image.layers) if g]
            image = attrs.evolve(image, base=subst.get(image.base, image.base) if image.base else image.base,
                                 layers=layers)
        out[n] = attrs.evolve(r, deps=sub(r.deps), toolchains=sub(r.toolchains), requires=sub(r.requires),
                              build=build, image=image)
    return out
