"""The checks across a set's recipes (`recipes.validate._check_references`): references and
cycles. Their fast paths (names looked up directly, Kahn's count before the walk that names a
cycle) give the same answers and the same messages as the checks they stand in front of."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from planner.errors import RecipeError
from planner.recipes import load_set
from planner.recipes.validate import _acyclic, find_cycle


def test_the_quick_acyclic_check_agrees_with_find_cycle() -> None:
    rng = random.Random(11)
    for _ in range(20000):
        names = [f"r{j}" for j in range(rng.randint(1, 9))]
        edges = {n: [rng.choice(names + ["elsewhere"]) for _ in range(rng.randint(0, 3))] for n in names}
        assert _acyclic(edges) == (find_cycle(edges) is None), edges


def _set(tmp_path: Path, recipes: dict[str, str]) -> Path:
    folder = tmp_path / "recipes" / "t"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "a"\nsource-date-epoch = 1\nplatforms = ["linux/amd64"]\n'
                                     'build-root = "host"\n')
    for name, extra in recipes.items():
        (folder / f"{name}.toml").write_text(f'name = "{name}"\nversion = "1"\n{extra}\n'
                                             '[build]\nbuilder = "shell"\nscript = "true"\n')
    return tmp_path


@pytest.mark.parametrize("recipes, message", [
    ({"a": 'deps = ["b"]', "b": 'requires = ["c"]', "c": 'toolchains = ["a"]'},
     "recipes/t/a.toml:3: deps: dependency cycle: a -> b -> c -> a"),
    ({"a": 'deps = ["a"]'}, "recipes/t/a.toml:3: deps: dependency cycle: a -> a"),
    ({"a": 'deps = ["b"]', "b": 'requires = ["nope"]'},
     "recipes/t/b.toml:3: requires: requires names 'nope', which is not a recipe of set 't' (one of: a, b)"),
    ({"a": 'toolchains = ["b", "gone"]', "b": ""},
     "recipes/t/a.toml:3: toolchains: toolchains names 'gone', which is not a recipe of set 't' (one of: a, b)"),
    ({"a": 'deps = ["fetchd"]', "fetched": ""},
     "recipes/t/a.toml:3: deps: deps names 'fetchd', which is not a recipe of set 't' (did you mean "
     "'fetched'? one of: a, fetched)"),
])
def test_a_bad_reference_or_a_cycle_is_one_line_naming_the_file(tmp_path: Path, monkeypatch, recipes: dict,
                                                                  message: str) -> None:
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    root = _set(tmp_path, recipes)
    for _ in range(2):  # parsed, then from the parse cache: the same check
        with pytest.raises(RecipeError) as exc:
            load_set(root, "t")
        assert exc.value.line() == message


def test_a_set_without_cycles_loads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    root = _set(tmp_path, {"a": 'deps = ["b", "c"]\nrequires = ["c"]', "b": 'deps = ["c"]', "c": ""})
    assert sorted(load_set(root, "t").recipes) == ["a", "b", "c"]


@pytest.mark.parametrize("env, message", [
    ('PATH = "/x"', "recipes/t/a.toml:8: PATH: [build] env PATH: the planner sets this variable for every shell "
                    "build, so a declared value would be overwritten; remove it"),
    ('out = "x"', "recipes/t/a.toml:8: out: [build] env out: the planner sets this variable for every shell "
                  "build, so a declared value would be overwritten; remove it"),
    ('1BAD = "x"', "recipes/t/a.toml:7: env: invalid environment variable name '1BAD'"),
])
def test_a_declared_variable_the_planner_sets_or_a_bad_name_is_refused(tmp_path: Path, monkeypatch, env: str,
                                                                      message: str) -> None:
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    root = _set(tmp_path, {"a": ""})
    f = root / "recipes" / "t" / "a.toml"
    f.write_text(f.read_text() + f"[build.env]\n{env}\n")
    with pytest.raises(RecipeError) as exc:
        load_set(root, "t")
    assert exc.value.line() == message


@pytest.mark.parametrize("build, message", [
    ('script = "true"\n[build.env]\nA = "x\\u0000--ro-bind\\u0000/etc\\u0000/hostetc"\n',
     "recipes/t/a.toml:8: A: [build] env A: the value must be a string without a NUL byte"),
    ('script = "true\\u0000--share-net"\n', "recipes/t/a.toml:6: script: the build script holds a NUL byte"),
])
def test_a_nul_byte_in_what_reaches_the_sandbox_is_refused_when_the_recipe_loads(
        tmp_path: Path, monkeypatch, build: str, message: str) -> None:
    """A NUL in an env value or the script would end a sandbox argument there and start others
    of the recipe's choosing (`--ro-bind / /x`: the host's files in the build, as an audit showed
    with a real realise): refused at the recipe's line, before anything runs."""
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    root = _set(tmp_path, {"a": ""})
    f = root / "recipes" / "t" / "a.toml"
    f.write_text(f.read_text().replace('script = "true"\n', "") + build)
    with pytest.raises(RecipeError) as exc:
        load_set(root, "t")
    assert exc.value.line().startswith(message), exc.value.line()


def test_the_sandbox_takes_no_argument_with_a_nul_byte(tmp_path: Path) -> None:
    """Whatever brings it (not a recipe: those are refused when they load), bubblewrap's
    arguments are never written with a NUL inside one."""
    from planner.buildrun import Running, run_logged

    argv = ["bwrap", "--setenv", "A", "x\0--ro-bind\0/\0/host", "--", "true"]
    with pytest.raises(ValueError, match="NUL"):
        run_logged(argv, {}, tmp_path, tmp_path / "log", b"", Running(), sandboxed=True, group=None, timeout=None)
    # Nor an unsandboxed build's environment (what --sandbox off passes to the process itself).
    with pytest.raises(ValueError, match="NUL"):
        run_logged(["true"], {"A": "x\0y"}, tmp_path, tmp_path / "log", b"", Running(), sandboxed=False, group=None,
                   timeout=None)
    assert not (tmp_path / "log").exists()


def test_a_name_too_long_for_a_store_path_is_refused_when_the_recipe_loads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    long = "a" + "b" * 200
    root = _set(tmp_path, {"a": f'deps = ["{long}"]', long: ""})
    with pytest.raises(RecipeError) as exc:
        load_set(root, "t")
    assert "at most 128" in exc.value.line() and f"{long}.toml:1: name" in exc.value.line(), exc.value.line()


@pytest.mark.parametrize("extra, message", [
    ('estimate = "soon"', "recipes/t/a.toml:3: estimate: not a duration: 'soon' (e.g. 90s, 5m, 2h)"),
    ('[resources]\ncores = 0', "recipes/t/a.toml:4: cores: cores must be a whole number from 1 to 1024, not 0"),
    ('[resources]\nmemory = "1KiB"', "recipes/t/a.toml:4: memory: memory must be from 1MiB to 1024TiB, not '1KiB'"),
])
def test_an_estimate_or_resources_out_of_bounds_is_refused(tmp_path: Path, monkeypatch, extra: str,
                                                           message: str) -> None:
    """A plain recipe shares one default [resources] (checked once, not per recipe); its estimate
    and any other recipe's [resources] are still checked."""
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    root = _set(tmp_path, {"a": extra})
    with pytest.raises(RecipeError) as exc:
        load_set(root, "t")
    assert exc.value.line() == message


@pytest.mark.parametrize("extra, message", [
    ('[inputs."../../x"]\nkind = "url"\nurl = "https://example.org/x.tgz"',
     "input name '../../x' must be letters, digits"),
    ('[inputs."a\\nplanner: error: forged"]\nkind = "url"\nurl = "https://example.org/x.tgz"',
     "input name 'a\\nplanner: error: forged' must be letters, digits"),
    ('[inputs."x//y"]\nkind = "url"\nurl = "https://example.org/x.tgz"', "input name 'x//y' must be"),
    ('[inputs."source/.."]\nkind = "url"\nurl = "https://example.org/x.tgz"', "input name 'source/..' must be"),
    ('[[patches]]\nurl = "https://example.org/fix%20it.patch"\nsha256 = "' + "a" * 64 + '"',
     "patch 'fix%20it.patch': its name must be"),
    ('[inputs.w]\nkind = "pypi"\nname = "w"\nversion = "1"\ndist = "bogus"', "'bogus' is not one of 'sdist', 'wheel'"),
    ('[[patches]]\nname = "a b.patch"\nurl = "https://example.org/x.patch"\nsha256 = "' + "a" * 64 + '"',
     "patch 'a b.patch': its name must be"),
])
def test_an_input_name_or_patch_label_that_is_not_a_plain_name_is_refused(tmp_path: Path, monkeypatch, extra: str,
                                                                          message: str) -> None:
    """Input names and patch labels become lock ids (`recipe/name`), folder names in the build and
    log lines: a path, a line break or a space is refused where the recipe is read, in one line."""
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    root = _set(tmp_path, {"a": extra})
    with pytest.raises(RecipeError) as exc:
        load_set(root, "t")
    line = exc.value.line()
    assert line.startswith("recipes/t/a.toml") and message in line and "\n" not in line, line


def test_a_newcomers_mistakes_get_one_line_with_the_fix(tmp_path: Path, monkeypatch) -> None:
    """What an audit found a first recipe set runs into: a recipe in a subfolder (never read), a
    mistyped target or builder, a `file` key, a TOML syntax error: each one line naming the file
    and line, with what was meant; a byte-order mark is no error."""
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))

    def refused(root: Path) -> str:
        with pytest.raises(RecipeError) as exc:
            load_set(root, "t")
        return exc.value.line()

    root = _set(tmp_path / "sub", {"a": 'deps = ["extra"]'})
    (root / "recipes/t/lib").mkdir()
    (root / "recipes/t/lib/extra.toml").write_text('name = "extra"\nversion = "1"\n')
    assert "recipes/t/lib/extra.toml is in a subfolder" in refused(root)

    root = _set(tmp_path / "target", {"app": ""})
    (root / "recipes/t/set.toml").write_text((root / "recipes/t/set.toml").read_text().replace('"a"', '"ap"'))
    assert refused(root) == ("recipes/t/set.toml:1: target: target 'ap' is not a recipe of this set "
                             "(did you mean 'app'? one of: app)")

    root = _set(tmp_path / "builder", {"a": ""})
    f = root / "recipes/t/a.toml"
    f.write_text(f.read_text().replace('"shell"', '"shel"'))
    assert "builder: unknown builder 'shel' (did you mean 'shell'?" in refused(root)

    root = _set(tmp_path / "file", {"a": 'file = "x"'})
    line = refused(root)
    assert line.startswith("recipes/t/a.toml:3: file: unknown key"), line

    root = _set(tmp_path / "toml", {"a": 'description = "unterminated'})
    line = refused(root)
    assert line.startswith("recipes/t/a.toml:3: invalid TOML: "), line

    root = _set(tmp_path / "patch", {"a": '[[patches]]\nfile = "patches/helo.patch"'})
    (root / "patches").mkdir()
    (root / "patches/hello.patch").write_text("")
    line = refused(root)
    assert line.startswith("recipes/t/a.toml:4: file: patch patches/helo.patch does not exist (did you mean "
                           "'patches/hello.patch'?"), line

    root = _set(tmp_path / "bom", {"a": ""})
    for name in ("a.toml", "set.toml"):
        f = root / "recipes/t" / name
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    assert load_set(root, "t").recipes["a"].version == "1"


@pytest.mark.parametrize("extra, message", [
    ('deps = "b"', 'recipes/t/a.toml:3: deps: expected a list, not a string \'b\' (write deps = ["b"])'),
    ('[resources]\ncores = "2"', "recipes/t/a.toml:4: resources.cores: expected a whole number, not a string '2'"),
])
def test_a_wrong_type_says_what_was_given_and_what_is_wanted(tmp_path: Path, monkeypatch, extra: str,
                                                            message: str) -> None:
    """cattrs said "invalid value for type, expected list" of `deps = "b"`."""
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    root = _set(tmp_path, {"a": extra, "b": ""})
    with pytest.raises(RecipeError) as exc:
        load_set(root, "t")
    assert exc.value.line() == message


def test_a_table_of_strings_names_the_entry_that_is_not_one(tmp_path: Path, monkeypatch) -> None:
    """cattrs said "build.env: invalid value for type, expected dict" of a table that is one."""
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    root = _set(tmp_path, {"a": ""})
    f = root / "recipes" / "t" / "a.toml"
    f.write_text(f.read_text() + "[build.env]\nJOBS = 4\n")
    with pytest.raises(RecipeError) as exc:
        load_set(root, "t")
    assert exc.value.line() == ('recipes/t/a.toml:8: build.env.JOBS: JOBS = 4: the values of this table are strings '
                                '(write JOBS = "4")')
