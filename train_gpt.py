# ----- Source capture -----
from pathlib import Path

SOURCE_BYTES = Path(__file__).read_bytes()  # read first, so the log holds exactly what ran

# ----- Imports, distributed setup, device -----
import dataclasses
import datetime
import glob
import hashlib
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask, flex_attention

# torch 2.13 renames reduce_scatter_tensor / all_gather_into_tensor; the old names are the ones torch 2.11 has.
warnings.filterwarnings("ignore", message=r".*is deprecated. Please use `torch.distributed")


def on_gpu(t: torch.Tensor) -> bool:
    """The one CPU-vs-CUDA switch for kernels: Triton on CUDA tensors, the torch definition elsewhere."""
    return t.is_cuda


def init_distributed() -> tuple[int, int, torch.device]:
    """torchrun's environment: NCCL with one GPU per process on CUDA, gloo on CPU. Returns rank, world size, device."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
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


def xxt(A: torch.Tensor) -> torch.Tensor:
    return xxt_triton(A) if on_gpu(A) else xxt_torch(A)


def xtx(A: torch.Tensor) -> torch.Tensor:
    return xtx_triton(A) if on_gpu(A) else xtx_torch(A)


def ba_plus_caa(A: torch.Tensor, b: float, c: float) -> torch.Tensor:
    return ba_plus_caa_triton(A, b, c) if on_gpu(A) else ba_plus_caa_torch(A, b, c)


def transpose_copy(src: torch.Tensor, dst: torch.Tensor) -> None:
    (transpose_copy_triton if on_gpu(src) else transpose_copy_torch)(src, dst)


def transpose_add(src: torch.Tensor, dst: torch.Tensor) -> None:
    (transpose_add_triton if on_gpu(src) else transpose_add_torch)(src, dst)


# ----- Optimizers -----

# ----- Model -----

# ----- Data -----

# ----- Hyperparameters -----

# ----- Training -----
