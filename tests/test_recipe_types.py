"""A recipe or set.toml with a value of the wrong type, a cycle, an empty platform list or a bad
epoch: one line (through the CLI, as a user meets it) naming the file, the line of the key at
fault, its full key path (`inputs.x.version`, `deps[0]`, `patches[0].file`), what is wanted in
the user's words (never "Optional") and what was given (never "nothing" when something was).

What users met before: `build.script: expected Optional, not a list`, `patches.file: expected
Optional, not nothing`, `deps: expected a list, not a list '[1]'`, `a.toml:2: inputs.version`
(the recipe's own version line, the input's name dropped), `inputs: unknown error ('str' object
has no attribute 'keys')`, a `requires` cycle reported as `deps` without a line, and
`platforms = []` or `source-date-epoch = -1` accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.support import assert_one_failure
from tests.support.project import Project

HEAD = 'name = "a"\nversion = "1.0"\n'
BUILD = '[build]\nbuilder = "shell"\nscript = "cp f $out/"\n'
PREFIX = "planner: error: "


def _refused(tmp_path: Path, recipe: str, set_toml: str | None = None, cmd: str = "plan", times: int = 1) -> str:
    """The one error line `planner <cmd> t` gives for recipes/t/a.toml = `recipe` (and
    set.toml, if given), the same each of `times` runs (parsed, then from the parse cache)."""
    proj = Project.empty(tmp_path, target="a")
    proj.source_file("src/f", "x\n")
    proj.source_file("p.patch", "")
    if set_toml is not None:
        (proj.folder / "set.toml").write_text(set_toml)
    proj.write_raw("a", recipe)
    env = {"PLANNER_CACHE": str(tmp_path / "cache")}
    lines = {assert_one_failure(proj.cli(cmd, env=env)) for _ in range(times)}
    assert len(lines) == 1, lines
    line = lines.pop()
    assert line.startswith(PREFIX), line
    return line[len(PREFIX):]


@pytest.mark.parametrize("recipe, message", [
    (HEAD + '[build]\nbuilder = "shell"\nscript = ["cp f $out/"]\n',
     "recipes/t/a.toml:5: build.script: expected a string, not a list ['cp f $out/']"),
    (HEAD + '[source]\nkind = "path"\npath = 5\n' + BUILD,
     "recipes/t/a.toml:5: source.path: expected a string, not a whole number 5"),
    (HEAD + '[source]\nkind = "url"\nurl = "https://example.org/x.tgz"\nsha256 = 5\n' + BUILD,
     "recipes/t/a.toml:6: source.sha256: expected a string, not a whole number 5"),
    (HEAD + BUILD + "[resources]\ntimeout = 7200\n",
     "recipes/t/a.toml:7: resources.timeout: expected a string, not a whole number 7200"),
    (HEAD + BUILD + "[[patches]]\nfile = 3\n",
     "recipes/t/a.toml:7: patches[0].file: expected a string, not a whole number 3"),
    (HEAD + BUILD + '[[patches]]\nfile = "p.patch"\nstrip = "1"\n',
     "recipes/t/a.toml:8: patches[0].strip: expected a whole number, not a string '1'"),
    (HEAD + BUILD + '[[patches]]\nfile = "p.patch"\n[[patches]]\nfile = "p.patch"\nstrip = "1"\n',
     "recipes/t/a.toml:10: patches[1].strip: expected a whole number, not a string '1'"),
    (HEAD + "deps = [1]\n" + BUILD, "recipes/t/a.toml:3: deps[0]: expected a string, not a whole number 1"),
    (HEAD + '[source]\nkind = "path"\npath = "src"\n[inputs.x]\nkind = "pipy"\n' + BUILD,
     "recipes/t/a.toml:7: inputs.x.kind: 'pipy' is not one of 'url', 'git', 'pypi', 'path', 'apt', 'image' "
     "(did you mean 'pypi'?)"),
    (HEAD + BUILD + '[inputs.x]\nkind = "pypi"\nname = "six"\nversion = 1.16\n',
     "recipes/t/a.toml:9: inputs.x.version: expected a string, not a number 1.16"),
    # a script that writes `version = ` lines is no key: the input's own line is found
    (HEAD + '[build]\nbuilder = "shell"\nscript = """\nversion = 2\n"""\n[inputs.x]\nkind = "pypi"\n'
            'name = "six"\nversion = 1.16\n',
     "recipes/t/a.toml:11: inputs.x.version: expected a string, not a number 1.16"),
    (HEAD + BUILD + '[inputs]\nx = "six"\n', "recipes/t/a.toml:7: inputs.x: expected a table, not a string 'six'"),
    (HEAD + BUILD + '[inputs]\nx = { kind = "pypi", name = "six", version = 1.16 }\n',
     "recipes/t/a.toml:7: inputs.x.version: expected a string, not a number 1.16"),
    (HEAD + '[image]\nlayers = [["b", 1]]\n' + BUILD,
     "recipes/t/a.toml:4: image.layers[0][1]: expected a string, not a whole number 1"),
    (HEAD + BUILD + "[inputs.x]\nkind = 5\n",
     "recipes/t/a.toml:7: inputs.x.kind: expected one of 'url', 'git', 'pypi', 'path', 'apt', 'image', not a "
     "whole number 5"),
    (HEAD + BUILD + '[inputs.x]\nkind = "url"\nurl = "https://example.org/x.tgz"\ncolour = 1\n',
     "recipes/t/a.toml:9: inputs.x.colour: unknown key (one of: dist, kind, name, names, path, paths, per-platform, "
     "platform, platforms, python, rev, sha256, … (19 in all))"),
    ('name = "a"\nversion = 2024-01-01\n' + BUILD, "recipes/t/a.toml:2: version: expected a string, not a date "
                                                    "2024-01-01"),
])
def test_a_wrong_type_names_the_full_key_its_line_and_what_was_given(tmp_path: Path, recipe: str,
                                                                     message: str) -> None:
    assert _refused(tmp_path, recipe) == message


@pytest.mark.parametrize("recipe, message", [
    (HEAD + '[source]\nkind = "gti"\nurl = "https://example.org/x.git"\nrev = "v1"\n' + BUILD,
     "recipes/t/a.toml:4: source.kind: 'gti' is not one of 'url', 'git', 'pypi', 'path', 'apt', 'image' "
     "(did you mean 'git'?)"),
    (HEAD + 'axes = ["platfrom"]\n' + BUILD,
     "recipes/t/a.toml:3: axes: unknown variant axis 'platfrom' (did you mean 'platform'? one of: cuda, host, "
     "platform)"),
    (HEAD + 'platforms = ["linux/amd46"]\n' + BUILD,
     "recipes/t/a.toml:3: platforms: unknown platform 'linux/amd46' (did you mean 'linux/amd64'? one of: "
     "linux/amd64, linux/arm64)"),
])
def test_a_mistyped_source_kind_axis_or_platform_gets_did_you_mean(tmp_path: Path, recipe: str,
                                                                   message: str) -> None:
    assert _refused(tmp_path, recipe) == message


@pytest.mark.parametrize("key, message", [
    ('requires = ["a"]', "recipes/t/a.toml:3: requires: dependency cycle: a -> a"),
    ('toolchains = ["a"]', "recipes/t/a.toml:3: toolchains: dependency cycle: a -> a"),
    ('deps = ["a"]', "recipes/t/a.toml:3: deps: dependency cycle: a -> a"),
])
def test_a_cycle_names_the_field_that_makes_it_and_its_line(tmp_path: Path, key: str, message: str) -> None:
    assert _refused(tmp_path, HEAD + key + "\n" + BUILD, times=2) == message


def test_a_cycle_through_rootfs_names_build_rootfs(tmp_path: Path) -> None:
    recipe = HEAD + '[build]\nbuilder = "shell"\nscript = "true"\nrootfs = "a"\n'
    assert _refused(tmp_path, recipe, times=2) == "recipes/t/a.toml:6: build.rootfs: dependency cycle: a -> a"


SET = 'target = "a"\nsource-date-epoch = {epoch}\nbuild-root = "host"\nplatforms = {platforms}\n'


@pytest.mark.parametrize("epoch, platforms, message", [
    ("1", "[]", "recipes/t/set.toml:4: platforms: platforms lists no platform: name at least one of linux/amd64, "
                "linux/arm64 (or leave the key out for all of them)"),
    ("-1", '["linux/amd64"]', "recipes/t/set.toml:2: source-date-epoch: source-date-epoch must be a non-negative "
                              "whole number of seconds since 1970-01-01 (at most 253402300799, the end of the year "
                              "9999), not -1"),
    ("253402300800", '["linux/amd64"]', "recipes/t/set.toml:2: source-date-epoch: source-date-epoch must be a "
                                        "non-negative whole number of seconds since 1970-01-01 (at most "
                                        "253402300799, the end of the year 9999), not 253402300800"),
    ("1", "[1]", "recipes/t/set.toml:4: platforms[0]: expected a string, not a whole number 1"),
    ("1", '["linux/amd64"]\nprofile = "p"\n[profiles.p]\nx = 1',
     'recipes/t/set.toml:7: profiles.p.x: x = 1: the values of this table are strings (write x = "1")'),
])
def test_set_toml_refuses_what_no_build_can_use_at_its_line(tmp_path: Path, epoch: str, platforms: str,
                                                            message: str) -> None:
    """`platforms = []` made a plan of no nodes that `realise` "finished" with exit 0."""
    set_toml = SET.format(epoch=epoch, platforms=platforms)
    for cmd in ("lock", "plan", "realise"):
        assert _refused(tmp_path / cmd, HEAD + BUILD, set_toml, cmd=cmd) == message, cmd


def test_the_largest_epoch_allowed_still_loads(tmp_path: Path) -> None:
    proj = Project.empty(tmp_path, target="a", epoch=253402300799)
    proj.write_raw("a", HEAD + BUILD)
    run = proj.cli("lock", env={"PLANNER_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr


# -- the walk behind those lines, against cattrs and TOML as written -----------------------------

_VALUES = [1, -3, 1.5, True, "x", "pypi", "", [], ["a"], [1], [["a"]], {}, {"a": "b"}, {"a": 1}, {"kind": "url"},
           {"kind": "url", "url": "u"}, [{"file": "p"}], [{"strip": "1"}], {"x": {"kind": "pypi"}}, {"x": "six"},
           {"p": {"a": "b"}}, {"p": {"a": 1}}, {"v": ["sm_90"]}]
_TOP = {"recipe": ["name", "version", "description", "axes", "source", "inputs", "patches", "deps", "toolchains",
                   "requires", "resources", "estimate", "image", "platforms", "resolve-as-of", "colour", "build"],
        "set": ["target", "source-date-epoch", "platforms", "cuda", "resolve-as-of", "build-root", "aliases",
                "profile", "profiles", "bogus"]}
_TABLES = {"build": ["builder", "env", "script", "settings", "impure", "rootfs", "x"],
           "resources": ["memory", "cores", "tmp", "processes", "timeout", "y"],
           "image": ["base", "layers", "env", "entrypoint", "cmd", "labels", "compression"],
           "source": ["kind", "url", "rev", "submodules", "paths", "dist", "unpack", "names", "per-platform", "z"]}


def _damaged(rng, kind: str) -> dict:
    data: dict = ({"name": "a", "version": "1", "build": {"builder": "shell"}} if kind == "recipe"
                  else {"target": "a", "source-date-epoch": 1})
    for _ in range(rng.randint(0, 3)):
        key = rng.choice(_TOP[kind])
        if key in _TABLES and rng.random() < 0.6:
            table = dict(data[key]) if isinstance(data.get(key), dict) else {}
            table[rng.choice(_TABLES[key])] = rng.choice(_VALUES)
            data[key] = table
        elif rng.random() < 0.1:
            data.pop(key, None)
        else:
            data[key] = rng.choice(_VALUES)
    return data


def test_the_walk_refuses_exactly_what_cattrs_refuses() -> None:
    """`shape.first_problem` is asked only when cattrs refuses a table, and must then find what
    is wrong (else the line is cattrs' own words); it must never find fault with what cattrs
    accepts."""
    import random

    from planner.recipes.model import Recipe, SetConfig
    from planner.recipes.parse import _converter, _kebab_to_snake
    from planner.recipes.shape import first_problem

    rng = random.Random(3)
    for _ in range(5000):
        kind = rng.choice(["recipe", "set"])
        cls = Recipe if kind == "recipe" else SetConfig
        data = _kebab_to_snake(_damaged(rng, kind))
        if kind == "recipe":
            data["file"] = "recipes/t/a.toml"
        try:
            _converter().structure(data, cls)
            accepted = True
        except Exception:  # noqa: BLE001 - any refusal
            accepted = False
        assert accepted == (first_problem(cls, data, hidden=("file",)) is None), data


def test_the_line_of_a_key_path_is_the_line_that_writes_it() -> None:
    """Random documents whose keys repeat from table to table (`version` in several, a key
    that looks dotted, one that needs quotes, a multi-line string that holds `key = ` lines):
    every leaf's key path is found on the line that holds its value (or, in an array tomli_w
    writes inline, `key = [`: the line of the deepest key a line writes)."""
    import random

    import tomli_w

    from planner.recipes.shape import line_of_path

    rng = random.Random(5)
    keys = ["version", "kind", "a.b", "x y", "v-1", "k_2", "path"]
    for _ in range(300):
        leaves: dict[tuple, str] = {}

        def table(path: tuple, depth: int) -> dict:
            out: dict = {}
            for key in rng.sample(keys, rng.randint(1, 4)):
                here = path + (key,)
                if depth < 3 and rng.random() < 0.3:
                    out[key] = table(here, depth + 1)
                elif depth == 0 and rng.random() < 0.2:
                    out[key] = [table(here + (i,), depth + 1) for i in range(rng.randint(1, 3))]
                else:
                    marker = f"m{len(leaves)}"
                    leaves[here] = marker
                    out[key] = marker + ("\nversion = 1\n[kind]\n" if rng.random() < 0.2 else "")
            return out

        doc = table((), 0)
        text = tomli_w.dumps(doc, multiline_strings=rng.random() < 0.5)
        lines = text.splitlines()
        for path, marker in leaves.items():
            n = line_of_path(text, path)
            assert n is not None, (path, text)
            here = lines[n - 1] + (lines[n] if lines[n - 1].endswith('"""') else "")
            inline = any(isinstance(p, int) for p in path) and here.rstrip().endswith("= [")
            assert f'"{marker}' in here or inline, (path, n, text)


@pytest.mark.parametrize("recipe, message", [
    # A [source] and an [inputs.x] both write `path`: the input's own line and key.
    (HEAD + '[source]\nkind = "path"\npath = "src"\n[inputs.x]\nkind = "path"\npath = "nowhere"\n' + BUILD,
     "recipes/t/a.toml:8: inputs.x.path: input 'x': nowhere does not exist"),
    (HEAD + '[source]\nkind = "url"\nurl = "https://example.org/a.tgz"\nsha256 = "' + "a" * 64 + '"\n'
     '[inputs.x]\nkind = "url"\nurl = "https://example.org/x.tgz"\nsha256 = "short"\n' + BUILD,
     "recipes/t/a.toml:10: inputs.x.sha256: input 'x': sha256 must be 64 lowercase hex digits"),
    (HEAD + '[source]\nkind = "path"\npath = "nowhere"\n' + BUILD,
     "recipes/t/a.toml:5: source.path: input 'source': nowhere does not exist"),
    (HEAD + '[inputs.x]\nkind = "url"\n' + BUILD, "recipes/t/a.toml:3: inputs.x: input 'x' of kind url needs 'url'"),
])
def test_a_source_checks_problem_is_at_its_own_tables_key(tmp_path: Path, recipe: str, message: str) -> None:
    assert _refused(tmp_path, recipe) == message


IMG = 'name = "a"\nversion = "1.0"\n[build]\nbuilder = "oci-image"\n[image]\nlayers = []\n'
PEP517 = HEAD + '[build]\nbuilder = "cuda-wheel"\n[build.settings]\nfrontend = "pep517"\n'


@pytest.mark.parametrize("recipe, says", [
    # An integer of 5,000 digits: past the interpreter's limit for int(); was an internal error.
    (HEAD + BUILD + "[build.settings]\ngpu = " + "9" * 5000 + "\n", "invalid TOML"),
    # `$` matched before a final newline: such names reached the store, the lock, the sandbox.
    (HEAD + BUILD + '[build.env]\n"FOO\\n" = "bar"\n', "FOO"),
    (IMG + '[image.env]\n"" = "x"\n', "image.env: '' is not an environment variable name"),
    (IMG + '[image.env]\n"A=B" = "x"\n', "image.env: 'A=B' is not an environment variable name"),
    (IMG + '[image.env]\n"X\\nY" = "z"\n', "is not an environment variable name"),
    (IMG + '[image.env]\nA = "x\\u0000LD_PRELOAD=/tmp/evil.so"\n', "image.env.A: the value holds a NUL byte"),
    (IMG + '[image.labels]\n"a\\nb" = "x"\n', "is not a label key"),
    (IMG + 'entrypoint = ["/bin/sh", "-c\\u0000x"]\n', "image.entrypoint: an argument holds a NUL byte"),
    (PEP517 + 'arch-list-env = "MAX_JOBS"\n', "arch-list-env 'MAX_JOBS' is a variable the planner sets"),
    (PEP517 + 'arch-list-env = "A=B"\n', "arch-list-env must be an environment variable name"),
    (PEP517 + 'arch-list-env = ["X"]\n', "arch-list-env must be an environment variable name"),
])
def test_a_value_that_reaches_another_program_is_checked_when_the_recipe_loads(tmp_path: Path, recipe: str,
                                                                                says: str) -> None:
    line = _refused(tmp_path, recipe)
    assert says in line and "internal error" not in line, line


@pytest.mark.parametrize("set_toml, says", [
    ('target = "a"\nsource-date-epoch = ' + "1" * 5000 + '\n', "invalid TOML"),
    ('target = "a"\nsource-date-epoch = 1\nbuild-root = "host"\n[cuda]\n"../x y" = ["sm_100a"]\n',
     "cuda variant name '../x y' must be letters"),
])
def test_set_toml_values_that_reach_tags_or_ints_are_checked(tmp_path: Path, set_toml: str, says: str) -> None:
    line = _refused(tmp_path, HEAD + BUILD, set_toml=set_toml)
    assert says in line and "set.toml" in line, line


def test_an_arch_list_spelled_otherwise_is_the_same_image(tmp_path: Path) -> None:
    """`9.0a` and `sm_90a` are one arch list for the kernels' nodes: for the image's key and its
    annotations too (the image wrote the raw spelling, so a re-spelling changed its digest)."""
    keys = []
    for spelling in ('["sm_90a", "sm_100a"]', '["9.0a", " sm_100a "]'):
        proj = Project.empty(tmp_path / spelling.replace('"', "").replace(" ", ""), target="img")
        set_toml = proj.folder / "set.toml"
        set_toml.write_text(set_toml.read_text() + f"[cuda]\ndefault = {spelling}\n")
        proj.recipe("k", extra='axes = ["cuda"]')
        proj.write_raw("img", 'name = "img"\nversion = "1.0"\n[build]\nbuilder = "oci-image"\n[image]\n'
                              'layers = [["k"]]\n')
        proj.lock()
        from planner.planning import load

        plan = load(proj.root, proj.set).plan
        (img,) = [n for n in plan.nodes.values() if n.recipe == "img"]
        keys.append((img.preimage.image.cuda_variants, sorted(n.key for n in plan.nodes.values() if n.recipe == "k")))
    # (the image's key differs: it holds the lock, whose checksum covers set.toml's text)
    assert keys[0] == keys[1] and keys[0][0] == {"default": ["sm_90a", "sm_100a"]}


@pytest.mark.parametrize("settings, says", [
    ('subdir = ["be"]', "settings.subdir must be a relative path"),
    ('subdir = "../up"', "settings.subdir must be a relative path"),
    ('nvcc-threads = "4 -o /x"', "settings.nvcc-threads must be a whole number from 1 to 256"),
    ("nvcc-threads = -3", "settings.nvcc-threads must be a whole number"),
    ('config-settings = "--global-option=x"', "settings.config-settings must be a table"),
    ('packages = ["../.."]', "settings.packages must be a list of relative paths"),
    ('summary = "x\\nRequires-Dist: evil"', "settings.summary must be one line of text"),
    ('requires = ["a\\nb"]', "settings.requires must be a list of one-line requirements"),
])
def test_builder_settings_are_checked_when_the_recipe_loads(tmp_path: Path, settings: str, says: str) -> None:
    line = _refused(tmp_path, HEAD + '[build]\nbuilder = "python-wheel"\n[build.settings]\n' + settings + "\n")
    assert says in line and "build.settings" not in line.split(":")[0], line
