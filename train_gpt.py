# ----- Source capture -----
import time
from pathlib import Path

LAUNCHED = time.perf_counter()  # before torch's import: a run logs how long it took to reach its first timed step
SOURCE_BYTES = Path(__file__).read_bytes()  # read first, so the log holds exactly what ran

# ----- Imports, distributed setup, device -----
import dataclasses
import contextlib
import datetime
import functools
import glob
import hashlib
import math
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch._functorch.config
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention.flex_attention import BlockMask, create_mask, flex_attention
from triton.tools.tensor_descriptor import TensorDescriptor

# torch 2.13 renames reduce_scatter_tensor / all_gather_into_tensor; the old names are the ones torch 2.11 has.
warnings.filterwarnings("ignore", message=r".*is deprecated. Please use `torch.distributed")
IMPORTED = time.perf_counter()  # the start-up's first part: imports (torch, Triton, CUDA's libraries)


def on_gpu(x: torch.Tensor | torch.device) -> bool:
    """The one CPU-vs-CUDA switch: Triton kernels, FlexAttention, torch.compile and CUDA timing and memory
    queries on CUDA tensors and devices; the torch definitions, a dense mask and host clocks elsewhere."""
    return (x.device if isinstance(x, torch.Tensor) else x).type == "cuda"


def init_distributed() -> tuple[int, int, torch.device]:
    """torchrun's environment: NCCL with one GPU per process on CUDA, gloo on CPU. Returns rank, world size, device."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu(device) else "gloo", rank=rank, world_size=world_size)
    return rank, world_size, device



# ----- Triton kernels -----


def xxt_torch(A: torch.Tensor) -> torch.Tensor:
    """A: (..., m, k) -> A·Aᵀ: (..., m, m)."""
    return A @ A.mT


def xtx_torch(A: torch.Tensor) -> torch.Tensor:
    """A: (..., k, n) -> Aᵀ·A: (..., n, n)."""
    return A.mT @ A


def ba_plus_caa_torch(A: torch.Tensor, b: float, c: float) -> torch.Tensor:
    """A: (..., m, m) symmetric -> b·A + c·A·A: (..., m, m)."""
    return b * A + c * (A @ A)


@triton.jit
def _upper_block(pid):
    """pid -> (row, col) of the pid-th block pair with row <= col, in the order (0,0), (0,1), (1,1), (0,2), ..."""
    col = ((tl.sqrt(8.0 * pid + 1.0) - 1.0) * 0.5).to(tl.int32)
    # the float square root may land one off near a triangular number
    col = tl.where(col * (col + 1) // 2 > pid, col - 1, col)
    col = tl.where((col + 1) * (col + 2) // 2 <= pid, col + 1, col)
    return pid - col * (col + 1) // 2, col


@triton.jit
def _sym_product_kernel(X, C, m, K, alpha, beta,
                        stride_xb, stride_x1r, stride_x1k, stride_x2k, stride_x2c, stride_cb, stride_cr, stride_cc,
                        ADD_BX: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """C: (B, m, m) = alpha·X1·X2 (+ beta·X1 if ADD_BX), X1: (B, m, K) and X2: (B, K, m) strided views of X with
    X1·X2 symmetric; fp32 accumulation. Only blocks on or above the diagonal are computed, each stored mirrored too."""
    bi, bj = _upper_block(tl.program_id(0))
    batch = tl.program_id(1).to(tl.int64)
    X += batch * stride_xb
    C += batch * stride_cb
    rows = bi * BLOCK + tl.arange(0, BLOCK)
    cols = bj * BLOCK + tl.arange(0, BLOCK)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        x1 = tl.load(X + rows[:, None] * stride_x1r + k[None, :] * stride_x1k,
                     mask=(rows[:, None] < m) & (k[None, :] < K), other=0.0)
        x2 = tl.load(X + k[:, None] * stride_x2k + cols[None, :] * stride_x2c,
                     mask=(k[:, None] < K) & (cols[None, :] < m), other=0.0)
        acc = tl.dot(x1, x2, acc, input_precision=PRECISION)
    out = alpha * acc
    mask = (rows[:, None] < m) & (cols[None, :] < m)
    if ADD_BX:  # X1 is then the square matrix itself, so its (rows, cols) block is read with X1's strides
        x = tl.load(X + rows[:, None] * stride_x1r + cols[None, :] * stride_x1k, mask=mask, other=0.0)
        out += beta * x.to(tl.float32)
    out = out.to(C.dtype.element_ty)
    tl.store(C + rows[:, None] * stride_cr + cols[None, :] * stride_cc, out, mask=mask)
    if bi != bj:
        tl.store(C + cols[:, None] * stride_cr + rows[None, :] * stride_cc, tl.trans(out),
                 mask=(cols[:, None] < m) & (rows[None, :] < m))


def _sym_product(X: torch.Tensor, x1_strides, x2_strides, m: int, K: int, alpha: float, beta: float, add_bx: bool,
                 block: int | None, block_k: int | None) -> torch.Tensor:
    """Launches _sym_product_kernel on X: (B, ., .) and returns C: (B, m, m) in X's dtype."""
    if X.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"symmetric product kernels take bf16, fp16 or fp32 matrices, got {X.dtype}")
    C = torch.empty(X.shape[0], m, m, dtype=X.dtype, device=X.device)
    if C.numel() == 0:
        return C
    # 128x128 tiles, 4-stage pipeline: 128 KiB of shared memory for bf16 on H100. fp32 runs as tf32x3 (about fp32
    # accurate, still on tensor cores) with half-depth K tiles and 3 stages to fit the same budget.
    fp32 = X.dtype == torch.float32
    block = block or 128
    block_k = block_k or (32 if fp32 else 64)
    precision = "tf32x3" if fp32 else "tf32"  # "tf32" is the default and means nothing for 16-bit inputs
    nb = triton.cdiv(m, block)
    grid = (nb * (nb + 1) // 2, X.shape[0])
    _sym_product_kernel[grid](X, C, m, K, alpha, beta, X.stride(0), *x1_strides, *x2_strides, *C.stride(),
                              ADD_BX=add_bx, BLOCK=block, BLOCK_K=block_k, PRECISION=precision,
                              num_warps=8, num_stages=3 if fp32 else 4)
    return C


def _as_batch(A: torch.Tensor, name: str) -> torch.Tensor:
    """A: (..., r, c) -> (B, r, c), a view where possible."""
    if A.ndim < 2:
        raise ValueError(f"{name} takes a matrix or a batch of matrices, got shape {tuple(A.shape)}")
    return A.reshape(-1, *A.shape[-2:])


def xxt_triton(A: torch.Tensor, block: int | None = None, block_k: int | None = None) -> torch.Tensor:
    """A: (..., m, k) -> A·Aᵀ: (..., m, m), same dtype; upper-triangle blocks only, mirrored."""
    X = _as_batch(A, "xxt")
    m, k = X.shape[-2:]
    C = _sym_product(X, (X.stride(1), X.stride(2)), (X.stride(2), X.stride(1)), m, k, 1.0, 0.0, False, block, block_k)
    return C.view(*A.shape[:-2], m, m)


def xtx_triton(A: torch.Tensor, block: int | None = None, block_k: int | None = None) -> torch.Tensor:
    """A: (..., k, n) -> Aᵀ·A: (..., n, n), same dtype; upper-triangle blocks only, mirrored."""
    X = _as_batch(A, "xtx")
    k, n = X.shape[-2:]
    C = _sym_product(X, (X.stride(2), X.stride(1)), (X.stride(1), X.stride(2)), n, k, 1.0, 0.0, False, block, block_k)
    return C.view(*A.shape[:-2], n, n)


def ba_plus_caa_triton(A: torch.Tensor, b: float, c: float, block: int | None = None,
                       block_k: int | None = None) -> torch.Tensor:
    """A: (..., m, m) symmetric -> b·A + c·A·A: (..., m, m), same dtype; A·A is read as A·Aᵀ, so only its upper
    triangle is computed."""
    X = _as_batch(A, "ba_plus_caa")
    m = X.shape[-1]
    if X.shape[-2] != m:
        raise ValueError(f"ba_plus_caa takes square matrices, got shape {tuple(A.shape)}")
    strides = (X.stride(1), X.stride(2))
    C = _sym_product(X, strides, strides, m, m, float(c), float(b), True, block, block_k)
    return C.view(A.shape)


def xxt(A: torch.Tensor) -> torch.Tensor:
    return xxt_triton(A) if on_gpu(A) else xxt_torch(A)


def xtx(A: torch.Tensor) -> torch.Tensor:
    return xtx_triton(A) if on_gpu(A) else xtx_torch(A)


def ba_plus_caa(A: torch.Tensor, b: float, c: float) -> torch.Tensor:
    return ba_plus_caa_triton(A, b, c) if on_gpu(A) else ba_plus_caa_torch(A, b, c)


def transpose_copy_torch(src: torch.Tensor, dst: torch.Tensor) -> None:
    """src: (m, n), dst: (n, m): dst = srcᵀ."""
    dst.copy_(src.T)


def transpose_add_torch(src: torch.Tensor, dst: torch.Tensor) -> None:
    """src: (m, n), dst: (n, m): dst += srcᵀ."""
    dst.add_(src.T)


@triton.jit
def _transpose_kernel(S, D, m, n, stride_sr, stride_sc, stride_dr, stride_dc,
                      ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """S: (m, n), D: (n, m), any float dtypes: D = Sᵀ, or D += Sᵀ (summed in fp32) if ACCUMULATE. A tile goes
    through registers, so S is read along its rows and D written along its rows."""
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(n, BLOCK_N)
    rows = (pid // blocks_n) * BLOCK_M + tl.arange(0, BLOCK_M)  # rows of S, columns of D
    cols = (pid % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)  # columns of S, rows of D
    tile = tl.load(S + rows[:, None] * stride_sr + cols[None, :] * stride_sc,
                   mask=(rows[:, None] < m) & (cols[None, :] < n))
    tile = tl.trans(tile)
    d_ptrs = D + cols[:, None] * stride_dr + rows[None, :] * stride_dc
    d_mask = (cols[:, None] < n) & (rows[None, :] < m)
    if ACCUMULATE:
        tile = tile.to(tl.float32) + tl.load(d_ptrs, mask=d_mask).to(tl.float32)
    tl.store(d_ptrs, tile.to(D.dtype.element_ty), mask=d_mask)


def _transpose(src: torch.Tensor, dst: torch.Tensor, accumulate: bool) -> None:
    if src.ndim != 2 or dst.shape != src.shape[::-1]:
        raise ValueError(f"transpose kernels take src: (m, n) and dst: (n, m), got {tuple(src.shape)} "
                         f"and {tuple(dst.shape)}")
    m, n = src.shape
    block_m = block_n = 64  # 16 KiB fp32 tile per program: plenty of programs in flight to saturate bandwidth
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    if grid[0] == 0:
        return
    _transpose_kernel[grid](src, dst, m, n, *src.stride(), *dst.stride(),
                            ACCUMULATE=accumulate, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4)


def transpose_copy_triton(src: torch.Tensor, dst: torch.Tensor) -> None:
    """src: (m, n), dst: (n, m): dst = srcᵀ, converted to dst's dtype."""
    _transpose(src, dst, accumulate=False)


def transpose_add_triton(src: torch.Tensor, dst: torch.Tensor) -> None:
    """src: (m, n), dst: (n, m): dst += srcᵀ, summed in fp32 and rounded to dst's dtype."""
    _transpose(src, dst, accumulate=True)


def transpose_copy(src: torch.Tensor, dst: torch.Tensor) -> None:
    (transpose_copy_triton if on_gpu(src) else transpose_copy_torch)(src, dst)


def transpose_add(src: torch.Tensor, dst: torch.Tensor) -> None:
    (transpose_add_triton if on_gpu(src) else transpose_add_torch)(src, dst)


class LogitCap(NamedTuple):
    """Bounded logits z = scale·tanh((l + shift) / width) + offset. 15·tanh(l / 15) is (0, 15, 15, 0); the public
    speedrun's 23·σ((l + 5) / 7.5) = 11.5·tanh((l + 5) / 15) + 11.5 is (5, 15, 11.5, 11.5)."""
    shift: float
    width: float
    scale: float
    offset: float

    @staticmethod
    def parse(spec: str) -> "LogitCap":
        """'tanh:C' -> C·tanh(l / C); 'sigmoid:A,B,C' -> A·σ((l + B) / C)."""
        kind, _, numbers = spec.partition(":")
        values = [float(v) for v in numbers.split(",")] if numbers else []
        if kind == "tanh" and len(values) == 1 and values[0] > 0:
            return LogitCap(0.0, values[0], values[0], 0.0)
        if kind == "sigmoid" and len(values) == 3 and values[0] > 0 and values[2] > 0:
            a, b, c = values
            return LogitCap(b, 2 * c, a / 2, a / 2)
        raise ValueError(f"logit cap {spec!r}: expected tanh:C or sigmoid:A,B,C with positive C and A")


def softcap(logits: torch.Tensor, cap: LogitCap) -> torch.Tensor:
    return cap.scale * torch.tanh((logits + cap.shift) / cap.width) + cap.offset


def targets_ahead(targets: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """targets: (T,) -> ((T, K) targets[t + k], padded with 0 past the end; (T, K) bool: t + k inside the sequence)."""
    T = targets.numel()
    ahead = F.pad(targets, (0, K - 1)).unfold(0, K, 1)
    return ahead, torch.arange(T, device=targets.device)[:, None] + torch.arange(K, device=targets.device) < T


def softcap_cross_entropy_torch(logits: torch.Tensor, targets: torch.Tensor, cap: LogitCap,
                                weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits: (T, V), targets: (T,) int64 -> fp32 scalar: the mean cross-entropy of softcap(logits). With weights:
    (K,), multi-token prediction: the mean over rows t of Σ_k weights[k]·CE(softcap(logits[t]), targets[t + k]),
    where targets past the end of the sequence weigh 0."""
    z = softcap(logits.float(), cap)
    if weights is None:
        return F.cross_entropy(z, targets)
    T = targets.numel()
    ahead, inside = targets_ahead(targets, weights.numel())
    losses = z.logsumexp(-1, keepdim=True) - z.gather(1, ahead)  # (T, K)
    return (losses * weights).masked_fill(~inside, 0.0).sum() / T


@triton.jit
def _tanh(x, FAST: tl.constexpr):
    """tanh in fp32: the GPU's one-instruction approximation (relative error ~2^-11, under bf16 rounding of the
    logits it is applied to) if FAST, else from the sigmoid (exp and an exact division, which Triton's CPU
    interpreter also runs). The division made the cross-entropy forward arithmetic-bound, not memory-bound."""
    if FAST:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def _softcap_ce_forward_kernel(L, targets, weights, lse, losses, T, V, stride_l, shift, width, scale, offset,
                               K: tl.constexpr, BLOCK_V: tl.constexpr, FAST_TANH: tl.constexpr):
    """One row of L: (T, V) per program: lse[row] = log Σ exp(z), z = softcap(L), and losses[row] =
    Σ_k weights[k]·(lse - z[targets[row + k]]) over the K targets ahead that lie inside the sequence. Capped
    logits lie in [offset - scale, offset + scale], so exp cannot overflow and one pass with no running max
    suffices."""
    row = tl.program_id(0).to(tl.int64)
    total = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(L + row * stride_l + cols, mask=cols < V, other=0.0).to(tl.float32)
        z = scale * _tanh((x + shift) / width, FAST_TANH) + offset
        total += tl.where(cols < V, tl.exp(z), 0.0)
    row_lse = tl.log(tl.sum(total, axis=0))
    loss = 0.0
    for k in tl.static_range(K):
        inside = row + k < T
        x_target = tl.load(L + row * stride_l + tl.load(targets + row + k, mask=inside, other=0)).to(tl.float32)
        z_target = scale * _tanh((x_target + shift) / width, FAST_TANH) + offset
        loss += tl.where(inside, tl.load(weights + k) * (row_lse - z_target), 0.0)
    tl.store(lse + row, row_lse)
    tl.store(losses + row, loss)


@triton.jit
def _softcap_ce_grad(x, row_lse, weight_sum, hits, g, shift, width, scale, offset, FAST_TANH: tl.constexpr):
    """The capped cross-entropy's gradient at logits x (fp32): g · (softmax(z)·Σ_k w_k - hits) · (1 - tanh²), z =
    softcap(x), with the rows' lse and Σ_k w_k broadcast against x and hits = Σ_k w_k·onehot(targets ahead)."""
    t = _tanh((x + shift) / width, FAST_TANH)
    return g * (tl.exp(scale * t + offset - row_lse) * weight_sum - hits) * (1 - t * t)


@triton.jit
def _softcap_ce_backward_kernel(L, G, targets, weights, lse, grad_loss, T, V, stride_l, stride_g, inv_T, shift,
                                width, scale, offset, K: tl.constexpr, BLOCK_V: tl.constexpr,
                                FAST_TANH: tl.constexpr):
    """G[row] = grad_loss / T · (softmax(z)·Σ_k w_k - Σ_k w_k·onehot(targets[row + k])) · scale / width ·
    (1 - tanh²), z = softcap(L), w_k = weights[k] for the targets inside the sequence and 0 past its end, in G's
    dtype (bf16: the product is exact)."""
    row = tl.program_id(0).to(tl.int64)
    row_lse = tl.load(lse + row)
    weight_sum = 0.0
    for k in tl.static_range(K):
        weight_sum += tl.where(row + k < T, tl.load(weights + k), 0.0)
    g = tl.load(grad_loss).to(tl.float32) * inv_T * (scale / width)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(L + row * stride_l + cols, mask=cols < V, other=0.0).to(tl.float32)
        hits = tl.zeros((BLOCK_V,), dtype=tl.float32)
        for k in tl.static_range(K):  # -1 past the end matches no column
            target = tl.load(targets + row + k, mask=row + k < T, other=-1)
            hits += tl.where(cols == target, tl.load(weights + k), 0.0)
        d = _softcap_ce_grad(x, row_lse, weight_sum, hits, g, shift, width, scale, offset, FAST_TANH)
        tl.store(G + row * stride_g + cols, d.to(G.dtype.element_ty), mask=cols < V)


CE_BLOCK_V = 2048  # vocabulary columns per loop iteration of the cross-entropy kernels


@torch.library.custom_op("train_gpt::softcap_cross_entropy", mutates_args=())
def softcap_cross_entropy_triton(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, shift: float,
                                 width: float, scale: float, offset: float,
                                 fast_tanh: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: (T, V) with unit stride along V, targets: (T,) int64, weights: (K,) fp32 on the logits' device (a
    tensor, so new weights do not recompile), a LogitCap's four numbers -> (mean over rows of the weighted capped
    cross-entropies, an fp32 scalar; lse: (T,) fp32, kept for the backward, which reads the logits once and writes
    their gradient once). An op opaque to torch.compile, so the Triton kernels are called as written, without a
    graph break."""
    T, V = logits.shape
    lse = torch.empty(T, dtype=torch.float32, device=logits.device)
    losses = torch.empty_like(lse)
    _softcap_ce_forward_kernel[(T,)](logits, targets, weights, lse, losses, T, V, logits.stride(0), shift, width,
                                     scale, offset, K=weights.numel(), BLOCK_V=CE_BLOCK_V, FAST_TANH=fast_tanh,
                                     num_warps=8)
    return losses.mean(), lse


@softcap_cross_entropy_triton.register_fake
def _(logits, targets, weights, shift, width, scale, offset, fast_tanh):
    return logits.new_empty((), dtype=torch.float32), logits.new_empty(logits.shape[0], dtype=torch.float32)


@torch.library.custom_op("train_gpt::softcap_cross_entropy_backward", mutates_args=())
def softcap_cross_entropy_backward(grad_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                                   weights: torch.Tensor, lse: torch.Tensor, shift: float, width: float, scale: float,
                                   offset: float, fast_tanh: bool) -> torch.Tensor:
    """-> the gradient of the logits: (T, V) in their dtype."""
    T, V = logits.shape
    grad = torch.empty_like(logits)
    _softcap_ce_backward_kernel[(T,)](logits, grad, targets, weights, lse, grad_loss.contiguous(), T, V,
                                      logits.stride(0), grad.stride(0), 1.0 / T, shift, width, scale, offset,
                                      K=weights.numel(), BLOCK_V=CE_BLOCK_V, FAST_TANH=fast_tanh, num_warps=8)
    return grad


@softcap_cross_entropy_backward.register_fake
def _(grad_loss, logits, targets, weights, lse, shift, width, scale, offset, fast_tanh):
    return torch.empty_like(logits)


def _softcap_cross_entropy_save(ctx, inputs, output):
    logits, targets, weights, *ctx.constants = inputs  # shift, width, scale, offset, fast_tanh
    ctx.save_for_backward(logits, targets, weights, output[1])


def _softcap_cross_entropy_grads(ctx, grad_loss, _grad_lse):  # lse is returned only to be saved
    grad = softcap_cross_entropy_backward(grad_loss, *ctx.saved_tensors, *ctx.constants)
    return grad, None, None, None, None, None, None, None


softcap_cross_entropy_triton.register_autograd(_softcap_cross_entropy_grads,
                                               setup_context=_softcap_cross_entropy_save)


def softcap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, cap: LogitCap,
                          weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits: (T, V), targets: (T,) int64, weights: (K,) fp32 or None (next-token loss) -> the loss
    softcap_cross_entropy_torch defines. On CUDA the fused kernels, with the approximate tanh instruction while
    autograd records; evaluation under no_grad keeps the exact tanh, so validation losses carry no approximation
    error. The next-token loss is weight 1 on one target ahead: the kernels' products with 1.0 are exact."""
    if not on_gpu(logits):
        return softcap_cross_entropy_torch(logits, targets, cap, weights)
    return softcap_cross_entropy_triton(logits, targets.contiguous(), kernel_weights(cap, weights, logits.device),
                                        *cap, torch.is_grad_enabled())[0]


def kernel_weights(cap: LogitCap, weights: torch.Tensor | None, device) -> torch.Tensor:
    """The cross-entropy kernels' checks and weights: one fp32 pass without a running max needs capped logits below
    60; no weights is weight 1 on the next token."""
    if cap.offset + cap.scale > 60:
        raise ValueError(f"logit cap {cap}: logits up to {cap.offset + cap.scale} > 60, exp would overflow the "
                         f"kernel's single fp32 pass")
    return torch.ones(1, dtype=torch.float32, device=device) if weights is None else weights


def relu_sq_mlp_torch(x: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """x: (T, D), fc: (H, D), proj: (D, H) -> relu(x·fcᵀ)²·projᵀ: (T, D)."""
    return F.linear(F.relu(F.linear(x, fc)).square(), proj)


def relu_sq_matmul_torch(a: torch.Tensor, b: torch.Tensor, h: torch.Tensor | None = None,
                         scale: torch.Tensor | None = None) -> torch.Tensor:
    """a: (M, K), b: (K, N) -> relu(a·b)² (h None), or (a·b)·2·sqrt(h) with h = relu(pre)²: (M, N), the gradient
    of the pre-activation when a·b is the gradient of h; accumulated in fp32, rounded to a's dtype (bf16 for FP8
    inputs). scale, an fp32 scalar, multiplies a·b first: the product of FP8 operands' scales."""
    c = a.float() @ b.float()
    c = c if scale is None else c * scale
    return (F.relu(c).square() if h is None else c * 2 * h.float().sqrt()).to(relu_sq_out_dtype(a))


def relu_sq_out_dtype(a: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if a.element_size() == 1 else a.dtype


@triton.jit
def _grouped_tile(tile, grid_m, grid_n, GROUP_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tile index -> (row, column) offsets, GROUP_M row blocks sweeping the columns together so the A rows they
    share stay in L2."""
    in_group = tile % (GROUP_M * grid_n)
    first_m = (tile // (GROUP_M * grid_n)) * GROUP_M
    group_m = min(grid_m - first_m, GROUP_M)
    return (first_m + in_group % group_m) * BLOCK_M, (in_group // group_m) * BLOCK_N


@triton.jit
def _relu_sq_epilogue(acc, h_desc, c_desc, q_desc, inv_q_scale, off_m, off_n, BACKWARD: tl.constexpr,
                      EMIT_FP8: tl.constexpr):
    """The activation (or, if BACKWARD, its gradient) of the output tile, stored in two halves: half the shared
    memory for the store buffer, which leaves room for 3 load stages. EMIT_FP8: the activation also goes to q_desc
    times inv_q_scale in float8_e4m3fn, from fp32, saturating at 448 (it is never negative)."""
    left, right = acc.reshape(acc.shape[0], 2, acc.shape[1] // 2).permute(0, 2, 1).split()
    off_right = off_n + acc.shape[1] // 2
    if BACKWARD:  # both halves of H asked for before either is used, so the two loads overlap
        h_left, h_right = h_desc.load([off_m, off_n]), h_desc.load([off_m, off_right])
        c_desc.store([off_m, off_n], (2 * left * tl.sqrt(h_left.to(tl.float32))).to(c_desc.dtype))
        c_desc.store([off_m, off_right], (2 * right * tl.sqrt(h_right.to(tl.float32))).to(c_desc.dtype))
    else:
        left, right = tl.maximum(left, 0.0), tl.maximum(right, 0.0)
        left, right = left * left, right * right
        c_desc.store([off_m, off_n], left.to(c_desc.dtype))
        c_desc.store([off_m, off_right], right.to(c_desc.dtype))
        if EMIT_FP8:
            q_desc.store([off_m, off_n], tl.minimum(left * inv_q_scale, 448.0).to(q_desc.dtype))
            q_desc.store([off_m, off_right], tl.minimum(right * inv_q_scale, 448.0).to(q_desc.dtype))


@triton.jit
def _relu_sq_matmul_kernel(a_desc, b_desc, h_desc, c_desc, q_desc, S, QS, M, N, K, B_TRANSPOSED: tl.constexpr,
                           BACKWARD: tl.constexpr, SCALED: tl.constexpr, EMIT_FP8: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           GROUP_M: tl.constexpr, NUM_PROGRAMS: tl.constexpr):
    """A: (M, K), B: (K, N), or its transpose (N, K) if B_TRANSPOSED -> C: (M, N) = relu(A·B)², or if BACKWARD,
    C = (A·B)·2·sqrt(H), the gradient of the pre-activation when A·B is the gradient of H = relu(pre)²; fp32
    accumulation, times the fp32 scalar at S if SCALED (FP8 operands' scales), C rounded to its dtype; if EMIT_FP8
    also Q = C / (the fp32 scalar at QS) in FP8 (the next matmul's operand). The activation rides on the matmul's
    output tile instead of a second pass over (M, N). Persistent: each program walks tiles NUM_PROGRAMS apart, and
    the flattened loop lets the next tile's TMA loads run under this tile's epilogue, which K = 768 (12 steps a
    tile) makes a large share."""
    inv_q_scale = 1.0
    if EMIT_FP8:  # a product with the reciprocal: an fp32 ulp from a division
        inv_q_scale = 1 / tl.load(QS)
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    tile_done = tl.program_id(0) - NUM_PROGRAMS  # the epilogue's tile, recomputed so no offsets live across it
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, NUM_PROGRAMS, flatten=True):
        off_m, off_n = _grouped_tile(tile, grid_m, grid_n, GROUP_M, BLOCK_M, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            b = b_desc.load([off_n, k]).T if B_TRANSPOSED else b_desc.load([k, off_n])
            acc = tl.dot(a_desc.load([off_m, k]), b, acc)
        if SCALED:
            acc = acc * tl.load(S)
        tile_done += NUM_PROGRAMS
        off_m, off_n = _grouped_tile(tile_done, grid_m, grid_n, GROUP_M, BLOCK_M, BLOCK_N)
        _relu_sq_epilogue(acc, h_desc, c_desc, q_desc, inv_q_scale, off_m, off_n, BACKWARD, EMIT_FP8)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for the forward and the backward epilogue: the fastest of
# bench/kernels.py's candidates on H100 at (49152, 768) x (768, 3072); for FP8 operands, writing h in e4m3 as well,
# the fastest of seven on an H200, 279 us against bf16's 339 (with four stages the e4m3 store buffer passes the 227
# KiB of shared memory; without the copy the kernel took 212-231 us; records/_runs/2026-12-02_speed, session 11)
RELU_SQ_MATMUL_CONFIGS = {"forward": (128, 256, 64, 8, 3), "backward": (128, 256, 64, 8, 3),
                          "fp8": (128, 256, 128, 8, 3)}


def _tma_matrix(t: torch.Tensor, name: str) -> torch.Tensor:
    """t itself if TMA can copy tiles of it (unit stride along its rows, 16-byte aligned start and row stride),
    else a contiguous copy; an error if no copy can be, because its rows are not a multiple of 16 bytes."""
    if (t.shape[-1] * t.element_size()) % 16:
        raise ValueError(f"relu_sq_matmul: {name} {tuple(t.shape)} {t.dtype} has rows of "
                         f"{t.shape[-1] * t.element_size()} bytes; TMA needs a multiple of 16")
    if t.stride(-1) != 1 or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
        t = t.contiguous()
    return t


def relu_sq_matmul_triton(a: torch.Tensor, b: torch.Tensor, h: torch.Tensor | None = None,
                          config: tuple | None = None, scale: torch.Tensor | None = None,
                          fp8_out_scale: torch.Tensor | None = None
                          ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """relu_sq_matmul_torch in one persistent TMA kernel. a: (M, K), b: (K, N), same dtype, K and N multiples of
    8 for bf16 (16-byte rows). FP8 (float8_e4m3fn) operands need b as the transpose of a contiguous (N, K) matrix,
    the K-major layout Hopper's FP8 tensor cores read both operands in. With fp8_out_scale (an fp32 scalar; FP8
    operands) the forward also returns its activation divided by it in float8_e4m3fn, saturating: (C, Q)."""
    (M, K), N = a.shape, b.shape[1]
    if b.shape[0] != K or (h is not None and h.shape != (M, N)):
        raise ValueError(f"relu_sq_matmul: shapes {tuple(a.shape)} x {tuple(b.shape)}"
                         f"{'' if h is None else f' with h {tuple(h.shape)}'} do not fit")
    fp8 = a.element_size() == 1
    b_transposed = b.stride(0) == 1 and b.stride(1) != 1  # e.g. fc.T: tiles of the (N, K) matrix, transposed
    if fp8 and (h is not None or not b_transposed or b.dtype != a.dtype):
        raise ValueError(f"relu_sq_matmul: FP8 runs the forward only, on a {a.dtype} and the transpose of an (N, K) "
                         f"matrix of the same dtype; got b {tuple(b.shape)} {b.dtype}, strides {b.stride()}")
    if fp8_out_scale is not None and not fp8:
        raise ValueError("relu_sq_matmul: an FP8 copy of the output comes only with FP8 operands")
    kind = "fp8" if fp8 else "forward" if h is None else "backward"
    block_m, block_n, block_k, warps, stages = config or RELU_SQ_MATMUL_CONFIGS[kind]
    b = _tma_matrix(b.T if b_transposed else b, "b")
    c = a.new_empty(M, N, dtype=relu_sq_out_dtype(a))
    c_desc = TensorDescriptor.from_tensor(_tma_matrix(c, "output"), [block_m, block_n // 2])
    q = None if fp8_out_scale is None else a.new_empty(M, N, dtype=torch.float8_e4m3fn)
    programs = min(triton.cdiv(M, block_m) * triton.cdiv(N, block_n),
                   torch.cuda.get_device_properties(a.device).multi_processor_count if on_gpu(a) else 4)
    _relu_sq_matmul_kernel[(programs,)](
        TensorDescriptor.from_tensor(_tma_matrix(a, "a"), [block_m, block_k]),
        TensorDescriptor.from_tensor(b, [block_n, block_k] if b_transposed else [block_k, block_n]),
        c_desc if h is None else TensorDescriptor.from_tensor(_tma_matrix(h, "h"), [block_m, block_n // 2]),
        c_desc, c_desc if q is None else TensorDescriptor.from_tensor(_tma_matrix(q, "FP8 output"),
                                                                      [block_m, block_n // 2]),
        c if scale is None else scale, c if q is None else fp8_out_scale, M, N, K, B_TRANSPOSED=b_transposed,
        BACKWARD=h is not None, SCALED=scale is not None, EMIT_FP8=q is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, GROUP_M=8, NUM_PROGRAMS=programs, num_warps=warps, num_stages=stages)
    return c if q is None else (c, q)


@torch.library.custom_op("train_gpt::relu_sq_mlp", mutates_args=())
def relu_sq_mlp_triton(x: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """relu_sq_mlp_torch with the activation fused into the first matmul -> (output (T, D), h = relu(x·fcᵀ)² (T, H),
    kept for the backward). An op opaque to torch.compile, so the Triton kernel is called as written."""
    h = relu_sq_matmul_triton(x, fc.T)
    return h @ proj.T, h


@relu_sq_mlp_triton.register_fake
def _(x, fc, proj):
    return x.new_empty(x.shape[0], proj.shape[0]), x.new_empty(x.shape[0], fc.shape[0])


@torch.library.custom_op("train_gpt::relu_sq_mlp_backward", mutates_args=())
def relu_sq_mlp_backward(dy: torch.Tensor, x: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor,
                         h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dx, dfc, dproj). The pre-activation's gradient comes out of the dy·proj matmul already multiplied by
    relu²'s derivative 2·relu(pre) = 2·sqrt(h), so neither dh nor the pre-activation is ever stored."""
    dpre = relu_sq_matmul_triton(dy, proj, h)
    return dpre @ fc, dpre.T @ x, dy.T @ h


@relu_sq_mlp_backward.register_fake
def _(dy, x, fc, proj, h):
    return torch.empty_like(x), torch.empty_like(fc), torch.empty_like(proj)


def _relu_sq_mlp_save(ctx, inputs, output):
    x, fc, proj = inputs[:3]  # the FP8 op's FP8 copies and scales follow; its backward does not read them
    ctx.save_for_backward(x, fc, proj, output[1])


def _relu_sq_mlp_grads(ctx, dy, _dh):  # h is returned only to be saved; nothing downstream uses it
    return relu_sq_mlp_backward(dy, *ctx.saved_tensors)


relu_sq_mlp_triton.register_autograd(_relu_sq_mlp_grads, setup_context=_relu_sq_mlp_save)


def relu_sq_mlp(x: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor, fused: bool) -> torch.Tensor:
    return relu_sq_mlp_triton(x, fc, proj)[0] if fused and on_gpu(x) else relu_sq_mlp_torch(x, fc, proj)


def fp8_quantize_torch(t: torch.Tensor, scale: float | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t / scale, divided in fp32, rounded to the FP8 dtype (to nearest, ties to even): t on the FP8 grid stretched
    by scale. A scale maps the largest value expected onto the top of the format; beyond it the value saturates
    there, as the GPU's conversion does (c10's scalar cast would give NaN)."""
    top = torch.finfo(dtype).max
    return (t.float() / scale).clamp(-top, top).to(dtype)


def fp8_dequantize(t: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """t rounded as fp8_quantize_torch rounds it, back in fp32 (exact: every FP8 value is an fp32 value) times scale."""
    return fp8_quantize_torch(t, scale, dtype).float() * scale


@triton.jit
def _byte_transpose_kernel(X, YW, m, n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """X: (m, n) bytes -> Xᵀ: (n, m), written as YW: (n, m / 4) 32-bit words, word (c, i) holding rows 4i..4i+3 of
    column c, row 4i + j in byte j (little-endian). The tile is read as four row-interleaved sub-tiles that share
    one register layout, so packing is a shift and an or, and the transpose moves a quarter as many elements, 4
    bytes each: on an H200 this ran at 3.6 TB/s, a byte-wise transposed store (the quantize kernel's, until
    session 10) at 1.1 TB/s (session 9). int64 offsets: m·n passes 2^31."""
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(n, BLOCK_N)
    words = ((pid // blocks_n) * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)).to(tl.int64)
    cols = ((pid % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    packed = tl.zeros((BLOCK_M // 4, BLOCK_N), dtype=tl.uint32)
    for j in tl.static_range(4):
        rows = words * 4 + j
        byte = tl.load(X + rows[:, None] * n + cols[None, :], mask=(rows[:, None] < m) & (cols[None, :] < n), other=0)
        packed |= byte.to(tl.uint32) << (8 * j)
    tl.store(YW + cols[:, None] * (m // 4) + words[None, :], tl.trans(packed),
             mask=(cols[:, None] < n) & (words[None, :] < m // 4))


def byte_transpose_triton(x: torch.Tensor, block_m: int = 128, block_n: int = 128) -> torch.Tensor:
    """x: (m, n) contiguous, 1-byte dtype, m a multiple of 4 -> xᵀ contiguous, same dtype."""
    m, n = x.shape
    if m % 4 or not x.is_contiguous() or x.element_size() != 1:
        raise ValueError(f"byte_transpose: {tuple(x.shape)} {x.dtype}: needs contiguous bytes and rows a multiple of 4")
    y = x.new_empty((n, m))
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _byte_transpose_kernel[grid](x.view(torch.uint8), y.view(torch.int32), m, n, BLOCK_M=block_m, BLOCK_N=block_n,
                                 num_warps=8)
    return y


@triton.jit
def _fp8_quantize_kernel(X, Y, m, n, stride_xr, stride_xc, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """X: (m, n), any float dtype -> Y: (m, n) contiguous = X / scale in Y's FP8 dtype (an exactly rounded fp32
    division, then to nearest even, saturating on the GPU). int64 offsets, as T·V passes 2^31."""
    pid = tl.program_id(0)
    blocks_n = tl.cdiv(n, BLOCK_N)
    rows = ((pid // blocks_n) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = ((pid % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    x = tl.load(X + rows[:, None] * stride_xr + cols[None, :] * stride_xc,
                mask=(rows[:, None] < m) & (cols[None, :] < n), other=0.0)
    y = tl.math.div_rn(x.to(tl.float32), scale).to(Y.dtype.element_ty)
    tl.store(Y + rows[:, None] * n + cols[None, :], y, mask=(rows[:, None] < m) & (cols[None, :] < n))


def fp8_quantize_triton(t: torch.Tensor, scale: float, dtype: torch.dtype, transpose: bool,
                        block: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp8_quantize_torch of t: (m, n) -> (the (m, n) result, and if transpose its (n, m) transpose by
    byte_transpose_triton, m then a multiple of 4), both contiguous. With the transposed copy written by the quantize
    kernel itself, byte by byte, the head's x took 147 us and its w 152; through byte_transpose 71 and 72 (H200,
    session 10)."""
    m, n = t.shape
    y = t.new_empty((m, n), dtype=dtype)
    block = block or 128  # 128-byte rows of FP8; not tuned on a GPU yet
    grid = (triton.cdiv(m, block) * triton.cdiv(n, block),)
    if grid[0]:
        _fp8_quantize_kernel[grid](t, y, m, n, *t.stride(), scale, BLOCK_M=block, BLOCK_N=block, num_warps=8)
    return y, byte_transpose_triton(y) if transpose else None


def fp8_quantize(t: torch.Tensor, scale: float, dtype: torch.dtype,
                 transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    if on_gpu(t):
        return fp8_quantize_triton(t, scale, dtype, transpose)
    q = fp8_quantize_torch(t, scale, dtype)
    return q, q.T.contiguous() if transpose else None


def fp8_matmul_torch(x: torch.Tensor, w: torch.Tensor, x_scale: float, w_scale: float) -> torch.Tensor:
    """x: (T, K), w: (K, N) -> x̂·ŵ: (T, N) in x's dtype, x̂ and ŵ being x and w rounded to float8_e4m3fn on the
    grids of their scales; the product of the rounded values in fp32."""
    e4m3 = torch.float8_e4m3fn
    return (fp8_dequantize(x, x_scale, e4m3) @ fp8_dequantize(w, w_scale, e4m3)).to(x.dtype)


def fp8_matmul_backward_torch(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor, x_scale: float, w_scale: float,
                              grad_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The FP8 head's gradients for grad = ∂L/∂(x·w): (T, N): with ĝ the gradient rounded to float8_e5m2 (two
    more exponent bits than e4m3 for its wider range) on the grid of grad_scale, (ĝ·ŵᵀ: (T, K) in x's dtype,
    x̂ᵀ·ĝ: (K, N) in w's dtype), products of the rounded values in fp32."""
    e4m3, e5m2 = torch.float8_e4m3fn, torch.float8_e5m2
    g = fp8_dequantize(grad, grad_scale, e5m2)
    return ((g @ fp8_dequantize(w, w_scale, e4m3).T).to(x.dtype),
            (fp8_dequantize(x, x_scale, e4m3).T @ g).to(w.dtype))


def _fp32_scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    return like.new_full((), value, dtype=torch.float32)  # a fill on the device: no copy from the host


def fp8_matmul_scaled_mm(x: torch.Tensor, w: torch.Tensor, x_scale: float,
                         w_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp8_matmul_torch on FP8 tensor cores (torch._scaled_mm; CUDA needs compute capability >= 8.9 and every
    dimension a multiple of 16) -> (x̂·ŵ: (T, N) in x's dtype; x̂ᵀ: (K, T) and ŵ: (K, N) in float8_e4m3fn, kept for
    the backward). _scaled_mm takes its first operand row-major, its second column-major, and multiplies the
    product by both scales. Fast accumulation (fewer bits, no periodic promotion to fp32) over the short K, as
    upstream's forward does."""
    e4m3 = torch.float8_e4m3fn
    x8, x8t = fp8_quantize(x, x_scale, e4m3, transpose=True)  # (T, K) here, (K, T) for dw = x̂ᵀ·ĝ
    w8, w8t = fp8_quantize(w, w_scale, e4m3, transpose=True)  # (K, N) for dx = ĝ·ŵᵀ, (N, K): ŵ column-major here
    out = torch._scaled_mm(x8, w8t.T, scale_a=_fp32_scalar(x_scale, x), scale_b=_fp32_scalar(w_scale, x),
                           out_dtype=x.dtype, use_fast_accum=True)
    return out, x8t, w8


def fp8_grad_matmuls(g8: torch.Tensor, g8t: torch.Tensor, x8t: torch.Tensor, w8: torch.Tensor, x_scale: float,
                     w_scale: float, grad_scale: float, x_dtype: torch.dtype,
                     w_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ĝ: (T, N) and ĝᵀ: (N, T) in float8_e5m2, x̂ᵀ: (K, T), ŵ: (K, N) in float8_e4m3fn, all contiguous -> (dx = ĝ·ŵᵀ:
    (T, K) in x_dtype, dw = x̂ᵀ·ĝ: (K, N) in w_dtype), times the scales."""
    g_scale = _fp32_scalar(grad_scale, g8)
    dx = torch._scaled_mm(g8, w8.T, scale_a=g_scale, scale_b=_fp32_scalar(w_scale, g8), out_dtype=x_dtype,
                          use_fast_accum=False)
    dw = torch._scaled_mm(x8t, g8t.T, scale_a=_fp32_scalar(x_scale, g8), scale_b=g_scale, out_dtype=w_dtype,
                          use_fast_accum=False)
    return dx, dw


def softcap_cross_entropy_grad_torch(grad_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                                     weights: torch.Tensor, cap: LogitCap) -> torch.Tensor:
    """The gradient of softcap_cross_entropy_torch's loss (times grad_loss) with respect to the logits, written out:
    grad_loss / T · (softmax(z)·Σ_k w_k - Σ_k w_k·onehot(targets[t + k])) · scale / width · (1 - tanh²), with
    z = softcap(logits) and w_k zero past the sequence's end -> (T, V) fp32."""
    T = targets.numel()
    t = torch.tanh((logits.float() + cap.shift) / cap.width)
    ahead, inside = targets_ahead(targets, weights.numel())
    w = weights.float() * inside  # (T, K)
    d = torch.softmax(cap.scale * t + cap.offset, dim=-1) * w.sum(1, keepdim=True)
    d.scatter_add_(1, ahead, -w)
    return grad_loss.float() / T * d * (cap.scale / cap.width) * (1 - t * t)


@triton.jit
def _pack_e5m2x4(a, b, c, d, PTX: tl.constexpr):
    """Four fp32 tensors -> uint32 words of their float8_e5m2 roundings (to nearest even, saturating), a in byte 0
    ... d in byte 3. On the GPU by the conversion instruction that writes two bytes from two floats (the first
    operand to the upper byte; Hopper and Ada): a tile of FP8 values bitcast to bytes there put 44% of the bytes
    in the wrong place (session 9). Triton's interpreter has no PTX and bitcasts correctly."""
    if PTX:
        return tl.inline_asm_elementwise(
            "{ .reg .b16 lo, hi; cvt.rn.satfinite.e5m2x2.f32 lo, $2, $1; cvt.rn.satfinite.e5m2x2.f32 hi, $4, $3; "
            "mov.b32 $0, {lo, hi}; }", "=r,f,f,f,f", [a, b, c, d], dtype=tl.uint32, is_pure=True, pack=1)
    words = a.to(tl.float8e5).to(tl.uint8, bitcast=True).to(tl.uint32)
    words |= b.to(tl.float8e5).to(tl.uint8, bitcast=True).to(tl.uint32) << 8
    words |= c.to(tl.float8e5).to(tl.uint8, bitcast=True).to(tl.uint32) << 16
    return words | d.to(tl.float8e5).to(tl.uint8, bitcast=True).to(tl.uint32) << 24


@triton.jit
def _softcap_ce_grad_rows(L, G, targets, weights, lse, rows, cols, T, V, stride_l, g, shift, width, scale, offset,
                          K: tl.constexpr, FAST_TANH: tl.constexpr):
    """_softcap_ce_grad of L's (len(rows), len(cols)) tile: stored to G: (T, V) in its dtype, and returned in fp32."""
    x = tl.load(L + rows[:, None] * stride_l + cols[None, :], mask=(rows[:, None] < T) & (cols[None, :] < V),
                other=0.0).to(tl.float32)
    weight_sum = tl.zeros(rows.shape, dtype=tl.float32)
    hits = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    for k in tl.static_range(K):  # -1 past the end matches no column
        ahead = rows + k < T
        w_k = tl.load(weights + k)
        weight_sum += tl.where(ahead, w_k, 0.0)
        target = tl.load(targets + rows + k, mask=ahead, other=-1)
        hits += tl.where(cols[None, :] == target[:, None], w_k, 0.0)
    row_lse = tl.load(lse + rows, mask=rows < T, other=0.0)
    y = _softcap_ce_grad(x, row_lse[:, None], weight_sum[:, None], hits, g, shift, width, scale, offset, FAST_TANH)
    tl.store(G + rows[:, None] * V + cols[None, :], y.to(G.dtype.element_ty),
             mask=(rows[:, None] < T) & (cols[None, :] < V))
    return y


@triton.jit
def _softcap_ce_fp8_grad_kernel(L, G, GTW, targets, weights, lse, grad_loss, T, V, stride_l, inv_T, shift, width,
                                scale, offset, inv_grad_scale, K: tl.constexpr, BLOCK_T: tl.constexpr,
                                BLOCK_V: tl.constexpr, FAST_TANH: tl.constexpr, PTX: tl.constexpr):
    """The gradient _softcap_ce_backward_kernel writes, divided by the gradient's scale and rounded once from fp32
    to e5m2, in both layouts from one read of the logits: G: (T, V), and Gᵀ as GTW: (V, T / 4) 32-bit words, four
    rows a word as _byte_transpose_kernel packs them. A tile is four row-interleaved sub-tiles (rows 4i + j) in one
    register layout, so a column's four bytes meet in one thread; the words are transposed, a quarter as many
    elements as bytes. T a multiple of 4; int64 offsets, as T·V passes 2^31."""
    pid = tl.program_id(0)
    blocks_v = tl.cdiv(V, BLOCK_V)
    quads = ((pid // blocks_v) * (BLOCK_T // 4) + tl.arange(0, BLOCK_T // 4)).to(tl.int64)
    cols = ((pid % blocks_v) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    g = tl.load(grad_loss).to(tl.float32) * inv_T * (scale / width) * inv_grad_scale
    y0 = _softcap_ce_grad_rows(L, G, targets, weights, lse, quads * 4, cols, T, V, stride_l, g, shift, width, scale,
                               offset, K, FAST_TANH)
    y1 = _softcap_ce_grad_rows(L, G, targets, weights, lse, quads * 4 + 1, cols, T, V, stride_l, g, shift, width,
                               scale, offset, K, FAST_TANH)
    y2 = _softcap_ce_grad_rows(L, G, targets, weights, lse, quads * 4 + 2, cols, T, V, stride_l, g, shift, width,
                               scale, offset, K, FAST_TANH)
    y3 = _softcap_ce_grad_rows(L, G, targets, weights, lse, quads * 4 + 3, cols, T, V, stride_l, g, shift, width,
                               scale, offset, K, FAST_TANH)
    tl.store(GTW + cols[:, None] * (T // 4) + quads[None, :], tl.trans(_pack_e5m2x4(y0, y1, y2, y3, PTX)),
             mask=(cols[:, None] < V) & (quads[None, :] < T // 4))


# The FP8 gradient kernel's (rows, vocabulary columns, warps) per program: the fastest of twelve at the record's
# micro-step shape on an H200, 3.9 ms (4.0-4.3 for the next five; 6-6.6 with 16 rows; records/_runs/2026-12-02_speed,
# session 10).
CE_FP8_GRAD_TILE = (64, 64, 4)


def softcap_ce_fp8_grad_triton(grad_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                               weights: torch.Tensor, lse: torch.Tensor, cap: LogitCap, grad_scale: float,
                               fast_tanh: bool, tile: tuple[int, int, int] | None = None) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """softcap_cross_entropy_grad_torch rounded by fp8_quantize_torch(·, grad_scale, float8_e5m2), from fp32 (one
    rounding; the reciprocal's product, not an exact division: an fp32 ulp apart) -> (ĝ: (T, V), ĝᵀ: (V, T)),
    contiguous, T a multiple of 4. One kernel (tile: CE_FP8_GRAD_TILE's three numbers); on an H200 at T = 49152
    3.9 ms, against 4.7 for a row kernel writing ĝ then byte_transpose (session 9's, timed beside it in session 10)
    and 23 for session 8's kernel, which wrote FP8 tiles transposed."""
    T, V = logits.shape
    if T % 4:
        raise ValueError(f"softcap_ce_fp8_grad: {T} rows, not a multiple of 4")
    block_t, block_v, warps = tile or CE_FP8_GRAD_TILE
    g8 = logits.new_empty((T, V), dtype=torch.float8_e5m2)
    g8t = logits.new_empty((V, T), dtype=torch.float8_e5m2)
    grid = (triton.cdiv(T, block_t) * triton.cdiv(V, block_v),)
    _softcap_ce_fp8_grad_kernel[grid](logits, g8, g8t.view(torch.int32), targets, weights, lse,
                                      grad_loss.contiguous(), T, V, logits.stride(0), 1.0 / T, *cap, 1.0 / grad_scale,
                                      K=weights.numel(), BLOCK_T=block_t, BLOCK_V=block_v, FAST_TANH=fast_tanh,
                                      PTX=logits.is_cuda, num_warps=warps)
    return g8, g8t


@torch.library.custom_op("train_gpt::fp8_head_cross_entropy", mutates_args=())
def fp8_head_cross_entropy_op(x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                              x_scale: float, w_scale: float, grad_scale: float, shift: float, width: float,
                              scale: float, offset: float, fast_tanh: bool) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """The LM head and its loss as one op: logits = x̂·ŵ (fp8_matmul_scaled_mm), then the weighted capped
    cross-entropy -> (loss, and kept for the backward: lse: (T,), the logits, x̂ᵀ, ŵ). Its backward writes the
    logits' gradient straight to FP8 in both layouts (one rounding, from fp32, and no bf16 gradient of T·V written
    and read again), then the two gradient products (fp8_grad_matmuls); fp8_matmul_backward_torch defines both.
    On CPU the torch definitions stand in for the kernels."""
    logits, x8t, w8 = fp8_matmul_scaled_mm(x, w, x_scale, w_scale)
    if on_gpu(logits):
        loss, lse = softcap_cross_entropy_triton(logits, targets, weights, shift, width, scale, offset, fast_tanh)
    else:
        cap = LogitCap(shift, width, scale, offset)
        loss = softcap_cross_entropy_torch(logits, targets, cap, weights)
        lse = softcap(logits.float(), cap).logsumexp(-1)
    return loss, lse, logits, x8t, w8


@fp8_head_cross_entropy_op.register_fake
def _(x, w, targets, weights, x_scale, w_scale, grad_scale, shift, width, scale, offset, fast_tanh):
    e4m3 = torch.float8_e4m3fn
    return (x.new_empty((), dtype=torch.float32), x.new_empty(x.shape[0], dtype=torch.float32),
            x.new_empty(x.shape[0], w.shape[1]), x.new_empty(x.shape[1], x.shape[0], dtype=e4m3),
            w.new_empty(w.shape, dtype=e4m3))


@torch.library.custom_op("train_gpt::fp8_head_cross_entropy_backward", mutates_args=())
def fp8_head_cross_entropy_backward(grad_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                                    weights: torch.Tensor, lse: torch.Tensor, x8t: torch.Tensor, w8: torch.Tensor,
                                    x_scale: float, w_scale: float, grad_scale: float, shift: float, width: float,
                                    scale: float, offset: float, fast_tanh: bool, x_dtype: torch.dtype,
                                    w_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (dx: (T, K) in x_dtype, dw: (K, N) in w_dtype) of fp8_head_cross_entropy_op."""
    cap = LogitCap(shift, width, scale, offset)
    if on_gpu(logits):
        g8, g8t = softcap_ce_fp8_grad_triton(grad_loss, logits, targets, weights, lse, cap, grad_scale, fast_tanh)
    else:
        g8 = fp8_quantize_torch(softcap_cross_entropy_grad_torch(grad_loss, logits, targets, weights, cap),
                                grad_scale, torch.float8_e5m2)
        g8t = g8.T.contiguous()
    return fp8_grad_matmuls(g8, g8t, x8t, w8, x_scale, w_scale, grad_scale, x_dtype, w_dtype)


@fp8_head_cross_entropy_backward.register_fake
def _(grad_loss, logits, targets, weights, lse, x8t, w8, x_scale, w_scale, grad_scale, shift, width, scale, offset,
      fast_tanh, x_dtype, w_dtype):
    return logits.new_empty(x8t.shape[1], x8t.shape[0], dtype=x_dtype), logits.new_empty(w8.shape, dtype=w_dtype)


def _fp8_head_save(ctx, inputs, output):
    _, _, targets, weights, *ctx.constants = inputs  # three scales, the cap's four numbers, fast_tanh
    ctx.dtypes = inputs[0].dtype, inputs[1].dtype
    ctx.save_for_backward(output[2], targets, weights, output[1], output[3], output[4])


def _fp8_head_grads(ctx, grad_loss, *_saved_only):  # lse, the logits, x̂ᵀ and ŵ are returned only to be saved
    dx, dw = fp8_head_cross_entropy_backward(grad_loss, *ctx.saved_tensors, *ctx.constants, *ctx.dtypes)
    return (dx, dw) + (None,) * 10


fp8_head_cross_entropy_op.register_autograd(_fp8_head_grads, setup_context=_fp8_head_save)


def fp8_head_cross_entropy(x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, cap: LogitCap,
                           weights: torch.Tensor | None, x_scale: float, w_scale: float,
                           grad_scale: float) -> torch.Tensor:
    """x: (T, K), w: (K, V), targets: (T,) int64, weights: (K,) fp32 or None -> softcap_cross_entropy of the FP8
    product x̂·ŵ, trained with an FP8 gradient (fp8_head_cross_entropy_op)."""
    return fp8_head_cross_entropy_op(x, w, targets.contiguous(), kernel_weights(cap, weights, x.device), x_scale,
                                     w_scale, grad_scale, *cap, on_gpu(x))[0]


@torch.library.custom_op("train_gpt::relu_sq_mlp_fp8", mutates_args=())
def relu_sq_mlp_fp8_op(x: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor, x8: torch.Tensor, fc8: torch.Tensor,
                       proj8: torch.Tensor, x_scale: torch.Tensor, fc_scale: torch.Tensor, proj_scale: torch.Tensor,
                       h_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """relu_sq_mlp_triton with both matmuls on FP8 tensor cores: x8, fc8 and proj8 are float8_e4m3fn copies of x,
    fc and proj on the grids of their scales (fp32 scalars). h = relu(x̂·f̂cᵀ)² comes out of the first in bf16 and,
    on the grid of h_scale, in e4m3 (ĥ); the second is ĥ·p̂rojᵀ (torch._scaled_mm, with fast accumulation as the
    head's forward) -> (output: (T, D), h: (T, H)). The backward is the bf16 MLP's (relu_sq_mlp_backward) on x, fc,
    proj and the bf16 h, as upstream's FP8 MLP keeps its backward in bf16."""
    h, h8 = relu_sq_matmul_triton(x8, fc8.T, scale=x_scale * fc_scale, fp8_out_scale=h_scale)
    out = torch._scaled_mm(h8, proj8.T, scale_a=h_scale, scale_b=proj_scale, out_dtype=h.dtype, use_fast_accum=True)
    return out, h


@relu_sq_mlp_fp8_op.register_fake
def _(x, fc, proj, x8, fc8, proj8, x_scale, fc_scale, proj_scale, h_scale):
    return x.new_empty(x.shape[0], proj.shape[0]), x.new_empty(x.shape[0], fc.shape[0])


relu_sq_mlp_fp8_op.register_autograd(lambda ctx, dy, _dh: _relu_sq_mlp_grads(ctx, dy, _dh) + (None,) * 7,
                                     setup_context=_relu_sq_mlp_save)


def relu_sq_mlp_fp8(x: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """x: (T, D) rms-normed, fc: (H, D), proj: (D, H), the fp32 parameters -> relu_sq_mlp's output, both matmuls
    in FP8 (relu_sq_mlp_fp8_op). Each scale maps the largest value it can meet onto 448, the top of
    float8_e4m3fn, with no state kept between calls:
    - x: an rms-normed row has no entry beyond sqrt(D);
    - fc and proj: their own largest entries, found again each call (the weights move every step; reductions over
      H·D numbers);
    - h = relu(x·fc_j)² ≤ |x|²·|fc_j|² = D·max_j |fc_j|² (Cauchy-Schwarz), a bound that no rounding or delayed
      amax can overshoot; typical entries land ~D times under it, still 2^5 above e4m3's smallest normal.
    Every rounding saturates (fp8_quantize_torch): an x that is not normed is clipped, not turned into NaN."""
    e4m3, top = torch.float8_e4m3fn, torch.finfo(torch.float8_e4m3fn).max
    fc32, proj32 = fc.detach().float(), proj.detach().float()
    x_scale = x.new_full((), x.size(-1) ** 0.5 / top, dtype=torch.float32)
    fc_scale = fc32.abs().amax().clamp_min(1e-30) / top
    proj_scale = proj32.abs().amax().clamp_min(1e-30) / top
    h_scale = (x.size(-1) * fc32.square().sum(1).amax()).clamp_min(1e-30) / top
    x8, fc8, proj8 = (fp8_quantize_torch(t, s, e4m3) for t, s in ((x.detach(), x_scale), (fc32, fc_scale),
                                                                  (proj32, proj_scale)))
    return relu_sq_mlp_fp8_op(x, fc.type_as(x), proj.type_as(x), x8, fc8, proj8, x_scale, fc_scale, proj_scale,
                              h_scale)[0]


def adam_update_torch(weights, grad, exp_avg, exp_avg_sq, hyper: torch.Tensor) -> None:
    """Bias-corrected Adam with cautious weight decay, in place on flat fp32 shards: the moments, then the weights,
    decayed by lr²·weight_decay only where the update already pulls them toward zero.
    hyper: fp32 [lr, beta1, beta2, eps, weight_decay, 1 - beta1^step, 1 - beta2^step] on the weights' device.
    Tensors, not floats, so that a new lr neither recompiles nor syncs."""
    lr, beta1, beta2, eps, weight_decay, correction1, correction2 = hyper.unbind()
    exp_avg.mul_(beta1).add_(grad * (1 - beta1))
    exp_avg_sq.mul_(beta2).add_(grad.square() * (1 - beta2))
    update = exp_avg / ((exp_avg_sq / correction2).sqrt() + eps) * (lr / correction1)
    weights.sub_(weights * ((update * weights > 0) * (lr * lr * weight_decay)) + update)


@triton.jit
def _adam_kernel(W, G, M, V, H, n, BLOCK: tl.constexpr):
    """adam_update_torch on BLOCK elements of the flat W, G, M, V (fp32, contiguous): each read once and W, M, V
    written once, 28 bytes an element, the memory floor of the update. H: the 7 hyperparameters."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    lr, beta1, beta2, eps = tl.load(H), tl.load(H + 1), tl.load(H + 2), tl.load(H + 3)
    weight_decay, correction1, correction2 = tl.load(H + 4), tl.load(H + 5), tl.load(H + 6)
    g = tl.load(G + offsets, mask=mask, other=0.0)
    m = tl.load(M + offsets, mask=mask, other=0.0) * beta1 + g * (1 - beta1)
    v = tl.load(V + offsets, mask=mask, other=0.0) * beta2 + g * g * (1 - beta2)
    update = m / (tl.sqrt_rn(v / correction2) + eps) * (lr / correction1)
    w = tl.load(W + offsets, mask=mask, other=0.0)
    w = w - (tl.where(update * w > 0, w * (lr * lr * weight_decay), 0.0) + update)
    tl.store(M + offsets, m, mask=mask)
    tl.store(V + offsets, v, mask=mask)
    tl.store(W + offsets, w, mask=mask)


def adam_update_triton(weights, grad, exp_avg, exp_avg_sq, hyper: torch.Tensor, block: int = 1024) -> None:
    """adam_update_torch in one kernel launch, whatever the size: no compile, no per-size specialization."""
    for name, t in (("weights", weights), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != weights.numel():
            raise ValueError(f"adam_update_triton: {name} must be contiguous fp32 of {weights.numel()} elements, "
                             f"got {t.dtype} {tuple(t.shape)} strides {t.stride()}")
    n = weights.numel()
    if n:
        _adam_kernel[(triton.cdiv(n, block),)](weights, grad, exp_avg, exp_avg_sq, hyper, n, BLOCK=block,
                                               num_warps=4)


def adam_update_(weights, grad, exp_avg, exp_avg_sq, hyper: torch.Tensor) -> None:
    (adam_update_triton if on_gpu(weights) else adam_update_torch)(weights, grad, exp_avg, exp_avg_sq, hyper)


def add_rows_torch(total: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """total[rows[i]] += values[i] for every i, repeated rows summed: total (N, D) fp32, rows (T,) int, values (T, D)."""
    total.index_add_(0, rows, values.to(total.dtype))


@triton.jit
def _add_rows_kernel(TOTAL, ROWS, VALUES, T, D, stride_v, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """add_rows_torch on BLOCK_T positions by BLOCK_D columns, with atomic adds (rows repeat across programs)."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    inside = t < T
    mask = inside[:, None] & (d < D)[None, :]
    rows = tl.load(ROWS + t, mask=inside, other=0).to(tl.int64)
    v = tl.load(VALUES + t.to(tl.int64)[:, None] * stride_v + d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(TOTAL + rows[:, None] * D + d[None, :], v, mask=mask, sem="relaxed")


# block_t, block_d, warps: fastest of micro-bench 8 (session 12), where sorting the rows first and adding each run of
# equal rows once (a segmented sum in the block) was slower
ADD_ROWS_CONFIG = (64, 128, 4)


def add_rows_triton(total: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, block_t: int | None = None,
                    block_d: int | None = None, warps: int | None = None) -> None:
    """add_rows_torch in one launch; by default at ADD_ROWS_CONFIG (block_t, block_d, warps)."""
    T, D = values.shape
    if total.dtype != torch.float32 or not total.is_contiguous() or total.size(1) != D or rows.shape != (T,):
        raise ValueError(f"add_rows_triton: total must be contiguous fp32 (N, {D}) and rows ({T},), got "
                         f"{total.dtype} {tuple(total.shape)} strides {total.stride()}, rows {tuple(rows.shape)}")
    block_t, block_d, warps = [ADD_ROWS_CONFIG[i] if given is None else given
                               for i, given in enumerate((block_t, block_d, warps))]
    values = values if values.stride(1) == 1 else values.contiguous()
    grid = (triton.cdiv(T, block_t), triton.cdiv(D, block_d))
    _add_rows_kernel[grid](total, rows.contiguous(), values, T, D, values.stride(0), BLOCK_T=block_t,
                           BLOCK_D=block_d, num_warps=warps)


@torch.library.custom_op("train_gpt::add_rows_", mutates_args=("total",))
def add_rows_(total: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """add_rows_torch, by the Triton kernel on CUDA. An op, so that torch.compile keeps the in-place add in the
    backward graph (RowTable)."""
    (add_rows_triton if on_gpu(total) else add_rows_torch)(total, rows, values)


@add_rows_.register_fake
def _(total, rows, values):
    return None


# ----- Optimizers -----

# Polar Express coefficients for bf16, 5 steps, safety factor included (Amsel, Persson, Musco, Gower 2025,
# "The Polar Express: Optimal Matrix Sign Methods and Their Application to the Muon Algorithm"; the schedule
# the public speedrun uses). Step i maps X to a·X + b·(XXᵀ)X + c·(XXᵀ)²X.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 2e-2  # the schedule assumes singular values ≤ 1 / (1 + 2e-2) after normalizing


@torch.no_grad()
def polar_express(G: torch.Tensor) -> torch.Tensor:
    """G: (..., m, n) = U·S·Vᵀ -> ≈ U·Vᵀ, bf16 (..., m, n), each trailing matrix separately."""
    X = G.bfloat16()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * (1 + POLAR_EXPRESS_SAFETY) + 1e-6)
    wide = X.size(-2) <= X.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        if wide:  # Gram matrix on the short side: XXᵀ is (m, m)
            X = a * X + ba_plus_caa(xxt(X), b, c) @ X
        else:  # XᵀX is (n, n); the same polynomial, applied from the right, with no transposed copy of X
            X = a * X + X @ ba_plus_caa(xtx(X), b, c)
    return X


def _check_world(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    if world_size > 1 and not dist.is_initialized():
        raise ValueError(f"world_size={world_size} needs torch.distributed initialized first")


def _param_index(opt: torch.optim.Optimizer) -> dict:
    return {p: i for i, p in enumerate(p for group in opt.param_groups for p in group["params"])}


def _groups_for_checkpoint(opt: torch.optim.Optimizer) -> list:
    index = _param_index(opt)
    return [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[p] for p in g["params"]]}
            for g in opt.param_groups]


def _load_groups(opt: torch.optim.Optimizer, saved_groups: list) -> None:
    sizes = [len(g["params"]) for g in opt.param_groups]
    saved_sizes = [len(g["params"]) for g in saved_groups]
    if sizes != saved_sizes:
        raise ValueError(f"{type(opt).__name__} checkpoint has groups of {saved_sizes} params, expected {sizes}")
    for group, saved in zip(opt.param_groups, saved_groups):
        group.update({k: v for k, v in saved.items() if k != "params"})


def _stack_matrices(tensors: list, world_size: int) -> torch.Tensor:
    """Tensors (..., a, b) -> (R, a, b): all their matrices in order, zero-padded so world_size divides R."""
    mats = [t.reshape(-1, *t.shape[-2:]) for t in tensors]
    padding = -sum(x.size(0) for x in mats) % world_size
    return torch.cat(mats + [mats[0].new_zeros(padding, *mats[0].shape[1:])])


def _pad_flat(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """t: any shape -> flat (N,), zero-padded so world_size divides N."""
    return F.pad(t.reshape(-1), (0, -t.numel() % world_size))


def _gather_rows(share: torch.Tensor, world_size: int) -> torch.Tensor:
    """share: (k, ...) on each rank -> (world_size·k, ...) in rank order. Blocking; for checkpoints."""
    if world_size == 1:
        return share
    full = share.new_empty(world_size * share.size(0), *share.shape[1:])
    dist.all_gather_into_tensor(full, share.contiguous())
    return full


# Per NorMuon matrix of the record model: (neuron_axis, lr_mul), decided per parameter, not read off the memory
# layout. NorMuon (Li et al. 2025, arXiv 2510.05491) keeps a second moment per unit along the matrix's longer
# side, the mean of u² over the axis `neuron_axis` names, as the public speedrun does: for the MLP both matrices
# normalize per hidden unit (fc's rows, proj's columns). lr_mul scales the group's learning rate as upstream's
# validated recipe does: fc 2x, proj 4x (its sqrt(3072/768) shape rule, with proj's own extra 2x).
MATRIX_PARAMS = {
    "attn.qkvo": (-1, 1.0),  # (4, 768, 768) stored (out, in): one second moment per output channel
    "attn.gate": (-2, 1.0),  # (6, 12): the longer side is the 12 gate inputs
    "mlp.fc": (-1, 2.0),     # (3072, 768): rows are the ReLU² hidden units
    "mlp.proj": (-2, 4.0),   # (768, 3072): columns are the ReLU² hidden units
}

# Per DistAdam group: ((beta1, beta2), weight-decay multiplier), upstream's validated values. Decay is cautious
# and proportional to lr², so it grows with the lr of the group: the embedding and head decay 150x, value
# embeddings 5x, the value-embedding gates 1x (upstream's default), the scalars not at all; scalars and gates
# average over a longer window (0.9, 0.99); the XSA strengths, upstream's, (0.9, 0.95) without decay.
ADAM_PARAMS = {
    "lm_head": ((0.5, 0.95), 150.0),
    "embed": ((0.5, 0.95), 150.0),
    "value_embeds": ((0.75, 0.95), 5.0),
    "scalars": ((0.9, 0.99), 0.0),
    "bigram_embed": ((0.75, 0.95), 5.0),
    "smear_gate": ((0.9, 0.99), 0.0),
    "value_gates": ((0.9, 0.99), 1.0),
    "xsa_alphas": ((0.9, 0.95), 0.0),
}


class NorMuon(torch.optim.Optimizer):
    """Nesterov momentum, Polar Express orthogonalization and NorMuon's neuron-wise second-moment
    normalization, for matrices. A param group holds params of one shape (..., m, n) (leading dims stack
    matrices orthogonalized separately) and sets `neuron_axis` (-1 or -2) and `lr_mul` (see MATRIX_PARAMS).
    An optional `row_blocks`, one entry per matrix of a param (b > 0: orthogonalize each block of b rows apart;
    0: the whole matrix), gives e.g. Q and K one orthogonalization per pair of heads, V and O one each.
    Its M matrices, zero-padded to a multiple of world_size, are split in contiguous shares: rank r owns
    matrices [r·k, (r+1)·k), k = ceil(M / world_size), and holds only their momentum and second moment.
    Communication: step() launches every group's gradient reduce-scatter, then processes the groups in order
    while later ones are in flight, launching each group's parameter all-gather; it waits for all at the end.
    No hooks, so grad_sync_enabled changes nothing here: accumulated gradients are reduced once, in step()."""

    def __init__(self, param_groups, lr, momentum=0.95, beta2=0.95, weight_decay=0.0, eps=1e-10,
                 rank=0, world_size=1):
        defaults = dict(lr=lr, momentum=momentum, beta2=beta2, weight_decay=weight_decay, eps=eps, label=None)
        super().__init__(param_groups, defaults)
        _check_world(rank, world_size)
        self.rank, self.world_size = rank, world_size
        self.grad_sync_enabled = True
        self._block_index = {}  # (row_blocks, k, b) -> a device index tensor; see _orthogonalize
        for i, group in enumerate(self.param_groups):
            name = group["label"] or f"group {i}"
            missing = sorted({"neuron_axis", "lr_mul"} - group.keys())
            if missing:
                raise ValueError(f"NorMuon {name}: param group must set {missing} explicitly")
            if group["neuron_axis"] not in (-1, -2):
                raise ValueError(f"NorMuon {name}: neuron_axis={group['neuron_axis']}, expected -1 or -2")
            shapes = {tuple(p.shape) for p in group["params"]}
            if len(shapes) != 1 or len(next(iter(shapes))) < 2:
                raise ValueError(f"NorMuon {name}: params must share one shape (..., m, n), got {shapes}")
            *stack, m, _ = next(iter(shapes))
            blocks = group.setdefault("row_blocks", ())
            if blocks and (len(blocks) != math.prod(stack) or any(b < 0 or (b and m % b) for b in blocks)):
                raise ValueError(f"NorMuon {name}: row_blocks={blocks} needs one entry per matrix of a param "
                                 f"({math.prod(stack)}), each 0 or a divisor of its {m} rows")

    def _layout(self, group) -> tuple:
        """(M, k, m, n): the group's matrix count, matrices per rank, and matrix shape."""
        m, n = group["params"][0].shape[-2:]
        M = sum(p.numel() for p in group["params"]) // (m * n)
        return M, -(-M // self.world_size), m, n

    def _has_grads(self, group) -> bool:
        present = [p.grad is not None for p in group["params"]]
        if any(present) and not all(present):
            raise ValueError(f"NorMuon {group['label']}: some params of the group have no grad")
        return all(present)

    def _reduce_scatter_grads(self, group) -> tuple:
        """-> (this rank's (k, m, n) gradient share, its pending work or None, the stacked buffer it reads: the
        collective reads it asynchronously, so the caller holds it until the work is waited on)."""
        grads = _stack_matrices([p.grad for p in group["params"]], self.world_size)
        if self.world_size == 1:
            return grads, None, None
        share = grads.new_empty(grads.size(0) // self.world_size, *grads.shape[1:])
        return share, dist.reduce_scatter_tensor(share, grads, op=dist.ReduceOp.SUM, async_op=True), grads

    def _orthogonalize(self, u: torch.Tensor, group) -> torch.Tensor:
        """u: this rank's (k, m, n) share -> fp32 polar_express of each matrix, or of each block of b rows apart
        where row_blocks gives b for the matrix's place in its param (global index mod matrices per param).
        Each b's matrices are picked by an index tensor made on u's device once: indexing by a Python list copies
        it from the host, and that copy waits for the GPU to finish the backward, every step."""
        blocks = group["row_blocks"]
        if not blocks:
            return polar_express(u).float()
        _, k, m, n = self._layout(group)
        out = torch.empty_like(u, dtype=torch.float32)
        for b in set(blocks):
            key = (tuple(blocks), k, b)  # what the index is made from: a checkpoint's groups may bring other blocks
            if key not in self._block_index:
                places = [(self.rank * k + i) % len(blocks) for i in range(k)]
                self._block_index[key] = torch.tensor([i for i, place in enumerate(places) if blocks[place] == b],
                                                      dtype=torch.long, device=u.device)
            index = self._block_index[key]
            if index.numel():
                chosen = u.index_select(0, index)
                out.index_copy_(0, index, polar_express(chosen.reshape(-1, b, n) if b else chosen).float()
                                .reshape(index.numel(), m, n))
        return out

    def _normalize_neurons(self, u: torch.Tensor, group) -> torch.Tensor:
        """u: (k, m, n) orthogonalized -> divided by each neuron's RMS (running, along neuron_axis), then
        rescaled per matrix to the Frobenius norm it had."""
        state = self.state[group["params"][0]]
        v = state["second_moment"]  # (k, m, 1) for neuron_axis=-1, (k, 1, n) for -2
        v.lerp_(u.square().mean(dim=group["neuron_axis"], keepdim=True), 1 - group["beta2"])
        size = u.norm(dim=(-2, -1), keepdim=True)
        u = u / (v.sqrt() + group["eps"])
        return u * (size / u.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-30))

    def _update_share(self, group, grad: torch.Tensor, work) -> tuple:
        """grad: this rank's (k, m, n) share -> (all matrices of the group, padded, with this rank's share
        updated; the pending all-gather that fills in the other shares, or None)."""
        M, k, m, n = self._layout(group)
        if work is not None:
            work.wait()
            grad.div_(self.world_size)  # SUM then scale: gloo has no AVG
        state = self.state[group["params"][0]]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(grad)
            v_shape = (k, m, 1) if group["neuron_axis"] == -1 else (k, 1, n)
            state["second_moment"] = grad.new_zeros(v_shape, dtype=torch.float32)
        state["momentum_buffer"].lerp_(grad, 1 - group["momentum"])
        u = grad.lerp_(state["momentum_buffer"], group["momentum"])  # Nesterov
        u = self._normalize_neurons(self._orthogonalize(u, group), group)

        stacked = _stack_matrices(group["params"], self.world_size)
        p = stacked[self.rank * k:(self.rank + 1) * k]
        # Cautious weight decay: decay only where the update already pulls p toward zero, by
        # weight_decay·lr·(lr·lr_mul): proportional to lr² as the schedule moves, as upstream's.
        lr = group["lr"] * group["lr_mul"]
        p.addcmul_(p, (u * p > 0).to(p.dtype), value=-group["weight_decay"] * group["lr"] * lr)
        p.add_(u.to(p.dtype), alpha=-lr)
        if self.world_size == 1:
            return stacked, None
        full = torch.empty_like(stacked)
        return full, dist.all_gather_into_tensor(full, p, async_op=True)

    @torch.no_grad()
    def step(self):
        groups = [g for g in self.param_groups if self._has_grads(g)]
        in_flight = [self._reduce_scatter_grads(g) for g in groups]  # all groups before the first update
        gathers = [self._update_share(g, share, work) for g, (share, work, _) in zip(groups, in_flight)]
        for group, (full, work) in zip(groups, gathers):
            if work is not None:
                work.wait()
            M, k, m, n = self._layout(group)
            for p, new in zip(group["params"], full[:M].split([p.numel() // (m * n) for p in group["params"]])):
                p.copy_(new.view_as(p))

    def state_dict(self) -> dict:
        """The full, unsharded state, the same for any world size. Collective: every rank must call it."""
        index, state = _param_index(self), {}
        for group in self.param_groups:
            shard = self.state.get(group["params"][0])
            if not shard:
                continue
            M, k, m, n = self._layout(group)
            counts = [p.numel() // (m * n) for p in group["params"]]
            for key, share in shard.items():
                for p, t in zip(group["params"], _gather_rows(share, self.world_size)[:M].split(counts)):
                    state.setdefault(index[p], {})[key] = t.reshape(*p.shape[:-2], *t.shape[-2:]).clone()
        return {"state": state, "param_groups": _groups_for_checkpoint(self)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Takes this rank's share of a state saved by state_dict() at any world size."""
        _load_groups(self, state_dict["param_groups"])
        index = _param_index(self)
        for group in self.param_groups:
            params = group["params"]
            self.state.pop(params[0], None)
            if index[params[0]] not in state_dict["state"]:
                continue
            M, k, m, n = self._layout(group)
            saved = [state_dict["state"][index[p]] for p in params]
            self.state[params[0]] = {
                key: _stack_matrices([s[key] for s in saved], self.world_size)[self.rank * k:(self.rank + 1) * k]
                .clone().to(params[0].device) for key in saved[0]}


class DistAdam(torch.optim.Optimizer):
    """Adam (bias-corrected, cautious weight decay ∝ lr²) with state and update sharded: a param is seen flat,
    zero-padded to a multiple of world_size, and rank r owns the contiguous slice [r·s, (r+1)·s).
    Communication: each param's gradient reduce-scatter starts from its post-accumulate-grad hook during
    backward, if grad_sync_enabled (groups with overlap=False, and grads whose hook found it off, start theirs
    in step()); step() waits for each, updates this rank's shard and starts the parameter all-gather, and
    waits for all gathers at its end. Every group sets its `lr`; an optional `lr_mul` (default 1) scales it.
    The update itself is adam_update_: one Triton kernel a param on CUDA."""

    def __init__(self, param_groups, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0, rank=0, world_size=1):
        defaults = dict(betas=betas, eps=eps, weight_decay=weight_decay, lr_mul=1.0, overlap=True, label=None)
        super().__init__(param_groups, defaults)
        _check_world(rank, world_size)
        for i, group in enumerate(self.param_groups):
            if "lr" not in group:
                raise ValueError(f"DistAdam {group['label'] or f'group {i}'}: param group must set lr")
        self.rank, self.world_size = rank, world_size
        self.grad_sync_enabled = True  # the loop turns it off on all but the last micro-step of accumulation
        self._grads_in_flight = {}  # param -> (gradient shard, pending work, the buffer it reads)
        for group in self.param_groups:
            if group["overlap"]:
                for p in group["params"]:
                    p.register_post_accumulate_grad_hook(self._grad_ready)

    def _grad_ready(self, p: torch.Tensor) -> None:
        if self.grad_sync_enabled and self.world_size > 1:
            self._grads_in_flight[p] = self._reduce_scatter_grad(p)  # a later backward's launch replaces it

    def _reduce_scatter_grad(self, p: torch.Tensor) -> tuple:
        """-> (this rank's flat gradient shard, its pending work or None, the padded buffer it reads: the
        collective reads it asynchronously, so it is held until the work is waited on)."""
        if self.world_size == 1:
            return p.grad.reshape(-1), None, None
        grad = _pad_flat(p.grad, self.world_size)
        shard = grad.new_empty(grad.numel() // self.world_size)
        return shard, dist.reduce_scatter_tensor(shard, grad, op=dist.ReduceOp.SUM, async_op=True), grad

    def _update_shard(self, p: torch.Tensor, grad: torch.Tensor, work, hyper: torch.Tensor) -> tuple:
        """grad: this rank's flat shard; hyper: adam_update_'s -> (p flat and padded, this rank's shard updated;
        the pending all-gather that fills in the other shards, or None)."""
        if work is not None:
            work.wait()
            grad.div_(self.world_size)  # SUM then scale: gloo has no AVG
        size = grad.numel()
        lo = self.rank * size
        weights = p.reshape(-1)[lo:lo + size].float()  # a view of p where p is fp32 and holds the whole shard
        if weights.numel() < size:  # the last shards may lie in the padding
            weights = F.pad(weights, (0, size - weights.numel()))
        state = self.state[p]
        if "exp_avg" not in state:
            state.update(exp_avg=torch.zeros_like(weights), exp_avg_sq=torch.zeros_like(weights))
        adam_update_(weights, grad.float(), state["exp_avg"], state["exp_avg_sq"], hyper)
        weights = weights.to(p.dtype)
        if self.world_size == 1:
            return weights, None
        full = weights.new_empty(size * self.world_size)
        return full, dist.all_gather_into_tensor(full, weights, async_op=True)

    def _hyperparameters(self, todo) -> torch.Tensor:
        """Counts a step for each param in todo -> adam_update_'s hyper, one row per param, on their device:
        built on the host, then one copy from pinned memory that does not wait for the GPU."""
        rows = []
        for group, p in todo:
            state = self.state[p]
            state["step"] = state.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            rows.append([group["lr"] * group["lr_mul"], beta1, beta2, group["eps"], group["weight_decay"],
                         1 - beta1 ** state["step"], 1 - beta2 ** state["step"]])
        hypers = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 7)
        device = todo[0][1].device if todo else hypers.device
        return hypers.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else hypers

    @torch.no_grad()
    def step(self):
        todo = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        for _, p in todo:
            if p not in self._grads_in_flight:
                self._grads_in_flight[p] = self._reduce_scatter_grad(p)
        in_flight = [self._grads_in_flight.pop(p) for _, p in todo]  # held until step() returns
        hypers = self._hyperparameters(todo)
        gathers = [self._update_shard(p, share, work, hyper)
                   for (_, p), (share, work, _), hyper in zip(todo, in_flight, hypers)]
        for (_, p), (full, work) in zip(todo, gathers):
            if work is not None:
                work.wait()
            if full.data_ptr() != p.data_ptr():  # on one rank the update may have been made in p itself
                p.copy_(full[:p.numel()].view_as(p))

    def state_dict(self) -> dict:
        """The full, unsharded state, the same for any world size. Collective: every rank must call it."""
        index, state = _param_index(self), {}
        for group in self.param_groups:
            for p in group["params"]:
                if p not in self.state:
                    continue
                s = self.state[p]
                state[index[p]] = {"step": s["step"], **{
                    k: _gather_rows(s[k], self.world_size)[:p.numel()].view_as(p).clone()
                    for k in ("exp_avg", "exp_avg_sq")}}
        return {"state": state, "param_groups": _groups_for_checkpoint(self)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Takes this rank's shard of a state saved by state_dict() at any world size."""
        _load_groups(self, state_dict["param_groups"])
        for p, i in _param_index(self).items():
            self.state.pop(p, None)
            if i not in state_dict["state"]:
                continue
            saved = state_dict["state"][i]
            size = -(-p.numel() // self.world_size)
            self.state[p] = {"step": saved["step"], **{
                k: _pad_flat(saved[k].float(), self.world_size)[self.rank * size:(self.rank + 1) * size]
                .clone().to(p.device) for k in ("exp_avg", "exp_avg_sq")}}

# ----- Model -----


BOS_ID = 50256  # <|endoftext|> in the GPT-2 encoding; every document starts with it


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


ROPES = ("plain", "half_yarn")
# Half-truncated RoPE (upstream's record 2025-09-10_Yarn, up:1006-1009): head_dim/4 frequencies evenly spaced in log
# from 1 down to 1/1024 radians per token on the first half of the pairs; the other half is stationary (frequency 0)
HALF_ROPE_SLOWEST = 1 / 1024
# YaRN's ramp (Peng et al. 2023, arXiv:2309.00071; its α = 1, β = 32, kept by upstream, up:1037): a pair that turns
# fewer than α times over the old window is interpolated fully, one that turns more than β times is kept as it is
YARN_ALPHA, YARN_BETA = 1, 32
# At each new window the attention scale grows by 0.2·ln(new/old) + 1: YaRN's temperature 0.1·ln(s) + 1 with 0.1
# raised to 0.2 by upstream's tests (R/2025-09-10_Yarn, up:1055)
YARN_SCALE_GROWTH = 0.2


def rotary_frequencies(head_dim: int, base: float, rope: str) -> torch.Tensor:
    """(head_dim/2,) fp32 radians per position of each rotated pair (x[i], x[i + head_dim/2]) before any YaRN, on the
    CPU even inside build_model's device context: Rotary keeps them to compare with each step's."""
    if rope == "plain":
        return base ** (-torch.arange(0, head_dim // 2, dtype=torch.float32, device="cpu") / (head_dim // 2))
    turning = HALF_ROPE_SLOWEST ** torch.linspace(0, 1, head_dim // 4, dtype=torch.float32, device="cpu")
    return torch.cat([turning, turning.new_zeros(head_dim // 2 - head_dim // 4)])


def yarn_stretch(frequencies: torch.Tensor, old_window: int, new_window: int) -> torch.Tensor:
    """YaRN's NTK-by-parts interpolation of the frequencies from a window of old_window tokens to new_window."""
    turns = old_window * frequencies / (2 * math.pi)
    kept = ((turns - YARN_ALPHA) / (YARN_BETA - YARN_ALPHA)).clamp(0, 1)
    ratio = old_window / new_window
    return frequencies * (ratio + kept * (1 - ratio))


class Rotary(nn.Module):
    """Rotary position embedding; the head dimension is split into two halves that rotate as (re, im) pairs. With
    `yarn`, the tables are rewritten in place when the frequencies are stretched, and `attn_scale_gain` (0-dim) is the
    attention scale's growth, which attention multiplies into q: a new Python float would recompile the graph."""

    def __init__(self, frequencies: torch.Tensor, max_seq_len: int, yarn: bool = False):
        super().__init__()
        self.register_buffer("cos", torch.empty(1, max_seq_len, 1, len(frequencies)), persistent=False)
        self.register_buffer("sin", torch.empty(1, max_seq_len, 1, len(frequencies)), persistent=False)
        self.register_buffer("attn_scale_gain", torch.ones(()) if yarn else None, persistent=False)
        self.state = None  # the (frequencies, gain) the buffers hold, so an unchanged schedule rewrites nothing
        self.set_yarn(frequencies, 1.0)

    @torch.no_grad()
    def set_yarn(self, frequencies: torch.Tensor, attn_scale_gain: float) -> None:
        """frequencies: (head_dim/2,) fp32 on the CPU."""
        if self.state is not None and torch.equal(self.state[0], frequencies) and self.state[1] == attn_scale_gain:
            return
        assert self.attn_scale_gain is not None or attn_scale_gain == 1.0, "plain RoPE keeps the attention scale"
        positions = torch.arange(self.cos.size(1), dtype=torch.float32, device=self.cos.device)
        theta = torch.outer(positions, frequencies.to(self.cos.device))  # (T, head_dim / 2)
        self.cos.copy_(theta.cos()[None, :, None, :])
        self.sin.copy_(theta.sin()[None, :, None, :])
        if self.attn_scale_gain is not None:
            self.attn_scale_gain.fill_(attn_scale_gain)
        self.state = (frequencies.clone(), attn_scale_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, H, head_dim)
        T = x.size(1)
        cos, sin = self.cos[:, :T].type_as(x), self.sin[:, :T].type_as(x)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def partial_key_offset(k: torch.Tensor) -> torch.Tensor:  # k: (B, T, H, head_dim), after half-truncated RoPE
    """Key t keeps token t's turning dims and takes token t-1's stationary ones (frequency 0: the second quarter of
    each rotated half), so a query can find the token after an earlier copy of itself in one layer, induction
    (upstream's record 2025-12-14_PartialKeyOffset). Key 0 keeps its own; a document's first key takes the previous
    document's last token, as upstream's does."""
    turning, stationary = k.unflatten(-1, (2, 2, -1)).unbind(-2)  # each (B, T, H, 2 halves, head_dim/4)
    stationary = torch.cat([stationary[:, :1], stationary[:, :-1]], dim=1)
    return torch.stack([turning, stationary], dim=-2).flatten(-3)


def document_causal_window(docs: torch.Tensor, window: torch.Tensor):
    """Mask function: a query sees keys of its own document, not in its future, at most `window` tokens back.
    docs: (T,) document index of each token; window: 0-dim tensor, so a new size does not recompile."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window) & (docs[q_idx] == docs[kv_idx])

    return mask_mod


@functools.cache
def window_tensor(tokens: int, device: torch.device) -> torch.Tensor:
    """A window size as a 0-dim tensor on the device, made once per size: a new Python int would recompile."""
    return torch.tensor(tokens, dtype=torch.int32, device=device)


def block_mask(docs: torch.Tensor, window: torch.Tensor, mask_mod, block: int = 128) -> BlockMask:
    """FlexAttention's BlockMask for document_causal_window, decided per (query block, key block) from the
    first and last document of each block, not by evaluating mask_mod on all T² pairs. T % block == 0."""
    first, last = docs.view(-1, block)[:, 0], docs.view(-1, block)[:, -1]  # (n,) documents are nondecreasing
    n = first.numel()
    q, k = torch.arange(n, device=docs.device)[:, None], torch.arange(n, device=docs.device)[None, :]
    reach = window // block  # window in blocks: a multiple of 128 tokens, so one partial block at its edge
    any_visible = (k <= q) & (q - k <= reach) & (last[None, :] >= first[:, None])
    all_visible = (k < q) & (q - k < reach) & (last[:, None] == first[None, :])  # one document covers both

    def as_kv_blocks(blocks):  # (n, n) bool -> counts (1, 1, n) and indices (1, 1, n, n), selected first
        counts = blocks.sum(-1, dtype=torch.int32)
        order = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return counts[None, None], order[None, None]

    return BlockMask.from_kv_blocks(*as_kv_blocks(any_visible & ~all_visible), *as_kv_blocks(all_visible),
                                    BLOCK_SIZE=block, mask_mod=mask_mod)


def attention_mask(inputs: torch.Tensor, window: torch.Tensor, paired: bool = False):
    """inputs: (T,) tokens, documents start at BOS_ID. FlexAttention's BlockMask on CUDA, built inside the
    compiled forward; on CPU, where flex has no backward, the dense (1, 1, T, T) mask of the same function.
    paired: the mask of paired-head attention's 2T positions, 2t and 2t + 1 both token t's (window in positions)."""
    docs = (inputs == BOS_ID).cumsum(0)
    if paired:
        docs = docs.repeat_interleave(2)
    T = docs.numel()
    mask_mod = document_causal_window(docs, window)
    if on_gpu(inputs):
        return block_mask(docs, window, mask_mod)
    return create_mask(mask_mod, None, None, T, T, device=inputs.device)


# FlexAttention's forward in tiles of 64 queries x 64 keys (4 warps, 3 stages): the fastest of inductor's own
# autotuning at the record shape on H100, ~10% over torch's default 128 x 64; the backward's default won there.
FLEX_KERNEL_OPTIONS = {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3}


def attend(q, k, v, mask, scale: float) -> torch.Tensor:  # q, k, v: (B, H, T, head_dim)
    if isinstance(mask, BlockMask):
        return flex_attention(q, k, v, block_mask=mask, scale=scale, kernel_options=FLEX_KERNEL_OPTIONS)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# Odd multipliers that spread a (previous, current) token pair over int32 before the modulo: the public speedrun's
# bigram hash embedding (its record of 2026-01-19), whose collisions are rare because token pairs are Zipfian.
BIGRAM_MULTIPLIERS = (36313, 27191)


def bigram_hash(inputs: torch.Tensor, buckets: int) -> torch.Tensor:
    """inputs: (T,) int32 tokens -> (T,) int64 row of each (previous, current) pair in [0, buckets - 1); position 0,
    whose previous token is not in view, gets the reserved row buckets - 1."""
    x = inputs.to(torch.int64)
    pairs = torch.bitwise_xor(BIGRAM_MULTIPLIERS[0] * x[1:], BIGRAM_MULTIPLIERS[1] * x[:-1]) % (buckets - 1)
    return torch.cat([x.new_full((1,), buckets - 1), pairs])


def bigram_sign_index(inputs: torch.Tensor, rows: int) -> torch.Tensor:
    """inputs: (T,) int32 tokens -> (T,) int64 row of the sign table for each (previous, current) pair: a second,
    plain hash, (previous XOR current) mod rows, independent of bigram_hash's; position 0 gets row 0."""
    x = inputs.to(torch.int64)
    return torch.cat([x.new_zeros(1), torch.bitwise_xor(x[1:], x[:-1]) % rows])


def bigram_sign_table(rows: int, dim: int) -> torch.Tensor:
    """(rows, dim) bf16 of ±1, the same on every rank and for every --seed (its own generator, seeded 0): pairs that
    share a bigram row mostly differ in signs, so a shared row's update for one pair is noise, not a bias, for the
    other (the public speedrun's sign trick, its PR #299, after the bigram record)."""
    signs = torch.randint(0, 2, (rows, dim), generator=torch.Generator().manual_seed(0), device="cpu")
    return (2 * signs - 1).to(torch.bfloat16)


class _RowsSummingGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, rows, grad_sum):
        ctx.save_for_backward(rows)
        ctx.grad_sum = grad_sum  # not saved: saving would check that no other backward has added to it since
        return F.embedding(rows, weight)

    @staticmethod
    def backward(ctx, grad):
        rows, = ctx.saved_tensors
        add_rows_(ctx.grad_sum, rows, grad)
        return None, None, None


class RowTable(nn.Embedding):
    """An embedding whose gradient is summed in place, in grad_sum (fp32, the weight's shape), by every backward:
    add_rows_ adds the looked-up rows' gradients, and autograd never sees one (weight.grad stays None). Autograd
    would write a dense gradient of the whole table at each backward and add it to .grad: for the record's bigram
    table (290M numbers) and six vocabulary tables (39M each), 2.1 GB zeroed and 6.3 GB added a micro-step.
    GPT.hand_over_row_grads makes the sums .grad before Adam steps; GPT.zero_grad zeroes them."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__(num_embeddings, embedding_dim)
        self.register_buffer("grad_sum", torch.zeros_like(self.weight), persistent=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return _RowsSummingGrad.apply(self.weight, rows, self.grad_sum)


class CausalSelfAttention(nn.Module):
    """Multi-head attention with QK-norm, rotary positions, per-head output gates and value embeddings. paired:
    head h of token t attends as position 2t + h // (H/2) of a sequence twice as long, in slot h mod (H/2), so the
    two heads of a slot see each other's keys and values (upstream's paired-head attention, its record of
    2026-01-07); the caller passes that sequence's mask (attention_mask(..., paired=True))."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, gate_dim: int, rotary: Rotary, scale: float,
                 value_gate: bool = False, xsa: bool = False, key_offset: bool = False, paired: bool = False,
                 zero_out: bool = True):
        super().__init__()
        assert num_heads * head_dim == dim, "q, k, v and the output projection share one (4, dim, dim) bank"
        self.num_heads, self.head_dim, self.gate_dim, self.scale = num_heads, head_dim, gate_dim, scale
        self.rotary, self.key_offset, self.paired = rotary, key_offset, paired
        bound = 3**0.5 * 0.5 * dim**-0.5
        qkvo = torch.empty(4, dim, dim).uniform_(-bound, bound)
        if zero_out:  # output projection starts at zero: each block's attention begins as the identity
            qkvo[3].zero_()
        self.qkvo = nn.Parameter(qkvo)  # (4, out, in): q, k, v, o
        self.gate = nn.Parameter(torch.zeros(num_heads, gate_dim))  # per-head output gate, sigmoid(0) = 0.5
        if value_gate:  # v = a·v + 2σ(w·x[:gate_dim])·value_embedding per head: starts at 1, lies in (0, 2)
            self.value_mix = nn.Parameter(torch.tensor([0.5]))
            self.value_gate = nn.Parameter(torch.zeros(num_heads, gate_dim))
        else:
            self.value_mix = nn.Parameter(torch.tensor([0.5, 0.5]))  # v = a·v + b·value_embedding
            self.value_gate = None
        self.xsa_alpha = nn.Parameter(torch.zeros(num_heads)) if xsa else None  # tanh(0) = 0: plain attention at init

    def forward(self, x: torch.Tensor, value_embed, mask) -> torch.Tensor:  # x: (B, T, D)
        B, T, D = x.shape
        H, Dh = self.num_heads, self.head_dim
        w = self.qkvo.type_as(x)
        qk, v = F.linear(x, w[:3].flatten(0, 1)).view(B, T, 3 * H, Dh).split(2 * H, dim=-2)
        qk = norm(qk)
        if self.paired:  # (B, T, [q heads, k heads], Dh) -> (B, 2T, [q slots, k slots], Dh): row 2t + h // (H/2)
            qk = qk.view(B, T, 2, 2, H // 2, Dh).transpose(2, 3).reshape(B, 2 * T, H, Dh)
        q, k = self.rotary(qk).chunk(2, dim=-2)  # q and k as one tensor: one reduction loop, not two
        if self.key_offset:
            k = partial_key_offset(k)
        if self.rotary.attn_scale_gain is not None:  # attend's scale stays a constant: flex compiles it in
            q = q * self.rotary.attn_scale_gain
        if value_embed is not None:
            v = self.value_mix[0] * v + self.value_embed_weight(x) * value_embed.view_as(v)
        va = v.reshape(B, 2 * T, H // 2, Dh) if self.paired else v  # the same rows as q and k: heads are contiguous
        y = attend(q.transpose(1, 2), k.transpose(1, 2), va.transpose(1, 2), mask, self.scale).transpose(1, 2)
        y = y.reshape(B, T, H, Dh)
        if self.xsa_alpha is not None:
            y = self.exclude_self(y, v)
        gate = torch.sigmoid(F.linear(x[..., : self.gate_dim], self.gate.type_as(x)))  # (B, T, H)
        y = (y * gate[..., None]).reshape(B, T, D)
        return F.linear(y, w[3])

    def value_embed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) -> b, or with a value gate 2σ(w·x[:gate_dim]) per token and head, (B, T, H, 1)."""
        if self.value_gate is None:
            return self.value_mix[1]
        return 2 * torch.sigmoid(F.linear(x[..., :self.gate_dim], self.value_gate.type_as(x)))[..., None]

    def exclude_self(self, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Exclusive self attention (Zhai 2026, arXiv:2603.09078) at a learned strength, as upstream's record of
        2026-05-07: y, v: (B, T, H, head_dim) -> y less tanh(α_h) of its component along the token's own value."""
        v_hat = F.normalize(v, dim=-1, eps=1e-4)  # upstream's eps: a zero value has no direction to remove
        strength = torch.tanh(self.xsa_alpha).type_as(y)[:, None]  # (H, 1)
        return y - strength * (y * v_hat).sum(-1, keepdim=True) * v_hat


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, fused: bool, fp8: bool = False):
        super().__init__()
        bound = 3**0.5 * 0.5 * dim**-0.5
        self.fc = nn.Parameter(torch.empty(hidden, dim).uniform_(-bound, bound))  # (out, in)
        self.proj = nn.Parameter(torch.zeros(dim, hidden))  # (out, in), zero: the block starts as the identity
        self.fused, self.fp8 = fused, fp8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D), rms-normed when fp8, which runs only while autograd records (validation: bf16)."""
        if self.fp8 and torch.is_grad_enabled():
            return relu_sq_mlp_fp8(x.flatten(0, -2), self.fc, self.proj).view_as(x)
        return relu_sq_mlp(x.flatten(0, -2), self.fc.type_as(x), self.proj.type_as(x), self.fused).view_as(x)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, gate_dim: int, rotary, scale,
                 fused_mlp: bool, value_gate: bool = False, attention: bool = True, sublayer_residual: bool = False,
                 xsa: bool = False, key_offset: bool = False, paired: bool = False, zero_attn_out: bool = True,
                 fp8_mlp: bool = False):
        super().__init__()
        self.attn = (CausalSelfAttention(dim, num_heads, head_dim, gate_dim, rotary, scale, value_gate, xsa,
                                         key_offset, paired, zero_attn_out) if attention else None)
        self.mlp = MLP(dim, mlp_hidden, fused_mlp, fp8_mlp)
        # x = a·x + b·x0 (x0: the token embedding); with sublayer_residual also x = c·x before the MLP, a and c at
        # √1.1 so a block scales the stream by 1.1, as upstream's per-sublayer residual lambdas (2026 train_gpt.py)
        # split its 2025-11-18 record's 1.1 on a
        self.residual_mix = nn.Parameter(torch.tensor([1.1**0.5, 0.0, 1.1**0.5] if sublayer_residual else [1.0, 0.0]))
        self.sublayer_residual = sublayer_residual

    def forward(self, x, x0, value_embed, mask, attn_source=None):
        """attn_source: what the attention reads, normed, in place of the block's own mixed input (--attn_source)."""
        x = self.residual_mix[0] * x + self.residual_mix[1] * x0
        if self.attn is not None:
            x = x + self.attn(norm(x if attn_source is None else attn_source), value_embed, mask)
        if self.sublayer_residual:
            x = self.residual_mix[2] * x
        return x + self.mlp(norm(x))


# Fixed scales of the FP8 LM head, upstream's since its record of 2025-12-19 ("retune fp8 scales"; the first FP8 head,
# 2025-01-13, had 1/2, 1/32 and 2^-29): a tensor is divided by its scale before the cast to FP8, so the scale maps
# the largest value expected onto 448, the top of float8_e4m3fn. The head's input is rms-normed, so no entry
# exceeds sqrt(768) ≈ 28: 100 leaves room. Head weights start at N(0, 0.005) and stay well under 1.6.
FP8_HEAD_X_SCALE = 100 / 448
FP8_HEAD_W_SCALE = 1.6 / 448
# The logits' gradient of one token's loss is at most scale / width of the logit cap (11.5 / 15 ≈ 0.77), which
# upstream maps to 448 in float8_e5m2 (whose top is 57344: 2^7 of headroom, and 2^22 down to its smallest normal).
# Upstream sums the loss over tokens; ours is the mean over a micro-step's T tokens, divided by the micro-steps,
# so GPT divides this per-token scale by both, as upstream divides its own by the accumulation steps.
FP8_HEAD_GRAD_SCALE = 0.75 / 448


class GPT(nn.Module):
    """GPT with sigmoid-gated skips: src:dst pairs (--skips; the record's is 3:6), or a U-net where the first half
    of the blocks feed the mirrored second half; blocks listed in --no_attention_layers have an MLP only. The LM head
    is stored (D, V), the transpose of the (V, D) embedding; while `tied`, the two hold the same weights.
    micro_steps: gradient-accumulation steps per optimizer step, which scale the gradient the FP8 head quantizes."""

    def __init__(self, hp: "Hyperparameters", micro_steps: int = 1):
        super().__init__()
        V, D, L = hp.vocab_size, hp.model_dim, hp.num_layers
        self.window_pattern, self.logit_cap = hp.window_pattern, LogitCap.parse(hp.logit_cap)
        self.embed = RowTable(V, D)
        self.embed.weight.data.normal_(0.0, hp.embed_std)
        self.value_embed_of_block = hp.value_embed_of_block  # tied across the U, or one per listed block
        num_ve = len({j for j in self.value_embed_of_block if j is not None})
        self.value_embeds = nn.ModuleList(RowTable(V, D) for _ in range(num_ve))
        for ve in self.value_embeds:
            ve.weight.data.normal_(0.0, hp.value_embed_std)
        self.paired_layers = hp.paired_head_layer_list  # their attention runs over 2T positions
        self.rotary = Rotary(rotary_frequencies(hp.head_dim, hp.rope_base, hp.rope),
                             hp.max_seq_len * (2 if self.paired_layers else 1),
                             yarn=hp.rope == "half_yarn")
        self.blocks = nn.ModuleList(
            Block(D, hp.num_heads, hp.head_dim, hp.mlp_mult * D, hp.attn_gate_dim, self.rotary, hp.attn_scale,
                  hp.fused_mlp, value_gate=hp.value_embed_gates and j is not None,
                  attention=i not in hp.no_attention_layer_list, sublayer_residual=hp.sublayer_residual,
                  xsa=i in hp.xsa_layer_list, key_offset=hp.key_offset and hp.window_pattern[i] == "L",
                  paired=i in self.paired_layers, zero_attn_out=hp.zero_attn_out, fp8_mlp=hp.fp8_mlp)
            for i, j in enumerate(self.value_embed_of_block))
        self.skip_pairs = hp.skip_pairs  # (src, dst): gate k adds σ(skip_gates[k])·(src's output) to dst's input
        self.skip_gates = nn.Parameter(torch.full((len(self.skip_pairs),), hp.skip_gate_init))
        self.smear = hp.smear
        if self.smear:  # starts off: a zero λ; the gate reads the first attn_gate_dim channels of the embedding
            self.smear_gate = nn.Parameter(torch.zeros(1, hp.attn_gate_dim))
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.bigram_embed = RowTable(hp.bigram_buckets, D) if hp.bigram_buckets else None
        if self.bigram_embed is not None:  # starts silent: zero rows, each block's input gets 0.1 of them
            self.bigram_embed.weight.data.zero_()
            self.bigram_lambdas = nn.Parameter(torch.full((L,), 0.1))
        if hp.bigram_signs:  # a constant of --bigram_signs and D: rebuilt, not saved
            self.register_buffer("bigram_signs", bigram_sign_table(hp.bigram_signs, D).to(self.embed.weight.device),
                                 persistent=False)
        else:
            self.bigram_signs = None
        self.attn_source = hp.attn_source  # blocks after it attend over its output
        self.backout_layer = hp.backout_layer  # the head reads x - λ·(this block's output); λ from 0.5
        if self.backout_layer >= 0:
            self.backout_lambda = nn.Parameter(torch.full((1,), 0.5))
        self.lm_head = nn.Parameter(self.embed.weight.data.T.contiguous())  # (D, V)
        self.tied = True
        self.fp8_head, self.micro_steps = hp.fp8_head, micro_steps

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, windows: dict,
                mtp_weights: torch.Tensor | None = None) -> torch.Tensor:
        """inputs: (T,) int32, targets: (T,) int64, windows: kind ('S'/'L') -> window_tensor, mtp_weights: (K,) fp32
        or None. Returns the mean next-token loss, or with mtp_weights the mean over t of Σ_k w_k·CE(logits_t,
        targets[t + k]): multi-token prediction from the one head."""
        kinds = {(kind, i in self.paired_layers) for i, kind in enumerate(self.window_pattern)}
        masks = {(kind, paired): attention_mask(inputs, windows[kind], paired) for kind, paired in kinds}
        e = self.embed(inputs).bfloat16()  # (T, D)
        if self.smear:  # each token's embedding takes a gated share of the previous token's
            gate = torch.sigmoid(F.linear(e[1:, :self.smear_gate.size(1)], self.smear_gate.type_as(e)))  # (T-1, 1)
            e = torch.cat([e[:1], e[1:] + self.smear_lambda.type_as(e) * gate * e[:-1]])  # λ (1,) promotes to fp32
        x = x0 = norm(e)[None]  # (1, T, D)
        ves = [ve(inputs).bfloat16()[None] for ve in self.value_embeds]
        if self.bigram_embed is not None:
            bigrams = self.bigram_embed(bigram_hash(inputs, self.bigram_embed.num_embeddings)).bfloat16()[None]
            if self.bigram_signs is not None:
                bigrams = bigrams * self.bigram_signs[bigram_sign_index(inputs, self.bigram_signs.size(0))]
        outputs = {}  # src -> its output
        for i, block in enumerate(self.blocks):
            for k, (src, dst) in enumerate(self.skip_pairs):
                if dst == i:
                    x = x + torch.sigmoid(self.skip_gates[k]) * outputs[src]
            if self.bigram_embed is not None:
                x = x + self.bigram_lambdas[i] * bigrams
            j = self.value_embed_of_block[i]
            mask = masks[self.window_pattern[i], i in self.paired_layers]
            x = block(x, x0, ves[j] if j is not None else None, mask, source if 0 <= self.attn_source < i else None)
            if any(src == i for src, _ in self.skip_pairs):
                outputs[i] = x
            if i == self.attn_source:
                source = x
            if i == self.backout_layer:
                backout = x
        if self.backout_layer >= 0:  # upstream's backout: take back part of what the early blocks wrote
            x = x - self.backout_lambda.type_as(x) * backout
        x = norm(x[0])  # (T, D)
        if self.fp8_head and torch.is_grad_enabled():  # under no_grad, validation, the bf16 head: exact logits
            grad_scale = FP8_HEAD_GRAD_SCALE / (x.size(0) * self.micro_steps)
            return fp8_head_cross_entropy(x, self.lm_head, targets, self.logit_cap, mtp_weights, FP8_HEAD_X_SCALE,
                                          FP8_HEAD_W_SCALE, grad_scale)
        if on_gpu(x):
            logits = x @ self.lm_head.bfloat16()  # (T, V)
        else:  # the CPU multiplies in fp32: one without bf16 units (AVX2) took 287 ms for a tiny-preset micro-step's
            logits = x.float() @ self.lm_head  # bf16 head against 15 ms, most of its step; the loss reads fp32 anyway
        return softcap_cross_entropy(logits, targets, self.logit_cap, mtp_weights)

    def row_tables(self) -> list[RowTable]:
        return [self.embed, *self.value_embeds] + ([self.bigram_embed] if self.bigram_embed is not None else [])

    def hand_over_row_grads(self) -> None:
        """Before Adam steps: each row table's summed gradient becomes its .grad, except the embedding's while tied,
        which belongs to the LM head: it is added to the head's, transposed."""
        for table in self.row_tables():
            if table is self.embed and self.tied:
                transpose_add(table.grad_sum, self.lm_head.grad)
            else:
                table.weight.grad = table.grad_sum

    def zero_grad(self, set_to_none: bool = True) -> None:
        """nn.Module's, and the row tables' summed gradients zeroed."""
        super().zero_grad(set_to_none)
        for table in self.row_tables():
            table.grad_sum.zero_()

    @torch.no_grad()
    def tie_weights(self) -> None:
        if self.tied:
            transpose_copy(self.lm_head, self.embed.weight)



# ----- Data -----

SHARD_MAGIC = 20240520  # the FineWeb shard format's header: magic, version, token count
SHARD_VERSION = 1
HEADER_INTS = 256  # little-endian int32: magic, version, token count, then zeros; uint16 tokens follow
GET_DATA = ("`python data/cached_fineweb10B.py 9` downloads FineWeb; "
            "`python data/tokenize_text.py` turns local text into shards")


def find_shards(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no token shards match {pattern!r}: {GET_DATA}")
    return files


def shard_length(path) -> int:
    """-> number of tokens in one shard, after checking its header and size."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: token shard is missing: {GET_DATA}")
    size = os.path.getsize(path)
    if size < HEADER_INTS * 4:
        raise ValueError(f"{path}: truncated: expected a {HEADER_INTS * 4}-byte header, found {size} bytes")
    with open(path, "rb") as f:
        header = torch.frombuffer(bytearray(f.read(HEADER_INTS * 4)), dtype=torch.int32)
        magic, version, n_tokens = header[:3].tolist()
        if magic != SHARD_MAGIC:
            raise ValueError(f"{path}: bad magic: expected {SHARD_MAGIC}, found {magic}; not a token shard")
        if version != SHARD_VERSION:
            raise ValueError(f"{path}: wrong version: expected {SHARD_VERSION}, found {version}")
        expected = HEADER_INTS * 4 + 2 * n_tokens
        if size != expected:
            raise ValueError(f"{path}: {'truncated' if size < expected else 'too long'}: header says {n_tokens} "
                             f"tokens, so expected {expected} bytes, found {size}")
    return n_tokens


def read_shard(path, vocab_size: int | None = None) -> torch.Tensor:
    """-> uint16 tokens (CPU) of one shard, after checking its header and size (and that every token id is below
    vocab_size, if given)."""
    data = bytearray(2 * shard_length(path))
    with open(path, "rb") as f:
        f.seek(HEADER_INTS * 4)
        f.readinto(data)
    tokens = torch.frombuffer(data, dtype=torch.uint16) if data else torch.empty(0, dtype=torch.uint16)
    if vocab_size is not None and len(tokens):
        largest = int(tokens.numpy().max())  # numpy: torch has no max for uint16 on CPU
        if largest >= vocab_size:
            raise ValueError(f"{path}: holds token id {largest}, not below --vocab_size={vocab_size}")
    return tokens


def train_fingerprint(files: list[str]) -> str:
    """sha256 over each training shard's name, header and first MiB: which data a run trained on, at the cost of
    reading 1 MiB a shard."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + f.read(HEADER_INTS * 4 + 2**20))
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class TokenStream:
    """Position in the endless stream of all shards in sorted order (wrapping around). Never mutated, so a
    prefetch that turns out unwanted is dropped without a trace."""
    tokens: torch.Tensor  # int32: the not yet consumed tail of the loaded shards
    bos: torch.Tensor  # int64: positions of BOS_ID in tokens
    pos: int
    shards_loaded: int
    start: int  # stream position of tokens[0], counted from the first token of the first shard


class TrainLoader:
    """Every step cuts num_slices slices of seq_len (+1 for the targets) from one token stream, the same cut for
    any world size; rank r owns slices r*k .. r*k+k-1, k = num_slices // world_size (gradient accumulation;
    check_world_size has made sure world_size divides num_slices)."""

    def __init__(self, pattern: str, rank: int, world_size: int, num_slices: int = 8, align_to_bos: bool = True,
                 device=torch.device("cpu"), vocab_size: int | None = None):
        self.files = find_shards(pattern)
        self.vocab_size = vocab_size
        self.pattern, self.rank, self.num_slices, self.align_to_bos = pattern, rank, num_slices, align_to_bos
        self.slices_per_rank = num_slices // world_size
        self.device = torch.device(device)
        self.prefetch = on_gpu(self.device)  # overlap loading with compute; tests turn it on for CPU
        self.pending = None  # ((seq_len, doc_max), future of the next step's (slices, stream))
        self.worker = ThreadPoolExecutor(max_workers=1)
        self.load_state_dict({"position": 0})

    @property
    def epoch(self) -> int:
        """Completed passes over all shards: > 0 means training is repeating data."""
        return max(self.stream.shards_loaded - 1, 0) // len(self.files)

    def load_next_shard(self, s: TokenStream) -> TokenStream:
        shard = read_shard(self.files[s.shards_loaded % len(self.files)], self.vocab_size).to(torch.int32)
        tokens = torch.cat([s.tokens[s.pos:], shard])
        return TokenStream(tokens, (tokens == BOS_ID).nonzero().flatten(), 0, s.shards_loaded + 1, s.start + s.pos)

    def state_dict(self) -> dict:
        return {"position": self.stream.start + self.stream.pos}

    def load_state_dict(self, state: dict) -> None:
        """Resume at the saved stream position: the cut depends only on the tokens from there on."""
        if self.pending is not None:
            self.pending[1].result()
            self.pending = None
        lengths = [shard_length(path) for path in self.files]
        if not sum(lengths):
            raise ValueError(f"the shards matching {self.pattern!r} hold no tokens")
        offset, shards_loaded = state["position"], 0
        while offset >= lengths[shards_loaded % len(lengths)]:
            offset, shards_loaded = offset - lengths[shards_loaded % len(lengths)], shards_loaded + 1
        empty = TokenStream(torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.int64), 0, shards_loaded,
                            state["position"] - offset)
        self.stream = dataclasses.replace(self.load_next_shard(empty), pos=offset)

    @staticmethod
    def truncated_docs(s: TokenStream, i: int, n: int, doc_max: int) -> torch.Tensor | None:
        """-> positions in s.tokens of the first n tokens of the documents from the i-th BOS on, each document cut
        to its first doc_max tokens (the rest is dropped); None if the loaded tokens end first."""
        starts = s.bos[i:i + n + 1]  # n documents of at least one token fill n tokens
        lengths = starts.diff().clamp(max=doc_max)  # of the documents whose end is loaded
        last = int(torch.searchsorted(lengths.cumsum(0), n))
        if last == len(lengths):
            return None
        return torch.cat([torch.arange(a, a + k) for a, k in zip(starts[:last + 1].tolist(),
                                                                  lengths[:last + 1].tolist())])[:n]

    def cut_slice(self, s: TokenStream, seq_len: int, doc_max: int = 0) -> tuple[torch.Tensor, TokenStream]:
        """-> seq_len + 1 tokens (starting at a BOS with align_to_bos; with doc_max > 0, no more than doc_max tokens
        of any document), and the stream after them."""
        misses = 0
        while True:
            start = s.pos
            if self.align_to_bos:
                i = int(torch.searchsorted(s.bos, s.pos))
                if i == len(s.bos):  # the tokens before the next BOS are dropped, so the tail can go too
                    misses += 1
                    if misses > len(self.files) + 1:
                        raise ValueError(f"no BOS token ({BOS_ID}) in any shard matching {self.pattern!r}")
                    s = self.load_next_shard(dataclasses.replace(s, pos=len(s.tokens)))
                    continue
                start = int(s.bos[i])
            if doc_max:
                taken = self.truncated_docs(s, i, seq_len + 1, doc_max)
                if taken is not None:
                    return s.tokens[taken], dataclasses.replace(s, pos=int(taken[-1]))
            elif start + seq_len + 1 <= len(s.tokens):
                # The next slice starts at this slice's last target at the earliest.
                return s.tokens[start:start + seq_len + 1], dataclasses.replace(s, pos=start + seq_len)
            s = self.load_next_shard(dataclasses.replace(s, pos=start))

    def cut_step(self, s: TokenStream, seq_len: int, doc_max: int) -> tuple[torch.Tensor, TokenStream]:
        """-> this rank's slices (slices_per_rank, seq_len + 1) int32 on the host, pinned for CUDA; the new stream."""
        own = torch.empty(self.slices_per_rank, seq_len + 1, dtype=torch.int32, pin_memory=on_gpu(self.device))
        for i in range(self.num_slices):
            tokens, s = self.cut_slice(s, seq_len, doc_max)
            if i // self.slices_per_rank == self.rank:
                own[i % self.slices_per_rank] = tokens
        return own, s

    def next_batch(self, seq_len: int, doc_max: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """-> [(inputs int32 (seq_len,), targets int64 (seq_len,))] for this rank's slices of the next step, with
        every document cut to doc_max tokens if doc_max > 0."""
        if self.pending is not None and self.pending[0] == (seq_len, doc_max):
            own, self.stream = self.pending[1].result()
        else:
            if self.pending is not None:
                self.pending[1].result()  # cut from the stream before it, for another shape: discarded
            own, self.stream = self.cut_step(self.stream, seq_len, doc_max)
        self.pending = None
        if self.prefetch:
            self.pending = ((seq_len, doc_max), self.worker.submit(self.cut_step, self.stream, seq_len, doc_max))
        own = own.to(self.device, non_blocking=True)
        return [(row[:-1], row[1:].to(torch.int64)) for row in own]


def read_val_tokens(pattern: str, val_tokens: int, vocab_size: int | None = None) -> torch.Tensor:
    """-> the first val_tokens + 1 tokens of the validation shards (int32, CPU), checked once at the start."""
    files, shards = find_shards(pattern), []
    for path in files:
        if sum(map(len, shards)) > val_tokens:
            break
        shards.append(read_shard(path, vocab_size).to(torch.int32))
    tokens = torch.cat(shards)
    if len(tokens) < val_tokens + 1:
        raise ValueError(f"validation shards {files} hold {len(tokens)} tokens, fewer than "
                         f"--val_tokens={val_tokens} + 1 for the last target")
    return tokens[:val_tokens + 1]


def val_batches(tokens: torch.Tensor, val_seq_len: int, rank: int, world_size: int, device):
    """tokens: (N + 1,) from read_val_tokens -> iterator of (inputs int32, targets int64), each (val_seq_len,):
    sequences rank, rank + world_size, ... so all ranks together always see the same tokens (check_world_size has
    made sure the world size divides N // val_seq_len)."""
    n_seqs = (len(tokens) - 1) // val_seq_len
    seqs = (tokens[i * val_seq_len:(i + 1) * val_seq_len + 1].to(device, non_blocking=True)
            for i in range(rank, n_seqs, world_size))
    return ((seq[:-1], seq[1:].to(torch.int64)) for seq in seqs)


# ----- Hyperparameters -----


def int_list(text: str) -> list[int]:
    """A comma-separated flag's whole numbers ("": none); the flag's own check has vetted its format."""
    return [int(i) for i in text.split(",")] if text else []


@dataclasses.dataclass
class Hyperparameters:
    # data
    train_files: str = "data/fineweb10B/fineweb_train_*.bin"  # glob of training shards, read in sorted order
    val_files: str = "data/fineweb10B/fineweb_val_*.bin"  # glob of validation shards
    val_tokens: int = 10_485_760  # the first 10,485,760 validation tokens: the public speedrun's yardstick
    val_seq_len: int = 65_536  # validation sequence length (a multiple of 128)
    align_to_bos: bool = True  # training slices start at a document's first token
    # batch: a step is `slices_per_step` slices of seq_len tokens, one per rank of an 8-GPU record run
    slices_per_step: int = 8  # slices per step; the world size must divide it (the rest is accumulated)
    seq_lens: str = "16384,32768,49152"  # batch-size schedule: one seq_len per equal stage of training
    # upstream's record of 2026-02-10: "896,2048,2048" (a training document's tail beyond the cap is dropped); off: on
    # the proxy's long-document text a 2048 cap cost +0.15 (records/_runs/2026-12-02_recipe)
    doc_max_tokens: str = ""  # per --seq_lens stage: training documents cut to this many tokens ("": whole)
    # Upstream's 1270 + 15 steps, plus 5% for what we lack of its recipe by its own figures (3.7 s of its 74 s: MUDD
    # 2.8, of which we have backout; document truncation and extension steps ~0.9)
    num_iterations: int = 1350  # optimizer steps (353.9M tokens; 1750 before 2026-12-02, 1450 until session 8)
    # model
    vocab_size: int = 50304  # 50257 padded to a multiple of 128
    num_layers: int = 11  # transformer blocks (even with --skips=unet: its skips pair the halves)
    # Upstream's record of 2025-11-18 keeps one skip, 3 -> 6 in its later 11-layer numbering (4 -> 7 then, beside a
    # null layer 0), into a layer without attention (since 2025-09-21), gate init -1.5 (σ ≈ 0.18). Before 2026-12-02
    # ours was --num_layers=12 --skips=unet --skip_gate_init=0 --no_attention_layers= --sublayer_residual=false
    skips: str = "3:6"  # unet: block i's output into block L-1-i's input, i < L/2; or src:dst pairs, e.g. 3:6
    skip_gate_init: float = -1.5  # each skip adds σ(g)·output, g learned from this init
    no_attention_layers: str = "6"  # blocks with an MLP only, comma-separated, e.g. 6
    sublayer_residual: bool = True  # x = c·x before each MLP too, a and c learned from √1.1 (off: a from 1)
    model_dim: int = 768  # residual stream width
    num_heads: int = 6  # attention heads; num_heads * head_dim = model_dim
    head_dim: int = 128  # attention head width
    mlp_mult: int = 4  # MLP hidden width = mlp_mult * model_dim
    attn_gate_dim: int = 12  # residual channels that drive the per-head output gates
    num_value_embeds: int = 3  # value embeddings, each feeding one block of each half
    # Upstream's record of 2026-01-26 gives its 11 layers 0, 1, 8, 9, 10 five untied value embeddings, as ours.
    value_embed_layers: str = "0,1,8,9,10"  # blocks that each get their own value embedding ("": tied)
    value_embed_gates: bool = True  # v = a·v + 2σ(w·x[:attn_gate_dim])·value_embedding per head, w zero at init
    # Upstream's record of 2026-05-07 puts XSA on its layers 1, 3, 4, 7, 8, 10, all but its paired-head ones (0, 2, 5,
    # 9); our blocks number as its layers, 6 without attention. With the key offset, -0.13 on the proxy
    xsa_layers: str = "1,3,4,7,8,10"  # blocks whose attention drops tanh(α_h) of its output along the token's own value
    paired_head_layers: str = "0,2,5,9"  # blocks whose heads h and h + H/2 attend as one sequence of 2T ("": none)
    attn_scale: float = 0.1  # QK-norm bounds q·k by head_dim, so the usual 1/sqrt(head_dim) is too soft (plain: 0.12)
    rope: str = "half_yarn"  # plain: rope_base^(-i/(head_dim/2)) on every pair; half_yarn: half the pairs still, YaRN
    rope_base: float = 10000.0  # rotary embedding base (--rope=plain)
    key_offset: bool = True  # in L blocks each key's stationary RoPE dims are the previous token's (half_yarn)
    logit_cap: str = "sigmoid:23,5,7.5"  # tanh:C bounds logits as C·tanh(l/C), sigmoid:A,B,C as A·σ((l+B)/C)
    embed_std: float = 0.005  # init std of the token embedding (and the tied LM head)
    value_embed_std: float = 0.01  # init std of the value embeddings
    bigram_buckets: int = 377_280  # rows of a hashed token-pair embedding added to each block's input (0: none)
    # These four, paired heads and Q/K per head pair (upstream's records of 2026-01 to 2026-04): on the proxy together
    # -0.045 (records/_runs/2026-12-02_recipe, session 8), off before
    bigram_signs: int = 8192  # rows of a fixed ±1 table: each pair's bigram row times the row (prev XOR cur) mod N
    backout_layer: int = 7  # the head reads the last block's output minus λ times this block's (-1: none)
    attn_source: int = 7  # the blocks after this one attend over its output, not their own input (-1: none)
    zero_attn_out: bool = False  # the attention's output projection starts at zero (false: uniform, as q, k, v)
    smear: bool = True  # each token's embedding takes a gated share of the previous token's
    window_pattern: str = "SSSLSSSSSSL"  # per block: S short or L long sliding window
    window_blocks: str = "1:3,3:7,5:11"  # short:long sliding windows per equal stage of training, in 128-token blocks
    val_window_blocks: str = "6:13"  # short:long windows of the validation after the last step ("": the last stage's)
    fused_mlp: bool = True  # relu² fused into the MLP's matmuls (Triton, CUDA only): -27 ms a step, -3.4 GiB on H100
    # LM head in FP8 while training (CUDA, capability >= 8.9): e4m3 inputs, e5m2 gradient; upstream's (2025-01-13),
    # level with bf16 on the proxy (session 4); -53 ms of a 721 ms record step on one H200 (session 9)
    fp8_head: bool = True
    # the MLP's two matmuls in FP8 while training (CUDA, capability >= 8.9; needs --fused_mlp): e4m3 operands, the
    # backward in bf16; upstream's (its README row 84, the first; its 2026-07-17 record, the second). On one H200
    # (session 11) the first saved 12 to 15 ms of a 672 ms record step, the second 10 ms more; the proxy found no
    # difference from bf16 (-0.0000 ± 0.0012) and none from the first alone (+0.0015 ± 0.0019), three seeds an arm
    fp8_mlp: bool = True
    # optimization
    muon_lr: float = 0.023  # NorMuon lr of the matrices (times MATRIX_PARAMS' lr_mul)
    muon_momentum_start: float = 0.85  # NorMuon momentum at step 0 ...
    muon_momentum: float = 0.95  # ... rising linearly to this
    momentum_warmup_frac: float = 300 / 1285  # ... over this fraction of training, and back down to the start
    momentum_cooldown_frac: float = 50 / 1285  # value over this last fraction
    muon_beta2: float = 0.9  # NorMuon's second-moment decay
    muon_weight_decay: float = 1.2  # cautious weight decay of the matrices, times lr·(lr·lr_mul)
    muon_qk_head_pairs: bool = True  # orthogonalize Q and K per pair of heads (2·head_dim rows), V and O whole
    adam_embed_lr: float = 0.008  # Adam lr of the token embedding
    adam_head_lr: float = 0.008  # Adam lr of the LM head
    adam_value_embed_lr: float = 0.6  # Adam lr of the value embeddings
    adam_scalar_lr: float = 0.04  # Adam lr of the gates and mixing scalars
    adam_bigram_lr: float = 0.6  # Adam lr of the bigram hash embedding
    adam_smear_gate_lr: float = 8e-5  # Adam lr of the smear gate's weights (upstream: 0.01x the head's)
    adam_value_gate_lr: float = 0.008  # Adam lr of the value-embedding gates' weights (upstream: the head's)
    adam_xsa_lr: float = 0.008  # Adam lr of the XSA strengths α (--xsa_layers; upstream: the head's)
    adam_weight_decay: float = 0.005  # cautious weight decay, times lr² and ADAM_PARAMS' multiplier
    adam_every: int = 2  # Adam steps every this many steps and on the last, on the gradients summed since
    untie_frac: float = 2 / 3  # the embedding and LM head share weights until this fraction of training
    lr_warmup_steps: int = 0  # linear lr warm-up steps
    lr_stage_muls: str = "1.0,1.52,1.73"  # lr multiplier per batch stage (one per --seq_lens entry): ~sqrt(batch)
    cooldown_frac: float = 0.6  # the last 60% of steps decay the learning rates linearly ...
    final_lr_frac: float = 0.15  # ... to this fraction
    # multi-token prediction, upstream's since its record of 2025-12-22 (one stage per batch stage); "1": none
    mtp_weights: str = "1:0.5:0.25..0,1:0.5..0,1"  # per equal stage: weights of targets 1, 2, ... ahead; a..b: a to b
    # run
    val_every: int = 125  # validate every this many steps (0: only at the end)
    warmup_steps: int = 10  # kernel warm-up steps per batch shape (at least adam_every), on dummy data, untimed
    seed: int = 0  # seed of the model's initialization
    run_id: str = ""  # the log is log_dir/<run_id>.txt (default: a random id)
    log_dir: str = "logs"  # where logs are written
    compile: bool = True  # torch.compile on CUDA (never on CPU)
    compile_cache: str = ".cache/compile"  # inductor's and Triton's caches, kept across runs ("": torch's defaults)
    save_checkpoint: bool = False  # write checkpoint_dir/<run_id>_final.pt at the end
    save_every: int = 0  # write checkpoint_dir/<run_id>_step<N>.pt every this many steps (0: never)
    checkpoint_dir: str = "checkpoints"  # where checkpoints are written
    resume: str = ""  # a checkpoint to continue from, with the hyperparameters it was written with
    bench_steps: int = 0  # > 0: time this many steps at the final batch size on synthetic data, print a table, exit
    bench_trace: str = ""  # with --bench_steps: profile ~3 steps (whole Adam cycles), print kernels, write it here

    def __post_init__(self):
        def require(ok: bool, flag: str, why: str):
            if not ok:
                raise ValueError(f"--{flag}={getattr(self, flag)}: {why}")

        for flag in ("val_tokens", "val_seq_len", "slices_per_step", "num_iterations", "vocab_size", "num_layers",
                     "model_dim", "num_heads", "head_dim", "mlp_mult", "attn_gate_dim", "attn_scale", "rope_base",
                     "embed_std", "value_embed_std", "muon_lr", "adam_embed_lr", "adam_head_lr",
                     "adam_value_embed_lr", "adam_scalar_lr", "adam_bigram_lr", "adam_smear_gate_lr",
                     "adam_value_gate_lr", "adam_xsa_lr", "adam_every"):
            require(getattr(self, flag) > 0, flag, "must be positive")
        for flag in ("num_value_embeds", "muon_weight_decay", "adam_weight_decay", "lr_warmup_steps", "val_every",
                     "warmup_steps", "save_every", "bench_steps"):
            require(getattr(self, flag) >= 0, flag, "must not be negative")
        for flag in ("muon_momentum_start", "muon_momentum", "muon_beta2"):
            require(0 <= getattr(self, flag) < 1, flag, "must be in [0, 1)")
        for flag in ("momentum_warmup_frac", "momentum_cooldown_frac", "untie_frac", "final_lr_frac"):
            require(0 <= getattr(self, flag) <= 1, flag, "must be in [0, 1]")
        require(0 < self.cooldown_frac <= 1, "cooldown_frac", "must be in (0, 1]")
        require(self.num_heads * self.head_dim == self.model_dim, "model_dim", "must equal num_heads * head_dim")
        try:
            LogitCap.parse(self.logit_cap)
        except ValueError as e:
            raise ValueError(f"--logit_cap={self.logit_cap}: {e}") from None
        require(self.model_dim % 8 == 0 or not self.fused_mlp, "model_dim",
                "must be a multiple of 8 with --fused_mlp: its kernel copies tiles by TMA, which needs 16-byte rows")
        require(not self.fp8_head or (self.model_dim % 16 == 0 and self.vocab_size % 16 == 0), "fp8_head",
                "needs --model_dim and --vocab_size multiples of 16, as torch._scaled_mm's FP8 matmuls do")
        require(not self.fp8_mlp or self.fused_mlp, "fp8_mlp", "needs --fused_mlp=true: it runs the fused MLP kernel")
        require(not self.fp8_mlp or self.model_dim % 16 == 0, "fp8_mlp",
                "needs --model_dim a multiple of 16: its kernel copies FP8 tiles by TMA, which needs 16-byte rows")
        require(self.skips != "unet" or self.num_layers % 2 == 0, "num_layers",
                "must be even with --skips=unet (U-net skips pair the halves)")
        require(re.fullmatch(r"unet|([0-9]+:[0-9]+(,[0-9]+:[0-9]+)*)?", self.skips) is not None
                and all(src < dst < self.num_layers for src, dst in self.skip_pairs)
                and len(set(self.skip_pairs)) == len(self.skip_pairs), "skips",
                "must be unet or distinct src:dst pairs of block indices, src < dst < --num_layers, comma-separated")
        require(self.attn_gate_dim <= self.model_dim, "attn_gate_dim", "must not exceed --model_dim")
        require(re.fullmatch(r"([0-9]+(,[0-9]+)*)?", self.value_embed_layers) is not None
                and all(i < self.num_layers for i in self.value_embed_layer_list)
                and len(set(self.value_embed_layer_list)) == len(self.value_embed_layer_list), "value_embed_layers",
                "must be distinct block indices below --num_layers, comma-separated")
        require(re.fullmatch(r"([0-9]+(,[0-9]+)*)?", self.no_attention_layers) is not None
                and all(i < self.num_layers for i in self.no_attention_layer_list), "no_attention_layers",
                "must be block indices below --num_layers, comma-separated")
        require(all(self.value_embed_of_block[i] is None for i in self.no_attention_layer_list), "no_attention_layers",
                "names a block that reads a value embedding (see --value_embed_layers, --num_value_embeds)")
        for flag in ("xsa_layers", "paired_head_layers"):
            text = getattr(self, flag)
            require(re.fullmatch(r"([0-9]+(,[0-9]+)*)?", text) is not None
                    and all(i < self.num_layers and i not in self.no_attention_layer_list for i in int_list(text))
                    and len(set(int_list(text))) == len(int_list(text)), flag,
                    "must be distinct indices of blocks with attention (see --no_attention_layers), comma-separated")
        require(not self.paired_head_layers or self.num_heads % 2 == 0, "paired_head_layers",
                f"needs an even --num_heads, got {self.num_heads}")
        require(not self.paired_head_layers or not set(self.paired_head_layer_list) & set(self.xsa_layer_list),
                "paired_head_layers", "and --xsa_layers must not share a block (upstream pairs none of its XSA blocks)")
        require(not self.key_offset or all(self.window_pattern[i] == "S" for i in self.paired_head_layer_list),
                "paired_head_layers", "must be S blocks of --window_pattern while --key_offset offsets the L blocks' "
                "keys by one token, which paired heads' 2T positions do not have")
        require(self.bigram_buckets == 0 or self.bigram_buckets >= 2, "bigram_buckets",
                "must be 0 (none) or at least 2 (one row is reserved for the first position)")
        require(self.bigram_signs >= 0 and (self.bigram_signs == 0 or self.bigram_buckets > 0), "bigram_signs",
                "must be 0 (none) or a positive row count, and needs --bigram_buckets")
        require(not self.muon_qk_head_pairs or self.num_heads % 2 == 0, "muon_qk_head_pairs",
                f"needs an even --num_heads, got {self.num_heads} (add --muon_qk_head_pairs=false)")
        for flag in ("attn_source", "backout_layer"):
            require(-1 <= getattr(self, flag) < self.num_layers - 1, flag,
                    f"must be -1 (none) or a block before the last, 0 to {self.num_layers - 2}")
        require(len(self.window_pattern) == self.num_layers and set(self.window_pattern) <= {"S", "L"},
                "window_pattern", "needs one letter S or L per layer")
        require(re.fullmatch(r"[0-9]+(,[0-9]+)*", self.seq_lens) is not None, "seq_lens",
                "must be comma-separated whole numbers")
        require(all(n > 0 and n % 128 == 0 for n in self.seq_len_stages), "seq_lens",
                "must be positive multiples of 128 (FlexAttention's block size)")
        require(self.val_seq_len % 128 == 0, "val_seq_len", "must be a multiple of 128 (FlexAttention's block size)")
        require(re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*(,[1-9][0-9]*:[1-9][0-9]*)*", self.window_blocks) is not None,
                "window_blocks", "must be short:long pairs of positive block counts, comma-separated")
        require(re.fullmatch(r"([1-9][0-9]*:[1-9][0-9]*)?", self.val_window_blocks) is not None, "val_window_blocks",
                "must be empty or one short:long pair of positive block counts")
        require(self.rope in ROPES, "rope", f"expected one of {', '.join(ROPES)}")
        require(self.rope == "plain" or self.head_dim % 4 == 0, "head_dim",
                "must be a multiple of 4 with --rope=half_yarn: a quarter of it are the turning pairs")
        require(not self.key_offset or self.rope == "half_yarn", "key_offset",
                "needs --rope=half_yarn: it offsets the keys' stationary (frequency 0) dims, which plain RoPE lacks "
                "(add --key_offset=false)")
        require(not self.key_offset or "L" in self.window_pattern, "key_offset",
                "needs an L block in --window_pattern: only long-window blocks offset their keys (add --key_offset=false)")
        require(re.fullmatch(r"([1-9][0-9]*(,[1-9][0-9]*)*)?", self.doc_max_tokens) is not None
                and len(self.doc_max_token_list) in (0, len(self.seq_len_stages)), "doc_max_tokens",
                "must be empty or one positive whole number per --seq_lens stage, comma-separated")
        require(self.align_to_bos or not self.doc_max_tokens, "doc_max_tokens",
                "needs --align_to_bos: only slices that start at a BOS are cut into documents")
        require(re.fullmatch(r"[0-9]*\.?[0-9]+(,[0-9]*\.?[0-9]+)*", self.lr_stage_muls) is not None
                and all(0 < m < math.inf for m in self.lr_stage_mul_list), "lr_stage_muls",
                "must be comma-separated positive numbers")
        require(len(self.lr_stage_mul_list) == len(self.seq_len_stages), "lr_stage_muls",
                "needs one multiplier per --seq_lens stage")
        weight = r"[0-9]*\.?[0-9]+(\.\.[0-9]*\.?[0-9]+)?"
        require(re.fullmatch(rf"{weight}(:{weight})*(,{weight}(:{weight})*)*", self.mtp_weights) is not None,
                "mtp_weights", "must be comma-separated stages of ':'-separated non-negative weights, each w or a..b")
        require(self.val_tokens % self.val_seq_len == 0, "val_tokens", "must be a multiple of --val_seq_len")
        require(bool(self.bench_steps) or not self.bench_trace, "bench_trace", "needs --bench_steps")
        require(self.bench_steps % self.adam_every == 0, "bench_steps",
                f"must be a multiple of --adam_every={self.adam_every}: it times whole cycles of Adam and other steps")
        require(self.save_every % self.adam_every == 0, "save_every",
                f"must be a multiple of --adam_every={self.adam_every}: a checkpoint between Adam steps would lose "
                "the Adam gradients summed since the last one")

    @property
    def seq_len_stages(self) -> list[int]:
        return [int(n) for n in self.seq_lens.split(",")]

    @property
    def doc_max_token_list(self) -> list[int]:
        return int_list(self.doc_max_tokens)

    @property
    def lr_stage_mul_list(self) -> list[float]:
        return [float(m) for m in self.lr_stage_muls.split(",")]

    @property
    def paired_head_layer_list(self) -> list[int]:
        return int_list(self.paired_head_layers)

    @property
    def value_embed_layer_list(self) -> list[int]:
        return int_list(self.value_embed_layers)

    @property
    def xsa_layer_list(self) -> list[int]:
        return int_list(self.xsa_layers)

    @property
    def skip_pairs(self) -> list[tuple[int, int]]:
        """(src, dst) per skip, in the order of their gates: src's output joins dst's input."""
        if self.skips == "unet":
            half = self.num_layers // 2
            return [(half - 1 - k, half + k) for k in range(half)]
        return [tuple(int(i) for i in pair.split(":")) for pair in self.skips.split(",")] if self.skips else []

    @property
    def no_attention_layer_list(self) -> list[int]:
        return int_list(self.no_attention_layers)

    @property
    def value_embed_of_block(self) -> list[int | None]:
        """The value embedding each block reads, None for none. Untied: the k-th of --value_embed_layers reads
        embedding k. Tied: embedding i feeds block i and block L - n + i (n = --num_value_embeds, at most L / 2)."""
        L, layers = self.num_layers, self.value_embed_layer_list
        if layers:
            return [layers.index(i) if i in layers else None for i in range(L)]
        n = min(self.num_value_embeds, L // 2)
        return [i if i < n else (i - (L - n) if i >= L - n else None) for i in range(L)]

    @property
    def window_stages(self) -> list[tuple[int, int]]:
        """(short, long) window in 128-token blocks for each equal stage of training."""
        return [tuple(int(b) for b in pair.split(":")) for pair in self.window_blocks.split(",")]

    @property
    def val_windows(self) -> tuple[int, int] | None:
        """(short, long) window in 128-token blocks of the validation after the last step; None: the last stage's."""
        return tuple(int(b) for b in self.val_window_blocks.split(":")) if self.val_window_blocks else None

    @property
    def mtp_stages(self) -> list[list[tuple[float, float]]]:
        """Per equal stage of training, per target 1, 2, ... tokens ahead: its weight at the stage's start and end."""
        return [[(float(w.split("..")[0]), float(w.split("..")[-1])) for w in stage.split(":")]
                for stage in self.mtp_weights.split(",")]

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_len_stages + [self.val_seq_len])


PRESETS = {
    "record": {},
    # The record model and optimizers on one GPU in minutes: one 65,536-token sequence a step, 500 steps (32.8M
    # tokens); every schedule is a fraction of the run, so it scales with the step count.
    "proxy": dict(slices_per_step=1, seq_lens="65536", lr_stage_muls="1.0", num_iterations=500, val_every=100,
                  val_tokens=2_097_152, warmup_steps=3),
    # The record's model at toy size; two blocks hold no 3 -> 6 skip or attention-free block 6: a U-net, one tied
    # value embedding without gates, XSA in block 1 and paired heads in block 0, block 1 attending over block 0's
    # output and the head backing out part of it; a bf16 head and MLP, which a CPU runs (FP8 needs FP8 tensor cores).
    "tiny": dict(num_layers=2, skips="unet", no_attention_layers="", value_embed_layers="", value_embed_gates=False,
                 xsa_layers="1", paired_head_layers="0", backout_layer=0, attn_source=0, bigram_signs=64,
                 val_window_blocks="", model_dim=64, num_heads=2, head_dim=32, attn_gate_dim=8,
                 num_value_embeds=1, bigram_buckets=1021, window_pattern="SL", window_blocks="1:1,1:2", seq_lens="128",
                 lr_stage_muls="1.0", val_tokens=2048, val_seq_len=512, num_iterations=40, val_every=10,
                 warmup_steps=1, momentum_warmup_frac=0.25, fp8_head=False, fp8_mlp=False),
}


def parse_value(flag: str, text: str, kind):
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise ValueError(f"--{flag}={text}: expected a {kind.__name__}") from None


def flag_help() -> str:
    """Every flag with its default and the comment beside its field, read from this file's own source."""
    source = SOURCE_BYTES.decode()
    body = source[source.index("class Hyperparameters:"):source.index("    def __post_init__")]
    comments = {m[1]: m[2] for m in re.finditer(r"^    (\w+): [^=]+=.*?(?:  # (.*))?$", body, re.M)}
    lines = ["usage: python train_gpt.py [--preset=NAME] [--flag=value ...]   (torchrun for several GPUs)",
             f"  --preset={'|'.join(PRESETS)}  starting values (default record); flags below override them"]
    for f in dataclasses.fields(Hyperparameters):
        lines.append(f"  --{f.name}={f.default}" + (f"  {comments[f.name]}" if comments.get(f.name) else ""))
    return "\n".join(lines)


def parse_args(argv: list[str]) -> Hyperparameters:
    """`--name=value` for any Hyperparameters field; `--preset=NAME` (one of PRESETS) picks the starting values."""
    fields = {f.name: f.type for f in dataclasses.fields(Hyperparameters)}
    preset, overrides = "record", {}
    for arg in argv:
        name, eq, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not eq:
            raise ValueError(f"argument {arg!r}: expected --name=value (--help lists the flags)")
        if name in overrides or (name == "preset" and any(a.startswith("--preset=") for a in argv[:argv.index(arg)])):
            raise ValueError(f"--{name} is given twice")
        if name == "preset":
            preset = text
        elif name in fields:
            overrides[name] = parse_value(name, text, fields[name])
        else:
            raise ValueError(f"unknown flag --{name} (--help lists the flags)")
    if preset not in PRESETS:
        raise ValueError(f"--preset={preset}: expected one of {', '.join(PRESETS)}")
    return Hyperparameters(**{**PRESETS[preset], **overrides})


def check_world_size(hp: Hyperparameters, world_size: int) -> None:
    """The world size enters here, once: each step's slices and the validation sequences split evenly over it."""
    if hp.slices_per_step % world_size:
        raise ValueError(f"world size {world_size} does not fit: a step is --slices_per_step={hp.slices_per_step} "
                         f"slices, which must split evenly over the ranks (use 1, 2, 4 or 8 GPUs)")
    val_seqs = hp.val_tokens // hp.val_seq_len
    if val_seqs % world_size:
        raise ValueError(f"world size {world_size} does not fit: --val_tokens={hp.val_tokens} / "
                         f"--val_seq_len={hp.val_seq_len} = {val_seqs} sequences, which must split evenly over the ranks")


def check_device(hp: Hyperparameters, device: torch.device) -> None:
    """The device enters here, once: --fp8_head and --fp8_mlp need FP8 tensor cores (Ada, Hopper or later); one
    error names every flag that does."""
    fp8_flags = (("fp8_head", "the bf16 head"), ("fp8_mlp", "the bf16 MLP"))
    on = [(flag, off) for flag, off in fp8_flags if getattr(hp, flag)]
    capability = torch.cuda.get_device_capability(device) if on_gpu(device) else None
    if on and (capability is None or capability < (8, 9)):
        found = "a CPU" if capability is None else f"compute capability {capability[0]}.{capability[1]}"
        flags = " and ".join(f"--{flag}=True" for flag, _ in on)
        offs = " ".join(f"--{flag}=false" for flag, _ in on) + ": " + " and ".join(off for _, off in on)
        raise ValueError(f"{flags} {'needs' if len(on) == 1 else 'need'} a CUDA GPU of compute capability 8.9 or "
                         f"newer (FP8 tensor cores); this run's device has {found} ({offs})")


# ----- Logging -----


class Logger:
    """Rank 0 prints each line and appends it to logs/<run_id>.txt, flushed at once so a crash keeps it all."""

    def __init__(self, path: Path | None):
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                raise FileExistsError(f"{path} exists: a log holds one run, choose another --run_id")
            self.file = open(path, "xb")

    def write_bytes(self, data: bytes) -> None:
        if self.file:
            self.file.write(data)
            self.file.flush()

    def __call__(self, line: str, console: bool = True) -> None:
        if self.file is None:
            return
        if console:
            print(line, flush=True)
        self.write_bytes((line + "\n").encode())


def log_source(log: Logger) -> None:
    digest = hashlib.sha256(SOURCE_BYTES).hexdigest()
    log.write_bytes(f"==== train_gpt.py source begin sha256:{digest} bytes:{len(SOURCE_BYTES)} ====\n".encode())
    log.write_bytes(SOURCE_BYTES + b"\n==== train_gpt.py source end ====\n")


def launch_command(world_size: int) -> str:
    """The command line that reproduces this run (torchrun does not pass its own arguments to the workers)."""
    script = [os.path.relpath(sys.argv[0]), *sys.argv[1:]]
    if "LOCAL_WORLD_SIZE" not in os.environ:
        return shlex.join(["python", *script])
    nodes = world_size // int(os.environ["LOCAL_WORLD_SIZE"])
    where = ["--standalone"] if nodes == 1 else [f"--nnodes={nodes}"]
    return shlex.join(["torchrun", *where, f"--nproc_per_node={os.environ['LOCAL_WORLD_SIZE']}", *script])


def log_environment(log: Logger, hp: Hyperparameters, world_size: int, device: torch.device) -> None:
    log(f"run_id:{hp.run_id}")
    log(f"date:{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    log(f"command:{launch_command(world_size)}")
    log(f"python:{platform.python_version()}")
    log(f"torch:{torch.__version__}")
    log(f"triton:{triton.__version__}")
    log(f"cuda:{torch.version.cuda or 'none'}")
    log(f"gpu:{f'{world_size}x {torch.cuda.get_device_name(device)}' if on_gpu(device) else 'cpu'}")
    log(f"world_size:{world_size}")
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        smi = f"nvidia-smi not available: {e}"
    log("==== nvidia-smi begin ====", console=False)
    log(smi.rstrip("\n"), console=False)
    log("==== nvidia-smi end ====", console=False)
    for field in dataclasses.fields(hp):
        log(f"hparam:{field.name}={getattr(hp, field.name)}", console=False)


def peak_memory_mib(device) -> int:
    if on_gpu(device):
        return torch.cuda.max_memory_allocated(device) // 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def synchronize(device) -> None:
    if on_gpu(device):
        torch.cuda.synchronize(device)


# ----- Schedules -----


def stage_at(step: int, hp: Hyperparameters, stages: int) -> int:
    """Which of `stages` equal parts of training a step falls in (the last one from the end of training on)."""
    return min(step * stages // hp.num_iterations, stages - 1)


def lr_scale(step: int, hp: Hyperparameters) -> float:
    """The factor on every group's initial lr: warm-up, the batch stage's multiplier, then linear to
    final_lr_frac over the cooldown."""
    if step < hp.lr_warmup_steps:
        return (step + 1) / hp.lr_warmup_steps
    muls = hp.lr_stage_mul_list
    stage_mul = muls[stage_at(step, hp, len(muls))]
    cooldown_start = 1 - hp.cooldown_frac
    progress = step / hp.num_iterations
    if progress < cooldown_start:
        return stage_mul
    t = (progress - cooldown_start) / hp.cooldown_frac
    return stage_mul * (1 - t) + hp.final_lr_frac * t


def momentum_at(step: int, hp: Hyperparameters) -> float:
    """NorMuon momentum: up from muon_momentum_start over the warm-up fraction, back to it over the cooldown."""
    lo, hi = hp.muon_momentum_start, hp.muon_momentum
    warmup, cooldown = hp.momentum_warmup_frac * hp.num_iterations, hp.momentum_cooldown_frac * hp.num_iterations
    if step < warmup:
        return lo + (hi - lo) * step / warmup
    if step > hp.num_iterations - cooldown:
        return hi - (hi - lo) * min((step - (hp.num_iterations - cooldown)) / cooldown, 1.0)
    return hi


def seq_len_at(step: int, hp: Hyperparameters) -> int:
    return hp.seq_len_stages[stage_at(step, hp, len(hp.seq_len_stages))]


def doc_max_at(step: int, hp: Hyperparameters) -> int:
    """The cap on a training document's tokens at this step (--doc_max_tokens); 0: none."""
    caps = hp.doc_max_token_list
    return caps[stage_at(step, hp, len(caps))] if caps else 0


def windows_until(step: int, hp: Hyperparameters) -> list[tuple[int, int]]:
    """(short, long) windows in 128-token blocks of every stage of training up to step's (--window_blocks), then
    --val_window_blocks, if given, for the validation after the end."""
    stages = hp.window_stages
    seen = stages[:stage_at(step, hp, len(stages)) + 1]
    if step >= hp.num_iterations and hp.val_windows:
        seen.append(hp.val_windows)
    return seen


def windows_at(step: int, hp: Hyperparameters) -> dict[str, int]:
    """Sliding-window sizes in tokens at a step."""
    short, long = windows_until(step, hp)[-1]
    return {"S": 128 * short, "L": 128 * long}


def window_tensors(step: int, hp: Hyperparameters, device) -> dict[str, torch.Tensor]:
    return {kind: window_tensor(w, device) for kind, w in windows_at(step, hp).items()}


def yarn_at(step: int, hp: Hyperparameters) -> tuple[torch.Tensor, float]:
    """Rotary frequencies and the attention scale's gain at a step: with --rope=half_yarn, YaRN stretches the
    frequencies and grows the scale at each change of the long window so far (an unchanged window leaves both)."""
    frequencies, gain = rotary_frequencies(hp.head_dim, hp.rope_base, hp.rope), 1.0
    if hp.rope == "half_yarn":
        longs = [128 * long for _, long in windows_until(step, hp)]
        for old, new in zip(longs[:-1], longs[1:]):
            frequencies = yarn_stretch(frequencies, old, new)
            gain *= YARN_SCALE_GROWTH * math.log(new / old) + 1
    return frequencies, gain


def set_yarn(model: GPT, step: int, hp: Hyperparameters) -> None:
    """Derived from the step alone, so a resumed run gets the state of an uninterrupted one. Plain RoPE's tables never
    change: nothing to compute on the step's hot path."""
    if hp.rope != "plain":
        model.rotary.set_yarn(*yarn_at(step, hp))


def mtp_weights_at(step: int, hp: Hyperparameters) -> list[float]:
    """Multi-token prediction's loss weights of the targets 1, 2, ... tokens ahead: each moves linearly from its
    stage's start value to its end value across the stage, zero-padded to the longest stage's count so their shape,
    and the compiled graph, stay the same all run."""
    stages = hp.mtp_stages
    i = stage_at(step, hp, len(stages))
    t = min(step * len(stages) / hp.num_iterations - i, 1.0)  # progress through stage i
    weights = [a + (b - a) * t for a, b in stages[i]]
    return weights + [0.0] * (max(map(len, stages)) - len(weights))


def mtp_weight_tensors(hp: Hyperparameters, device) -> list[torch.Tensor] | None:
    """mtp_weights_at for every step as (K,) fp32 tensors on the device, made once before training, so no step
    waits on a host-to-device copy; None for the plain next-token loss (weight 1 on one target all run)."""
    if all(stage == [(1.0, 1.0)] for stage in hp.mtp_stages):
        return None
    return [torch.tensor(mtp_weights_at(step, hp), device=device) for step in range(hp.num_iterations)]


def adam_steps_at(step: int, hp: Hyperparameters) -> bool:
    """Adam steps on every --adam_every-th step (2: upstream's odd steps) and on the last, so no gradient is left
    unused; the steps between only sum its parameters' gradients, and launch none of their communication."""
    return (step + 1) % hp.adam_every == 0 or step == hp.num_iterations - 1


def untie_step(hp: Hyperparameters) -> int:
    """The first step at which the embedding and the LM head are trained as two matrices: rounded up to a multiple
    of --adam_every, so it follows an Adam step and every gradient Adam sums was taken under one tie."""
    return -(-int(hp.untie_frac * hp.num_iterations) // hp.adam_every) * hp.adam_every


def set_schedules(optimizers, step: int, hp: Hyperparameters) -> None:
    scale, momentum = lr_scale(step, hp), momentum_at(step, hp)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * scale
            if "momentum" in group:
                group["momentum"] = momentum


# ----- Training step -----


def getattr_path(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def build_optimizers(model: GPT, hp: Hyperparameters, rank: int, world_size: int) -> list[torch.optim.Optimizer]:
    blocks = model.blocks
    attended = [b for b in blocks if b.attn is not None]  # a block without attention has no attn.* matrices
    muon_groups = [dict(params=[getattr_path(b, label) for b in (attended if label.startswith("attn.") else blocks)],
                        label=label, lr=hp.muon_lr, initial_lr=hp.muon_lr, neuron_axis=neuron_axis, lr_mul=lr_mul)
                   for label, (neuron_axis, lr_mul) in MATRIX_PARAMS.items()]
    if hp.muon_qk_head_pairs:  # the bank is (4, D, D): Q, K, V, O, each stored (out, in), heads in row blocks
        next(g for g in muon_groups if g["label"] == "attn.qkvo")["row_blocks"] = (2 * hp.head_dim,) * 2 + (0, 0)
    scalars = [model.skip_gates] + [b.residual_mix for b in blocks] + [b.attn.value_mix for b in attended]
    if model.bigram_embed is not None:
        scalars.append(model.bigram_lambdas)
    if model.smear:
        scalars.append(model.smear_lambda)
    if model.backout_layer >= 0:
        scalars.append(model.backout_lambda)
    # The LM head and the row tables communicate in step(), not from hooks: while tied, the head's gradient and
    # the embedding's are combined after backward, and a row table's gradient is summed outside autograd
    # (GPT.hand_over_row_grads).
    adam_groups = [dict(params=[model.lm_head], lr=hp.adam_head_lr, overlap=False, label="lm_head"),
                   dict(params=[model.embed.weight], lr=hp.adam_embed_lr, overlap=False, label="embed"),
                   dict(params=[ve.weight for ve in model.value_embeds], lr=hp.adam_value_embed_lr, overlap=False,
                        label="value_embeds"),
                   dict(params=scalars, lr=hp.adam_scalar_lr, label="scalars")]
    if model.bigram_embed is not None:
        adam_groups.append(dict(params=[model.bigram_embed.weight], lr=hp.adam_bigram_lr, overlap=False,
                                label="bigram_embed"))
    if model.smear:
        adam_groups.append(dict(params=[model.smear_gate], lr=hp.adam_smear_gate_lr, label="smear_gate"))
    value_gates = [b.attn.value_gate for b in attended if b.attn.value_gate is not None]
    if value_gates:  # upstream trains these gates with Adam (its record of 2026-01-03), not as matrices
        adam_groups.append(dict(params=value_gates, lr=hp.adam_value_gate_lr, label="value_gates"))
    xsa_alphas = [b.attn.xsa_alpha for b in attended if b.attn.xsa_alpha is not None]
    if xsa_alphas:  # upstream trains them with Adam apart from its scalars: the head's lr, betas (0.9, 0.95)
        adam_groups.append(dict(params=xsa_alphas, lr=hp.adam_xsa_lr, label="xsa_alphas"))
    for group in adam_groups:
        betas, wd_mul = ADAM_PARAMS[group["label"]]
        group.update(initial_lr=group["lr"], betas=betas, weight_decay=hp.adam_weight_decay * wd_mul)
    grouped = [p for g in muon_groups + adam_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters())), "each parameter in one group"
    return [NorMuon(muon_groups, lr=hp.muon_lr, momentum=hp.muon_momentum, beta2=hp.muon_beta2,
                    weight_decay=hp.muon_weight_decay, rank=rank, world_size=world_size),
            DistAdam(adam_groups, eps=1e-10, rank=rank, world_size=world_size)]


def set_grad_sync(optimizers, stepping, enabled: bool) -> None:
    """Gradient communication starts from backward hooks only on the last micro-step of accumulation, and only
    for the optimizers that step at this step (stepping)."""
    for opt in optimizers:
        opt.grad_sync_enabled = enabled and opt in stepping


def no_phases(name: str):
    return contextlib.nullcontext()


class PhaseTimer:
    """Device-synchronized wall time per phase of a step, summed over calls: the benchmark's breakdown."""

    def __init__(self, device):
        self.device, self.ms = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        synchronize(self.device)
        t0 = time.perf_counter()
        yield
        synchronize(self.device)
        self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - t0)


def train_step(model: GPT, forward, optimizers, batches, step: int, hp: Hyperparameters, world_size: int,
               mtp_table: list | None, phase=no_phases) -> torch.Tensor:
    """One optimizer step over this rank's slices (len(batches) = gradient-accumulation micro-steps), the one
    used by training, warm-up and the benchmark (which times its phases). mtp_table: mtp_weight_tensors. Returns
    the mean training loss over all slices of all ranks (with MTP, the weighted sum over targets ahead), as a
    tensor (no host sync)."""
    windows = window_tensors(step, hp, batches[0][0].device)
    set_yarn(model, step, hp)
    mtp_weights = mtp_table[step] if mtp_table is not None else None
    adam_now = adam_steps_at(step, hp)
    stepping = [opt for opt in optimizers if adam_now or not isinstance(opt, DistAdam)]
    total = torch.zeros((), device=batches[0][0].device)
    for i, (inputs, targets) in enumerate(batches):
        set_grad_sync(optimizers, stepping, i == len(batches) - 1)
        with phase("forward"):
            loss = forward(inputs, targets, windows, mtp_weights)
        with phase("backward"):
            (loss / len(batches)).backward()
        total += loss.detach() / len(batches)
    with phase("optimizer"):
        if adam_now:  # the row tables' summed gradients, the tied embedding's joining the head's
            model.hand_over_row_grads()
        set_schedules(optimizers, step, hp)
        for opt in stepping:
            opt.step()
        if adam_now:  # every optimizer stepped: no gradient is left to keep, the row tables' sums included
            model.zero_grad(set_to_none=True)
            model.tie_weights()
        else:  # Adam's gradients stay, to be summed with the next step's
            for opt in stepping:
                opt.zero_grad(set_to_none=True)
    if world_size > 1:
        dist.all_reduce(total)
    return total / world_size


@torch.no_grad()
def evaluate(model: GPT, forward, val_tokens: torch.Tensor, step: int, hp: Hyperparameters, rank: int,
             world_size: int, device) -> float:
    windows = window_tensors(step, hp, device)
    set_yarn(model, step, hp)
    total = torch.zeros((), device=device)
    for inputs, targets in val_batches(val_tokens, hp.val_seq_len, rank, world_size, device):
        total += forward(inputs, targets, windows).float()
    if world_size > 1:
        dist.all_reduce(total)
    return total.item() / (hp.val_tokens // hp.val_seq_len)


def dummy_batches(seq_len: int, count: int, device, seed: int = 0) -> list:
    """Random tokens in documents of random length (mean ~1000 tokens, like FineWeb's), each starting with BOS."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, BOS_ID, (count, seq_len + 1), generator=g)
    tokens[torch.rand(count, seq_len + 1, generator=g) < 1e-3] = BOS_ID
    tokens[:, 0] = BOS_ID
    return [(t[:-1].to(device, torch.int32), t[1:].to(device, torch.int64)) for t in tokens]


def warmup_kernels(model: GPT, forward, optimizers, hp: Hyperparameters, rank: int, world_size: int, device,
                   log: Logger, mtp_table: list | None):
    """Compile and autotune every batch shape on dummy data, then restore the initial model and optimizer state,
    so the timed run starts exactly where an un-warmed run would."""
    model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_states = [opt.state_dict() for opt in optimizers]
    accum = hp.slices_per_step // world_size
    steps = max(hp.warmup_steps, hp.adam_every) if hp.warmup_steps else 0  # with --adam_every > 1, both kinds of step
    for seq_len in hp.seq_len_stages:
        t0 = time.perf_counter()
        for i in range(steps):  # a run's first steps (a 1-step run has only its last, an Adam step)
            train_step(model, forward, optimizers, dummy_batches(seq_len, accum, device),
                       min(i % hp.adam_every, hp.num_iterations - 1), hp, world_size, mtp_table)
        synchronize(device)
        log(f"info:warmup seq_len:{seq_len} steps:{steps} seconds:{time.perf_counter() - t0:.1f}")
    if hp.warmup_steps:
        t0 = time.perf_counter()
        with torch.no_grad():
            inputs, targets = dummy_batches(hp.val_seq_len, 1, device)[0]
            forward(inputs, targets, window_tensors(0, hp, device))
        synchronize(device)
        log(f"info:warmup val_seq_len:{hp.val_seq_len} seconds:{time.perf_counter() - t0:.1f}")
    model.load_state_dict(model_state)
    for opt, state in zip(optimizers, optimizer_states):
        opt.load_state_dict(state)
    model.zero_grad(set_to_none=True)  # Adam's gradients summed on a warm-up step it skipped
    model.tied = True


# ----- Benchmark -----


def matmul_tflops(device) -> float:
    """The measured bf16 matmul rate (an 8192³ product, random data), the ceiling that MFU is relative to."""
    if not on_gpu(device):
        return float("nan")
    a, b = torch.randn(2, 8192, 8192, device=device, dtype=torch.bfloat16).unbind(0)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 20 * 2 * 8192**3 / (start.elapsed_time(end) / 1000) / 1e12


def attended_keys(inputs: torch.Tensor, window: int, paired: bool = False) -> torch.Tensor:
    """inputs: (T,) tokens -> (T,) the number of keys each query's document-causal window lets it see; paired: the
    mean over token t's two positions 2t, 2t + 1 of paired heads' sequence (each with half the heads)."""
    pos = torch.arange(inputs.numel(), device=inputs.device)
    doc_start = torch.cummax(torch.where(inputs == BOS_ID, pos, 0), 0).values
    if not paired:
        return torch.clamp(pos - doc_start + 1, max=window)
    first = 2 * (pos - doc_start) + 1  # keys seen from position 2t: its document's positions up to 2t
    return (torch.clamp(first, max=window) + torch.clamp(first + 1, max=window)) / 2


def flops_per_token(model: GPT, inputs: torch.Tensor, windows: dict[str, int]) -> tuple[float, float]:
    """Training FLOPs per token: 6 · (matmul parameters, LM head included; embeddings are lookups, no FLOPs)
    plus attention 12 · attended keys · model_dim per layer (q·k and p·v, 2 FLOPs a multiply-add, forward +
    2x backward), counting for each query the keys its document-causal window really lets it see."""
    matmul_params = model.lm_head.numel() + sum((b.attn.qkvo.numel() if b.attn is not None else 0) + b.mlp.fc.numel()
                                                + b.mlp.proj.numel() for b in model.blocks)
    dim = model.embed.weight.size(1)
    attention = sum(12 * attended_keys(inputs, windows[kind], b.attn.paired).float().mean().item() * dim
                    for kind, b in zip(model.window_pattern, model.blocks) if b.attn is not None)
    return 6 * matmul_params, attention


def timed(device, fn) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return 1000 * (time.perf_counter() - t0)


def benchmark(model: GPT, forward, optimizers, hp: Hyperparameters, world_size: int, device, log: Logger,
              mtp_table: list | None):
    """Full training steps at the final batch size on synthetic documents: ms per step, tokens/s, MFU against
    the measured matmul rate, peak memory, and where the time goes. The steps cycle through the final stage's
    last --adam_every steps before the last, of which Adam steps on one, as training does; a step's time is its
    cycle's mean (the median over cycles; so is the phase breakdown)."""
    cycle = [max(0, hp.num_iterations - 1 - hp.adam_every + k) for k in range(hp.adam_every)]
    step = cycle[-1]  # the final stage: largest batch and windows
    seq_len, accum = seq_len_at(step, hp), hp.slices_per_step // world_size
    batches = [dummy_batches(seq_len, accum, device, seed=i) for i in range(hp.bench_steps)]
    if on_gpu(device):
        torch.cuda.reset_peak_memory_stats(device)
    step_ms = [timed(device, lambda b=b, s=cycle[i % len(cycle)]: train_step(model, forward, optimizers, b, s, hp,
                                                                              world_size, mtp_table))
               for i, b in enumerate(batches)]
    step_ms = [sum(step_ms[i:i + len(cycle)]) / len(cycle) for i in range(0, len(step_ms), len(cycle))]
    median, lo, hi = sorted(step_ms)[len(step_ms) // 2], min(step_ms), max(step_ms)
    phases = PhaseTimer(device)
    for b, s in zip(batches, cycle):
        train_step(model, forward, optimizers, b, s, hp, world_size, mtp_table, phase=phases)
    phases.ms = {name: ms / len(cycle) for name, ms in phases.ms.items()}
    matmul, attention = flops_per_token(model, batches[0][0][0], windows_at(step, hp))
    tokens = hp.slices_per_step * seq_len
    peak = matmul_tflops(device)
    achieved = (matmul + attention) * tokens / (median / 1000) / 1e12
    total = sum(phases.ms.values())
    log(f"info:bench device:{torch.cuda.get_device_name(device) if on_gpu(device) else 'cpu'} "
        f"world_size:{world_size} accumulation:{accum} tokens_per_step:{tokens} seq_len:{seq_len} steps:{len(batches)} "
        f"adam_every:{len(cycle)}")
    log(f"info:bench step_ms_median:{median:.1f} step_ms_min:{lo:.1f} step_ms_max:{hi:.1f} "
        f"tokens_per_s:{tokens / (median / 1000):.0f} tokens_per_s_per_gpu:{tokens / (median / 1000) / world_size:.0f}")
    log(f"info:bench flops_per_token:{(matmul + attention) / 1e6:.1f}M = 6*matmul_params {matmul / 1e6:.1f}M "
        f"+ attention {attention / 1e6:.1f}M")
    log(f"info:bench achieved_tflops_per_gpu:{achieved / world_size:.1f} matmul_peak_tflops:{peak:.1f} "
        f"mfu:{100 * achieved / world_size / peak:.1f}% peak_memory:{peak_memory_mib(device)}MiB")
    log("info:bench share " + " ".join(f"{k}:{100 * v / total:.1f}%({v:.1f}ms)" for k, v in phases.ms.items()))
    if hp.bench_trace:
        profiled = min(len(batches), len(cycle) * max(1, 3 // len(cycle)))  # whole Adam cycles, about 3 steps
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            wall_ms = timed(device, lambda: [train_step(model, forward, optimizers, b, cycle[i % len(cycle)], hp,
                                                        world_size, mtp_table) for i, b in enumerate(batches[:profiled])])
        prof.export_chrome_trace(hp.bench_trace)
        # Device kernels only: an operator's row repeats the time of the kernels it launched.
        kernels = sorted((e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA),
                         key=lambda e: -e.self_device_time_total)
        busy = sum(e.self_device_time_total for e in kernels) / 1000 / profiled
        comm = sum(e.self_device_time_total for e in kernels if "nccl" in e.key.lower()) / 1000 / profiled
        log(f"info:bench profiled_steps:{profiled} step_ms:{wall_ms / profiled:.1f} kernel_ms_per_step:{busy:.1f} "
            f"nccl_kernel_ms_per_step:{comm:.1f}")
        for e in kernels[:40]:
            ms = e.self_device_time_total / 1000 / profiled
            log(f"info:profile {ms:8.2f}ms {100 * ms / busy:5.1f}% calls:{e.count // profiled:<5} {e.key[:100]}")


# ----- Training -----


class NonFiniteLoss(RuntimeError):
    pass


# Fields a resumed run may change: where it reads, writes and logs, not what it trains.
RESUMABLE_CHANGES = {"train_files", "val_files", "val_every", "warmup_steps", "run_id", "log_dir", "compile",
                     "compile_cache", "save_checkpoint", "save_every", "checkpoint_dir", "resume", "bench_steps",
                     "bench_trace"}
CHECKPOINT_KEYS = {"step", "train_time_ms", "tokens_seen", "tied", "model", "optimizers", "loader", "hparams"}


def write_checkpoint(path: Path, model: GPT, optimizers, loader, step: int, train_time_ms: float, tokens_seen: int,
                     hp: Hyperparameters, rank: int):
    """Written to a temporary name and renamed, so a crash mid-save never leaves a complete-looking file."""
    optimizer_states = [opt.state_dict() for opt in optimizers]  # collective: every rank takes part
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(dict(step=step, train_time_ms=train_time_ms, tokens_seen=tokens_seen, tied=model.tied,
                        model=model.state_dict(), optimizers=optimizer_states, loader=loader.state_dict(),
                        hparams=dataclasses.asdict(hp)), partial)
        os.replace(partial, path)


def read_checkpoint(path: str, hp: Hyperparameters) -> dict:
    """Load and check a checkpoint before any long work: readable, complete, written with these
    hyperparameters (RESUMABLE_CHANGES aside) and with steps left to train."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume={path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or corrupt file fails in pickle, zip or torch, each its own way
        raise ValueError(f"--resume={path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEYS - ckpt.keys():
        raise ValueError(f"--resume={path}: not a train_gpt.py checkpoint (it lacks "
                         f"{sorted(CHECKPOINT_KEYS - (ckpt.keys() if isinstance(ckpt, dict) else set()))})")
    differ = [f"{k}={ckpt['hparams'].get(k)!r} there, {v!r} here" for k, v in dataclasses.asdict(hp).items()
              if k not in RESUMABLE_CHANGES and ckpt["hparams"].get(k) != v]
    if differ:
        raise ValueError(f"--resume={path}: written with other hyperparameters: {'; '.join(differ)}")
    if ckpt["step"] >= hp.num_iterations:
        raise ValueError(f"--resume={path}: written at step {ckpt['step']}, nothing is left before "
                         f"--num_iterations={hp.num_iterations}")
    return ckpt


def restore_checkpoint(ckpt: dict, model: GPT, optimizers, loader) -> None:
    model.load_state_dict(ckpt["model"])
    model.tied = ckpt["tied"]
    for opt, state in zip(optimizers, ckpt["optimizers"]):
        opt.load_state_dict(state)
    loader.load_state_dict(ckpt["loader"])


def use_compile_cache(folder: str) -> None:
    """Inductor's and Triton's on-disk caches in one stated folder, so a second run on the machine skips most of the
    minutes of compiling (they read these variables when they first compile, after this). AOTAutograd's cache, in
    inductor's folder, refuses by default a graph holding a custom autograd.Function (RowTable's _RowsSummingGrad):
    each warm start then traced the training graph again, 8 to 10 s of the record step's start (session 13). Dynamo
    traces the Function's forward and backward into the graph the cache key is made from, so the flag lets it keep it."""
    if folder:
        path = Path(folder).resolve()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True


def log_since_launch(log: Logger, event: str, **parts: float) -> None:
    """The seconds from launch to an event of the start-up: `built` (imports, checks, the model and optimizers),
    `ready` (the first timed step, after compile and warm-up: what a warm --compile_cache saves); then the
    seconds of the parts named, so a slow start can be told apart without a profiler."""
    log(f"info:{event} seconds_since_launch:{time.perf_counter() - LAUNCHED:.1f}"
        + "".join(f" {name}:{seconds:.1f}" for name, seconds in parts.items()))


def log_val_at_train_windows(model: GPT, forward, val_tokens: torch.Tensor, hp: Hyperparameters, rank: int,
                             world_size: int, device, log: Logger) -> None:
    """The final weights validated again as without --val_window_blocks: at the last stage's windows and YaRN state.
    The final val loss measures a longer context than training saw; in an A/B this line tells how much of a gain is
    the weights'. Same shapes as the main validation, windows and rotary tables are tensors: no recompile."""
    at_train = dataclasses.replace(hp, val_window_blocks="")
    val_loss = evaluate(model, forward, val_tokens, hp.num_iterations, at_train, rank, world_size, device)
    short, long = at_train.window_stages[-1]
    log(f"info:val_at_train_windows val_loss:{val_loss:.4f} window_blocks:{short}:{long}")


def check_loss(loss: torch.Tensor, step: int) -> float:
    """The host value of a step's training loss; raises if it is not finite."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(f"non-finite training loss {value} at step {step}")
    return value


def build_model(hp: Hyperparameters, device: torch.device, micro_steps: int) -> GPT:
    """The model with its parameters created and initialized on `device`, not on the host and copied: on one H200
    the model's line of info:built went from 11.9-16.9 s to 6.9-8.4 s (records/_runs/2026-12-02_speed, session 8)."""
    with torch.device(device):
        return GPT(hp, micro_steps=micro_steps)


def train(hp: Hyperparameters, rank: int, world_size: int, device: torch.device, log: Logger) -> float:
    torch.manual_seed(hp.seed)
    t_model = time.perf_counter()
    model = build_model(hp, device, micro_steps=hp.slices_per_step // world_size)
    use_compile_cache(hp.compile_cache)
    forward = torch.compile(model, dynamic=False) if on_gpu(device) and hp.compile else model
    t_optimizers = time.perf_counter()
    optimizers = build_optimizers(model, hp, rank, world_size)
    mtp_table = mtp_weight_tensors(hp, device)
    log_since_launch(log, "built", imports=IMPORTED - LAUNCHED, model=t_optimizers - t_model,
                     optimizers=time.perf_counter() - t_optimizers)
    if hp.bench_steps:
        warmup_kernels(model, forward, optimizers, hp, rank, world_size, device, log, mtp_table)
        synchronize(device)
        log_since_launch(log, "ready")
        benchmark(model, forward, optimizers, hp, world_size, device, log, mtp_table)
        return float("nan")
    # All input is read and checked before the minutes of compiling that warm-up takes.
    loader = TrainLoader(hp.train_files, rank, world_size, hp.slices_per_step, hp.align_to_bos, device,
                         hp.vocab_size)
    val_tokens = read_val_tokens(hp.val_files, hp.val_tokens, hp.vocab_size)
    log(f"train_data:{train_fingerprint(loader.files)}")
    log(f"val_data:{hashlib.sha256(val_tokens.numpy().tobytes()).hexdigest()}")
    ckpt = read_checkpoint(hp.resume, hp) if hp.resume else None
    warmup_kernels(model, forward, optimizers, hp, rank, world_size, device, log, mtp_table)
    start_step, train_time_ms, tokens_seen = 0, 0.0, 0
    if ckpt is not None:
        restore_checkpoint(ckpt, model, optimizers, loader)
        start_step, train_time_ms, tokens_seen = ckpt["step"], ckpt["train_time_ms"], ckpt["tokens_seen"]
        log(f"resume_step:{start_step} resume_train_time:{train_time_ms:.0f}ms")
        del ckpt
    epoch = loader.epoch
    pending = None  # (step, loss tensor, train_time_ms) of the step whose line is not written yet

    def log_step(done: int, loss: torch.Tensor, ms: float):
        log(f"step:{done}/{hp.num_iterations} train_loss:{check_loss(loss, done):.4f} train_time:{ms:.0f}ms "
            f"step_avg:{ms / done:.2f}ms")

    synchronize(device)
    log_since_launch(log, "ready")
    t0 = time.perf_counter()
    step = start_step
    while True:
        last = step == hp.num_iterations
        if last or (hp.val_every and step % hp.val_every == 0):
            if pending is not None:  # validation waits for the GPU anyway: the step just taken is logged first
                log_step(*pending)
                pending = None
            synchronize(device)
            train_time_ms += 1000 * (time.perf_counter() - t0)
            val_loss = evaluate(model, forward, val_tokens, step, hp, rank, world_size, device)
            log(f"step:{step}/{hp.num_iterations} val_loss:{val_loss:.4f} train_time:{train_time_ms:.0f}ms "
                f"step_avg:{train_time_ms / max(step, 1):.2f}ms")
            if not math.isfinite(val_loss):
                raise NonFiniteLoss(f"non-finite validation loss {val_loss} at step {step}")
            synchronize(device)
            t0 = time.perf_counter()
        if last:
            break
        if step >= untie_step(hp):
            model.tied = False
        seq_len = seq_len_at(step, hp)
        batch = loader.next_batch(seq_len, doc_max_at(step, hp))
        loss = train_step(model, forward, optimizers, batch, step, hp, world_size, mtp_table)
        if loader.epoch != epoch:
            epoch = loader.epoch
            log(f"info:data wrapped around: step {step + 1} starts pass {epoch + 1} over {hp.train_files}")
        if pending is not None:  # the previous step's loss is ready by now: reading it does not stall the GPU
            log_step(*pending)
        tokens_seen += hp.slices_per_step * seq_len
        step += 1
        pending = (step, loss, train_time_ms + 1000 * (time.perf_counter() - t0))
        if hp.save_every and step % hp.save_every == 0 and step < hp.num_iterations:
            synchronize(device)
            train_time_ms += 1000 * (time.perf_counter() - t0)
            write_checkpoint(Path(hp.checkpoint_dir) / f"{hp.run_id}_step{step}.pt", model, optimizers, loader,
                             step, train_time_ms, tokens_seen, hp, rank)
            t0 = time.perf_counter()
    log(f"final_val_loss:{val_loss:.4f} train_time:{train_time_ms:.0f}ms steps:{step} "
        f"peak_memory:{peak_memory_mib(device)}MiB tokens_seen:{tokens_seen}")
    if hp.val_windows and hp.val_windows != hp.window_stages[-1]:  # after the summary: outside train_time
        log_val_at_train_windows(model, forward, val_tokens, hp, rank, world_size, device, log)
    if hp.save_checkpoint:
        write_checkpoint(Path(hp.checkpoint_dir) / f"{hp.run_id}_final.pt", model, optimizers, loader, step,
                         train_time_ms, tokens_seen, hp, rank)
    return val_loss


RUN_ERRORS = (NonFiniteLoss, ValueError, OSError)  # bad input or a dead run: one error line, exit code 1


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(flag_help())
        return 0
    try:
        hp = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rank, world_size, device = init_distributed()
    if not hp.run_id:
        hp.run_id = uuid.uuid4().hex[:12]  # only rank 0 writes, so only rank 0's id matters
    try:
        log = Logger(Path(hp.log_dir) / f"{hp.run_id}.txt" if rank == 0 else None)
    except OSError as e:
        print(f"error: --log_dir={hp.log_dir} --run_id={hp.run_id}: cannot write the log: {e}", file=sys.stderr)
        return 1
    try:
        log_source(log)
        log_environment(log, hp, world_size, device)
        check_world_size(hp, world_size)
        check_device(hp, device)
        train(hp, rank, world_size, device, log)
        return 0
    except BaseException as e:  # the log ends with error: whatever stopped the run, so tools can tell it died
        message = str(e) if isinstance(e, RUN_ERRORS) else f"{type(e).__name__}: {e}"
        try:
            log(f"error:{message}".replace("\n", " "))
        except OSError:
            pass  # the log itself cannot be written (a full disk): stderr still says why
        print(f"error: {message}", file=sys.stderr)
        if isinstance(e, KeyboardInterrupt):
            return 130
        if isinstance(e, RUN_ERRORS):
            return 1
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def exit_code(code: int, distributed: bool) -> int:
    """-> code for sys.exit; a distributed process instead leaves at once (os._exit) once its output is flushed.
    After a complete run a gloo worker thread may still be freeing its last finished collective, whose tensors'
    Python objects it can only release with the GIL; if the interpreter is finalizing by then, the thread dies
    taking it and the process aborts (`terminate called without an active exception`, exit -6: torch 2.13, 3 of
    ~170 2-rank CPU runs under load; the worker's stack from a core dump). Logs and checkpoints are written and
    flushed by then, so finalizing the interpreter would add nothing."""
    if distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:]), distributed=int(os.environ.get("WORLD_SIZE", 1)) > 1))
