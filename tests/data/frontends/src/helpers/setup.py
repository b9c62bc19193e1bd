"""Megatron-LM's shape: a pybind11 helper declared optional=True, its include flags taken from
`python3 -m pybind11 --includes` in a subprocess (so pybind11 must be importable there)."""

import os
import subprocess
import sys

from setuptools import Extension, setup

includes = subprocess.check_output([sys.executable, "-m", "pybind11", "--includes"], text=True).split()
macros = [("HELPERS_BREAK", "1")] if os.environ.get("HELPERS_BREAK") else []
setup(
    name="helpers-mini",
    version="1.0",
    packages=["helpers_mini"],
    ext_modules=[Extension("helpers_mini.helpers_cpp", ["helpers_mini/helpers.cpp"], language="c++",
                           define_macros=macros, extra_compile_args=includes + ["-O2", "-std=c++17"],
                           optional=True)],
)
