"""`prepare` and the token store: counts, splits, no-op re-runs, atomic writes, bad input, the CLI.
Fixtures: tests/data/SOURCES.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnalm.cli import main
from dnalm.data.errors import DataError
from dnalm.data.sequences import read_sequences
from dnalm.data.store import TokenStore, prepare

DATA = Path(__file__).parent / "data"
INPUTS = [DATA / "phage_phix174.fa", DATA / "phage_lambda.fa", DATA / "phage_t7.gb", DATA / "human_chr2_1-100000_softmasked.fa.gz"]
PHIX = dict(annotations=[DATA / "phage_phix174.gff"], zero_based_gff=True, circular=["NC_001422*"])
TOTAL = 5_386 + 48_502 + 39_937 + 100_000


def _prepare(out: Path, **kw):
    args = {**PHIX, "progress": False, **kw}
    return prepare(INPUTS, out, **args)


def test_prepare_counts_index_and_windows(tmp_path):
    m = _prepare(tmp_path / "s")
    c = m["counts"]
    assert (c["records"], c["bases"]) == (4, TOTAL)
    assert c["lower_bases"] == 42_491  # only the hg38 slice is soft-masked
    assert c["lower_fraction"] == pytest.approx(42_491 / TOTAL, abs=1e-6)
    assert c["n_bases"] == 10_000 and c["n_fraction"] == pytest.approx(10_000 / TOTAL, abs=1e-6)
    gc = 2_411 + 24_182 + 39_228 + 19_329  # coreutils counts (tests/data/SOURCES.md)
    assert c["gc_bases"] == gc and c["gc_fraction"] == pytest.approx(gc / (TOTAL - 10_000), abs=1e-6)
    assert c["genes"] == 11 + 60  # phiX ORFs from the GFF, T7 genes from the GenBank features
    assert [i["sha256"] for i in m["inputs"]] and m["annotations"][0]["genes"] == 11
    store = TokenStore.open(tmp_path / "s")
    assert len(store) == TOTAL and store.tokens.dtype == np.uint8
    # Every record reads back exactly as the reader produced it.
    recs = [r for p in INPUTS for r in read_sequences(p)]
    for i, rec in enumerate(recs):
        ids, lower = store.window(i, 0, len(rec))
        assert store.records[i].name == rec.name and np.array_equal(ids, rec.ids) and np.array_equal(lower, rec.lower)
    assert store.records[0].circular and not store.records[1].circular
    # Splits: per record train, then a 5% val block, then a 5% test block; they tile the record exactly.
    for i, rec in enumerate(recs):
        parts = sorted((s, e, k) for k in ("train", "val", "test") for r, s, e in store.intervals(k) if r == i)
        assert [p[2] for p in parts] == ["train", "val", "test"]
        assert parts[0][0] == 0 and parts[-1][1] == len(rec) and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert parts[1][1] - parts[1][0] == round(0.05 * len(rec))
    assert sum(m["splits"][k]["bases"] for k in ("train", "val", "test")) == TOTAL
    assert store.intervals("validation") == store.intervals("val")
    assert store.intervals(["val", "test"]) == [(i, s, e) for i, s, _ in store.intervals("val") for j, _, e in store.intervals("test") if i == j]
    # Genes are in record coordinates; the phiX ORF that crosses the origin ends past the record end.
    phix_genes = [g for g in store.genes() if g.record_index == 0]
    assert len(phix_genes) == 11 and max(g.end for g in phix_genes) == 5_522
    assert store.n_count(np.array([0, store.records[3].offset, store.records[3].offset + 9_990]), 100).tolist() == [0, 100, 10]


def test_t7_gc_from_genbank_text():
    """The T7 G+C count used above, taken straight from the GenBank ORIGIN lines."""
    text = (DATA / "phage_t7.gb").read_text().split("ORIGIN", 1)[1]
    seq = "".join(ch for ch in text if ch.isalpha()).upper()
    assert len(seq) == 39_937 and seq.count("G") + seq.count("C") == 19_329


def test_rerun_is_noop_and_changes_rebuild(tmp_path):
    out = tmp_path / "s"
    first = _prepare(out)
    assert first["up_to_date"] is False
    mtime = (out / "tokens.u8").stat().st_mtime_ns
    again = _prepare(out)
    assert again["up_to_date"] is True and again["created"] == first["created"]
    assert (out / "tokens.u8").stat().st_mtime_ns == mtime
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == first["fingerprint"]
    changed = _prepare(out, val_fraction=0.1)  # new options: rebuilt
    assert changed["up_to_date"] is False and changed["replaced_previous"] is True
    assert TokenStore.open(out).manifest["options"]["val_fraction"] == 0.1
    assert _prepare(out, val_fraction=0.1, force=True)["up_to_date"] is False


def test_split_by_record_name(tmp_path):
    m = _prepare(tmp_path / "s", test_records=["NC_001422*"], val_records=["chr2*"])
    store = TokenStore.open(tmp_path / "s")
    assert store.intervals("test") == [(0, 0, 5_386)]  # phiX whole
    assert store.intervals("val") == [(3, 0, 100_000)]  # the hg38 slice whole
    assert [r.split for r in store.records] == ["test", "train", "train", "val"]
    assert m["splits"]["train"]["bases"] == 48_502 + 39_937
    # By name for test, by fraction for val on the remaining records.
    _prepare(tmp_path / "s2", test_records=["NC_001422*"], val_fraction=0.1)
    s2 = TokenStore.open(tmp_path / "s2")
    assert s2.intervals("test") == [(0, 0, 5_386)]
    assert [(r, e - s) for r, s, e in s2.intervals("val")] == [(1, 4_850), (2, 3_994), (3, 10_000)]
    with pytest.raises(DataError, match="pattern 'chrX' matches no record"):
        _prepare(tmp_path / "s3", val_records=["chrX"])
    with pytest.raises(DataError, match="matches both"):
        _prepare(tmp_path / "s3", val_records=["chr2*"], test_records=["chr*"])
    assert not (tmp_path / "s3").exists()


def test_bad_inputs_write_nothing(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text(">ok\nACGT\n>broken\nACGTX\n")
    cases = [
        (dict(inputs=[DATA / "phage_lambda.fa", bad]), "record 'broken', position 5"),
        (dict(inputs=[DATA / "phage_lambda.fa", DATA / "phage_lambda.fa"]), "already read from"),
        (dict(inputs=[DATA / "phage_phix174.fa"], annotations=[DATA / "phage_phix174.gff"], zero_based_gff=True),
         "outside record 'NC_001422.1'"),
        (dict(inputs=[DATA / "phage_lambda.fa"], annotations=[DATA / "phage_phix174.gff"]), "no feature lies on a record"),
        (dict(inputs=[DATA / "phage_lambda.fa"], val_fraction=0.6, test_fraction=0.5), "must be < 1"),
        (dict(inputs=[tmp_path / "missing.fa"]), "no such file"),
        (dict(inputs=[]), "no input files"),
    ]
    for kw, message in cases:
        out = tmp_path / "out"
        with pytest.raises(DataError, match=message):
            prepare(kw.pop("inputs"), out, progress=False, **kw)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa"]  # no temporary directories left behind


def test_failed_rebuild_keeps_old_store_and_refuses_foreign_dirs(tmp_path, monkeypatch):
    out = tmp_path / "s"
    _prepare(out)
    import dnalm.data.store as store_mod

    def boom(*a, **k):
        raise KeyboardInterrupt  # an interrupt in the middle of writing

    monkeypatch.setattr(store_mod, "_split_records", boom)
    with pytest.raises(KeyboardInterrupt):
        _prepare(out, force=True)
    assert TokenStore.open(out).manifest["counts"]["bases"] == TOTAL  # the old store is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a complete dnalm token store"):
        prepare([DATA / "phage_lambda.fa"], other, force=True, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"


def test_killed_prepare_leaves_no_store(tmp_path):
    """SIGKILL in the middle of writing (after the tokens, before the index): no store appears."""
    out = tmp_path / "s"
    code = f"""
import os, signal
import dnalm.data.store as s
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
s._split_records = die
s.prepare([{str(DATA / 'phage_lambda.fa')!r}], {str(out)!r}, progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9
    assert not out.exists()
    with pytest.raises(DataError, match="no token store here"):
        TokenStore.open(out)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".s.tmp-") for name in leftovers)  # only an obvious temporary directory


def test_open_rejects_damaged_stores(tmp_path):
    out = tmp_path / "s"
    prepare([DATA / "phage_phix174.fa"], out, progress=False)
    with open(out / "tokens.u8", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(DataError, match="tokens.u8 is missing or has the wrong size"):
        TokenStore.open(out)
    os.remove(out / "manifest.json")
    with pytest.raises(DataError, match="incomplete or not a dnalm token store"):
        TokenStore.open(out)


def test_cli_prepare(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["prepare", str(DATA / "phage_phix174.fa"), "--gff", str(DATA / "phage_phix174.gff"), "--zero-based-gff",
            "--circular", "NC_001422.1", "--out", str(out), "--quiet", "--test-records", "NC_001422.1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "prepared:" in text and "records 1  bases 5,386  GC 44.76%" in text and "test 5,386 bp" in text
    assert "MB/s" in text
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    bad = tmp_path / "bad.fa"
    bad.write_text(">r\nAC\nGT?\n")
    assert main(["prepare", str(bad), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}: record 'r', position 5 (1-based, line 3)" in err
    assert not (tmp_path / "b").exists()


def test_cli_default_is_embedded_ecoli(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path / "e"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "bases 4,641,652  GC 50.79%  N 0.00%" in text and "genes 4,494" in text


SHARED_CHR2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "genomes" / "human_chr2_1-2333275_softmasked.fa.gz"


@pytest.mark.skipif(not SHARED_CHR2.is_file(), reason="the shared hg38 chr2 file is not on this machine")
def test_full_chr2_lowercase_fraction(tmp_path):
    m = prepare([SHARED_CHR2], tmp_path / "h", progress=False)
    assert m["counts"]["bases"] == 2_333_275
    assert round(m["counts"]["lower_fraction"], 3) == 0.356  # README: 35.6% lowercase
    assert m["counts"]["n_bases"] == 10_000 and m["counts"]["lower_bases"] == 831_507  # README: 10 kb of N
