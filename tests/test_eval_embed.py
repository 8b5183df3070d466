"""Embeddings and pooling: padding never changes a sequence's embedding, long sequences are windowed as
stated, layers index the model's hidden states, files are written with their metadata. Sequences are
real: windows of phage lambda (tests/data/phage_lambda.fa)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dnalm
from dnalm.cli import main
from dnalm.models.hyena import HyenaConfig
from dnalm.data.errors import DataError
from dnalm.eval.embed import embed_sequences
from dnalm.models.heads import pool_hidden
from dnalm.models.lm import DNALM

DATA = Path(__file__).parent / "data"
LAMBDA = "".join(ln.strip() for ln in (DATA / "phage_lambda.fa").read_text().splitlines() if not ln.startswith(">"))


@pytest.fixture(scope="module")
def model() -> DNALM:
    torch.manual_seed(0)
    return DNALM(HyenaConfig(n_layer=2, d_model=16, l_max=66)).eval()


def reference(model: DNALM, seq: str, layer: int) -> torch.Tensor:
    """Hidden states of one unpadded sequence at ``layer``, bases only (no [BOS])."""
    ids = model.tokenizer.batch([seq])["input_ids"]
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[layer][0, 1:]  # (L, D)


def test_pool_hidden_against_loops():
    torch.manual_seed(1)
    h = torch.randn(3, 7, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    mean = pool_hidden(h, mask, "mean")
    last = pool_hidden(h, mask, "last")
    for i in range(3):
        idx = mask[i].nonzero().flatten()
        assert torch.allclose(mean[i], h[i, idx].mean(0))
        assert torch.equal(last[i], h[i, idx[-1]])


@pytest.mark.parametrize("pool", ["mean", "last"])
@pytest.mark.parametrize("layer", [-1, 1, 0])
def test_padding_does_not_change_embeddings(model, pool, layer):
    seqs = [LAMBDA[100:160], LAMBDA[5000:5013], LAMBDA[9000:9041]]  # different lengths: padded batch
    batched = embed_sequences(model, seqs, layer=layer, pool=pool, batch_size=3).array
    for i, s in enumerate(seqs):
        h = reference(model, s, layer)
        want = h.mean(0) if pool == "mean" else h[-1]
        np.testing.assert_allclose(batched[i], want.numpy(), rtol=1e-5, atol=1e-5)


def test_long_sequences_are_windowed(model):
    seq = LAMBDA[20000:20150]  # 150 bases; the model takes 65 bases per window
    with pytest.raises(DataError, match=r"1 sequences longer than the model's 65 bases: seq0 \(150 bp\); pass --crop"):
        embed_sequences(model, [seq, LAMBDA[:30]], pool="mean")  # the default: an error naming them
    emb = embed_sequences(model, [seq, LAMBDA[:30]], pool="mean", windows=True)
    assert emb.windows == [3, 1] and emb.lengths == [150, 30] and emb.meta["window_bases"] == 65
    parts = [reference(model, seq[i : i + 65], -1) for i in (0, 65, 130)]
    want = torch.cat(parts).mean(0)  # every base weighted once
    np.testing.assert_allclose(emb.array[0], want.numpy(), rtol=1e-5, atol=1e-5)
    last = embed_sequences(model, [seq], pool="last", windows=True).array[0]
    np.testing.assert_allclose(last, parts[-1][-1].numpy(), rtol=1e-5, atol=1e-5)
    per_base = embed_sequences(model, [seq, LAMBDA[:30]], pool="none", windows=True)
    assert per_base.array.shape == (180, 16) and per_base.meta["offsets"] == [0, 150, 180]
    np.testing.assert_allclose(per_base.array[65:130], parts[1].numpy(), rtol=1e-5, atol=1e-5)


def test_bad_layer_and_pool(model):
    with pytest.raises(DataError, match="--layer 4 out of range: this model has hidden states 0..3"):
        embed_sequences(model, ["ACGT"], layer=4)
    with pytest.raises(DataError, match="--pool must be"):
        embed_sequences(model, ["ACGT"], pool="max")


def test_cli_writes_npy_and_metadata(tmp_path, capsys):
    from dnalm.checkpoint import save_pretrained

    torch.manual_seed(0)
    save_pretrained(DNALM(HyenaConfig(n_layer=2, d_model=16, l_max=66)), tmp_path / "m")
    csv = tmp_path / "seqs.csv"
    csv.write_text("id,sequence\nshort," + LAMBDA[:40] + "\nlong," + LAMBDA[40:240] + "\n")
    out = tmp_path / "emb.npy"
    assert main(["embed", str(tmp_path / "m"), "--csv", str(csv), "-o", str(out), "--quiet"]) == 2
    assert "long (200 bp); pass --crop" in capsys.readouterr().err and not out.exists()
    assert main(["embed", str(tmp_path / "m"), "--csv", str(csv), "-o", str(out), "--windows", "--quiet"]) == 0
    assert "1 sequences were longer than 65 bases and used several windows" in capsys.readouterr().out
    arr = np.load(out, allow_pickle=False)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert arr.shape == (2, 16) and arr.dtype == np.float32
    assert meta["ids"] == ["short", "long"] and meta["windows"] == [1, 4] and meta["pool"] == "mean"
    assert main(["embed", str(tmp_path / "m"), "--quiet"]) == 2
    assert "exactly one of --fasta or --csv" in capsys.readouterr().err
    fa = tmp_path / "x.fa"
    fa.write_text(">a\nACGTNNACGT\n>b\nACGTXACGT\n")
    assert main(["embed", str(tmp_path / "m"), "--fasta", str(fa), "-o", str(tmp_path / "x.npy"), "--quiet"]) == 2
    assert not (tmp_path / "x.npy").exists()


def test_facade_offers_the_applications(tmp_path):
    m = dnalm.load(DATA / "ecoli_hyena_tiny")
    e = dnalm.embed_sequences(m, [LAMBDA[:50], LAMBDA[50:80]], pool="last").array
    assert e.shape == (2, 32)
    np.testing.assert_allclose(e[1], reference(m, LAMBDA[50:80], -1)[-1].numpy(), rtol=1e-5, atol=1e-5)
    res = dnalm.score_variants(m, DATA / "brca1_chr17_43044001-43064000.fa", DATA / "brca1_findlay2018_demo40.tsv",
                           window=64, progress=False)
    assert len(res.rows) == 40
    dms = dnalm.score_dms(m, DATA / "aph3II_nt.fasta", DATA / "MERGE_kka2_klepn_head.csv", progress=False)
    assert dms["window"] == 257 and len(dms["rows"]) == 120
    clf, rep = dnalm.finetune(m, DATA / "gue_prom_core_tata_small" / "train.csv", probe_steps=20, kmer_ks=(2,), progress=False)
    assert rep["sizes"] == {"train": 160, "dev": 20, "test": 20} and rep["split"]["seed"] == 0


@pytest.mark.parametrize("preset", ["transformer-tiny-1k", "dnahnet-tiny-22", "striped-hyena2-tiny"])
def test_other_families_pad_invariant_and_trainable(preset):
    from dnalm.eval.embed import batch_ids
    from dnalm.models.heads import SequenceClassifier
    from dnalm.models import get_preset

    torch.manual_seed(0)
    m = DNALM(get_preset(preset)).eval()
    seqs = [LAMBDA[300:370], LAMBDA[700:718]]
    for pool in ("mean", "last"):
        both = embed_sequences(m, seqs, pool=pool, layer=1, batch_size=2).array
        alone = embed_sequences(m, seqs[1:], pool=pool, layer=1).array
        np.testing.assert_allclose(both[1], alone[0], rtol=1e-4, atol=1e-5)
    clf = SequenceClassifier(m, 2, layer=1, soft_prompt=2)  # after embedding under no_grad: still trainable
    x, mask = batch_ids(m, [encode(seqs[0])])
    clf(x, mask).sum().backward()
    assert clf.head.proj.weight.grad.abs().sum() > 0


def encode(s: str) -> np.ndarray:
    from dnalm.tokenizer import encode_bytes

    return encode_bytes(s.encode())[0]
