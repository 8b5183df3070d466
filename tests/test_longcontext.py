"""One-pass long-sequence inference (dnalm.eval.longcontext) against the ordinary forward pass, the memory
check that stops before allocating, and `dnalm score`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import dnalm
from dnalm.models.hyena import HyenaConfig
from dnalm.models.transformer import TransformerConfig
from dnalm.data.errors import DataError
from dnalm.data.fasta import SeqRecord
from dnalm.data.sequences import read_sequences
from dnalm.eval import longcontext as LC
from dnalm.models.lm import DNALM
from dnalm.tokenizer import BOS, Tokenizer

DATA = Path(__file__).parent / "data"


def phix() -> SeqRecord:
    return next(read_sequences(DATA / "phage_phix174.fa"))  # NC_001422.1, 5,386 bp


def human_slice(start: int, length: int) -> SeqRecord:
    """hg38 chr2, soft-masked (lower case = repeats): real bases past the leading 10 kb of N."""
    rec = next(read_sequences(DATA / "human_chr2_1-100000_softmasked.fa.gz"))
    end = start + length
    return replace(rec, name=f"chr2:{start + 1}-{end}", ids=rec.ids[start:end], lower=rec.lower[start:end])


def hyena(order: int = 2, l_max: int = 5400, seed: int = 0) -> DNALM:
    torch.manual_seed(seed)
    return DNALM(HyenaConfig(n_layer=2, d_model=32, l_max=l_max, filter_order=16, order=order)).eval()


def bos_ids(rec: SeqRecord) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([[BOS], rec.ids]).astype(np.int64))


@pytest.mark.parametrize("order", [2, 3])
def test_forward_long_matches_forward(order):
    """Chunks of 700 positions (short-conv halos across chunk edges) and FFT groups of 5 channels give the
    ordinary forward's logits, every hidden state and the per-base log-likelihoods."""
    model = hyena(order)
    ids = bos_ids(phix())  # (5387,)
    with torch.no_grad():
        ref = model(ids[None], output_hidden_states=True)
    logits = LC.forward_long(model, ids, "logits", chunk=700, channel_group=5)
    torch.testing.assert_close(logits, ref.logits[0], rtol=1e-5, atol=1e-5)
    for layer in range(len(ref.hidden_states)):
        h = LC.forward_long(model, ids, "hidden", layer=layer, chunk=700, channel_group=5)
        torch.testing.assert_close(h, ref.hidden_states[layer][0].float(), rtol=1e-5, atol=1e-5, msg=f"layer {layer}")
    lp = LC.forward_long(model, ids, "logprobs", chunk=700)
    ref_lp = torch.log_softmax(ref.logits[0, :-1], -1).gather(-1, ids[1:, None])[:, 0]
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    assert model.training is False


def test_transformer_runs_in_one_pass():
    """A Transformer++ has a one-pass schedule too (queries by chunk against all earlier keys): same logits."""
    torch.manual_seed(0)
    model = DNALM(TransformerConfig(n_layer=1, d_model=32, n_head=2, max_len=600)).eval()
    ids = bos_ids(human_slice(20_000, 500))
    with torch.no_grad():
        ref = model(ids[None]).logits[0]
    torch.testing.assert_close(LC.forward_long(model, ids, "logits", chunk=128), ref, rtol=1e-5, atol=1e-5)
    assert LC.check_memory(model, len(ids)).total > 0


def test_too_long_and_bad_layer_are_errors():
    model = hyena(l_max=300)
    with pytest.raises(DataError, match="exceeds the model's maximum length 300"):
        LC.forward_long(model, torch.full((301,), 7))
    with pytest.raises(DataError, match="layer 9 out of range"):
        LC.forward_long(model, torch.full((10,), 7), "hidden", layer=9)


def test_memory_check_stops_before_allocating(monkeypatch):
    """An estimate above the limit raises LongContextMemoryError (a DataError: one CLI line), and the
    computation never starts."""
    model = hyena(l_max=1_000_002)
    est = LC.estimate_memory(model, 1_000_001, "logprobs")
    assert est.parts["residual (L, D) float32"] == 1_000_001 * 32 * 4  # float32 (L, D)
    assert LC.estimate_memory(model, 500_001, "logprobs").total < est.total

    def must_not_run(*a, **k):
        raise AssertionError("the pass started although the estimate did not fit")

    monkeypatch.setattr(LC, "_backbone_forward", must_not_run)
    with pytest.raises(LC.LongContextMemoryError, match=r"needs about .* GiB.*only 0\.0 GiB is available"):
        LC.forward_long(model, torch.full((1_000_001,), 7), "logprobs", max_memory=2**20)
    assert issubclass(LC.LongContextMemoryError, DataError)
    avail = LC.available_memory()
    assert avail is None or avail > 0


def test_score_records_one_pass_equals_batched():
    """The same records through forward_long (long_from=1) and through batched DNALM.score agree, and the
    sum covers every base (native tokenizer: [BOS] first)."""
    model = hyena()
    recs = [phix(), human_slice(30_000, 2_000), human_slice(60_000, 777)]
    one = LC.score_records(model, recs, long_from=1)
    batched = LC.score_records(model, recs, long_from=10**9, batch_size=2)
    for a, b, r in zip(one, batched, recs):
        assert a.one_pass and not b.one_pass
        assert a.scored == b.scored == len(r)
        assert a.loglik_sum == pytest.approx(b.loglik_sum, rel=1e-6)
    direct = dnalm.score(model, ["".join("ACGTN"[i - 7] for i in phix().ids)], reduce="sum")[0]
    assert one[0].loglik_sum == pytest.approx(direct, rel=1e-6)


def test_score_records_keeps_imported_tokenizer_rules():
    """A HyenaDNA-checkpoint tokenizer (lower case -> [UNK], [SEP] appended, no [BOS]) scores the same way in
    both paths: the first base is not scored, [UNK] positions are, [SEP] is not."""
    torch.manual_seed(0)
    tok = Tokenizer(lowercase="unk", append_sep=True, prepend_bos=False, model_max_length=3000)
    model = DNALM(HyenaConfig(n_layer=2, d_model=32, l_max=3000, filter_order=16), tokenizer=tok).eval()
    rec = human_slice(22_500, 2_500)  # about half soft-masked repeats
    assert rec.lower.any() and not rec.lower.all()
    one = LC.score_records(model, [rec], long_from=1)[0]
    batched = LC.score_records(model, [rec], long_from=10**9)[0]
    assert one.scored == batched.scored == len(rec) - 1
    assert one.loglik_sum == pytest.approx(batched.loglik_sum, rel=1e-6)


def test_score_cli(tmp_path, capsys):
    from dnalm.checkpoint import save_pretrained
    from dnalm.cli import main

    model = hyena()
    save_pretrained(model, tmp_path / "m")
    fa = tmp_path / "two.fa"
    fa.write_text((DATA / "phage_phix174.fa").read_text() + ">short\nACGTACGTTTGACCA\n")
    out = tmp_path / "scores.tsv"
    assert main(["score", str(tmp_path / "m"), "--fasta", str(fa), "--out", str(out), "--long-from", "4000",
                 "--quiet"]) == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows[0] == ["name", "length", "scored", "loglik_sum", "bits_per_base", "mode"]
    assert [(r[0], r[1], r[5]) for r in rows[1:]] == [("NC_001422.1", "5386", "one_pass"), ("short", "15", "batched")]
    ll = float(rows[1][3])
    assert float(rows[1][4]) == pytest.approx(-ll / 5386 / np.log(2), rel=1e-5)
    assert "1 in one pass" in capsys.readouterr().out

    assert main(["score", str(tmp_path / "m"), "--fasta", str(fa), "--reduce", "mean", "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split("\t")[3] == "loglik_mean"
    assert float(printed[1].split("\t")[3]) == pytest.approx(ll / 5386, rel=1e-5)

    # a record longer than the model's context: one clear line, exit 2, no output file
    long_fa = tmp_path / "long.fa"
    long_fa.write_text(">long\n" + "ACGT" * 1400 + "\n")
    assert main(["score", str(tmp_path / "m"), "--fasta", str(long_fa), "--out", str(tmp_path / "x.tsv")]) == 2
    err = capsys.readouterr().err
    assert "record 'long' has 5,600 bases" in err and "dnalm eval" in err
    assert not (tmp_path / "x.tsv").exists()

    # not enough memory for the one-pass path: stops before scoring
    assert main(["score", str(tmp_path / "m"), "--fasta", str(fa), "--long-from", "1", "--max-memory", "0.0001",
                 "--out", str(tmp_path / "y.tsv"), "--quiet"]) == 2
    assert "is available" in capsys.readouterr().err and not (tmp_path / "y.tsv").exists()


def test_embed_picks_the_one_pass_path_for_long_sequences(monkeypatch):
    """dnalm.embed_sequences sends a sequence of LONG_FROM tokens or more through forward_long, and the pooled
    embedding equals the ordinary forward's (human chr2, 33,000 bases, soft-masked repeats read as bases)."""
    import dnalm.eval.embed as E

    model = hyena(l_max=33_010)
    rec = human_slice(20_000, 33_000)
    calls = []
    real = E.forward_long
    monkeypatch.setattr(E, "forward_long", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    emb = E.embed_sequences(model, [rec.ids], layer=-1, pool="mean")
    assert calls and calls[0][0] >= LC.LONG_FROM
    ids = torch.from_numpy(np.concatenate([[BOS], rec.ids]).astype(np.int64))
    with torch.no_grad():
        h = model(ids[None], output_hidden_states=True).hidden_states[-1][0]
    keep = model.tokenizer.scored(ids)
    np.testing.assert_allclose(emb.array[0], h[keep].mean(0).numpy(), rtol=1e-4, atol=1e-5)
