"""PEP 517 frontends of the wheel builders, with real parts: setuptools from PyPI, g++ and
pybind11 compiling a Megatron-style optional helper, nvcc compiling an apex-style extension
through its own setup.py for the variant's arch list.

The recipes live in tests/data/frontends and are added to a copy of the realised demo (its CUDA
toolkit node is reused), then locked for real against PyPI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from planner.builders.cuda import torch_arch_list

from .conftest import REPO, run_planner

DATA = Path(__file__).parent / "data" / "frontends"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(demo_runs: dict, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("frontends")
    proj, store = base / "proj", base / "store"
    for sub in ("recipes", "patches", "lockfiles"):
        shutil.copytree(REPO / sub, proj / sub)
    for recipe in (DATA / "recipes").glob("*.toml"):
        shutil.copy(recipe, proj / "recipes/demo" / recipe.name)
    shutil.copytree(DATA / "src", proj / "recipes/demo/src", dirs_exist_ok=True)
    shutil.copytree(demo_runs["store_a"], store, symlinks=True)
    run_planner("--root", str(proj), "--store", str(store), "lock", "demo")
    return proj, store


def _realise(project, target: str, *args: str, check: bool = True):
    proj, store = project
    return run_planner("--root", str(proj), "--store", str(store), "realise", "demo", "--target", target,
                       "--json", *args, check=check)


def _wheel(path: str) -> Path:
    (whl,) = Path(path).glob("*.whl")
    return whl


def test_required_extension_is_built_with_build_deps_on_pythonpath(project, tmp_path):
    """setup.py runs `python3 -m pybind11 --includes` in a subprocess: pybind11 exists only in
    the pinned build environment, so this compiles only if that is on PYTHONPATH too."""
    out = json.loads(_realise(project, "helpers").stdout)
    whl = _wheel(out["nodes"][-1]["path"])
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path)
    assert any(n.startswith("helpers_mini/helpers_cpp.") and n.endswith(".so") for n in names), names
    # The helper really is a working extension module of this Python.
    probe = "import helpers_mini.helpers_cpp as h; print(h.build_sample_index(3, 4))"
    got = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert got.stdout.strip() == "13", got.stderr


def test_failed_required_extension_fails_the_build(project):
    proj, store = project
    before = {p.name for p in store.iterdir()}
    proc = _realise(project, "helpers-broken", check=False)
    assert proc.returncode != 0
    assert "helpers-broken" in proc.stderr and "does not compile with HELPERS_BREAK" in proc.stderr
    log = Path(re.search(r"log: (\S+)", proc.stderr).group(1)).read_text()
    assert "extension helpers_mini.helpers_cpp is optional in setup.py; required here" in log
    # The log shows what ran: the frontend by name, not the planner's own script line by line.
    (ran,) = [line for line in log.splitlines() if "<planner's PEP 517 frontend>" in line]
    assert ran.startswith("+ ") and "setuptools.build_meta" in ran and "import importlib" not in log, log[:2000]
    assert not [p for p in store.iterdir() if p.name not in before and "helpers-broken" in p.name]
    # What require-extensions prevents: the same source and setup.py without it "succeed" with
    # a wheel that silently lacks the helper.
    lenient = json.loads(_realise(project, "helpers-lenient").stdout)
    with zipfile.ZipFile(_wheel(lenient["nodes"][-1]["path"])) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".so")]


@pytest.fixture(scope="module")
def kern(project) -> dict:
    return json.loads(_realise(project, "kern").stdout)


def test_pep517_cuda_wheel_builds_for_the_variants_archs(kern, cuobjdump, tmp_path):
    nodes = [n for n in kern["nodes"] if n["name"] == "kern"]
    assert {n["variant"] for n in nodes} == {"linux/amd64, sm_90a+sm_100a, host linux/amd64",
                                             "linux/amd64, sm_100a, host linux/amd64"}
    for n in nodes:
        archs = ["sm_90a", "sm_100a"] if "sm_90a" in n["variant"] else ["sm_100a"]
        whl = _wheel(n["path"])
        dest = tmp_path / n["key"]
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(dest)
            info = json.loads(zf.read("kern/_buildinfo.json"))
        # The arch list in torch's dotted form, from the variant; no GPU visible; nvcc-threads as
        # NVCC_APPEND_FLAGS; the recipe's cores (not this machine's) as MAX_JOBS; --with-kernel
        # came via config-settings. The three .cu files were compiled at once, each nvcc as
        # process 1 of its own PID namespace with a temporary folder of its own: the temporary-file
        # name in every object is the same whatever ran beside it (a shared folder would have given
        # two of them another `_<n>`, and the build's own pids would show through without a
        # namespace).
        assert info == {"TORCH_CUDA_ARCH_LIST": " ".join(torch_arch_list(archs)), "CUDA_VISIBLE_DEVICES": "",
                        "NVCC_APPEND_FLAGS": "--threads 2", "MAX_JOBS": "3",
                        "tmpxft": {cu: ["tmpxft_00000001_00000000"] for cu in ("kern.cu", "part2.cu", "part3.cu")}}
        (so,) = dest.glob("kern/_kern*.so")
        listed = subprocess.run([str(cuobjdump), "--list-elf", str(so)], capture_output=True, text=True,
                                check=True).stdout
        cubins = sorted({line.rsplit(".", 2)[-2] for line in listed.splitlines() if ".cubin" in line})
        assert cubins == sorted(archs), listed


def test_pep517_cuda_wheel_rebuilds_bit_identically(project, kern):
    proc = _realise(project, "kern", "--check")
    checks = {c["node"]: c for c in json.loads(proc.stdout)["checks"]}
    kerns = [c for n, c in checks.items() if n.startswith("kern[")]
    assert len(kerns) == 2 and all(c["ok"] for c in checks.values()), checks


def test_parallel_nvcc_in_a_shell_step_writes_the_same_names(project):
    """Three nvcc started at once from a script by their full path, sharing the step's TMPDIR:
    each is process 1 of its own namespace with a folder of its own, so every object records the
    same temporary-file name (unwrapped, each recorded its own pid), and a rebuild is identical."""
    out = json.loads(_realise(project, "kern-make").stdout)
    (node,) = [n for n in out["nodes"] if n["name"] == "kern-make"]
    names = {o.name: sorted(set(re.findall(rb"tmpxft_[0-9a-f]{8}_[0-9a-f]{8}", o.read_bytes())))
             for o in Path(node["path"]).glob("*.o")}
    assert names == {f"k{i}.o": [b"tmpxft_00000001_00000000"] for i in (1, 2, 3)}
    checks = json.loads(_realise(project, "kern-make", "--check").stdout)["checks"]
    assert [c["ok"] for c in checks if c["node"].startswith("kern-make")] == [True], checks


def test_torch_arch_list():
    assert torch_arch_list(["sm_120+PTX", "sm_90a", "sm_80", "sm_100f"]) == ["8.0", "9.0a", "10.0f", "12.0+PTX"]
    assert torch_arch_list("9.0a;10.0") == ["9.0a", "10.0"]


def test_build_backend_without_a_toml_parser(tmp_path, monkeypatch):
    """The base image's Python 3.10 has no tomllib (nor, often, tomli): the backend is still read."""
    from planner.builders import runtime

    for mod in ("tomllib", "tomli", "pip._vendor.tomli"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\nbuild-backend = "wrong.table"\n\n'
        "[build-system]  # comment\nrequires = ['hatchling']\nbuild-backend = 'hatchling.build'  # why\n\n"
        '[tool.x]\nbuild-backend = "also.wrong"\n')
    assert runtime.build_backend(tmp_path) == "hatchling.build"
    (tmp_path / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\n')
    assert runtime.build_backend(tmp_path) == "setuptools.build_meta:__legacy__"
    (tmp_path / "pyproject.toml").unlink()
    assert runtime.build_backend(tmp_path) == "setuptools.build_meta:__legacy__"


# -- the build environment: real sdists from PyPI ----------------------------------------------

def _store_names(project) -> set[str]:
    return {p.name for p in project[1].iterdir()}


def test_backend_path_runs_an_in_tree_backend(project, tmp_path):
    """frozenlist's build-backend `pep517_backend.hooks` exists only under its backend-path."""
    out = json.loads(_realise(project, "frozenlist").stdout)
    whl = _wheel(out["nodes"][-1]["path"])
    assert whl.name == "frozenlist-1.5.0-py3-none-any.whl"
    with zipfile.ZipFile(whl) as zf:
        zf.extractall(tmp_path)
    probe = "import frozenlist; f = frozenlist.FrozenList([1, 2]); f.freeze(); print(f.frozen, len(f))"
    got = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert got.stdout.strip() == "True 2", got.stderr


def test_require_extensions_checks_the_built_wheel(project):
    """MarkupSafe's setup.py catches its own compiler failure and builds a pure wheel; with
    require-extensions that wheel is refused, and nothing enters the store."""
    before = _store_names(project)
    proc = _realise(project, "markupsafe-nocc", "--platform", "linux/amd64", check=False)
    assert proc.returncode != 0
    assert "require-extensions" in proc.stderr and "no compiled module" in proc.stderr, proc.stderr
    assert not [n for n in _store_names(project) - before if "markupsafe-nocc" in n]


def test_native_wheel_matches_its_platform(project, tmp_path):
    from planner.builders.cuda import elf_machine
    from planner.wheelplatform import wheel_platform_problems

    out = json.loads(_realise(project, "markupsafe", "--platform", "linux/amd64").stdout)
    (node,) = [n for n in out["nodes"] if n["name"] == "markupsafe"]
    whl = _wheel(node["path"])
    assert whl.name.endswith("_x86_64.whl"), whl.name
    with zipfile.ZipFile(whl) as zf:
        zf.extractall(tmp_path)
    (so,) = tmp_path.glob("markupsafe/_speedups*.so")
    assert elf_machine(so) == 62
    # The same wheel in a linux/arm64 node, or in a node without a platform axis, is refused.
    assert "x86-64 code, not linux/arm64" in " ".join(wheel_platform_problems(whl, "linux/arm64"))
    assert "no platform axis" in " ".join(wheel_platform_problems(whl, None))


def test_native_wheel_for_another_platform_is_refused_before_anything_builds(project):
    before = _store_names(project)
    proc = _realise(project, "markupsafe", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "markupsafe [linux/arm64]" in lines[0], proc.stderr
    assert "builds only for the machine it runs on" in lines[0] and "--platform linux/amd64" in lines[0]
    assert _store_names(project) == before


def test_wheel_with_native_code_needs_a_platform_axis(project):
    before = _store_names(project)
    proc = _realise(project, "markupsafe-noaxis", check=False)
    assert proc.returncode != 0
    assert "contains native code" in proc.stderr and 'axes = ["platform"]' in proc.stderr, proc.stderr
    assert not [n for n in _store_names(project) - before if "markupsafe-noaxis" in n]


def test_tools_put_a_wheels_programs_on_path(project, tmp_path):
    """settings `tools`: the ninja wheel's program is on PATH during the build (torch's
    BuildExtension compiles in parallel only through it); without the setting it is not."""
    out = json.loads(_realise(project, "tooluser").stdout)
    with zipfile.ZipFile(_wheel(out["nodes"][-1]["path"])) as zf:
        recorded = zf.read("tooluser/_ninja.py").decode()
    assert re.fullmatch(r"VERSION = '1\.13\.\d+[^']*'\n", recorded), recorded
    proc = _realise(project, "tooluser-notools", check=False)
    assert proc.returncode != 0
    log = Path(re.search(r"log: (\S+)", proc.stderr).group(1)).read_text()
    assert "ninja is not on PATH" in log


def test_tools_must_name_inputs(tmp_path):
    copy = tmp_path / "proj"
    for sub in ("recipes", "patches", "lockfiles"):
        shutil.copytree(REPO / sub, copy / sub)
    shutil.copytree(DATA / "src/tooluser", copy / "recipes/demo/src/tooluser")
    recipe = copy / "recipes/demo/tooluser.toml"
    recipe.write_text((DATA / "recipes/tooluser.toml").read_text().replace('tools = ["ninja"]', 'tools = ["ninja", "cmake"]'))
    proc = run_planner("--root", str(copy), "plan", "demo", check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("planner: error")]
    assert len(lines) == 1 and "tooluser.toml" in lines[0] and "tools" in lines[0] and "cmake" in lines[0], proc.stderr
