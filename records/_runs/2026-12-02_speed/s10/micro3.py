"""Session 10 micro-bench 3, at the record's micro-step shape (T = 49152, V = 50304, D = 768), one H200.
Run from the repository root: PYTHONPATH=. python records/_runs/2026-12-02_speed/s10/micro3.py

1. The FP8 head's cross-entropy gradient in one kernel writing both layouts, the four rows of a transposed 32-bit
   word converted and packed by the conversion instruction (cvt.rn.satfinite.e5m2x2.f32, two floats to two
   bytes, first operand to the upper byte), so no FP8 tile is bitcast (session 9's bitcast packing wrote 56% of
   the transposed bytes right). The row-major bytes either from Triton's own conversion or unpacked from the words.
   Reference: main's two kernels (softcap_ce_fp8_grad_triton: row kernel 3.5 ms + byte transpose 1.4 ms).
2. The row kernel with a software-pipelined loop (num_stages) and other warp counts.
3. x's and w's quantization: main's one-pass kernel with its byte-wise transposed store, against a plain quantize
   followed by byte_transpose_triton.
"""
import torch
import triton
import triton.language as tl
from triton.testing import do_bench

import train_gpt as T
from train_gpt import _tanh


@triton.jit
def _pack_e5m2x4(a, b, c, d):
    """Four fp32 tensors -> uint32 words holding their e5m2 bytes, a in byte 0 ... d in byte 3."""
    return tl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi; cvt.rn.satfinite.e5m2x2.f32 lo, $2, $1; cvt.rn.satfinite.e5m2x2.f32 hi, $4, $3; "
        "mov.b32 $0, {lo, hi}; }", "=r,f,f,f,f", [a, b, c, d], dtype=tl.uint32, is_pure=True, pack=1)


@triton.jit
def _grad_tile(L, targets, weights, lse, rows, cols, T, V, stride_l, g, shift, width, scale, offset, K: tl.constexpr):
    x = tl.load(L + rows[:, None] * stride_l + cols[None, :], mask=(rows[:, None] < T) & (cols[None, :] < V),
                other=0.0).to(tl.float32)
    t = _tanh((x + shift) / width, True)
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
    return g * d * (1 - t * t)


@triton.jit
def quad_asm_kernel(L, G8, G8T32, targets, weights, lse, grad_loss, T, V, stride_l, inv_T, shift, width, scale,
                    offset, out_scale, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    ROWS_FROM_WORDS: tl.constexpr):
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(V, BN)
    quads = ((pid // blocks_n) * (BM // 4) + tl.arange(0, BM // 4)).to(tl.int64)
    cols = ((pid % blocks_n) * BN + tl.arange(0, BN)).to(tl.int64)
    g = tl.load(grad_loss).to(tl.float32) * inv_T * (scale / width) * out_scale
    args = (L, targets, weights, lse)
    y0 = _grad_tile(*args, quads * 4, cols, T, V, stride_l, g, shift, width, scale, offset, K)
    y1 = _grad_tile(*args, quads * 4 + 1, cols, T, V, stride_l, g, shift, width, scale, offset, K)
    y2 = _grad_tile(*args, quads * 4 + 2, cols, T, V, stride_l, g, shift, width, scale, offset, K)
    y3 = _grad_tile(*args, quads * 4 + 3, cols, T, V, stride_l, g, shift, width, scale, offset, K)
    words = _pack_e5m2x4(y0, y1, y2, y3)
    colmask = cols[None, :] < V
    if ROWS_FROM_WORDS:
        for j in tl.static_range(4):
            rows = quads * 4 + j
            tl.store(G8 + rows[:, None] * V + cols[None, :], ((words >> (8 * j)) & 0xFF).to(tl.uint8),
                     mask=(rows[:, None] < T) & colmask)
    else:
        tl.store(G8 + (quads * 4)[:, None] * V + cols[None, :], y0.to(tl.float8e5).to(tl.uint8, bitcast=True),
                 mask=((quads * 4)[:, None] < T) & colmask)
        tl.store(G8 + (quads * 4 + 1)[:, None] * V + cols[None, :], y1.to(tl.float8e5).to(tl.uint8, bitcast=True),
                 mask=((quads * 4 + 1)[:, None] < T) & colmask)
        tl.store(G8 + (quads * 4 + 2)[:, None] * V + cols[None, :], y2.to(tl.float8e5).to(tl.uint8, bitcast=True),
                 mask=((quads * 4 + 2)[:, None] < T) & colmask)
        tl.store(G8 + (quads * 4 + 3)[:, None] * V + cols[None, :], y3.to(tl.float8e5).to(tl.uint8, bitcast=True),
                 mask=((quads * 4 + 3)[:, None] < T) & colmask)
    tl.store(G8T32 + cols[:, None] * (T // 4) + quads[None, :], tl.trans(words),
             mask=(cols[:, None] < V) & (quads[None, :] < T // 4))


@triton.jit
def row_staged_kernel(L, G, targets, weights, lse, grad_loss, T, V, stride_l, stride_g, inv_T, shift, width, scale,
                      offset, out_scale, K: tl.constexpr, BLOCK_V: tl.constexpr, STAGES: tl.constexpr):
    """main's _softcap_ce_backward_kernel with its loop software-pipelined."""
    row = tl.program_id(0).to(tl.int64)
    row_lse = tl.load(lse + row)
    weight_sum = 0.0
    for k in tl.static_range(K):
        weight_sum += tl.where(row + k < T, tl.load(weights + k), 0.0)
    g = tl.load(grad_loss).to(tl.float32) * inv_T * (scale / width) * out_scale
    for start in tl.range(0, V, BLOCK_V, num_stages=STAGES):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(L + row * stride_l + cols, mask=cols < V, other=0.0).to(tl.float32)
        t = _tanh((x + shift) / width, True)
        hits = tl.zeros((BLOCK_V,), dtype=tl.float32)
        for k in tl.static_range(K):
            target = tl.load(targets + row + k, mask=row + k < T, other=-1)
            hits += tl.where(cols == target, tl.load(weights + k), 0.0)
        d = tl.exp(scale * t + offset - row_lse) * weight_sum - hits
        tl.store(G + row * stride_g + cols, (g * d * (1 - t * t)).to(G.dtype.element_ty), mask=cols < V)


def main():
    torch.manual_seed(0)
    T_, V, D = 49152, 50304, 768
    cap = T.LogitCap.parse("sigmoid:23,5,7.5")
    logits = (torch.randn(T_, V, device="cuda") * 3).bfloat16()
    targets = torch.randint(0, V, (T_,), device="cuda")
    weights = torch.tensor([1.0, 0.5, 0.25], device="cuda")
    grad_loss = torch.ones((), device="cuda")
    lse = torch.cat([T.softcap(logits[i:i + 4096].float(), cap).logsumexp(-1) for i in range(0, T_, 4096)])
    grad_scale = T.FP8_HEAD_GRAD_SCALE / T_
    ref, ref_t = T.softcap_ce_fp8_grad_triton(grad_loss, logits, targets, weights, lse, cap, grad_scale, True)
    ref, ref_t = ref.view(torch.uint8), ref_t.view(torch.uint8)
    print(f"info:micro3 reference bytes: {ref.float().mean().item():.3f} mean, {(ref != 0).float().mean().item():.4f} nonzero")
    ms = do_bench(lambda: T.softcap_ce_fp8_grad_triton(grad_loss, logits, targets, weights, lse, cap, grad_scale,
                                                       True), warmup=50, rep=300)
    print(f"info:micro3 main's two kernels (row kernel + byte transpose): {ms:.3f} ms")
    g8 = torch.empty(T_, V, device="cuda", dtype=torch.uint8)
    g8t = torch.empty(V, T_, device="cuda", dtype=torch.uint8)
    args = (targets, weights, lse, grad_loss, T_, V, logits.stride(0), 1.0 / T_, *cap, 1.0 / grad_scale)

    def check(name, fn, moved_gb, transposed=True):
        try:
            g8.zero_(), g8t.zero_()
            fn()
            torch.cuda.synchronize()
            same = (g8 == ref).float().mean().item()
            same_t = (g8t == ref_t).float().mean().item() if transposed else float("nan")
            ms = do_bench(fn, warmup=50, rep=300)
            print(f"info:micro3 {name}: {ms:.3f} ms, {moved_gb / ms:.0f} GB/s (of {moved_gb * 1e-3:.2f} GB), "
                  f"same bytes {same:.6f} / {same_t:.6f}")
        except Exception as e:  # a config Triton cannot build is reported, not fatal
            print(f"info:micro3 {name}: failed {type(e).__name__}: {str(e)[:400]}")

    fused_gb = T_ * V * 4 / 1e6
    g8t32 = g8t.view(torch.int32)
    for bm, bn, warps, from_words in [(64, 64, 4, False), (64, 64, 4, True), (64, 128, 4, True), (64, 128, 8, True),
                                      (128, 64, 4, True), (128, 64, 8, True), (128, 128, 8, True), (32, 128, 4, True),
                                      (32, 256, 8, True), (64, 256, 8, True), (128, 32, 4, True), (256, 64, 8, True)]:
        grid = (triton.cdiv(T_, bm) * triton.cdiv(V, bn),)
        check(f"one kernel, asm packing bm={bm} bn={bn} warps={warps} rows_from_words={from_words}",
              lambda: quad_asm_kernel[grid](logits, g8, g8t32, *args, K=3, BM=bm, BN=bn, ROWS_FROM_WORDS=from_words,
                                            num_warps=warps), fused_gb)
    g8v = g8.view(torch.float8_e5m2)
    for block_v, warps, stages in [(4096, 8, 1), (4096, 8, 2), (4096, 8, 3), (4096, 16, 2), (2048, 8, 2),
                                   (2048, 4, 3), (8192, 16, 2), (1024, 4, 3)]:
        check(f"row kernel, block_v={block_v} warps={warps} stages={stages} (ĝᵀ not written)",
              lambda: row_staged_kernel[(T_,)](logits, g8v, *args[:7], V, *args[7:], K=3, BLOCK_V=block_v,
                                               STAGES=stages, num_warps=warps), T_ * V * 3 / 1e6, transposed=False)
    e4m3 = torch.float8_e4m3fn
    for name, t, scale in [("x", torch.randn(T_, D, device="cuda").bfloat16(), T.FP8_HEAD_X_SCALE),
                           ("w", (torch.randn(D, V, device="cuda") * 0.02).bfloat16(), T.FP8_HEAD_W_SCALE)]:
        y_ref, yt_ref = T.fp8_quantize_triton(t, scale, e4m3, transpose=True)
        y, _ = T.fp8_quantize_triton(t, scale, e4m3, transpose=False)
        yt = T.byte_transpose_triton(y)
        same = (y.view(torch.uint8) == y_ref.view(torch.uint8)).float().mean().item()
        same_t = (yt.view(torch.uint8) == yt_ref.view(torch.uint8)).float().mean().item()
        one = do_bench(lambda: T.fp8_quantize_triton(t, scale, e4m3, transpose=True), warmup=50, rep=300)
        plain = do_bench(lambda: T.fp8_quantize_triton(t, scale, e4m3, transpose=False), warmup=50, rep=300)
        two = do_bench(lambda: T.byte_transpose_triton(T.fp8_quantize_triton(t, scale, e4m3, transpose=False)[0]),
                       warmup=50, rep=300)
        print(f"info:micro3 quantize {name} {tuple(t.shape)}: one pass with transposed store {one * 1e3:.1f} us, "
              f"without the transpose {plain * 1e3:.1f} us, quantize + byte_transpose {two * 1e3:.1f} us; "
              f"same bytes {same:.6f} / {same_t:.6f}")


if __name__ == "__main__":
    main()
