import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import train_gpt as tg
from tests.helpers import gradients


def rotate_as_complex(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x: (..., T, H, Dh), freqs: (Dh/2,) fp64 -> fp64 reference rotation: pair (x[i], x[i + Dh/2]) is a complex number
    rotated by -pos · freqs[i]."""
    T, Dh = x.shape[-3], x.shape[-1]
    angle = torch.arange(T, dtype=torch.float64)[:, None] * freqs  # (T, Dh/2)
    z = torch.complex(x[..., : Dh // 2].double(), x[..., Dh // 2 :].double())
    z = z * torch.polar(torch.ones_like(angle), -angle)[:, None, :]
    return torch.cat((z.real, z.imag), dim=-1)


def plain_frequencies(Dh: int, base: float) -> torch.Tensor:
    return base ** (-torch.arange(Dh // 2, dtype=torch.float64) / (Dh // 2))


def half_yarn_frequencies(Dh: int, long_windows: list[int]) -> tuple[torch.Tensor, float]:
    """In Python floats: Dh/4 frequencies 1024^(-i/(Dh/4 - 1)), then Dh/4 zeros; at each change old -> new of the long
    window, frequency f is multiplied by r + w·(1 - r), r = old/new, w = clamp((old·f/2π - 1)/(32 - 1), 0, 1), and the
    attention scale by 1 + 0.2·ln(new/old). -> (Dh/2,) fp64 frequencies, the scale's gain."""
    n = Dh // 4
    freqs, gain = [1024.0 ** (-i / (n - 1)) for i in range(n)] + [0.0] * n, 1.0
    for old, new in zip(long_windows[:-1], long_windows[1:]):
        r = old / new
        freqs = [f * (r + min(max((old * f / (2 * math.pi) - 1) / 31, 0.0), 1.0) * (1 - r)) for f in freqs]
        gain *= 1 + 0.2 * math.log(new / old)
    return torch.tensor(freqs, dtype=torch.float64), gain


def test_rotary_with_chunk_equals_complex_rotation():
    torch.manual_seed(0)
    T, H, Dh = 37, 3, 16
    rotary = tg.Rotary(tg.rotary_frequencies(Dh, 10000.0, "plain"), max_seq_len=64)
    x = torch.randn(2, T, H, Dh)
    y = rotary(x)
    expected = rotate_as_complex(x, plain_frequencies(Dh, 10000.0)).float()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y[:, 1:], x[:, 1:])  # it does rotate


def test_half_rope_turns_32_frequencies_and_yarn_stretches_them_by_hand_computed_numbers():
    """The record's head_dim 128: pairs 0-31 turn 1024^(-i/31) radians a token, pairs 32-63 stand still. From the
    384-token window to 896 (its stage 1 -> 2), r = 3/7: pair 0 turns 384/2π = 61.1 times > β = 32, kept; pair 31
    (1/1024) turns 0.06 times < α = 1, times 3/7 = 3/7168; pair 10 (2^(-100/31) = 0.1068896) turns 6.532612 times,
    w = 5.532612/31 = 0.1784713, times 3/7 + w·4/7 = 0.5305551 -> 0.05671082."""
    freqs = tg.rotary_frequencies(128, 10000.0, "half_yarn")
    assert freqs.shape == (64,) and bool((freqs[:32] > 0).all()) and bool((freqs[32:] == 0).all())
    assert freqs[0].item() == 1.0 and freqs[31].item() == pytest.approx(1 / 1024, rel=1e-6)
    assert freqs[10].item() == pytest.approx(0.1068896, rel=1e-6)
    torch.testing.assert_close(freqs[:32], 1024.0 ** (-torch.arange(32) / 31), atol=0, rtol=1e-6)
    stretched = tg.yarn_stretch(freqs, 384, 896)
    assert stretched[0].item() == 1.0 and bool((stretched[32:] == 0).all())
    assert stretched[31].item() == pytest.approx(3 / 7168, rel=1e-6)
    assert stretched[10].item() == pytest.approx(0.05671082, rel=1e-6)


def test_attention_scale_grows_by_yarns_rule_at_each_longer_window():
    """The record's long windows 3, 7, 11 blocks over thirds of 1500 steps, validation at 13: the gain is 1, then
    1 + 0.2·ln(7/3) = 1.1694596, then times 1 + 0.2·ln(11/7): 1.2751752, then times 1 + 0.2·ln(13/11): 1.3177799.
    Plain RoPE keeps 1 and the validation window, when not given, is the last stage's."""
    hp = tg.parse_args(["--num_iterations=1500"])  # the record's: half_yarn, validation at 6:13 blocks
    assert (hp.rope, hp.val_window_blocks) == ("half_yarn", "6:13")
    gains = [tg.yarn_at(step, hp)[1] for step in (0, 499, 500, 999, 1000, 1499, 1500)]
    assert gains == pytest.approx([1.0, 1.0, 1.1694596, 1.1694596, 1.2751752, 1.2751752, 1.3177799], rel=1e-7)
    assert tg.windows_at(1500, hp) == {"S": 768, "L": 1664} and tg.windows_at(1499, hp) == {"S": 640, "L": 1408}
    torch.testing.assert_close(tg.yarn_at(1500, hp)[0].double(), half_yarn_frequencies(128, [384, 896, 1408, 1664])[0],
                               atol=0, rtol=1e-6)
    plain = tg.parse_args(["--num_iterations=1500", "--rope=plain", "--key_offset=false", "--val_window_blocks="])
    assert [tg.yarn_at(step, plain)[1] for step in (0, 1000, 1500)] == [1.0] * 3
    assert tg.windows_at(1500, plain) == tg.windows_at(1499, plain)


def random_documents(T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 1000, (T,), generator=g)
    tokens[torch.randperm(T, generator=g)[: T // 40]] = tg.BOS_ID
    return tokens


def document_window_from_loops(tokens: torch.Tensor, window: int) -> torch.Tensor:
    """(T, T) bool: query q sees key k of its own document, not in its future, fewer than `window` back."""
    doc, T = (tokens == tg.BOS_ID).cumsum(0).tolist(), tokens.numel()
    return torch.tensor([[k <= q and q - k < window and doc[q] == doc[k] for k in range(T)] for q in range(T)])


def test_document_mask_matches_dense_reference():
    T, window = 300, 50
    tokens = random_documents(T, seed=1)
    mask = tg.attention_mask(tokens, torch.tensor(window))[0, 0]  # CPU: dense (T, T) bool
    doc = (tokens == tg.BOS_ID).cumsum(0).tolist()
    expected = document_window_from_loops(tokens, window)
    assert torch.equal(mask, expected)
    # never another document, never the future
    q, k = torch.nonzero(mask, as_tuple=True)
    assert bool((k <= q).all()) and all(doc[a] == doc[b] for a, b in zip(q.tolist(), k.tolist()))


def test_flex_attention_block_mask_matches_dense_mask_attention():
    """The CPU path (SDPA with the dense mask) computes what FlexAttention computes on the GPU."""
    torch.manual_seed(2)
    T, window = 256, 96
    tokens = random_documents(T, seed=3)
    docs = (tokens == tg.BOS_ID).cumsum(0)
    mask_mod = tg.document_causal_window(docs, torch.tensor(window))
    q, k, v = torch.randn(3, 1, 2, T, 32).unbind(0)
    flex = flex_attention(q, k, v, block_mask=create_block_mask(mask_mod, None, None, T, T, device="cpu"),
                          scale=0.12)
    dense = tg.attend(q, k, v, tg.attention_mask(tokens, torch.tensor(window)), scale=0.12)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rope, xsa, key_offset", [("plain", False, False), ("half_yarn", False, False),
                                                ("plain", True, False), ("half_yarn", False, True)])
def test_attention_block_matches_a_reference_written_out(rope, xsa, key_offset):
    """The whole attention module (q, k, v from the shared bank, per-head q/k norm and rotation, value-embedding
    mix, document-causal window, sigmoid gates, output projection) against the same math written out in fp64,
    with the rotation as complex numbers and the mask from loops; half_yarn after one stretch, 128 -> 384 tokens.
    With xsa, each head's output first loses its projection on the token's value at a strength of its own; with
    key_offset, across documents that start at 0, 13 and 29."""
    torch.manual_seed(4)
    T, D, H, Dh, gate_dim, window, scale = 40, 64, 2, 32, 12, 16, 0.12
    rotary = tg.Rotary(tg.rotary_frequencies(Dh, 1024.0, rope), T, yarn=rope == "half_yarn")
    freqs, scale_gain = plain_frequencies(Dh, 1024.0), 1.0
    if rope == "half_yarn":
        freqs, scale_gain = half_yarn_frequencies(Dh, [128, 384])
        rotary.set_yarn(tg.yarn_stretch(tg.rotary_frequencies(Dh, 1024.0, rope), 128, 384), scale_gain)
    attn = tg.CausalSelfAttention(D, H, Dh, gate_dim, rotary, scale, xsa=xsa, key_offset=key_offset)
    with torch.no_grad():  # the output projection and gates start at zero: give them values that show errors
        attn.qkvo[3].normal_(0, D**-0.5)
        attn.gate.normal_()
        attn.value_mix.copy_(torch.tensor([0.7, -0.4]))
        if xsa:  # one strength per head, of either sign, so a swapped head or a dropped tanh shows
            attn.xsa_alpha.copy_(torch.tensor([1.3, -0.6]))
    tokens = random_documents(T, seed=5)
    tokens[[0, 13, 29]] = tg.BOS_ID
    x, ve = torch.randn(2, 1, T, D).unbind(0)
    y = attn(x, ve, tg.attention_mask(tokens, torch.tensor(window)))
    out = attention_reference(attn, x[0].double(), ve[0].double(), tokens, window, freqs, scale_gain,
                              xsa_alpha=attn.xsa_alpha.detach().double() if xsa else None, key_offset=key_offset)
    torch.testing.assert_close(y[0].double(), out, atol=2e-5, rtol=2e-5)


def test_partial_key_offset_moves_the_stationary_quarters_one_token_later():
    """head_dim 8 under half-truncated RoPE: pairs (0, 4) and (1, 5) turn, pairs (2, 6) and (3, 7) stand still, so
    dims 2, 3, 6, 7 of key t > 0 are key t - 1's, as upstream offsets head_dim/4:head_dim/2 and 3·head_dim/4:.
    Key entry (t, h, d) is 100t + 10h + d, so each entry says where it came from."""
    T, H, Dh = 5, 2, 8
    assert (tg.rotary_frequencies(Dh, 10000.0, "half_yarn") == 0).tolist() == [False, False, True, True]
    t, h, d = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(Dh), indexing="ij")
    k = (100 * t + 10 * h + d).float()[None]  # (1, T, H, Dh)
    from_previous = torch.isin(d, torch.tensor([2, 3, 6, 7])) & (t > 0)
    expected = (100 * torch.where(from_previous, t - 1, t) + 10 * h + d).float()[None]
    assert torch.equal(tg.partial_key_offset(k), expected)


def test_key_offset_is_on_in_every_preset_and_off_leaves_the_model_unchanged(monkeypatch):
    """Every preset offsets the keys of its L blocks (the proxy measured it, with XSA, -0.13). Off, no block
    offsets, partial_key_offset is never called, and the loss is the one of a model without the feature. On, the
    tiny model's L block (1 of SL) offsets, with the same parameters, and the loss moves, by ~300 times its float
    rounding."""
    assert all(tg.parse_args([f"--preset={name}"]).key_offset for name in tg.PRESETS)
    tokens = random_documents(257, seed=2)
    args = tokens[:-1].int(), tokens[1:].long(), {"S": torch.tensor(128), "L": torch.tensor(256)}

    def run(**flags):  # without XSA, the attention source and backout, which damp the key offset's effect on this loss
        model, _ = tiny_model(xsa_layers="", attn_source=-1, backout_layer=-1, **flags)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # off the init, whose zero projections and small logits would hide the attention
            for param in model.parameters():
                param.add_(0.3 * torch.randn(param.shape, generator=g))
        return model, model(*args).item()

    monkeypatch.setattr(tg, "partial_key_offset", lambda k: pytest.fail("partial_key_offset ran with the flag off"))
    off, loss_off = run(key_offset=False)
    assert [block.attn.key_offset for block in off.blocks] == [False, False]
    monkeypatch.undo()
    (default, loss_default), (on, loss_on) = run(), run(key_offset=True)
    assert [block.attn.key_offset for block in on.blocks] == [False, True] and loss_default == loss_on
    assert list(on.state_dict()) == list(off.state_dict()) and abs(loss_on - loss_off) > 1e-4  # 2.5e-4 here


def test_key_offset_needs_half_yarn_and_a_long_window_block():
    for argv, needle in [(["--key_offset=true", "--rope=plain"], "--key_offset=True: needs --rope=half_yarn"),
                         (["--key_offset=1", "--window_pattern=SSSSSSSSSSS"], "--key_offset=True: needs an L block")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            tg.parse_args(argv)
    for argv in (["--rope=plain"], ["--window_pattern=SSSSSSSSSSS"]):  # on by default: the way out is named
        with pytest.raises(ValueError, match=re.escape("(add --key_offset=false)")):
            tg.parse_args(argv)
    assert tg.parse_args([]).key_offset and not tg.parse_args(["--rope=plain", "--key_offset=false"]).key_offset


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return x / (x.square().mean(-1, keepdim=True) + torch.finfo(torch.float32).eps).sqrt()


def attention_reference(attn, x: torch.Tensor, ve: torch.Tensor | None, tokens: torch.Tensor, window: int,
                        freqs: torch.Tensor, scale_gain: float = 1.0,
                        value_gate: torch.Tensor | None = None, xsa_alpha: torch.Tensor | None = None,
                        key_offset: bool = False, paired: bool = False) -> torch.Tensor:
    """x, ve: (T, D) fp64 -> the attention module's output (T, D) in fp64: heads one by one in einsum, the
    rotation as complex numbers by freqs, scores scaled by attn.scale · scale_gain, the mask from loops. With
    value_gate (H, k), head h's value takes 2σ(value_gate[h]·x[:k]) of the value embedding instead of the mix's b.
    With xsa_alpha (H,), exclusive self attention: head h's output o at token t becomes o - tanh(α_h)·(o·v)/(v·v)·v,
    v that token's own value in head h. With key_offset, key t > 0 takes key t - 1's entries on both dims of every
    pair whose frequency is 0. Paired: head h of token t is position 2t + h // (H/2) of slot h mod (H/2), rotated
    there, and sees the positions of its slot not after it, fewer than `window` back, of its token's document."""
    T, D = x.shape
    H, Dh = attn.num_heads, attn.head_dim
    W = attn.qkvo.detach().double()
    q, k, v = ((x @ W[i].T).view(T, H, Dh) for i in range(3))
    place = [(2 * t + h // (H // 2), h % (H // 2)) for t in range(T) for h in range(H)]  # (t, h) -> (position, slot)

    def spread(z):  # (T, H, Dh) -> (2T, H/2, Dh), each head at its place
        out = z.new_zeros(2 * T, H // 2, Dh)
        for (position, slot), row in zip(place, z.reshape(T * H, Dh)):
            out[position, slot] = row
        return out

    q, k = rms_norm(q), rms_norm(k)
    if paired:
        q, k = spread(q), spread(k)
    q, k = (rotate_as_complex(t, freqs) for t in (q, k))
    if key_offset:
        still = torch.cat([freqs == 0, freqs == 0])  # (Dh,): dims i and i + Dh/2 of a pair that does not turn
        previous = torch.stack([k[max(t - 1, 0)] for t in range(T)])
        k = torch.where(still, previous, k)
    if ve is not None and value_gate is None:
        a, b = attn.value_mix.detach().double()
        v = a * v + b * ve.view(T, H, Dh)
    elif ve is not None:
        (a,) = attn.value_mix.detach().double()
        share = 2 * torch.sigmoid(torch.einsum("tk,hk->th", x[:, :value_gate.shape[1]], value_gate))  # (T, H)
        v = a * v + share[..., None] * ve.view(T, H, Dh)
    if paired:
        doc = (tokens == tg.BOS_ID).cumsum(0).tolist()
        visible = torch.tensor([[k <= q and q - k < window and doc[q // 2] == doc[k // 2] for k in range(2 * T)]
                                for q in range(2 * T)])
    else:
        visible = document_window_from_loops(tokens, window)
    scores = attn.scale * scale_gain * torch.einsum("qhd,khd->hqk", q, k)
    p = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    gate = torch.sigmoid(x[:, :attn.gate_dim] @ attn.gate.detach().double().T)  # (T, H)
    o = torch.einsum("hqk,khd->qhd", p, spread(v) if paired else v)
    if paired:  # each head's output back from its place
        o = torch.stack([o[position, slot] for position, slot in place]).view(T, H, Dh)
    if xsa_alpha is not None:
        along_v = torch.einsum("thd,thd->th", o, v) / torch.einsum("thd,thd->th", v, v)  # (T, H)
        o = o - torch.tanh(xsa_alpha)[None, :, None] * along_v[..., None] * v
    return (o * gate[..., None]).reshape(T, D) @ W[3].T


def python_bigram_rows(inputs: torch.Tensor, buckets: int) -> list[int]:
    """The hash in plain Python integers: row (36313·t ^ 27191·previous) mod (buckets - 1), the first row reserved."""
    x = inputs.tolist()
    return [buckets - 1] + [((36313 * x[t]) ^ (27191 * x[t - 1])) % (buckets - 1) for t in range(1, len(x))]


def python_sign_rows(inputs: torch.Tensor, rows: int) -> list[int]:
    """The sign table's row in plain Python integers: (previous ^ t) mod rows, row 0 for the first position."""
    x = inputs.tolist()
    return [0] + [(x[t] ^ x[t - 1]) % rows for t in range(1, len(x))]


def test_bigram_sign_index_matches_the_formula_in_python_integers():
    tokens = torch.tensor([50256, 17, 50303, 0, 42, 42, 9000], dtype=torch.int32)
    assert tg.bigram_sign_index(tokens, 8192).tolist() == python_sign_rows(tokens, 8192)
    assert tg.bigram_sign_index(tokens, 5).tolist() == python_sign_rows(tokens, 5)


def test_the_bigram_sign_table_is_balanced_signs_the_same_for_every_seed():
    """±1 in bf16, about half of each, and the same table whatever the run's seed (every rank builds its own)."""
    torch.manual_seed(1)
    a = tg.bigram_sign_table(512, 64)
    torch.manual_seed(2)
    b = tg.bigram_sign_table(512, 64)
    assert a.dtype == torch.bfloat16 and a.shape == (512, 64) and torch.equal(a, b)
    assert set(a.unique().tolist()) == {-1.0, 1.0} and abs(a.float().mean().item()) < 0.02
    assert not torch.equal(a[0], a[1])  # rows differ: a pair's signs are its own


def test_bigram_hash_matches_the_formula_in_python_integers():
    tokens = torch.tensor([50256, 17, 50303, 0, 42, 42, 9000], dtype=torch.int32)
    assert tg.bigram_hash(tokens, 377_280).tolist() == python_bigram_rows(tokens, 377_280)
    assert tg.bigram_hash(tokens, 7).tolist() == python_bigram_rows(tokens, 7)


CAPPED = {"tanh:15": lambda l: 15 * torch.tanh(l / 15), "sigmoid:23,5,7.5": lambda l: 23 * torch.sigmoid((l + 5) / 7.5)}


def gpt_reference_loss(model, tokens: torch.Tensor, windows: dict[str, int], freqs: torch.Tensor, scale_gain: float,
                       logit_cap: str, mtp_weights: list[float] | None = None, value_embed_layers: str = "",
                       value_embed_gates: bool = False, skips: list[tuple[int, int]] | None = None,
                       no_attention: tuple[int, ...] = (), xsa_layers: tuple[int, ...] = (),
                       key_offset: bool = False, backout_layer: int = -1,
                       paired: tuple[int, ...] = (), attn_source: int = -1) -> torch.Tensor:
    """The whole GPT written out in fp64, each wire spelled out: x0 = norm(embedding); block i first mixes
    a_i·x + b_i·x0; value embedding j feeds blocks j and L - num_ve + j, or, untied, the j-th block listed in
    value_embed_layers; with value_embed_gates each of those blocks weighs it by its own gate on the block's
    normed input; a second-half block i first adds sigmoid(gate)·(output of its mirror block L - 1 - i), or, given
    skips, block dst adds sigmoid(gate k)·(output of block src) for the k-th (src, dst); blocks in no_attention
    skip attention; blocks in xsa_layers take out of each head's output its part along the token's own value, a
    share tanh(xsa_alpha[h]); a third residual_mix entry c scales x by c before the MLP; every attention rotates
    by freqs and scales its scores by attn_scale · scale_gain; with key_offset, the attention of each L block
    offsets its keys; blocks in paired attend with paired heads; blocks after attn_source attend over
    rms_norm(its output) instead of their own input; with bigram_signs each bigram row is multiplied
    elementwise by its pair's row of the sign table; the head reads norm(x), or norm(x - λ·(output of block
    backout_layer)); logits are softcapped. With mtp_weights, position t also predicts the token k + 1 ahead, weight
    w_k, where the sequence still has one."""
    inputs, targets = tokens[:-1], tokens[1:]
    p = {name: t.detach().double() for name, t in model.named_parameters()}
    L, num_ve = len(model.blocks), len(model.value_embeds)
    e = p["embed.weight"][inputs]
    if model.smear:  # token t gets λ·σ(w·e_t[:k]) of token t - 1's embedding
        k = p["smear_gate"].shape[1]
        gate = torch.sigmoid(e[1:, :k] @ p["smear_gate"][0])
        e = torch.cat([e[:1], e[1:] + p["smear_lambda"] * gate[:, None] * e[:-1]])
    x0 = rms_norm(e)
    x, outputs = x0, []
    for i, block in enumerate(model.blocks):
        if skips is None and i >= L // 2:
            x = x + torch.sigmoid(p["skip_gates"][i - L // 2]) * outputs[L - 1 - i]
        for k, (src, dst) in enumerate(skips or []):
            if dst == i:
                x = x + torch.sigmoid(p["skip_gates"][k]) * outputs[src]
        if value_embed_layers:
            listed = [int(b) for b in value_embed_layers.split(",")]
            j = listed.index(i) if i in listed else None
        else:
            j = i if i < num_ve else i - (L - num_ve) if i >= L - num_ve else None
        ve = p[f"value_embeds.{j}.weight"][inputs] if j is not None else None
        value_gate = p[f"blocks.{i}.attn.value_gate"] if value_embed_gates and j is not None else None
        if model.bigram_embed is not None:
            bigram = p["bigram_embed.weight"][python_bigram_rows(inputs, model.bigram_embed.num_embeddings)]
            if model.bigram_signs is not None:
                signs = model.bigram_signs.double()
                bigram = bigram * signs[python_sign_rows(inputs, len(signs))]
            x = x + p["bigram_lambdas"][i] * bigram
        a, b, *c = p[f"blocks.{i}.residual_mix"]  # c: the MLP's residual λ, with --sublayer_residual
        x = a * x + b * x0
        if i not in no_attention:
            xsa_alpha = p[f"blocks.{i}.attn.xsa_alpha"] if i in xsa_layers else None
            offset = key_offset and model.window_pattern[i] == "L"
            source = outputs[attn_source] if 0 <= attn_source < i else x
            x = x + attention_reference(block.attn, rms_norm(source), ve, inputs, windows[model.window_pattern[i]],
                                        freqs, scale_gain, value_gate, xsa_alpha, offset, i in paired)
        x = c[0] * x if c else x
        x = x + torch.relu(rms_norm(x) @ p[f"blocks.{i}.mlp.fc"].T).square() @ p[f"blocks.{i}.mlp.proj"].T
        outputs.append(x)
    if backout_layer >= 0:
        x = x - p["backout_lambda"] * outputs[backout_layer]
    logits = CAPPED[logit_cap](rms_norm(x) @ p["lm_head"])
    if mtp_weights is None:
        return F.cross_entropy(logits, targets)
    T = len(targets)
    shifted = [F.cross_entropy(logits[:T - k], targets[k:], reduction="sum") for k in range(len(mtp_weights))]
    return sum(w * loss for w, loss in zip(mtp_weights, shifted)) / T


# (num_layers, window_pattern, --skips, --no_attention_layers, --sublayer_residual, --xsa_layers): the U-net, and an
# odd depth with skips that share a source and a target (the order of the gates shows) around a block without
# attention, then with XSA on some of the attending blocks
LAYOUTS = {"unet": (4, "SLSL", "unet", "", False, ""), "skips": (5, "SLSLS", "0:2,1:4,0:4", "2", True, ""),
           "xsa": (5, "SLSLS", "0:2,1:4,0:4", "2", True, "0,3,4"),
           "backout_signs": (5, "SLSLS", "0:2,1:4,0:4", "2", True, "")}
# layouts that also turn on the backout (from block 2, the one without attention), a 7-row bigram sign table,
# paired heads in blocks 0 and 3 (4 heads: a slot pairs heads 0 and 2, 1 and 3), the later blocks attending over
# block 0's output, and output projections that start uniform
# The other layouts turn off what the tiny preset has of session 8's tricks (in its blocks 0 and 1)
SIX_TRICKS_OFF = dict(backout_layer=-1, bigram_signs=0, paired_head_layers="", attn_source=-1)
BACKOUT_SIGNS = {"backout_signs": dict(backout_layer=2, bigram_signs=7, paired_head_layers="0,3", num_heads=4,
                                       head_dim=16, attn_source=0, zero_attn_out=False)}


@pytest.mark.parametrize("logit_cap, bigram_buckets, smear, rope, value_embed_layers, value_embed_gates, layout, "
                         "key_offset", [
    ("tanh:15", 0, False, "plain", "", False, "unet", False),
    ("tanh:15", 97, False, "plain", "", False, "backout_signs", False),
    ("sigmoid:23,5,7.5", 0, False, "plain", "", False, "unet", False),
    ("tanh:15", 97, False, "plain", "", False, "unet", False),
    ("tanh:15", 0, True, "plain", "", False, "unet", False),
    ("tanh:15", 0, False, "half_yarn", "", False, "unet", False),
    ("tanh:15", 0, False, "plain", "1,2,3", False, "unet", False),
    ("tanh:15", 0, False, "plain", "", True, "unet", False),
    ("tanh:15", 0, False, "plain", "1,2,3", True, "unet", False),
    ("tanh:15", 97, False, "plain", "", True, "skips", False),
    ("tanh:15", 97, False, "plain", "", True, "xsa", False),
    ("tanh:15", 0, False, "half_yarn", "", False, "skips", True)])
def test_gpt_forward_matches_the_model_written_out(monkeypatch, logit_cap, bigram_buckets, smear, rope,
                                                   value_embed_layers, value_embed_gates, layout, key_offset):
    """Every parameter moved off its init (so no wire hides behind a zero or a symmetry), then GPT.forward against
    gpt_reference_loss. The model's bf16 casts are made fp32 here, so the two agree to float rounding and a skip
    from the wrong block, a value embedding fed to the wrong block, a swapped mix or a dropped gate all show. With
    half_yarn, the model is at its final validation, two YaRN stretches in (long windows 128 -> 256 -> 384); with
    key_offset, the L blocks 1 and 3 offset their keys, the S blocks do not."""
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda t: t.float())
    num_layers, window_pattern, skips, no_attention, sublayer_residual, xsa_layers = LAYOUTS[layout]
    model, hp = tiny_model(num_layers=num_layers, window_pattern=window_pattern, num_value_embeds=2,
                           logit_cap=logit_cap, bigram_buckets=bigram_buckets, smear=smear, rope=rope,
                           window_blocks="1:1,1:2", val_window_blocks="1:3", value_embed_layers=value_embed_layers,
                           value_embed_gates=value_embed_gates, skips=skips, no_attention_layers=no_attention,
                           sublayer_residual=sublayer_residual, xsa_layers=xsa_layers, key_offset=key_offset,
                           **BACKOUT_SIGNS.get(layout, SIX_TRICKS_OFF))
    tg.set_yarn(model, hp.num_iterations, hp)
    if rope == "plain":
        freqs, scale_gain = plain_frequencies(hp.head_dim, hp.rope_base), 1.0
    else:
        freqs, scale_gain = half_yarn_frequencies(hp.head_dim, [128, 256, 384])
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(param + 0.3 * param.std().nan_to_num(0.3).clamp_min(0.3) * torch.randn(param.shape, generator=g))
        for ve in model.value_embeds:  # unit scale, far above their init, so a misrouted one shows
            ve.weight.normal_(generator=g)
        for block in model.blocks:  # unit scale: gates spread over (0, 2), so one on the wrong input shows
            if block.attn is not None and block.attn.value_gate is not None:
                block.attn.value_gate.normal_(generator=g)
            if block.attn is not None and block.attn.xsa_alpha is not None:  # tanh(α) spread over (-1, 1)
                block.attn.xsa_alpha.normal_(generator=g)
    tokens = random_documents(385, seed=8)
    windows = {"S": 128, "L": 256}
    loss = model(tokens[:-1].int(), tokens[1:].long(), {k: torch.tensor(w) for k, w in windows.items()})
    reference = gpt_reference_loss(model, tokens, windows, freqs, scale_gain, logit_cap, None,
                                   value_embed_layers, value_embed_gates,
                                   None if skips == "unet" else [tuple(map(int, s.split(":"))) for s in skips.split(",")],
                                   tuple(int(i) for i in no_attention.split(",") if i),
                                   tuple(int(i) for i in xsa_layers.split(",") if i), key_offset,
                                   BACKOUT_SIGNS.get(layout, {}).get("backout_layer", -1),
                                   tuple(tg.int_list(BACKOUT_SIGNS.get(layout, {}).get("paired_head_layers", ""))),
                                   BACKOUT_SIGNS.get(layout, {}).get("attn_source", -1))
    # fp32 agrees to ~1e-7; the bound is tight enough that YaRN's stretch of the frequencies (4e-6 here) shows
    assert abs(loss.item() - reference.item()) < 1e-6 * reference.item(), (loss.item(), reference.item())


def test_skips_are_the_records_one_pair_or_the_unet_with_gates_at_sigmoid_one_half():
    """The record: 11 blocks, one skip 3 -> 6 gated from -1.5, block 6 without attention. The U-net: block i < L/2
    feeds block L-1-i, gate k for the k-th block of the second half; every block attends."""
    hp = tg.parse_args([])
    assert (hp.num_layers, hp.skip_pairs, hp.skip_gate_init, hp.no_attention_layer_list) == (11, [(3, 6)], -1.5, [6])
    hp = tg.parse_args(["--num_layers=12", "--window_pattern=SSSLSSSLSSSL", "--skips=unet", "--no_attention_layers="])
    assert hp.skip_pairs == [(5, 6), (4, 7), (3, 8), (2, 9), (1, 10), (0, 11)]
    model, _ = tiny_model(num_layers=4, window_pattern="SLSL", skip_gate_init=0)
    assert model.skip_pairs == [(1, 2), (0, 3)] and torch.equal(model.skip_gates.detach(), torch.zeros(2))
    assert all(block.attn is not None for block in model.blocks)
    model, _ = tiny_model(num_layers=5, window_pattern="SLSLS", skips="1:3", skip_gate_init=-1.5,
                          no_attention_layers="2", num_value_embeds=2, sublayer_residual=False)
    assert model.skip_pairs == [(1, 3)] and torch.equal(model.skip_gates.detach(), torch.tensor([-1.5]))
    assert [block.attn is None for block in model.blocks] == [False, False, True, False, False]
    assert all(torch.equal(block.residual_mix.detach(), torch.tensor([1.0, 0.0])) for block in model.blocks)
    model, _ = tiny_model(sublayer_residual=True)
    assert torch.allclose(model.blocks[1].residual_mix.detach(), torch.tensor([1.1**0.5, 0.0, 1.1**0.5]))


def test_layout_flags_reject_what_the_model_cannot_wire():
    for argv, needle in [(["--skips=unet"], "must be even with --skips=unet"),
                         (["--skips=6:3"], "--skips=6:3"), (["--skips=3:12"], "--skips=3:12"),
                         (["--skips=3:6,3:6"], "--skips=3:6,3:6"), (["--skips=3-6"], "--skips=3-6"),
                         (["--no_attention_layers=12"], "--no_attention_layers=12"),
                         (["--no_attention_layers=0"], "reads a value embedding"),
                         (["--value_embed_layers=4,6", "--no_attention_layers=6"], "reads a value embedding"),
                         (["--xsa_layers=6"], "--xsa_layers=6: must be distinct indices of blocks with attention"),
                         (["--xsa_layers=11"], "--xsa_layers=11"), (["--xsa_layers=1,1"], "--xsa_layers=1,1"),
                         (["--xsa_layers=1;3"], "--xsa_layers=1;3"), (["--adam_xsa_lr=0"], "--adam_xsa_lr=0")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            tg.parse_args(argv)
    hp = tg.parse_args(["--num_layers=12", "--window_pattern=SSSLSSSLSSSL", "--skips=2:7", "--no_attention_layers=7",
                        "--xsa_layers="])
    assert hp.skip_pairs == [(2, 7)] and hp.no_attention_layer_list == [7]
    assert tg.parse_args(["--skips="]).skip_pairs == []
    assert tg.parse_args(["--xsa_layers=1,3,4,7,8,10"]).xsa_layer_list == [1, 3, 4, 7, 8, 10]


def test_gpt_multi_token_loss_matches_the_model_written_out(monkeypatch):
    """GPT.forward with three weighted targets ahead against gpt_reference_loss; the weights change the loss."""
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda t: t.float())
    model, hp = tiny_model(logit_cap="sigmoid:23,5,7.5", rope="plain", key_offset=False, xsa_layers="", **SIX_TRICKS_OFF)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=torch.Generator().manual_seed(9)))
    tokens = random_documents(129, seed=6)
    tokens[100:103] = tokens[100]  # two targets ahead of one position on the same token
    windows = {"S": 128, "L": 256}
    args = tokens[:-1].int(), tokens[1:].long(), {k: torch.tensor(w) for k, w in windows.items()}
    weights = [1.0, 0.5, 0.25]
    loss = model(*args, torch.tensor(weights))
    reference = gpt_reference_loss(model, tokens, windows, plain_frequencies(hp.head_dim, hp.rope_base), 1.0,
                                   hp.logit_cap, weights)
    assert abs(loss.item() - reference.item()) < 1e-5 * reference.item(), (loss.item(), reference.item())
    assert loss.item() > 1.5 * model(*args).item()  # the targets ahead are weighed in


@pytest.mark.parametrize("value_embed_gates", [False, True])
def test_activations_stay_bf16_with_every_model_flag_on(value_embed_gates):
    """An fp32 parameter of shape (1,) or more promotes a bf16 activation to fp32: the model then runs its matmuls
    at the fp32 rate, and the fused MLP kernel, tiled for bf16, runs out of shared memory on a GPU."""
    model, hp = tiny_model(logit_cap="sigmoid:23,5,7.5", bigram_buckets=97, smear=True, value_embed_layers="0,1",
                           value_embed_gates=value_embed_gates, sublayer_residual=True, xsa_layers="1",
                           paired_head_layers="0", backout_layer=0, attn_source=0, bigram_signs=64)
    with torch.no_grad():
        model.smear_lambda.fill_(0.5)
    seen = []
    for module in [*model.blocks, *[block.mlp for block in model.blocks]]:
        module.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    tokens = random_documents(257, seed=1)
    model(tokens[:-1].int(), tokens[1:].long(), {"S": torch.tensor(128), "L": torch.tensor(256)})
    assert seen == [torch.bfloat16] * 2 * hp.num_layers


def tiny_model(**overrides):
    torch.manual_seed(0)
    hp = tg.parse_args(["--preset=tiny", *[f"--{k}={v}" for k, v in overrides.items()]])
    return tg.GPT(hp), hp


def test_output_projection_starts_uniform_as_q_k_and_v_and_zero_when_asked():
    model, hp = tiny_model()  # the default since session 8: --zero_attn_out=false
    bound = 3**0.5 * 0.5 * hp.model_dim**-0.5
    for block in model.blocks:
        o = block.attn.qkvo[3].detach()
        assert o.abs().max() <= bound and o.std() == pytest.approx(bound / 3**0.5, rel=0.1)
    assert all(not b.attn.qkvo[3].any() for b in tiny_model(zero_attn_out=True)[0].blocks)


def test_zero_initialized_output_projections_make_blocks_identity():
    model, hp = tiny_model(sublayer_residual=False, zero_attn_out=True, paired_head_layers="")
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.qkvo[3]) == 0 and torch.count_nonzero(block.mlp.proj) == 0
        x, x0 = torch.randn(2, 1, 16, hp.model_dim).unbind(0)
        mask = tg.attention_mask(torch.arange(16), torch.tensor(128))
        assert torch.equal(block(x, x0, None, mask), x)  # residual_mix starts at (1, 0): x, not x0, passes


def test_xsa_sits_in_the_blocks_named_and_its_zero_strengths_start_as_plain_attention():
    """The record has XSA in upstream's blocks 1, 3, 4, 7, 8, 10 (the proxy measured it, with the key offset,
    -0.13); only blocks --xsa_layers names have it; a model with it has one α per head at 0 (tanh(0) = 0), the
    same loss as without it, and another loss once α moves."""
    assert tg.parse_args([]).xsa_layer_list == [1, 3, 4, 7, 8, 10]
    assert tg.parse_args(["--preset=tiny"]).xsa_layer_list == [1]
    plain, hp = tiny_model(num_layers=4, window_pattern="SLSL", xsa_layers="")
    assert all(b.attn.xsa_alpha is None for b in plain.blocks)
    assert not any("xsa" in name for name, _ in plain.named_parameters())
    model, _ = tiny_model(num_layers=4, window_pattern="SLSL", xsa_layers="1,2")
    assert [b.attn.xsa_alpha is not None for b in model.blocks] == [False, True, True, False]
    assert all(torch.equal(model.blocks[i].attn.xsa_alpha.detach(), torch.zeros(hp.num_heads)) for i in (1, 2))
    with torch.no_grad():  # nonzero output projections, so attention reaches the loss
        for a, b in zip(plain.blocks, model.blocks):
            a.attn.qkvo[3].normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
            b.attn.qkvo[3].copy_(a.attn.qkvo[3])
    tokens = random_documents(257, seed=2)
    args = tokens[:-1].int(), tokens[1:].long(), {"S": torch.tensor(128), "L": torch.tensor(256)}
    assert torch.equal(model(*args), plain(*args))
    with torch.no_grad():
        model.blocks[2].attn.xsa_alpha.fill_(1.0)
    assert not torch.equal(model(*args), plain(*args))


def test_value_embeds_tied_across_the_u_net_without_value_embed_layers():
    """--value_embed_layers= gives the layout of before 2026-12-02: 3 embeddings, embedding i in blocks i and
    9 + i, no gates, each block mixing a·v + b·value_embedding."""
    tied = ["--num_layers=12", "--window_pattern=SSSLSSSLSSSL", "--skips=unet", "--value_embed_layers="]
    assert tg.parse_args(tied).value_embed_of_block == [0, 1, 2] + [None] * 6 + [0, 1, 2]
    model, hp = tiny_model(num_layers=12, window_pattern="SSSLSSSLSSSL", num_value_embeds=3)
    assert model.value_embed_of_block == [0, 1, 2] + [None] * 6 + [0, 1, 2] and len(model.value_embeds) == 3
    assert all(b.attn.value_gate is None and b.attn.value_mix.tolist() == [0.5, 0.5] for b in model.blocks)
    assert not any("value_gate" in name for name, _ in model.named_parameters())


def test_untied_value_embeds_feed_the_listed_blocks_through_gates_open_at_one():
    """The record's (upstream's) 5 untied embeddings on blocks 0, 1, 8, 9, 10 of 11; on 12 blocks 1, 2, 9, 10, 11:
    the k-th listed block reads embedding k, each of them with a zero gate (2σ(0) = 1) and only a in its mix; the
    other blocks have neither."""
    hp = tg.parse_args([])
    assert hp.value_embed_of_block == [0, 1] + [None] * 6 + [2, 3, 4] and hp.value_embed_gates
    hp = tg.parse_args(["--num_layers=12", "--window_pattern=SSSLSSSLSSSL", "--value_embed_layers=1,2,9,10,11"])
    assert hp.value_embed_of_block == [None, 0, 1] + [None] * 6 + [2, 3, 4]
    model, hp = tiny_model(num_layers=12, window_pattern="SSSLSSSLSSSL", value_embed_layers="1,2,9,10,11",
                           value_embed_gates=True, value_embed_std=0.01)
    assert len(model.value_embeds) == 5
    for ve in model.value_embeds:
        assert ve.weight.std().item() == pytest.approx(0.01, rel=0.05)
    for i, block in enumerate(model.blocks):
        if i in (1, 2, 9, 10, 11):
            assert block.attn.value_gate.shape == (hp.num_heads, hp.attn_gate_dim) and not block.attn.value_gate.any()
            assert block.attn.value_mix.tolist() == [0.5]
        else:
            assert block.attn.value_gate is None


def test_embeddings_start_at_their_configured_scales():
    model, hp = tiny_model(embed_std=0.03, value_embed_std=0.2, num_value_embeds=1)
    assert model.embed.weight.std().item() == pytest.approx(0.03, rel=0.02)
    assert model.value_embeds[0].weight.std().item() == pytest.approx(0.2, rel=0.02)


@pytest.mark.parametrize("compile", [False, True])
def test_a_row_table_sums_its_gradient_as_autograd_sums_an_embeddings(compile):
    """Three backward passes through a RowTable, rows repeated, the table looked up twice a forward, leave in grad_sum
    what they leave in an nn.Embedding's .grad, and the weight's .grad None; a lookup under no_grad adds nothing.
    compile: torch.compile keeps the in-place add in the backward graph (aot_eager here; inductor on the GPU: the
    compiled row-table test)."""
    torch.manual_seed(0)
    table, plain = tg.RowTable(50, 8), torch.nn.Embedding(50, 8)
    plain.weight.data.copy_(table.weight.data)
    scale = torch.randn(8)

    def loss(embedding, rows):
        return (embedding(rows).bfloat16().float().square() * scale).sum() + (embedding(rows.flip(0)) * scale).sum()
    run = torch.compile(loss, backend="aot_eager", fullgraph=True) if compile else loss
    for seed in range(3):
        rows = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(seed), dtype=torch.int64).int()
        run(table, rows).backward()
        loss(plain, rows).backward()
        with torch.no_grad():
            run(table, rows)
    assert table.weight.grad is None and plain.weight.grad[:10].abs().min() > 0
    torch.testing.assert_close(table.grad_sum, plain.weight.grad, rtol=1e-6, atol=1e-6)


def test_lm_head_is_the_transposed_embedding_while_tied():
    model, hp = tiny_model()
    assert model.lm_head.shape == (hp.model_dim, hp.vocab_size)
    assert torch.equal(model.lm_head.T, model.embed.weight)
    tokens = random_documents(64, seed=4)
    loss = model(tokens[:-1].int(), tokens[1:].long(), {k: torch.tensor(128) for k in "SL"})
    loss.backward()
    assert model.embed.weight.grad is None  # summed in its row table, outside autograd
    expected = model.lm_head.grad + model.embed.grad_sum.T
    model.hand_over_row_grads()
    assert model.embed.weight.grad is None
    torch.testing.assert_close(model.lm_head.grad, expected)
    assert all(t.weight.grad is t.grad_sum for t in model.row_tables() if t is not model.embed)
    with torch.no_grad():
        model.lm_head.add_(1.0)
    model.tie_weights()
    assert torch.equal(model.lm_head.T, model.embed.weight)


def test_logits_are_softcapped():
    x = torch.linspace(-1000, 1000, 101)
    cap = tg.LogitCap.parse("tanh:15")
    y = tg.softcap(x, cap)
    assert y.abs().max() <= 15.0 and torch.allclose(tg.softcap(torch.tensor([0.1]), cap), torch.tensor([0.1]),
                                                    atol=1e-4)


def test_paired_head_blocks_attend_over_twice_the_positions():
    """Upstream's blocks 0, 2, 5, 9 pass its checks; only they are paired; the rotary table covers 2T positions; on
    CPU their mask is the dense (2T, 2T) one, in which 2t and 2t + 1 are one token's."""
    hp = tg.parse_args(["--bigram_buckets=0", "--bigram_signs=0"])
    with torch.device("meta"):  # no memory, no time: the record model's structure only
        model = tg.GPT(hp)
    assert [i for i, b in enumerate(model.blocks) if b.attn is not None and b.attn.paired] == [0, 2, 5, 9]
    assert model.rotary.cos.size(1) == 2 * hp.max_seq_len
    unpaired = tg.parse_args(["--preset=tiny", "--paired_head_layers="])
    assert tg.GPT(unpaired).rotary.cos.size(1) == unpaired.max_seq_len
    tokens = torch.tensor([tg.BOS_ID, 5, 6, tg.BOS_ID, 7])
    mask = tg.attention_mask(tokens, torch.tensor(3), paired=True)[0, 0]
    doc = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]  # positions 2t, 2t + 1 -> token t's document
    assert torch.equal(mask, torch.tensor([[k <= q and q - k < 3 and doc[q] == doc[k] for k in range(10)]
                                           for q in range(10)]))


def test_the_record_preset_has_the_six_tricks_session_8_measured():
    """The proxy called backout, the sign table, paired heads, Q/K per head pair, the block-7 attention source and
    uniform output projections together 0.045 better (records/_runs/2026-12-02_recipe): the record and proxy presets
    build them, each wired (the record model on the meta device: structure only)."""
    for preset in ("record", "proxy"):
        hp = tg.parse_args([f"--preset={preset}"])
        assert (hp.backout_layer, hp.bigram_signs, hp.paired_head_layers, hp.muon_qk_head_pairs, hp.attn_source,
                hp.zero_attn_out) == (7, 8192, "0,2,5,9", True, 7, False)
    with torch.device("meta"):
        model = tg.GPT(tg.parse_args([]))
    assert model.backout_layer == 7 and model.backout_lambda.shape == (1,) and model.attn_source == 7
    assert model.bigram_signs.shape == (8192, 768)
    assert [i for i, b in enumerate(model.blocks) if b.attn is not None and b.attn.paired] == [0, 2, 5, 9]
    muon, _ = tg.build_optimizers(model, tg.parse_args([]), rank=0, world_size=1)
    assert {g["label"]: g["row_blocks"] for g in muon.param_groups}["attn.qkvo"] == (256, 256, 0, 0)


@pytest.mark.parametrize("flag", ["fp8_head", "fp8_mlp"])
def test_the_record_and_proxy_presets_train_in_fp8_and_the_tiny_one_in_bf16(flag):
    """Upstream's FP8 head and FP8 MLP, each level with bf16 on the proxy and faster a record step on one H200
    (records/_runs/2026-12-02_speed: -53 ms, session 9; -12 to -15 ms and 10 more, session 11), are on where the
    run is on a GPU; the tiny preset runs on CPUs."""
    assert [getattr(tg.parse_args([f"--preset={p}"]), flag) for p in ("record", "proxy", "tiny")] == [True, True, False]
    assert getattr(tg.parse_args([f"--{flag}=false"]), flag) is False


def test_the_record_model_is_built_on_its_device():
    """build_model creates every parameter and buffer on the training device (meta here: no memory, no time), so a
    GPU run initializes its ~2 GB of embeddings there instead of on the host and copying them."""
    hp = tg.parse_args([])
    model = tg.build_model(hp, torch.device("meta"), micro_steps=8)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"} and model.micro_steps == 8
    tg.set_yarn(model, hp.num_iterations, hp)  # the rotary tables' frequencies stay on the CPU, as yarn_at's


def test_parse_args_overrides_and_rejects_bad_flags():
    hp = tg.parse_args(["--preset=tiny", "--num_iterations=7", "--align_to_bos=false", "--muon_lr=0.5"])
    assert (hp.num_iterations, hp.align_to_bos, hp.muon_lr, hp.model_dim) == (7, False, 0.5, 64)
    assert tg.parse_args([]).model_dim == 768
    for argv, needle in [(["--nope=1"], "unknown flag --nope"), (["--num_iterations=x"], "--num_iterations=x"),
                         (["num_iterations=3"], "expected --name=value"), (["--preset=huge"], "--preset=huge"),
                         (["--num_layers=3", "--window_pattern=SSL", "--skips=unet", "--no_attention_layers=",
                           "--value_embed_layers="], "--num_layers=3"),
                         (["--num_heads=9", "--head_dim=9", "--model_dim=81"], "--model_dim=81: must be a multiple of 8"),
                         (["--backout_layer=10"], "--backout_layer=10: must be -1 (none) or a block before the last, 0 to 9"),
                         (["--backout_layer=-2"], "--backout_layer=-2"),
                         (["--attn_source=10"], "--attn_source=10: must be -1 (none) or a block before the last, 0 to 9"),
                         (["--bigram_buckets=0", "--bigram_signs=8192"], "--bigram_signs=8192: must be 0 (none) or a "
                                                                          "positive row count, and needs --bigram_buckets"),
                         (["--bigram_signs=-1"], "--bigram_signs=-1"),
                         (["--paired_head_layers=6"], "--paired_head_layers=6: must be distinct indices of blocks with "
                                                      "attention"),
                         (["--paired_head_layers=0,0"], "--paired_head_layers=0,0: must be distinct"),
                         (["--paired_head_layers=1"],
                          "--paired_head_layers=1: and --xsa_layers must not share a block"),
                         (["--paired_head_layers=3", "--xsa_layers=1"],
                          "--paired_head_layers=3: must be S blocks of --window_pattern while --key_offset"),
                         (["--paired_head_layers=0", "--num_heads=3", "--head_dim=256"],
                          "needs an even --num_heads, got 3")]:
        try:
            tg.parse_args(argv)
        except ValueError as e:
            assert needle in str(e)
        else:
            raise AssertionError(f"{argv} was accepted")


def test_schedules():
    hp = tg.parse_args(["--num_iterations=100", "--cooldown_frac=0.5", "--final_lr_frac=0.1", "--val_window_blocks=",
                        "--seq_lens=1024,2048", "--lr_stage_muls=1.0,1.5", "--window_blocks=1:3,3:7,5:11",
                        "--momentum_warmup_frac=0.2", "--momentum_cooldown_frac=0.1"])
    # lr: stage multiplier 1.0 then 1.5; from step 50 linear from the stage's multiplier to 0.1
    assert [tg.lr_scale(s, hp) for s in (0, 49, 50)] == [1.0, 1.0, 1.5]
    assert tg.lr_scale(75, hp) == pytest.approx(1.5 * 0.5 + 0.1 * 0.5) and tg.lr_scale(100, hp) == pytest.approx(0.1)
    assert [tg.seq_len_at(s, hp) for s in (0, 49, 50, 99)] == [1024, 1024, 2048, 2048]
    assert [tg.windows_at(s, hp) for s in (0, 33, 34, 67, 100)] == [
        {"S": 128, "L": 384}, {"S": 128, "L": 384}, {"S": 384, "L": 896}, {"S": 640, "L": 1408}, {"S": 640, "L": 1408}]
    # momentum: 0.85 -> 0.95 over the first 20 steps, 0.95 -> 0.85 over the last 10
    assert [tg.momentum_at(s, hp) for s in (0, 10, 20, 50, 90, 95, 100)] == pytest.approx(
        [0.85, 0.90, 0.95, 0.95, 0.95, 0.90, 0.85])


def test_multi_token_weights_follow_the_schedule():
    """Upstream's record schedule [1, 0.5, 0.25->0] -> [1, 0.5->0] -> [1] in thirds of training, written as its
    rule in x = step / steps, padded to three weights, the record's default; the next-token loss has no table."""
    hp = tg.parse_args(["--num_iterations=90"])
    assert hp.mtp_weights == "1:0.5:0.25..0,1:0.5..0,1"

    def rule(step):
        x = step / 90
        return [1, 0.5, 0.25 * (1 - 3 * x)] if x < 1 / 3 else [1, 0.5 * (2 - 3 * x), 0] if x < 2 / 3 else [1, 0, 0]

    for step in (0, 1, 15, 29, 30, 31, 45, 59, 60, 75, 89):
        assert tg.mtp_weights_at(step, hp) == pytest.approx(rule(step), abs=1e-12), step
    table = tg.mtp_weight_tensors(hp, "cpu")
    assert len(table) == 90 and all(t.shape == (3,) and t.dtype == torch.float32 for t in table)
    assert table[15].tolist() == pytest.approx(rule(15))
    assert tg.parse_args(["--mtp_weights=2:1..3"]).mtp_stages == [[(2.0, 2.0), (1.0, 3.0)]]
    assert tg.mtp_weight_tensors(tg.parse_args(["--mtp_weights=1"]), "cpu") is None
    assert tg.mtp_weight_tensors(tg.parse_args(["--mtp_weights=1,1"]), "cpu") is None
    for bad in ("", "1:", "1..", "-1", "1;2", "1:0.5..x", "1,,1", "1>0", "1...0..2"):
        with pytest.raises(ValueError, match="--mtp_weights"):
            tg.parse_args([f"--mtp_weights={bad}"])


def test_block_mask_from_document_blocks_equals_create_block_mask():
    """The per-block decision (partial vs full blocks) is exactly what evaluating the mask on every pair gives;
    also for paired heads' 2T positions, each token's document twice."""
    T = 128 * 12
    for seed, window, paired in [(5, 384, False), (6, 128, False), (7, 1024, False), (8, 384, True)]:
        tokens = random_documents(T // 2 if paired else T, seed)
        tokens[torch.arange(0, tokens.numel(), 300)] = tg.BOS_ID  # also long documents that span blocks
        docs = (tokens == tg.BOS_ID).cumsum(0)
        docs = docs.repeat_interleave(2) if paired else docs
        mask_mod = tg.document_causal_window(docs, torch.tensor(window))
        ours = tg.block_mask(docs, torch.tensor(window), mask_mod)
        reference = create_block_mask(mask_mod, None, None, T, T, device="cpu")
        for counts, indices, ref_counts, ref_indices in [
            (ours.kv_num_blocks, ours.kv_indices, reference.kv_num_blocks, reference.kv_indices),
            (ours.full_kv_num_blocks, ours.full_kv_indices, reference.full_kv_num_blocks, reference.full_kv_indices)]:
            assert torch.equal(counts, ref_counts)
            for q, c in enumerate(counts[0, 0].tolist()):
                assert set(indices[0, 0, q, :c].tolist()) == set(ref_indices[0, 0, q, :c].tolist())
        q, k, v = torch.randn(3, 1, 2, T, 16).unbind(0)
        torch.testing.assert_close(flex_attention(q, k, v, block_mask=ours, scale=0.12),
                                   tg.attend(q, k, v, tg.create_mask(mask_mod, None, None, T, T), scale=0.12),
                                   atol=1e-5, rtol=1e-5)


def two_block_record_hp() -> tg.Hyperparameters:
    """The record model's widths in two blocks, so a GPU test compiles in seconds: a U-net and one tied value
    embedding, XSA in block 1, paired heads in block 0, block 1 attending over block 0's output and the head backing
    out part of it, as the tiny preset (two blocks hold neither the 3 -> 6 skip nor the attention-free block 6). The
    MLP in bf16, so that each GPU test changes one feature against it (test_fp8_mlp_matches_bf16_mlp_on_gpu turns
    FP8 on)."""
    return tg.Hyperparameters(num_layers=2, fp8_mlp=False, window_pattern="SL", skips="unet", no_attention_layers="",
                              value_embed_layers="", value_embed_gates=False, num_value_embeds=1, val_window_blocks="",
                              xsa_layers="1", paired_head_layers="0", backout_layer=0, attn_source=0, seq_lens="2048",
                              lr_stage_muls="1.0")


def test_two_block_record_hp_builds_on_cpu():
    """The GPU tests' hyperparameters must pass validation: a default that two blocks cannot take fails here."""
    assert tg.GPT(two_block_record_hp()).value_embed_of_block == [0, 0]


def two_block_run(hp: tg.Hyperparameters, compile: bool, micro_steps: int = 1) -> tuple[float, float, dict]:
    """hp's model on the GPU from a fixed init, its MLP projections moved off zero (which would hide the fc
    gradient): the loss under no_grad, then micro_steps backward passes of one batch -> (validation loss, training
    loss, parameter name -> gradient summed, in fp32: tests.helpers.gradients)."""
    inputs = random_documents(2048, seed=3)[None].repeat(2, 1).flatten()[:2049].cuda()
    windows = tg.window_tensors(0, hp, inputs.device)
    torch.manual_seed(0)
    model = tg.GPT(hp).cuda()
    for block in model.blocks:
        block.mlp.proj.data.normal_(0, 0.02)
    forward = torch.compile(model, dynamic=False) if compile else model
    with torch.no_grad():
        val_loss = forward(inputs[:-1].int(), inputs[1:].long(), windows).item()
    for _ in range(micro_steps):
        loss = forward(inputs[:-1].int(), inputs[1:].long(), windows)
        loss.backward()
    return val_loss, loss.item(), {n: g.float() for n, g in gradients(model).items() if g is not None}


@pytest.mark.gpu
def test_compiled_model_with_fused_mlp_matches_unfused_on_gpu():
    """--fused_mlp=true under torch.compile on CUDA (the custom op in the graph, its backward in the compiled
    backward) gives the loss and weight gradients of the unfused model, within bf16 noise."""
    hp = two_block_record_hp()
    results = [two_block_run(dataclasses.replace(hp, fused_mlp=fused), compile=True) for fused in (False, True)]
    (_, loss_plain, grads_plain), (_, loss_fused, grads_fused) = results
    grads_plain = {n: g for n, g in grads_plain.items() if "mlp" in n}
    assert abs(loss_fused - loss_plain) < 1e-2
    for name, g in grads_plain.items():
        assert ((grads_fused[name] - g).norm() / g.norm()).item() < 2e-2, name


def test_fp8_mlp_flag_reaches_every_block():
    hp = tg.parse_args(["--preset=tiny"])  # --fp8_mlp=false
    assert not any(block.mlp.fp8 for block in tg.GPT(hp).blocks)
    assert all(block.mlp.fp8 for block in tg.GPT(dataclasses.replace(hp, fp8_mlp=True)).blocks)


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_fp8_mlp_matches_bf16_mlp_on_gpu(compile):
    """--fp8_mlp=true on FP8 tensor cores, eager and under torch.compile (the op in the graph, the quantization of x,
    fc and proj around it): validation is the bf16 MLP's exactly; the training loss and the MLP's gradients are
    within the FP8 rounding (~3% on each operand of the two matmuls) of the bf16 MLP's."""
    hp = two_block_record_hp()
    tg.check_device(dataclasses.replace(hp, fp8_mlp=True), torch.device("cuda"))
    results = [two_block_run(dataclasses.replace(hp, fp8_mlp=fp8), compile) for fp8 in (False, True)]
    (val_bf16, loss_bf16, grads_bf16), (val_fp8, loss_fp8, grads_fp8) = results
    grads_bf16 = {n: g for n, g in grads_bf16.items() if "mlp" in n}
    assert abs(val_fp8 - val_bf16) < 1e-5  # validation runs the bf16 MLP either way
    assert abs(loss_fp8 - loss_bf16) < 2e-2, (loss_fp8, loss_bf16)
    for name, g in grads_bf16.items():
        err = ((grads_fp8[name] - g).norm() / g.norm()).item()
        assert err < 0.15, (name, err)


@pytest.mark.gpu
def test_compiled_row_tables_sum_their_gradients_as_eager_on_gpu():
    """Under torch.compile (inductor), the row tables' backward adds into their sums in place, as eager does, over two
    micro-steps: the embedding, the value embedding and the bigram table, within bf16 noise, none of them zero."""
    hp = two_block_record_hp()
    (_, _, eager), (_, _, compiled) = [two_block_run(hp, compile, micro_steps=2) for compile in (False, True)]
    tables = ("embed.weight", "value_embeds.0.weight", "bigram_embed.weight")
    assert all(eager[name].norm() > 0 for name in tables)
    for name in tables:
        assert ((compiled[name] - eager[name]).norm() / eager[name].norm()).item() < 2e-2, name


@pytest.mark.gpu
def test_a_compiled_training_step_never_waits_for_the_gpu():
    """train_step issues a step's work without a host sync, as its docstring promises: a wait leaves the GPU idle
    while the host catches up. After two steps that compile and fill the caches, a NorMuon-only step and an Adam step
    run under CUDA's sync debug mode set to raise (a Python-list index in NorMuon's row blocks, a blocking copy from
    the host, raised here)."""
    hp = two_block_record_hp()
    assert hp.muon_qk_head_pairs and hp.adam_every == 2 and not tg.adam_steps_at(2, hp) and tg.adam_steps_at(3, hp)
    torch.manual_seed(0)
    model = tg.GPT(hp).cuda()
    forward = torch.compile(model, dynamic=False)
    optimizers = tg.build_optimizers(model, hp, rank=0, world_size=1)
    mtp_table = tg.mtp_weight_tensors(hp, torch.device("cuda"))
    batches = tg.dummy_batches(2048, 2, torch.device("cuda"))
    for step in (0, 1):
        tg.train_step(model, forward, optimizers, batches, step, hp, 1, mtp_table)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [tg.train_step(model, forward, optimizers, batches, step, hp, 1, mtp_table) for step in (2, 3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(loss).item() for loss in losses)


@pytest.mark.gpu
def test_a_second_compile_of_the_training_graph_comes_from_aot_autograds_cache(tmp_path, monkeypatch):
    """The training graph, RowTable's autograd.Function in it, is kept by AOTAutograd's on-disk cache as
    use_compile_cache sets it up, so a warm start does not trace it again (8 to 10 s of the record step's start,
    session 13): compiled twice on one cache folder, the second compile of forward and backward hits, none bypasses,
    and the cached backward sums the row tables' gradients as the first did."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, "unused")  # restored after the test; use_compile_cache sets both
    monkeypatch.setattr(torch._functorch.config, "autograd_cache_allow_custom_autograd_functions", False)
    tg.use_compile_cache(str(tmp_path / "cache"))
    hp = two_block_record_hp()
    tokens = random_documents(2049, seed=3).cuda()
    counters, sums = torch._dynamo.utils.counters["aot_autograd"], []
    for _ in range(2):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = tg.GPT(hp).cuda()
        torch.compile(model, dynamic=False)(tokens[:-1].int(), tokens[1:].long(),
                                            tg.window_tensors(0, hp, tokens.device)).backward()
        sums.append([table.grad_sum.clone() for table in model.row_tables()])
    assert counters["autograd_cache_bypass"] == 0 and counters["autograd_cache_hit"] >= 1, dict(counters)
    for first, cached in zip(*sums):
        assert first.norm() > 0
        torch.testing.assert_close(cached, first, rtol=1e-5, atol=1e-7)


def compiled_against_eager_on_gpu(hp: tg.Hyperparameters, block: int, **off) -> None:
    """hp's model under torch.compile with FlexAttention's BlockMask (the feature in the compiled graph and its
    backward) gives the eager model's loss and attention gradients within bf16 noise, and `block`'s gradient is far
    from the compiled model's with the fields in `off`, so the feature did run compiled. Every parameter is moved
    off its init, whose zero projections and small logits would hide the attention."""
    tokens = random_documents(2049, seed=3).cuda()
    windows = tg.window_tensors(0, hp, tokens.device)
    results = []
    for run_hp, compile in [(hp, False), (hp, True), (dataclasses.replace(hp, **off), True)]:
        torch.manual_seed(0)
        model = tg.GPT(run_hp)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.3 * torch.randn(param.shape, generator=g))
        model = model.cuda()
        forward = torch.compile(model, dynamic=False) if compile else model
        loss = forward(tokens[:-1].int(), tokens[1:].long(), windows)
        loss.backward()
        results.append((loss.item(), {n: p.grad.float() for n, p in model.named_parameters() if "attn.qkvo" in n}))
    (loss_eager, eager), (loss_compiled, compiled), (_, without) = results

    def apart(a, b):
        return ((a - b).norm() / a.norm()).item()

    assert abs(loss_compiled - loss_eager) < 1e-2
    assert all(apart(compiled[name], g) < 5e-2 for name, g in eager.items())
    assert apart(compiled[f"blocks.{block}.attn.qkvo"], without[f"blocks.{block}.attn.qkvo"]) > 0.1


@pytest.mark.gpu
def test_compiled_model_with_paired_heads_matches_eager_on_gpu():
    """--paired_head_layers: FlexAttention over 2T positions in block 0; the backout and the bigram signs ride
    along."""
    hp = tg.parse_args(["--preset=tiny", "--seq_lens=2048", "--window_blocks=2:8", "--key_offset=false",
                        "--xsa_layers=", "--num_heads=4", "--head_dim=16", "--paired_head_layers=0",
                        "--backout_layer=0", "--bigram_signs=7"])
    compiled_against_eager_on_gpu(hp, 0, paired_head_layers="")


@pytest.mark.gpu
def test_compiled_model_with_key_offset_matches_eager_on_gpu():
    """--key_offset=true: the L block's gradient without the offset is 30% apart in fp32 on CPU."""
    hp = tg.parse_args(["--preset=tiny", "--seq_lens=2048", "--window_blocks=2:8", "--key_offset=true"])
    compiled_against_eager_on_gpu(hp, 1, key_offset=False)


def head_run(hp, fp8_head: bool, tokens: torch.Tensor, windows: dict, micro_steps: int = 1, compile: bool = False,
             mtp_weights: torch.Tensor | None = None):
    """From a fixed init whose logits are a few units, so the loss depends on them: the loss under no_grad, then one
    micro-step of `micro_steps` (the loss divided by them, as train_step does) -> (validation loss, training loss,
    gradients of the head, the embedding and the first fc)."""
    torch.manual_seed(0)
    model = tg.GPT(dataclasses.replace(hp, fp8_head=fp8_head), micro_steps=micro_steps).to(tokens.device)
    with torch.no_grad():
        model.lm_head.normal_(0, 2 * hp.model_dim**-0.5)
        for block in model.blocks:
            block.mlp.proj.normal_(0, 0.02)  # zero at init, which would hide the gradients below it
    forward = torch.compile(model, dynamic=False) if compile else model
    inputs, targets = tokens[:-1].int(), tokens[1:].long()
    with torch.no_grad():
        val_loss = forward(inputs, targets, windows).item()
    loss = forward(inputs, targets, windows, mtp_weights)
    (loss / micro_steps).backward()
    return val_loss, loss.item(), {n: g.float() for n, g in gradients(model).items()
                                   if n in ("lm_head", "embed.weight", "blocks.0.mlp.fc")}


def check_fp8_head_against_bf16_head(results, loss_tol: float, grad_tol: float):
    """The FP8 rounding moves each logit by ~4% and each gradient that flows back through the head by ~6% (e5m2): on
    CPU the losses differ by 0.001-0.005 and the gradients by 5% (four token draws, T = 128 and 2048)."""
    (_, loss_bf16, grads_bf16), (_, loss_fp8, grads_fp8) = results
    assert abs(loss_fp8 - loss_bf16) < loss_tol, (loss_fp8, loss_bf16)
    for name, g in grads_bf16.items():
        err = ((grads_fp8[name] - g).norm() / g.norm()).item()
        assert err < grad_tol, (name, err)


def test_fp8_head_trains_on_the_fp8_product_and_validates_on_the_bf16_one(monkeypatch):
    """--fp8_head: while autograd records, the head and its loss are fp8_head_cross_entropy of the normed residual
    and the (D, V) weight with the model's cap, the head's scales, its gradient scale per token of the loss (a mean
    over T tokens, divided by micro-steps), and the loss and gradients stay near the bf16 head's; under no_grad the
    loss is exactly the bf16 head's."""
    hp = tg.parse_args(["--preset=tiny"])
    tokens, windows = random_documents(129, seed=3), {"S": torch.tensor(64), "L": torch.tensor(128)}
    calls, fp8_head, mtp_weights = [], tg.fp8_head_cross_entropy, torch.tensor([1.0, 0.5])
    monkeypatch.setattr(tg, "fp8_head_cross_entropy", lambda x, w, targets, cap, weights, *scales:
                        calls.append((x.shape, w.shape, cap, weights, scales))
                        or fp8_head(x, w, targets, cap, weights, *scales))
    results = [head_run(hp, fp8, tokens, windows, micro_steps=4, mtp_weights=mtp_weights) for fp8 in (False, True)]
    assert calls == [((128, 64), (64, 50304), tg.LogitCap.parse(hp.logit_cap), mtp_weights,
                      (tg.FP8_HEAD_X_SCALE, tg.FP8_HEAD_W_SCALE, tg.FP8_HEAD_GRAD_SCALE / (128 * 4)))]
    assert results[0][0] == results[1][0]
    check_fp8_head_against_bf16_head(results, loss_tol=2e-2, grad_tol=0.1)


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_fp8_head_matches_bf16_head_on_gpu(compile):
    """--fp8_head=true on FP8 tensor cores, eager and under torch.compile (the op in the graph, its backward in the
    compiled backward): the record model's loss and gradients within the FP8 rounding of the bf16 head's."""
    hp = two_block_record_hp()
    tg.check_device(dataclasses.replace(hp, fp8_head=True), torch.device("cuda"))
    tokens = random_documents(2049, seed=3).cuda()
    windows = tg.window_tensors(0, hp, tokens.device)
    results = [head_run(hp, fp8, tokens, windows, micro_steps=8, compile=compile) for fp8 in (False, True)]
    assert abs(results[0][0] - results[1][0]) < 1e-5  # validation runs the bf16 head either way
    check_fp8_head_against_bf16_head(results, loss_tol=2e-2, grad_tol=0.1)


@pytest.mark.parametrize("flags", [{}, dict(key_offset=True, xsa_layers="0,1", paired_head_layers="",
                                            value_embed_layers="0,1", value_embed_gates=True),
                                   dict(key_offset=False, xsa_layers="", paired_head_layers="0,1", num_heads=4,
                                        head_dim=16, backout_layer=0, bigram_signs=7, attn_source=0)])
def test_no_logit_sees_a_later_token(monkeypatch, flags):
    """The whole model is causal: changing the token at position p changes no logit before p, with every feature
    that mixes tokens on (attention, smear, the bigram hash and its signs, key offset, XSA, value embeddings, paired
    heads). A model that
    peeks ahead trains to a loss too good to be true; this is the check behind a proxy gain that large."""
    logits_seen = []

    def keep_logits(logits, targets, cap, mtp_weights=None):
        logits_seen.append(logits.detach().clone())
        return logits.float().mean()

    monkeypatch.setattr(tg, "softcap_cross_entropy", keep_logits)
    model, _ = tiny_model(**flags)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # off the init, whose zero projections and silent bigram table would hide the mixing
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=g))
    tokens = random_documents(257, seed=4)
    windows = {"S": torch.tensor(128), "L": torch.tensor(256)}
    p = 150
    changed = tokens.clone()
    changed[p] = (tokens[p] + 7) % 1000
    for inputs in (tokens, changed):
        with torch.no_grad():
            model(inputs[:-1].int(), inputs[1:].long(), windows)
    before, after = logits_seen
    assert torch.equal(before[:p], after[:p])
    assert not torch.allclose(before[p:p + 2].float(), after[p:p + 2].float())  # the change does reach p and p + 1
