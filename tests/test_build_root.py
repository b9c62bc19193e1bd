"""Build roots for every set: a sandboxed build runs in a root filesystem of pinned .debs whose
digest is in its key, or the set says `build-root = "host"` and every command says it is not
hermetic; a set that says neither is refused."""

from __future__ import annotations

import json
from pathlib import Path

from planner import lock as lockmod
from planner.derivation import BUILD_ROOT_MOUNT
from planner.graph import plan, uses_build_root
from planner.host import detect_host
from planner.recipes import load_set

from .support.project import Project

REPO = Path(__file__).resolve().parent.parent
# Sets of this repository that build on the host's /usr, and why (each a visible opt-out).
ON_HOST: dict[str, str] = {}


def _preimage(shown: str) -> dict:
    return json.loads("\n".join(line for line in shown.splitlines() if not line.startswith("#")))


def _sandboxed(p):
    """Nodes that run a sandboxed build on the build machine's side (and images, whose compressor
    comes from the build root); builds inside a target root filesystem (`rootfs`) do not."""
    return [n for n in p.nodes.values()
            if uses_build_root(n.builder, "rootfs" if "rootfs" in n.deps else None) and not n.unavailable]


def test_every_sandboxed_node_of_every_set_in_the_repo_keys_a_build_root_and_no_host_package() -> None:
    sets = sorted(p.name for p in (REPO / "recipes").iterdir() if (p / "set.toml").exists())
    assert "demo" in sets
    for name in sets:
        rs = load_set(REPO, name)
        p = plan(rs, lockmod.read(rs.lockfile), detect_host())
        if name in ON_HOST:
            assert rs.config.on_host, name
            continue
        sandboxed = _sandboxed(p)
        assert sandboxed, name
        for n in sandboxed:
            root = p.nodes[n.deps[BUILD_ROOT_MOUNT]]
            assert root.name == rs.config.build_root and root.builder == "debian-rootfs", n.id
            assert n.preimage.host is None, n.id
            assert n.preimage.deps[BUILD_ROOT_MOUNT] == root.key, n.id


def test_shell_and_unpack_run_in_the_build_root_and_show_names_its_digest(build_root_project) -> None:
    proj, res = build_root_project
    by_name = {n["name"]: n for n in res["nodes"]}
    out_b = Path(by_name["b"]["path"])
    assert (out_b / "where.txt").read_text() == "pinned-usr\n"  # the build root's /usr, not the host's
    assert (out_b / "python.txt").read_text() == "3.11.2\n"  # python3.11-minimal 3.11.2-6+deb12u* pinned
    assert (out_b / "a.txt").read_text() == "alpha\n"
    root_digest = by_name["buildroot"]["digest"]
    for name in ("a", "b"):
        shown = proj.cli("show", name, "--set", proj.set)
        assert shown.returncode == 0, shown.stderr
        assert f"output {root_digest}" in shown.stdout, shown.stdout
        pre = _preimage(shown.stdout)
        assert "host" not in pre and BUILD_ROOT_MOUNT in pre["deps"], pre
        assert "NOT HERMETIC" not in shown.stdout + shown.stderr
    # Its plan is a set of this test suite: the same rule as for the repository's sets.
    rs = load_set(proj.root, proj.set)
    p = plan(rs, lockmod.read(rs.lockfile), detect_host())
    assert {n.name for n in _sandboxed(p)} == {"a", "b"}
    assert all(n.preimage.host is None for n in p.nodes.values())


def test_a_set_without_a_build_root_is_refused_for_sandboxed_builds(tmp_path: Path) -> None:
    proj = Project.empty(tmp_path, target="b")
    (proj.folder / "set.toml").write_text((proj.folder / "set.toml").read_text().replace('build-root = "host"\n', ""))
    proj.recipe("b", script="echo hi > $out/x")
    proj.lock()
    for cmd in (("plan",), ("realise",), ("show", "b")):
        res = proj.cli(*cmd)
        assert res.returncode != 0, cmd
        lines = [line for line in res.stderr.splitlines() if line.startswith("planner: error")]
        assert len(lines) == 1, res.stderr
        assert "recipes/t/set.toml: build-root" in lines[0] and 'build-root = \\"host\\"' not in lines[0], lines
        assert 'build-root = "host"' in lines[0] and "b is a sandboxed shell build" in lines[0], lines
    assert not (proj.store / "index.sqlite").exists() or proj.cli("store", "roots").returncode == 0


def test_the_host_opt_out_is_loud_in_plan_show_and_why(tmp_path: Path) -> None:
    from planner.causes import classify, diff_preimages

    proj = Project.empty(tmp_path, target="b")
    proj.recipe("b", script="echo hi > $out/x")
    proj.lock()
    res = proj.cli("plan")
    assert res.returncode == 0, res.stderr
    assert "NOT HERMETIC" in res.stderr and 'build-root = "host"' in res.stderr, res.stderr
    shown = proj.cli("show", "b", "--set", proj.set)
    assert shown.returncode == 0, shown.stderr
    assert "# build root: HOST /usr" in shown.stdout and "NOT HERMETIC" in shown.stdout
    pre = _preimage(shown.stdout)
    assert "bash" in pre["host"] and BUILD_ROOT_MOUNT not in pre["deps"]
    # `why`: a host package that moved names the opt-out.
    moved = dict(pre, host={**pre["host"], "bash": "9.9-other"})
    (change,) = diff_preimages(pre, moved)
    cause = classify(change, "b")
    assert cause is not None and cause.kind == "host-package"
    assert "host package bash" in cause.describe() and "NOT HERMETIC" in cause.describe()
