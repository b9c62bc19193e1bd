"""GPU check of slime's CUDA kernels against torch on the same GPU (issue 16).

    python bench/slime_gpu_check.py int4 DIR        # DIR holds fake_int4_quant_cuda*.so (an unpacked wheel)
    python bench/slime_gpu_check.py int4 SRC-src    # or builds it from the pinned .cu in SRC-src, sm_90a
    python bench/slime_gpu_check.py apex-ln SRC      # builds apex's fused layer norm from SRC, sm_90a

`int4`: slime's `fake_int4_quant_cuda(x, [bm, bn], sym)` (the quantised values, per-block scale
and zero) against the same arithmetic in torch (float32, round-half-even), block shapes 1x32 and
32x1, symmetric and asymmetric, float32 and bfloat16 inputs: the outputs must be equal bit for bit.
`apex-ln`: apex's `fused_layer_norm_cuda.forward_affine` against `torch.nn.functional.layer_norm`
(max |diff| below 1e-4 in float32). Prints one line per case; exit status 0 when all match.
"""

from __future__ import annotations

import sys


def _int4_reference(x, block, sym):
    import torch

    bm, bn = block
    xf = x.float()
    M, N = xf.shape
    g = xf.reshape(M // bm, bm, N // bn, bn).permute(0, 2, 1, 3).reshape(M // bm, N // bn, bm * bn)
    if sym:
        amax = g.abs().amax(-1)
        scale = torch.clamp(amax * torch.tensor(1.0 / 7.0, dtype=torch.float32, device=x.device), min=1e-5)
        q = torch.round(g / scale[..., None])
        zero = None
    else:
        lo, hi = g.amin(-1), g.amax(-1)
        scale = torch.clamp((hi - lo) * torch.tensor(1.0 / 15.0, dtype=torch.float32, device=x.device), min=1e-5)
        zero = torch.clamp(-torch.round(lo / scale), 0.0, 15.0)
        q = torch.round(g / scale[..., None]) + zero[..., None]
    out = q.reshape(M // bm, N // bn, bm, bn).permute(0, 2, 1, 3).reshape(M, N)
    return out.to(x.dtype), scale.to(x.dtype), None if zero is None else zero.to(x.dtype)


def check_int4(folder: str) -> bool:
    import torch

    if folder.endswith("-src"):  # build the pinned source here, for this GPU's sm_90a
        from torch.utils.cpp_extension import load

        k = load(name="fake_int4_quant_cuda", sources=[f"{folder}/fake_int4_quant_cuda.cu"],
                 extra_cflags=["-O3", "-std=c++17"],
                 extra_cuda_cflags=["-O3", "-std=c++17", "--expt-relaxed-constexpr",
                                    "-gencode=arch=compute_90a,code=sm_90a"])
    else:
        sys.path.insert(0, folder)
        import fake_int4_quant_cuda as k

    print(f"int4_qat: {k.__file__}; torch {torch.__version__}; {torch.cuda.get_device_name()}")
    ok = True
    gen = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for block in ([1, 32], [32, 1]):
            for sym in (True, False):
                x = (torch.randn(1024, 4096, device="cuda", generator=gen) * 3).to(dtype)
                out, scale, zero = k.fake_int4_quant_cuda(x, block, sym)
                r_out, r_scale, r_zero = _int4_reference(x, block, sym)
                same = torch.equal(out, r_out) and torch.equal(scale, r_scale)
                if not sym:
                    same = same and torch.equal(zero, r_zero)
                diff = (out.float() - r_out.float()).abs().max().item()
                print(f"  {str(dtype):15} block {block} sym={sym}: {'equal' if same else 'DIFFERENT'} (max |diff| {diff})")
                ok &= same
    return ok


def check_apex_ln(src: str) -> bool:
    import os

    import torch
    import torch.nn.functional as F
    from torch.utils.cpp_extension import load

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    mod = load(name="fused_layer_norm_cuda", sources=[f"{src}/layer_norm_cuda.cpp", f"{src}/layer_norm_cuda_kernel.cu"],
               extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "--use_fast_math", "-maxrregcount=50"], verbose=False)
    ok = True
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape, hidden in (((64, 512, 1024), 1024), ((8, 4096), 4096)):
        x = torch.randn(*shape, device="cuda", generator=gen)
        w = torch.randn(hidden, device="cuda", generator=gen)
        b = torch.randn(hidden, device="cuda", generator=gen)
        out, _mean, _invvar = mod.forward_affine(x, [hidden], w, b, 1e-5)
        ref = F.layer_norm(x, [hidden], w, b, 1e-5)
        diff = (out - ref).abs().max().item()
        good = diff < 1e-4
        print(f"  apex fused layer norm {tuple(shape)}: max |diff| vs torch {diff:.2e} ({'ok' if good else 'TOO LARGE'})")
        ok &= good
    return ok


def main() -> None:
    what, arg = sys.argv[1], sys.argv[2]
    ok = check_int4(arg) if what == "int4" else check_apex_ln(arg)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
