import pytest
import torch
import torch.nn as nn

from distributed import run_gloo
import train_gpt as T
from train_gpt import DistAdam, NorMuon, polar_express

SIM_RANKS = 2  # ranks whose gradients the single-process reference averages
STEPS, SAVE_AT, MICRO_STEPS = 5, 3, 2


def with_spectrum(shape, condition: float, seed: int) -> torch.Tensor:
    """A random (..., m, n) with singular values spread log-evenly over [1/condition, 1], times 7."""
    g = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    r = min(m, n)
    U = torch.linalg.qr(torch.randn(*batch, m, r, generator=g))[0]
    V = torch.linalg.qr(torch.randn(*batch, n, r, generator=g))[0]
    s = torch.logspace(-torch.log10(torch.tensor(condition)).item(), 0, r)
    return 7 * U @ torch.diag_embed(s.expand(*batch, r)) @ V.mT


@pytest.mark.parametrize("shape", [(4, 32, 32), (64, 16), (16, 64)])
def test_polar_express_maps_singular_values_into_band(shape):
    # Measured: 5 bf16 steps put every singular value in [0.85, 1.15] for condition numbers up to 300.
    G = with_spectrum(shape, 100.0, seed=1)
    X = polar_express(G)
    assert X.dtype == torch.bfloat16 and X.shape == G.shape
    s = torch.linalg.svdvals(X.float())
    assert s.min() > 0.8 and s.max() < 1.2
    raw = torch.linalg.svdvals(G / G.norm(dim=(-2, -1), keepdim=True))
    assert raw.max() < 0.8  # normalizing alone does not meet the band


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (2, 96, 32)])
def test_polar_express_orthogonalizes_random_rectangular_matrices(shape):
    s = torch.linalg.svdvals(polar_express(torch.randn(shape)).float())
    assert s.min() > 0.8 and s.max() < 1.2


def test_polar_express_tall_equals_transposed_wide():
    G = torch.randn(3, 64, 16)
    tall = polar_express(G).float()
    wide = polar_express(G.mT).mT.float()
    assert (tall - wide).abs().max() < 0.03  # bf16 noise: eps 2^-8, over 5 steps


def test_polar_express_returns_the_polar_factor():
    G = with_spectrum((64, 16), 10.0, seed=2)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cos = (polar_express(G).float() * (U @ Vh)).sum() / (U @ Vh).norm() ** 2
    assert cos > 0.95


def one_matrix_step(p0, grad, **group):
    p = nn.Parameter(p0.clone())
    p.grad = grad.clone()
    opt = NorMuon([dict(params=[p], **group)], lr=0.1, momentum=0.5, weight_decay=0.25)
    opt.step()
    return p.detach(), opt


def test_normuon_cautious_weight_decay_only_where_signs_agree():
    # A positive diagonal gradient has polar factor ~I (products of diagonals stay diagonal), so the update is
    # positive on the diagonal and zero elsewhere. Against the same step without decay, the decay is
    # wd·lr·(lr·lr_mul) = 0.25·0.1·0.3 of p where p is positive too, and nothing elsewhere.
    p0, grad = torch.tensor([[1.0, -2.0], [3.0, -4.0]]), torch.diag(torch.tensor([2.0, 5.0]))
    stepped = []
    for wd in (0.25, 0.0):
        p = nn.Parameter(p0.clone())
        p.grad = grad.clone()
        NorMuon([dict(params=[p], neuron_axis=-1, lr_mul=3.0)], lr=0.1, momentum=0.5, weight_decay=wd).step()
        stepped.append(p.detach())
    decay = stepped[1] - stepped[0]
    torch.testing.assert_close(decay, torch.tensor([[0.25 * 0.1 * 0.3 * 1.0, 0.0], [0.0, 0.0]]))
    assert stepped[1][0, 0] < 1.0 and stepped[1][1, 1] < -4.0  # the update itself moved the diagonal


def test_normuon_step_is_lr_times_lr_mul_whatever_the_shape():
    G = with_spectrum((64, 16), 10.0, seed=3)
    steps = {}
    for name, grad, lr_mul in [("tall", G, 1.0), ("wide", G.T, 1.0), ("wide_x3", G.T, 3.0)]:
        p, _ = one_matrix_step(torch.zeros(grad.shape), grad, neuron_axis=-1, lr_mul=lr_mul)
        steps[name] = p.norm().item()  # from zero params: no decay; the step is lr·lr_mul·u, ‖u‖_F = ‖U·Vᵀ‖_F
    assert steps["tall"] / steps["wide"] == pytest.approx(1.0, rel=0.02)  # no rule read off the shape
    assert steps["wide_x3"] / steps["wide"] == pytest.approx(3.0, rel=1e-5)
    assert steps["wide"] == pytest.approx(0.1 * polar_express(0.75 * G.T).float().norm().item(), rel=1e-3)


@pytest.mark.parametrize("axis, shape", [(-1, (64, 16)), (-2, (16, 64))])
def test_normuon_first_step_equalizes_neuron_norms_along_axis(axis, shape):
    # From zero state, the second moment is (1 - beta2)·mean(u²) per neuron, so every neuron's update gets
    # the same RMS. The shapes are chosen so the polar factor's neurons have unequal norms to begin with.
    G = with_spectrum(shape, 10.0, seed=4)
    orthogonal = polar_express(0.75 * G).float()  # momentum 0.5 from zero: Nesterov u = 0.75·g
    before = orthogonal.norm(dim=axis)
    assert before.std() / before.mean() > 0.05
    p, _ = one_matrix_step(torch.zeros(shape), G, neuron_axis=axis, lr_mul=1.0)
    after = p.norm(dim=axis)
    assert after.std() / after.mean() < 1e-3
    assert p.norm() == pytest.approx(0.1 * orthogonal.norm().item(), rel=1e-3)


def test_normuon_matches_plain_reference_over_steps():
    # The update written out for one matrix, with the schedule changing lr and momentum between steps.
    torch.manual_seed(5)
    p = nn.Parameter(torch.randn(2, 24, 8))
    want = p.detach().clone()
    opt = NorMuon([dict(params=[p], neuron_axis=-1, lr_mul=0.7)], lr=0.02, beta2=0.9, weight_decay=0.3)
    buf, v = torch.zeros_like(want), torch.zeros(2, 24, 1)
    for step in range(4):
        g = torch.randn_like(want)
        lr, momentum = 0.02 * (1 - 0.2 * step), 0.8 + 0.05 * step
        opt.param_groups[0].update(lr=lr, momentum=momentum)
        p.grad = g.clone()
        opt.step()
        buf = momentum * buf + (1 - momentum) * g
        u = polar_express((1 - momentum) * g + momentum * buf).float()
        v = 0.9 * v + 0.1 * (u ** 2).mean(dim=-1, keepdim=True)
        normalized = u / (v.sqrt() + 1e-10)
        normalized = normalized * u.norm(dim=(1, 2), keepdim=True) / normalized.norm(dim=(1, 2), keepdim=True)
        decay = 0.3 * lr * (lr * 0.7) * want * (normalized * want > 0)
        want = want - decay - lr * 0.7 * normalized
        torch.testing.assert_close(p.detach(), want, rtol=1e-4, atol=1e-5)


def test_distadam_matches_torch_adam_on_one_process():
    torch.manual_seed(6)
    p, q = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(5, 3))
    q.data.copy_(p.data)
    ours = DistAdam([dict(params=[p], lr=0.01, lr_mul=2.0)], betas=(0.8, 0.95), eps=1e-3)
    theirs = torch.optim.Adam([q], lr=0.02, betas=(0.8, 0.95), eps=1e-3)
    for _ in range(4):
        g = torch.randn(5, 3)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    # lr_mul scales the step: ours at lr 0.01 · lr_mul 2 is Adam at lr 0.02
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_distadam_decay_is_cautious_and_proportional_to_lr_squared():
    """One step from zero state: the update is lr·sign(g) (bias-corrected Adam's first step, eps 0); the decay is
    lr²·wd, and only where the update pulls the weight toward zero (g and p of one sign)."""
    p = nn.Parameter(torch.tensor([2.0, -2.0, 2.0, -2.0]))
    p.grad = torch.tensor([1.0, 1.0, -1.0, -1.0])
    DistAdam([dict(params=[p], lr=0.1, lr_mul=3.0, weight_decay=2.0, betas=(0.5, 0.9))], eps=0.0).step()
    lr = 0.3
    want = torch.tensor([2.0 - lr * lr * 2.0 * 2.0 - lr, -2.0 - lr, 2.0 + lr, -2.0 + lr * lr * 2.0 * 2.0 + lr])
    torch.testing.assert_close(p.detach(), want)


def adam_inputs(n: int, device: str = "cpu", seed: int = 0) -> tuple:
    """Flat fp32 weights, grad, moments of n elements, and a hyper row with weight decay on; half the weights
    positive, so the cautious mask takes both branches."""
    g = torch.Generator().manual_seed(seed)
    w, grad, m = (torch.randn(n, generator=g) for _ in range(3))
    v = torch.rand(n, generator=g) * 0.1
    hyper = torch.tensor([0.05, 0.8, 0.95, 1e-10, 5.0, 1 - 0.8 ** 3, 1 - 0.95 ** 3])
    return tuple(t.to(device) for t in (w, grad, m, v, hyper))


@pytest.mark.parametrize("n", [1, 1000, 1024, 3000])
def test_adam_kernel_matches_torch_update(n):
    """The Triton kernel (interpreted on CPU) against adam_update_torch: moments and weights, ragged last block."""
    ours, want = adam_inputs(n), adam_inputs(n)
    T.adam_update_triton(*ours, block=256)
    T.adam_update_torch(*want)
    for a, b in zip(ours[:4], want[:4]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours[0], adam_inputs(n)[0])  # the weights did move


def test_adam_kernel_refuses_a_non_contiguous_shard():
    w, grad, _, v, hyper = adam_inputs(64)
    strided = torch.zeros(64, 2)[:, 0]  # 64 elements, stride 2
    with pytest.raises(ValueError, match=r"exp_avg must be contiguous fp32 of 64 elements, .* strides \(2,\)"):
        T.adam_update_triton(w, grad, strided, v, hyper)


@pytest.mark.gpu
def test_adam_kernel_matches_torch_update_on_gpu():
    """At a size past 2^28 elements, as the bigram table's shard, and on the GPU's own rounding. The kernel rounds
    beta1·m + (1 - beta1)·g once (a fused multiply-add), torch twice: where that first moment is within rounding of
    zero, its sign, and with it the cautious mask, may differ, and the weight then by lr²·wd·|w| (2 of 3e8 elements
    in the first run on an H200). Only there may the two disagree."""
    ours, want = adam_inputs(300_000_001, "cuda"), adam_inputs(300_000_001, "cuda")
    m_exact = 0.8 * want[2].double() + 0.2 * want[1].double()  # adam_inputs' beta1 is 0.8
    on_edge = m_exact.abs() < 1e-6 * (want[2].abs() + want[1].abs())
    del m_exact
    T.adam_update_triton(*ours)
    T.adam_update_torch(*want)
    for a, b in zip(ours[:4], want[:4]):
        assert (torch.isclose(a, b, rtol=1e-5, atol=1e-6) | on_edge).all()
    assert on_edge.sum() < 1000


def test_distadam_uses_the_kernel_on_gpu_and_torch_on_cpu(monkeypatch):
    """adam_update_ dispatches on the weights' device: on CUDA tensors the kernel, else the torch definition."""
    calls = []
    monkeypatch.setattr(T, "adam_update_triton", lambda *a: calls.append("triton"))
    monkeypatch.setattr(T, "adam_update_torch", lambda *a: calls.append("torch"))
    T.adam_update_(*adam_inputs(4))
    monkeypatch.setattr(T, "on_gpu", lambda _: True)
    T.adam_update_(*adam_inputs(4))
    assert calls == ["torch", "triton"]


def test_normuon_row_blocks_orthogonalize_each_block_of_rows_apart(monkeypatch):
    """Q and K per pair of heads: with row_blocks (4, 4, 0, 0) on a (4, 8, 6) bank, matrices 0 and 1 move by the
    polar factor of each of their 4-row blocks, matrices 2 and 3 by that of the whole matrix."""
    monkeypatch.setattr(NorMuon, "_normalize_neurons", lambda self, u, group: u)
    g = with_spectrum((4, 8, 6), 10.0, seed=6)
    p, _ = one_matrix_step(torch.zeros(4, 8, 6), g, neuron_axis=-1, lr_mul=1.0, row_blocks=(4, 4, 0, 0))
    u = 0.75 * g  # momentum 0.5 from zero: Nesterov u = 0.75·g
    blockwise = polar_express(u[:2].reshape(4, 4, 6)).float().reshape(2, 8, 6)
    torch.testing.assert_close(p, -0.1 * torch.cat([blockwise, polar_express(u[2:]).float()]))
    assert (blockwise - polar_express(u[:2]).float()).abs().max() > 0.1  # the blocks are not the whole


def test_normuon_row_blocks_loaded_from_a_checkpoint_are_used_at_the_next_step(monkeypatch):
    """A loaded state's param groups bring their row_blocks: after a step with (4, 4, 0, 0), a state saved with
    (0, 0, 4, 4) makes the next step orthogonalize matrices 2 and 3 in blocks, as a fresh optimizer given it does."""
    monkeypatch.setattr(NorMuon, "_normalize_neurons", lambda self, u, group: u)
    g = with_spectrum((4, 8, 6), 10.0, seed=6)
    _, stepped = one_matrix_step(torch.zeros(4, 8, 6), g, neuron_axis=-1, lr_mul=1.0, row_blocks=(4, 4, 0, 0))
    _, saved = one_matrix_step(torch.zeros(4, 8, 6), g, neuron_axis=-1, lr_mul=1.0, row_blocks=(0, 0, 4, 4))
    moved = []
    for opt in (stepped, NorMuon([dict(params=[nn.Parameter(torch.zeros(4, 8, 6))], neuron_axis=-1, lr_mul=1.0,
                                       row_blocks=(4, 4, 0, 0))], lr=0.1, momentum=0.5, weight_decay=0.25)):
        opt.load_state_dict(saved.state_dict())
        p = opt.param_groups[0]["params"][0]
        p.data.zero_()
        p.grad = g.clone()
        opt.step()
        moved.append(p.detach().clone())
    assert stepped.param_groups[0]["row_blocks"] == (0, 0, 4, 4)
    torch.testing.assert_close(moved[0], moved[1], rtol=0, atol=0)


@pytest.mark.parametrize("blocks", [(4, 4, 0), (3, 0, 0, 0), (-4, 0, 0, 0)])
def test_normuon_rejects_row_blocks_that_do_not_fit_the_param(blocks):
    with pytest.raises(ValueError, match=r"qkvo: row_blocks=.* one entry per matrix of a param \(4\), each 0 or a "
                                         r"divisor of its 8 rows"):
        NorMuon([dict(params=[nn.Parameter(torch.zeros(4, 8, 6))], neuron_axis=-1, lr_mul=1.0, label="qkvo",
                      row_blocks=blocks)], lr=0.1)


def test_normuon_rejects_group_without_explicit_lr_mul():
    with pytest.raises(ValueError, match="lr_mul"):
        NorMuon([dict(params=[nn.Parameter(torch.zeros(4, 4))], neuron_axis=-1)], lr=0.1)


def test_distadam_rejects_group_without_its_lr():
    with pytest.raises(ValueError, match="embed: param group must set lr"):
        DistAdam([dict(params=[nn.Parameter(torch.zeros(4))], label="embed")])


# --- Sharded runs on 2 gloo ranks against 1 process given the averaged gradients ---


def make_model():
    """NorMuon groups: 3 matrices in one stacked param (not a multiple of 2; orthogonalized in row blocks of 4,
    whole, in blocks of 2), two tall, three wide with neuron_axis=-2. DistAdam: numels 15, 7, 1 (not multiples of 2),
    one group with overlap=False."""
    g = torch.Generator().manual_seed(0)
    new = lambda *shape: nn.Parameter(torch.randn(*shape, generator=g))
    muon_groups = [
        dict(params=[new(3, 8, 8)], neuron_axis=-1, lr_mul=1.0, label="stack", row_blocks=(4, 0, 2)),
        dict(params=[new(16, 8), new(16, 8)], neuron_axis=-1, lr_mul=0.5, label="tall"),
        dict(params=[new(8, 16) for _ in range(3)], neuron_axis=-2, lr_mul=1.0, label="wide"),
    ]
    adam_groups = [
        dict(params=[new(5, 3), new(7)], lr=0.01, label="hooked"),
        dict(params=[new(4, 6), new(1)], lr=0.01, overlap=False, lr_mul=2.0, label="in_step"),
    ]
    return muon_groups, adam_groups


def make_optimizers(rank, world_size):
    muon_groups, adam_groups = make_model()
    muon = NorMuon(muon_groups, lr=0.05, momentum=0.9, weight_decay=0.5, rank=rank, world_size=world_size)
    # eps=0.1 makes Adam sensitive to the gradient's scale, so a missing 1/world_size would show
    adam = DistAdam(adam_groups, eps=0.1, weight_decay=0.1, rank=rank, world_size=world_size)
    return muon, adam


def params_of(*opts):
    return [p for opt in opts for group in opt.param_groups for p in group["params"]]


def grad_of(rank, step, micro, index, shape):
    g = torch.Generator().manual_seed(1000 * step + 100 * micro + 10 * index + rank)
    return torch.randn(shape, generator=g)


def set_schedule(opts, step):
    opts[0].param_groups[0]["momentum"] = 0.85 + 0.01 * step  # the loop's warm-up and schedule change these
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * (1 - 0.1 * step)


def reference_steps(opts, first, last):
    """One process, grads = mean over SIM_RANKS of each rank's micro-step sum, summed in the sharded order."""
    for step in range(first, last):
        for i, p in enumerate(params_of(*opts)):
            per_rank = []
            for r in range(SIM_RANKS):
                local = grad_of(r, step, 0, i, p.shape)
                for micro in range(1, MICRO_STEPS):
                    local = local + grad_of(r, step, micro, i, p.shape)
                per_rank.append(local)
            p.grad = sum(per_rank[1:], per_rank[0]) / SIM_RANKS
        set_schedule(opts, step)
        for opt in opts:
            opt.step()
            opt.zero_grad()


def sharded_steps(opts, rank, first, last, in_flight):
    """Backward passes with grad_sync_enabled only on the last micro-step; records how many DistAdam
    gradients were in flight after each micro-step's backward."""
    params = params_of(*opts)
    for step in range(first, last):
        for micro in range(MICRO_STEPS):
            for opt in opts:
                opt.grad_sync_enabled = micro == MICRO_STEPS - 1
            sum((p * grad_of(rank, step, micro, i, p.shape)).sum() for i, p in enumerate(params)).backward()
            in_flight.append(len(opts[1]._grads_in_flight))
        set_schedule(opts, step)
        for opt in opts:
            opt.step()
            opt.zero_grad()


def detached(opts):
    return [p.detach().clone() for p in params_of(*opts)]


def two_rank_worker(rank, world_size, one_rank_checkpoint):
    opts = make_optimizers(rank, world_size)
    in_flight = []
    sharded_steps(opts, rank, 0, SAVE_AT, in_flight)
    checkpoint = ([opt.state_dict() for opt in opts], detached(opts))
    shard_shapes = [opts[0].state[opts[0].param_groups[0]["params"][0]]["momentum_buffer"].shape,
                    opts[1].state[opts[1].param_groups[0]["params"][0]]["exp_avg"].shape]
    sharded_steps(opts, rank, SAVE_AT, STEPS, in_flight)
    final = detached(opts)

    resumed = make_optimizers(rank, world_size)  # resume a 1-process checkpoint on 2 ranks
    state_dicts, weights = one_rank_checkpoint
    with torch.no_grad():
        for p, w in zip(params_of(*resumed), weights):
            p.copy_(w)
    for opt, sd in zip(resumed, state_dicts):
        opt.load_state_dict(sd)
    sharded_steps(resumed, rank, SAVE_AT, STEPS, [])
    return dict(final=final, checkpoint=checkpoint, resumed=detached(resumed), in_flight=in_flight,
                shard_shapes=shard_shapes)


@pytest.fixture(scope="module")
def runs():
    reference = make_optimizers(0, 1)
    reference_steps(reference, 0, SAVE_AT)
    one_rank_checkpoint = ([opt.state_dict() for opt in reference], detached(reference))
    reference_steps(reference, SAVE_AT, STEPS)
    ranks = run_gloo(two_rank_worker, 2, one_rank_checkpoint)
    return dict(reference=detached(reference), one_rank_checkpoint=one_rank_checkpoint, ranks=ranks)


def assert_same_params(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_two_ranks_match_one_process_with_averaged_grads(runs):
    initial = [p.detach() for p in params_of(*make_optimizers(0, 1))]
    for rank in runs["ranks"]:
        assert_same_params(rank["final"], runs["reference"])
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(runs["reference"], initial))  # every param moved


def test_grad_sync_disabled_micro_steps_launch_nothing_and_accumulate(runs):
    # DistAdam's 2 hooked params launch on the last micro-step only; the result equals one step with the
    # summed micro-step grads (the reference), checked in the test above.
    for rank in runs["ranks"]:
        assert rank["in_flight"] == [0, 2] * STEPS


def test_state_is_sharded_across_ranks(runs):
    for rank in runs["ranks"]:
        stack_share, adam_shard = rank["shard_shapes"]
        assert tuple(stack_share) == (2, 8, 8)  # 3 matrices padded to 4, 2 per rank
        assert tuple(adam_shard) == (8,)  # 15 elements padded to 16, 8 per rank


def test_state_dict_is_the_same_for_any_world_size(runs):
    want_dicts, _ = runs["one_rank_checkpoint"]
    for rank in runs["ranks"]:
        got_dicts, _ = rank["checkpoint"]
        for got, want in zip(got_dicts, want_dicts):
            assert got["param_groups"] == want["param_groups"]
            assert got["state"].keys() == want["state"].keys() and got["state"]
            for i in want["state"]:
                for key, value in want["state"][i].items():
                    torch.testing.assert_close(got["state"][i][key], value, rtol=1e-5, atol=1e-6)


def test_checkpoint_from_two_ranks_resumes_on_one_process(runs):
    state_dicts, weights = runs["ranks"][0]["checkpoint"]
    resumed = make_optimizers(0, 1)
    with torch.no_grad():
        for p, w in zip(params_of(*resumed), weights):
            p.copy_(w)
    for opt, sd in zip(resumed, state_dicts):
        opt.load_state_dict(sd)
    reference_steps(resumed, SAVE_AT, STEPS)
    assert_same_params(detached(resumed), runs["reference"])


def test_checkpoint_from_one_process_resumes_on_two_ranks(runs):
    for rank in runs["ranks"]:
        assert_same_params(rank["resumed"], runs["reference"])


# --- Adam every other step (--adam_every=2): its gradients summed over two steps, no communication between ---

ADAM_EVERY_STEPS = 4


def adam_every_2_reference():
    """One process: NorMuon steps on every step's rank-averaged grads, DistAdam on steps 1 and 3 on the sum of
    the two steps' rank-averaged grads."""
    muon, adam = make_optimizers(0, 1)
    params = params_of(muon, adam)
    for step in range(ADAM_EVERY_STEPS):
        for i, p in enumerate(params):
            grad = sum(grad_of(r, step, micro, i, p.shape) for r in range(SIM_RANKS) for micro in range(MICRO_STEPS))
            p.grad = grad / SIM_RANKS if p.grad is None else p.grad + grad / SIM_RANKS
        stepping = [muon, adam] if step % 2 == 1 else [muon]
        set_schedule((muon, adam), step)
        for opt in stepping:
            opt.step()
            opt.zero_grad()
    return detached((muon, adam)), adam.state[params_of(adam)[0]]["step"]


def adam_every_2_worker(rank, world_size):
    """The loop's pattern through train_gpt.set_grad_sync: records the reduce-scatters launched during each step's
    backward passes (NorMuon launches its own only in step())."""
    import torch.distributed as dist
    from train_gpt import set_grad_sync
    muon, adam = make_optimizers(rank, world_size)
    params = params_of(muon, adam)
    launches, counting = [], [0]
    reduce_scatter = dist.reduce_scatter_tensor

    def counted(*args, **kwargs):
        counting[0] += 1
        return reduce_scatter(*args, **kwargs)
    dist.reduce_scatter_tensor = counted
    for step in range(ADAM_EVERY_STEPS):
        stepping = [muon, adam] if step % 2 == 1 else [muon]
        counting[0] = 0
        for micro in range(MICRO_STEPS):
            set_grad_sync((muon, adam), stepping, micro == MICRO_STEPS - 1)
            sum((p * grad_of(rank, step, micro, i, p.shape)).sum() for i, p in enumerate(params)).backward()
        launches.append(counting[0])
        set_schedule((muon, adam), step)
        for opt in stepping:
            opt.step()
            opt.zero_grad()
    return dict(final=detached((muon, adam)), launches=launches)


def test_adam_every_2_sums_two_steps_and_its_hooks_launch_nothing_on_the_skipped_one():
    want, adam_steps = adam_every_2_reference()
    assert adam_steps == ADAM_EVERY_STEPS // 2
    for rank in run_gloo(adam_every_2_worker, 2):
        assert_same_params(rank["final"], want)
        assert rank["launches"] == [0, 2, 0, 2]  # the 2 hooked DistAdam params, on the last micro-step of Adam steps
