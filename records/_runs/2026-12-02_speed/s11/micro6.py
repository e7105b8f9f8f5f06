"""Session 11 micro-bench 6 (H200, the record's micro-step: T = 49152, D = 768, H = 3072): the MLP's first matmul
with relu² (relu_sq_matmul_triton) in bf16 against FP8 operands over tiles, the FP8 result against the bf16 one,
and for the next step the second matmul (h·projᵀ) by cuBLAS in bf16 against torch._scaled_mm in FP8. Prints
`best_fp8_config: ...` last. Run from the repository root: PYTHONPATH=. python records/_runs/2026-12-02_speed/s11/micro6.py"""
import torch
import torch.nn.functional as F
from triton.testing import do_bench

import train_gpt as T

CONFIGS = [(128, 256, 128, 8, 3), (128, 256, 128, 8, 4), (128, 256, 64, 8, 4), (128, 256, 64, 8, 3),
           (128, 128, 128, 4, 4), (128, 128, 128, 8, 4), (256, 128, 128, 8, 3), (128, 256, 128, 8, 2)]


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    torch.manual_seed(0)
    t, d, hidden = 49152, 768, 3072
    e4m3, top = torch.float8_e4m3fn, 448.0
    x = F.rms_norm(torch.randn(t, d, device="cuda"), (d,)).bfloat16()
    fc = torch.randn(hidden, d, device="cuda") * 0.03
    proj = torch.randn(d, hidden, device="cuda") * 0.03
    fc_b, proj_b = fc.bfloat16(), proj.bfloat16()
    x_scale = d**0.5 / top
    fc_scale = fc.abs().amax() / top
    x8 = (x.float() / x_scale).clamp(-top, top).to(e4m3)
    fc8 = (fc / fc_scale).clamp(-top, top).to(e4m3)
    scale = (fc_scale * x_scale).float()
    flops = 2 * t * d * hidden
    h = T.relu_sq_matmul_triton(x, fc_b.T)
    ms = do_bench(lambda: T.relu_sq_matmul_triton(x, fc_b.T), warmup=50, rep=300)
    print(f"bf16 forward {T.RELU_SQ_MATMUL_CONFIGS['forward']}: {ms * 1e3:7.1f} us  {flops / ms / 1e9:6.1f} TFLOP/s")
    best = None
    for config in CONFIGS:
        try:
            h8 = T.relu_sq_matmul_triton(x8, fc8.T, config=config, scale=scale)
            ms = do_bench(lambda: T.relu_sq_matmul_triton(x8, fc8.T, config=config, scale=scale), warmup=50, rep=300)
        except Exception as e:  # a tile that does not fit in shared memory
            print(f"fp8 {config}: failed: {type(e).__name__}: {str(e)[:120]}")
            continue
        print(f"fp8 {config}: {ms * 1e3:7.1f} us  {flops / ms / 1e9:6.1f} TFLOP/s  rel to bf16 h {rel(h8, h):.4f}")
        best = min(best or (ms, config), (ms, config))
    ms = do_bench(lambda: h @ proj_b.T, warmup=50, rep=300)
    print(f"bf16 h·projᵀ (cuBLAS): {ms * 1e3:7.1f} us  {flops / ms / 1e9:6.1f} TFLOP/s")
    h_scale = h.float().abs().amax() / top
    h8 = (h.float() / h_scale).clamp(-top, top).to(e4m3)
    proj8 = (proj / (proj.abs().amax() / top)).to(e4m3)
    one = torch.ones((), device="cuda")
    for fast in (True, False):
        ms = do_bench(lambda: torch._scaled_mm(h8, proj8.T, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                               use_fast_accum=fast), warmup=50, rep=300)
        print(f"fp8 h·projᵀ (_scaled_mm, fast_accum={fast}): {ms * 1e3:7.1f} us  {flops / ms / 1e9:6.1f} TFLOP/s")
    ms = do_bench(lambda: (fc.abs().amax(), (fc / fc_scale).clamp(-top, top).to(e4m3)), warmup=20, rep=100)
    print(f"fc amax + quantize, eager: {ms * 1e3:7.1f} us")
    print("best_fp8_config:", *best[1])


if __name__ == "__main__":
    main()
