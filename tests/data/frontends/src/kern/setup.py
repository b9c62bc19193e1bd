"""A torch CUDAExtension's shape without torch: the kernel is compiled for the arch list in
TORCH_CUDA_ARCH_LIST (dotted, as torch reads it) unless a GPU is visible, only when setup.py is
given `--with-kernel` (as apex wants `--cuda_ext`), and the build environment is recorded."""

import json
import os
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
        nvcc = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
        subprocess.check_call([nvcc, "-shared", "-Xcompiler", "-fPIC", "-O2", "-cudart", "static",
                               "-Xlinker", "--strip-all", *flags, "-o", out, *ext.sources])
        info = {k: os.environ.get(k) for k in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "NVCC_APPEND_FLAGS",
                                               "CUDA_VISIBLE_DEVICES")}
        with open(os.path.join(os.path.dirname(out), "_buildinfo.json"), "w") as f:
            json.dump(info, f, sort_keys=True)


setup(
    name="kern",
    version="1.0",
    packages=["kern"],
    ext_modules=[Extension("kern._kern", ["kern/kern.cu"])] if WITH_KERNEL else [],
    cmdclass={"build_ext": NvccBuildExt},
)
