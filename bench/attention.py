"""FlexAttention kernel options at the record shape on one GPU: `python bench/attention.py [--autotune]`.
One micro-batch (49152 tokens in FineWeb-like documents), 6 heads of 128, the final long (1792) and short (896)
windows. Each row compiles forward and backward with one set of kernel options and times the forward alone and
forward + backward (medians of triton.testing.do_bench, ms); TFLOP/s counts the attended pairs only, as the
training benchmark does. The output is compared with the first row's. --autotune instead lets inductor time its
own list of tile configs (max_autotune) and print the ranking, which is how FLEX_KERNEL_OPTIONS was chosen."""
import sys
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import flex_attention
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as T  # noqa: E402

SEQ_LEN, HEADS, HEAD_DIM, SCALE = 49152, 6, 128, 0.12
WINDOWS = {"L": 1792, "S": 896}
# fwd_*: the forward kernel's tiles (BLOCK_M queries x BLOCK_N keys), warps and pipeline stages; bwd_*: the
# backward's (BLOCK_M1 x BLOCK_N1 for dK/dV, BLOCK_M2 x BLOCK_N2 for dQ). {} is torch's default for the GPU, the
# second row what train_gpt.py passes. ROWS_GUARANTEED_SAFE is not a candidate: it gave NaN here, because a
# partial block can mask out all of a row's keys even though the whole row never is.
CANDIDATES = [
    {},
    T.FLEX_KERNEL_OPTIONS,
    {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8, "fwd_num_stages": 2},
    {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 128, "fwd_num_warps": 4, "fwd_num_stages": 3},
    {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 32, "bwd_num_warps": 4,
     "bwd_num_stages": 3},
    {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64, "bwd_num_warps": 4,
     "bwd_num_stages": 3},
    {"USE_TMA": True},
]


def main() -> None:
    if "--autotune" in sys.argv:  # inductor times its own list of tile configs and prints the table (stderr)
        torch._inductor.config.max_autotune = True
        CANDIDATES[:] = [{}]
    torch._dynamo.config.cache_size_limit = 64  # one compiled graph per candidate and window
    inputs, _ = T.dummy_batches(SEQ_LEN, 1, "cuda")[0]
    masks = {k: T.attention_mask(inputs, T.window_tensor(w, inputs.device)) for k, w in WINDOWS.items()}
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(1, HEADS, SEQ_LEN, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
                     for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    reference = {}
    print(f"{'kernel options':<100} {'win':>4} {'fwd ms':>7} {'f+b ms':>7} {'bwd ms':>7} {'bwd TF/s':>8} {'err':>8}")
    for options in CANDIDATES:
        attn = torch.compile(lambda q, k, v, m, o=options: flex_attention(q, k, v, block_mask=m, scale=SCALE,
                                                                          kernel_options=o), dynamic=False)
        for kind, window in WINDOWS.items():
            # forward: q·k and p·v, 2 FLOPs a multiply-add each, over the pairs the mask lets through
            flops = 4 * HEADS * HEAD_DIM * T.attended_keys(inputs, window).double().sum().item()
            try:
                out = attn(q, k, v, masks[kind])
                grads = torch.autograd.grad(out, (q, k, v), dout)
            except Exception as e:  # a tile that does not fit shared memory, say: report it and go on
                print(f"{str(options):<100} {kind:>4} failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            got = torch.cat([out.flatten()] + [t.flatten() for t in grads]).float()
            ref = reference.setdefault(kind, got)
            err = ((got - ref).norm() / ref.norm()).item()
            t_fwd = do_bench(lambda: attn(q, k, v, masks[kind]), return_mode="median")
            t_all = do_bench(lambda: torch.autograd.grad(attn(q, k, v, masks[kind]), (q, k, v), dout),
                             return_mode="median")
            t_bwd = t_all - t_fwd
            print(f"{str(options):<100} {kind:>4} {t_fwd:7.3f} {t_all:7.3f} {t_bwd:7.3f} "
                  f"{2 * flops / t_bwd / 1e9:8.0f} {err:8.1e}", flush=True)


if __name__ == "__main__":
    main()
