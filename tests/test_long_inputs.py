"""Sequences longer than the model for embed, finetune and predict: the default is the clear error;
``--crop center|left|right`` keeps one window and ``--windows`` pools over tiled windows, each checked
against the model run directly on the expected slices. GUE prom_300 style: real 70-bp GUE core promoters
(tests/data/gue_prom_core_tata_small) against a model whose context holds 39 bases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dnalm.checkpoint import save_pretrained
from dnalm.cli import main
from dnalm.data.errors import DataError
from dnalm.eval.embed import embed_sequences, fit_to_context
from dnalm.models.hyena import HyenaConfig
from dnalm.models.lm import DNALM
from dnalm.tokenizer import encode_bytes

GUE = Path(__file__).parent / "data" / "gue_prom_core_tata_small"
W = 39  # l_max 40 minus the [BOS]


def seqs(split: str, n: int) -> list[str]:
    return [ln.split(",")[0] for ln in (GUE / f"{split}.csv").read_text().splitlines()[1 : n + 1]]


@pytest.fixture(scope="module")
def short_model(tmp_path_factory):
    torch.manual_seed(0)
    m = DNALM(HyenaConfig(n_layer=2, d_model=16, l_max=W + 1)).eval()
    path = tmp_path_factory.mktemp("m") / "short"
    save_pretrained(m, path)
    return m, path


def hidden(model, seq: str) -> torch.Tensor:
    """Final hidden states of one sequence run alone (bases only, no [BOS])."""
    ids = model.tokenizer.batch([seq])["input_ids"]
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[-1][0, 1:]  # (L, D)


def test_fit_to_context_slices():
    s = encode_bytes(seqs("dev", 1)[0].encode())[0]
    assert len(s) == 70
    for crop, a in (("left", 0), ("right", 31), ("center", 15)):
        (w,), n = fit_to_context([s], W, crop=crop)
        assert n == 1 and np.array_equal(w[0], s[a : a + W])
    (w,), _ = fit_to_context([s], W, windows=True)
    assert [len(x) for x in w] == [39, 31] and np.array_equal(np.concatenate(w), s)
    with pytest.raises(DataError, match=r"src: 1 sequences longer than the model's 39 bases: a \(70 bp\); pass --crop"):
        fit_to_context([s], W, names=["a"], source="src")


def test_embed_crop_and_windows_against_direct_forward(short_model):
    model, _ = short_model
    s = seqs("dev", 2)
    for crop, a in (("center", 15), ("left", 0), ("right", 31)):
        e = embed_sequences(model, s, crop=crop).array
        for i in range(2):
            want = hidden(model, s[i][a : a + W]).mean(0)
            np.testing.assert_allclose(e[i], want.numpy(), rtol=1e-5, atol=1e-5)
    e = embed_sequences(model, s, windows=True)
    assert e.windows == [2, 2] and e.meta["long_inputs"] == "windows"
    for i in range(2):
        want = torch.cat([hidden(model, s[i][:W]), hidden(model, s[i][W:])]).mean(0)  # every base weighted once
        np.testing.assert_allclose(e.array[i], want.numpy(), rtol=1e-5, atol=1e-5)


def test_cli_default_error_then_crop_and_windows(short_model, tmp_path, capsys):
    _, path = short_model
    out = tmp_path / "e.npy"
    args = ["embed", str(path), "--csv", str(GUE / "dev.csv"), "-o", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "60 sequences longer than the model's 39 bases" in err[0] and not out.exists()
    assert main(args + ["--crop", "center"]) == 0
    assert "60 sequences were longer than 39 bases and were cropped" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["long_inputs"] == "crop center" and meta["windows"] == [1] * 60


def test_finetune_and_predict_with_windows(short_model, tmp_path, capsys):
    from dnalm.eval.finetune import _pooled, load_classifier, predict_proba

    _, path = short_model
    clf_dir = tmp_path / "clf"
    base = ["finetune", str(path), "--train", str(GUE / "train.csv"), "--probe-steps", "20", "-o", str(clf_dir), "--quiet"]
    assert main(base) == 2 and "longer than the model's 39 bases" in capsys.readouterr().err
    assert main(base + ["--windows"]) == 0
    text = capsys.readouterr().out
    assert "200 sequences longer than the context: windows" in text
    assert json.loads((clf_dir / "report.json").read_text())["long_inputs"] == "windows"
    pred = tmp_path / "p.tsv"
    pargs = ["predict", str(clf_dir), "--csv", str(GUE / "test.csv"), "-o", str(pred), "--quiet"]
    assert main(pargs) == 2 and "longer than the classifier's 39 bases" in capsys.readouterr().err
    assert main(pargs + ["--windows"]) == 0
    rows = [ln.split("\t") for ln in pred.read_text().splitlines() if not ln.startswith("#")][1:]
    clf, _ = load_classifier(clf_dir)
    s = [encode_bytes(x.encode())[0] for x in seqs("test", 60)]
    # the windowed probabilities: the head on the base-weighted mean of the two windows' features
    with torch.no_grad():
        f = clf.features(*[t for t in _batch(clf, [x[:W] for x in s] + [x[W:] for x in s])])
        feats = (39 * f[:60] + 31 * f[60:]) / 70
        want = torch.softmax(clf.head(feats), -1)[:, 1].numpy()
        pooled = _pooled(clf, [[x[:W], x[W:]] for x in s[:3]])
    np.testing.assert_allclose([float(r[3]) for r in rows], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled.numpy(), feats[:3].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict_proba(clf, [[x[:W], x[W:]] for x in s])[:, 1], want, rtol=1e-5, atol=1e-6)


def _batch(clf, windows):
    from dnalm.eval.embed import batch_ids

    return batch_ids(clf.lm, windows)
