"""Triton kernels vs plain torch on one GPU, at the record shapes: `python bench/kernels.py`.
Times are medians of triton.testing.do_bench in ms; TFLOP/s counts the full (not half) matmul for both sides."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as T  # noqa: E402

# The matrices NorMuon orthogonalizes in the record model, stacked as the optimizer stacks them.
RECORD = T.Hyperparameters()
ATTENDED = RECORD.num_layers - len(RECORD.no_attention_layer_list)
MATRIX_BATCHES = [("attention", (4 * ATTENDED, 768, 768)), ("mlp in", (RECORD.num_layers, 3072, 768)),
                  ("mlp out", (RECORD.num_layers, 768, 3072))]
VOCAB, DIM = 50304, 768
B, C = -2.808917465908714, 0.5000178451051316  # a Polar Express step's (b, c)
CAP = T.LogitCap.parse(T.Hyperparameters.logit_cap)


def ms(fn) -> float:
    return do_bench(fn, return_mode="median")


def row(name: str, shape, t_triton: float, t_torch: float, unit: str) -> None:
    print(f"{name:<34} {str(shape):<18} {t_triton:>9.3f} {t_torch:>9.3f} {t_torch / t_triton:>8.2f}x  {unit}")


def bench_products() -> None:
    for name, shape in MATRIX_BATCHES:
        batch, m, n = shape
        A = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        if m <= n:
            gram, gram_torch, side, k = T.xxt_triton, T.xxt_torch, m, n
        else:
            gram, gram_torch, side, k = T.xtx_triton, T.xtx_torch, n, m
        tflops = 2 * batch * side * side * k / 1e9
        t_tri, t_ref = ms(lambda: gram(A)), ms(lambda: gram_torch(A))
        row(f"{gram.__name__[:3]} {name}", shape, t_tri, t_ref, f"{tflops / t_tri:.0f} vs {tflops / t_ref:.0f} TFLOP/s")
        S = gram(A) / k  # symmetric, the size polar express feeds it
        tflops = 2 * batch * side ** 3 / 1e9
        t_tri, t_ref = ms(lambda: T.ba_plus_caa_triton(S, B, C)), ms(lambda: T.ba_plus_caa_torch(S, B, C))
        row(f"ba_plus_caa {name}", tuple(S.shape), t_tri, t_ref,
            f"{tflops / t_tri:.0f} vs {tflops / t_ref:.0f} TFLOP/s")
        t_fused = ms(lambda: torch.baddbmm(S, S, S, beta=B, alpha=C))
        row("  vs torch.baddbmm", tuple(S.shape), t_tri, t_fused, f"{tflops / t_fused:.0f} TFLOP/s baddbmm")


def bench_polar_express() -> None:
    if not hasattr(T, "polar_express"):
        sys.exit("train_gpt.polar_express is missing: the Optimizers section must define polar_express(G) "
                 "calling xxt / xtx / ba_plus_caa before this benchmark can time it")
    dispatchers = {name: getattr(T, name) for name in ("xxt", "xtx", "ba_plus_caa")}
    for name, shape in MATRIX_BATCHES:
        G = torch.randn(shape, device="cuda", dtype=torch.float32)
        t_tri = ms(lambda: T.polar_express(G))
        try:
            for fn in dispatchers:
                setattr(T, fn, getattr(T, f"{fn}_torch"))
            t_ref = ms(lambda: T.polar_express(G))
        finally:
            for fn, f in dispatchers.items():
                setattr(T, fn, f)
        row(f"polar_express {name}", shape, t_tri, t_ref, "whole orthogonalization")


def bench_transposes() -> None:
    for src_dtype, dst_dtype in [(torch.bfloat16, torch.float32), (torch.float32, torch.float32),
                                 (torch.bfloat16, torch.bfloat16)]:
        src = torch.randn(VOCAB, DIM, device="cuda", dtype=src_dtype)
        dst = torch.zeros(DIM, VOCAB, device="cuda", dtype=dst_dtype)
        moved = src.numel() * (src.element_size() + dst.element_size()) / 1e6  # MB; add reads dst once more
        kinds = [("transpose_copy", T.transpose_copy_triton, lambda: dst.copy_(src.T), moved),
                 ("transpose_add", T.transpose_add_triton, lambda: dst.add_(src.T),
                  moved + dst.numel() * dst.element_size() / 1e6)]
        for name, kernel, reference, mb in kinds:
            t_tri, t_ref = ms(lambda: kernel(src, dst)), ms(reference)
            dtypes = f"{str(src_dtype)[6:]}->{str(dst_dtype)[6:]}"
            row(f"{name} {dtypes}", tuple(src.shape), t_tri, t_ref, f"{mb / t_tri:.0f} vs {mb / t_ref:.0f} GB/s")


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) that fit the persistent kernel's shared memory (stages of A and B
# tiles plus a half-tile store buffer) on H100
MLP_TILE_CANDIDATES = [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 128, 64, 4, 5),
                       (128, 128, 64, 8, 4), (128, 128, 128, 4, 3), (128, 128, 128, 8, 3)]


def bench_mlp() -> None:
    """One micro-batch's MLP, (49152, 768) -> 3072 -> 768: the fused relu² kernels per tile config against
    cuBLAS alone (the floor a fused epilogue can reach) and torch.compile of the torch definition."""
    tokens, hidden = 49152, 4 * DIM
    x = torch.randn(tokens, DIM, device="cuda", dtype=torch.bfloat16)
    fc = (torch.randn(hidden, DIM, device="cuda") * DIM ** -0.5).bfloat16()
    proj = (torch.randn(DIM, hidden, device="cuda") * hidden ** -0.5).bfloat16()
    dy = torch.randn(tokens, DIM, device="cuda", dtype=torch.bfloat16)
    h = T.relu_sq_matmul_triton(x, fc.T)
    tflops = 2 * tokens * DIM * hidden / 1e9
    t_mm = ms(lambda: x @ fc.T)
    relu_sq = torch.compile(lambda x: F.relu(x @ fc.T).square())
    t_ref = ms(lambda: relu_sq(x))
    for config in MLP_TILE_CANDIDATES:
        t_fwd = ms(lambda: T.relu_sq_matmul_triton(x, fc.T, config=config))
        row(f"relu_sq(x fc^T) {config}", (tokens, hidden), t_fwd, t_ref,
            f"{tflops / t_fwd:.0f} TFLOP/s; cuBLAS matmul alone {t_mm:.3f} ms")
    t_mm = ms(lambda: dy @ proj)
    grad_ref = torch.compile(lambda dy, h: (dy @ proj) * 2 * h.float().sqrt())
    t_ref = ms(lambda: grad_ref(dy, h))
    for config in MLP_TILE_CANDIDATES:
        t_bwd = ms(lambda: T.relu_sq_matmul_triton(dy, proj, h, config=config))
        row(f"(dy proj) 2 sqrt(h) {config}", (tokens, hidden), t_bwd, t_ref,
            f"{tflops / t_bwd:.0f} TFLOP/s; cuBLAS matmul alone {t_mm:.3f} ms")
    inputs = [t.clone().requires_grad_() for t in (x, fc, proj)]
    fused = lambda: torch.autograd.grad(T.relu_sq_mlp_triton(*inputs)[0], inputs, dy)
    reference = torch.compile(T.relu_sq_mlp_torch)
    plain = lambda: torch.autograd.grad(reference(*inputs), inputs, dy)
    row("whole MLP fwd+bwd, fused vs compiled", (tokens, DIM), ms(fused), ms(plain), "")


def bench_cross_entropy() -> None:
    """The softcapped cross-entropy of one micro-batch's logits, fast tanh (training) vs exact (evaluation)."""
    tokens = 49152
    logits = (torch.randn(tokens, VOCAB, device="cuda") * 10).bfloat16()
    targets = torch.randint(0, VOCAB, (tokens,), device="cuda")
    weights = torch.ones(1, device="cuda")  # the next-token loss: one target ahead, weight 1
    gb = logits.numel() * logits.element_size() / 1e6  # MB read by the forward; the backward also writes as much

    def forward(fast):
        return T.softcap_cross_entropy_triton(logits, targets, weights, *CAP, fast)[0]

    t_fast, t_exact = ms(lambda: forward(True)), ms(lambda: forward(False))
    row("softcap CE forward, fast vs exact", (tokens, VOCAB), t_fast, t_exact,
        f"{gb / t_fast:.0f} vs {gb / t_exact:.0f} GB/s")
    x = logits.clone().requires_grad_()

    def both(fast):
        torch.autograd.grad(T.softcap_cross_entropy_triton(x, targets, weights, *CAP, fast)[0], x)

    t_fast, t_exact = ms(lambda: both(True)), ms(lambda: both(False))
    row("softcap CE fwd+bwd, fast vs exact", (tokens, VOCAB), t_fast, t_exact,
        f"{3 * gb / t_fast:.0f} vs {3 * gb / t_exact:.0f} GB/s")
    fast, exact = forward(True).item(), forward(False).item()
    print(f"softcap CE loss fast {fast:.6f} exact {exact:.6f} difference {fast - exact:.2e}")


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py times CUDA kernels; run it on a GPU machine")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'op':<34} {'shape':<18} {'triton ms':>9} {'torch ms':>9} {'speedup':>9}")
    bench_products()
    bench_polar_express()
    bench_transposes()
    bench_cross_entropy()
    bench_mlp()


if __name__ == "__main__":
    main()
