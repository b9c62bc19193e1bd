"""GPU check of slime's CUDA kernels against torch on the same GPU (issue 16).

    python bench/slime_gpu_check.py int4 DIR        # DIR holds fake_int4_quant_cuda*.so (an unpacked wheel)
    python bench/slime_gpu_check.py int4 SRC-src    # or builds it from the pinned .cu in SRC-src, sm_90a
    python bench/slime_gpu_check.py apex-ln SRC      # builds apex's fused layer norm from SRC, sm_90a
    python bench/slime_gpu_check.py apex DIR         # DIR: an unpacked apex wheel (`--cpp_ext --cuda_ext`)

`int4`: slime's `fake_int4_quant_cuda(x, [bm, bn], sym)` (the quantised values, per-block scale
and zero) against the same arithmetic in torch (float32, round-half-even), block shapes 1x32 and
32x1, symmetric and asymmetric, float32 and bfloat16 inputs: the outputs must be equal bit for bit.
`apex-ln`: apex's `fused_layer_norm_cuda.forward_affine` against `torch.nn.functional.layer_norm`
(max |diff| below 1e-4 in float32). `apex`: the same layer norm through the wheel's
`apex.normalization.FusedLayerNorm`, and `amp_C.multi_tensor_l2norm` / `multi_tensor_scale` against
torch's own norm and multiply. Prints one line per case; exit status 0 when all match.
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


def check_apex_wheel(folder: str) -> bool:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, folder)
    import amp_C
    import fused_layer_norm_cuda
    from apex.multi_tensor_apply import multi_tensor_applier
    from apex.normalization import FusedLayerNorm

    print(f"apex: {fused_layer_norm_cuda.__file__}; torch {torch.__version__}; {torch.cuda.get_device_name()}")
    ok = True
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 512, 1024, device="cuda", generator=gen)
    ln = FusedLayerNorm(1024).cuda()
    with torch.no_grad():
        ln.weight.copy_(torch.randn(1024, device="cuda", generator=gen))
        ln.bias.copy_(torch.randn(1024, device="cuda", generator=gen))
        diff = (ln(x) - F.layer_norm(x, [1024], ln.weight, ln.bias, ln.eps)).abs().max().item()
    print(f"  FusedLayerNorm (64, 512, 1024): max |diff| vs torch {diff:.2e} ({'ok' if diff < 1e-4 else 'TOO LARGE'})")
    ok &= diff < 1e-4
    tensors = [torch.randn(n, device="cuda", generator=gen) for n in (1000, 4096, 65536, 3)]
    flag = torch.zeros(1, dtype=torch.int, device="cuda")
    norm, _ = multi_tensor_applier(amp_C.multi_tensor_l2norm, flag, [tensors], False)
    ref = torch.linalg.vector_norm(torch.cat(tensors))
    rel = abs(norm.item() - ref.item()) / ref.item()
    print(f"  amp_C.multi_tensor_l2norm: {norm.item():.6f} vs torch {ref.item():.6f} (rel {rel:.1e}, {'ok' if rel < 1e-5 else 'TOO LARGE'})")
    ok &= rel < 1e-5
    outs = [torch.empty_like(t) for t in tensors]
    multi_tensor_applier(amp_C.multi_tensor_scale, flag, [tensors, outs], 0.5)
    same = all(torch.equal(o, t * 0.5) for o, t in zip(outs, tensors)) and flag.item() == 0
    print(f"  amp_C.multi_tensor_scale x0.5: {'equal' if same else 'DIFFERENT'}")
    return ok and same


def main() -> None:
    what, arg = sys.argv[1], sys.argv[2]
    ok = {"int4": check_int4, "apex-ln": check_apex_ln, "apex": check_apex_wheel}[what](arg)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
