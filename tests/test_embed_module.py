"""Embedding ergonomics: any module's output by name (Evo 2's ``blocks.N...`` naming too), mean / last /
per-position pooling, length-sorted batching that returns input order, and .parquet output with metadata."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from dnalm.cli import main
from dnalm.data.errors import DataError
from dnalm.eval.embed import embed_sequences
from dnalm.models import get_preset
from dnalm.models.lm import DNALM
from dnalm.tokenizer import BOS, decode
from realdata import ecoli_ids, perturbed

HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None


@pytest.fixture(scope="module")
def sh2():
    torch.manual_seed(0)
    return perturbed(DNALM(get_preset("striped-hyena2-tiny")), std=0.02).eval()


def _seqs():
    # real E. coli pieces of different lengths, given in an order that is not sorted by length
    return [ecoli_ids(n, s).numpy().astype(np.uint8) for n, s in ((40, 0), (97, 1000), (13, 5000), (64, 9000))]


def _reference(model, name, seqs, pool):
    """One sequence at a time, no padding, the module's output caught by a hook written here."""
    out = []
    caught = []
    h = model.get_submodule(name).register_forward_hook(lambda m, i, o: caught.append(o))
    try:
        for s in seqs:
            caught.clear()
            x = torch.from_numpy(np.concatenate([[BOS], s]).astype(np.int64))[None]  # [BOS] + bases
            with torch.no_grad():
                model(x)
            v = caught[-1][0, 1:].float()  # (L, D') the bases
            out.append({"mean": v.mean(0), "last": v[-1], "per-position": v}[pool].numpy())
    finally:
        h.remove()
    return out


@pytest.mark.parametrize("pool", ["mean", "last", "per-position"])
def test_module_output_by_name_matches_unbatched_reference(sh2, pool):
    seqs = _seqs()
    ref = _reference(sh2, "backbone.layers.2.mlp.l1", seqs, pool)
    for name in ("blocks.2.mlp.l1", "backbone.layers.2.mlp.l1", "layers.2.mlp.l1"):
        emb = embed_sequences(sh2, seqs, module=name, pool=pool, batch_size=3)
        assert emb.meta["module"] == "backbone.layers.2.mlp.l1" and emb.meta["dim"] == 192  # the MLP's width
        assert emb.meta["batching"]["sorted_by_length"] and 0 < emb.meta["batching"]["padded_share"] < 0.5
        if pool == "per-position":
            offs = emb.meta["offsets"]
            got = [emb.array[offs[i] : offs[i + 1]] for i in range(len(seqs))]
        else:
            got = list(emb.array)
        for g, r in zip(got, ref):  # input order, whatever the batching order was
            np.testing.assert_allclose(g, r, atol=1e-5, rtol=0)


def test_block_output_equals_the_hidden_state(sh2):
    seqs = _seqs()
    a = embed_sequences(sh2, seqs, module="blocks.1", pool="mean").array
    b = embed_sequences(sh2, seqs, layer=2, pool="mean").array  # hidden state 2 = after block index 1
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_module_errors(sh2):
    with pytest.raises(DataError, match="no such module"):
        embed_sequences(sh2, _seqs(), module="blocks.9.mlp.l3")
    torch.manual_seed(0)
    hnet = DNALM(get_preset("dnahnet-tiny-3")).eval()
    with pytest.raises(DataError, match="full-resolution path"):  # the inner stage runs on fewer positions
        embed_sequences(hnet, _seqs(), module="backbone.stage0.main")


def test_cli_module_and_parquet(tmp_path, capsys, sh2):
    from dnalm.checkpoint import save_pretrained

    save_pretrained(sh2, tmp_path / "m")
    fa = tmp_path / "s.fa"
    fa.write_text("".join(f">s{i} note\n{decode(s)}\n" for i, s in enumerate(_seqs())))
    out = tmp_path / "e.npy"
    assert main(["embed", str(tmp_path / "m"), "--fasta", str(fa), "--module", "blocks.2.mlp.l3", "--pool", "last",
                 "-o", str(out), "--quiet"]) == 0  # fmt: skip
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["module"] == "backbone.layers.2.mlp.l3" and meta["ids"] == ["s0", "s1", "s2", "s3"]
    assert meta["lengths"] == [40, 97, 13, 64] and np.load(out).shape == (4, 128)
    pq_out = tmp_path / "e.parquet"
    rc = main(["embed", str(tmp_path / "m"), "--fasta", str(fa), "--pool", "per-position", "-o", str(pq_out),
               "--quiet"])  # fmt: skip
    if not HAVE_PYARROW:
        assert rc == 2 and "pip install pyarrow" in capsys.readouterr().err and not pq_out.exists()
        return
    assert rc == 0
    import pyarrow.parquet as pq

    t = pq.read_table(pq_out)
    assert t.column_names == ["id", "position", "embedding"] and t.num_rows == 40 + 97 + 13 + 64
    m = json.loads(t.schema.metadata[b"dnalm"])
    assert m["pool"] == "per-position" and m["layer"] == -1
    ref = embed_sequences(sh2, _seqs(), pool="per-position").array
    np.testing.assert_allclose(np.stack(t.column("embedding").to_pylist()), ref, atol=0, rtol=0)


@pytest.mark.parametrize("pool", ["mean", "per-position"])
def test_parquet_holds_what_npy_and_json_hold(tmp_path, sh2, pool):
    """The same embeddings written both ways read back equal: values (bit for bit), ids, lengths, windows and
    every metadata key (pyarrow is in the ``test`` extra; users get it with ``dnalm[parquet]``)."""
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from dnalm.checkpoint import save_pretrained

    save_pretrained(sh2, tmp_path / "m")
    fa = tmp_path / "s.fa"
    fa.write_text("".join(f">s{i} note\n{decode(s)}\n" for i, s in enumerate(_seqs())))
    npy, par = tmp_path / "e.npy", tmp_path / "e.parquet"
    for out in (npy, par):
        assert main(["embed", str(tmp_path / "m"), "--fasta", str(fa), "--pool", pool, "--batch-size", "3",
                     "-o", str(out), "--quiet"]) == 0  # fmt: skip
    arr, meta = np.load(npy), json.loads(npy.with_suffix(".json").read_text())
    t = pq.read_table(par)
    pmeta = json.loads(t.schema.metadata[b"dnalm"])
    emb = np.array(t.column("embedding").to_pylist(), dtype=np.float32)
    assert emb.dtype == arr.dtype and emb.shape == arr.shape and np.array_equal(emb, arr)
    assert pmeta.pop("array") == "e.parquet" and meta.pop("array") == "e.npy"
    assert {k: v for k, v in meta.items() if k not in ("ids", "lengths", "windows")} == pmeta
    if pool == "per-position":
        assert t.column_names == ["id", "position", "embedding"]
        n = np.diff(meta["offsets"])
        assert t.column("id").to_pylist() == [i for i, k in zip(meta["ids"], n) for _ in range(k)]
        assert t.column("position").to_pylist() == [p for k in n for p in range(k)]
        assert n.tolist() == meta["lengths"] == [40, 97, 13, 64]
    else:
        assert t.column_names == ["id", "length", "windows", "embedding"]
        assert t.column("id").to_pylist() == meta["ids"] == ["s0", "s1", "s2", "s3"]
        assert t.column("length").to_pylist() == meta["lengths"] == [40, 97, 13, 64]
        assert t.column("windows").to_pylist() == meta["windows"]


def test_parquet_without_pyarrow_is_refused_before_any_work(tmp_path, capsys, sh2, monkeypatch):
    from dnalm.checkpoint import save_pretrained

    save_pretrained(sh2, tmp_path / "m")
    fa = tmp_path / "s.fa"
    fa.write_text(f">s0\n{decode(_seqs()[0])}\n")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # import pyarrow -> ImportError
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    out = tmp_path / "e.parquet"
    assert main(["embed", str(tmp_path / "m"), "--fasta", str(fa), "-o", str(out), "--quiet"]) == 2
    assert "pip install pyarrow" in capsys.readouterr().err and not out.exists()
