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


# Neuron axis of each NorMuon matrix in the record model: a decision about which units are neurons, made per
# parameter, not read off the memory layout. NorMuon (Li et al. 2025, arXiv 2510.05491) equalizes the update
# size across neurons, a neuron being one output unit with its fan-in; its second moment is the mean of u²
# over that fan-in, so `neuron_axis` is the input axis. All four are stored (out, in), hence -1 for all, also
# for the wide mlp.proj and the tall mlp.fc, where a shape rule (normalize the longer side) would differ.
NEURON_AXIS = {
    "attn.qkvo": -1,  # (4, 768, 768): rows are the q, k, v channels and the residual channels the output writes
    "mlp.fc": -1,     # (3072, 768): rows are the ReLU² hidden units; each must keep learning, none may dominate
    "mlp.proj": -1,   # (768, 3072): rows are residual channels; columns would be the hidden units' read-out
    "attn.gate": -1,  # (6, 12): row h is head h's gate logit; all heads' gates move at the same rate
}


class NorMuon(torch.optim.Optimizer):
    """Nesterov momentum, Polar Express orthogonalization and NorMuon's neuron-wise second-moment
    normalization, for matrices. A param group holds params of one shape (..., m, n) (leading dims stack
    matrices orthogonalized separately) and sets `neuron_axis` (-1 or -2, see NEURON_AXIS) and `lr_mul`.
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
        """-> (this rank's (k, m, n) gradient share, its pending work or None, the buffer it reads)."""
        grads = _stack_matrices([p.grad for p in group["params"]], self.world_size)
        if self.world_size == 1:
            return grads, None, None
        share = grads.new_empty(grads.size(0) // self.world_size, *grads.shape[1:])
        return share, dist.reduce_scatter_tensor(share, grads, op=dist.ReduceOp.SUM, async_op=True), grads

    def _normalize_neurons(self, u: torch.Tensor, group) -> torch.Tensor:
        """u: (k, m, n) orthogonalized -> divided by each neuron's RMS (running, along neuron_axis), then
        rescaled per matrix to the Frobenius norm it had."""
        state = self.state[group["params"][0]]
        v = state["second_moment"]  # (k, m, 1) for neuron_axis=-1, (k, 1, n) for -2
        v.lerp_(u.square().mean(dim=group["neuron_axis"], keepdim=True), 1 - group["beta2"])
        norm = u.norm(dim=(-2, -1), keepdim=True)
        u = u / (v.sqrt() + group["eps"])
        return u * (norm / u.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-30))

    def _update_share(self, group, grad: torch.Tensor, work, _buffer) -> tuple:
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
        u = self._normalize_neurons(polar_express(u).float(), group)

        stacked = _stack_matrices(group["params"], self.world_size)
        p = stacked[self.rank * k:(self.rank + 1) * k]
        lr = group["lr"] * group["lr_mul"] * max(1.0, m / n) ** 0.5
        # Cautious weight decay: decay only where the update already pulls p toward zero. It follows the lr
        # schedule but not the per-group or shape multipliers.
        p.addcmul_(p, (u * p > 0).to(p.dtype), value=-group["lr"] * group["weight_decay"])
        p.add_(u.to(p.dtype), alpha=-lr)
        if self.world_size == 1:
            return stacked, None
        full = torch.empty_like(stacked)
        return full, dist.all_gather_into_tensor(full, p, async_op=True)

    @torch.no_grad()
    def step(self):
        groups = [g for g in self.param_groups if self._has_grads(g)]
        grads = [self._reduce_scatter_grads(g) for g in groups]  # all groups in flight before the first update
        gathers = [self._update_share(g, *share) for g, share in zip(groups, grads)]
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
    """Adam (bias-corrected, decoupled weight decay) with state and update sharded: a param is seen flat,
    zero-padded to a multiple of world_size, and rank r owns the contiguous slice [r·s, (r+1)·s).
    Communication: each param's gradient reduce-scatter starts from its post-accumulate-grad hook during
    backward, if grad_sync_enabled (groups with overlap=False, and grads whose hook found it off, start theirs
    in step()); step() waits for each, updates this rank's shard and starts the parameter all-gather, and
    waits for all gathers at its end. Optional per-group `lr_mul` (default 1) scales the group's lr."""

    def __init__(self, param_groups, lr, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0, rank=0, world_size=1):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, lr_mul=1.0, overlap=True,
                        label=None)
        super().__init__(param_groups, defaults)
        _check_world(rank, world_size)
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
        """-> (this rank's flat gradient shard, its pending work or None, the buffer it reads)."""
        if self.world_size == 1:
            return p.grad.reshape(-1), None, None
        grad = _pad_flat(p.grad, self.world_size)
        shard = grad.new_empty(grad.numel() // self.world_size)
        return shard, dist.reduce_scatter_tensor(shard, grad, op=dist.ReduceOp.SUM, async_op=True), grad

    def _update_shard(self, group, p: torch.Tensor, grad: torch.Tensor, work, _buffer) -> tuple:
        """grad: this rank's flat shard -> (p flat and padded, this rank's shard updated; the pending
        all-gather that fills in the other shards, or None)."""
        if work is not None:
            work.wait()
            grad.div_(self.world_size)  # SUM then scale: gloo has no AVG
        size = grad.numel()
        lo = self.rank * size
        weights = p.reshape(-1)[lo:lo + size].float()
        weights = F.pad(weights, (0, size - weights.numel()))  # the last shards may lie in the padding
        state = self.state[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(weights), exp_avg_sq=torch.zeros_like(weights))
        state["step"] += 1
        beta1, beta2 = group["betas"]
        state["exp_avg"].lerp_(grad.float(), 1 - beta1)
        state["exp_avg_sq"].lerp_(grad.float().square(), 1 - beta2)
        lr = group["lr"] * group["lr_mul"]
        denom = (state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
        weights.mul_(1 - lr * group["weight_decay"])
        weights.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** state["step"]))
        weights = weights.to(p.dtype)
        if self.world_size == 1:
            return weights, None
        full = weights.new_empty(size * self.world_size)
        return full, dist.all_gather_into_tensor(full, weights, async_op=True)

    @torch.no_grad()
    def step(self):
        todo = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        for _, p in todo:
            if p not in self._grads_in_flight:
                self._grads_in_flight[p] = self._reduce_scatter_grad(p)
        gathers = [self._update_shard(g, p, *self._grads_in_flight.pop(p)) for g, p in todo]
        for (_, p), (full, work) in zip(todo, gathers):
            if work is not None:
                work.wait()
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

# ----- Data -----

SHARD_MAGIC = 20240520  # BOS_ID (50256, before every document) is defined with the model, which needs it first
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


def read_shard(path) -> torch.Tensor:
    """-> uint16 tokens (CPU) of one shard, after checking its header and size."""
    tokens = bytearray(2 * shard_length(path))
    with open(path, "rb") as f:
        f.seek(HEADER_INTS * 4)
        f.readinto(tokens)
    return torch.frombuffer(tokens, dtype=torch.uint16) if tokens else torch.empty(0, dtype=torch.uint16)


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
    any world size; rank r owns slices r*k .. r*k+k-1, k = num_slices // world_size (gradient accumulation)."""

    def __init__(self, pattern: str, rank: int, world_size: int, num_slices: int = 8, align_to_bos: bool = True,
                 device=torch.device("cpu")):
        if num_slices % world_size:
            raise ValueError(f"world size {world_size} must divide num_slices {num_slices}: every step consumes "
                             f"{num_slices} slices, split evenly over the ranks")
        self.files = find_shards(pattern)
        self.pattern, self.rank, self.num_slices, self.align_to_bos = pattern, rank, num_slices, align_to_bos
        self.slices_per_rank = num_slices // world_size
        self.device = torch.device(device)
        self.prefetch = self.device.type == "cuda"  # overlap loading with compute; tests turn it on for CPU
        self.pending = None  # (seq_len, future of the next step's (slices, stream))
        self.worker = ThreadPoolExecutor(max_workers=1)
        self.load_state_dict({"position": 0})

    @property
    def epoch(self) -> int:
        """Completed passes over all shards: > 0 means training is repeating data."""
        return max(self.stream.shards_loaded - 1, 0) // len(self.files)

    def load_next_shard(self, s: TokenStream) -> TokenStream:
        shard = read_shard(self.files[s.shards_loaded % len(self.files)]).to(torch.int32)
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

    def cut_slice(self, s: TokenStream, seq_len: int) -> tuple[torch.Tensor, TokenStream]:
        """-> seq_len + 1 tokens (starting at a BOS with align_to_bos), and the stream after them."""
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
            if start + seq_len + 1 <= len(s.tokens):
                # The next slice starts at this slice's last target at the earliest.
                return s.tokens[start:start + seq_len + 1], dataclasses.replace(s, pos=start + seq_len)
            s = self.load_next_shard(dataclasses.replace(s, pos=start))

    def cut_step(self, s: TokenStream, seq_len: int) -> tuple[torch.Tensor, TokenStream]:
        """-> this rank's slices (slices_per_rank, seq_len + 1) int32 on the host, pinned for CUDA; the new stream."""
        own = torch.empty(self.slices_per_rank, seq_len + 1, dtype=torch.int32,
                          pin_memory=self.device.type == "cuda")
        for i in range(self.num_slices):
            tokens, s = self.cut_slice(s, seq_len)
            if i // self.slices_per_rank == self.rank:
                own[i % self.slices_per_rank] = tokens
        return own, s

    def next_batch(self, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """-> [(inputs int32 (seq_len,), targets int64 (seq_len,))] for this rank's slices of the next step."""
        if self.pending is not None and self.pending[0] == seq_len:
            own, self.stream = self.pending[1].result()
        else:
            if self.pending is not None:
                self.pending[1].result()  # cut from the stream before it, for another seq_len: discarded
            own, self.stream = self.cut_step(self.stream, seq_len)
        self.pending = None
        if self.prefetch:
            self.pending = (seq_len, self.worker.submit(self.cut_step, self.stream, seq_len))
        own = own.to(self.device, non_blocking=True)
        return [(row[:-1], row[1:].to(torch.int64)) for row in own]


def val_batches(pattern: str, val_tokens: int, val_seq_len: int, rank: int, world_size: int, device):
    """-> iterator of (inputs int32, targets int64), each (val_seq_len,): sequences rank, rank + world_size, ... of
    the first val_tokens (+1) tokens of the validation shards, so all ranks together always see the same tokens."""
    if val_tokens % val_seq_len:
        raise ValueError(f"--val_tokens={val_tokens} must be a multiple of --val_seq_len={val_seq_len}")
    n_seqs = val_tokens // val_seq_len
    if n_seqs % world_size:
        raise ValueError(f"--val_tokens={val_tokens} / --val_seq_len={val_seq_len} = {n_seqs} sequences, "
                         f"not a multiple of the world size {world_size}")
    files, shards = find_shards(pattern), []
    for path in files:
        if sum(map(len, shards)) > val_tokens:
            break
        shards.append(read_shard(path).to(torch.int32))
    tokens = torch.cat(shards)
    if len(tokens) < val_tokens + 1:
        raise ValueError(f"validation shards {files} hold {len(tokens)} tokens, fewer than "
                         f"--val_tokens={val_tokens} + 1 for the last target")
    tokens = tokens[:val_tokens + 1]
    seqs = (tokens[i * val_seq_len:(i + 1) * val_seq_len + 1].to(device, non_blocking=True)
            for i in range(rank, n_seqs, world_size))
    return ((seq[:-1], seq[1:].to(torch.int64)) for seq in seqs)


# ----- Hyperparameters -----

# ----- Training -----
