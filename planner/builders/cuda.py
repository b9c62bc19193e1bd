"""CUDA part of the cuda-wheel builder: arch lists, a toolkit assembled from PyPI wheels, one nvcc call.

Standard library only: this module runs inside the build sandbox under Debian's /usr/bin/python3
and is importable outside it too.

Toolkit (what `assemble_toolkit` builds from the wheels `nvidia-cuda-nvcc`, `-crt`, `nvidia-nvvm`,
`nvidia-cuda-runtime`, `-cccl`, all of which put their files under `nvidia/cu13/`):

    bin/nvcc bin/ptxas bin/fatbinary bin/nvlink bin/cudafe++ bin/bin2c bin/nvcc.profile bin/crt/*.stub
    nvvm/bin/cicc nvvm/libdevice/libdevice.10.bc
    include/            cuda_runtime.h ..., include/crt/ (crt wheel), include/cccl/ (cccl wheel)
    lib/                libcudart_static.a libcudadevrt.a libcudart.so.13 (+ libcudart.so link) libnvvm.so.4
    lib/stubs/libcuda.so  the driver's link stub (soname libcuda.so.1), written from cuda.h (driver_stub.py)
    lib64 -> lib        where setup.py files look (`-L$CUDA_HOME/lib64 -L$CUDA_HOME/lib64/stubs -lcuda`)
    targets/<host>-linux/{include,lib} -> ../../{include,lib}      (nvcc.profile looks here)
    targets/<cross>/{include,lib}      from target_runtime_wheels   (--target-directory <cross>)
    dist-info/          the wheels' METADATA/licenses, for provenance

nvcc.profile (shipped in the nvcc wheel) derives everything from the nvcc binary's own location:
`-I$(TOP)/$(_TARGET_DIR_)/include`, `-isystem $(TOP)/$(_TARGET_DIR_)/include/cccl`,
`-L$(TOP)/$(_TARGET_DIR_)/lib`, cicc from `$(TOP)/nvvm/bin`, so the tree above needs no
environment variables. `_TARGET_DIR_` is `targets/x86_64-linux` for an x86_64 nvcc,
`targets/sbsa-linux` for an aarch64 nvcc, `targets/<dir>` with `--target-directory <dir>`.

Reproducibility of nvcc output (measured with this toolkit, see tests/test_cuda.py):
1. nvcc names its temporaries `tmpxft_<pid>_<counter>`; that name reaches the library only as a
   FILE symbol in the static symbol table. `compile_shared_library` links with
   `-Xlinker --strip-all`, after which the bytes do not depend on nvcc's pid at all (checked: 7
   extra processes before nvcc, and runs outside any pid namespace). The sandbox's fresh pid
   namespace is then a second line of defence, not a requirement.
2. the device-link step records nvlink's options, including `-L<toolkit>/bin/../targets/...`,
   in the fatbinary: mount the toolkit at a fixed path (/toolchains/cuda).
3. names in anonymous namespaces get a prefix derived from the absolute source path, which
   changes the cubins (~260 bytes in .nv_fatbin; a `static __global__` kernel was unaffected);
   `-Xcompiler -ffile-prefix-map` does NOT remove it: build at a fixed path (/build/src). The demo
   kernel uses a named namespace and is path independent; third-party sources are not.
4. `-lineinfo`, `-G`, `-g` embed paths: not used. `--threads N` gives the same bytes as 1 thread.
With 2 and 3, two builds from different host folders give identical bytes (amd64 and arm64).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping, Sequence

from .cuda_archs import ARCHS, gencode_flags, normalise_archs, parse_arch, torch_arch_list  # noqa: F401

__all__ = [
    "ARCHS",
    "gencode_flags",
    "normalise_archs",
    "parse_arch",
    "assemble_toolkit",
    "toolkit_host_target",
    "compile_shared_library",
    "host_compiler_fingerprint",
    "HOST_COMPILERS",
    "host_compiler_for",
    "elf_machine",
]

# --------------------------------------------------------------------------------------------
# Toolkit from wheels
# --------------------------------------------------------------------------------------------

_EM_X86_64 = 62
_EM_AARCH64 = 183
# nvcc's default target directory for a host nvcc of that machine type.
_HOST_TARGET_DIR = {_EM_X86_64: "x86_64-linux", _EM_AARCH64: "sbsa-linux"}
_PLATFORM_MACHINE = {"linux/amd64": _EM_X86_64, "linux/arm64": _EM_AARCH64}
# Machine type of the code in a target directory (`targets/<dir>/lib`).
_TARGET_MACHINE = {"x86_64-linux": _EM_X86_64, "sbsa-linux": _EM_AARCH64, "aarch64-linux": _EM_AARCH64}
# Target directory used when cross-compiling *to* a platform from a host of the other kind.
CROSS_TARGET_DIR = {"linux/arm64": "aarch64-linux", "linux/amd64": "x86_64-linux"}
_WHEEL_PREFIX = re.compile(r"^nvidia/cu\d+/")
_EXEC_DIRS = ("bin/", "nvvm/bin/")


def elf_machine(path: Path | str) -> int | None:
    """e_machine of an ELF file (62 = x86_64, 183 = aarch64), None if not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order)


def toolkit_host_target(toolkit: Path | str) -> str:
    """The target directory name nvcc uses by default: `x86_64-linux` or `sbsa-linux`."""
    machine = elf_machine(Path(toolkit) / "bin" / "nvcc")
    if machine not in _HOST_TARGET_DIR:
        raise ValueError(f"{toolkit}/bin/nvcc: not an x86_64 or aarch64 ELF executable")
    return _HOST_TARGET_DIR[machine]


def _safe_rel(name: str, where: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in name:
        raise ValueError(f"{where}: unsafe member name {name!r}")
    return rel


class _Tree:
    """Files to write, with collision checks: {relative path: (bytes, executable)} (small trees)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, bool]] = {}
        self.origin: dict[str, str] = {}

    def add(self, rel: str, data: bytes, executable: bool, origin: str) -> None:
        old = self.files.get(rel)
        if old is not None:
            if old[0] != data:
                raise ValueError(f"{origin}: {rel} differs from the copy in {self.origin[rel]}")
            executable = executable or old[1]
        self.files[rel] = (data, executable)
        self.origin.setdefault(rel, origin)


class _DiskTree:
    """Like _Tree but writes through to `root` (the host toolkit is ~270 MB), by descriptor:
    nothing a wheel ships can make a later write follow a link."""

    def __init__(self, root: Path) -> None:
        from ..safetree import Tree

        self.root = root
        self.tree = Tree(root, where=f"CUDA toolkit {root.name}")
        self.origin: dict[str, str] = {}

    def add(self, rel: str, data: bytes, executable: bool, origin: str) -> None:
        if rel in self.origin:
            if self.tree.read_bytes(rel, limit=len(data)) != data:
                raise ValueError(f"{origin}: {rel} differs from the copy in {self.origin[rel]}")
            if executable:
                self.tree.chmod(rel, 0o755)
            return
        self.tree.write(rel, data, executable=executable, replace=False)
        self.origin[rel] = origin


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        names = set()
        for name in zf.namelist():
            m = _WHEEL_PREFIX.match(name)
            if m:
                names.add(name[m.end():])
        return names


def _read_wheel(wheel: Path, tree: "_Tree | _DiskTree", prefix: str, meta_prefix: str) -> None:
    where = wheel.name
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            rel = _safe_rel(info.filename, where)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ValueError(f"{where}: symlink member {info.filename!r} not supported")
            name = rel.as_posix()
            if rel.parts[0].endswith(".dist-info"):
                if rel.name == "RECORD" or rel.name == "INSTALLER":
                    continue  # RECORD lists wheel-layout paths; nothing here uses it
                tree.add(f"{meta_prefix}{name}", zf.read(info), False, where)
                continue
            m = _WHEEL_PREFIX.match(name)
            if not m:
                raise ValueError(f"{where}: unexpected member {name!r} (not under nvidia/cuNN/)")
            inner = name[m.end():]
            if inner.startswith(".metadata/") or not inner:
                continue  # NVIDIA's build-scan logs, not part of the toolkit
            data = zf.read(info)
            executable = bool(mode & 0o111) or (
                inner.startswith(_EXEC_DIRS) and data[:4] == b"\x7fELF"
            )
            tree.add(prefix + inner, data, executable, where)


def _write_tree(tree: _Tree, dest: Path, *, replace: bool = False) -> None:
    from ..safetree import Tree

    with Tree(dest, where=f"CUDA toolkit {dest.name}", create=True) as out:
        for rel in sorted(tree.files):
            data, executable = tree.files[rel]
            out.write(rel, data, executable=executable, replace=replace)


def _link_unversioned(libdir: Path) -> None:
    """`libX.so -> libX.so.N` where only the versioned name exists (as a real toolkit has)."""
    if not libdir.is_dir():
        return
    for p in sorted(libdir.iterdir()):
        m = re.match(r"^(lib[^/]+\.so)\.\d+$", p.name)
        if m and p.is_file() and not p.is_symlink():
            link = libdir / m.group(1)
            if not link.exists() and not link.is_symlink():
                link.symlink_to(p.name)


def _driver_stub(tree: _DiskTree, machine: int) -> bytes | None:
    """`libcuda.so` (soname libcuda.so.1) defining the functions of the merged include/cuda.h and
    cudaProfiler.h; None when the wheels ship no cuda.h (no driver API to link against)."""
    from .driver_stub import driver_api_symbols, driver_stub

    if "include/cuda.h" not in tree.origin:
        return None
    headers = [tree.tree.read_bytes(name, limit=1 << 24).decode("utf-8", "replace")
               for name in ("include/cuda.h", "include/cudaProfiler.h") if name in tree.origin]
    return driver_stub(driver_api_symbols(headers), machine)


def assemble_toolkit(
    wheels: Sequence[Path | str],
    dest: Path | str,
    *,
    target_runtime_wheels: Mapping[str, Sequence[Path | str]] | None = None,
) -> None:
    """Merge the CUDA wheels into one toolkit tree at `dest` (see the module docstring).

    `target_runtime_wheels` maps a target directory name (e.g. "aarch64-linux") to the runtime
    wheel(s) built for that machine; they go to `targets/<name>/lib` (+ include), for
    `nvcc --target-directory <name>`. Files are written in sorted order with modes 0755/0644;
    two wheels that ship the same path must ship the same bytes.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest}: destination is not empty")
    wheel_paths = sorted((Path(w) for w in wheels), key=lambda p: p.name)
    if not wheel_paths:
        raise ValueError("no CUDA wheels given")
    names: set[str] = set()
    for wheel in wheel_paths:
        names |= _wheel_names(wheel)
    for tool in ("bin/nvcc", "bin/nvcc.profile", "bin/ptxas", "bin/fatbinary", "bin/nvlink",
                 "bin/cudafe++", "nvvm/bin/cicc", "include/cuda_runtime.h",
                 "include/crt/host_config.h", "lib/libcudart_static.a", "lib/libcudadevrt.a"):
        if tool not in names:
            raise ValueError(f"CUDA wheels lack {tool} (need nvidia-cuda-nvcc, -crt, nvidia-nvvm, -runtime, -cccl)")
    dest.mkdir(parents=True, exist_ok=True)
    tree = _DiskTree(dest)
    for wheel in wheel_paths:
        _read_wheel(wheel, tree, "", "dist-info/")
    _link_unversioned(dest / "lib")
    host = toolkit_host_target(dest)
    hostdir = dest / "targets" / host
    hostdir.mkdir(parents=True)
    (hostdir / "include").symlink_to("../../include")
    (hostdir / "lib").symlink_to("../../lib")
    # A real toolkit's lib64 (setup.py files link `-L$CUDA_HOME/lib64`), and the driver's link
    # stub there (`-L$CUDA_HOME/lib64/stubs -lcuda`), written from the driver API header.
    (dest / "lib64").symlink_to("lib")
    stub = _driver_stub(tree, _TARGET_MACHINE[host])
    if stub is not None:
        tree.add("lib/stubs/libcuda.so", stub, False, "driver API stub")

    for target in sorted(target_runtime_wheels or {}):
        if not re.fullmatch(r"[a-z0-9_]+-linux", target) or target == host:
            raise ValueError(f"bad target directory name {target!r}")
        ttree = _Tree()
        for wheel in sorted((Path(w) for w in target_runtime_wheels[target]), key=lambda p: p.name):
            _read_wheel(wheel, ttree, "", f"dist-info/{target}/")
        tdir = dest / "targets" / target
        inc = {r: v for r, v in ttree.files.items() if r.startswith("include/")}
        rest = {r: v for r, v in ttree.files.items() if not r.startswith("include/")}
        same = all(
            (dest / r).is_file() and (dest / r).read_bytes() == v[0] for r, v in inc.items()
        )
        meta = _Tree()
        other = _Tree()
        for r, (data, x) in rest.items():
            (meta if r.startswith("dist-info/") else other).add(r, data, x, target)
        _write_tree(meta, dest)
        tdir.mkdir(parents=True)
        _write_tree(other, tdir)
        _link_unversioned(tdir / "lib")
        stub = _driver_stub(tree, _TARGET_MACHINE[target]) if target in _TARGET_MACHINE else None
        if stub is not None:
            _DiskTree(tdir).add("lib/stubs/libcuda.so", stub, False, "driver API stub")
        if same:
            # The headers are architecture independent (identical bytes): share the host's,
            # which also carry crt/ and cccl/ that nvcc needs under the target's include dir.
            (tdir / "include").symlink_to("../../include")
        else:
            shutil.copytree(dest / "include", tdir / "include", symlinks=True)
            over = _Tree()
            for r, (data, x) in inc.items():
                over.add(r, data, x, target)
            _write_tree(over, tdir, replace=True)  # the target's own headers over the copied ones


# --------------------------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------------------------

# Host compiler per target platform when the build machine is x86_64 (the usual case) ...
HOST_COMPILERS = {
    "linux/amd64": "/usr/bin/g++",
    "linux/arm64": "/usr/bin/aarch64-linux-gnu-g++",
}
# ... and the cross compilers in general (native builds use /usr/bin/g++).
CROSS_COMPILERS = {
    "linux/amd64": "/usr/bin/x86_64-linux-gnu-g++",
    "linux/arm64": "/usr/bin/aarch64-linux-gnu-g++",
}
_UNAME_MACHINE = {"x86_64": _EM_X86_64, "amd64": _EM_X86_64, "aarch64": _EM_AARCH64, "arm64": _EM_AARCH64}


def host_compiler_for(target_platform: str, host_machine: int | None = None) -> str:
    """The g++ that compiles host code for `target_platform` on a host of ELF machine `host_machine`
    (default: the machine running this code)."""
    if target_platform not in _PLATFORM_MACHINE:
        raise ValueError(f"bad target platform {target_platform!r} (linux/amd64 or linux/arm64)")
    if host_machine is None:
        host_machine = _UNAME_MACHINE.get(os.uname().machine, _EM_X86_64)
    if host_machine == _PLATFORM_MACHINE[target_platform]:
        return "/usr/bin/g++"
    return CROSS_COMPILERS[target_platform]


def compile_shared_library(
    sources: Sequence[Path | str],
    output: Path | str,
    *,
    archs: Sequence[str],
    toolkit: Path | str,
    target_platform: str,
    include_dirs: Sequence[Path | str] = (),
    extra_flags: Sequence[str] = (),
    jobs: int = 1,
    strip: bool = True,
    host_compiler: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    run: Callable[..., object] = subprocess.run,
) -> list[str]:
    """Compile and link `sources` into the shared library `output` with ONE nvcc call.

    Returns the exact argv (also passed to `run(argv, check=True, env=..., cwd=...)`).
    The library links the CUDA runtime statically (`-cudart static`): at run time it needs only
    the driver's libcuda.so.1 (and libstdc++/libc). No debug or line info (they embed paths).
    `jobs` > 1 adds `--threads N` (nvcc compiles the archs in parallel; the bytes are the same
    as with one thread, see tests). `strip` (default) links with `-Xlinker --strip-all`: the
    static symbol table holds the name of nvcc's temporary file, which contains nvcc's pid;
    stripped, the library no longer depends on the pid (the exported API stays in .dynsym). Cross-compiling linux/arm64 on an x86_64 toolkit adds
    `-ccbin aarch64-linux-gnu-g++ --target-directory aarch64-linux` (the toolkit must have been
    assembled with that target's runtime wheel).
    For byte-identical output, run it inside the sandbox: fixed toolkit path, fixed source/output
    paths, fresh pid namespace with the same process history (see the module docstring).
    """
    toolkit = Path(toolkit)
    if not sources:
        raise ValueError("no CUDA sources given")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    nvcc = toolkit / "bin" / "nvcc"
    host_machine = elf_machine(nvcc) if nvcc.is_file() else None
    if host_machine is None:
        host_machine = _UNAME_MACHINE.get(os.uname().machine, _EM_X86_64)
    if target_platform not in _PLATFORM_MACHINE:
        raise ValueError(f"bad target platform {target_platform!r} (linux/amd64 or linux/arm64)")
    cxx = host_compiler or host_compiler_for(target_platform, host_machine)
    argv = [str(toolkit / "bin" / "nvcc"), "-shared", "-Xcompiler", "-fPIC", "-O3",
            "-cudart", "static", "-ccbin", cxx]
    if host_machine != _PLATFORM_MACHINE[target_platform]:
        target_dir = CROSS_TARGET_DIR[target_platform]
        if not (toolkit / "targets" / target_dir / "lib").is_dir():
            raise ValueError(
                f"{toolkit}: no targets/{target_dir}/lib for cross-compiling to {target_platform}"
                " (assemble_toolkit(..., target_runtime_wheels={...}))"
            )
        argv += ["--target-directory", target_dir]
    argv += gencode_flags(archs)
    if jobs > 1:
        argv += ["--threads", str(jobs)]
    if strip:
        argv += ["-Xlinker", "--strip-all"]
    for inc in include_dirs:
        argv += ["-I", str(inc)]
    argv += [str(f) for f in extra_flags]
    argv += ["-o", str(output)]
    argv += [str(s) for s in sources]

    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PATH", "/usr/bin:/bin")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    run(argv, check=True, env=run_env, cwd=None if cwd is None else str(cwd))
    return argv


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def host_compiler_fingerprint(
    target_platform: str, *, compiler: str | None = None, run: Callable[..., object] = subprocess.run
) -> dict:
    """Record the impure host compiler: path, `--version` first line, sha256 of the binary.

    Also fingerprints the programs the driver runs (cc1plus, as, ld) under "components", since a
    different assembler or linker can change the output as much as a different driver.
    """
    path = compiler or host_compiler_for(target_platform)
    resolved = shutil.which(path) if not os.path.isabs(path) else path
    if not resolved or not os.path.exists(resolved):
        raise FileNotFoundError(f"host compiler {path} not found")
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}

    def out(args: list[str]) -> str:
        r = run(args, check=True, capture_output=True, text=True, env=env)
        return r.stdout  # type: ignore[attr-defined]

    version = out([resolved, "--version"]).splitlines()[0].strip()
    components = {}
    for prog in ("cc1plus", "as", "ld"):
        p = out([resolved, f"-print-prog-name={prog}"]).strip()
        if not os.path.isabs(p):
            p = shutil.which(p, path=env["PATH"]) or p
        if os.path.isfile(p):
            real = os.path.realpath(p)
            components[prog] = {"path": p, "realpath": real, "sha256": _sha256_file(real)}
    real = os.path.realpath(resolved)
    return {
        "target_platform": target_platform,
        "path": resolved,
        "realpath": real,
        "version": version,
        "sha256": _sha256_file(real),
        "components": components,
        "impure": True,
    }
