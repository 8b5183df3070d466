"""Gene essentiality: genes from the GFF, the stop cassette placed in frame on both strands (checked
against the genome read independently), deltas against a direct two-pass computation, labels and their
errors, and the CLI. Data: the embedded E. coli genome + GFF and the first 60 labelled genes
(tests/data/ecoli_essentiality_first60.tsv)."""

from __future__ import annotations

import gzip
import importlib.resources as ir
from pathlib import Path

import pytest
import torch

import dnalm
from dnalm.cli import main
from dnalm.models.hyena import HyenaConfig
from dnalm.data.errors import DataError
from dnalm.eval.essentiality import DEFAULT_CASSETTE, genes_from_gff, read_labels, score_essentiality
from dnalm.models.lm import DNALM

DATA = Path(__file__).parent / "data"
RES = ir.files("dnalm") / "resources"
GENOME = RES / "ecoli_k12_mg1655.fa.gz"
GFF = RES / "ecoli_k12_mg1655.gff3.gz"
LABELS = DATA / "ecoli_essentiality_first60.tsv"
TINY = DATA / "ecoli_hyena_tiny"
COMP = str.maketrans("ACGT", "TGCA")


@pytest.fixture(scope="module")
def genome() -> str:
    with gzip.open(GENOME, "rt") as fh:
        return "".join(ln.strip() for ln in fh if not ln.startswith(">")).upper()


@pytest.fixture(scope="module")
def model() -> DNALM:
    torch.manual_seed(0)
    return DNALM(HyenaConfig(n_layer=1, d_model=16, l_max=202)).eval()


def rc(s: str) -> str:
    return s.translate(COMP)[::-1]


def test_genes_from_gff_start_with_start_codons(genome):
    genes = genes_from_gff(GFF)
    assert 4200 < len(genes) < 4337  # CDS grouped by locus_tag, pseudo CDS dropped
    thra = next(g for g in genes if g.locus_tag == "b0002")
    assert (thra.name, thra.start, thra.end, thra.strand) == ("thrA", 336, 2799, 1)
    starts = [(genome[g.start : g.start + 3] if g.strand == 1 else rc(genome[g.end - 3 : g.end])) for g in genes]
    assert sum(s in ("ATG", "GTG", "TTG") for s in starts) / len(starts) > 0.99


def test_cassette_in_frame_on_both_strands_and_direct_delta(model, genome):
    res = score_essentiality(model, GENOME, GFF, LABELS, window=200, max_genes=8, progress=False)
    rows = {r["locus_tag"]: r for r in res["rows"]}
    for tag in ("b0002", "b0006"):  # thrA (+ strand), yaaA (- strand)
        r = rows[tag]
        s, e = r["window_start"] - 1, r["window_end"]  # 0-based half-open genome span of the window
        assert e - s == 200
        if r["strand"] == "+":
            ref = genome[s:e]
            cut = r["insert_after"] - s  # bases of the window before the insertion
            assert ref[cut - 12 : cut - 9] == genome[r["start"] - 1 : r["start"] + 2] == "ATG"
        else:
            ref = rc(genome[s:e])
            cut = e - r["insert_after"] + 1
            assert ref[cut - 12 : cut - 9] == rc(genome[r["end"] - 3 : r["end"]]) == "ATG"
        mut = (ref[:cut] + DEFAULT_CASSETTE + ref[cut:])[:200]
        direct = float(dnalm.score(model, mut) - dnalm.score(model, ref))
        assert r["delta_sum"] == pytest.approx(direct, abs=2e-4)
        assert r["delta_mean"] == pytest.approx(r["delta_sum"] / 200)
    assert set(res["label_columns"]) == {"essential_baba2006_keio", "essential_gerdes2003", "essential_PEC_curated"}


def test_trained_model_gives_stop_insertions_negative_deltas():
    import dnalm

    res = score_essentiality(dnalm.load(TINY), GENOME, GFF, LABELS, window=256, max_genes=30, progress=False)
    deltas = [r["delta_sum"] for r in res["rows"]]
    # a stop cassette inside a gene should look unnatural to a model trained on this genome
    assert sum(d < 0 for d in deltas) > 0.8 * len(deltas)


def test_label_errors(tmp_path, model):
    p = tmp_path / "l.tsv"
    p.write_text("locus_tag\tessential_x\nb0001\t1\nb0002\t\nb0003\tyes\n")
    with pytest.raises(DataError, match=r"2 labels that are not 0/1: line 3 essential_x is empty; line 4 essential_x='yes'"):
        read_labels(p)
    p.write_text("gene_id\tessential_x\nb0001\t1\n")
    with pytest.raises(DataError, match=r"no locus_tag \(or gene\) column"):
        read_labels(p)
    p.write_text("locus_tag\tscore\nb0001\t1\n")
    with pytest.raises(DataError, match="no label columns"):
        read_labels(p)
    with pytest.raises(DataError, match="multiple of 3"):
        score_essentiality(model, GENOME, GFF, LABELS, insert_offset=10, progress=False)


def test_cli_with_labels(tmp_path, capsys):
    out = tmp_path / "ess.tsv"
    assert main(["essentiality", str(TINY), "--fasta", str(GENOME), "--gff", str(GFF), "--labels", str(LABELS),
                 "--window", "128", "-o", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "scored 60 genes" in text and "essential_gerdes2003: AUROC" in text and "gene-length baseline" in text
    body = [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]
    assert len(body) == 61 and body[0].startswith("locus_tag\tgene\tseqid\tstart\tend\tstrand")
    assert out.with_suffix(".roc.png").exists()
    bad = tmp_path / "other.gff3"
    bad.write_text("##gff-version 3\nchrZ\tx\tCDS\t1\t30\t.\t+\t0\tID=c1;locus_tag=z1\n")
    assert main(["essentiality", str(TINY), "--fasta", str(GENOME), "--gff", str(bad), "--quiet"]) == 2
    assert "not records of" in capsys.readouterr().err


def test_labels_keyed_by_gene_name(tmp_path, model):
    """The label file's gene names (not locus tags) find their genes; this once failed with 'dictionary
    changed size during iteration'. Real labels: the first 12 rows, locus_tag column dropped."""
    rows = [ln.split("\t") for ln in LABELS.read_text().splitlines()[:13]]
    p = tmp_path / "by_name.tsv"
    p.write_text("\n".join("\t".join(r[1:]) for r in rows) + "\n")  # gene, start, ..., essential_*
    by_name = score_essentiality(model, GENOME, GFF, p, window=64, progress=False)
    by_tag = score_essentiality(model, GENOME, GFF, LABELS, window=64, max_genes=12, progress=False)
    assert len(by_name["rows"]) == 12
    assert {r["locus_tag"]: r["delta_sum"] for r in by_name["rows"]} == {r["locus_tag"]: r["delta_sum"]
                                                                       for r in by_tag["rows"]}


def test_label_column_of_one_class_fails_before_scoring(tmp_path, capsys):
    out = tmp_path / "ess.tsv"
    rows = LABELS.read_text().splitlines()[:9]  # 8 genes, none essential in the Keio column
    p = tmp_path / "few.tsv"
    p.write_text("\n".join(rows) + "\n")
    assert main(["essentiality", str(TINY), "--fasta", str(GENOME), "--gff", str(GFF), "--labels", str(p),
                 "--label-column", "essential_baba2006_keio", "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'essential_baba2006_keio' is 0 for all 8 scored genes" in err[0]
    assert not out.exists() and not out.with_suffix(".roc.png").exists()
