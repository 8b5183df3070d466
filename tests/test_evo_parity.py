"""Evo 1 and Evo 2 checkpoints against the reference engines' float32 outputs (dnalm/formats/evo.py).

The folders under tests/data/evo are the parity fixtures of shared/fixtures/evo2_vortex (vortex, Evo 2)
and shared/fixtures/evo1_stripedhyena (stripedhyena 1.1_fix code, Evo 1): real checkpoints in the released
layouts with tiny random weights, real DNA inputs, and the reference's outputs (a subset of the stored
positions, see tests/data/SOURCES.md). The bar is 1e-4 max abs on logits, log-normalisers, hidden states
and block internals; a correct float32 loader lands near 1e-5. Token ids must match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import dnalm
from dnalm.formats.evo import load_evo1, load_evo2
from dnalm.models.striped_hyena import split_streams

DATA = Path(__file__).parent / "data" / "evo"
TOL = 1e-4


def _expected(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(DATA / name / "expected.safetensors"))


def _inputs(name: str) -> dict:
    return json.loads((DATA / name / "inputs.json").read_text())


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> float:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    err = float((got.float() - want.float()).abs().max())
    assert err <= TOL, f"{what}: max abs diff {err:.2e} > {TOL}"
    return err


@pytest.fixture(scope="module")
def evo2_tiny():
    return load_evo2(DATA / "evo2_tiny")


@pytest.fixture(scope="module")
def evo1_tiny():
    return load_evo1(DATA / "evo1_tiny")


# ------------------------------------------------------------------------------------------ Evo 2


@pytest.mark.parametrize("fixture", ["evo2_tiny", "evo2_rope"])
def test_evo2_token_ids_logits_and_hidden_states(fixture):
    model = dnalm.load(DATA / fixture)  # detected as an Evo 2 (vortex) folder
    exp, inp = _expected(fixture), _inputs(fixture)
    cols = exp["dna_columns.token_ids"]
    checked = 0
    for item in inp["inputs"]:
        name = item["name"]
        if f"{name}.input_ids" not in exp:
            continue
        ids, _ = model.tokenizer.encode(item["sequence"])
        assert ids == item["input_ids"] == exp[f"{name}.input_ids"][0].tolist(), f"{name}: token ids"
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model(x, output_hidden_states=True)
        lg = out.logits
        _close(lg[:, exp[f"{name}.logits_positions"]], exp[f"{name}.logits_at_positions"], f"{name} logits")
        _close(lg[..., cols], exp[f"{name}.logits_dna_columns"], f"{name} DNA columns")
        _close(torch.logsumexp(lg, -1), exp[f"{name}.logsumexp"], f"{name} logsumexp")
        nll = F.log_softmax(lg[0, :-1], -1).gather(-1, x[0, 1:, None])[:, 0]
        _close(nll[None], exp[f"{name}.next_token_logprob"], f"{name} next-token log-prob")
        if f"{name}.hidden_positions" in exp:
            pos = exp[f"{name}.hidden_positions"]
            _close(out.hidden_states[0][:, pos], exp[f"{name}.embedding"], f"{name} embedding")
            for i in range(model.config.n_layer):
                _close(out.hidden_states[i + 1][:, pos], exp[f"{name}.hidden_after_block{i}"], f"{name} block {i}")
        checked += 1
    assert checked >= 1


def test_evo2_right_padded_batch(evo2_tiny):
    exp, inp = _expected("evo2_tiny"), _inputs("evo2_tiny")
    batch = inp["batches"][0]
    seqs = [row["sequence"] for row in batch["rows"]]
    enc = evo2_tiny.tokenizer.batch(seqs)
    assert enc["input_ids"].tolist() == batch["input_ids"] == exp["batch.input_ids"].tolist()
    with torch.no_grad():
        lg = evo2_tiny(enc["input_ids"]).logits
    _close(lg[:, exp["batch.logits_positions"]], exp["batch.logits_at_positions"], "batch logits")
    _close(lg[..., exp["dna_columns.token_ids"]], exp["batch.logits_dna_columns"], "batch DNA columns")
    _close(torch.logsumexp(lg, -1), exp["batch.logsumexp"], "batch logsumexp")


def test_evo2_block_internals(evo2_tiny):
    """Streams after projection + short FIR + de-interleave, inner convolutions before the gate, the
    materialised hcl filter, and the attention output."""
    m, exp = evo2_tiny, _expected("evo2_tiny")
    pos = exp["in0.hidden_positions"]
    x = torch.tensor([_inputs("evo2_tiny")["inputs"][0]["input_ids"]])
    with torch.no_grad():
        hs = m(x, output_hidden_states=True).hidden_states
        blocks = m.backbone.layers
        for i, tag in ((0, "block0_hcs"), (1, "block1_hcm"), (2, "block2_hcl")):
            mixer = blocks[i].mixer
            z, _ = mixer.featurize(blocks[i].norm1(hs[i]))
            x2, x1, v = split_streams(z, 2, m.config.n_head)  # (1, D, L)
            if i == 0:
                for nm, t in (("x2", x2), ("x1", x1), ("v", v)):
                    _close(t.transpose(1, 2)[:, pos], exp[f"debug.in0.{tag}.{nm}"], f"{tag}.{nm}")
            conv = mixer.long_conv(x1 * v).transpose(1, 2)
            _close(conv[:, pos], exp[f"debug.in0.{tag}.conv_out"], f"{tag} conv_out")
        _close(blocks[2].mixer.long_filter(x.shape[1]), exp["debug.in0.block2_hcl.filter_h"], "hcl filter")
        mha = blocks[3].mixer(blocks[3].norm1(hs[3]))
        _close(mha[:, pos], exp["debug.in0.block3_mha.mixer_out"], "mha mixer_out")


def test_evo2_rope_scaled_attention_output():
    m, exp = load_evo2(DATA / "evo2_rope"), _expected("evo2_rope")
    assert m.config.rope_interp == 128 and m.config.rope_base == 1e6 and m.config.rope_precision == "bfloat16"
    x = torch.tensor([_inputs("evo2_rope")["inputs"][0]["input_ids"]])
    i = m.config.layers.index("attn")
    with torch.no_grad():
        hs = m(x, output_hidden_states=True).hidden_states
        out = m.backbone.layers[i].mixer(m.backbone.layers[i].norm1(hs[i]))
    _close(out[:, exp["in0.hidden_positions"]], exp[f"debug.in0.block{i}_mha.mixer_out"], "rope mha mixer_out")


# ------------------------------------------------------------------------------------------ Evo 1


@pytest.mark.parametrize("fixture", ["evo1_tiny", "evo1_131k"])
def test_evo1_token_ids_logits_and_hidden_states(fixture):
    model = dnalm.load(DATA / fixture)  # detected as an Evo 1 Hugging Face folder (single or sharded)
    exp, inp = _expected(fixture), _inputs(fixture)
    for item in inp["inputs"]:
        name = item["name"]
        if f"{name}.input_ids" not in exp:
            continue
        ids, _ = model.tokenizer.encode(item["sequence"])
        assert ids == item["input_ids"] == exp[f"{name}.input_ids"][0].tolist(), f"{name}: token ids"
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model(x, output_hidden_states=True)
        lg = out.logits
        if f"{name}.logits" in exp:
            step = lg.shape[1] // exp[f"{name}.logits"].shape[1]
            _close(lg[:, ::step], exp[f"{name}.logits"], f"{name} logits")
        else:
            _close(lg[..., exp[f"{name}.logit_columns"]], exp[f"{name}.logits_cols"], f"{name} logit columns")
        _close(torch.logsumexp(lg, -1), exp[f"{name}.logsumexp"], f"{name} logsumexp")
        pos = exp[f"{name}.positions"]
        _close(out.hidden_states[0][:, pos], exp[f"{name}.embeddings"], f"{name} embeddings")
        _close(out.hidden_states[-1][:, pos], exp[f"{name}.last_hidden_state"], f"{name} last hidden state")
        for i in range(model.config.n_layer):
            key = f"{name}.hidden_after_block{i}"
            if key in exp:
                _close(out.hidden_states[i + 1][:, pos], exp[key], f"{name} block {i}")


@pytest.mark.parametrize("fixture", ["evo1_tiny", "evo1_131k"])
def test_evo1_block_internals(fixture):
    # the fixtures store the release dtypes (bf16, poles/residues float32); calling a block's submodules one
    # by one needs float32 weights, so load them converted (the block-wise float32 forward equals it exactly)
    m, exp = load_evo1(DATA / fixture, dtype=torch.float32), _expected(fixture)
    x = torch.tensor([next(i for i in _inputs(fixture)["inputs"] if i["name"] == "in1")["input_ids"]])
    n = 128
    with torch.no_grad():
        hs = m(x, output_hidden_states=True).hidden_states
        blocks = m.backbone.layers
        if "debug.in1.block0.short_filter_out" in exp:
            mixer = blocks[0].mixer
            z, _ = mixer.featurize(blocks[0].norm1(hs[0]))
            _close(z[..., :n], exp["debug.in1.block0.short_filter_out"], "short filter out")
            x2, x1, v = split_streams(z, 1, m.config.n_head)
            y = (mixer.long_conv(x1 * v) * x2).transpose(1, 2)
            _close(y[:, :n], exp["debug.in1.block0.filter_out"], "filter out (before out_filter_dense)")
            L = exp["debug.block0.filter_L2000"].shape[-1]
            _close(mixer.long_filter(2000)[None, :, :L], exp["debug.block0.filter_L2000"], "modal filter")
        attn = blocks[2].mixer
        q, k, v = attn._qkv(blocks[2].norm1(hs[2]), 0)  # (1, H, L, hd)
        qkv = torch.stack([q, k, v], 1).permute(0, 3, 1, 2, 4)  # (1, L, 3, H, hd)
        _close(qkv[:, :n], exp["debug.in1.block2.qkv_after_rotary"], "qkv after rotary")
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)  # (1, L, H, hd)
        _close(ctx[:, :n], exp["debug.in1.block2.attn_context"], "attention context")


# ------------------------------------------------------------------------------------------ generation


@pytest.mark.parametrize("fixture", ["evo2_tiny", "evo2_rope", "evo1_tiny"])
def test_prefill_and_steps_equal_the_forward_pass(fixture):
    """hcs/hcm FIR histories, hcl / Evo 1 modal states and the attention KV cache, on the imported weights:
    a prompt prefilled, then one step per token, gives the logits of the full forward pass."""
    from dnalm.generation import prefill_logits, step_logits

    model = dnalm.load(DATA / fixture)
    ids = torch.tensor([_inputs(fixture)["inputs"][0]["input_ids"][:200]])
    n = 150
    with torch.no_grad():
        full = model(ids).logits  # (1, 200, V)
        logits, state = prefill_logits(model, ids[:, :n])
        steps = [logits[:, -1]]
        for t in range(n, ids.shape[1] - 1):
            out, state = step_logits(model, ids[:, t], state)
            steps.append(out)
    _close(logits, full[:, :n], "prefill")
    _close(torch.stack(steps, 1), full[:, n - 1 : -1], "steps")


def test_generate_on_an_imported_model():
    model = dnalm.load(DATA / "evo2_tiny")
    out = dnalm.generate(model, ["ACGTTGCAacgt", "GGGCCCAT"], n_tokens=20, seed=3)
    assert len(out) == 2 and all(len(s) == 20 and set(s) <= set("ACGT") for s in out)
    assert dnalm.generate(model, "ACGTTGCAacgt", n_tokens=20, seed=3) == out[0]
