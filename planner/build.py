"""Building one node: lay out its build directory, run its builder, add the output to the store."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Callable, Optional

import attrs

from . import limits as limits_mod
from . import sandbox
from .errors import BuildError, PlannerError, StoreError, UnsafeTree
from .builders.registry import builder
from .buildrun import Running, limit_hit, open_log, run_logged, shell_argv, tail_of  # noqa: F401  (Running: re-exported)
from .derivation import BUILD_ROOT_MOUNT, BuildRequest, Built, Node, digests, record, resolve
from .emulation import emulator
from .host import host_platform
from .limits import Limits
from .store import Entry, Store, remove_tree

PLANNER_PKG = Path(__file__).resolve().parent
DEFAULT_MEMORY = 1 << 30  # a node without limits (from an older worker request): the recipe default


def _mount_path(mount: str) -> str:
    if mount.startswith("toolchain/"):
        return "/toolchains/" + mount.split("/", 1)[1]
    return "/deps/" + mount


def _input_dest(name: str, entry: Entry, filename: Optional[str]) -> str:
    # Flat names: `source/sub/x` must not be mounted inside the read-only `source` mount.
    base = "/inputs/" + name.replace("/", ":")
    if entry.path.is_dir():
        return base
    return f"{base}/{filename or entry.path.name}"


def sandbox_spec(req: BuildRequest, *, build_dir: str = sandbox.BUILD_DIR) -> tuple[dict, list[sandbox.Mount]]:
    """The spec the in-sandbox runtime reads, and the mounts that make its paths real."""
    node = req.node
    pre = node.preimage
    mounts: list[sandbox.Mount] = [sandbox.Mount(PLANNER_PKG, "/opt/planner/planner")]
    inputs: dict[str, str] = {}
    patches = []
    submodules: dict[str, str] = {}
    source = None
    for name, entry in sorted(req.inputs.items()):
        dest = _input_dest(name, entry, node.inputs[name].filename)
        mounts.append(sandbox.Mount(entry.path, dest))
        if name == "source":
            source = dest
        elif name.startswith("patch/"):
            continue
        elif name.startswith("source/sub/"):
            submodules[name[len("source/sub/"):]] = dest
        else:
            inputs[name] = dest
    for p in pre.patches:
        entry = req.inputs[f"patch/{p.name}"]
        patches.append({"name": p.name, "strip": p.strip,
                        "path": _input_dest(f"patch/{p.name}", entry, node.inputs[f"patch/{p.name}"].filename)})
    deps = {}
    for mount, entry in sorted(req.deps.items()):
        if mount in ("rootfs", BUILD_ROOT_MOUNT):
            continue  # becomes / of the sandbox, not a mount
        dest = _mount_path(mount)
        mounts.append(sandbox.Mount(entry.path, dest))
        deps[mount] = dest
    spec = {
        "name": node.name,
        "version": node.version,
        "builder": node.builder,
        "settings": pre.builder.settings,
        "script": pre.builder.script,
        "variant": pre.variant.as_json(),
        "source": source,
        "submodules": submodules,
        "patches": patches,
        "inputs": inputs,
        "deps": deps,
        # The recipe's cores, never this machine's or -j: the build's environment (and so
        # anything a build derives from it) must not depend on where it runs.
        "jobs": node.cores,
        "cores": node.cores,
        "source_date_epoch": pre.source_date_epoch,
    }
    return spec, mounts


def _declared_env(node: Node) -> dict[str, str]:
    from .buildenv import clashes

    env = dict(node.preimage.env)
    clash = clashes(node.builder, node.preimage.builder.settings, env)
    if clash:  # recipes are checked when loaded; this guards preimages from elsewhere (a worker)
        raise BuildError(node.label(), f"[build] env {clash[0]} is set by the planner; a declared value would be overwritten")
    env["SOURCE_DATE_EPOCH"] = str(node.preimage.source_date_epoch)
    env["PYTHONPATH"] = "/opt/planner"
    env.update(sandbox.cores_env(node.cores))
    return env


def run_builder(req: BuildRequest, build_dir: Path, log_path: Path, running: Running) -> Path:
    """Run the node's builder with `build_dir` as /build; returns the output path."""
    node = req.node
    for sub in ("src", "out", "home", "tmp"):
        (build_dir / sub).mkdir(exist_ok=True)
    if builder(node.builder).builtin:
        _run_builtin(req, build_dir, log_path)
        return build_dir / "out"
    spec, mounts = sandbox_spec(req)
    env = _declared_env(node)
    # A shell step with nothing to unpack or patch needs no Python in the sandbox: its script
    # runs as the runtime would run it, with the same environment, directory and process tree.
    # (Unless LC_ALL is empty: then Python would have coerced the locale and exported LC_CTYPE.)
    # Nor one that can reach nvcc: the runtime wraps every nvcc (builders/pidns.py says why).
    direct = (node.builder == "shell" and not (spec["source"] or spec["submodules"] or spec["patches"])
              and bool(env.get("LC_ALL", sandbox.BASE_ENV["LC_ALL"]))
              and not (req.sandboxed and _may_reach_nvcc(req, env)))
    limits = node.limits if node.limits is not None else Limits(memory=node.memory or DEFAULT_MEMORY)
    if req.sandboxed:
        argv, log_head = _sandboxed_argv(req, spec, mounts, env, direct, build_dir, limits)
        proc_env = None
    else:
        argv, proc_env, log_head = _unsandboxed_argv(spec, mounts, env, direct, build_dir)
    group = None
    if req.sandboxed and limits_mod.enforcement().cgroup is not None:
        try:
            group = limits_mod.acquire(limits)
        except OSError as exc:
            raise BuildError(node.label(), f"cannot make the build's cgroup: {exc.strerror}") from None
    try:
        try:
            rc, timed_out = run_logged(argv, proc_env, build_dir / "src" if direct and not req.sandboxed else build_dir,
                                        log_path, log_head, running, sandboxed=req.sandboxed, group=group,
                                        timeout=limits.timeout, cores=node.cores)
        except ValueError as exc:  # (a NUL byte in an argument or the environment: refused, never run)
            raise BuildError(node.label(), str(exc)) from None
        if rc != 0:
            tail = tail_of(log_path)
            if timed_out:
                raise BuildError(node.label(), f"timed out after {limits_mod.format_seconds(limits.timeout)} "
                                               "([resources] timeout)", log=str(log_path), tail=tail)
            last = next((l for l in reversed(tail.splitlines()) if l.startswith("planner: build failed: ")), None)
            reason = (last[len("planner: build failed: "):] if last else f"bash exited with status {rc}" if direct
                      else f"builder exited with status {rc}")
            hit = limit_hit(limits, group, tail) if req.sandboxed else None
            if hit:
                reason = f"{reason} ({hit})"
            raise BuildError(node.label(), reason, log=str(log_path), tail=tail)
    finally:
        if group is not None:
            limits_mod.release(group)
    return build_dir / "out"


def _may_reach_nvcc(req: BuildRequest, env: dict[str, str]) -> bool:
    """Whether a build might find an nvcc to run (and so needs the runtime, which wraps it), given
    a Python to run the runtime with: a toolkit among its dependencies, CUDA_HOME or CUDA_PATH
    declared, or nvcc where a root filesystem installs it. A guess from outside, generous on
    purpose: the runtime looks for itself and wraps only what it finds."""
    root = req.deps["rootfs"].path if "rootfs" in req.deps else (
        req.deps[BUILD_ROOT_MOUNT].path if BUILD_ROOT_MOUNT in req.deps else Path("/"))
    if not os.path.lexists(root / "usr/bin/python3"):
        return False  # a root filesystem without Python: the script runs as it always did
    if any(mount.startswith("toolchain/") for mount in req.deps) or "CUDA_HOME" in env or "CUDA_PATH" in env:
        return True
    # (The host's /usr/local is hidden from a build.)
    places = ("usr/bin/nvcc",) if root == Path("/") else ("usr/local/cuda/bin/nvcc", "usr/bin/nvcc")
    return any(os.path.lexists(root / rel) for rel in places)


def _run_builtin(req: BuildRequest, build_dir: Path, log_path: Path) -> None:
    """A builder that runs in the planner process (no sandbox): its errors keep the node's name."""
    node = req.node
    with open_log(log_path, "w") as log:
        try:
            builder(node.builder).runner()(node, req, build_dir / "out", log)
        except UnsafeTree as exc:  # name the node as well as the input and the path
            log.write(f"planner: build failed: {exc.line()}\n")
            raise BuildError(node.label(), f"refused: {exc.line()}", log=str(log_path)) from None
        except PlannerError:
            raise
        except Exception as exc:  # a builtin builder's bug or bad input: keep the node's name on it
            log.write(f"planner: build failed: {exc!r}\n")
            raise BuildError(node.label(), f"{node.builder} failed: {exc}", log=str(log_path),
                             tail=tail_of(log_path)) from exc


def _native_pid1(spec: dict, build_dir: Path) -> bytes:
    """Give an emulated build's runtime the host's native process-1 helper (planner/pid1.py says
    why); returns the log line that says why not, where it cannot be compiled here."""
    from . import pid1

    try:
        spec["native-pid1"] = pid1.install(build_dir.parent, build_dir)
    except pid1.HelperUnavailable as exc:
        return f"planner: no native process-1 helper for nvcc ({exc})\n".encode()
    return b""


def _sandboxed_argv(req: BuildRequest, spec: dict, mounts: list, env: dict[str, str], direct: bool,
                    build_dir: Path, limits: Limits) -> tuple[list[str], bytes]:
    """The bubblewrap command line of a sandboxed build, and what its log starts with."""
    node = req.node
    log_head = b""
    rootfs = req.deps["rootfs"].path if "rootfs" in req.deps else None
    build_root = req.deps[BUILD_ROOT_MOUNT].path if BUILD_ROOT_MOUNT in req.deps else None
    if build_root is not None:
        # The set's build root: the same pinned tools on every machine of this platform.
        if not (build_root / "usr/bin/python3").exists() and not (build_root / "usr/bin/python3").is_symlink():
            raise BuildError(node.label(), f"the build root has no /usr/bin/python3 ({build_root.name})")
    if rootfs is not None:
        mounts = [m for m in mounts if m.dest != "/deps/rootfs"]
        if not direct and not (rootfs / "usr/bin/python3").exists() and not (rootfs / "usr/bin/python3").is_symlink():
            raise BuildError(node.label(), f"the build root filesystem has no /usr/bin/python3 ({rootfs.name})")
        host = host_platform()
        if node.variant.platform not in (None, host):
            by = emulator(node.variant.platform)
            if by is None:
                raise BuildError(node.label(), f"cannot run a {node.variant.platform} root filesystem on this "
                                               f"{host} host: use a native worker (--executor), or register "
                                               "a binfmt_misc handler with the F flag (qemu-user-static)")
            log_head += f"planner: {node.variant.platform} emulated on this {host} host by {by}\n".encode()
            if not direct and _may_reach_nvcc(req, env):
                log_head += _native_pid1(spec, build_dir)
    if direct:
        env.update(out=f"{sandbox.BUILD_DIR}/out", src=f"{sandbox.BUILD_DIR}/src")
        inner, head = shell_argv(spec["script"], limits)
        log_head += head
    else:
        _ensure_runtime_bytecode()
        spec["limits"] = limits.to_json()  # the runtime sets them on itself, first thing inside
        (build_dir / "spec.json").write_text(json.dumps(spec, sort_keys=True))
        inner = ["/usr/bin/python3", "-s", "-m", "planner.builders.runtime", "/build/spec.json"]
    argv = sandbox.command(inner, build_dir=build_dir, mounts=mounts, env=env, rootfs=rootfs,
                           build_root=build_root if rootfs is None else None, cores=node.cores,
                           tmp_size=limits.tmp)
    return argv, log_head


def _unsandboxed_argv(spec: dict, mounts: list, env: dict[str, str], direct: bool, build_dir: Path
                      ) -> tuple[list[str], dict[str, str], bytes]:
    """--sandbox=off: same runtime, real paths rewritten into the spec. Marked impure.
    Returns the command, its environment and what its log starts with."""
    log_head = b""
    spec = _rewrite_paths(spec, mounts, build_dir)
    proc_env = sandbox.unsandboxed_env(env, build_dir)
    proc_env["PYTHONPATH"] = str(PLANNER_PKG.parent)
    proc_env["PLANNER_BUILD_DIR"] = str(build_dir)
    if direct:
        proc_env.update(out=str(build_dir / "out"), src=str(build_dir / "src"))
        argv, log_head = shell_argv(spec["script"], None)
    else:
        spec_path = build_dir / "spec.json"
        spec_path.write_text(json.dumps(spec, sort_keys=True))
        argv = ["/usr/bin/python3", "-s", "-m", "planner.builders.runtime", str(spec_path)]
    return argv, proc_env, log_head


_RUNTIME_MODULES = ("__init__.py", "builders/__init__.py", "builders/runtime.py", "builders/wheelfile.py",
                    "builders/cuda.py", "builders/cuda_archs.py", "builders/pidns.py")
_runtime_compiled = False


def _ensure_runtime_bytecode() -> None:
    """Compile the in-sandbox runtime once, beside its source, where the sandbox's read-only
    view of the package finds it: otherwise every Python build step compiles it again."""
    global _runtime_compiled
    if _runtime_compiled:
        return
    _runtime_compiled = True
    import importlib.util
    import py_compile

    for rel in _RUNTIME_MODULES:
        src = PLANNER_PKG / rel
        try:
            cfile = importlib.util.cache_from_source(str(src))
            st = os.stat(src)
            try:
                with open(cfile, "rb") as f:
                    head = f.read(16)
                if (head[:4] == importlib.util.MAGIC_NUMBER and head[4:8] == b"\0\0\0\0"
                        and int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
                        and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF):
                    continue
            except OSError:
                pass
            py_compile.compile(str(src), cfile=cfile, doraise=True)
        except (OSError, py_compile.PyCompileError):
            pass  # a read-only installation: pip compiled it at install time


def _rewrite_paths(spec: dict, mounts: list[sandbox.Mount], build_dir: Path) -> dict:
    table = sorted(((m.dest, str(m.source)) for m in mounts), key=lambda t: -len(t[0]))

    def fix_script(text: str) -> str:
        import re

        for dest, src in table + [(sandbox.BUILD_DIR, str(build_dir))]:
            text = re.sub(re.escape(dest) + r"(?=/|$|[\s\"';:)])", lambda _m, s=src: s, text)
        return text

    def fix(v):
        if isinstance(v, str):
            for dest, src in table:
                if v == dest or v.startswith(dest + "/"):
                    return src + v[len(dest):]
            return v.replace(sandbox.BUILD_DIR, str(build_dir))
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    out = fix(spec)
    if spec.get("script"):
        # --sandbox=off only: the script's fixed paths (/deps/x, /inputs/y) name the real ones.
        out["script"] = fix_script(spec["script"])
    return out


def previous_log(log_path: Path) -> Path:
    """Where a build's log goes when the same build key is attempted again."""
    return log_path.with_name(log_path.name[: -len(".log")] + ".previous.log")


def build(req: BuildRequest, store: Store, running: Running, *,
          on_log: Callable[[str], None] = lambda s: None) -> Built:
    """Build one node into the store, or reuse what is there under its build key."""
    node = req.node
    resolved = resolve(node, digests(req.deps))
    bkey = resolved.build_key
    with store.key_lock(bkey):
        existing = store.lookup(bkey)
        if existing is not None:
            store.realise(node.key, bkey, existing.digest)
            return Built(existing, bkey, 0.0, reused=True)
        before = store.realisation(node.key)
        previous_digest = before.digest if before is not None and before.build_key == bkey else None
        build_dir = store.new_build_dir(bkey)
        log_path = store.root / "logs" / f"{bkey}.log"
        if log_path.exists():
            # An earlier attempt under this key left no entry (it failed or was stopped): keep its
            # log beside the new one, so that a retry never erases why the last attempt failed.
            os.replace(log_path, previous_log(log_path))
        start = time.monotonic()
        try:
            out = run_builder(attrs.evolve(req, caches=store.root / "cache"), build_dir, log_path, running)
            _check_output(node, out)
            try:
                entry = store.add(bkey, node.name, node.version, out, kind="build", impure=node.impure)
            except StoreError as exc:  # what the output holds: the node's failure, not the store's
                raise BuildError(node.label(), exc.message) from None
        finally:
            remove_tree(build_dir)
        seconds = time.monotonic() - start
        record(store, node, resolved, entry.digest)
        return Built(entry, bkey, seconds, reused=False, previous_digest=previous_digest)


WHEEL_BUILDERS = frozenset({"python-wheel", "cuda-wheel"})


def _check_output(node: Node, out: Path) -> None:
    """The output exists, and a wheel builder's wheels fit the node's platform. Read here, on
    the host, before the store checks the tree: a build's `*.whl` may be a link or a FIFO, so
    each is opened as a regular file below `out` only (never followed, never waited on)."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    if st is None or (stat.S_ISDIR(st.st_mode) and not _names(out)):
        raise BuildError(node.label(), "the builder produced no output")
    if node.builder in WHEEL_BUILDERS and stat.S_ISDIR(st.st_mode):
        import zipfile

        from .safetree import Tree
        from .wheelplatform import wheel_platform_problems

        with Tree(out, where=f"{node.label()}: output") as tree:
            for name in sorted(n for n in _names(out) if n.endswith(".whl")):
                try:
                    with tree.open_file(name) as f:
                        problems = wheel_platform_problems(f, node.variant.platform, name)
                except UnsafeTree as exc:
                    raise BuildError(node.label(), f"output {exc.message}") from None
                except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError,
                        EOFError, OSError) as exc:
                    raise BuildError(node.label(), f"output {name} is not a readable wheel: {exc}") from None
                if problems:
                    raise BuildError(node.label(), problems[0])


def _names(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return [e.name for e in entries]


def rebuild_for_check(req: BuildRequest, store: Store, running: Running) -> tuple[str, Path, Path]:
    """Build again into a temporary place; returns (digest, output, build_dir) for comparison."""
    from .hashing import tree_digest

    bkey = resolve(req.node, digests(req.deps)).build_key
    build_dir = store.new_build_dir(bkey + "-check")
    log_path = store.root / "logs" / f"{bkey}.check.log"
    out = run_builder(req, build_dir, log_path, running)
    return tree_digest(out), out, build_dir


def differing_files(a: Path, b: Path) -> list[str]:
    """Relative paths whose content, kind or exec bit differ between two trees."""
    from .hashing import tree_digest

    if a.is_file() or b.is_file():
        return [a.name] if tree_digest(a) != tree_digest(b) else []

    def listing(root: Path) -> dict[str, str]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for f in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = Path(dirpath) / f
                out[str(p.relative_to(root))] = tree_digest(p) + ("x" if os.access(p, os.X_OK) and not p.is_symlink() else "")
        return out

    la, lb = listing(a), listing(b)
    return sorted(k for k in la.keys() | lb.keys() if la.get(k) != lb.get(k))
