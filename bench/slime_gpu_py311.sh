#!/bin/bash
# The int4_qat wheel BUILT HERE (CPython 3.11, pins-base) on a GPU machine whose torch 2.11.0+cu130 is
# for another Python (3.12): run under pins-base's own python3.11, carried in .gpu-carry/py311.tar.xz
# (the interpreter, its standard library, the few shared libraries its modules need, and torch
# 2.11.0's two CPython-3.11-specific files from PyPI's cp311 wheel: torch/_C.cpython-311-*.so and
# torch/lib/libtorch_python.so). Everything else of torch (libtorch_cpu/cuda, the nvidia-* CUDA
# libraries) is the machine's own 2.11.0+cu130, seen through a symlink tree; `-S` keeps the
# machine's CPython 3.12 site-packages (numpy's cp312 extension) off the path.
#   bash bench/slime_gpu_py311.sh .gpu-carry      (on the GPU machine, from the repository root;
#   bench/slime_gpu_carry.sh writes .gpu-carry from a store)
set -euo pipefail
carry=$(realpath "$1")
x=$(mktemp -d)
tar -xJf "$carry/py311.tar.xz" -C "$x"
site_dir=$(python3 -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
echo "machine: $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())')"
site="$x/site"
mkdir -p "$site"
cp -as "$site_dir/torch" "$site/torch"
rm -f "$site"/torch/_C.cpython-3*.so "$site/torch/lib/libtorch_python.so"
cp "$x/torch311/_C.cpython-311-x86_64-linux-gnu.so" "$site/torch/"
cp "$x/torch311/libtorch_python.so" "$site/torch/lib/"
for n in nvidia triton torchgen typing_extensions.py sympy mpmath networkx jinja2 markupsafe fsspec filelock; do
    [ -e "$site_dir/$n" ] && ln -s "$site_dir/$n" "$site/$n"
done
mkdir -p "$x/int4"
python3 -c "import zipfile, sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$carry"/fake_int4_quant_cuda-*.whl "$x/int4"
export LD_LIBRARY_PATH="$x/lib" PYTHONPATH="$site" PYTHONNOUSERSITE=1
"$x/usr/bin/python3.11" -S -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, torch.__file__)'
sha256sum "$carry"/fake_int4_quant_cuda-*.whl
"$x/usr/bin/python3.11" -S bench/slime_gpu_check.py int4 "$x/int4"
