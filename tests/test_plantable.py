"""The cached plan table of `planner plan`: a warm plan is read, never stale.

Real `planner plan` processes on the small diamond set (tests/support/project.py) with a cache
folder of their own; every change that the no-op cache of `planner realise` watches must make
the table a miss, and what a warm plan prints must be what planning from scratch prints.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from planner import plantable
from tests.support.project import Project


@pytest.fixture
def proj(tmp_path: Path) -> Project:
    p = Project.diamond(tmp_path)
    p.lock()
    # Older than the racy window (the table is not cached from files changed just before).
    time.sleep(0.1)
    return p


def plan_json(proj: Project, cache: Path, *extra: str) -> str:
    res = proj.cli("plan", "--json", *extra, env={"PLANNER_CACHE": str(cache)})
    assert res.returncode == 0, res.stderr
    return res.stdout


def fresh(proj: Project, tmp_path: Path) -> str:
    """The plan made from scratch: an empty cache folder of its own."""
    d = tmp_path / f"fresh-{time.monotonic_ns()}"
    return plan_json(proj, d)


def hit(proj: Project, cache: Path, target: str | None = None) -> bool:
    old = os.environ.get("PLANNER_CACHE")
    os.environ["PLANNER_CACHE"] = str(cache)
    try:
        return plantable.cached(proj.root, proj.set, target, True) is not None
    finally:
        if old is None:
            del os.environ["PLANNER_CACHE"]
        else:
            os.environ["PLANNER_CACHE"] = old


def test_a_warm_plan_is_read_from_the_table_and_prints_what_planning_prints(proj: Project, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert not hit(proj, cache)
    first = plan_json(proj, cache)
    assert hit(proj, cache)
    assert plan_json(proj, cache) == first == fresh(proj, tmp_path)
    # Text too, and the cached table is per target and per sandbox setting.
    text = proj.cli("plan", env={"PLANNER_CACHE": str(cache)})
    assert text.returncode == 0 and text.stdout == proj.cli("plan", env={"PLANNER_CACHE": str(tmp_path / "x")}).stdout
    assert not hit(proj, cache, target="b")
    assert plan_json(proj, cache, "--target", "b") != first
    assert hit(proj, cache, target="b") and hit(proj, cache)


def test_the_store_is_asked_on_every_warm_plan(proj: Project, tmp_path: Path) -> None:
    """Valid outputs are not part of the table: a realise between two warm plans shows."""
    cache = tmp_path / "cache"
    before = plan_json(proj, cache)
    assert '"action": "build"' in before and '"action": "reuse"' not in before
    res = proj.cli("realise", env={"PLANNER_CACHE": str(cache)})
    assert res.returncode == 0, res.stderr
    after = plan_json(proj, cache)
    assert hit(proj, cache)
    assert '"action": "build"' not in after and after == fresh(proj, tmp_path)


@pytest.mark.parametrize("change", ["edit recipe", "new recipe file", "removed recipe file", "set.toml",
                                    "lockfile", "edit source", "new source file", "removed source file",
                                    "renamed recipe folder entry"])
def test_every_change_planning_could_see_is_a_miss(proj: Project, tmp_path: Path, change: str) -> None:
    cache = tmp_path / "cache"
    before = plan_json(proj, cache)
    assert hit(proj, cache)
    if change == "edit recipe":  # same size: only the signature's times and the content differ
        path = proj.folder / "b.toml"
        path.write_text(path.read_text().replace("echo b >", "echo B >"))
    elif change == "new recipe file":
        (proj.folder / "e.toml").write_text('name = "e"\nversion = "1"\n\n[build]\nbuilder = "shell"\nscript = "true"\n')
    elif change == "removed recipe file":
        proj.recipe("e", script="true")
        plan_json(proj, cache)
        time.sleep(0.1)
        plan_json(proj, cache)
        assert hit(proj, cache)
        (proj.folder / "e.toml").unlink()
    elif change == "set.toml":
        with open(proj.folder / "set.toml", "a") as f:
            f.write("# a comment\n")
    elif change == "lockfile":
        with open(proj.lockfile, "a") as f:
            f.write("\n")
    elif change == "edit source":
        (proj.root / "src/a/notes.txt").write_text("# another comment\n")
    elif change == "new source file":
        (proj.root / "src/a/new.txt").write_text("new\n")
    elif change == "removed source file":
        (proj.root / "src/a/notes.txt").unlink()
    elif change == "renamed recipe folder entry":
        os.rename(proj.folder / "d.toml", proj.folder / "d.toml.off")
        os.rename(proj.folder / "d.toml.off", proj.folder / "d.toml")
    assert not hit(proj, cache)
    after = plan_json(proj, cache)
    assert after == fresh(proj, tmp_path)
    if change == "edit recipe":
        assert after != before  # b's key moved, and d's above it


def test_a_file_changed_while_planning_is_not_cached(proj: Project, tmp_path: Path, monkeypatch) -> None:
    """The table is written only from files that were not changed since shortly before
    planning began: an edit racing the read could otherwise be cached under its new signature."""
    from planner import planning

    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    started = plantable.now_ns()
    planned = planning.load(proj.root, proj.set)
    table = plantable.from_planned(planned)
    proj.recipe("b", deps=["a"], script="echo raced > $out/b.txt")  # after the read, before the save
    plantable.save(table, planned, started, None, True)
    assert plantable.cached(proj.root, proj.set, None, True) is None
    time.sleep(0.1)
    started = plantable.now_ns()
    planned = planning.load(proj.root, proj.set)
    plantable.save(plantable.from_planned(planned), planned, started, None, True)
    got = plantable.cached(proj.root, proj.set, None, True)
    assert got is not None and got.nodes == plantable.from_planned(planned).nodes


def test_an_unreadable_or_foreign_table_is_a_miss(proj: Project, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    plan_json(proj, cache)
    (path,) = (cache / "plans").glob("*.table")
    path.write_bytes(b"not marshal")
    assert not hit(proj, cache)
    assert plan_json(proj, cache) == fresh(proj, tmp_path)
    assert hit(proj, cache)
    # Its re-planning state beside it, unreadable, after an edit: planned from scratch.
    (state,) = (cache / "plans").glob("*.table.state")
    state.write_bytes(b"not marshal either")
    proj.recipe("c", deps=["a"], script="echo c2 > $out/c.txt")
    time.sleep(0.05)
    assert plan_json(proj, cache) == fresh(proj, tmp_path)


def test_the_views_generations_and_critical_chain_follow_their_definition() -> None:
    """`planview._shape` (one loop per node, no key function) against its definition written
    with max(): each node one generation past its deepest dependency; the chain through each
    node's slowest dependency by (expected finish, id), ties included. The durations are
    random estimates given to both (data), not measured times."""
    import random

    from planner.planview import _shape

    def definition(deps, estimates):
        level, finish, via = {}, {}, {}
        for nid, ds in deps.items():
            level[nid] = 1 + max((level[d] for d in ds), default=-1)
            slowest = max(ds, key=lambda d: (finish[d], d), default=None)
            via[nid] = slowest
            finish[nid] = estimates.get(nid, 0.0) + (finish[slowest] if slowest is not None else 0.0)
        gens = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for nid, lv in level.items():
            gens[lv].append(nid)
        chain, node = [], max(finish, key=lambda n: (finish[n], n), default=None)
        while node is not None:
            chain.append(node)
            node = via[node]
        return [sorted(g) for g in gens], chain[::-1]

    rng = random.Random(4)
    for _ in range(3000):
        ids = [f"n{i}" for i in rng.sample(range(100), rng.randint(0, 12))]
        deps = {nid: sorted(set(rng.sample(ids[:i], rng.randint(0, min(i, 3))))) for i, nid in enumerate(ids)}
        estimates = {nid: rng.choice([0, 1, 10, 2.5, 10.0]) for nid in ids if rng.random() < 0.9}
        assert _shape(deps, estimates) == definition(deps, estimates)
