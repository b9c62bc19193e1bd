"""The in-sandbox side of a build: prepare the source, apply patches, run the builder.

Runs as `python3 -m planner.builders.runtime /build/spec.json` inside the sandbox, with only
the standard library. Everything it needs is in the spec; everything it writes goes to
/build/out. A failure exits non-zero with a one-line reason as the last line of the log.

It starts once per build step, so each builder imports what it alone uses, where it uses it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

BUILD = Path(os.environ.get("PLANNER_BUILD_DIR", "/build"))


class BuildFailure(Exception):
    pass


def log(msg: str) -> None:
    print(msg, flush=True)


def run(argv: list[str], *, cwd: Path, env: dict | None = None) -> None:
    import subprocess

    # A script of the planner's own (the PEP 517 frontend) is named, not printed: the log of a
    # build starts with what the build ran, not with twenty lines of the planner's code.
    log("+ " + " ".join("<planner's PEP 517 frontend>" if a is _FRONTEND else a for a in argv))
    proc = subprocess.run(argv, cwd=cwd, env=env)
    if proc.returncode != 0:
        raise BuildFailure(f"{argv[0]} exited with status {proc.returncode}")


def _copy_tree(src: Path, dest: Path) -> None:
    import shutil

    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.stat(p).st_mode & 0o100 else 0o644)


def prepare_source(spec: dict) -> Path:
    src = BUILD / "src"
    src.mkdir(exist_ok=True)
    if spec.get("source"):
        s = Path(spec["source"])
        if s.is_dir():
            _copy_tree(s, src)
        else:
            import shutil

            shutil.copyfile(s, src / s.name)
    for path, sub in sorted(spec.get("submodules", {}).items()):
        dest = src / path
        dest.mkdir(parents=True, exist_ok=True)
        _copy_tree(Path(sub), dest)
    for patch in spec.get("patches", []):
        apply_patch(src, Path(patch["path"]), patch["name"], patch.get("strip", 1))
    return src


def apply_patch(src: Path, patch: Path, name: str, strip: int) -> None:
    """Apply strictly: no fuzz, no reversed guesses, nothing written on failure."""
    import re
    import subprocess

    hunk_failed = re.compile(r"Hunk #(\d+) FAILED at (\d+)")
    args = ["patch", f"-p{strip}", "--forward", "--batch", "--fuzz=0", "--no-backup-if-mismatch",
            "--reject-file=-", "-d", str(src), "-i", str(patch)]
    dry = subprocess.run(args + ["--dry-run"], capture_output=True, text=True)
    if dry.returncode != 0:
        out = dry.stdout + dry.stderr
        log(out)
        file = None
        for line in out.splitlines():
            m = re.match(r"(?:patching|checking) file (.+)", line)
            if m:
                file = m.group(1).strip("'\"")
            hm = hunk_failed.search(line)
            if hm:
                raise BuildFailure(f"patch {name} does not apply: hunk #{hm.group(1)} of {file} "
                                   f"FAILED at line {hm.group(2)}")
        last = [l for l in out.splitlines() if l.strip()][-1:] or ["unknown error"]
        raise BuildFailure(f"patch {name} does not apply: {last[0]}")
    out = subprocess.run(args, capture_output=True, text=True)
    log(out.stdout.strip())
    if out.returncode != 0:
        raise BuildFailure(f"patch {name} failed: {out.stderr.strip() or out.stdout.strip()}")
    log(f"applied {name}")


# -- builders --------------------------------------------------------------------------------

def build_shell(spec: dict, src: Path, out: Path) -> None:
    env = dict(os.environ)
    env.update({"out": str(out), "src": str(src)})
    run(["bash", "-euo", "pipefail", "-c", spec["script"]], cwd=src, env=env)


def build_unpack(spec: dict, src: Path, out: Path) -> None:
    import shutil

    out.rmdir()
    shutil.copytree(src, out, symlinks=True)


def build_source_tree(spec: dict, src: Path, out: Path) -> None:
    """The patched source tree, placed at settings.path (checked by the recipe loader) of a file
    tree that an image lays down at / as a layer: the checkouts users run scripts from."""
    import shutil

    dest = out / spec["settings"]["path"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest, symlinks=True)


# The PEP 517 frontend, run by the build's own Python (the base image's, for rootfs builds):
# argv = buildenv, backend, wheel dir, config settings (JSON), require extensions (0/1),
# backend-path (JSON list, already checked to stay inside the project).
_FRONTEND = r"""
import importlib, json, os, sys
sys.path.insert(0, sys.argv[1])
# PEP 517 backend-path: in-tree backends, relative to the project, ahead of everything else.
for entry in reversed(json.loads(sys.argv[6])):
    sys.path.insert(0, os.path.abspath(entry))
if sys.argv[5] == "1":
    # setup.py files mark helper extensions optional=True, and setuptools then turns a failed
    # compile into a warning and a wheel without the extension. Forced off, it fails the build.
    import setuptools.extension
    _init = setuptools.extension.Extension.__init__
    def _required(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        if getattr(self, "optional", False):
            print("planner: extension %s is optional in setup.py; required here" % self.name, flush=True)
        self.optional = False
    setuptools.extension.Extension.__init__ = _required
backend_name, _, obj = sys.argv[2].partition(":")
backend = importlib.import_module(backend_name)
for part in filter(None, obj.split(".")):
    backend = getattr(backend, part)
settings = json.loads(sys.argv[4]) or None
name = backend.build_wheel(sys.argv[3], settings) if settings else backend.build_wheel(sys.argv[3])
print("built", name)
"""


def _buildenv(spec: dict) -> Path:
    """Unpack the pinned build-dependency wheels into one directory put first on sys.path; the
    scripts of the inputs named in settings `tools` go to its bin/ (put first on PATH)."""
    import zipfile

    env = BUILD / "buildenv"
    env.mkdir(exist_ok=True)
    inputs = spec.get("inputs", {})
    tools = list(spec.get("settings", {}).get("tools", []))
    unknown = sorted(set(tools) - set(inputs))
    if unknown:
        raise BuildFailure(f"settings tools names {unknown}, which are not inputs of this recipe")
    for name, path in sorted(inputs.items()):
        p = Path(path)
        wheels = [p] if p.suffix == ".whl" else sorted(p.glob("*.whl")) if p.is_dir() else []
        for whl in wheels:
            with zipfile.ZipFile(whl) as zf:
                zf.extractall(env)
                if name in tools:
                    _install_scripts(zf, env / "bin", f"{name} ({whl.name})")
    return env


def _install_scripts(zf, bin_dir: Path, what: str) -> None:
    """A wheel's `<dist>.data/scripts/*` as executables in `bin_dir`, as an installer puts them:
    build tools shipped as wheels (ninja, cmake) are programs a build runs from PATH."""
    scripts = [i for i in zf.infolist() if not i.is_dir() and len(i.filename.split("/")) == 3
               and i.filename.split("/")[0].endswith(".data") and i.filename.split("/")[1] == "scripts"]
    if not scripts:
        raise BuildFailure(f"settings tools: input {what} has no scripts to put on PATH")
    bin_dir.mkdir(exist_ok=True)
    for info in scripts:
        name = info.filename.split("/")[2]
        if name in ("", ".", ".."):
            raise BuildFailure(f"settings tools: input {what} has a script named {name!r}")
        dest = bin_dir / name
        dest.write_bytes(zf.read(info))
        dest.chmod(0o755)


def _toml_loads(text: str):
    """tomllib where it exists (3.11+); the base image's Python may be 3.10: then tomli from
    the build environment or pip's vendored copy; None if none of them is there."""
    import importlib

    for mod in ("tomllib", "tomli", "pip._vendor.tomli"):
        try:
            loads = importlib.import_module(mod).loads
        except ImportError:
            continue
        return loads(text)
    return None


def build_system(project: Path) -> tuple[str, list[str]]:
    """The `[build-system]` build-backend (else setuptools' legacy backend) and backend-path
    of a project (PEP 517). backend-path entries must name folders inside the project."""
    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        return "setuptools.build_meta:__legacy__", []
    text = pyproject.read_text()
    data = _toml_loads(text)
    paths: object = []
    if data is not None:
        table = data.get("build-system", {})
        backend = table.get("build-backend")
        paths = table.get("backend-path", [])
    else:  # no TOML parser at all: the one key that matters, read line by line
        import re

        table_re = re.compile(r"^\s*\[([^\]]+)\]\s*(?:#.*)?$")
        backend_re = re.compile(r"""^\s*build-backend\s*=\s*(["'])([^"']+)\1\s*(?:#.*)?$""")
        backend, table = None, None
        for line in text.splitlines():
            t = table_re.match(line)
            if t:
                table = t.group(1).strip()
                continue
            b = backend_re.match(line)
            if b and table == "build-system":
                backend = b.group(2)
            if table == "build-system" and re.match(r"^\s*backend-path\s*=", line):
                raise BuildFailure("pyproject.toml: [build-system] backend-path needs a TOML parser "
                                   "(Python 3.11+, or tomli among the build inputs)")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise BuildFailure("pyproject.toml: [build-system] backend-path must be a list of strings")
    root = project.resolve()
    checked = []
    for entry in paths:
        full = (project / entry).resolve()
        if not full.is_relative_to(root) or not full.is_dir():
            raise BuildFailure(f"pyproject.toml: [build-system] backend-path {entry!r} is not a folder "
                               "inside the project (PEP 517)")
        checked.append(str(full))
    return backend or "setuptools.build_meta:__legacy__", checked


def build_backend(project: Path) -> str:
    return build_system(project)[0]


def wheel_problems(wheel: Path) -> list[str]:
    """Why `wheel` is not a wheel with compiled extension modules (require-extensions)."""
    parts = wheel.name[:-len(".whl")].split("-")
    platform_tag = parts[-1] if len(parts) >= 5 else "any"
    import zipfile

    problems = []
    if platform_tag == "any":
        problems.append(f"{wheel.name} has no platform tag (it is {platform_tag!r})")
    with zipfile.ZipFile(wheel) as zf:
        if not any(n.endswith(".so") or ".so." in n.rsplit("/", 1)[-1] for n in zf.namelist()):
            problems.append(f"{wheel.name} contains no compiled module (.so)")
    return problems


def pep517_wheel(spec: dict, project: Path, out: Path, *, env: dict | None = None,
                 config_settings: dict | None = None) -> None:
    """Build `project` through its PEP 517 backend with the pinned build requirements on both
    sys.path and PYTHONPATH (setup.py files run `python3 -m pybind11 --includes` and the like),
    no isolation and no network; then normalise the one wheel into `out`."""
    from .wheelfile import normalise_wheel

    settings = spec.get("settings", {})
    env_dir = _buildenv(spec)
    wheelhouse = BUILD / "wheelhouse"
    wheelhouse.mkdir(exist_ok=True)
    declared, backend_path = build_system(project)
    backend = settings.get("backend") or declared
    run_env = dict(os.environ)
    run_env.update(env or {})
    run_env["PYTHONPATH"] = os.pathsep.join([str(env_dir), *filter(None, [run_env.get("PYTHONPATH")])])
    if settings.get("tools"):
        run_env["PATH"] = os.pathsep.join([str(env_dir / "bin"), run_env.get("PATH", "/usr/bin:/bin")])
    require = "1" if settings.get("require-extensions") else "0"
    try:
        run([sys.executable, "-s", "-c", _FRONTEND, str(env_dir), backend, str(wheelhouse),
             json.dumps(config_settings or {}, sort_keys=True), require, json.dumps(backend_path)],
            cwd=project, env=run_env)
    except BuildFailure as exc:
        raise BuildFailure(f"build_wheel of {backend} failed ({exc}); its error is above in the log") from None
    wheels = sorted(wheelhouse.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildFailure(f"expected one wheel from {backend}, got {[w.name for w in wheels]}")
    if require == "1":
        # setup.py files that catch the compiler's failure themselves (MarkupSafe's BuildFailed
        # fallback) never reach the Extension hook above: what counts is the wheel.
        problems = wheel_problems(wheels[0])
        if problems:
            raise BuildFailure("require-extensions: " + "; ".join(problems)
                               + ": an extension did not compile (its error is above in the log)")
    normalise_wheel(wheels[0], out, source_date_epoch=spec["source_date_epoch"])


def build_python_wheel(spec: dict, src: Path, out: Path) -> None:
    settings = spec.get("settings", {})
    pep517_wheel(spec, src / settings.get("subdir", "."), out,
                 config_settings=settings.get("config-settings"))


_WHEEL_PLATFORM = {"linux/amd64": "manylinux_2_28_x86_64", "linux/arm64": "manylinux_2_28_aarch64"}


_MACHINE_PLATFORM = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}


def build_cuda_wheel(spec: dict, src: Path, out: Path) -> None:
    from .cuda import compile_shared_library
    from .wheelfile import wheel_from_tree

    settings = spec.get("settings", {})
    variant = spec["variant"]
    archs = variant.get("cuda")
    platform = variant.get("platform")
    if not archs or not platform:
        raise BuildFailure("cuda-wheel needs the platform and cuda variant axes")
    toolkit = Path(spec["deps"].get("toolchain/cuda", "/toolchains/cuda"))
    if settings.get("frontend") == "pep517":
        pep517_cuda_wheel(spec, src, out, archs=list(archs), platform=platform, toolkit=toolkit)
        return
    sources = [src / s for s in settings.get("sources", [])]
    if not sources:
        raise BuildFailure("cuda-wheel needs settings.sources (the .cu files)")
    library = src / settings["library"]
    argv = compile_shared_library(sources, library, archs=list(archs), toolkit=toolkit, target_platform=platform,
                                  include_dirs=[src / d for d in settings.get("include-dirs", [])],
                                  jobs=int(spec.get("jobs", 1)))
    log("compiled with: " + " ".join(argv))
    tag = f"py3-none-{_WHEEL_PLATFORM[platform]}"
    wheel_from_tree(src, list(settings.get("packages", [])), name=spec["name"], version=spec["version"], tag=tag,
                    out_dir=out, source_date_epoch=spec["source_date_epoch"],
                    requires=list(settings.get("requires", [])), summary=settings.get("summary", ""))


def pep517_cuda_wheel(spec: dict, src: Path, out: Path, *, archs: list, platform: str, toolkit: Path) -> None:
    """A torch CUDAExtension-style project through its own setup.py, for the variant's archs.

    The arch list is exported in torch's dotted form under `arch-list-env` (TORCH_CUDA_ARCH_LIST
    by default): the project compiles for the variant, never for a GPU it might see (none is
    visible: CUDA_VISIBLE_DEVICES is empty). `nvcc-threads` becomes NVCC_APPEND_FLAGS, the
    recipe's `[resources] cores` MAX_JOBS (torch's parallel compile), `config-settings` go to build_wheel."""
    from .cuda import torch_arch_list

    machine = _MACHINE_PLATFORM.get(os.uname().machine)
    if machine != platform:
        raise BuildFailure(f"frontend pep517 builds natively: this sandbox runs {machine}, the node is {platform} "
                           "(build inside a root filesystem of that platform on a native worker)")
    settings = spec.get("settings", {})
    env = {settings.get("arch-list-env", "TORCH_CUDA_ARCH_LIST"): " ".join(torch_arch_list(archs)),
           # The recipe's cores, not this machine's: the build's environment must not depend
           # on where it runs (and the recipe's figure is what its memory estimate assumed).
           "CUDA_VISIBLE_DEVICES": "", "MAX_JOBS": str(max(1, int(spec.get("cores", 1))))}
    threads = settings.get("nvcc-threads")
    if threads:
        env["NVCC_APPEND_FLAGS"] = " ".join(filter(None, [os.environ.get("NVCC_APPEND_FLAGS"), f"--threads {int(threads)}"]))
    if "CUDA_HOME" not in os.environ and (toolkit / "bin" / "nvcc").exists():
        env["CUDA_HOME"] = str(toolkit)
        env["PATH"] = f"{toolkit}/bin:" + os.environ.get("PATH", "/usr/bin:/bin")
    log("cuda env: " + " ".join(f"{k}={v}" for k, v in sorted(env.items()) if k != "PATH"))
    pep517_wheel(spec, src / settings.get("subdir", "."), out, env=env,
                 config_settings=settings.get("config-settings"))


# Where a build finds nvcc: a toolkit dependency's, the one CUDA_HOME or CUDA_PATH names, the
# usual install path of a root filesystem's, and PATH's.
_NVCC_HOMES = ("CUDA_HOME", "CUDA_PATH")


def nvcc_programs(spec: dict, environ: dict) -> list[str]:
    """The real paths of the nvcc executables this build can reach, each once."""
    import shutil

    candidates = [os.path.join(dest, "bin", "nvcc") for mount, dest in sorted(spec.get("deps", {}).items())
                  if mount.startswith("toolchain/")]
    candidates += [os.path.join(environ[k], "bin", "nvcc") for k in _NVCC_HOMES if environ.get(k)]
    candidates += ["/usr/local/cuda/bin/nvcc", shutil.which("nvcc", path=environ.get("PATH", "")) or ""]
    found: list[str] = []
    for path in candidates:
        if os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in found:
                found.append(real)
    return found


def wrap_nvcc(spec: dict, argv: list[str]) -> None:
    """Every nvcc the build can reach runs as process 1 of its own PID namespace, with an empty
    temporary folder of its own at one fixed path, however the build starts it: parallel
    compiles then write the same bytes whatever order they run in (planner/builders/pidns.py
    says why and how). An emulated build has the host's native helper do it (pid1.c says why):
    this runtime then starts again through it, with `--nvcc-placed`."""
    programs = nvcc_programs(spec, dict(os.environ))
    folder = BUILD / "nvcc-wrapper"
    native = spec.get("native-pid1")
    if not programs:
        if native:  # given on a guess and unused: the build sees what a native one sees
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        return
    if native:
        problem = _probe_native(native, programs, folder)
        if problem is None:
            log("planner: nvcc runs as process 1 of its own PID namespace (by the host's native helper): "
                + " ".join(programs))
            python = [sys.executable] + (["-s"] if sys.flags.no_user_site else [])
            sys.stdout.flush()
            os.execv(native, [native, "place", str(folder), str(folder / "tmp"), *programs, "--",
                              *python, "-m", "planner.builders.runtime", argv[1], "--nvcc-placed"])
    else:
        from . import pidns

        try:
            problem = pidns.wrap_in_place(programs, str(folder), sys.executable, str(folder / "tmp"))
        except OSError as exc:  # the probe could, this process could not: nothing to build on
            raise BuildFailure(f"cannot wrap nvcc: {exc}") from None
    if problem:
        log(f"planner: nvcc runs without a PID namespace of its own ({problem}): "
            "parallel compiles may write different bytes from build to build")
    else:
        log("planner: nvcc runs as process 1 of its own PID namespace: " + " ".join(programs))


def _probe_native(helper: str, programs: list[str], folder: Path) -> str | None:
    """None if the native helper can wrap `programs` here, else why not."""
    import subprocess

    if any("\n" in p for p in programs):  # a wrapper holds one path a line
        return "a path with a line break: " + ", ".join(repr(p) for p in programs if "\n" in p)
    done = subprocess.run([helper, "probe", str(folder), str(folder / "tmp"), *programs],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    if done.returncode != 0:
        return done.stderr.strip().replace("\n", "; ") or f"the native helper's probe exited {done.returncode}"
    return None


_RUNS_RECIPE_CODE = ("shell", "python-wheel", "cuda-wheel")

BUILDERS = {
    "shell": build_shell,
    "unpack": build_unpack,
    "source-tree": build_source_tree,
    "python-wheel": build_python_wheel,
    "cuda-wheel": build_cuda_wheel,
}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    if spec.get("limits"):
        # First thing inside the sandbox: after its user namespace exists, so RLIMIT_NPROC counts
        # this build's processes only (planner/limits.py says why it is set here). Hard and soft:
        # the build cannot raise them. The runtime imports only the standard library.
        import resource

        for which, key in ((resource.RLIMIT_DATA, "memory"), (resource.RLIMIT_NPROC, "processes"),
                           (resource.RLIMIT_NOFILE, "files")):
            if key in spec["limits"]:
                resource.setrlimit(which, (int(spec["limits"][key]),) * 2)
    out = BUILD / "out"
    out.mkdir(exist_ok=True)
    try:
        # Sandboxed (nothing of it outlives the build), and a builder that runs the recipe's code.
        if ("PLANNER_BUILD_DIR" not in os.environ and spec["builder"] in _RUNS_RECIPE_CODE
                and argv[2:] != ["--nvcc-placed"]):
            wrap_nvcc(spec, argv)
        src = prepare_source(spec)
        BUILDERS[spec["builder"]](spec, src, out)
    except BuildFailure as exc:
        print(f"planner: build failed: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
