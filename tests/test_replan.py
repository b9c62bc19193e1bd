"""Re-planning after an edit (`planner.replan`) gives exactly the plan made from scratch.

A random recipe set (2 platforms x 2 CUDA variants; deps, toolchains, run-time requires,
per-recipe axes and platform restrictions, a path source) is planned once, then edited step by
step: scripts, dependencies, axes, requires, recipes added, removed and renamed. After every
step the table `planner plan` shows (through the cache, re-planned where only recipe files
changed) is compared with one planned from scratch with an empty cache: same nodes in the same
order, same keys, edges, blocked inputs, roots and warnings. Steps that only touch recipe files
must be re-planned, not planned from scratch (counted), so a wrong re-plan cannot hide behind a
fallback. Broken edits (a dangling name, a cycle, a hostile file) must fail exactly as a plan
from scratch fails.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from planner import planning, plantable, replan
from tests.support.project import Project, recipe_toml

PLATFORMS_SET = (
    'target = "top"\nsource-date-epoch = 1700000000\nbuild-root = "host"\n'
    'platforms = ["linux/amd64", "linux/arm64"]\n[cuda]\ndefault = ["sm_90a", "sm_100a"]\nsmall = ["sm_100a"]\n')


class Model:
    """The recipes as data; written to files on every change."""

    def __init__(self, proj: Project, rng: random.Random, n: int) -> None:
        self.proj, self.rng = proj, rng
        self.specs: dict[str, dict] = {}
        self.counter = 0
        for i in range(n):
            self.specs[f"r{i:02d}"] = self._random_spec(list(self.specs))
        names = list(self.specs)
        self.specs["top"] = {"deps": names[-4:], "toolchains": [], "requires": names[-6:-4], "axes": [],
                             "platforms": [], "script": "true"}
        for name in self.specs:
            self.write(name)

    def _random_spec(self, earlier: list[str]) -> dict:
        rng = self.rng
        pick = lambda k: sorted(rng.sample(earlier, min(k, len(earlier))))  # noqa: E731
        spec = {"deps": pick(rng.randint(0, 3)), "toolchains": pick(1) if rng.random() < 0.15 else [],
                "requires": pick(1) if rng.random() < 0.2 else [], "axes": [], "platforms": [],
                "script": f"echo {rng.randrange(1 << 20)} > $out/x"}
        roll = rng.random()
        if roll < 0.15:
            spec["axes"] = ["platform"]
        elif roll < 0.25:
            spec["axes"] = ["platform", "cuda"]
        elif roll < 0.3:
            spec["platforms"] = ["linux/amd64"]  # an arm64 consumer gets an unavailable node
        return spec

    def text(self, name: str) -> str:
        s = self.specs[name]
        extra = []
        for key in ("toolchains", "requires", "axes", "platforms"):
            if s[key]:
                extra.append(f"{key} = [" + ", ".join(f'"{v}"' for v in s[key]) + "]")
        return recipe_toml(name, deps=s["deps"], script=s["script"], extra="\n".join(extra))

    def write(self, name: str) -> None:
        self.proj.write_raw(name, self.text(name))

    def order(self) -> list[str]:
        return [n for n in self.specs if n != "top"]

    def referrers(self, name: str) -> list[str]:
        return [n for n, s in self.specs.items()
                if name in s["deps"] or name in s["toolchains"] or name in s["requires"]]

    def below(self, name: str) -> list[str]:
        """Names that may be referenced from `name` without a cycle (created before it)."""
        order = self.order()
        return order[:order.index(name)] if name in order else order

    # -- the edits ------------------------------------------------------------------------

    def edit_script(self) -> str:
        name = self.rng.choice(self.order())
        self.specs[name]["script"] = f"echo edited {self.rng.randrange(1 << 20)} > $out/x"
        self.write(name)
        return f"script of {name}"

    def edit_deps(self) -> str:
        name = self.rng.choice(self.order()[3:])
        choices = self.below(name)
        self.specs[name]["deps"] = sorted(self.rng.sample(choices, min(len(choices), self.rng.randint(0, 3))))
        self.write(name)
        return f"deps of {name}"

    def edit_axes(self) -> str:
        name = self.rng.choice(self.order())
        self.specs[name]["axes"] = self.rng.choice([[], ["platform"], ["platform", "cuda"]])
        self.specs[name]["platforms"] = []
        self.write(name)
        return f"axes of {name}"

    def edit_requires(self) -> str:
        name = self.rng.choice(self.order()[3:])
        self.specs[name]["requires"] = [self.rng.choice(self.below(name))] if self.rng.random() < 0.7 else []
        self.write(name)
        return f"requires of {name}"

    def add(self) -> str:
        self.counter += 1
        name = f"new{self.counter}"
        self.specs[name] = self._random_spec(self.order())
        self.write(name)
        if self.rng.random() < 0.6:  # and used by something above it
            user = self.rng.choice(["top"] + [n for n in self.order() if n.startswith("new") and n != name])
            self.specs[user]["deps"] = sorted(set(self.specs[user]["deps"]) | {name})
            self.write(user)
        return f"added {name}"

    def remove(self) -> str:
        free = [n for n in self.order() if not self.referrers(n)]
        name = self.rng.choice(free)
        del self.specs[name]
        (self.proj.folder / f"{name}.toml").unlink()
        return f"removed {name}"

    def rename(self) -> str:
        old = self.rng.choice(self.order())
        self.counter += 1
        new = f"renamed{self.counter}"
        specs = {}
        for n, s in self.specs.items():  # keep the creation order: `below` depends on it
            specs[new if n == old else n] = s
        self.specs = specs
        for n, s in self.specs.items():
            changed = False
            for key in ("deps", "toolchains", "requires"):
                if old in s[key]:
                    s[key] = sorted(new if v == old else v for v in s[key])
                    changed = True
            if changed:
                self.write(n)
        self.write(new)
        (self.proj.folder / f"{old}.toml").unlink()
        return f"renamed {old} to {new}"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("PLANNER_CACHE", str(d))
    return d


def from_scratch(proj: Project, tmp_path: Path, target: str | None = None) -> plantable.PlanTable:
    old = os.environ["PLANNER_CACHE"]
    os.environ["PLANNER_CACHE"] = str(tmp_path / f"scratch-{time.monotonic_ns()}")
    try:
        return plantable.from_planned(planning.load(proj.root, proj.set, target=target))
    finally:
        os.environ["PLANNER_CACHE"] = old


def same(a: plantable.PlanTable, b: plantable.PlanTable) -> None:
    assert list(a.nodes) == list(b.nodes)  # the same nodes in the same (walk) order
    for nid in a.nodes:
        assert a.nodes[nid] == b.nodes[nid], nid
    assert (a.targets, a.roots, a.warnings) == (b.targets, b.roots, b.warnings)


class Counting:
    """How many plans were made from scratch (planning.load) by the cached path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = 0
        real = planning.load

        def load(*a, **kw):
            self.full += 1
            return real(*a, **kw)

        monkeypatch.setattr(planning, "load", load)


def settle() -> None:
    # A file changed within the racy window before a plan is not cached as read (plancache.RACY_NS).
    time.sleep(0.05)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replanning_after_recipe_edits_gives_the_plan_made_from_scratch(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    if seed == 3:  # the unchanged recipes re-planned come from the parse cache (large edits' way)
        monkeypatch.setattr(replan, "PARSE_CACHE_FROM", 0)
    proj = Project.empty(tmp_path, target="top")
    (proj.folder / "set.toml").write_text(PLATFORMS_SET)
    rng = random.Random(seed)
    model = Model(proj, rng, 30)
    proj.lock()
    settle()
    counting = Counting(monkeypatch)
    first = replan.table_for(proj.root, proj.set, None, True)
    assert counting.full == 1
    same(first, from_scratch(proj, tmp_path))
    edits = [model.edit_script, model.edit_deps, model.edit_axes, model.edit_requires, model.add, model.remove,
             model.rename]
    replanned = 0
    for step in range(24):
        what = rng.choice(edits)()
        settle()
        before = counting.full
        got = replan.table_for(proj.root, proj.set, None, True)
        # Only recipe files changed and none of them is an image, the build root or has local
        # files: re-planned from the cached table, never from scratch.
        assert counting.full == before, f"step {step} ({what}) was planned from scratch"
        scratch = from_scratch(proj, tmp_path)
        same(got, scratch)
        replanned += 1
        # And read back unchanged.
        same(plantable.cached(proj.root, proj.set, None, True), scratch)
    assert replanned == 24
    # Another target's table is re-planned on its own too.
    model.edit_script()
    settle()
    inner = model.order()[len(model.order()) // 2]
    same(replan.table_for(proj.root, proj.set, inner, True), from_scratch(proj, tmp_path, inner))
    model.edit_script()
    settle()
    before = counting.full
    got = replan.table_for(proj.root, proj.set, inner, True)
    assert counting.full == before
    same(got, from_scratch(proj, tmp_path, inner))


def test_what_replanning_does_not_handle_is_planned_from_scratch(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """set.toml, a path source's recipe, the lockfile: a plan from scratch, still equal."""
    proj = Project.diamond(tmp_path)
    proj.lock()
    settle()
    counting = Counting(monkeypatch)
    replan.table_for(proj.root, proj.set, None, True)
    # A recipe with a path source (its files are watched): from scratch.
    proj.recipe("a", deps=[], script="cat data.txt > $out/a.txt; echo 2", source="src/a")
    settle()
    before = counting.full
    got = replan.table_for(proj.root, proj.set, None, True)
    assert counting.full == before + 1
    same(got, from_scratch(proj, tmp_path))
    # A recipe without: re-planned, and the stale-lock warning (a's source is unchanged, so
    # none) is the same as from scratch.
    proj.recipe("c", deps=["a"], script="echo c2 > $out/c.txt")
    settle()
    before = counting.full
    got = replan.table_for(proj.root, proj.set, None, True)
    assert counting.full == before
    same(got, from_scratch(proj, tmp_path))
    # set.toml: from scratch.
    (proj.folder / "set.toml").write_text((proj.folder / "set.toml").read_text().replace("1700000000", "1700000001"))
    settle()
    before = counting.full
    got = replan.table_for(proj.root, proj.set, None, True)
    assert counting.full == before + 1
    same(got, from_scratch(proj, tmp_path))
    assert any("stale" in w for w in got.warnings)  # the lock's epoch is the old one
    # An edit while the lock is stale: re-planned, with the same warning.
    proj.recipe("b", deps=["a"], script="echo b3 > $out/b.txt")
    settle()
    before = counting.full
    got = replan.table_for(proj.root, proj.set, None, True)
    assert counting.full == before
    same(got, from_scratch(proj, tmp_path))


def cli_plan(proj: Project, cache: Path) -> tuple[int, str, str]:
    res = proj.cli("plan", "--json", env={"PLANNER_CACHE": str(cache)})
    return res.returncode, res.stdout, res.stderr


@pytest.mark.parametrize("breakage", ["dangling name", "cycle", "invalid toml", "name mismatch",
                                      "symlink out of the project", "removed but named", "renamed to a bad name"])
def test_a_broken_edit_fails_as_a_plan_from_scratch_fails(tmp_path: Path, breakage: str) -> None:
    proj = Project.diamond(tmp_path)
    proj.recipe("e", deps=["b"])
    proj.recipe("d", deps=["b", "c", "e"])
    proj.lock()
    settle()
    cache = tmp_path / "cache"
    assert cli_plan(proj, cache)[0] == 0
    folder = proj.folder
    if breakage == "dangling name":
        proj.recipe("e", deps=["b", "nosuch"])
    elif breakage == "cycle":
        proj.recipe("b", deps=["a", "e"])
    elif breakage == "invalid toml":
        proj.write_raw("e", 'name = "e"\nversion = \n')
    elif breakage == "name mismatch":
        proj.write_raw("e", proj.folder.joinpath("e.toml").read_text().replace('name = "e"', 'name = "f"'))
    elif breakage == "symlink out of the project":
        outside = tmp_path / "outside.toml"
        outside.write_text(folder.joinpath("e.toml").read_text().replace('name = "e"', 'name = "g"'))
        os.symlink(outside, folder / "g.toml")
    elif breakage == "removed but named":
        (folder / "e.toml").unlink()
    elif breakage == "renamed to a bad name":
        os.rename(folder / "e.toml", folder / "E.toml")
    settle()
    got = cli_plan(proj, cache)
    want = cli_plan(proj, tmp_path / "fresh")
    assert got == want
    assert got[0] != 0 and got[2].strip(), got
