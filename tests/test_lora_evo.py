"""LoRA on an imported Evo 2 checkpoint (the tiny vortex-layout fixture in tests/data/evo/evo2_tiny, read by
dnalm/formats/evo.py): a classifier fine-tunes with adapters end to end, and the merged export reproduces the
adapter model's logits (class logits and the language model's) within 1e-5; next-token LoRA through
``dnalm train`` with ``init_from`` the imported folder."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import dnalm
from dnalm.checkpoint import read_adapter
from dnalm.cli import main
from dnalm.eval.embed import batch_ids
from dnalm.eval.finetune import load_classifier
from dnalm.models.lora import lora_modules
from realdata import ecoli_ids

DATA = Path(__file__).parent / "data"
EVO2 = DATA / "evo" / "evo2_tiny"
GUE = DATA / "gue_prom_core_tata_small"

pytestmark = pytest.mark.skipif(not (EVO2 / "tiny.pt").is_file(), reason="the Evo 2 fixture is not in tests/data")


def _windows():
    return [ecoli_ids(70, 100).numpy().astype(np.uint8), ecoli_ids(45, 7000).numpy().astype(np.uint8)]


def _maps_bytes() -> bool:
    """Whether the application layer feeds an Evo model its own byte ids (Tokenizer.model_ids in batch_ids)."""
    x, _ = batch_ids(dnalm.load(EVO2), [np.array([7], dtype=np.uint8)])  # dnalm's A
    return int(x[0, -1]) == ord("A")


def test_evo2_lora_classifier_end_to_end_and_merged_export(tmp_path, capsys):
    if not _maps_bytes():
        pytest.skip("batch_ids does not map dnalm base ids to Evo's bytes yet (branch evo, part 2)")
    out = tmp_path / "clf"
    assert main(["finetune", str(EVO2), "--train", str(GUE / "train.csv"), "--dev", str(GUE / "dev.csv"),
                 "--test", str(GUE / "test.csv"), "--mode", "lora", "--lora-rank", "4", "--lora-alpha", "8",
                 "--epochs", "1", "--max-train", "64", "--batch-size", "16", "--probe-steps", "25",
                 "-o", str(out), "--quiet"]) == 0  # fmt: skip
    assert "adapters saved without the base model" in capsys.readouterr().out
    meta, tensors = read_adapter(out)
    # every block's gated MLP (l1, l2, l3), the attention block's Wqkv / out_proj, each Hyena block's in/out
    kinds = dnalm.load(EVO2).config.layers
    n_attn = sum(k == "attn" for k in kinds)
    assert len(meta["adapted"]) == 3 * len(kinds) + 2 * n_attn + 2 * (len(kinds) - n_attn)
    assert meta["base_model"] == str(EVO2.resolve()) and meta["base_config"]["family"] == "striped_hyena"
    clf, classes = load_classifier(out)
    assert lora_modules(clf.lm) and any(float(m.lora_B.detach().abs().sum()) > 0 for m in lora_modules(clf.lm).values())
    merged = tmp_path / "merged"
    assert main(["export", str(out), "--merge-lora", "--out", str(merged)]) == 0
    mclf, mclasses = load_classifier(merged)
    assert mclasses == classes and not lora_modules(mclf.lm)
    x, mask = batch_ids(clf.lm, _windows())
    with torch.no_grad():
        assert (mclf(x, mask) - clf(x, mask)).abs().max() <= 1e-5  # the classifier's logits
        # the language model's 512 logits, absolute: an evaluating adapter model uses the weight the merge
        # stores (W + s B A in float64, rounded once), so the two agree to the bit
        lm_a, lm_m = clf.lm(x).logits, mclf.lm(x).logits
        assert (lm_m - lm_a).abs().max() <= 1e-5
        # the training path W x + s B (A x) is the same function; in float32 it rounds differently, about as
        # much as the base's own float32 forward differs from float64 (both measured ~1e-5 here)
        ref64 = copy.deepcopy(mclf.lm).double()(x).logits
        base_err = (copy.deepcopy(mclf.lm).float()(x).logits.double() - ref64).abs().max()
        clf.lm.train()
        assert (clf.lm(x).logits.double() - ref64).abs().max() <= 4 * base_err + 1e-6


def test_evo2_causal_lm_lora_through_dnalm_train(tmp_path):
    cfg = tmp_path / "lora.yaml"
    cfg.write_text(
        f"out_dir: {tmp_path / 'run'}\n"
        f"data: {{inputs: [{DATA / 'phage_lambda.fa'}], seq_len: 128}}\n"
        f"train: {{steps: 4, batch_size: 2, lr: 3.0e-3, eval_every: 4, eval_tokens: 1024, log_every: 1, "
        f"ckpt_every: 4, threads: 1, init_from: {EVO2}, lora: {{rank: 2, alpha: 4}}}}\n"
    )
    assert main(["train", "--config", str(cfg)]) == 0
    run = tmp_path / "run"
    meta, _ = read_adapter(run / "adapter")
    assert meta["base_model"] == str(EVO2.resolve())
    base, merged, adapter = dnalm.load(EVO2), dnalm.load(run), dnalm.load(run / "adapter")
    x, _ = batch_ids(base, _windows())
    with torch.no_grad():
        assert (merged(x).logits - adapter(x).logits).abs().max() <= 1e-5
        assert (merged(x).logits - base(x).logits).abs().max() > 1e-5  # the adapters moved
    bs, ms = base.state_dict(), merged.state_dict()
    assert {k for k in bs if not torch.equal(bs[k], ms[k])} == {f"{n}.weight" for n in meta["adapted"]}


def test_lm_inputs_in_the_byte_scheme():
    """Training batches for an Evo model: bytes in and out, Evo's [BOS] (EOD, 0) and padding (1); N is read
    but not a target; ignored targets stay PAD, which is no byte a base has."""
    from dnalm.tokenizer import PAD, encode_bytes
    from dnalm.train.evaluate import lm_inputs

    tok = dnalm.load(EVO2).tokenizer
    ids, lower = encode_bytes(b"ACGTNacgt")
    valid = np.ones((1, 10), bool)
    valid[0, 9] = False  # one padded position
    ids = np.concatenate([ids, [7]])[None]
    x, y, w = lm_inputs(ids, np.zeros_like(valid), valid, tokenizer=tok)
    assert x[0].tolist() == [0] + [ord(c) for c in "ACGTNACGT"]
    assert y[0].tolist() == [ord(c) for c in "ACGT"] + [PAD] + [ord(c) for c in "ACGT"] + [PAD]
    assert w[0].tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 1, 0]
