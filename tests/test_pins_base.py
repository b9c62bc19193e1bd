"""The pieces of slime's base built from pins (issue 16, item 3): a root filesystem from real
.debs with wheels installed into it and a toolkit placed in it; set.toml aliases choosing the
base with one line; realising one CUDA variant."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import attrs
import pytest

from planner.builders.wheelfile import wheel_from_tree
from planner.errors import BuildError
from planner.derivation import BuilderSpec, InputRef, Node, Preimage, Variant
from planner.store import Entry

from .conftest import run_planner


def _deb(tmp: Path) -> Path:
    """A real .deb (dpkg-deb) holding /usr/bin/hello and the usr-merge directories."""
    root = tmp / "debroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text("Package: hello-pins\nVersion: 1.0\nArchitecture: amd64\n"
                                         "Maintainer: t <t@example.com>\nDescription: test\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/hello").write_text("#!/bin/sh\necho hi\n")
    (root / "usr/bin/hello").chmod(0o755)
    out = tmp / "hello-pins_1.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)], check=True,
                   capture_output=True)
    return out


def _wheel(tmp: Path) -> Path:
    src = tmp / "wsrc"
    (src / "pinsdemo").mkdir(parents=True)
    (src / "pinsdemo/__init__.py").write_text("VALUE = 42\n")
    out = tmp / "wheels"
    out.mkdir()
    return wheel_from_tree(src, ["pinsdemo"], name="pinsdemo", version="1.0", tag="py3-none-any", out_dir=out,
                           source_date_epoch=1700000000)


def _node(place: dict) -> tuple[Node, dict]:
    inputs = {"deb-hello": InputRef(decl="b/deb-hello", platform="linux/amd64", tree="t", unpacks=False,
                                    filename="hello-pins_1.0_amd64.deb"),
              "pinsdemo": InputRef(decl="b/pinsdemo", platform=None, tree="t", unpacks=False,
                                   filename="pinsdemo-1.0-py3-none-any.whl")}
    node = Node(id="b[linux/amd64]", recipe="b", name="b", version="1", variant=Variant(platform="linux/amd64"),
                key="k", preimage=Preimage(name="b", version="1", variant=Variant(platform="linux/amd64"),
                                           builder=BuilderSpec(kind="debian-rootfs", version=1,
                                                               settings={"place": place}),
                                           env={}, inputs={}, patches=(), deps={}, source_date_epoch=1700000000,
                                           impure=False),
                builder="debian-rootfs",
                deps={"toolkit": "toolkit"}, requires=(), inputs=inputs, estimate=1.0, memory=1 << 30, cores=1)
    return node, inputs


def _request(tmp: Path, node: Node):
    from planner.derivation import BuildRequest

    deb, whl = _deb(tmp), _wheel(tmp)
    toolkit = tmp / "toolkit"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "bin/nvcc").write_text("nvcc stand-in\n")
    e = lambda p, k: Entry(path=p, key=k, digest="d", kind="fixed", name=p.name)  # noqa: E731
    return BuildRequest(node=node, inputs={"deb-hello": e(deb, "a"), "pinsdemo": e(whl, "b")},
                        deps={"toolkit": e(toolkit, "c")})


def test_rootfs_with_wheels_and_a_placed_toolkit(tmp_path: Path) -> None:
    from planner.builders.roots import debian_rootfs

    node, _ = _node({"toolkit": "usr/local/cuda"})
    out = tmp_path / "out"
    out.mkdir()
    log = io.StringIO()
    debian_rootfs(node, _request(tmp_path, node), out, log)
    assert (out / "usr/bin/hello").read_text().startswith("#!/bin/sh")
    site = out / "usr/local/lib/python3.11/dist-packages"
    assert (site / "pinsdemo/__init__.py").read_text() == "VALUE = 42\n"
    assert (site / "pinsdemo-1.0.dist-info/RECORD").is_file()
    assert (out / "usr/local/cuda/bin/nvcc").read_text() == "nvcc stand-in\n"
    assert "installed pinsdemo-1.0-py3-none-any.whl" in log.getvalue()


@pytest.mark.parametrize("rel", ["../escape", "/usr/local/cuda", "usr/../../x", "."])
def test_place_outside_the_rootfs_is_refused(tmp_path: Path, rel: str) -> None:
    from planner.builders.roots import debian_rootfs

    node, _ = _node({"toolkit": rel})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BuildError, match="settings.place.toolkit"):
        debian_rootfs(node, _request(tmp_path, node), out, io.StringIO())
    assert not (tmp_path / "escape").exists()


def _aliased(root: Path, alias_to: str, *, bad: str = "") -> None:
    folder = root / "recipes/al"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "set.toml").write_text('target = "top"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n'
                                     f'aliases = {{ base = "{alias_to}" }}\n{bad}'
                                     '[cuda]\nsmall = ["sm_100a"]\nwide = ["sm_90a", "sm_100a"]\n')
    for name, text in (("one", "one\n"), ("two", "two\n")):
        (folder / f"{name}.toml").write_text(f'name = "{name}"\nversion = "1"\n[build]\nbuilder = "shell"\n'
                                             f'script = "echo {text.strip()} > $out/which"\n')
    (folder / "kern.toml").write_text('name = "kern"\nversion = "1"\naxes = ["platform", "cuda"]\n'
                                      '[build]\nbuilder = "shell"\nscript = "echo built > $out/k"\n')
    (folder / "top.toml").write_text('name = "top"\nversion = "1"\ndeps = ["base"]\nrequires = ["kern"]\n'
                                     '[build]\nbuilder = "shell"\nscript = "cp /deps/' + alias_to
                                     + '/which $out/which"\n')


def test_one_line_in_set_toml_chooses_the_recipe_an_alias_stands_for(tmp_path: Path) -> None:
    root, store = tmp_path / "proj", tmp_path / "store"
    _aliased(root, "one")
    run_planner("--root", str(root), "--store", str(store), "lock", "al")
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "al", "--target", "top",
                                 "--json").stdout)
    top = next(n for n in out["nodes"] if n["id"] == "top")
    assert (Path(top["path"]) / "which").read_text() == "one\n"
    _aliased(root, "two")
    run_planner("--root", str(root), "--store", str(store), "lock", "al")
    plan = json.loads(run_planner("--root", str(root), "--store", str(store), "plan", "al", "--json").stdout)
    assert {n["id"] for n in plan["nodes"]} >= {"two", "top"} and "one" not in {n["id"] for n in plan["nodes"]}


def test_an_alias_to_no_recipe_is_one_error_line(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _aliased(root, "nothing")
    proc = run_planner("--root", str(root), "--store", str(tmp_path / "s"), "plan", "al", check=False)
    assert proc.returncode != 0
    assert [l for l in proc.stderr.splitlines() if "error" in l] == proc.stderr.splitlines()[-1:]
    assert "alias 'base' names 'nothing'" in proc.stderr and "set.toml" in proc.stderr


def test_realise_one_cuda_variant(tmp_path: Path) -> None:
    root, store = tmp_path / "proj", tmp_path / "store"
    _aliased(root, "one")
    run_planner("--root", str(root), "--store", str(store), "lock", "al")
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "al", "--variant", "small",
                                 "--json").stdout)
    kern = [n["id"] for n in out["nodes"] if n["name"] == "kern"]
    assert kern == ["kern[linux/amd64,small]"] or (len(kern) == 1 and "sm_100a" in kern[0] and "sm_90a" not in kern[0]), kern
    bad = run_planner("--root", str(root), "--store", str(store), "realise", "al", "--variant", "nope", check=False)
    assert bad.returncode != 0 and "CUDA variant 'nope'" in bad.stderr


def _profiled(root: Path, profile: str, *, extra: str = "") -> None:
    """A set whose one `profile` line picks the base and whether `kern` is in the image."""
    folder = root / "recipes/pr"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "set.toml").write_text(
        'target = "img"\nsource-date-epoch = 1700000000\nplatforms = ["linux/amd64", "linux/arm64"]\n'
        'build-root = "host"\n'
        f'profile = "{profile}"\n'
        '[profiles.slim]\nbase = "one"\nkern = ""\n'
        '[profiles.full]\nbase = "two"\n' + extra +
        '[cuda]\nsmall = ["sm_100a"]\nwide = ["sm_90a", "sm_100a"]\n')
    for name in ("one", "two"):
        (folder / f"{name}.toml").write_text(f'name = "{name}"\nversion = "1"\n[build]\nbuilder = "shell"\n'
                                             f'script = "mkdir -p $out/opt && echo {name} > $out/opt/which"\n')
    (folder / "kern.toml").write_text('name = "kern"\nversion = "1"\naxes = ["platform", "cuda"]\n'
                                      '[build]\nbuilder = "shell"\nscript = "mkdir -p $out/opt && echo k > $out/opt/k"\n')
    (folder / "top.toml").write_text('name = "top"\nversion = "1"\ndeps = ["base"]\nrequires = ["kern"]\n'
                                     '[build]\nbuilder = "shell"\nscript = "mkdir -p $out/opt && cp /deps/*/opt/which $out/opt/top"\n')
    (folder / "img.toml").write_text('name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n'
                                     '[image]\nlayers = [["base"], ["kern", "top"]]\n')


def _plan_ids(root: Path, store: Path, *extra: str) -> set[str]:
    out = run_planner("--root", str(root), "--store", str(store), "plan", "pr", "--json", *extra).stdout
    return {n["id"] for n in json.loads(out)["nodes"]}


def test_one_profile_line_chooses_base_and_what_is_left_out(tmp_path: Path) -> None:
    root, store = tmp_path / "proj", tmp_path / "store"
    _profiled(root, "slim")
    run_planner("--root", str(root), "--store", str(store), "lock", "pr")
    slim = {i.split("[")[0] for i in _plan_ids(root, store)}
    assert slim == {"img", "one", "top"}  # kern left out of the layers and of top's requires
    _profiled(root, "full")
    run_planner("--root", str(root), "--store", str(store), "lock", "pr")
    assert {i.split("[")[0] for i in _plan_ids(root, store)} == {"img", "two", "top", "kern"}


@pytest.mark.parametrize("profile, extra, message", [
    ("nope", "", "profile 'nope' is not one of [profiles]"),
    ("slim", '[profiles.bad]\nbase = "missing"\n', "profile 'bad': 'base' names 'missing'"),
    ("drop", '[profiles.drop]\nbase = ""\n', "leaves out 'base', which recipe 'top' builds with (deps)"),
])
def test_a_bad_profile_is_one_error_line(tmp_path: Path, profile: str, extra: str, message: str) -> None:
    root = tmp_path / "proj"
    _profiled(root, profile, extra=extra)
    proc = run_planner("--root", str(root), "--store", str(tmp_path / "s"), "plan", "pr", check=False)
    assert proc.returncode != 0
    assert [l for l in proc.stderr.splitlines() if "error" in l] == proc.stderr.splitlines()[-1:]
    assert message in proc.stderr and "set.toml" in proc.stderr


def test_realise_platform_and_variant_restrict_the_image(tmp_path: Path) -> None:
    """An image covers every platform and CUDA variant of its set; --platform/--variant make it
    for those alone (no copy of the set), and every other node keeps its key."""
    root, store = tmp_path / "proj", tmp_path / "store"
    _profiled(root, "full")
    run_planner("--root", str(root), "--store", str(store), "lock", "pr")
    whole = json.loads(run_planner("--root", str(root), "--store", str(store), "plan", "pr", "--json").stdout)
    keys = {n["id"]: n["key"] for n in whole["nodes"]}
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "pr",
                                 "--platform", "linux/amd64", "--variant", "small", "--json").stdout)
    built = {n["id"]: n for n in out["nodes"]}
    assert {i.split("[")[0] for i in built} == {"img", "two", "top", "kern"}
    assert all("arm64" not in i for i in built)
    for nid, n in built.items():
        if nid != "img":
            assert n["key"] == keys[nid], nid  # the same nodes as in the whole set's plan
    assert built["img"]["key"] != keys["img"]
    index = json.loads((Path(built["img"]["path"]) / "index.json").read_text())
    variants = {m["annotations"]["dev.planner.cuda.variant"] for m in index["manifests"]}
    platforms = [m["platform"]["architecture"] for m in index["manifests"] if "platform" in m]
    assert variants == {"small"} and platforms == ["amd64"]


def _deb_with_link(tmp: Path, link: str, target: Path) -> Path:
    """A real .deb that ships one symlink, `link` -> the absolute `target` outside any root."""
    root = tmp / "evilroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text("Package: evil\nVersion: 1\nArchitecture: amd64\n"
                                         "Maintainer: t <t@example.com>\nDescription: test\n")
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(target)
    out = tmp / "evil_1_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.mark.parametrize("link, outside", [
    ("usr/local/lib/python3.11/dist-packages/pinsdemo", "dir"),  # a directory the wheel writes into
    ("usr/local/lib/python3.11/dist-packages/pinsdemo/__init__.py", "dir/planted.py"),  # a dangling file link
])
def test_a_wheel_is_never_written_through_a_link_a_deb_shipped(tmp_path: Path, link: str, outside: str) -> None:
    """A .deb's absolute link on the wheel's install path: the build is refused in one line
    naming it, and nothing is written outside the root filesystem."""
    from planner.builders.roots import debian_rootfs
    from planner.errors import PlannerError

    node, _ = _node({})
    escape = tmp_path / "escape"
    (escape / "dir").mkdir(parents=True)
    req = _request(tmp_path, node)
    evil = _deb_with_link(tmp_path, link, escape / outside)
    req.inputs["deb-hello"] = attrs.evolve(req.inputs["deb-hello"], path=evil)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PlannerError) as info:
        debian_rootfs(node, req, out, io.StringIO())
    line = info.value.line()
    assert "\n" not in line and "pinsdemo" in line and "symlink" in line, line
    assert list(escape.rglob("*")) == [escape / "dir"], list(escape.rglob("*"))
