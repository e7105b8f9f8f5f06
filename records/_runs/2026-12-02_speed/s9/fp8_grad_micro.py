"""Session 9 micro-bench: the FP8 head's backward pieces at the record's micro-step shape (T = 49152, V = 50304,
D = 768), one H200. Run from the repository root: PYTHONPATH=. python records/_runs/2026-12-02_speed/s9/fp8_grad_micro.py

1. Variants of the fused cross-entropy gradient kernel that writes the e5m2 gradient in both layouts (session 8's
   kernel measured ~18 ms a micro-step where its ~9.9 GB need ~2.5 ms): tile shape, warps, pointer vs TMA loads and
   stores, reciprocal multiply vs exact division, with and without the transposed copy.
2. The references: the bf16 cross-entropy backward, the unfused quantize pass, a bf16 copy of the logits.
3. The head's three GEMMs in bf16 and in FP8 (torch._scaled_mm), to bound what an FP8 head can save.
"""
import torch
import triton
import triton.language as tl
from triton.testing import do_bench
from triton.tools.tensor_descriptor import TensorDescriptor

import train_gpt as T
from train_gpt import _tanh


@triton.jit
def grad_kernel(L, l_desc, G8, G8T, g8_desc, g8t_desc, targets, weights, lse, grad_loss, T, V, stride_l, inv_T,
                shift, width, scale, offset, grad_scale, inv_grad_scale, K: tl.constexpr, BM: tl.constexpr,
                BN: tl.constexpr, TMA_LOAD: tl.constexpr, TMA_STORE: tl.constexpr, RECIP: tl.constexpr,
                TRANSPOSE: tl.constexpr):
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(V, BN)
    r0 = (pid // blocks_n) * BM
    c0 = (pid % blocks_n) * BN
    rows = (r0 + tl.arange(0, BM)).to(tl.int64)
    cols = (c0 + tl.arange(0, BN)).to(tl.int64)
    if TMA_LOAD:
        x = l_desc.load([r0, c0]).to(tl.float32)
    else:
        x = tl.load(L + rows[:, None] * stride_l + cols[None, :], mask=(rows[:, None] < T) & (cols[None, :] < V),
                    other=0.0).to(tl.float32)
    t = _tanh((x + shift) / width, True)
    row_lse = tl.load(lse + rows, mask=rows < T, other=0.0)
    weight_sum = tl.zeros((BM,), dtype=tl.float32)
    hits = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.static_range(K):
        ahead = rows + k < T
        w_k = tl.load(weights + k)
        weight_sum += tl.where(ahead, w_k, 0.0)
        target = tl.load(targets + rows + k, mask=ahead, other=-1)
        hits += tl.where(cols[None, :] == target[:, None], w_k, 0.0)
    g = tl.load(grad_loss).to(tl.float32) * inv_T * (scale / width)
    d = tl.exp(scale * t + offset - row_lse[:, None]) * weight_sum[:, None] - hits
    if RECIP:
        y = (g * d * (1 - t * t) * inv_grad_scale).to(tl.float8e5)
    else:
        y = tl.math.div_rn(g * d * (1 - t * t), grad_scale).to(tl.float8e5)
    if TMA_STORE:
        g8_desc.store([r0, c0], y)
        if TRANSPOSE:
            g8t_desc.store([c0, r0], tl.trans(y))
    else:
        tl.store(G8 + rows[:, None] * V + cols[None, :], y, mask=(rows[:, None] < T) & (cols[None, :] < V))
        if TRANSPOSE:
            tl.store(G8T + cols[:, None] * T + rows[None, :], tl.trans(y),
                     mask=(cols[:, None] < V) & (rows[None, :] < T))


def run_variant(logits, targets, weights, lse, grad_loss, g8, g8t, cap, grad_scale, bm, bn, warps, tma_load,
                tma_store, recip, transpose):
    T_, V = logits.shape
    l_desc = TensorDescriptor.from_tensor(logits, [bm, bn]) if tma_load else logits
    g8_desc = TensorDescriptor.from_tensor(g8, [bm, bn]) if tma_store else g8
    g8t_desc = TensorDescriptor.from_tensor(g8t, [bn, bm]) if tma_store else g8t
    grid = (triton.cdiv(T_, bm) * triton.cdiv(V, bn),)
    return lambda: grad_kernel[grid](logits, l_desc, g8, g8t, g8_desc, g8t_desc, targets, weights, lse, grad_loss,
                                     T_, V, logits.stride(0), 1.0 / T_, *cap, grad_scale, 1.0 / grad_scale,
                                     K=weights.numel(), BM=bm, BN=bn, TMA_LOAD=tma_load, TMA_STORE=tma_store,
                                     RECIP=recip, TRANSPOSE=transpose, num_warps=warps)


def main():
    torch.manual_seed(0)
    T_, V, D = 49152, 50304, 768
    cap = T.LogitCap.parse("sigmoid:23,5,7.5")
    logits = (torch.randn(T_, V, device="cuda") * 3).bfloat16()
    targets = torch.randint(0, V, (T_,), device="cuda")
    weights = torch.tensor([1.0, 0.5, 0.25], device="cuda")
    grad_loss = torch.ones((), device="cuda")
    lse = torch.stack([T.softcap(logits[i:i + 4096].float(), cap).logsumexp(-1) for i in range(0, T_, 4096)]).flatten()
    grad_scale = T.FP8_HEAD_GRAD_SCALE / T_
    gbytes = T_ * V * (2 + 1 + 1) / 1e9
    g8, g8t = torch.empty(T_, V, device="cuda", dtype=torch.float8_e5m2), torch.empty(V, T_, device="cuda",
                                                                                        dtype=torch.float8_e5m2)
    # reference bytes: session 8's kernel (exact division, pointer stores)
    run_variant(logits, targets, weights, lse, grad_loss, g8, g8t, cap, grad_scale, 128, 128, 8, False, False,
                False, True)()
    ref, ref_t = g8.view(torch.uint8).clone(), g8t.view(torch.uint8).clone()
    print(f"info:micro bytes read+written per fused call: {gbytes:.2f} GB")
    variants = [  # bm, bn, warps, tma_load, tma_store, recip, transpose
        (128, 128, 8, False, False, False, True),  # session 8's
        (128, 128, 8, False, False, False, False),
        (128, 128, 8, False, False, True, True),
        (128, 128, 16, False, False, True, True),
        (64, 128, 4, False, False, True, True),
        (64, 128, 8, False, False, True, True),
        (128, 64, 4, False, False, True, True),
        (64, 64, 4, False, False, True, True),
        (128, 128, 8, False, True, True, True),
        (128, 128, 16, False, True, True, True),
        (64, 128, 4, False, True, True, True),
        (128, 64, 4, False, True, True, True),
        (64, 64, 4, False, True, True, True),
        (128, 128, 8, True, True, True, True),
        (64, 128, 4, True, True, True, True),
        (128, 64, 4, True, True, True, True),
        (64, 256, 8, True, True, True, True),
        (256, 64, 8, True, True, True, True),
        (128, 128, 8, True, True, True, False),
    ]
    for v in variants:
        try:
            g8.zero_(), g8t.zero_()
            fn = run_variant(logits, targets, weights, lse, grad_loss, g8, g8t, cap, grad_scale, *v)
            fn()
            torch.cuda.synchronize()
            same = (g8.view(torch.uint8) == ref).float().mean().item()
            same_t = (g8t.view(torch.uint8) == ref_t).float().mean().item() if v[-1] else float("nan")
            ms = do_bench(fn, warmup=50, rep=300)
            moved = T_ * V * (2 + 1 + (1 if v[-1] else 0)) / 1e9
            print(f"info:micro fused bm={v[0]} bn={v[1]} warps={v[2]} tma_load={v[3]} tma_store={v[4]} recip={v[5]} "
                  f"transpose={v[6]}: {ms:.3f} ms, {1000 * moved / ms:.0f} GB/s, same bytes {same:.6f} / {same_t:.6f}")
        except Exception as e:  # a config Triton cannot build is reported, not fatal
            print(f"info:micro fused {v}: failed {type(e).__name__}: {str(e)[:200]}")
    ms = do_bench(lambda: T.softcap_cross_entropy_backward(grad_loss, logits, targets, weights, lse, *cap, True),
                  warmup=50, rep=300)
    print(f"info:micro bf16 cross-entropy backward (row kernel): {ms:.3f} ms, {T_ * V * 4 / 1e6 / ms:.0f} GB/s")
    grad = T.softcap_cross_entropy_backward(grad_loss, logits, targets, weights, lse, *cap, True)
    ms = do_bench(lambda: T.fp8_quantize_triton(grad, grad_scale, torch.float8_e5m2, True), warmup=50, rep=300)
    print(f"info:micro unfused quantize of the bf16 gradient, both layouts: {ms:.3f} ms, {1000 * gbytes / ms:.0f} GB/s")
    ms = do_bench(lambda: logits.clone(), warmup=50, rep=300)
    print(f"info:micro bf16 copy of the logits: {ms:.3f} ms, {T_ * V * 4 / 1e6 / ms:.0f} GB/s")
    del grad
    # the head's GEMMs
    x = torch.randn(T_, D, device="cuda").bfloat16()
    w = (torch.randn(D, V, device="cuda") * 0.02).bfloat16()
    gb = (torch.randn(T_, V, device="cuda") * 1e-5).bfloat16()
    flops = 2 * T_ * D * V
    e4, e5 = torch.float8_e4m3fn, torch.float8_e5m2
    x8, x8t = x.to(e4), x.T.contiguous().to(e4)
    w8, w8t = w.to(e4), w.T.contiguous().to(e4)
    g8b, g8bt = gb.to(e5), gb.T.contiguous().to(e5)
    one = torch.ones((), device="cuda")
    gemms = {
        "bf16 forward x@w": lambda: x @ w,
        "bf16 dx g@w.T": lambda: gb @ w.T,
        "bf16 dw x.T@g": lambda: x.T @ gb,
        "fp8 forward (fast accum)": lambda: torch._scaled_mm(x8, w8t.T, scale_a=one, scale_b=one,
                                                             out_dtype=torch.bfloat16, use_fast_accum=True),
        "fp8 dx": lambda: torch._scaled_mm(g8b, w8.T, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
        "fp8 dw": lambda: torch._scaled_mm(x8t, g8bt.T, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
        "fp8 dx (fast accum)": lambda: torch._scaled_mm(g8b, w8.T, scale_a=one, scale_b=one,
                                                        out_dtype=torch.bfloat16, use_fast_accum=True),
        "fp8 dw (fast accum)": lambda: torch._scaled_mm(x8t, g8bt.T, scale_a=one, scale_b=one,
                                                        out_dtype=torch.bfloat16, use_fast_accum=True),
    }
    for name, fn in gemms.items():
        ms = do_bench(fn, warmup=50, rep=300)
        print(f"info:micro gemm {name}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
