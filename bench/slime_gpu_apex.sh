#!/bin/bash
# Apex 10417ace (the store's apex-source, carried as CARRY/apex-src.tar.xz) built twice on the GPU
# machine for ARCH (torch's form, default 9.0a: what a Hopper GPU runs) with the recipe's flags,
# MAX_JOBS=16, every nvcc run through planner's wrapper (planner/builders/pidns.py: process 1 of
# its own PID namespace, its own temporary folder) as the cuda-wheel builder runs it; each build from a fresh
# copy at the same path. The two wheels' shared libraries are compared byte for byte and the
# temporary-file names nvcc left in them are listed; then the second build's kernels are checked
# against torch on the GPU (`bench/slime_gpu_check.py apex`).
#   bash bench/slime_gpu_apex.sh CARRY [ARCH]      (on the GPU machine, from the repository root)
set -euo pipefail
carry=$(realpath "$1"); arch=${2:-9.0a}
repo=$(pwd); w=/tmp/apex-repro; rm -rf "$w"; mkdir -p "$w/bin"
python3 - "$w/bin/nvcc" <<PY
import os, sys
sys.path.insert(0, "$repo/planner/builders")
import pidns
print("pid namespace:", pidns.works("$w/tmp") or "works")
open(sys.argv[1], "w").write(pidns.wrapper_script("/usr/local/cuda/bin/nvcc", sys.executable, "$w/tmp"))
os.chmod(sys.argv[1], 0o755)
PY
for n in 1 2; do
    rm -rf "$w/src" "$w/wheel-$n"; mkdir -p "$w/src"; tar -xJf "$carry/apex-src.tar.xz" -C "$w/src"
    start=$(date +%s)
    (cd "$w/src" && PYTORCH_NVCC="$w/bin/nvcc" PATH="$w/bin:$PATH" TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=16 \
        NVCC_APPEND_FLAGS="--threads 4" CUDA_VISIBLE_DEVICES="" \
        python3 -m pip wheel -q --no-build-isolation --no-deps -w "$w/wheel-$n" \
        --config-settings=--build-option=--cpp_ext --config-settings=--build-option=--cuda_ext \
        --config-settings=--build-option=--parallel --config-settings=--build-option=4 . > "$w/log-$n" 2>&1) \
        || { grep -m20 -E "error|FAILED" "$w/log-$n"; exit 1; }
    echo "build $n: $(( $(date +%s) - start )) s"
    python3 -c "import zipfile, sys; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [m for m in z.namelist() if m.endswith('.so')])" "$w"/wheel-$n/*.whl "$w/so-$n"
done
same=0; differ=0
for so in $(cd "$w/so-1" && ls *.so); do
    if cmp -s "$w/so-1/$so" "$w/so-2/$so"; then same=$((same+1)); else differ=$((differ+1)); echo "DIFFERS: $so"; fi
done
echo "shared libraries: $same identical, $differ differing"
echo "tmpxft names: $(strings -a "$w"/so-2/*.so | grep -o 'tmpxft_[0-9a-f]*_[0-9a-f]*' | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
python3 -c "import zipfile, sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w"/wheel-2/*.whl "$w/installed"
python3 bench/slime_gpu_check.py apex "$w/installed"
[ "$differ" = 0 ]
