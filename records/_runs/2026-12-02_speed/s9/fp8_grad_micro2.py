"""Session 9 micro-bench 2: the FP8 gradient's transposed layout written as 4-byte words. Call 1 showed every
variant that transposes a tile of FP8 bytes in Triton at 10-23 ms a micro-step against 5.6 ms without the
transpose (and the fast pointer-load + TMA-store ones wrong in a quarter of the transposed bytes). Here each program
computes its tile as four interleaved row sub-tiles (rows 4i + j, j = 0..3), all in one register layout, packs
the four e5m2 bytes of a column into one uint32 (little-endian: row 4i + j is byte j), and transposes those words:
a quarter of the elements, 4 bytes each. Also the two-kernel alternative (the row kernel writes ĝ, a packed
transpose kernel writes ĝᵀ) and the row kernel writing ĝ and the bf16 gradient (dw in bf16).
Run from the repository root: PYTHONPATH=. python records/_runs/2026-12-02_speed/s9/fp8_grad_micro2.py"""
import os

import torch
import triton
import triton.language as tl
from triton.testing import do_bench
from triton.tools.tensor_descriptor import TensorDescriptor

import train_gpt as T
from train_gpt import _tanh
from fp8_grad_micro import run_variant  # session 8's kernel: the reference bytes

FAST = tl.constexpr("MICRO_CPU" not in os.environ)  # the interpreter has no tanh.approx


@triton.jit
def _grad_rows(L, targets, weights, rows, cols, T, V, stride_l, g, shift, width, scale, offset, inv_grad_scale, lse,
               K: tl.constexpr):
    """The e5m2 gradient of the (len(rows), len(cols)) tile."""
    x = tl.load(L + rows[:, None] * stride_l + cols[None, :], mask=(rows[:, None] < T) & (cols[None, :] < V),
                other=0.0).to(tl.float32)
    t = _tanh((x + shift) / width, FAST)
    row_lse = tl.load(lse + rows, mask=rows < T, other=0.0)
    weight_sum = tl.zeros(rows.shape, dtype=tl.float32)
    hits = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    for k in tl.static_range(K):
        ahead = rows + k < T
        w_k = tl.load(weights + k)
        weight_sum += tl.where(ahead, w_k, 0.0)
        target = tl.load(targets + rows + k, mask=ahead, other=-1)
        hits += tl.where(cols[None, :] == target[:, None], w_k, 0.0)
    d = tl.exp(scale * t + offset - row_lse[:, None]) * weight_sum[:, None] - hits
    return (g * d * (1 - t * t) * inv_grad_scale).to(tl.float8e5)


@triton.jit
def quad_kernel(L, G8, G8T32, g8t_desc, targets, weights, lse, grad_loss, T, V, stride_l, inv_T, shift, width,
                scale, offset, inv_grad_scale, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                TMA_T: tl.constexpr):
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(V, BN)
    r0 = (pid // blocks_n) * BM
    c0 = (pid % blocks_n) * BN
    quads = (r0 // 4 + tl.arange(0, BM // 4)).to(tl.int64)
    cols = (c0 + tl.arange(0, BN)).to(tl.int64)
    g = tl.load(grad_loss).to(tl.float32) * inv_T * (scale / width)
    packed = tl.zeros((BM // 4, BN), dtype=tl.uint32)
    for j in tl.static_range(4):
        rows = quads * 4 + j
        y = _grad_rows(L, targets, weights, rows, cols, T, V, stride_l, g, shift, width, scale, offset,
                       inv_grad_scale, lse, K)
        tl.store(G8 + rows[:, None] * V + cols[None, :], y, mask=(rows[:, None] < T) & (cols[None, :] < V))
        packed |= y.to(tl.uint8, bitcast=True).to(tl.uint32) << (8 * j)
    if TMA_T:
        g8t_desc.store([c0, r0 // 4], tl.trans(packed))
    else:
        tl.store(G8T32 + cols[:, None] * (T // 4) + quads[None, :], tl.trans(packed),
                 mask=(cols[:, None] < V) & (quads[None, :] < T // 4))


@triton.jit
def row_fp8_kernel(L, G8, GB, targets, weights, lse, grad_loss, T, V, stride_l, inv_T, shift, width, scale, offset,
                   inv_grad_scale, K: tl.constexpr, BLOCK_V: tl.constexpr, BF16: tl.constexpr):
    """The row kernel of main's cross-entropy backward, writing ĝ (and the bf16 gradient if BF16)."""
    row = tl.program_id(0).to(tl.int64)
    row_lse = tl.load(lse + row)
    weight_sum = 0.0
    for k in tl.static_range(K):
        weight_sum += tl.where(row + k < T, tl.load(weights + k), 0.0)
    g = tl.load(grad_loss).to(tl.float32) * inv_T * (scale / width)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(L + row * stride_l + cols, mask=cols < V, other=0.0).to(tl.float32)
        t = _tanh((x + shift) / width, FAST)
        hits = tl.zeros((BLOCK_V,), dtype=tl.float32)
        for k in tl.static_range(K):
            target = tl.load(targets + row + k, mask=row + k < T, other=-1)
            hits += tl.where(cols == target, tl.load(weights + k), 0.0)
        d = g * (tl.exp(scale * t + offset - row_lse) * weight_sum - hits) * (1 - t * t)
        tl.store(G8 + row * V + cols, (d * inv_grad_scale).to(tl.float8e5), mask=cols < V)
        if BF16:
            tl.store(GB + row * V + cols, d.to(tl.bfloat16), mask=cols < V)


@triton.jit
def transpose_quad_kernel(G8, G8T32, T, V, BM: tl.constexpr, BN: tl.constexpr):
    """ĝ: (T, V) as uint8 -> ĝᵀ as uint32 words (V, T/4), four rows a word."""
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(V, BN)
    quads = ((pid // blocks_n) * (BM // 4) + tl.arange(0, BM // 4)).to(tl.int64)
    cols = ((pid % blocks_n) * BN + tl.arange(0, BN)).to(tl.int64)
    packed = tl.zeros((BM // 4, BN), dtype=tl.uint32)
    for j in tl.static_range(4):
        rows = quads * 4 + j
        y = tl.load(G8 + rows[:, None] * V + cols[None, :], mask=(rows[:, None] < T) & (cols[None, :] < V), other=0)
        packed |= y.to(tl.uint32) << (8 * j)
    tl.store(G8T32 + cols[:, None] * (T // 4) + quads[None, :], tl.trans(packed),
             mask=(cols[:, None] < V) & (quads[None, :] < T // 4))


def main():
    torch.manual_seed(0)
    T_, V = 49152, 50304
    cap = T.LogitCap.parse("sigmoid:23,5,7.5")
    logits = (torch.randn(T_, V, device="cuda") * 3).bfloat16()
    targets = torch.randint(0, V, (T_,), device="cuda")
    weights = torch.tensor([1.0, 0.5, 0.25], device="cuda")
    grad_loss = torch.ones((), device="cuda")
    lse = torch.cat([T.softcap(logits[i:i + 4096].float(), cap).logsumexp(-1) for i in range(0, T_, 4096)])
    grad_scale = T.FP8_HEAD_GRAD_SCALE / T_
    e5 = torch.float8_e5m2
    g8, g8t = torch.empty(T_, V, device="cuda", dtype=e5), torch.empty(V, T_, device="cuda", dtype=e5)
    run_variant(logits, targets, weights, lse, grad_loss, g8, g8t, cap, grad_scale, 128, 128, 8, False, False,
                False, True)()
    ref, ref_t = g8.view(torch.uint8).clone(), g8t.view(torch.uint8).clone()
    args = (targets, weights, lse, grad_loss, T_, V, logits.stride(0), 1.0 / T_, *cap, 1.0 / grad_scale)

    def check(name, fn, moved_gb):
        try:
            g8.zero_(), g8t.zero_()
            fn()
            torch.cuda.synchronize()
            same = (g8.view(torch.uint8) == ref).float().mean().item()
            same_t = (g8t.view(torch.uint8) == ref_t).float().mean().item()
            ms = do_bench(fn, warmup=50, rep=300)
            print(f"info:micro2 {name}: {ms:.3f} ms, {moved_gb / ms:.0f} GB/s (of {moved_gb * 1e-3:.2f} GB), same bytes "
                  f"{same:.6f} / {same_t:.6f}")
        except Exception as e:  # a config Triton cannot build is reported, not fatal
            print(f"info:micro2 {name}: failed {type(e).__name__}: {str(e)[:300]}")

    fused_gb = T_ * V * 4 / 1e6
    g8t32 = g8t.view(torch.int32)
    for bm, bn, warps, tma in [(64, 64, 4, False), (64, 128, 4, False), (64, 128, 8, False), (128, 64, 4, False),
                               (128, 128, 8, False), (128, 64, 8, False), (64, 256, 8, False), (32, 128, 4, False),
                               (64, 64, 4, True), (64, 128, 4, True), (128, 64, 4, True), (128, 128, 8, True)]:
        desc = TensorDescriptor.from_tensor(g8t32, [bn, bm // 4]) if tma else g8t32
        grid = (triton.cdiv(T_, bm) * triton.cdiv(V, bn),)
        check(f"quad fused bm={bm} bn={bn} warps={warps} tma_t={tma}",
              lambda: quad_kernel[grid](logits, g8, g8t32, desc, *args, K=3, BM=bm, BN=bn, TMA_T=tma,
                                        num_warps=warps), fused_gb)
    gbf = torch.empty_like(logits)
    for block_v, bf16 in [(2048, False), (1024, False), (4096, False), (2048, True)]:
        check(f"row kernel ĝ{' + bf16' if bf16 else ''} block_v={block_v} (ĝᵀ not written)",
              lambda: row_fp8_kernel[(T_,)](logits, g8, gbf, *args, K=3, BLOCK_V=block_v, BF16=bf16, num_warps=8),
              T_ * V * (3 + 2 * bf16) / 1e6)
    row_fp8_kernel[(T_,)](logits, g8, gbf, *args, K=3, BLOCK_V=2048, BF16=False, num_warps=8)
    for bm, bn, warps in [(64, 64, 4), (128, 64, 4), (64, 128, 4), (128, 128, 8), (256, 64, 8), (128, 256, 8)]:
        grid = (triton.cdiv(T_, bm) * triton.cdiv(V, bn),)
        fn = lambda: transpose_quad_kernel[grid](g8.view(torch.uint8), g8t32, T_, V, BM=bm, BN=bn, num_warps=warps)
        try:
            g8t.zero_()
            fn()
            torch.cuda.synchronize()
            same_t = (g8t.view(torch.uint8) == ref_t).float().mean().item()
            ms = do_bench(fn, warmup=50, rep=300)
            print(f"info:micro2 transpose ĝ -> ĝᵀ bm={bm} bn={bn} warps={warps}: {ms:.3f} ms, "
                  f"{T_ * V * 2 / 1e6 / ms:.0f} GB/s, same bytes {same_t:.6f}")
        except Exception as e:
            print(f"info:micro2 transpose {bm} {bn} {warps}: failed {type(e).__name__}: {str(e)[:300]}")
    ms = do_bench(lambda: g8.view(torch.uint8).T.contiguous(), warmup=50, rep=300)
    print(f"info:micro2 torch transpose of ĝ's bytes: {ms:.3f} ms")


if __name__ == "__main__":
    main()
