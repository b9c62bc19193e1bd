"""A base image from a registry, pinned by digest per platform: pulled through the OCI
distribution API, unpacked with whiteouts, and used as the root filesystem a build runs in
(the way slime's extensions build inside the sglang image)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.registry import registry  # noqa: F401  (session fixture)

from .conftest import REPO, run_planner

pytestmark = pytest.mark.slow


def _project(root: Path, ref: str) -> None:
    folder = root / "recipes/onbase"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "probe"\nsource-date-epoch = 1700000000\nbuild-root = "host"\n'
                                     'platforms = ["linux/amd64", "linux/arm64"]\n')
    (folder / "pulled.toml").write_text(
        f'name = "pulled"\nversion = "1"\n[source]\nkind = "image"\nurl = "{ref}"\n'
        '[build]\nbuilder = "image-rootfs"\n')
    src = root / "src/probe"
    shutil.copytree(REPO / "recipes/demo/src/base-probe", src)
    (folder / "probe.toml").write_text(
        'name = "probe"\nversion = "1.0"\nplatforms = ["linux/amd64"]\n'
        '[source]\nkind = "path"\npath = "src/probe"\n'
        '[inputs.setuptools]\nkind = "pypi"\nname = "setuptools"\nversion = "75.8.0"\ndist = "wheel"\n'
        '[inputs.wheel]\nkind = "pypi"\nname = "wheel"\nversion = "0.45.1"\ndist = "wheel"\n'
        '[build]\nbuilder = "python-wheel"\nrootfs = "pulled"\n')
    # An image on the pulled base: its layers reused by digest, plus a file-tree layer group.
    (folder / "extra.toml").write_text(
        'name = "extra"\nversion = "1"\n[build]\nbuilder = "shell"\n'
        'script = "mkdir -p $out/etc && echo extra > $out/etc/extra.txt"\n')
    (folder / "img.toml").write_text(
        'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n'
        '[image]\nbase = "pulled"\nlayers = [["extra"]]\ncompression = "gzip"\n'
        '[image.env]\nLANG = "C"\nEXTRA = "1"\n')


def test_registry_base_pinned_by_digest_and_built_inside(demo_runs: dict, registry: str,  # noqa: F811
                                                         tmp_path: Path) -> None:
    store_a = str(demo_runs["store_a"])
    pushed = run_planner("--store", store_a, "push", "demo", f"{registry}/base:v1", "--plain-http").stdout.split()
    index_digest = pushed[1]
    root, store = tmp_path / "p", tmp_path / "s"
    _project(root, f"{registry}/base:v1")
    run_planner("--root", str(root), "--store", str(store), "lock", "onbase")
    lock = (root / "lockfiles/onbase.lock").read_text()
    # One pin per platform: the platform's manifest digest (not the mutable tag, not the index).
    index = json.loads(Path(demo_runs["a"]["output"], "blobs/sha256", index_digest.split(":")[1]).read_text())
    for m in index["manifests"]:
        assert m["digest"] in lock, m["platform"]
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "onbase", "--json").stdout)
    wheel = next(Path(out["output"]).glob("*.whl"))
    assert wheel.name.startswith("base_probe-1.0")  # setup.py refuses to build where the host's /usr shows
    rootfs = next(Path(n["path"]) for n in out["nodes"] if n["name"] == "pulled")
    assert (rootfs / "usr/local/lib/python3.11/dist-packages/slime_mini/__init__.py").is_file()
    # Moving the tag does not move the pin: the lock names digests, and realise uses them.
    run_planner("--store", store_a, "push", "demo", f"{registry}/base:v1", "--variant", "sm100a", "--plain-http")
    again = json.loads(run_planner("--root", str(root), "--store", str(tmp_path / "s2"), "realise", "onbase",
                                   "--json").stdout)
    assert {n["id"]: n["digest"] for n in again["nodes"]} == {n["id"]: n["digest"] for n in out["nodes"]}


def test_image_on_a_registry_base_reuses_its_layers_and_config(demo_runs: dict, registry: str,  # noqa: F811
                                                               tmp_path: Path) -> None:
    store_a = str(demo_runs["store_a"])
    pushed = run_planner("--store", store_a, "push", "demo", f"{registry}/base:reuse", "--plain-http").stdout.split()
    blobs = Path(demo_runs["a"]["output"], "blobs/sha256")
    index = json.loads((blobs / pushed[1].split(":")[1]).read_text())
    root, store = tmp_path / "p", tmp_path / "s"
    _project(root, f"{registry}/base:reuse")
    run_planner("--root", str(root), "--store", str(store), "lock", "onbase")
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "onbase",
                                 "--target", "img", "--json").stdout)
    layout = Path(out["output"])
    ours = json.loads((layout / "index.json").read_text())["manifests"][0]
    mine = json.loads((layout / "blobs/sha256" / ours["digest"].split(":")[1]).read_text())
    assert len(mine["manifests"]) == 2
    for m in index["manifests"]:
        plat = m["platform"]
        base = json.loads((blobs / m["digest"].split(":")[1]).read_text())
        base_cfg = json.loads((blobs / base["config"]["digest"].split(":")[1]).read_text())
        (got,) = [x for x in mine["manifests"] if x["platform"]["architecture"] == plat["architecture"]]
        man = json.loads((layout / "blobs/sha256" / got["digest"].split(":")[1]).read_text())
        cfg = json.loads((layout / "blobs/sha256" / man["config"]["digest"].split(":")[1]).read_text())
        # The base's blobs, unchanged and in order, then one layer of ours.
        assert [x["digest"] for x in man["layers"][:-1]] == [x["digest"] for x in base["layers"]]
        assert cfg["rootfs"]["diff_ids"][:-1] == base_cfg["rootfs"]["diff_ids"]
        # FROM semantics: the base's env and cmd carry over; the recipe's env wins by name.
        env = dict(e.split("=", 1) for e in cfg["config"]["Env"])
        base_env = dict(e.split("=", 1) for e in base_cfg["config"]["Env"])
        assert env == {**base_env, "LANG": "C", "EXTRA": "1"}
        assert cfg["config"]["Cmd"] == base_cfg["config"]["Cmd"]
    # umoci reads it, and the file tree group landed at /.
    import shutil as _sh
    import subprocess

    if _sh.which("umoci"):
        bundle = tmp_path / "bundle"
        rootless = [] if os.geteuid() == 0 else ["--rootless"]
        subprocess.run(["umoci", "unpack", *rootless, "--image", f"{layout}:default-linux-amd64", str(bundle)],
                       check=True, capture_output=True)
        assert (bundle / "rootfs/etc/extra.txt").read_text() == "extra\n"
        assert (bundle / "rootfs/usr/local/lib/python3.11/dist-packages/slime_mini/__init__.py").is_file()


def _emulated_project(demo_runs: dict, registry: str, tmp_path: Path, tag: str) -> tuple[Path, Path]:
    """A project on the demo's image pushed as `base:TAG`; skips where arm64 is not emulated here."""
    from planner.emulation import emulator
    from planner.host import host_platform

    if host_platform() != "linux/amd64" or emulator("linux/arm64") is None:
        pytest.skip("no binfmt_misc handler with the F flag for arm64 here (.ci/setup registers "
                    "qemu-user-static's where the kernel allows it)")
    run_planner("--store", str(demo_runs["store_a"]), "push", "demo", f"{registry}/base:{tag}", "--plain-http")
    root, store = tmp_path / "p", tmp_path / "s"
    _project(root, f"{registry}/base:{tag}")
    return root, store


def _arm64_wheel(name: str, top: str = "") -> str:
    """A python-wheel recipe built inside the pulled base's linux/arm64 root filesystem."""
    return (f'name = "{name}"\nversion = "1.0"\nplatforms = ["linux/arm64"]\n{top}'
            f'[source]\nkind = "path"\npath = "src/{name}"\n'
            '[inputs.setuptools]\nkind = "pypi"\nname = "setuptools"\nversion = "75.8.0"\ndist = "wheel"\n'
            '[inputs.wheel]\nkind = "pypi"\nname = "wheel"\nversion = "0.45.1"\ndist = "wheel"\n'
            '[build]\nbuilder = "python-wheel"\nrootfs = "pulled"\n')


def _realise_arm64(root: Path, store: Path, target: str, *more: str) -> dict:
    return json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "onbase",
                                  "--target", target, "--platform", "linux/arm64", *more, "--json").stdout)


def test_an_arm64_build_runs_emulated_where_binfmt_misc_serves_arm64(demo_runs: dict, registry: str,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    """A python-wheel build inside the pulled base's linux/arm64 root filesystem, on this amd64
    host: its Python is the base's aarch64 one, run by the kernel's qemu handler (`Nix's
    extra-platforms`). The wheel records the machine its setup.py ran on, and that it saw no nvcc
    wrapper folder (a build without nvcc sees what a native one sees); a rebuild is identical."""
    root, store = _emulated_project(demo_runs, registry, tmp_path, "emu")
    folder = root / "recipes/onbase"
    src = root / "src/machine"
    (src / "machine_probe").mkdir(parents=True)
    (src / "setup.py").write_text(
        "import platform, sys\nfrom setuptools import setup\n"
        "import os\n"
        "open('machine_probe/machine.txt', 'w').write(' '.join([platform.machine(), sys.executable,\n"
        "    str(os.path.exists('/build/nvcc-wrapper'))]) + '\\n')\n"
        "setup(name='machine-probe', version='1.0', packages=['machine_probe'],\n"
        "      package_data={'machine_probe': ['machine.txt']})\n")
    (src / "machine_probe/__init__.py").write_text("")
    # CUDA_HOME declared, with no nvcc there: the host gives the build the native helper on that
    # guess, and the runtime, finding no nvcc, takes it away again.
    (folder / "machine.toml").write_text(_arm64_wheel("machine") + 'env = { CUDA_HOME = "/opt/no-cuda" }\n')
    run_planner("--root", str(root), "--store", str(store), "lock", "onbase")
    out = _realise_arm64(root, store, "machine")
    (node,) = [n for n in out["nodes"] if n["name"] == "machine"]
    assert node["variant"].startswith("linux/arm64"), node
    import zipfile

    with zipfile.ZipFile(next(Path(node["path"]).glob("*.whl"))) as zf:
        assert zf.read("machine_probe/machine.txt").decode().split() == ["aarch64", "/usr/bin/python3", "False"]
    checked = _realise_arm64(root, store, "machine", "--check-targets")
    assert [c["ok"] for c in checked["checks"]] == [True], checked["checks"]


_FAKE_NVCC = r"""
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>
int main(void) {
    struct utsname u;
    const char *tmp = getenv("TMPDIR");
    int entries = 0;
    DIR *d = opendir(tmp ? tmp : "/nonexistent");
    for (struct dirent *e; d && (e = readdir(d));)
        entries += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    uname(&u);
    printf("pid=%d machine=%s tmpdir=%s entries=%d\n", getpid(), u.machine, tmp ? tmp : "-", d ? entries : -1);
    return 0;
}
"""


def test_an_emulated_builds_nvcc_is_process_one_by_the_native_helper(demo_runs: dict, registry: str,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    """Under qemu-user the runtime's Python cannot make nvcc process 1 (qemu's threads keep it
    out of a new user namespace): the host's native helper (builders/pid1.c) does, so an
    emulated build's nvcc gets the pid a native worker's gets. Three arm64 "nvcc" started at once
    by full path from an emulated setup.py each run as process 1 with an empty TMPDIR."""
    cross = shutil.which("aarch64-linux-gnu-gcc")
    if cross is None:
        pytest.skip("no aarch64-linux-gnu-gcc to compile an arm64 program (.ci/setup installs it)")
    root, store = _emulated_project(demo_runs, registry, tmp_path, "emu-nvcc")
    folder = root / "recipes/onbase"
    src = root / "src/fakecuda"
    src.mkdir(parents=True)
    (tmp_path / "nvcc.c").write_text(_FAKE_NVCC)
    import subprocess

    subprocess.run([cross, "-static", "-O2", "-o", str(src / "nvcc"), str(tmp_path / "nvcc.c")], check=True)
    (folder / "fakecuda.toml").write_text(
        'name = "fakecuda"\nversion = "1"\naxes = ["host"]\n[source]\nkind = "path"\npath = "src/fakecuda"\n'
        '[build]\nbuilder = "shell"\n'
        'script = "mkdir -p $out/bin && cp $src/nvcc $out/bin/nvcc && chmod 755 $out/bin/nvcc"\n')
    kernels = root / "src/kernels"
    (kernels / "kernels").mkdir(parents=True)
    (kernels / "kernels/__init__.py").write_text("")
    (kernels / "setup.py").write_text(
        "import subprocess\nfrom setuptools import setup\n"
        "runs = [subprocess.Popen(['/toolchains/fakecuda/bin/nvcc'], stdout=open(f'kernels/nvcc-{i}', 'w'))\n"
        "        for i in (1, 2, 3)]\n"
        "assert [r.wait() for r in runs] == [0, 0, 0]\n"
        "setup(name='kernels', version='1.0', packages=['kernels'],\n"
        "      package_data={'kernels': ['nvcc-1', 'nvcc-2', 'nvcc-3']})\n")
    (folder / "kernels.toml").write_text(_arm64_wheel("kernels", 'toolchains = ["fakecuda"]\n'))
    run_planner("--root", str(root), "--store", str(store), "lock", "onbase")
    out = _realise_arm64(root, store, "kernels")
    (node,) = [n for n in out["nodes"] if n["name"] == "kernels"]
    import zipfile

    with zipfile.ZipFile(next(Path(node["path"]).glob("*.whl"))) as zf:
        runs = [zf.read(f"kernels/nvcc-{i}").decode() for i in (1, 2, 3)]
    assert runs == ["pid=1 machine=aarch64 tmpdir=/build/nvcc-wrapper/tmp entries=0\n"] * 3, runs
    checked = _realise_arm64(root, store, "kernels", "--check-targets")
    assert [c["ok"] for c in checked["checks"]] == [True], checked["checks"]
