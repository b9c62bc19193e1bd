"""The reader of plain TOML (`recipes.simpletoml`) reads what it accepts exactly as tomli does
(values, types, key order) and declines everything else, so that tomli reads it (and reports
its errors). Compared on random documents of the subset and beyond it, each also damaged one
character at a time, and on every TOML file of the repository's recipes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from planner.recipes import simpletoml

tomli = pytest.importorskip("tomli")  # what the subset must agree with

REPO = Path(__file__).resolve().parent.parent


def same(a: object, b: object) -> bool:
    """Equal, with the same types throughout (True == 1 in Python) and the same key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    return a == b


def check(text: str) -> bool:
    """The property; True when the subset reader accepted `text`."""
    fast = simpletoml.loads(text)
    if fast is None:
        return False
    try:
        ref = tomli.loads(text)
    except Exception as exc:  # noqa: BLE001 - tomli refuses it: the subset reader must have declined
        raise AssertionError(f"accepted what tomli refuses ({exc}): {text!r}") from None
    assert same(fast, ref), (text, fast, ref)
    return True


KEYS = ["name", "version", "deps", "a", "b-c", "d_e", "1", "true", "-", "build", "env", "X"]
STRINGS = ['""', '"x"', '"a b"', '"ü ✓"', '"tab\there"', r'"q\"q"', r'"b\\s"', r'"\n\t\b\f\r"', "'lit'",
           "''", "'a\"b\\c'", '"#not a comment"', '"[x]"', '"a = b"']
OTHER = ["0", "1", "-5", "+7", "1_000", "123456789012345678", "true", "false", "1.5", "1e3", "0x1f", "inf",
         "1979-05-27", "{ a = 1 }", '"""x"""', "'''x'''", r'"\u00e9"', r'"\x41"', "[1, [2]]", "01", "1__0",
         "1234567890123456789", "nan", "truex", "[\n]", '"unterminated']


def value(rng: random.Random) -> str:
    c = rng.random()
    if c < 0.45:
        return rng.choice(STRINGS)
    if c < 0.75:
        items = [rng.choice(STRINGS + OTHER[:8]) for _ in range(rng.randint(0, 4))]
        sep = rng.choice([", ", ",", " , ", ",\t"])
        return "[" + rng.choice(["", " "]) + sep.join(items) + rng.choice(["", ",", " ", ", "]) + "]"
    return rng.choice(OTHER)


def document(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(0, 9)):
        c = rng.random()
        if c < 0.6:
            lines.append(rng.choice(["", " ", "\t"]) + rng.choice(KEYS) + rng.choice([" = ", "=", " =\t"])
                         + value(rng) + rng.choice(["", "", " # c", "#c", " # ü"]))
        elif c < 0.8:
            parts = [rng.choice(KEYS) for _ in range(rng.randint(1, 5))]
            lines.append("[" + rng.choice([".", " . "]).join(parts) + "]" + rng.choice(["", " # t"]))
        elif c < 0.9:
            lines.append(rng.choice(["", "   ", "# comment", "\t# x"]))
        else:
            lines.append(rng.choice(['a.b = 1', '"q" = 1', "[[t]]", "x = 1 2", "= 1", "[a]]", "[ ]", "k ="]))
    return rng.choice(["\n", "\r\n"]).join(lines) + rng.choice(["", "\n", "\r\n", "\r"])


HOSTILE = ['"', "'", "\\", "\r", "\n", "\t", "\x00", "\x01", "\x7f", "#", "[", "]", "=", ".", ",", " ", "é",
           "\u2028", "\ufeff", "0", "_", "+", "-", "{", "}"]


@pytest.mark.parametrize("seed", range(4))
def test_the_subset_reads_as_tomli_reads(seed: int) -> None:
    rng = random.Random(seed)
    accepted = 0
    for _ in range(1500):
        text = document(rng)
        accepted += check(text)
        for _ in range(3):  # damaged in one place
            i = rng.randrange(len(text) + 1)
            cut = rng.randint(0, 1)
            check(text[:i] + rng.choice(HOSTILE) + text[i + cut:])
    assert accepted > 300  # the subset is what most generated documents are: else this could not fail


def test_recipe_files_of_the_repository() -> None:
    files = sorted((REPO / "recipes").rglob("*.toml"))
    assert files
    accepted = sum(check(p.read_text()) for p in files)
    assert accepted > 0


@pytest.mark.parametrize("text", [
    "a = 1\na = 2", "[t]\n[t]", "a = 1\n[a]", "[t.u]\n[t]", "[a.b.c.d.e]", "a = 1\r", "a = 1\rb = 2",
    'a = "\\u0041"', "a = [1, [2]]", 'a = """x"""', "a = 1.0", "\ufeffa = 1", "a = 99999999999999999999",
])
def test_declined(text: str) -> None:
    """Duplicates, redefined tables, lone carriage returns, what needs care: tomli decides."""
    assert simpletoml.loads(text) is None


def test_the_plain_recipe_shape_is_read() -> None:
    text = ('name = "n5"\nversion = "1.0"\ndeps = ["n1", "n2",]\n\n[build]\nbuilder = "shell"\n'
            'script = "echo \\"node 5\\" > $out/n5.txt"\n\n[build.env]\nSEED = "7"  # why\n')
    assert check(text)


@pytest.mark.parametrize("text", [
    'name = "x"\nname = "y"\n', '[build]\nbuilder = "shell"\n[build]\n', 'name = "x"\r', 'name = "x\n',
    'name = "\\q"\n', 'name = "x" "y"\n', "[build\n", 'name = "x"\n[[build]]\n[build]\n',
])
def test_malformed_recipes_are_one_line_errors_naming_the_file(tmp_path: Path, text: str) -> None:
    from planner.errors import RecipeError
    from planner.recipes.sets import load_recipe

    path = tmp_path / "recipes" / "t" / "x.toml"
    path.parent.mkdir(parents=True)
    path.write_bytes(text.encode())
    with pytest.raises(RecipeError) as exc:
        load_recipe(path, tmp_path)
    message = str(exc.value)
    assert "\n" not in message and "recipes/t/x.toml" in message and "invalid TOML" in message, message
