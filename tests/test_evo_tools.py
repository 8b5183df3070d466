"""Every tool runs on an imported Evo 2 / Evo 1 checkpoint (the tiny parity fixtures, real DNA from
tests/data): score, score-variants, embed (a hidden state and a block's MLP output), generate, finetune,
essentiality and dms. Smoke tests: the fixtures' weights are random, so only the plumbing is checked,
and where a value can be checked independently (the byte ids the model sees, a score), it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dnalm
from dnalm.cli import main
from dnalm.tokenizer import encode_bytes

DATA = Path(__file__).parent / "data"
EVO2 = DATA / "evo" / "evo2_tiny"
EVO1 = DATA / "evo" / "evo1_tiny"
RES = Path(dnalm.__file__).parent / "resources"


@pytest.mark.parametrize("folder", [EVO2, EVO1])
def test_score_reads_bytes_case_kept(folder, tmp_path, capsys):
    model = dnalm.load(folder)
    seq = "ACGTTGCAacgtNNGGCCAT"
    got = dnalm.score(model, seq, reduce="none")
    ids = torch.tensor([list(seq.encode())])  # the byte ids, no BOS: the first base is not scored
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    want = lp.double().numpy()
    n = np.array([c in "Nn" for c in seq[1:]])
    assert np.isnan(got[n]).all()  # N is not scored
    np.testing.assert_allclose(got[~n], want[~n], atol=1e-5)
    fa = tmp_path / "x.fa"
    fa.write_text(">lambda\n" + (DATA / "phage_lambda.fa").read_text().split("\n", 1)[1].replace("\n", "")[:300] + "\n")
    assert main(["score", str(folder), "--fasta", str(fa), "--quiet"]) == 0
    assert "lambda" in capsys.readouterr().out


def test_window_logliks_map_dnalm_ids_to_bytes():
    from dnalm.eval.scoring import window_logliks

    model = dnalm.load(EVO2)
    ids, lower = encode_bytes(b"ACGTacgtNN")
    a = window_logliks(model, [ids], reduce="none")[0]
    b = window_logliks(model, [ids], reduce="none", lower=[lower])[0]
    np.testing.assert_allclose(a[1:], dnalm.score(model, "ACGTACGTNN", reduce="none"), atol=1e-6)
    np.testing.assert_allclose(b[1:], dnalm.score(model, "ACGTacgtNN", reduce="none"), atol=1e-6)


def test_score_variants(tmp_path, capsys):
    out = tmp_path / "v.tsv"
    assert main(["score-variants", str(EVO2), "--fasta", str(DATA / "brca1_chr17_43044001-43064000.fa"),
                 "--variants", str(DATA / "brca1_findlay2018_demo40.tsv"), "--window", "256",
                 "-o", str(out), "--quiet"]) == 0  # fmt: skip
    body = [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]
    assert len(body) > 10 and "delta" in body[0]


def test_embed_hidden_state_and_mlp_output(tmp_path):
    model = dnalm.load(EVO2)
    seqs = ["ACGTTGCAACGTAGCT", "GGGCCCATATAT"]
    e = dnalm.embed_sequences(model, seqs, layer=3, pool="none")
    with torch.no_grad():
        hs = model(torch.tensor([list(seqs[0].encode())]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(e.array[: len(seqs[0])], hs[3][0].numpy(), atol=1e-5)
    tap = dnalm.embed_sequences(model, seqs, tap="backbone.layers.2.mlp", pool="mean")
    blk = model.backbone.layers[2]
    with torch.no_grad():
        x = hs[2] + blk.mixer(blk.norm1(hs[2]))
        mlp = blk.mlp(blk.norm2(x))[0].mean(0)  # the MLP output before the residual add
    np.testing.assert_allclose(tap.array[0], mlp.numpy(), atol=1e-5)
    assert tap.meta["tap"] == "backbone.layers.2.mlp"
    fa = tmp_path / "s.fa"
    fa.write_text(">a\nACGTTGCAACGTAGCT\n>b\nGGGCCCATATAT\n")
    assert main(["embed", str(EVO2), "--fasta", str(fa), "--tap", "backbone.layers.6.mlp", "-o",
                 str(tmp_path / "e.npy"), "--quiet"]) == 0  # fmt: skip
    assert np.load(tmp_path / "e.npy").shape == (2, model.config.d_model)
    assert main(["embed", str(EVO2), "--fasta", str(fa), "--tap", "blocks.6.nope", "-o",
                 str(tmp_path / "f.npy"), "--quiet"]) == 2  # fmt: skip
    assert not (tmp_path / "f.npy").exists()


def test_generate_cli(tmp_path):
    out = tmp_path / "g.fa"
    assert main(["generate", str(EVO1), "--prompt", "ACGTTGCA", "--n-tokens", "12", "--seed", "1", "-o", str(out)]) == 0
    seq = "".join(out.read_text().splitlines()[1:])
    assert len(seq) == 12 and set(seq) <= set("ACGT")


def test_finetune(tmp_path, capsys):
    gue = DATA / "gue_prom_core_tata_small"
    data = tmp_path / "data.csv"
    lines = (gue / "train.csv").read_text().splitlines()
    data.write_text("seqs,labels\n" + "\n".join(lines[1:61]) + "\n")
    out = tmp_path / "clf"
    assert main(["finetune", str(EVO2), "--train", str(data), "--probe-steps", "10", "-o", str(out), "--quiet"]) == 0
    assert "k-mer LR (test)" in capsys.readouterr().out


def test_essentiality(tmp_path, capsys):
    out = tmp_path / "ess.tsv"
    assert main(["essentiality", str(EVO2), "--fasta", str(RES / "ecoli_k12_mg1655.fa.gz"),
                 "--gff", str(RES / "ecoli_k12_mg1655.gff3.gz"), "--labels", str(DATA / "ecoli_essentiality_first60.tsv"),
                 "--window", "128", "-o", str(out), "--quiet"]) == 0  # fmt: skip
    assert "scored 60 genes" in capsys.readouterr().out


def test_dms(tmp_path, capsys):
    out = tmp_path / "dms.tsv"
    assert main(["dms", str(EVO1), "--cds", str(DATA / "aph3II_nt.fasta"),
                 "--variants", str(DATA / "MERGE_kka2_klepn_head.csv"), "-o", str(out), "--quiet"]) == 0  # fmt: skip
    assert "Spearman with y (n = 120)" in capsys.readouterr().out
