"""N is read as context but never scored: held-out loss, dnalm.score, deltas and pooling count A/C/G/T only.

The real case: hg38 chr2 starts with a 10 kb run of N. Evaluated in windows that tile the run exactly, the
N windows must contribute nothing, so bits/base equals the N-free sequence's (within 1e-6).
"""

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dnalm
from dnalm.checkpoint import save_pretrained
from dnalm.data.store import TokenStore
from dnalm.data.store import prepare as prepare_store
from dnalm.eval.embed import embed_sequences
from dnalm.eval.scoring import count_scored, window_logliks
from dnalm.models.hyena import HyenaConfig
from dnalm.models.lm import DNALM
from dnalm.tokenizer import BOS, N, PAD, encode_bytes
from dnalm.train.evaluate import evaluate_lm, lm_inputs
from realdata import perturbed

HUMAN = Path(__file__).resolve().parents[1] / "dnalm" / "resources" / "human_chr2_1-2333275_softmasked.fa.gz"
N_RUN = 10_000  # chr2:1-10,000 is N in hg38
TAIL = 3_000  # soft-masked sequence after the run


@pytest.fixture(scope="module")
def chr2_start() -> bytes:
    seq = b""
    with gzip.open(HUMAN, "rb") as fh:
        fh.readline()
        while len(seq) < N_RUN + TAIL:
            seq += fh.readline().strip()
    seq = seq[: N_RUN + TAIL]
    assert set(seq[:N_RUN]) == {ord("N")} and ord("N") not in set(seq[N_RUN:])
    assert any(chr(c).islower() for c in seq[N_RUN:])  # soft-masked repeats are in the scored part
    return seq


@pytest.fixture(scope="module")
def model() -> DNALM:
    torch.manual_seed(0)
    return perturbed(DNALM(HyenaConfig(n_layer=2, d_model=32, l_max=1024, filter_order=16))).eval()


def _store(tmp_path, name: str, seq: bytes) -> TokenStore:
    fa = tmp_path / f"{name}.fa"
    fa.write_bytes(b">" + name.encode() + b"\n" + seq + b"\n")
    prepare_store([fa], tmp_path / name, val_fraction=0.0, test_fraction=0.0, progress=False)
    return TokenStore.open(tmp_path / name)


def test_eval_bits_per_base_ignores_an_n_run(tmp_path, chr2_start, model):
    with_n = evaluate_lm(model, _store(tmp_path, "with_n", chr2_start), "train", 500, batch_size=4)
    without = evaluate_lm(model, _store(tmp_path, "without", chr2_start[N_RUN:]), "train", 500, batch_size=4)
    assert with_n.skipped_n == N_RUN and without.skipped_n == 0
    assert with_n.n_bases == without.n_bases == TAIL
    assert abs(with_n.bits_per_base - without.bits_per_base) < 1e-6
    assert abs(with_n.perplexity - without.perplexity) < 1e-5


def test_lm_inputs_read_n_but_never_predict_it():
    ids, lower = encode_bytes(b"ACgtNNNacGT")
    valid = np.ones_like(lower)
    valid[-1] = False  # padding at the end
    inputs, targets, weights = lm_inputs(ids[None], lower[None], valid[None], repeat_weight=0.1)
    is_n = torch.from_numpy(ids == N)
    assert inputs[0, 0] == BOS and (inputs[0, 1:] == torch.from_numpy(np.where(valid, ids, PAD)[:-1])).all()
    assert (targets[0][is_n] == PAD).all() and (weights[0][is_n] == 0).all()
    assert weights[0].tolist() == pytest.approx([1, 1, 0.1, 0.1, 0, 0, 0, 0.1, 0.1, 1, 0])


def test_score_skips_n(chr2_start, model):
    seq = chr2_start[N_RUN - 20 : N_RUN + 200].decode()  # 20 N, then bases
    per_base = dnalm.score(model, seq, reduce="none")
    assert per_base.shape == (len(seq),) and np.isnan(per_base[:20]).all() and np.isfinite(per_base[20:]).all()
    assert dnalm.score(model, seq) == pytest.approx(per_base[20:].sum(), abs=1e-9)
    assert dnalm.score(model, seq, reduce="mean") == pytest.approx(per_base[20:].mean(), abs=1e-12)


def test_window_logliks_and_deltas_count_bases_not_n(chr2_start, model):
    ids, _ = encode_bytes(chr2_start[N_RUN - 50 : N_RUN + 150])
    per_base = window_logliks(model, [ids], reduce="none")[0]
    assert np.isnan(per_base[:50]).all()
    assert window_logliks(model, [ids])[0] == pytest.approx(np.nansum(per_base), abs=1e-9)
    assert count_scored(ids) == 150


def test_mean_pooling_leaves_n_out(chr2_start, model):
    seq = chr2_start[N_RUN - 30 : N_RUN + 90].decode()
    emb = embed_sequences(model, [seq], pool="mean").array[0]
    ids, _ = encode_bytes(seq.encode())
    x = torch.from_numpy(np.concatenate([[BOS], ids]).astype(np.int64))[None]
    with torch.no_grad():
        h = model(x, output_hidden_states=True).hidden_states[-1][0, 1:].float()  # (L, D)
    expected = h[torch.from_numpy(ids != N)].mean(0).numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-5)


def test_cli_eval_reports_skipped_n(tmp_path, chr2_start, model):
    fa = tmp_path / "region.fa"
    fa.write_bytes(b">chr2_start\n" + chr2_start[N_RUN - 1000 : N_RUN + 1000] + b"\n")
    save_pretrained(model, tmp_path / "m")
    r = subprocess.run([sys.executable, "-m", "dnalm", "eval", str(tmp_path / "m"), "--fasta", str(fa),
                        "--seq-len", "500"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "1,000 bases" in r.stdout and "1,000 N bases not scored" in r.stdout
