"""How the parts are wired: what the optimizers and the model actually receive, step by step, in a real run."""
import copy

import pytest
import torch

import train_gpt as tg
from tests.helpers import gradients, make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards"), train_tokens=60_000, val_tokens=4_000)


SCHEDULE_FLAGS = ["--num_iterations=12", "--warmup_steps=0", "--val_every=0", "--lr_warmup_steps=2",
                  "--cooldown_frac=0.5", "--final_lr_frac=0.2", "--momentum_warmup_frac=0.5", "--untie_frac=0.5",
                  "--window_blocks=1:1,1:2,2:4,3:5", "--momentum_cooldown_frac=0.25", "--seq_lens=128,256",
                  "--lr_stage_muls=1.0,1.5", "--rope=half_yarn", "--val_window_blocks=4:6",
                  "--mtp_weights=1:0.5:0.25..0,1:0.5..0,1", "--adam_every=1"]  # Adam on every step: each lr is seen


@pytest.fixture(scope="module")
def recorded(shards, tmp_path_factory) -> tuple[tg.Hyperparameters, dict]:
    """A tiny run that records, at every optimizer step, each group's lr and momentum as the optimizer reads
    them, at every training forward, model.tied, the window sizes and the multi-token weights the model is given,
    at every validation forward, the multi-token weights, and at every forward, training or validation, the windows
    and the rotary tables and attention scale gain the attention reads."""
    seen = {"muon": [], "adam": [], "forward": [], "rotary": [], "mtp": [], "val_mtp": []}

    def recording(cls, key):
        step = cls.step

        def wrapped(self):
            seen[key].append([(g["lr"], g.get("momentum")) for g in self.param_groups])
            return step(self)
        return wrapped

    forward = tg.GPT.forward

    def recording_forward(self, inputs, targets, windows, mtp_weights=None):
        weights = None if mtp_weights is None else mtp_weights.tolist()
        if torch.is_grad_enabled():
            seen["forward"].append((self.tied, {kind: int(w) for kind, w in windows.items()}, len(inputs)))
            seen["mtp"].append(weights)
        else:
            seen["val_mtp"].append(weights)
        seen["rotary"].append((torch.is_grad_enabled(), {kind: int(w) for kind, w in windows.items()},
                               self.rotary.cos[0, :, 0].clone(), self.rotary.sin[0, :, 0].clone(),
                               self.rotary.attn_scale_gain.item()))
        return forward(self, inputs, targets, windows, mtp_weights)

    train, val = shards
    argv = ["--preset=tiny", f"--train_files={train}", f"--val_files={val}",
            f"--log_dir={tmp_path_factory.mktemp('logs')}", "--run_id=wiring", *SCHEDULE_FLAGS]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tg.NorMuon, "step", recording(tg.NorMuon, "muon"))
        patch.setattr(tg.DistAdam, "step", recording(tg.DistAdam, "adam"))
        patch.setattr(tg.GPT, "forward", recording_forward)
        assert tg.main(argv) == 0
    return tg.parse_args(argv), seen


def test_every_step_gives_the_optimizers_the_scheduled_lr_and_momentum(recorded):
    hp, seen = recorded
    adam_lrs = [hp.adam_head_lr, hp.adam_embed_lr, hp.adam_value_embed_lr, hp.adam_scalar_lr, hp.adam_bigram_lr,
                hp.adam_smear_gate_lr, hp.adam_xsa_lr]
    assert len(seen["muon"]) == len(seen["adam"]) == hp.num_iterations
    scales = {tg.lr_scale(step, hp) for step in range(hp.num_iterations)}
    assert len(scales) > 5  # warm-up, flat and cooldown all occur
    for step in range(hp.num_iterations):
        scale, momentum = tg.lr_scale(step, hp), tg.momentum_at(step, hp)
        assert seen["muon"][step] == [pytest.approx((hp.muon_lr * scale, momentum))] * len(tg.MATRIX_PARAMS)
        assert [lr for lr, _ in seen["adam"][step]] == pytest.approx([lr * scale for lr in adam_lrs])


def test_every_forward_sees_the_scheduled_windows_batch_and_ties(recorded):
    hp, seen = recorded
    micro_steps = hp.slices_per_step
    assert len(seen["forward"]) == hp.num_iterations * micro_steps
    assert len({tg.windows_at(step, hp)["L"] for step in range(hp.num_iterations)}) > 3  # the windows grow
    for i, (tied, windows, seq_len) in enumerate(seen["forward"]):
        step = i // micro_steps
        assert windows == tg.windows_at(step, hp), step
        assert seq_len == tg.seq_len_at(step, hp), step
        assert tied == (step < tg.untie_step(hp)), step
    assert 0 < tg.untie_step(hp) < hp.num_iterations


def test_every_forward_reads_the_yarn_state_of_its_step_and_the_final_validations_theirs(recorded):
    """Training forwards of step s read the rotary tables and scale gain of yarn_at(s); the validation after the
    last step reads those of --val_window_blocks, one more stretch, with its windows; then the same weights are
    validated again with the last training step's windows, tables and gain."""
    hp, seen = recorded
    micro_steps, val_seqs = hp.slices_per_step, hp.val_tokens // hp.val_seq_len
    assert [grad for grad, *_ in seen["rotary"]] == [True] * hp.num_iterations * micro_steps + [False] * 2 * val_seqs
    steps = ([i // micro_steps for i in range(hp.num_iterations * micro_steps)] + [hp.num_iterations] * val_seqs
             + [hp.num_iterations - 1] * val_seqs)
    assert len({tg.yarn_at(step, hp)[1] for step in steps}) == 5  # four stages' long windows and validation's
    for step, (_, windows, cos, sin, gain) in zip(steps, seen["rotary"]):
        freqs, expected_gain = tg.yarn_at(step, hp)
        theta = torch.outer(torch.arange(cos.size(0), dtype=torch.float32), freqs)
        torch.testing.assert_close((cos, sin), (theta.cos(), theta.sin()), atol=1e-6, rtol=0)
        assert gain == pytest.approx(expected_gain, rel=1e-6) and windows == tg.windows_at(step, hp), step
    assert seen["rotary"][-val_seqs - 1][1] == {"S": 4 * 128, "L": 6 * 128}
    assert seen["rotary"][-1][1] == {"S": 3 * 128, "L": 5 * 128}


def test_training_forwards_get_the_scheduled_multi_token_weights_and_validation_none(recorded):
    hp, seen = recorded
    assert len(seen["mtp"]) == hp.num_iterations * hp.slices_per_step
    for i, weights in enumerate(seen["mtp"]):
        assert weights == pytest.approx(tg.mtp_weights_at(i // hp.slices_per_step, hp)), i
    assert len({tuple(w) for w in seen["mtp"]}) > 5  # the weights move within stages and across them
    assert seen["val_mtp"] and all(w is None for w in seen["val_mtp"])


def tiny_model_and_optimizers(monkeypatch, table):
    monkeypatch.setattr(tg, "MATRIX_PARAMS", table)
    torch.manual_seed(0)
    hp = tg.parse_args(["--preset=tiny"])
    model = tg.GPT(hp)
    return model, tg.build_optimizers(model, hp, rank=0, world_size=1)


def test_normuon_groups_take_neuron_axis_and_lr_mul_from_the_table(monkeypatch):
    table = {"attn.qkvo": (-2, 0.5), "attn.gate": (-1, 1.5), "mlp.fc": (-2, 2.0), "mlp.proj": (-1, 4.0)}
    model, (muon, _) = tiny_model_and_optimizers(monkeypatch, table)
    assert {g["label"]: (g["neuron_axis"], g["lr_mul"]) for g in muon.param_groups} == table
    for group in muon.param_groups:
        assert group["params"] == [tg.getattr_path(b, group["label"]) for b in model.blocks]


def test_the_neuron_axis_in_the_table_changes_the_update(monkeypatch):
    """The same gradients, the table's mlp.fc axis flipped: fc moves differently, every other matrix the same."""
    updates = []
    for fc_axis in (-1, -2):
        table = {**tg.MATRIX_PARAMS, "mlp.fc": (fc_axis, tg.MATRIX_PARAMS["mlp.fc"][1])}
        model, (muon, _) = tiny_model_and_optimizers(monkeypatch, table)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        g = torch.Generator().manual_seed(1)
        for group in muon.param_groups:
            for p in group["params"]:
                p.grad = torch.randn(p.shape, generator=g)
        muon.step()
        updates.append({name: p.detach() - before[name] for name, p in model.named_parameters()})
    for name in updates[0]:
        if "mlp.fc" in name:
            assert (updates[0][name] - updates[1][name]).norm() > 0.05 * updates[0][name].norm(), name
        elif updates[0][name].any():
            torch.testing.assert_close(updates[0][name], updates[1][name], msg=name)


def test_adam_groups_take_betas_and_decay_from_the_table(monkeypatch):
    table = {"lm_head": ((0.1, 0.2), 1.0), "embed": ((0.3, 0.4), 2.0), "value_embeds": ((0.5, 0.6), 3.0),
             "scalars": ((0.7, 0.8), 4.0), "bigram_embed": ((0.15, 0.25), 5.0), "smear_gate": ((0.35, 0.45), 6.0),
             "xsa_alphas": ((0.55, 0.65), 7.0)}
    monkeypatch.setattr(tg, "ADAM_PARAMS", table)
    model, (_, adam) = tiny_model_and_optimizers(monkeypatch, tg.MATRIX_PARAMS)
    hp = tg.parse_args(["--preset=tiny"])
    assert {g["label"]: (g["betas"], g["weight_decay"]) for g in adam.param_groups} == {
        label: (betas, hp.adam_weight_decay * wd_mul) for label, (betas, wd_mul) in table.items()}


def test_the_bigram_embedding_is_trained_by_adam_with_its_own_lr_and_the_scalars_take_its_lambdas(monkeypatch):
    monkeypatch.setattr(tg, "MATRIX_PARAMS", tg.MATRIX_PARAMS)
    hp = tg.parse_args(["--preset=tiny", "--bigram_buckets=101", "--adam_bigram_lr=0.3"])
    model = tg.GPT(hp)
    _, adam = tg.build_optimizers(model, hp, rank=0, world_size=1)
    groups = {g["label"]: g for g in adam.param_groups}
    assert groups["bigram_embed"]["params"] == [model.bigram_embed.weight] and groups["bigram_embed"]["lr"] == 0.3
    betas, wd_mul = tg.ADAM_PARAMS["bigram_embed"]
    assert groups["bigram_embed"]["betas"] == betas and groups["bigram_embed"]["weight_decay"] == hp.adam_weight_decay * wd_mul
    assert any(p is model.bigram_lambdas for p in groups["scalars"]["params"])
    assert model.bigram_embed.weight.shape == (101, hp.model_dim) and not model.bigram_embed.weight.any()


def test_muon_qk_head_pairs_gives_q_and_k_row_blocks_of_two_heads():
    hp = tg.parse_args(["--preset=tiny", "--muon_qk_head_pairs=true"])
    muon, _ = tg.build_optimizers(tg.GPT(hp), hp, rank=0, world_size=1)
    blocks = {g["label"]: g["row_blocks"] for g in muon.param_groups}
    assert blocks == {"attn.qkvo": (2 * hp.head_dim, 2 * hp.head_dim, 0, 0), "attn.gate": (), "mlp.fc": (),
                      "mlp.proj": ()}
    whole = tg.parse_args(["--preset=tiny", "--muon_qk_head_pairs=false"])
    muon, _ = tg.build_optimizers(tg.GPT(whole), whole, rank=0, world_size=1)
    assert all(g["row_blocks"] == () for g in muon.param_groups)
    with pytest.raises(ValueError, match=r"--muon_qk_head_pairs=True: needs an even --num_heads, got 3"):
        tg.parse_args(["--preset=tiny", "--muon_qk_head_pairs=true", "--num_heads=3", "--head_dim=16",
                       "--model_dim=48", "--paired_head_layers="])


def test_the_backout_lambda_starts_at_one_half_among_the_scalars():
    hp = tg.parse_args(["--preset=tiny", "--backout_layer=0"])
    model = tg.GPT(hp)
    _, adam = tg.build_optimizers(model, hp, rank=0, world_size=1)
    scalars = {g["label"]: g for g in adam.param_groups}["scalars"]["params"]
    assert any(p is model.backout_lambda for p in scalars) and model.backout_lambda.tolist() == [0.5]
    assert not hasattr(tg.GPT(tg.parse_args(["--preset=tiny", "--backout_layer=-1"])), "backout_lambda")


def test_the_smear_gate_is_trained_by_adam_with_its_own_lr_and_the_scalars_take_its_lambda():
    hp = tg.parse_args(["--preset=tiny", "--smear=true", "--adam_smear_gate_lr=0.002"])
    model = tg.GPT(hp)
    _, adam = tg.build_optimizers(model, hp, rank=0, world_size=1)
    groups = {g["label"]: g for g in adam.param_groups}
    assert groups["smear_gate"]["params"] == [model.smear_gate] and groups["smear_gate"]["lr"] == 0.002
    assert groups["smear_gate"]["betas"] == tg.ADAM_PARAMS["smear_gate"][0]
    assert any(p is model.smear_lambda for p in groups["scalars"]["params"])
    assert not model.smear_lambda.any()  # off at init: the model starts as without smear


def test_value_embed_gates_are_trained_by_adam_with_upstreams_betas_and_the_embeddings_by_the_value_embeds_group():
    """Upstream trains its value-embedding gates with Adam at the head's lr 0.008, betas (0.9, 0.99) and its default
    decay multiplier 1; each untied embedding joins the value_embeds group, each block's a the scalars."""
    hp = tg.parse_args(["--preset=tiny", "--num_layers=4", "--window_pattern=SLSL", "--value_embed_layers=1,2,3",
                        "--value_embed_gates=true"])
    model = tg.GPT(hp)
    muon, adam = tg.build_optimizers(model, hp, rank=0, world_size=1)
    groups = {g["label"]: g for g in adam.param_groups}
    gates = groups["value_gates"]
    assert gates["params"] == [model.blocks[i].attn.value_gate for i in (1, 2, 3)] and gates["lr"] == 0.008
    assert gates["betas"] == (0.9, 0.99) and gates["weight_decay"] == hp.adam_weight_decay * 1.0
    assert groups["value_embeds"]["params"] == [ve.weight for ve in model.value_embeds] and len(model.value_embeds) == 3
    assert groups["value_embeds"]["lr"] == hp.adam_value_embed_lr
    assert all(any(p is b.attn.value_mix for p in groups["scalars"]["params"]) for b in model.blocks)
    assert not any(p is b.attn.value_gate for g in muon.param_groups for p in g["params"] for b in model.blocks[1:])
    hp = tg.parse_args(["--preset=tiny", "--value_embed_layers=0", "--value_embed_gates=true",
                        "--adam_value_gate_lr=0.003"])
    _, adam = tg.build_optimizers(tg.GPT(hp), hp, rank=0, world_size=1)
    assert [g["lr"] for g in adam.param_groups if g["label"] == "value_gates"] == [0.003]


def test_xsa_strengths_are_trained_by_adam_with_upstreams_lr_and_betas_and_no_decay():
    """Upstream trains its per-head XSA strengths with Adam at the head's lr 0.008, betas (0.9, 0.95), no decay, apart
    from its scalars; one real step gives each listed block's α a gradient and moves it off 0."""
    assert tg.parse_args([]).adam_xsa_lr == 0.008 and tg.ADAM_PARAMS["xsa_alphas"] == ((0.9, 0.95), 0.0)
    hp = tg.parse_args(["--preset=tiny", "--num_layers=4", "--window_pattern=SLSL", "--xsa_layers=1,3",
                        "--adam_xsa_lr=0.003"])
    torch.manual_seed(0)
    model = tg.GPT(hp)
    muon, adam = tg.build_optimizers(model, hp, rank=0, world_size=1)
    alphas = [model.blocks[i].attn.xsa_alpha for i in (1, 3)]
    group = {g["label"]: g for g in adam.param_groups}["xsa_alphas"]
    assert group["params"] == alphas and group["lr"] == 0.003
    assert group["betas"] == (0.9, 0.95) and group["weight_decay"] == 0.0
    others = [p for opt in (muon, adam) for g in opt.param_groups if g is not group for p in g["params"]]
    assert not any(p is a for p in others for a in alphas)
    with torch.no_grad():  # the output projections start at zero, which would hide attention from the loss
        for b in model.blocks:
            b.attn.qkvo[3].normal_(0, 0.02)
    tokens = torch.randint(0, hp.vocab_size, (129,), generator=torch.Generator().manual_seed(3))
    windows = {"S": tg.window_tensor(128, torch.device("cpu")), "L": tg.window_tensor(256, torch.device("cpu"))}
    model(tokens[:-1].int(), tokens[1:].long(), windows).backward()
    model.hand_over_row_grads()
    assert all(a.grad is not None and a.grad.abs().min() > 0 for a in alphas)
    for opt in (muon, adam):
        opt.step()
    assert all(a.detach().abs().min() > 0 for a in alphas)


def test_a_block_without_attention_leaves_the_normuon_stacks_and_its_skip_gate_joins_the_scalars():
    """--no_attention_layers=2: the attn.* groups stack the other blocks' matrices (one shape still), the MLP groups
    every block's; the skip gates, every block's residual mix and each attention's value mix are Adam's scalars.
    One real step moves the attention-free block's MLP and the skip gate."""
    hp = tg.parse_args(["--preset=tiny", "--num_layers=5", "--window_pattern=SLSLS", "--num_value_embeds=2",
                        "--skips=1:2,0:4", "--no_attention_layers=2", "--value_embed_gates=true"])
    torch.manual_seed(0)
    model = tg.GPT(hp)
    muon, adam = tg.build_optimizers(model, hp, rank=0, world_size=1)
    blocks, attended = list(model.blocks), [model.blocks[i] for i in (0, 1, 3, 4)]
    assert model.blocks[2].attn is None
    muon_params = {g["label"]: g["params"] for g in muon.param_groups}
    assert muon_params == {"attn.qkvo": [b.attn.qkvo for b in attended], "attn.gate": [b.attn.gate for b in attended],
                           "mlp.fc": [b.mlp.fc for b in blocks], "mlp.proj": [b.mlp.proj for b in blocks]}
    scalars = {g["label"]: g for g in adam.param_groups}["scalars"]["params"]
    assert scalars[0] is model.skip_gates and model.skip_gates.shape == (2,)
    assert scalars[1:6] == [b.residual_mix for b in blocks] and scalars[6:10] == [b.attn.value_mix for b in attended]
    with torch.no_grad():
        for b in blocks:
            b.mlp.proj.normal_(0, 0.02)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    tokens = torch.randint(0, hp.vocab_size, (129,), generator=torch.Generator().manual_seed(3))
    windows = {"S": tg.window_tensor(128, torch.device("cpu")), "L": tg.window_tensor(256, torch.device("cpu"))}
    model(tokens[:-1].int(), tokens[1:].long(), windows).backward()
    model.hand_over_row_grads()
    for opt in (muon, adam):
        opt.step()
    for name in ("skip_gates", "blocks.2.mlp.fc", "blocks.2.mlp.proj", "blocks.2.residual_mix", "blocks.3.attn.qkvo"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name].detach()), name


CPU = torch.device("cpu")


def test_adam_steps_on_every_second_step_and_the_last_and_the_untie_follows_one():
    hp = tg.parse_args(["--preset=tiny", "--adam_every=2", "--num_iterations=7", "--untie_frac=0.5"])
    assert [tg.adam_steps_at(step, hp) for step in range(7)] == [False, True, False, True, False, True, True]
    assert tg.untie_step(hp) == 4  # int(0.5 * 7) = 3, rounded up to follow the Adam step 3
    assert tg.parse_args([]).adam_every == 2  # the record's, upstream's
    every = tg.parse_args(["--preset=tiny", "--adam_every=1", "--num_iterations=7", "--untie_frac=0.5"])
    assert all(tg.adam_steps_at(step, every) for step in range(7)) and tg.untie_step(every) == 3


def adam_every_2_model():
    torch.manual_seed(0)
    hp = tg.parse_args(["--preset=tiny", "--adam_every=2", "--num_iterations=4"])
    model = tg.GPT(hp)
    return hp, model, tg.build_optimizers(model, hp, rank=0, world_size=1)


def params_of(opt):
    return [p for group in opt.param_groups for p in group["params"]]


def test_adam_every_2_makes_one_adam_update_on_the_two_steps_summed_gradient():
    hp, model, (muon, adam) = adam_every_2_model()
    reference = copy.deepcopy(model)
    names = {p: name for name, p in model.named_parameters()}
    initial = {p: p.detach().clone() for p in model.parameters()}
    batches = [tg.dummy_batches(128, 1, CPU, seed=seed) for seed in (1, 2)]

    tg.train_step(model, model, [muon, adam], batches[0], 0, hp, 1, None)
    assert len(muon.state) == len(muon.param_groups) and all(p.grad is None for p in params_of(muon))
    assert not torch.equal(model.blocks[0].attn.qkvo, initial[model.blocks[0].attn.qkvo])  # NorMuon stepped
    assert all(torch.equal(p, initial[p]) for p in params_of(adam)) and not adam.state  # Adam did not
    summed = gradients(model)  # the row tables' in their sums, the embedding's too: not folded yet
    first = {names[p]: summed[names[p]].clone() for p in params_of(adam)}

    probe = copy.deepcopy(model)  # the second step's gradient alone, at the weights after the first step
    probe.zero_grad(set_to_none=True)
    inputs, targets = batches[1][0]
    probe(inputs, targets, tg.window_tensors(1, hp, CPU)).backward()
    want = {name: first[name] + g for name, g in gradients(probe).items() if name in first}
    want["lm_head"] = want["lm_head"] + want.pop("embed.weight").T  # tied: the embedding's joins the head's

    seen, adam_step = {}, adam.step

    def recording_step():
        seen.update({names[p]: p.grad.clone() for p in params_of(adam) if p.grad is not None})
        adam_step()
    adam.step = recording_step
    tg.train_step(model, model, [muon, adam], batches[1], 1, hp, 1, None)
    assert seen.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(seen[name], want[name], rtol=1e-6, atol=0)

    reference_adam = tg.build_optimizers(reference, hp, rank=0, world_size=1)[1]  # Adam alone, on the summed grad
    for name, p in reference.named_parameters():
        p.grad = want.get(name)
    tg.set_schedules([reference_adam], 1, hp)
    reference_adam.step()
    got = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        if name in want:
            torch.testing.assert_close(got[name], p, rtol=0, atol=1e-7)
    assert not torch.equal(model.lm_head, initial[model.lm_head])
    assert {s["step"] for s in adam.state.values()} == {1}
    assert torch.equal(model.embed.weight, model.lm_head.T)  # tied again after the Adam step
    assert all(p.grad is None for p in model.parameters())
    assert all(not table.grad_sum.any() for table in model.row_tables())


def test_warmup_leaves_no_adam_gradient_from_a_step_adam_skipped():
    hp, model, optimizers = adam_every_2_model()
    hp.warmup_steps = 3  # steps 0, 1, 2: Adam skips the last, so its gradients stay summed
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    tg.warmup_kernels(model, model, optimizers, hp, 0, 1, CPU, lambda line, console=True: None, None)
    assert all(p.grad is None for p in model.parameters())
    assert all(not table.grad_sum.any() for table in model.row_tables())
    assert all(torch.equal(p, initial[name]) for name, p in model.named_parameters())


def test_warmup_runs_an_adam_step_and_a_skipped_one_with_adam_every_2(monkeypatch):
    """One warm-up step would compile only the step Adam skips; the first real Adam step would then compile in the
    timed region."""
    hp, model, optimizers = adam_every_2_model()
    hp.warmup_steps = 1
    steps, lines = [], []
    monkeypatch.setattr(tg, "train_step", lambda model, forward, optimizers, batches, step, *a: steps.append(step))
    tg.warmup_kernels(model, model, optimizers, hp, 0, 1, CPU, lambda line, console=True: lines.append(line), None)
    assert steps == [0, 1] * len(hp.seq_len_stages)
    stage_lines = [line for line in lines if line.startswith("info:warmup seq_len:")]
    assert len(stage_lines) == len(hp.seq_len_stages) and all("steps:2 " in line for line in stage_lines)
