"""The language-model shell: weighted loss, scoring, hidden states, save/load."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dnalm
from dnalm.checkpoint import CheckpointError, load_pretrained, save_pretrained
from dnalm.models.hyena import HyenaConfig
from dnalm.models.transformer import TransformerConfig
from dnalm.data.fasta import read_fasta
from dnalm.models.lm import DNALM, lm_loss
from dnalm.tokenizer import PAD

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def lam():
    return next(read_fasta(DATA / "phage_lambda.fa"))


def test_weighted_loss_is_renormalised_mean():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 16)
    targets = torch.tensor([[7, 8, 9, 10, 7], [8, 8, PAD, PAD, PAD]])
    w = torch.tensor([[1.0, 0.1, 0.1, 1.0, 1.0], [0.1, 1.0, 1.0, 1.0, 1.0]])
    ce = F.cross_entropy(logits.reshape(-1, 16), targets.reshape(-1), reduction="none", ignore_index=PAD)
    valid = (targets.reshape(-1) != PAD).float()
    wv = w.reshape(-1) * valid
    assert lm_loss(logits, targets, w) == pytest.approx(float((ce * wv).sum() / wv.sum()), rel=1e-6)
    # no weights: plain mean over non-padding targets
    assert lm_loss(logits, targets) == pytest.approx(float(ce.sum() / valid.sum()), rel=1e-6)
    # scaling all weights does not change the loss (renormalised)
    assert lm_loss(logits, targets, 3 * w) == pytest.approx(float(lm_loss(logits, targets, w)), rel=1e-6)
    # down-weighting a position moves the loss towards the others' mean
    one = torch.ones_like(w)
    one[0, 1] = 0.0
    keep = valid.clone()
    keep[1] = 0.0
    assert lm_loss(logits, targets, one) == pytest.approx(float((ce * keep).sum() / keep.sum()), rel=1e-6)


@pytest.mark.parametrize("config", [HyenaConfig(n_layer=2, d_model=32, l_max=258, filter_order=16),
                                    TransformerConfig(n_layer=2, d_model=32, n_head=2, max_len=258)])
def test_score_matches_forward_and_is_batch_invariant(config, lam):
    from dnalm.tokenizer import decode

    torch.manual_seed(0)
    model = DNALM(config).eval()
    seqs = [decode(lam.ids[i : i + n]) for i, n in [(0, 200), (5000, 57), (9000, 130)]]
    ll = dnalm.score(model, seqs, reduce="sum", batch_size=3)
    for s, got in zip(seqs, ll):
        ids = torch.tensor([[2] + [ "ACGTN".index(c) + 7 for c in s]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
        want = logp.gather(-1, ids[0, 1:, None]).sum().item()
        assert got == pytest.approx(want, abs=1e-3)
    alone = [dnalm.score(model, s) for s in seqs]
    np.testing.assert_allclose(ll, alone, atol=1e-3)  # right padding leaves a causal model's scores unchanged
    mean = dnalm.score(model, seqs, reduce="mean")
    np.testing.assert_allclose(mean, ll / np.array([len(s) for s in seqs]), rtol=1e-6)
    per = dnalm.score(model, seqs[1], reduce="none")
    assert per.shape == (57,) and per.sum() == pytest.approx(ll[1], abs=1e-6)


def test_hidden_states_layout():
    model = DNALM(HyenaConfig(n_layer=3, d_model=32, l_max=66, filter_order=16))
    x = torch.randint(7, 11, (2, 40))
    out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == 3 + 2
    assert all(h.shape == (2, 40, 32) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[0], model.embed(x))
    torch.testing.assert_close(out.hidden_states[1], model.backbone.layers[0](model.embed(x)))
    torch.testing.assert_close(out.hidden_states[-1], model.norm_f(out.hidden_states[-2]))


def test_too_long_input_is_an_error():
    model = DNALM(HyenaConfig(n_layer=1, d_model=32, l_max=66, filter_order=16))
    with pytest.raises(ValueError, match="exceeds the model's maximum length 66"):
        model(torch.randint(7, 11, (1, 67)))
    with pytest.raises(ValueError, match="exceed the model's maximum of 66"):
        dnalm.score(model, "A" * 80)


def test_save_load_roundtrip_and_errors(tmp_path):
    torch.manual_seed(1)
    model = DNALM(HyenaConfig(n_layer=1, d_model=32, l_max=66, filter_order=16)).eval()
    save_pretrained(model, tmp_path / "m")
    again = dnalm.load(tmp_path / "m")
    x = torch.randint(7, 11, (1, 50))
    torch.testing.assert_close(model(x).logits, again(x).logits, rtol=0, atol=0)
    assert not any(p.name.startswith(".m.tmp") for p in tmp_path.iterdir())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "m" / "config.json").read_text().replace(
        '"d_model": 32', '"d_model": 48'))
    (tmp_path / "bad" / "model.safetensors").write_bytes((tmp_path / "m" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="no such file, directory or preset"):
        dnalm.load(tmp_path / "nothing")


def test_load_preset_builds_fresh_model():
    model = dnalm.load("hyenadna-tiny-1k")
    assert model.num_parameters() == 436_096
