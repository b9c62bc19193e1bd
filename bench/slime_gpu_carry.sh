#!/bin/bash
# Writes the carry that bench/slime_gpu_py311.sh runs on a GPU machine: pins-base's own CPython
# 3.11 (interpreter, standard library, the libraries its modules load, not libc), torch 2.11.0's
# two CPython-3.11-specific files from the store's cp311 wheel, and the int4_qat wheel WHEEL (the
# linux/amd64 one `realise slime --target int4-qat --json` names).
#   bash bench/slime_gpu_carry.sh STORE WHEEL [OUT]      (OUT defaults to .gpu-carry; then
#   `run` with carry [".gpu-carry"]: bash bench/slime_gpu_py311.sh .gpu-carry)
set -euo pipefail
store=$(realpath "$1"); wheel=$(realpath "$2"); out=${3:-.gpu-carry}
base=""
for b in "$store"/*-pins-base-12-torch2.11.0-cu130; do  # the linux/amd64 one: an x86-64 python3.11
    [ "$(od -An -tx1 -j18 -N1 "$b/usr/bin/python3.11" 2>/dev/null | tr -d ' ')" = 3e ] && base=$b
done
[ -n "$base" ] || { echo "no linux/amd64 pins-base-12-torch2.11.0-cu130 in $store" >&2; exit 1; }
torch=$(echo "$store"/*-torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl)
[ -f "$torch" ] || { echo "no torch 2.11.0 cp311 x86_64 wheel in $store" >&2; exit 1; }
x=$(mktemp -d); trap 'rm -rf "$x"' EXIT
mkdir -p "$x/usr/bin" "$x/usr/lib" "$x/lib" "$x/torch311"
cp "$base/usr/bin/python3.11" "$x/usr/bin/"
cp -a "$base/usr/lib/python3.11" "$x/usr/lib/"
chmod -R u+w "$x"
rm -rf "$x/usr/lib/python3.11/test" "$x/usr/lib/python3.11/dist-packages" "$x/usr/lib/python3.11/site-packages"
for f in "$x/usr/bin/python3.11" "$x"/usr/lib/python3.11/lib-dynload/*.so; do
    LD_LIBRARY_PATH="$base/usr/lib/x86_64-linux-gnu" ldd "$f" 2>/dev/null || true
done | awk '/=>/ {print $3}' | sort -u | grep "^$base/" | grep -v -e '/libc\.so' -e '/libm\.so' | xargs -r cp -L -t "$x/lib"
python3 - "$torch" "$x/torch311" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("torch/_C.cpython-311-x86_64-linux-gnu.so", "torch/lib/libtorch_python.so"):
        open(f"{sys.argv[2]}/{name.rsplit('/', 1)[1]}", "wb").write(z.read(name))
PY
mkdir -p "$out"
tar -cJf "$out/py311.tar.xz" -C "$x" .
cp "$wheel" "$out/"
ls -l "$out"
