"""A torch CUDAExtension's shape without torch: the kernel is compiled for the arch list in
TORCH_CUDA_ARCH_LIST (dotted, as torch reads it) unless a GPU is visible, only when setup.py is
given `--with-kernel` (as apex wants `--cuda_ext`), and the build environment is recorded.
Like torch's ninja backend, the .cu files are compiled to objects at once (up to MAX_JOBS) by
$PYTORCH_NVCC, else $CUDA_HOME/bin/nvcc, then linked; the temporary-file names nvcc wrote into
each object (`tmpxft_<pid>_<n>`) are recorded too."""

import json
import os
import re
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WITH_KERNEL = "--with-kernel" in sys.argv
if WITH_KERNEL:
    sys.argv.remove("--with-kernel")


def gencode(dotted: str) -> list[str]:
    ptx = dotted.endswith("+PTX")
    major, _, minor = dotted.removesuffix("+PTX").partition(".")
    suffix = minor[1:]
    number = f"{major}{minor[0]}"
    flags = ["-gencode", f"arch=compute_{number}{suffix},code=sm_{number}{suffix}"]
    if ptx:
        flags += ["-gencode", f"arch=compute_{number},code=compute_{number}"]
    return flags


class NvccBuildExt(build_ext):
    def build_extension(self, ext):
        if os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
            raise SystemExit("kern: a GPU could be visible; refusing to guess the arch list from it")
        archs = os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", " ").split()
        flags = [f for a in archs for f in gencode(a)]
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        nvcc = os.environ.get("PYTORCH_NVCC") or os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
        objects = [os.path.join(self.build_temp, os.path.basename(s) + ".o") for s in ext.sources]
        os.makedirs(self.build_temp, exist_ok=True)
        jobs, running = int(os.environ.get("MAX_JOBS", "1")), []
        for src, obj in zip(ext.sources, objects):
            if len(running) >= jobs:
                if running.pop(0).wait() != 0:
                    raise SystemExit("kern: nvcc failed")
            running.append(subprocess.Popen([nvcc, "-c", "-Xcompiler", "-fPIC", "-O2", *flags, "-o", obj, src]))
        if [p.wait() for p in running].count(0) != len(running):
            raise SystemExit("kern: nvcc failed")
        subprocess.check_call([nvcc, "-shared", "-cudart", "static", "-Xlinker", "--strip-all", *flags,
                               "-o", out, *objects])
        temp_names = {}
        for src, obj in zip(ext.sources, objects):
            with open(obj, "rb") as f:
                names = re.findall(rb"tmpxft_[0-9a-f]{8}_[0-9a-f]{8}", f.read())
            temp_names[os.path.basename(src)] = sorted({n.decode() for n in names})
        info = {k: os.environ.get(k) for k in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "NVCC_APPEND_FLAGS",
                                               "CUDA_VISIBLE_DEVICES")}
        with open(os.path.join(os.path.dirname(out), "_buildinfo.json"), "w") as f:
            json.dump({**info, "tmpxft": temp_names}, f, sort_keys=True)


setup(
    name="kern",
    version="1.0",
    packages=["kern"],
    ext_modules=[Extension("kern._kern", ["kern/kern.cu", "kern/part2.cu", "kern/part3.cu"])] if WITH_KERNEL else [],
    cmdclass={"build_ext": NvccBuildExt},
)
