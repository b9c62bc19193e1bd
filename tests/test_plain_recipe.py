"""The hand-written structurer of plain recipes (`recipes.parse.plain_recipe`) makes exactly what
cattrs makes, and hands everything else to cattrs, so errors and odd shapes are reported as
before.

Random plain recipes (every optional key present or not) are structured both ways and must be
equal, and must take the fast way (else this test could not fail). Each one is then damaged in
one place (a wrong type, an unknown key, a snake_case spelling, a source or a resources table):
the fast way must decline, and loading the file must give what cattrs gives (the same recipe,
or the same one-line error).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import tomli_w

from planner.errors import RecipeError
from planner.recipes.model import Recipe
from planner.recipes.parse import _converter, _kebab_to_snake, plain_recipe
from planner.recipes.sets import load_recipe


def random_plain(rng: random.Random, name: str) -> dict:
    data: dict = {"name": name, "version": rng.choice(["1.0", "2.3.4+local", "0"])}
    words = ["a", "b-c", "d.e", "f_g"]
    if rng.random() < 0.5:
        data["description"] = rng.choice(["", "a thing", "ü ✓"])
    for key in ("axes", "deps", "toolchains", "requires", "platforms"):
        if rng.random() < 0.5:
            data[key] = rng.sample(words, rng.randint(0, 3))
    if rng.random() < 0.3:
        data["axes"] = rng.choice([[], ["platform"], ["platform", "cuda"], ["host"]])
    if rng.random() < 0.3:
        data["platforms"] = rng.choice([["linux/amd64"], ["linux/amd64", "linux/arm64"]])
    if rng.random() < 0.3:
        data["estimate"] = rng.choice(["10s", "5m", "2h"])
    if rng.random() < 0.2:
        data["resolve-as-of"] = "2024-01-01T00:00:00Z"
    build: dict = {"builder": rng.choice(["shell", "unpack", "source-tree"])}
    if rng.random() < 0.8:
        build["script"] = rng.choice(["true", "echo hi > $out/x", "printf '%s' \"$X\""])
    if rng.random() < 0.4:
        build["env"] = {k: rng.choice(["1", "", "x y"]) for k in rng.sample(["A", "B_C", "lower"], 2)}
    if rng.random() < 0.3:
        build["settings"] = {"path": "root/x", "nested": {"k": [1, "two", True]}, "n": 3}
    if rng.random() < 0.3:
        build["impure"] = rng.choice([True, False])
    if rng.random() < 0.2:
        build["rootfs"] = "base"
    data["build"] = build
    return data


def by_cattrs(data: dict, where: str) -> Recipe:
    d = _kebab_to_snake(data)
    d["file"] = where
    return _converter().structure(d, Recipe)


DAMAGE = [
    ("version", 1), ("version", True), ("name", ["n"]), ("description", 3), ("deps", "a"), ("deps", ["a", 1]),
    ("axes", [["platform"]]), ("estimate", 10), ("resolve-as-of", 5), ("platforms", {"linux/amd64": 1}),
    ("colour", "red"), ("resolve_as_of", "2024-01-01T00:00:00Z"), ("file", "elsewhere.toml"),
    ("source", {"kind": "path", "path": "src"}), ("resources", {"cores": 2}), ("image", {"layers": []}),
    ("build.builder", 1), ("build.script", ["x"]), ("build.env", {"A": 1}), ("build.env", "A=1"),
    ("build.settings", [1]), ("build.impure", "yes"), ("build.impure", 1), ("build.rootfs", False),
    ("build.colour", "red"), ("build", "shell"), ("build", None),
]


def damaged(data: dict, key: str, value: object) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if key.startswith("build."):
        out["build"][key[len("build."):]] = value
    elif value is None:
        del out[key]
    else:
        out[key] = value
    return out


def outcome(path: Path, root: Path) -> object:
    try:
        return load_recipe(path, root, f"recipes/t/{path.name}")
    except RecipeError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("seed", range(3))
def test_plain_recipes_are_structured_as_cattrs_does(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    folder = tmp_path / "recipes" / "t"
    folder.mkdir(parents=True)
    for i in range(60):
        name = f"r{i}"
        data = random_plain(rng, name)
        where = f"recipes/t/{name}.toml"
        fast = plain_recipe(data, where)
        assert fast is not None, data  # the plain shape takes the fast way
        assert fast == by_cattrs(data, where)
        # Damaged in one place: the fast way declines, and loading says what cattrs says.
        key, value = rng.choice(DAMAGE)
        bad = damaged(data, key, value)
        assert plain_recipe(bad, where) is None, (key, value)
        path = folder / f"{name}.toml"
        path.write_text(tomli_w.dumps(bad))
        got = outcome(path, tmp_path)
        try:
            want: object = by_cattrs(bad, where)
        except Exception:  # noqa: BLE001 - cattrs refuses it: loading must refuse it too
            want = None
        if want is None:
            assert isinstance(got, tuple) and got[0] == "error", (key, value, got)
        elif isinstance(got, Recipe):
            assert got == want
        else:  # structured, then refused by validation: the same with either structurer
            assert got[0] == "error"


def test_every_damage_is_declined() -> None:
    data = random_plain(random.Random(0), "x")
    data["build"]["script"] = "true"
    assert plain_recipe(data, "x.toml") is not None
    for key, value in DAMAGE:
        assert plain_recipe(damaged(data, key, value), "x.toml") is None, (key, value)


def test_the_parse_cache_gives_back_what_parsing_gave(tmp_path: Path, monkeypatch) -> None:
    """A plain recipe is cached as its TOML table and made again from it; any other as the
    recipe itself. Either way a load from the cache equals the load that parsed the files."""
    from planner.recipes.sets import _ParseCache, load_set

    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    rng = random.Random(7)
    folder = tmp_path / "recipes" / "t"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "r0"\nsource-date-epoch = 1\nplatforms = ["linux/amd64"]\n'
                                     'build-root = "host"\n')
    for i in range(40):
        data = random_plain(rng, f"r{i}")
        data["deps"] = data["toolchains"] = data["requires"] = []  # (no other recipes to name)
        if "platforms" in data:
            data["platforms"] = ["linux/amd64"]
        if "axes" in data:
            data["axes"] = ["platform"]
        data["build"].pop("rootfs", None)
        data["build"].update(builder="shell", script="true")
        if i % 5 == 0:  # not plain: cattrs makes it
            data["resources"] = {"cores": 2, "memory": "1GiB"}
        (folder / f"r{i}.toml").write_text(tomli_w.dumps(data))
    cold = load_set(tmp_path, "t")
    cache = _ParseCache(tmp_path.resolve(), "t")
    kinds = {Path(p).stem: type(v[1]) for p, v in cache.entries.items()}
    assert kinds == {f"r{i}": (Recipe if i % 5 == 0 else dict) for i in range(40)}
    warm = load_set(tmp_path, "t")
    assert warm.recipes == cold.recipes and list(warm.recipes) == list(cold.recipes)
    # and the warm load did come from the cache: a cached table that differs shows through
    sig, table = cache.entries[str(folder.resolve() / "r1.toml")]
    cache.entries[str(folder.resolve() / "r1.toml")] = (sig, dict(table, version="9.9"))
    cache.dirty = True
    cache.save()
    assert load_set(tmp_path, "t").recipes["r1"].version == "9.9"
    # a table marshal cannot write (a date in settings, which validation refuses later) is
    # pickled with the rest: the cache still reads back what was put
    import datetime

    cache = _ParseCache(tmp_path.resolve(), "t")
    cache.entries["odd"] = ((1, 2, 3, 4), {"build": {"settings": {"when": datetime.date(2026, 1, 2)}}})
    cache.dirty = True
    cache.save()
    again = _ParseCache(tmp_path.resolve(), "t")
    assert again.entries == cache.entries


def test_a_plain_set_toml_is_what_cattrs_makes_and_anything_else_goes_to_cattrs(tmp_path: Path) -> None:
    """set.toml of the plain shape is structured by hand (`parse.plain_config`): equal to what
    cattrs makes; a wrong type or any other key declines, and loading gives cattrs' answer."""
    from planner.recipes.model import SetConfig
    from planner.recipes.parse import plain_config
    from planner.recipes.sets import load_config

    rng = random.Random(5)
    damage = [("target", 1), ("target", ["a"]), ("source-date-epoch", "1"), ("source-date-epoch", True),
              ("source-date-epoch", 1.5), ("platforms", "linux/amd64"), ("platforms", [1]), ("build-root", 1),
              ("resolve-as-of", 3), ("cuda", {"v": ["sm_90"]}), ("aliases", {"a": "b"}), ("profile", "p"),
              ("source_date_epoch", 1), ("bogus", "x")]
    for i in range(300):
        data: dict = {"target": rng.choice(["a", "top", "ü"]), "source-date-epoch": rng.choice([0, 1, 2**40])}
        if rng.random() < 0.5:
            data["platforms"] = rng.sample(["linux/amd64", "linux/arm64"], rng.randint(0, 2))
        if rng.random() < 0.5:
            data["build-root"] = rng.choice(["host", "base"])
        if rng.random() < 0.3:
            data["resolve-as-of"] = "2024-01-01T00:00:00Z"
        want = _converter().structure(_kebab_to_snake(data), SetConfig)
        assert plain_config(data) == want
        key, value = rng.choice(damage)
        bad = dict(data, **{key: value})
        assert plain_config(bad) is None, (key, value)
        for missing in ("target", "source-date-epoch"):
            assert plain_config({k: v for k, v in data.items() if k != missing}) is None
        folder = tmp_path / f"p{i}" / "recipes" / "t"
        folder.mkdir(parents=True)
        (folder / "set.toml").write_text(tomli_w.dumps(bad))
        try:
            got = load_config(tmp_path / f"p{i}", "t")[0]
        except RecipeError as exc:
            got = exc.line()
        try:
            expected = _converter().structure(_kebab_to_snake(bad), SetConfig)
        except Exception:
            assert isinstance(got, str) and got.startswith("recipes/t/set.toml"), got  # cattrs' error, one line
        else:
            assert got == expected
