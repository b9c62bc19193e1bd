"""Build roots for every set: a sandboxed build runs in a root filesystem of pinned .debs whose
digest is in its key, or the set says `build-root = "host"` and every command says it is not
hermetic; a set that says neither is refused."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

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


# -- apt inputs named per platform ---------------------------------------------------------------

def _per_platform_set(tmp_path: Path, inputs: str, *, recipe_platforms: str = "") -> Project:
    proj = Project.empty(tmp_path, target="r")
    (proj.folder / "set.toml").write_text('target = "r"\nsource-date-epoch = 1700000000\n'
                                          'platforms = ["linux/amd64", "linux/arm64"]\n')
    proj.write_raw("r", f'name = "r"\nversion = "1"\naxes = ["platform"]\n{recipe_platforms}\n{inputs}\n'
                        '[build]\nbuilder = "debian-rootfs"\n')
    return proj


def test_per_platform_apt_names_are_validated_in_one_line(tmp_path: Path) -> None:
    cases = {
        'kind = "apt"\nname = "bash"\nnames = { "linux/amd64" = "bash" }': "either name or names",
        'kind = "pypi"\nversion = "1"\nnames = { "linux/amd64" = "six" }': "names (a package name per platform) is for apt",
        'kind = "apt"\nnames = { "amd64" = "bash" }': "is not a platform such as linux/arm64",
        'kind = "apt"\nnames = { "linux/amd64" = "-o=Dir::Etc=/x" }': "is not a Debian package name",
        'kind = "apt"\nnames = { "linux/riscv64" = "bash" }': "names.linux/riscv64 is not one of the set's platforms",
        'kind = "apt"\nnames = {}': "names is empty",
    }
    for i, (body, want) in enumerate(cases.items()):
        proj = _per_platform_set(tmp_path / str(i), f"[inputs.x]\n{body}\n")
        res = proj.cli("plan")
        lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("planner: note")]
        assert res.returncode != 0 and len(lines) == 1, (body, res.stderr)
        assert lines[0].startswith("planner: error: recipes/t/r.toml") and want in lines[0], (body, lines)
    proj = _per_platform_set(tmp_path / "none", '[inputs.x]\nkind = "apt"\nnames = { "linux/arm64" = "bash" }\n',
                             recipe_platforms='platforms = ["linux/amd64"]')
    res = proj.cli("plan")
    assert res.returncode != 0 and "names covers none of the platforms r is built for" in res.stderr, res.stderr


def test_per_platform_apt_names_lock_and_plan_per_platform(tmp_path: Path, tmp_path_factory) -> None:
    # `hostname` and `debianutils`: small packages Debian builds for both architectures.
    proj = _per_platform_set(tmp_path, '[inputs.tool]\nkind = "apt"\n'
                                       'names = { "linux/amd64" = "hostname", "linux/arm64" = "debianutils" }\n'
                                       '[inputs.only-arm]\nkind = "apt"\nnames = { "linux/arm64" = "hostname" }\n')
    lock = proj.lock()
    tool, only = lock.inputs["r/tool"], lock.inputs["r/only-arm"]
    assert set(tool.pins) == {"linux/amd64", "linux/arm64"} and set(only.pins) == {"linux/arm64"}
    assert tool.pins["linux/amd64"].filename.startswith("hostname_") and tool.pins["linux/amd64"].filename.endswith("_amd64.deb")
    assert tool.pins["linux/arm64"].filename.startswith("debianutils_") and tool.pins["linux/arm64"].filename.endswith("_arm64.deb")
    assert only.pins["linux/arm64"].filename.startswith("hostname_") and only.pins["linux/arm64"].filename.endswith("_arm64.deb")
    assert "linux/amd64: hostname" in tool.origin and "linux/arm64: debianutils" in tool.origin
    assert proj.cli("lock", "--check").returncode == 0
    # Each .deb is pinned with the URL it came from, also after `lock --update` of one input
    # (which fetched through apt one package at a time, and dropped the URL).
    for pins in (tool.pins, only.pins):
        for pin in pins.values():
            assert pin.url and pin.url.startswith("http"), pin
            assert unquote(pin.url.rsplit("/", 1)[1]) == unquote(pin.filename), pin
    updated = proj.cli("lock", "--update", "r/tool")
    assert updated.returncode == 0, updated.stderr
    again = lockmod.read(proj.lockfile)
    assert {p: pin.url for p, pin in again.inputs["r/tool"].pins.items()} == {p: pin.url for p, pin in tool.pins.items()}
    rs = load_set(proj.root, proj.set)
    p = plan(rs, lockmod.read(rs.lockfile), detect_host())
    by_platform = {n.variant.platform: n for n in p.nodes.values()}
    assert set(by_platform["linux/amd64"].inputs) == {"tool"}
    assert set(by_platform["linux/arm64"].inputs) == {"tool", "only-arm"}
    assert by_platform["linux/amd64"].inputs["tool"].tree == tool.pins["linux/amd64"].tree
    assert by_platform["linux/arm64"].inputs["tool"].tree == tool.pins["linux/arm64"].tree
    # Another name on one platform: that pin is stale, and lock --check says so.
    proj.write_raw("r", (proj.folder / "r.toml").read_text().replace('"linux/arm64" = "debianutils"',
                                                                       '"linux/arm64" = "sed"'))
    check = proj.cli("lock", "--check")
    assert check.returncode != 0 and "r/tool" in check.stdout + check.stderr


def test_the_demo_build_root_is_pinned_for_both_build_platforms() -> None:
    rs = load_set(REPO, "demo")
    lk = lockmod.read(rs.lockfile)
    assert lockmod.check(rs, lk) == []
    by_platform: dict[str, set[str]] = {"linux/amd64": set(), "linux/arm64": set()}
    for id_, d in lockmod.declarations(rs).items():
        if d.recipe != "buildroot":
            continue
        for plat, pin in lk.inputs[id_].pins.items():
            by_platform[plat].add(pin.filename.split("_")[0])
            assert pin.filename.endswith((f"_{plat.split('/')[1]}.deb", "_all.deb")), (id_, pin.filename)
    assert len(by_platform["linux/amd64"]) == len(by_platform["linux/arm64"]) == 133
    assert {"binutils-x86-64-linux-gnu", "g++-12-aarch64-linux-gnu", "libquadmath0"} <= by_platform["linux/amd64"]
    assert {"binutils-aarch64-linux-gnu", "g++-12-x86-64-linux-gnu", "libhwasan0"} <= by_platform["linux/arm64"]
    assert "libquadmath0" not in by_platform["linux/arm64"]
    # An arm64 build machine plans the demo with the arm64 build root: other key, no host package.
    p = plan(rs, lk, detect_host().__class__(platform="linux/arm64"))
    roots = [n for n in p.nodes.values() if n.name == "buildroot"]
    assert [n.variant.host for n in roots] == ["linux/arm64"]
    assert all(n.preimage.host is None for n in _sandboxed(p))


# -- zstd from the build root ----------------------------------------------------------------------

def test_zstd_layers_come_from_the_build_roots_zstd_and_its_libraries(build_root_project, tmp_path: Path) -> None:
    import hashlib
    import os
    import subprocess

    from planner.oci.layer import LayerSource, compressor_id, write_layer
    from planner.oci.zstdpin import load

    proj, res = build_root_project
    root = Path(next(n["path"] for n in res["nodes"] if n["name"] == "buildroot"))
    pin = load(root)
    assert pin.version == "1.5.4"  # zstd 1.5.4+dfsg2-5 of the pinned .deb, whatever the host has
    assert all(Path(a).is_relative_to(root) for a in (pin.argv[0], pin.argv[-1]))
    # Every library the loader maps comes from the build root.
    env = {"LD_DEBUG": "libs", "LC_ALL": "C"}
    trace = subprocess.run([*pin.argv, "-V"], capture_output=True, text=True, env=env).stderr
    loaded = [line.split("calling init: ", 1)[1].strip() for line in trace.splitlines() if "calling init: " in line]
    assert loaded and all(p.startswith(str(root)) for p in loaded), loaded
    assert any("/libc.so.6" in p for p in loaded), loaded

    src = tmp_path / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hello").write_text("hello\n" * 1000)
    layer = write_layer([LayerSource(src)], tmp_path / "blobs", source_date_epoch=1700000000,
                        compression="zstd", zstd_pin=pin)
    assert layer.compressor == compressor_id("zstd", zstd_pin=pin) == "zstd:cli-1.5.4-build-root:3:mt"
    blob = tmp_path / "blobs" / "sha256" / layer.descriptor.digest.split(":", 1)[1]
    tar = subprocess.run([*pin.argv, "-dcq"], stdin=open(blob, "rb"), capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == layer.diff_id
    # The key at plan time names the build root, not a host zstd version.
    assert compressor_id("zstd", build_root=True) == "zstd:build-root:3:mt"
