"""Fine-tuning: seeded stratified splits, k-mer features against a naive count, the three training modes on
a slice of GUE prom_core_tata (tests/data/gue_prom_core_tata_small), frozen weights staying frozen, the
saved classifier reproducing its predictions through `dnalm predict`, and bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dnalm
from dnalm.checkpoint import CheckpointError
from dnalm.cli import main
from dnalm.data.errors import DataError
from dnalm.eval.finetune import (
    class_names,
    class_weights,
    finetune,
    kmer_frequencies,
    load_classifier,
    predict_proba,
    read_labeled,
    save_classifier,
    seeded_split,
    to_data,
)
from dnalm.tokenizer import encode_bytes

DATA = Path(__file__).parent / "data"
GUE = DATA / "gue_prom_core_tata_small"
TINY = DATA / "ecoli_hyena_tiny"


def load_sets(n_train: int = 120):
    raw = {k: read_labeled(GUE / f"{k}.csv") for k in ("train", "dev", "test")}
    raw["train"] = tuple(x[:n_train] for x in raw["train"])
    classes = class_names(raw["train"][0])
    return {k: to_data(*v, classes, k) for k, v in raw.items()}, classes


def test_seeded_split_is_stratified_deterministic_and_disjoint():
    labels = np.array([0] * 70 + [1] * 30)
    a = seeded_split(labels, seed=3)
    b = seeded_split(labels, seed=3)
    c = seeded_split(labels, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert [int(labels[p].sum()) for p in a] == [24, 3, 3] and [len(p) for p in a] == [80, 10, 10]
    with pytest.raises(DataError, match="fractions"):
        seeded_split(labels, (0.5, 0.5, 0.0))


def test_kmer_frequencies_against_naive_count():
    seq = "ACGTTGCANACGGT"
    ids, _ = encode_bytes(seq.encode())
    for k in (1, 2, 3):
        got = kmer_frequencies([ids], k)[0]
        kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
        counts = np.array([sum(seq[i : i + k] == km for i in range(len(seq) - k + 1)) for km in kmers], float)
        np.testing.assert_allclose(got, counts / counts.sum(), rtol=1e-6)


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0, 0, 0, 1]), 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    with pytest.raises(DataError, match="lacks class"):
        class_weights(np.array([0, 0]), 2)


@pytest.fixture(scope="module")
def base_model():
    return dnalm.load(TINY)


def test_probe_folds_standardisation_and_reloads(base_model, tmp_path):
    sets, classes = load_sets()
    before = {k: v.clone() for k, v in base_model.state_dict().items()}
    clf, rep = finetune(base_model, sets["train"], sets["dev"], sets["test"], classes, mode="probe", probe_steps=50,
                        kmer_ks=(2, 3), progress=False)
    assert all(torch.equal(before[k], v) for k, v in base_model.state_dict().items())  # the input model is untouched
    assert rep["mode"] == "probe" and rep["trainable_parameters"] == 2 * 32 + 2
    assert set(rep["test"]) == {"n", "accuracy", "mcc", "auroc"} and rep["test"]["n"] == 60
    assert set(rep["kmer_baseline"]) == {"k", "C", "dev", "test"}
    # the folded head on raw features equals the trained head on standardised features: check via a reload
    save_classifier(clf, tmp_path / "clf", classes)
    again, cls = load_classifier(tmp_path / "clf")
    assert cls == classes
    p1 = predict_proba(clf, sets["test"].seqs)
    p2 = predict_proba(again, sets["test"].seqs)
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    assert rep["test"]["accuracy"] == pytest.approx(float(np.mean(p1.argmax(1) == sets["test"].labels)))


def test_soft_prompt_trains_only_prompt_and_head(base_model):
    sets, classes = load_sets(60)
    clf, rep = finetune(base_model, sets["train"], sets["dev"], sets["test"], classes, soft_prompt=4, epochs=1,
                        batch_size=16, kmer_ks=(2,), progress=False)
    assert rep["mode"] == "soft_prompt" and rep["trainable_parameters"] == 4 * 32 + 2 * 32 + 2
    for k, v in clf.lm.state_dict().items():
        assert torch.equal(v, base_model.state_dict()[k]), k
    init = clf.lm.embed.weight[7:11]
    assert not any(torch.allclose(clf.prompt.weight[i], init[j]) for i in range(4) for j in range(4))  # it moved


def test_full_finetuning_changes_the_backbone(base_model):
    sets, classes = load_sets(60)
    clf, rep = finetune(base_model, sets["train"], sets["dev"], sets["test"], classes, mode="full", epochs=1,
                        batch_size=16, kmer_ks=(2,), progress=False)
    assert rep["mode"] == "full" and rep["best_checkpoint"] == "epoch 1"
    changed = [k for k, v in clf.lm.state_dict().items() if not torch.equal(v, base_model.state_dict()[k])]
    assert changed


def test_cli_seeded_split_finetune_and_predict(tmp_path, capsys):
    data = tmp_path / "data.csv"
    lines = (GUE / "train.csv").read_text().splitlines()
    data.write_text("seqs,labels\n" + "\n".join(lines[1:101]) + "\n")  # E. coli promoter style columns, no split
    out = tmp_path / "clf"
    assert main(["finetune", str(TINY), "--train", str(data), "--probe-steps", "30", "-o", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "seeded stratified 80/10/10 split (seed 0)" in text and "k-mer LR (test)" in text
    split = json.loads((out / "split.json").read_text())
    assert len(split["train_rows"]) + len(split["dev_rows"]) + len(split["test_rows"]) == 100
    report = json.loads((out / "report.json").read_text())
    assert report["sizes"] == {"train": 80, "dev": 10, "test": 10}
    fa = tmp_path / "new.fa"
    fa.write_text(">p1\n" + lines[1].split(",")[0] + "\n>p2\n" + lines[2].split(",")[0].lower() + "\n")
    pred = tmp_path / "pred.tsv"
    assert main(["predict", str(out), "--fasta", str(fa), "-o", str(pred), "--quiet"]) == 0
    rows = [ln.split("\t") for ln in pred.read_text().splitlines() if not ln.startswith("#")]
    assert rows[0] == ["id", "predicted", "prob_0", "prob_1"] and [r[0] for r in rows[1:]] == ["p1", "p2"]
    assert all(abs(float(r[2]) + float(r[3]) - 1) < 1e-6 for r in rows[1:])
    clf, _ = load_classifier(out)
    ids = [encode_bytes(lines[i].split(",")[0].encode())[0] for i in (1, 2)]
    np.testing.assert_allclose(predict_proba(clf, ids)[:, 1], [float(r[3]) for r in rows[1:]], rtol=1e-6)


def test_bad_input(tmp_path, capsys):
    p = tmp_path / "t.csv"
    p.write_text("sequence,label\nACGTACGT,1\nACGTTT,\n")
    assert main(["finetune", str(TINY), "--train", str(p), "--quiet"]) == 2
    assert "rows with an empty label ('label'): line 3" in capsys.readouterr().err
    p.write_text("sequence,label\nACGTACGT,1\n")
    d = tmp_path / "d.csv"
    d.write_text("sequence,label\nACGTACGT,2\n")
    assert main(["finetune", str(TINY), "--train", str(p), "--dev", str(d), "--quiet"]) == 2
    assert "give both --dev and --test" in capsys.readouterr().err
    assert main(["finetune", str(TINY), "--train", str(p), "--dev", str(d), "--test", str(d), "--quiet"]) == 2
    assert "label(s) ['2'] do not occur in the training set" in capsys.readouterr().err
    p.write_text("sequence,label\n" + "A" * 300 + ",1\nACGT,0\n")
    assert main(["finetune", str(TINY), "--train", str(p), "--dev", str(p), "--test", str(p), "--quiet"]) == 2
    assert "sequences longer than the model's 257 bases" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not a fine-tuned classifier"):
        load_classifier(TINY)
