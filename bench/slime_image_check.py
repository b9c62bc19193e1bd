"""Import test of slime's image, inside the image's own root filesystem (too heavy for CI).

    python bench/slime_image_check.py LAYOUT REF [--work DIR] [--json OUT] [--only NAME,...]

LAYOUT is the OCI layout `planner realise slime` printed (a store path), REF one of its
manifests' `org.opencontainers.image.ref.name` (e.g. `sm100a-linux-amd64`). The manifest is read
by skopeo (`skopeo inspect`), unpacked by umoci (`umoci unpack --rootless`), and every package
built for the image is imported by the image's own /usr/bin/python3 under bubblewrap with that
root filesystem as `/`, no network and no GPU (chroot-like: nothing of this machine is visible
but /dev and /proc), in the environment a container runtime gives it (the image's Env, as umoci's
runtime config has it). Each import runs in its own process, twice: as the image is, and with the
toolkit's driver link stub standing in for `libcuda.so.1` (the container runtime injects the
real driver on a GPU machine; without either, code linked against the driver cannot load).
sglang is also checked at the file level: every .py file of the installed (patched) package
compiles. Prints one line per check and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# (what, python statement) imported inside the image.
IMPORTS = [
    ("torch", "import torch; print(torch.__version__, torch.version.cuda)"),
    ("fake_int4_quant_cuda", "import torch, fake_int4_quant_cuda as m; print(m.__file__)"),
    ("torch_memory_saver", "import torch_memory_saver as m; print(m.__file__)"),
    ("apex", "import apex; print(apex.__file__)"),
    ("amp_C", "import torch, amp_C; print(amp_C.__file__)"),
    ("fused_layer_norm_cuda", "import torch, fused_layer_norm_cuda as m; print(m.__file__)"),
    ("apex.normalization", "from apex.normalization import FusedLayerNorm; print(FusedLayerNorm)"),
    # TE's binding is not on sys.path by that name: TE's loader imports it from
    # transformer_engine/wheel_lib/ when transformer_engine.pytorch is imported.
    ("transformer_engine_torch", "import transformer_engine.pytorch, transformer_engine_torch as m; print(m.__file__)"),
    ("transformer_engine.pytorch", "import transformer_engine.pytorch as te; print(te.__file__)"),
    ("megatron.core", "import megatron.core as m; print(m.__file__)"),
    # Megatron-LM's compiled helper alone (megatron.core's own import also loads TE's binding).
    ("megatron helpers_cpp", "import glob, importlib.util as u; "
                             "p = glob.glob('/usr/local/lib/python3*/dist-packages/megatron/core/datasets/helpers_cpp*.so')[0]; "
                             "s = u.spec_from_file_location('helpers_cpp', p); m = u.module_from_spec(s); "
                             "s.loader.exec_module(m); print(p, len(dir(m)))"),
    # What slime's plugins import of mbridge (slime_plugins/mbridge/*.py).
    ("mbridge", "import mbridge; from mbridge.core import LLMBridge, register_model; "
                "from mbridge.models import DeepseekV3Bridge, Qwen2Bridge; print(mbridge.__version__)"),
    ("sglang", "import sglang; print(sglang.__version__)"),
    # What slime's rollout imports of SGLang: its engine, which needs sgl-kernel.
    ("sglang.srt.entrypoints.engine", "import sglang.srt.entrypoints.engine as m; print(m.__file__)"),
    ("slime", "import slime; print(slime.__file__)"),
]

# What containerd, Docker and runc give a process when the image's Env has no PATH.
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_INNER = r"""
import json, os, subprocess, sys
imports = json.loads(sys.argv[1])
image_env = json.loads(sys.argv[2])
out = []
for stub in (False, True):
    # The process environment a container runtime gives the image (umoci's runtime config: the
    # image's Env, with the runtimes' default PATH where the image sets none).
    env = {**image_env, "HOME": "/tmp", "CUDA_VISIBLE_DEVICES": ""}
    if stub:
        os.makedirs("/tmp/driver-stub", exist_ok=True)
        link = "/tmp/driver-stub/libcuda.so.1"
        if not os.path.lexists(link):
            os.symlink("/usr/local/cuda/lib64/stubs/libcuda.so", link)
        env["LD_LIBRARY_PATH"] = "/tmp/driver-stub"
    for what, stmt in imports:
        p = subprocess.run(["/usr/bin/python3", "-c", stmt], capture_output=True, text=True, env=env, timeout=600)
        err = [l for l in p.stderr.strip().splitlines() if l.strip()]
        out.append({"what": what, "stub": stub, "ok": p.returncode == 0,
                    "out": p.stdout.strip().splitlines()[-1:] , "error": err[-1:] if p.returncode else []})
import glob
site = glob.glob("/usr/local/lib/python3*/dist-packages/sglang") + glob.glob("/usr/lib/python3/dist-packages/sglang")
files = {"sglang": site[0] if site else None}
if site:
    bad = []
    n = 0
    for root, _, names in os.walk(site[0]):
        for name in names:
            if name.endswith(".py"):
                n += 1
                src = open(os.path.join(root, name), "rb").read()
                try:
                    compile(src, os.path.join(root, name), "exec")
                except SyntaxError as exc:
                    bad.append(f"{os.path.join(root, name)}: {exc}")
    files.update(py_files=n, syntax_errors=bad)
print(json.dumps({"imports": out, "sglang_files": files}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("layout", type=Path)
    ap.add_argument("ref")
    ap.add_argument("--work", type=Path, default=None, help="where to unpack (default: a temp folder, removed)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default=None, help="comma-separated names of IMPORTS to run (default: all)")
    args = ap.parse_args()
    imports = IMPORTS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        unknown = sorted(set(wanted) - {what for what, _ in IMPORTS})
        if unknown:
            raise SystemExit(f"--only: no import named {', '.join(unknown)} (one of: {', '.join(w for w, _ in IMPORTS)})")
        imports = [(what, stmt) for what, stmt in IMPORTS if what in wanted]
    for tool in ("skopeo", "umoci", "bwrap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{args.layout}:{args.ref}"], capture_output=True, text=True)
    if inspect.returncode != 0:
        raise SystemExit(f"skopeo inspect: {inspect.stderr.strip()}")
    meta = json.loads(inspect.stdout)
    print(f"skopeo: {args.ref} digest {meta['Digest']}, {meta['Os']}/{meta['Architecture']}, {len(meta['Layers'])} layers")
    work = args.work or Path(tempfile.mkdtemp(prefix="slime-image-"))
    bundle = work / "bundle"
    try:
        if not (bundle / "rootfs").is_dir():
            shutil.rmtree(bundle, ignore_errors=True)
            subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{args.layout}:{args.ref}", str(bundle)],
                           check=True, capture_output=True, text=True)
        root = bundle / "rootfs"
        runtime_env = dict(e.split("=", 1) for e in json.loads((bundle / "config.json").read_text())["process"]["env"])
        runtime_env.setdefault("PATH", _DEFAULT_PATH)
        print(f"environment: {' '.join(f'{k}={v}' for k, v in sorted(runtime_env.items()))}")
        script = work / "inner.py"
        script.write_text(_INNER)
        cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--bind", str(root), "/", "--dev", "/dev",
               "--proc", "/proc", "--tmpfs", "/tmp", "--ro-bind", str(script), "/tmp/inner.py", "--chdir", "/tmp",
               "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "/usr/bin/python3", "/tmp/inner.py",
               json.dumps(imports), json.dumps(runtime_env)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"inside the image: {proc.stderr.strip()[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["image"] = {"ref": args.ref, "digest": meta["Digest"], "layers": len(meta["Layers"])}
    for r in result["imports"]:
        state = "ok  " if r["ok"] else "FAIL"
        detail = (r["out"] if r["ok"] else r["error"]) or [""]
        print(f"{state} {r['what']}{' (driver stub)' if r['stub'] else ''}: {detail[0][:200]}")
    files = result["sglang_files"]
    print(f"sglang files: {files.get('py_files')} .py files at {files.get('sglang')}, "
          f"{len(files.get('syntax_errors', []))} that do not compile")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True))
    sys.exit(0 if all(r["ok"] for r in result["imports"] if r["stub"]) else 1)


if __name__ == "__main__":
    main()
