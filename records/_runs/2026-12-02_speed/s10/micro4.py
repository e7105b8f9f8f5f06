"""Session 10 micro-bench 4 (H200, T = 49152, V = 50304): train_gpt.py's one-kernel FP8 gradient
(softcap_ce_fp8_grad_triton) over tiles (rows, vocabulary columns, warps), its bytes in both layouts against the
previous commit's two kernels (row kernel + byte transpose; ref_train_gpt.py beside this file, which
`git show 518e5a1:train_gpt.py` writes), and x's and w's quantization against the previous commit's one-pass kernel. Prints `best_tile: rows cols warps` last.
Run from the repository root: PYTHONPATH=. python records/_runs/2026-12-02_speed/s10/micro4.py"""
import sys
import types
from pathlib import Path

import torch
from triton.testing import do_bench

import train_gpt as T


def previous_commit():
    """ref_train_gpt.py as a module, its custom ops renamed so they do not clash with train_gpt's."""
    path = str(Path(__file__).with_name("ref_train_gpt.py"))
    module = sys.modules["ref_train_gpt"] = types.ModuleType("ref_train_gpt")
    module.__file__ = path
    exec(compile(open(path).read().replace('"train_gpt::', '"ref_train_gpt::'), path, "exec"), module.__dict__)
    return module


R = previous_commit()

TILES = [(32, 256, 8), (32, 256, 4), (16, 256, 4), (16, 512, 8), (32, 512, 8), (32, 128, 4), (64, 128, 4),
         (64, 256, 8), (16, 1024, 8), (32, 512, 16), (64, 64, 4), (16, 128, 2)]


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
    args = (grad_loss, logits, targets, weights, lse, cap, grad_scale, True)
    ref, ref_t = (t.view(torch.uint8) for t in R.softcap_ce_fp8_grad_triton(*args))
    ms = do_bench(lambda: R.softcap_ce_fp8_grad_triton(*args), warmup=50, rep=300)
    print(f"info:micro4 previous commit's two kernels: {ms:.3f} ms")
    best = None
    for tile in TILES:
        try:
            g8, g8t = T.softcap_ce_fp8_grad_triton(*args, tile=tile)
            same = (g8.view(torch.uint8) == ref).float().mean().item()
            same_t = (g8t.view(torch.uint8) == ref_t).float().mean().item()
            del g8, g8t
            ms = do_bench(lambda: T.softcap_ce_fp8_grad_triton(*args, tile=tile), warmup=50, rep=300)
            print(f"info:micro4 one kernel tile={tile}: {ms:.3f} ms, same bytes {same:.6f} / {same_t:.6f}")
            if same == same_t == 1.0 and (best is None or ms < best[0]):
                best = ms, tile
        except Exception as e:  # a tile Triton cannot build is reported, not fatal
            print(f"info:micro4 one kernel tile={tile}: failed {type(e).__name__}: {str(e)[:300]}")
    e4m3 = torch.float8_e4m3fn
    for name, t, scale in [("x", torch.randn(T_, D, device="cuda").bfloat16(), T.FP8_HEAD_X_SCALE),
                           ("w", (torch.randn(D, V, device="cuda") * 0.02).bfloat16(), T.FP8_HEAD_W_SCALE)]:
        y, yt = T.fp8_quantize_triton(t, scale, e4m3, transpose=True)
        y_ref, yt_ref = R.fp8_quantize_triton(t, scale, e4m3, transpose=True)
        same = torch.equal(y.view(torch.uint8), y_ref.view(torch.uint8))
        same_t = torch.equal(yt.view(torch.uint8), yt_ref.view(torch.uint8))
        old = do_bench(lambda: R.fp8_quantize_triton(t, scale, e4m3, transpose=True), warmup=50, rep=300)
        new = do_bench(lambda: T.fp8_quantize_triton(t, scale, e4m3, transpose=True), warmup=50, rep=300)
        print(f"info:micro4 quantize {name} {tuple(t.shape)} with its transpose: previous {old * 1e3:.1f} us, now "
              f"{new * 1e3:.1f} us, same bytes {same} / {same_t}")
    print(f"info:micro4 best at {best[0]:.3f} ms" if best else "info:micro4 no tile wrote the right bytes")
    print("best_tile: " + " ".join(map(str, best[1] if best else T.CE_FP8_GRAD_TILE)))


if __name__ == "__main__":
    main()
