"""Each Triton kernel against the torch function that defines it: under Triton's interpreter on CPU (small shapes,
small tiles so that several blocks, ragged edges and mirrored blocks all occur) and on CUDA at the record shapes."""
import os
import types

import numpy as np

import pytest
import torch
import torch.nn.functional as F
import triton.language as tl

import train_gpt as T

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-3}
DTYPES = [torch.bfloat16, torch.float32]
SMALL_TILES = dict(block=32, block_k=32)  # the record tiles (128) leave the small test shapes in one block
B, C = -4.7, 2.1  # Polar Express sized coefficients: b·A and c·A·A are of similar size and partly cancel


@pytest.fixture(autouse=True)
def bf16_dot_in_interpreter(monkeypatch):
    """Triton's interpreter keeps bf16 as raw uint16 bits and its tl.dot multiplies those bits as integers; widen
    bf16 operands to fp32 (exact) first, as the GPU's bf16 x bf16 -> fp32 MMA does."""
    if not INTERPRETED:
        return
    from triton.runtime import interpreter

    def widen(h):
        if h.dtype == tl.bfloat16 and h.data.dtype == np.uint16:
            return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return h

    create_dot = interpreter.InterpreterBuilder.create_dot
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot",
                        lambda self, a, b, d, *args: create_dot(self, widen(a), widen(b), d, *args))


@pytest.fixture(autouse=True)
def fp8_rounding_in_interpreter(monkeypatch):
    """Triton's interpreter rounds fp32 to FP8 by adding the cut-off bit to the mantissa without carrying into the
    exponent (7.84 -> 4 where e4m3 has 8) and without ties to even; round as the GPU's conversion instruction does
    (to nearest even, saturating at the format's largest finite value) through torch."""
    if not INTERPRETED:
        return
    from triton.runtime import interpreter

    formats = {tl.float8e4nv: torch.float8_e4m3fn, tl.float8e5: torch.float8_e5m2}
    convert = interpreter._convert_float

    def rounded(data, src, dst, rounding_mode):
        if src != tl.float32 or dst not in formats:
            return convert(data, src, dst, rounding_mode)
        top = torch.finfo(formats[dst]).max
        values = torch.from_numpy(np.ascontiguousarray(data).view(np.float32)).clamp(-top, top)
        return values.to(formats[dst]).view(torch.uint8).numpy()

    monkeypatch.setattr(interpreter, "_convert_float", rounded)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def symmetric(*shape, dtype, device="cpu"):
    A = torch.randn(*shape, device=device, dtype=torch.float64) / shape[-1] ** 0.5
    return (A + A.mT).to(dtype)


def check_products(A: torch.Tensor, S: torch.Tensor, tiles: dict):
    """xxt / xtx on A and ba_plus_caa on the symmetric S, Triton vs torch in fp64 on the same inputs."""
    assert rel_err(T.xxt_triton(A, **tiles), T.xxt_torch(A.double())) < TOL[A.dtype]
    assert rel_err(T.xtx_triton(A, **tiles), T.xtx_torch(A.double())) < TOL[A.dtype]
    out = T.ba_plus_caa_triton(S, B, C, **tiles)
    assert out.dtype == S.dtype and out.shape == S.shape
    assert rel_err(out, T.ba_plus_caa_torch(S.double(), B, C)) < TOL[S.dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(70, 200), (200, 70), (2, 33, 50), (3, 64, 64)])
def test_xxt_and_xtx_match_torch(shape, dtype):
    A = torch.randn(shape, dtype=dtype)
    for f, ref in [(T.xxt_triton, T.xxt_torch), (T.xtx_triton, T.xtx_torch)]:
        out = f(A, **SMALL_TILES)
        n = shape[-2] if f is T.xxt_triton else shape[-1]
        assert out.dtype == dtype and out.shape == (*shape[:-2], n, n)
        assert rel_err(out, ref(A.double())) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(70, 70), (2, 33, 33), (3, 64, 64)])
def test_ba_plus_caa_matches_torch(shape, dtype):
    S = symmetric(*shape, dtype=dtype)
    out = T.ba_plus_caa_triton(S, B, C, **SMALL_TILES)
    assert out.dtype == dtype and out.shape == shape
    assert rel_err(out, T.ba_plus_caa_torch(S.double(), B, C)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_symmetric_products_with_record_tiles(dtype):
    check_products(torch.randn(130, 150, dtype=dtype), symmetric(2, 130, 130, dtype=dtype), {})


def test_symmetric_products_read_strided_inputs():
    A = torch.randn(3, 90, 40, dtype=torch.bfloat16).mT  # (3, 40, 90), not contiguous
    S = symmetric(2, 100, 100, dtype=torch.bfloat16)[:, 10:80, 10:80]  # rows longer than the matrix
    check_products(A, S, SMALL_TILES)


def test_mirrored_blocks_are_exact_transposes():
    G = T.xxt_triton(torch.randn(96, 40, dtype=torch.bfloat16), **SMALL_TILES).float()
    blocks = G.unflatten(0, (3, 32)).unflatten(2, (3, 32))  # (3, 32, 3, 32): [i, :, j, :] is block (i, j)
    for i in range(3):
        for j in range(i + 1, 3):
            assert torch.equal(blocks[j, :, i, :], blocks[i, :, j, :].T)


def test_ba_plus_caa_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        T.ba_plus_caa_triton(torch.randn(3, 4), 1.0, 1.0)


TRANSPOSE_DTYPES = [(torch.bfloat16, torch.float32), (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)]


def check_transposes(src: torch.Tensor, dst_dtype: torch.dtype):
    dst = torch.full(src.shape[::-1], float("nan"), dtype=dst_dtype, device=src.device)
    T.transpose_copy_triton(src, dst)
    assert torch.equal(dst, src.T.to(dst_dtype))
    dst = torch.randn(src.shape[::-1], dtype=dst_dtype, device=src.device)
    ref = dst.clone()
    T.transpose_add_torch(src, ref)
    T.transpose_add_triton(src, dst)
    assert rel_err(dst, ref) < (1e-6 if dst_dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("src_dtype,dst_dtype", TRANSPOSE_DTYPES)
@pytest.mark.parametrize("shape", [(130, 70), (64, 128), (1, 200)])
def test_transpose_copy_and_add_match_torch(shape, src_dtype, dst_dtype):
    check_transposes(torch.randn(shape, dtype=src_dtype), dst_dtype)


def test_transpose_reads_strided_source():
    check_transposes(torch.randn(100, 90, dtype=torch.bfloat16)[5:, :70], torch.float32)


def test_transpose_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="dst"):
        T.transpose_copy_triton(torch.randn(4, 6), torch.empty(4, 6))


def test_dispatchers_use_torch_definitions_on_cpu():
    A, S = torch.randn(2, 5, 7), symmetric(5, 5, dtype=torch.float32)
    assert torch.equal(T.xxt(A), T.xxt_torch(A)) and torch.equal(T.xtx(A), T.xtx_torch(A))
    assert torch.equal(T.ba_plus_caa(S, 2.0, -1.0), T.ba_plus_caa_torch(S, 2.0, -1.0))
    dst, ref = torch.zeros(7, 5), torch.zeros(7, 5)
    T.transpose_add(A[0], dst), T.transpose_add_torch(A[0], ref)
    assert torch.equal(dst, ref)


# Record shapes: attention (768, 768) batched over layers and heads, MLP (768, 3072) wide and (3072, 768) tall.
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(768, 768), (768, 3072), (3072, 768), (24, 768, 768)])
def test_symmetric_products_match_torch_on_gpu(shape, dtype):
    A = torch.randn(shape, dtype=dtype, device="cuda")
    assert rel_err(T.xxt(A), T.xxt_torch(A.double())) < TOL[dtype]
    assert rel_err(T.xtx(A), T.xtx_torch(A.double())) < TOL[dtype]
    S = T.xxt(A) / shape[-1]  # a symmetric input of the kind polar express feeds ba_plus_caa
    assert rel_err(T.ba_plus_caa(S, B, C), T.ba_plus_caa_torch(S.double(), B, C)) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("src_dtype,dst_dtype", TRANSPOSE_DTYPES)
def test_transposes_match_torch_on_gpu(src_dtype, dst_dtype):
    check_transposes(torch.randn(50304, 768, dtype=src_dtype, device="cuda"), dst_dtype)


TANH_15 = T.LogitCap.parse("tanh:15")


def check_softcap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, cap: T.LogitCap = TANH_15,
                                fast_tanh: bool = False, loss_tol: float = 1e-4, op=None, weights=None):
    """Loss and gradient of the Triton pair against autograd through the torch definition, in fp64. weights=None
    is the next-token loss, weight 1 on one target ahead for the kernels."""
    x = logits.clone().requires_grad_()
    kernel_weights = torch.ones(1, device=logits.device) if weights is None else weights
    loss = (op or T.softcap_cross_entropy_triton)(x, targets, kernel_weights, *cap, fast_tanh)[0]
    (3.0 * loss).backward()  # a non-unit upstream gradient
    ref_x = logits.double().requires_grad_()
    ref = T.softcap_cross_entropy_torch(ref_x, targets, cap, weights)
    (3.0 * ref).backward()
    assert abs(loss.item() - ref.item()) < loss_tol * abs(ref.item())
    assert x.grad.dtype == logits.dtype and x.grad.shape == logits.shape
    assert rel_err(x.grad, ref_x.grad) < TOL[logits.dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_softcap_cross_entropy_matches_torch(dtype, monkeypatch):
    monkeypatch.setattr(T, "CE_BLOCK_V", 64)  # 300 = 4 full blocks and a ragged one
    logits = (torch.randn(37, 300) * 20).to(dtype)  # large logits: the cap matters
    check_softcap_cross_entropy(logits, torch.randint(0, 300, (37,)))


MTP_WEIGHTS = {1: [0.7], 2: [1.0, 0.5], 3: [1.0, 0.5, 0.25]}  # distinct weights: a swapped pair shows


def repeating_targets(T: int, V: int, seed: int) -> torch.Tensor:
    """Random targets with a run of three equal ones, so two targets ahead of one row hit the same column."""
    targets = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(seed))
    targets[5:8] = targets[5]
    return targets


def test_multi_token_cross_entropy_reference_is_the_sum_of_shifted_losses():
    """The torch definition against the loss written one shift at a time: row t, target t + k, the last k rows of
    shift k dropped, each weighted, summed and divided by T; and weight 1 on one target is the next-token loss."""
    logits, targets = torch.randn(23, 40, dtype=torch.float64) * 20, repeating_targets(23, 40, seed=1)
    z = T.softcap(logits.float(), TANH_15)
    weights = torch.tensor(MTP_WEIGHTS[3])
    shifted = sum(w * F.cross_entropy(z[:23 - k], targets[k:], reduction="sum") for k, w in enumerate(weights))
    torch.testing.assert_close(T.softcap_cross_entropy_torch(logits, targets, TANH_15, weights), shifted / 23)
    torch.testing.assert_close(T.softcap_cross_entropy_torch(logits, targets, TANH_15, torch.ones(1)),
                               T.softcap_cross_entropy_torch(logits, targets, TANH_15))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_multi_token_cross_entropy_matches_torch(k, dtype, monkeypatch):
    """k weighted targets ahead, forward and gradient; the last k - 1 rows reach past the end of the sequence."""
    monkeypatch.setattr(T, "CE_BLOCK_V", 64)
    logits = (torch.randn(37, 300) * 20).to(dtype)
    check_softcap_cross_entropy(logits, repeating_targets(37, 300, seed=k), weights=torch.tensor(MTP_WEIGHTS[k]),
                                cap=T.LogitCap.parse("sigmoid:23,5,7.5"))


def test_zero_weights_ahead_leave_the_next_token_loss_bit_for_bit(monkeypatch):
    """Weights (1, 0, 0), the record schedule's last stage padded to three targets, give exactly the loss and
    gradient of weight 1 on one target, which the kernels compute with products by 1.0 (exact): the plain loss."""
    monkeypatch.setattr(T, "CE_BLOCK_V", 64)
    logits, targets = torch.randn(29, 130) * 20, repeating_targets(29, 130, seed=4)
    results = []
    for weights in ([1.0], [1.0, 0.0, 0.0]):
        x = logits.clone().requires_grad_()
        loss = T.softcap_cross_entropy_triton(x, targets, torch.tensor(weights), *TANH_15, False)[0]
        loss.backward()
        results.append((loss.detach(), x.grad))
    (loss_1, grad_1), (loss_3, grad_3) = results
    assert torch.equal(loss_1, loss_3) and torch.equal(grad_1, grad_3)


def test_new_multi_token_weights_do_not_recompile(monkeypatch):
    """The weights reach the op as a tensor: new values each step reuse the one compiled graph."""
    from torch._dynamo.testing import CompileCounterWithBackend
    monkeypatch.setattr(T, "CE_BLOCK_V", 64)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda *a: T.softcap_cross_entropy_triton(*a)[0], backend=counter, dynamic=False)
    logits, targets = torch.randn(9, 70), torch.randint(0, 70, (9,))
    losses = [compiled(logits, targets, torch.tensor([1.0, w]), *TANH_15, False) for w in (0.5, 0.25, 0.0)]
    assert counter.frame_count == 1
    assert losses[0] > losses[1] > losses[2]  # the new weights were used, not a stale constant


def test_sigmoid_logit_cap_is_upstreams_rescale_and_the_kernels_match_it(monkeypatch):
    """'sigmoid:23,5,7.5' is 23·σ((l + 5) / 7.5), written here with torch.sigmoid, and the kernels agree."""
    cap = T.LogitCap.parse("sigmoid:23,5,7.5")
    logits = torch.randn(6, 40, dtype=torch.float64) * 20
    torch.testing.assert_close(T.softcap(logits, cap), 23 * torch.sigmoid((logits + 5) / 7.5))
    monkeypatch.setattr(T, "CE_BLOCK_V", 16)
    check_softcap_cross_entropy((torch.randn(21, 70) * 20), torch.randint(0, 70, (21,)), cap=cap)
    assert T.LogitCap.parse("tanh:15") == (0.0, 15.0, 15.0, 0.0)
    for bad in ("tanh", "tanh:0", "sigmoid:23,5", "cosh:3", "tanh:x"):
        with pytest.raises(ValueError):
            T.LogitCap.parse(bad)


def test_softcap_cross_entropy_traces_under_torch_compile_without_a_graph_break(monkeypatch):
    """The op's fake and autograd registrations: one whole graph calls it and its backward, same numbers."""
    monkeypatch.setattr(T, "CE_BLOCK_V", 64)
    compiled = torch.compile(lambda *a: [x * 1.0 for x in T.softcap_cross_entropy_triton(*a)], backend="aot_eager",
                             fullgraph=True)
    check_softcap_cross_entropy(torch.randn(19, 130) * 20, torch.randint(0, 130, (19,)), op=compiled)


def test_softcap_cross_entropy_rejects_a_cap_that_could_overflow(monkeypatch):
    monkeypatch.setattr(T, "on_gpu", lambda x: True)
    with pytest.raises(ValueError, match="logits up to 100.0 > 60"):
        T.softcap_cross_entropy(torch.randn(2, 8), torch.zeros(2, dtype=torch.long), T.LogitCap.parse("tanh:100"))


@pytest.mark.gpu
@pytest.mark.parametrize("fast_tanh", [False, True])
def test_softcap_cross_entropy_matches_torch_on_gpu(fast_tanh):
    logits = (torch.randn(4096, 50304, device="cuda") * 10).bfloat16()
    # the tanh instruction's ~2^-11 relative error moves each capped logit by up to ~0.01 of 15
    check_softcap_cross_entropy(logits, torch.randint(0, 50304, (4096,), device="cuda"), fast_tanh=fast_tanh,
                                loss_tol=1e-3 if fast_tanh else 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("fast_tanh", [False, True])
def test_multi_token_cross_entropy_matches_torch_on_gpu(fast_tanh):
    """Three weighted targets ahead at the record shape, the record's cap, on CUDA."""
    logits = (torch.randn(4096, 50304, device="cuda") * 10).bfloat16()
    check_softcap_cross_entropy(logits, repeating_targets(4096, 50304, seed=0).cuda(), fast_tanh=fast_tanh,
                                loss_tol=1e-3 if fast_tanh else 1e-4, cap=T.LogitCap.parse("sigmoid:23,5,7.5"),
                                weights=torch.tensor(MTP_WEIGHTS[3], device="cuda"))


def test_softcap_cross_entropy_is_exact_when_evaluating(monkeypatch):
    """The dispatcher takes the tanh instruction only for CUDA logits under autograd: never for evaluation."""
    seen = []
    monkeypatch.setattr(T, "softcap_cross_entropy_triton", lambda *args: seen.append(args[-1]) or (0.0, None))
    targets = torch.zeros(4, dtype=torch.long)
    for cuda in (True, False):
        monkeypatch.setattr(T, "on_gpu", lambda x: cuda)
        T.softcap_cross_entropy(torch.randn(4, 8), targets, TANH_15)
        with torch.no_grad():
            T.softcap_cross_entropy(torch.randn(4, 8), targets, TANH_15)
    assert seen == [True, False]  # on CPU the torch definition runs


def test_dispatcher_hands_the_multi_token_weights_to_the_kernels(monkeypatch):
    """On CUDA the given weights reach the op; no weights is weight 1 on one target, the next-token loss."""
    seen = []
    monkeypatch.setattr(T, "softcap_cross_entropy_triton", lambda *args: seen.append(args[2]) or (0.0, None))
    monkeypatch.setattr(T, "on_gpu", lambda x: True)
    weights = torch.tensor([1.0, 0.5])
    T.softcap_cross_entropy(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), TANH_15, weights)
    T.softcap_cross_entropy(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), TANH_15)
    assert seen[0] is weights and torch.equal(seen[1], torch.ones(1))


RELU_SQ_SMALL_TILES = {"forward": (16, 32, 16, 4, 2), "backward": (32, 16, 16, 4, 2)}  # several blocks, ragged edges


def check_relu_sq_mlp(x: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor, mlp=None):
    """Output and the three gradients of the fused op against autograd through the torch definition, in fp64."""
    inputs = [t.clone().requires_grad_() for t in (x, fc, proj)]
    y = (mlp or (lambda *a: T.relu_sq_mlp_triton(*a)[0]))(*inputs)
    dy = torch.randn_like(y)
    y.backward(dy)
    ref = [t.double().requires_grad_() for t in (x, fc, proj)]
    y_ref = T.relu_sq_mlp_torch(*ref)
    y_ref.backward(dy.double())
    assert y.dtype == x.dtype and rel_err(y, y_ref) < TOL[x.dtype]
    for got, want in zip(inputs, ref):
        assert got.grad.dtype == got.dtype and rel_err(got.grad, want.grad) < TOL[x.dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_sq_mlp_matches_torch(dtype, monkeypatch):
    monkeypatch.setattr(T, "RELU_SQ_MATMUL_CONFIGS", RELU_SQ_SMALL_TILES)
    check_relu_sq_mlp(*(torch.randn(shape).to(dtype) for shape in [(50, 40), (72, 40), (40, 72)]))


def test_relu_sq_mlp_traces_under_torch_compile(monkeypatch):
    """The op's fake and autograd registrations: the compiled graph calls it and its backward, same numbers."""
    monkeypatch.setattr(T, "RELU_SQ_MATMUL_CONFIGS", RELU_SQ_SMALL_TILES)
    compiled = torch.compile(lambda *a: T.relu_sq_mlp_triton(*a)[0] * 1.0, backend="aot_eager", fullgraph=True)
    check_relu_sq_mlp(*(torch.randn(shape) for shape in [(33, 16), (48, 16), (16, 48)]), mlp=compiled)


def test_relu_sq_matmul_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"relu_sq_matmul: shapes \(4, 8\) x \(6, 3\)"):
        T.relu_sq_matmul_triton(torch.randn(4, 8), torch.randn(6, 3))


def test_relu_sq_matmul_rejects_rows_tma_cannot_copy():
    with pytest.raises(ValueError, match=r"relu_sq_matmul: a \(4, 6\) torch.float32 has rows of 24 bytes"):
        T.relu_sq_matmul_triton(torch.randn(4, 6), torch.randn(6, 8))


def check_relu_sq_matmul(a: torch.Tensor, b: torch.Tensor, h: torch.Tensor, config=None):
    """Both epilogues of the kernel against their torch definitions, fp32."""
    assert rel_err(T.relu_sq_matmul_triton(a, b, config=config), T.relu_sq_matmul_torch(a, b)) < 1e-5
    assert rel_err(T.relu_sq_matmul_triton(a, b, h, config=config), T.relu_sq_matmul_torch(a, b, h)) < 1e-5


def test_relu_sq_matmul_covers_every_tile_when_the_last_row_group_is_short():
    """13 row blocks in groups of 8: the second group holds only 5, so the group height must be clamped."""
    check_relu_sq_matmul(torch.randn(200, 16), torch.randn(16, 40), torch.rand(200, 40), config=(16, 32, 16, 4, 2))


def test_relu_sq_matmul_reads_strided_inputs(monkeypatch):
    """Inputs TMA cannot tile in place (a column slice, a transposed activation) give the contiguous result."""
    monkeypatch.setattr(T, "RELU_SQ_MATMUL_CONFIGS", RELU_SQ_SMALL_TILES)
    a, b, h = torch.randn(80, 40)[:, ::2], torch.randn(20, 36), torch.rand(36, 80).T
    assert not a.is_contiguous() and not h.is_contiguous()
    check_relu_sq_matmul(a, b, h)


@pytest.mark.gpu
def test_relu_sq_mlp_matches_torch_on_gpu():
    x, fc, proj = (torch.randn(shape, device="cuda").bfloat16() for shape in [(4096, 768), (3072, 768), (768, 3072)])
    check_relu_sq_mlp(x, fc * 0.05, proj * 0.05)


def test_mlp_module_takes_the_fused_op_when_asked(monkeypatch):
    """MLP(fused=True) on a GPU tensor (stood in for by on_gpu -> True) runs the fused op on its (B·T, D) view and
    gives the unfused module's output and weight gradients."""
    monkeypatch.setattr(T, "RELU_SQ_MATMUL_CONFIGS", RELU_SQ_SMALL_TILES)
    calls = []
    fused_op = T.relu_sq_mlp_triton
    monkeypatch.setattr(T, "relu_sq_mlp_triton", lambda *a: calls.append(a[0].shape) or fused_op(*a))
    monkeypatch.setattr(T, "on_gpu", lambda x: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(multi_processor_count=4))
    torch.manual_seed(0)
    plain, fused = T.MLP(16, 64, fused=False), T.MLP(16, 64, fused=True)
    plain.proj.data.normal_()  # zero at init, which would hide the fc gradient
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, 16)
    out = [m(x) for m in (plain, fused)]
    for o in out:
        o.square().sum().backward()
    assert calls == [(18, 16)]
    assert rel_err(out[1], out[0]) < 1e-5
    for name in ("fc", "proj"):
        assert rel_err(getattr(fused, name).grad, getattr(plain, name).grad) < 1e-5


def test_mlp_module_runs_fp8_only_while_autograd_records(monkeypatch):
    """MLP(fp8=True) trains through relu_sq_mlp_fp8 of the (B·T, D) view and the fp32 parameters, within the FP8
    rounding of the bf16 MLP; under no_grad (validation) it is the bf16 MLP, exactly."""
    monkeypatch.setattr(T, "RELU_SQ_MATMUL_CONFIGS", dict(RELU_SQ_SMALL_TILES, fp8=(16, 32, 16, 4, 2)))
    calls, fp8_mlp = [], T.relu_sq_mlp_fp8
    monkeypatch.setattr(T, "relu_sq_mlp_fp8", lambda x, fc, proj: calls.append((x.shape, fc.dtype, proj.dtype))
                        or fp8_mlp(x, fc, proj))
    torch.manual_seed(0)
    plain, fp8 = T.MLP(32, 64, fused=False), T.MLP(32, 64, fused=True, fp8=True)
    plain.proj.data.normal_(0, 0.05)
    fp8.load_state_dict(plain.state_dict())
    x = F.rms_norm(torch.randn(2, 8, 32), (32,)).bfloat16()
    with torch.no_grad():
        assert torch.equal(fp8(x), plain(x)) and calls == []
    out = fp8(x)
    assert calls == [((16, 32), torch.float32, torch.float32)] and out.shape == x.shape
    assert 0.005 < rel_err(out, plain(x)) < 0.1


def test_relu_sq_matmul_multiplies_fp8_operands_then_scales():
    """FP8 operands (b the transpose of a K-major matrix, as Hopper's FP8 MMA reads it) and the scale multiplying
    the fp32 product before the activation: bf16 out, within its rounding of the definition (which Triton's
    interpreter truncates: up to 2^-7 relative, where the GPU rounds to nearest)."""
    g = torch.Generator().manual_seed(0)
    a, b = ((torch.randn(shape, generator=g) * 8).to(torch.float8_e4m3fn) for shape in [(200, 48), (48, 48)])
    scale = torch.tensor(0.01)
    got = T.relu_sq_matmul_triton(a, b.T, config=(16, 32, 16, 4, 2), scale=scale)
    assert got.dtype == torch.bfloat16
    want = F.relu(a.double() @ b.double().T * 0.01).square()
    assert rel_err(got, want) < 8e-3 and rel_err(got, want * 1.1**2) > 0.05
    q_scale = torch.tensor(want.max().item() / 448 / 2)  # the top half of the values saturate
    got_again, q = T.relu_sq_matmul_triton(a, b.T, config=(16, 32, 16, 4, 2), scale=scale, fp8_out_scale=q_scale)
    assert torch.equal(got_again, got) and q.dtype == torch.float8_e4m3fn
    want_q = T.fp8_dequantize((want / q_scale.item()).clamp(max=448), 1.0, torch.float8_e4m3fn)
    assert q.float().max() == 448 and rel_err(q.float(), want_q) < 1e-6


def test_relu_sq_matmul_refuses_fp8_b_that_is_not_k_major():
    a, b = torch.zeros(32, 16, dtype=torch.float8_e4m3fn), torch.zeros(16, 32, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"relu_sq_matmul: FP8 runs the forward only, on a torch.float8_e4m3fn and "
                                         r"the transpose of an \(N, K\) matrix"):
        T.relu_sq_matmul_triton(a, b, scale=torch.tensor(1.0))


def fp8_mlp_inputs(t: int, d: int, hidden: int, device="cpu"):
    """x rms-normed in bf16 (T, D); fc (H, D) and proj (D, H) fp32 parameters of the sizes training gives them."""
    g = torch.Generator().manual_seed(0)
    x = F.rms_norm(torch.randn(t, d, generator=g), (d,)).bfloat16()
    return x.to(device), (torch.randn(hidden, d, generator=g) * 0.05).to(device), \
        (torch.randn(d, hidden, generator=g) * 0.05).to(device)


def check_fp8_mlp(x, fc, proj, mlp=T.relu_sq_mlp_fp8, tol: float = 1e-2):
    """The FP8 MLP's output against its definition in fp64, each FP8 operand rounded on the grid of its scale:
    h = relu(x̂·f̂cᵀ)² (x on sqrt(D)/448, fc on its largest entry / 448), then ĥ·p̂rojᵀ (h on D·max_j |fc_j|² / 448,
    proj on its largest entry / 448); and its gradients against the bf16 MLP's backward at x, fc and proj (not
    their FP8 copies) with that h."""
    e4m3 = torch.float8_e4m3fn
    inputs = [t.clone().requires_grad_() for t in (x, fc, proj)]
    y = mlp(*inputs)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    y.backward(dy)
    x64, fc64, proj64, dy64 = (t.double() for t in (x, fc, proj, dy))
    xq = T.fp8_dequantize(x, x.size(1) ** 0.5 / 448, e4m3).double()
    fcq = T.fp8_dequantize(fc, fc.abs().max().item() / 448, e4m3).double()
    h = F.relu(xq @ fcq.T).square()
    hq = T.fp8_dequantize(h, x.size(1) * fc64.square().sum(1).max().item() / 448, e4m3)
    projq = T.fp8_dequantize(proj, proj.abs().max().item() / 448, e4m3)
    dpre = (dy64 @ proj64) * 2 * h.sqrt()
    assert y.dtype == x.dtype and rel_err(y, hq @ projq.T) < tol
    for got, want in zip(inputs, (dpre @ fc64, dpre.T @ x64, dy64.T @ h)):
        assert got.grad.dtype == got.dtype and rel_err(got.grad, want) < tol


def test_relu_sq_mlp_fp8_matches_its_definition(monkeypatch):
    monkeypatch.setattr(T, "RELU_SQ_MATMUL_CONFIGS", dict(RELU_SQ_SMALL_TILES, fp8=(16, 32, 16, 4, 2)))
    check_fp8_mlp(*fp8_mlp_inputs(48, 32, 80))


def test_relu_sq_mlp_fp8_traces_under_torch_compile(monkeypatch):
    monkeypatch.setattr(T, "RELU_SQ_MATMUL_CONFIGS", dict(RELU_SQ_SMALL_TILES, fp8=(16, 32, 16, 4, 2)))
    compiled = torch.compile(lambda *a: T.relu_sq_mlp_fp8(*a) * 1.0, backend="aot_eager", fullgraph=True)
    check_fp8_mlp(*fp8_mlp_inputs(48, 32, 80), mlp=compiled)


def test_relu_sq_mlp_fp8_clips_an_input_that_is_not_normed(monkeypatch):
    """x's fixed scale assumes rms-normed rows; a larger entry saturates at 448 instead of becoming NaN. (torch 2.13's
    CPU cast to e4m3 saturates by itself; c10's scalar conversion, used elsewhere, gives NaN from 480 up.)"""
    monkeypatch.setattr(T, "RELU_SQ_MATMUL_CONFIGS", dict(RELU_SQ_SMALL_TILES, fp8=(16, 32, 16, 4, 2)))
    x, fc, proj = fp8_mlp_inputs(48, 32, 80)
    assert torch.isfinite(T.relu_sq_mlp_fp8(x * 10, fc, proj)).all()


@pytest.mark.gpu
def test_relu_sq_mlp_fp8_matches_its_definition_on_gpu():
    """At the record's MLP shape on FP8 tensor cores."""
    check_fp8_mlp(*fp8_mlp_inputs(4096, 768, 3072, device="cuda"))


@pytest.mark.gpu
def test_relu_sq_matmul_fp8_copy_rounds_as_torch_on_gpu():
    """At the record's micro-step shape: the e4m3 copy of the activation is torch's rounding (to nearest even, after
    saturating) of the activation divided by the scale. Hopper's FP8 MMA accumulates with fewer bits than fp32
    (Triton's default for FP8 on sm90, as _scaled_mm's fast accumulation), so the values that lie that close to a
    rounding boundary (0.76% here, session 11; near zero a few codes apart) land elsewhere."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a, b = ((torch.randn(shape, device="cuda", generator=g) * 16).to(torch.float8_e4m3fn)
            for shape in [(49152, 768), (3072, 768)])
    scale, q_scale = torch.tensor(1e-3, device="cuda"), torch.tensor(1.0, device="cuda")  # h ~ 50, up to ~1e3
    h, q = T.relu_sq_matmul_triton(a, b.T, scale=scale, fp8_out_scale=q_scale)
    want = F.relu((a.float() @ b.float().T) * scale).square()
    assert rel_err(h, want) < 4e-3
    assert (want > 448).any()  # some saturate
    want_q = (want / q_scale).clamp(max=448).to(torch.float8_e4m3fn)
    assert (q.view(torch.uint8) != want_q.view(torch.uint8)).float().mean().item() < 2e-2
    assert rel_err(q.float(), want_q.float()) < 1e-2


def head_inputs(n: int, k: int, m: int, dtype=torch.float32, device="cpu", seed=0):
    """An LM head's tensors at their training scales: x rms-normed (T, K), w (K, N) of std 0.05, and the logits'
    gradient of a mean loss over T tokens, about 0.77 / T at most per token -> (x, w, grad, the head's scales)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.rms_norm(torch.randn(n, k, generator=g), (k,)).to(device, dtype)
    w = (torch.randn(k, m, generator=g) * 0.05).to(device)
    grad = (torch.randn(n, m, generator=g) * 0.77 / n).to(device, dtype)
    return x, w, grad, (T.FP8_HEAD_X_SCALE, T.FP8_HEAD_W_SCALE, T.FP8_HEAD_GRAD_SCALE / n)


def test_fp8_matmul_definition_is_the_product_within_fp8_rounding():
    """e4m3's 3 mantissa bits round each input by ~2.6% RMS, so the product is off by ~3.7%; e5m2's 2 bits round the
    gradient by ~5.2%, so its products are off by ~5.9%. A window on each: no rounding, the wrong format or a
    missing scale all fall outside it."""
    x, w, grad, scales = head_inputs(256, 64, 384)
    assert 0.03 < rel_err(T.fp8_matmul_torch(x, w, *scales[:2]), x.double() @ w.double()) < 0.045
    dx, dw = T.fp8_matmul_backward_torch(grad, x, w, *scales)
    assert 0.05 < rel_err(dx, grad.double() @ w.double().T) < 0.07
    assert 0.05 < rel_err(dw, x.double().T @ grad.double()) < 0.07


SIGMOID_CAP = T.LogitCap.parse("sigmoid:23,5,7.5")


def test_softcap_cross_entropy_gradient_written_out_is_autograds():
    """The FP8 head's backward computes the logits' gradient itself; its definition, against autograd through the
    loss, with three weighted targets ahead (two past the end for the last rows) and a loss gradient not 1."""
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(40, 30, generator=g) * 4).double()
    targets, weights = torch.randint(0, 30, (40,), generator=g), torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    leaf = logits.clone().requires_grad_()
    T.softcap_cross_entropy_torch(leaf, targets, SIGMOID_CAP, weights).backward(torch.tensor(0.7, dtype=torch.float64))
    got = T.softcap_cross_entropy_grad_torch(torch.tensor(0.7), logits, targets, weights, SIGMOID_CAP)
    assert got.dtype == torch.float32 and rel_err(got, leaf.grad) < 1e-6


def head_reference(x, w, targets, weights, scales):
    """The FP8 head's loss and (dx, dw) by the torch definitions: the capped cross-entropy of the FP8 product, and
    the logits' fp32 gradient of a unit loss gradient through fp8_matmul_backward_torch, which rounds it once."""
    x_scale, w_scale, grad_scale = scales
    logits = T.fp8_matmul_torch(x, w, x_scale, w_scale)
    grad = T.softcap_cross_entropy_grad_torch(torch.ones(()), logits, targets, weights, SIGMOID_CAP)
    return (T.softcap_cross_entropy_torch(logits, targets, SIGMOID_CAP, weights),
            T.fp8_matmul_backward_torch(grad, x, w, x_scale, w_scale, grad_scale))


def check_fp8_head(x, w, scales, tol: float, op=T.fp8_head_cross_entropy):
    """Loss and gradients of the op, through autograd, against head_reference, with multi-token weights."""
    targets = torch.randint(0, w.size(1), (x.size(0),), generator=torch.Generator().manual_seed(1)).to(x.device)
    weights = torch.tensor([1.0, 0.5, 0.25], device=x.device)
    inputs = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    loss = op(*inputs, targets, SIGMOID_CAP, weights, *scales)
    loss.backward()
    want_loss, want_grads = head_reference(x, w, targets, weights, scales)
    assert loss.dtype == torch.float32 and abs(loss.item() - want_loss.item()) < tol * want_loss.item()
    for got, want in zip(inputs, want_grads):
        assert got.grad.dtype == got.dtype and rel_err(got.grad, want) < tol


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 4e-3)])
def test_fp8_head_matches_its_definition(dtype, tol):
    """torch._scaled_mm runs on CPU too: the op's rounding, scales, transposes and gradient routing, to fp32
    accumulation order (and the bf16 rounding of the logits and dx)."""
    x, w, _, scales = head_inputs(48, 32, 80, dtype)
    check_fp8_head(x, w, scales, tol=tol)


def test_fp8_head_without_weights_is_the_next_token_loss():
    """weights=None, the record's loss once multi-token prediction has ended: the plain next-token cross-entropy
    (F.cross_entropy of the capped FP8 product), which the kernels' path reaches as weight 1 on one target ahead."""
    x, w, _, scales = head_inputs(48, 32, 80)
    targets = torch.randint(0, 80, (48,), generator=torch.Generator().manual_seed(4))
    loss = T.fp8_head_cross_entropy(x, w, targets, SIGMOID_CAP, None, *scales)
    want = T.softcap_cross_entropy_torch(T.fp8_matmul_torch(x, w, *scales[:2]), targets, SIGMOID_CAP)
    assert abs(loss.item() - want.item()) < 1e-6 * want.item()


def test_fp8_head_hands_scaled_mm_the_layouts_cuda_needs(monkeypatch):
    """On CUDA _scaled_mm wants its first operand row-major, its second column-major, and never two e5m2 operands;
    the CPU accepts anything, so each call is checked here: operand formats and layouts, scales, accumulation."""
    calls, scaled_mm = [], torch._scaled_mm

    def recording(a, b, scale_a, scale_b, out_dtype, use_fast_accum):
        calls.append((a.dtype, b.dtype, a.stride() == (a.size(1), 1), b.stride() == (1, b.size(0)), scale_a.item(),
                      scale_b.item(), out_dtype, use_fast_accum))
        return scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype, use_fast_accum=use_fast_accum)

    monkeypatch.setattr(torch, "_scaled_mm", recording)
    x, w, _, (xs, ws, gs) = head_inputs(48, 32, 80, torch.bfloat16)
    check_fp8_head(x, w, (xs, ws, gs), tol=4e-3)
    e4m3, e5m2 = torch.float8_e4m3fn, torch.float8_e5m2
    f32 = lambda s: torch.tensor(s, dtype=torch.float32).item()
    assert calls == [(e4m3, e4m3, True, True, f32(xs), f32(ws), torch.bfloat16, True),  # x̂·ŵ
                     (e5m2, e4m3, True, True, f32(gs), f32(ws), torch.bfloat16, False),  # dx = ĝ·ŵᵀ
                     (e4m3, e5m2, True, True, f32(xs), f32(gs), torch.float32, False)]  # dw = x̂ᵀ·ĝ


def test_fp8_head_traces_under_torch_compile():
    """The op's fake and autograd registrations: one whole graph calls it and its backward, same numbers."""
    compiled = torch.compile(lambda *a: T.fp8_head_cross_entropy(*a) * 1.0, backend="aot_eager", fullgraph=True)
    x, w, _, scales = head_inputs(32, 16, 48)
    check_fp8_head(x, w, scales, tol=1e-6, op=compiled)


@pytest.mark.parametrize("K", [1, 3])
def test_fp8_gradient_kernel_writes_the_rounded_gradient_in_both_layouts(K):
    """The FP8 head's backward kernel against the written-out gradient: multi-token weights with targets past the
    end, the scale, ragged tiles in both dimensions, the transposed copy bit for bit; rows not a multiple of 4 (four
    to a transposed word) are refused. Triton's interpreter rounds to FP8 as torch does, except where rounding up
    carries into the next power of two: it keeps the old exponent and gives half the value. Only those may differ
    from torch's rounding here; the GPU test checks the rounding on the device."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(72, 150, generator=g) * 3).bfloat16()
    targets, weights = torch.randint(0, 150, (72,), generator=g), torch.tensor([1.0, 0.5, 0.25][:K])
    lse = T.softcap(logits.float(), SIGMOID_CAP).logsumexp(-1)
    grad_scale = T.FP8_HEAD_GRAD_SCALE / 72
    g8, g8t = T.softcap_ce_fp8_grad_triton(torch.tensor(0.8), logits, targets, weights, lse, SIGMOID_CAP, grad_scale,
                                           fast_tanh=False, tile=(16, 64, 4))
    want = T.softcap_cross_entropy_grad_torch(torch.tensor(0.8), logits, targets, weights, SIGMOID_CAP)
    assert g8.dtype == g8t.dtype == torch.float8_e5m2 and g8.shape == (72, 150) and g8t.shape == (150, 72)
    assert g8.is_contiguous() and g8t.is_contiguous()
    assert torch.equal(g8t.view(torch.uint8), g8.T.contiguous().view(torch.uint8))
    got, rounded = g8.float(), T.fp8_quantize_torch(want, grad_scale, torch.float8_e5m2).float()
    carried = (got == rounded / 2) & (torch.frexp(rounded).mantissa.abs() == 0.5)
    assert torch.all((got == rounded) | carried) and carried.float().mean() < 0.1
    with pytest.raises(ValueError, match="not a multiple of 4"):
        T.softcap_ce_fp8_grad_triton(torch.tensor(0.8), logits[:70], targets[:70], weights, lse[:70], SIGMOID_CAP,
                                     grad_scale, fast_tanh=False)


def test_byte_transpose_packs_four_rows_a_word():
    """Ragged tiles in both dimensions (68 rows: 17 words, tiles of 32 x 64), every byte value, bit for bit; rows
    not a multiple of 4 are refused."""
    x = torch.randint(0, 256, (68, 150), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    y = T.byte_transpose_triton(x.view(torch.float8_e5m2), block_m=32, block_n=64)
    assert y.dtype == torch.float8_e5m2 and y.is_contiguous() and torch.equal(y.view(torch.uint8), x.T)
    with pytest.raises(ValueError, match="multiple of 4"):
        T.byte_transpose_triton(x[:66])


@pytest.mark.gpu
def test_fp8_gradient_kernel_rounds_as_torch_on_gpu():
    """At the record's micro-step shape (T·V = 2.5e9: offsets past int32), exact tanh: the kernel's e5m2 bytes are
    torch's rounding of the written-out fp32 gradient, but for the few that lie within the two computations'
    rounding (exp, the reciprocal's product against a division) of a rounding boundary."""
    g = torch.Generator(device="cuda").manual_seed(0)
    T_, V = 49152, 50304
    logits = (torch.randn(T_, V, device="cuda", generator=g) * 3).bfloat16()
    targets = torch.randint(0, V, (T_,), device="cuda", generator=g)
    weights = torch.tensor([1.0, 0.5, 0.25], device="cuda")
    lse = T.softcap(logits.float(), SIGMOID_CAP).logsumexp(-1)
    grad_scale = T.FP8_HEAD_GRAD_SCALE / T_
    g8, g8t = T.softcap_ce_fp8_grad_triton(torch.tensor(1.0, device="cuda"), logits, targets, weights, lse,
                                           SIGMOID_CAP, grad_scale, fast_tanh=False)
    want = T.fp8_quantize_torch(T.softcap_cross_entropy_grad_torch(torch.tensor(1.0, device="cuda"), logits, targets,
                                                                   weights, SIGMOID_CAP), grad_scale, torch.float8_e5m2)
    differ = (g8.view(torch.uint8) != want.view(torch.uint8)).float().mean().item()
    assert differ < 1e-3, differ
    assert torch.equal(g8t.view(torch.uint8), g8.view(torch.uint8).T)


@pytest.mark.gpu
def test_fp8_head_matches_its_definition_on_gpu():
    """At the record's head shape on FP8 tensor cores; the forward accumulates with fewer bits (fast accumulation),
    the kernels use the approximate tanh and every output is bf16, hence 1e-2, still well under the ~4% the FP8
    rounding itself costs."""
    x, w, _, scales = head_inputs(4096, 768, 50304, torch.bfloat16, device="cuda")
    check_fp8_head(x, w, scales, tol=1e-2)


@pytest.mark.parametrize("src, scale", [(torch.float32, 0.37), (torch.bfloat16, 0.25)])
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_quantize_kernel_matches_torch_on_the_fp8_grid(src, scale, dtype):
    """Triton's interpreter rounds to FP8 only approximately, so here the values already lie on the grid (times the
    scale; a power of two for bf16, which holds them exactly): the kernel's indexing of a strided source, ragged
    edges, division by the scale and transposed copy. The rounding itself is checked on the GPU."""
    on_grid = (torch.randn(150, 68).to(dtype).float() * scale).to(src).T  # (68, 150), column-major
    y, yt = T.fp8_quantize_triton(on_grid, scale, dtype, transpose=True, block=32)
    want = T.fp8_quantize_torch(on_grid, scale, dtype)
    assert y.dtype == yt.dtype == dtype and y.is_contiguous() and yt.is_contiguous()
    assert torch.equal(y.view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(yt.view(torch.uint8), want.T.contiguous().view(torch.uint8))
    assert T.fp8_quantize_triton(on_grid, scale, dtype, transpose=False, block=32)[1] is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, scale", [(torch.float8_e4m3fn, T.FP8_HEAD_X_SCALE), (torch.float8_e5m2, 0.01)])
def test_fp8_quantize_matches_torch_on_gpu(dtype, scale):
    """The logits' gradient at the record's micro-step shape (T·V = 2.5e9 elements: offsets past int32), bit for
    bit: both divide exactly rounded and round to nearest even; no value reaches the top of the format, where the
    two differ."""
    t = torch.randn(49152, 50304, device="cuda", dtype=torch.bfloat16)
    y, yt = T.fp8_quantize(t, scale, dtype, transpose=True)
    want = T.fp8_quantize_torch(t, scale, dtype).view(torch.uint8)
    assert torch.equal(y.view(torch.uint8), want) and torch.equal(yt.view(torch.uint8), want.T)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_add_rows_adds_each_value_into_its_row_in_place_repeats_summed(index_dtype):
    total = torch.randn(6, 4)
    want = total.clone()
    rows = torch.tensor([1, 4, 1, 1, 0], dtype=index_dtype)
    values = torch.randn(5, 4).bfloat16()
    for i, row in enumerate(rows.tolist()):
        want[row] += values[i].float()
    storage = total.data_ptr()
    T.add_rows_(total, rows, values)
    assert total.data_ptr() == storage and total.dtype == torch.float32
    torch.testing.assert_close(total, want, rtol=0, atol=1e-6)


def test_add_rows_kernel_matches_torch():
    """Ragged edges in both dimensions; rows repeated within a block and across blocks; values a slice of wider rows."""
    g = torch.Generator().manual_seed(0)
    total = torch.randn(30, 40, generator=g)
    want = total.clone()
    rows = torch.cat([torch.full((21,), 3), torch.randint(0, 30, (50,), generator=g), torch.full((9,), 29)])
    rows = rows[torch.randperm(rows.numel(), generator=g)].int()
    values = torch.randn(80, 48, generator=g).bfloat16()[:, :40]
    T.add_rows_torch(want, rows, values)
    T.add_rows_triton(total, rows, values, block_t=16, block_d=32, warps=4)
    torch.testing.assert_close(total, want, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_add_rows_kernel_matches_torch_on_gpu():
    """The bigram table's shape and a micro-step's rows, drawn from a Zipf law as tokens are (the most frequent row
    ~10% of them), against index_add_ in fp64."""
    total = torch.randn(377_280, 768, device="cuda")
    weights = 1.0 / torch.arange(1, 50_001, device="cuda", dtype=torch.float64)
    rows = torch.multinomial(weights, 49152, replacement=True, generator=torch.Generator("cuda").manual_seed(0))
    values = torch.randn(49152, 768, device="cuda")
    want = total.double().index_add_(0, rows, values.double())
    T.add_rows_triton(total, rows.int(), values)
    assert ((total.double() - want).norm() / want.norm()).item() < 1e-6

