"""DMS scoring: the codon table and BLOSUM62 against Biopython, closest-codon mapping against a hand-made
table, mutant parsing, delta against a direct two-pass computation, and bad input. Fixtures: the
APH(3')II coding sequence and the first 120 mutants of Melnikov et al. 2014 (tests/data/SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dnalm
from dnalm.cli import main
from dnalm.models.hyena import HyenaConfig
from dnalm.data.errors import DataError
from dnalm.eval.dms import BLOSUM62, CODON_TABLE, closest_codons, parse_mutant, read_mutants, score_dms, translate
from dnalm.models.lm import DNALM

DATA = Path(__file__).parent / "data"
CDS = DATA / "aph3II_nt.fasta"
MUTANTS = DATA / "MERGE_kka2_klepn_head.csv"
PROTEIN_START = "MIEQDGLHAGSPAAWVERLFGYDWAQQTIGCSDAAVFRLSAQGRPVLFVKTDLSGALNEL"  # MERGE_kka2_klepn.fasta, line 2


def cds_text() -> str:
    return "".join(ln.strip() for ln in CDS.read_text().splitlines() if not ln.startswith(">"))


def test_codon_table_and_blosum62_match_biopython():
    from Bio.Align import substitution_matrices
    from Bio.Seq import Seq

    assert len(CODON_TABLE) == 64
    for codon, aa in CODON_TABLE.items():
        assert str(Seq(codon).translate()) == aa, codon
    ref = substitution_matrices.load("BLOSUM62")
    for a in "ARNDCQEGHILKMFPSTWYV*":
        for b in "ARNDCQEGHILKMFPSTWYV*":
            assert BLOSUM62[(a, b)] == ref[a][b], (a, b)


def test_cds_translates_to_the_published_protein():
    protein = translate(cds_text())
    assert protein.startswith(PROTEIN_START) and len(protein) == 264


@pytest.mark.parametrize(
    "wt, aa, codons, changes",
    [
        ("GGC", "G", ["GGC"], 0),  # synonymous: keep the wild-type codon
        ("GGC", "A", ["GCC"], 1),
        ("GGC", "E", ["GAA", "GAG"], 2),  # a tie: both need two changes
        ("TGG", "L", ["TTG"], 1),
        ("ATG", "K", ["AAG"], 1),
        ("TTT", "W", ["TGG"], 2),
        ("CAA", "*", ["TAA"], 1),
        ("GGC", "R", ["CGC"], 1),
        ("GAT", "R", ["CGT"], 2),
        ("GAT", "S", ["AGT", "TCT"], 2),
        ("ATG", "G", ["GGG"], 2),
        ("TGG", "P", ["CCG"], 2),
    ],
)
def test_closest_codons_against_a_table(wt, aa, codons, changes):
    assert closest_codons(wt, aa) == (codons, changes)


def test_parse_mutants():
    m = parse_mutant("G21A:l22p")
    assert [(x.wt, x.pos, x.mut) for x in m] == [("G", 21, "A"), ("L", 22, "P")]
    for bad in ("G21", "21A", "G21AA", "G-1A", ""):
        with pytest.raises(ValueError):
            parse_mutant(bad)


def test_read_mutants_semicolon_and_comments():
    rows, meta = read_mutants(MUTANTS)
    assert meta["delimiter"] == ";" and meta["fitness"] == "y" and meta["baselines"] == ["dE"]
    assert len(rows) == 120 and rows[0]["variant"] == "G21G"
    assert rows[1]["fitness"] == pytest.approx(1.75975) and rows[1]["baselines"]["dE"] == pytest.approx(-3.5556249821675014)


@pytest.fixture(scope="module")
def model() -> DNALM:
    torch.manual_seed(0)
    return DNALM(HyenaConfig(n_layer=1, d_model=16, l_max=802)).eval()


def test_delta_against_direct_scoring(model):
    res = score_dms(model, CDS, MUTANTS, progress=False)
    wt = cds_text()
    rows = {r["variant"]: r for r in res["rows"]}
    assert rows["G21G"]["delta_sum"] == 0.0 and rows["G21G"]["dna"] == "synonymous"
    assert rows["G21A"]["codons"] == "GGC>GCC" and rows["G21A"]["dna"] == "c.62G>C"
    assert rows["G21E"]["codons"] == "GGC>GAA|GAG" and rows["G21E"]["n_choices"] == 2
    for name, codon in (("G21A", "GCC"), ("G21E", "GAA")):  # codon 21 = nt 61-63; ties: the first codon
        mut = wt[:60] + codon + wt[63:]
        direct = float(dnalm.score(model, mut) - dnalm.score(model, wt))
        assert rows[name]["delta_sum"] == pytest.approx(direct, abs=2e-4)
    assert set(res["spearman"]) == {"model delta", "BLOSUM62", "dE", "-nt_changes"}
    assert res["window"] == len(wt)


def test_ties_mean_averages_tied_codons(model):
    first = {r["variant"]: r for r in score_dms(model, CDS, MUTANTS, progress=False)["rows"]}
    mean = {r["variant"]: r for r in score_dms(model, CDS, MUTANTS, ties="mean", progress=False)["rows"]}
    wt = cds_text()
    d = [float(dnalm.score(model, wt[:60] + c + wt[63:]) - dnalm.score(model, wt)) for c in ("GAA", "GAG")]
    assert mean["G21E"]["delta_sum"] == pytest.approx(np.mean(d), abs=2e-4)
    assert mean["G21A"]["delta_sum"] == pytest.approx(first["G21A"]["delta_sum"], abs=1e-9)


def test_long_cds_uses_a_window_around_the_codon(tmp_path):
    torch.manual_seed(0)
    small = DNALM(HyenaConfig(n_layer=1, d_model=16, l_max=130)).eval()
    wt = cds_text()
    aa = translate(wt)[149]  # residue 150, mid-gene: the window is centred on its codon (nt 448-450)
    new = "W" if aa != "W" else "A"
    p = tmp_path / "m.csv"
    p.write_text(f"variant,y\n{aa}150{new},1.0\n")
    res = score_dms(small, CDS, p, progress=False)
    assert res["window"] == 129 and "centred on the mutated codons" in res["notes"][0]
    i = 3 * 149
    start = (2 * i + 3) // 2 - 129 // 2
    codon = closest_codons(wt[i : i + 3], new)[0][0]
    ref = wt[start : start + 129]
    mut = (wt[:i] + codon + wt[i + 3 :])[start : start + 129]
    assert ref != mut and len(ref) == 129
    assert res["rows"][0]["delta_sum"] == pytest.approx(float(dnalm.score(small, mut) - dnalm.score(small, ref)), abs=2e-4)


def test_bad_mutants(tmp_path, model):
    p = tmp_path / "m.csv"
    p.write_text("variant;y\nA21G;1.0\nG21A;0.5\n")
    with pytest.raises(DataError, match=r"line 2: A21G: the CDS encodes G at 21"):
        score_dms(model, CDS, p, progress=False)
    p.write_text("variant;y\nG999A;1.0\n")
    with pytest.raises(DataError, match=r"residue 999 outside 1..264"):
        score_dms(model, CDS, p, progress=False)
    p.write_text("# only a comment\nvariant;y\nG21;1.0\n")
    with pytest.raises(DataError, match=r"line 3: 'G21' is not a mutation"):
        score_dms(model, CDS, p, progress=False)
    p.write_text("mutant_name,score\nG21A,1\n")
    with pytest.raises(DataError, match="no mutant column"):
        read_mutants(p)


def test_cli(tmp_path, capsys):
    from dnalm.checkpoint import save_pretrained

    torch.manual_seed(0)
    save_pretrained(DNALM(HyenaConfig(n_layer=1, d_model=16, l_max=802)), tmp_path / "m")
    out = tmp_path / "dms.tsv"
    assert main(["dms", str(tmp_path / "m"), "--cds", str(CDS), "--variants", str(MUTANTS), "-o", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Spearman with y (n = 120)" in text and "BLOSUM62" in text and "dE" in text
    body = [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]
    assert body[0].split("\t") == ["variant", "codons", "nt_changes", "n_choices", "dna", "delta_sum", "delta_mean",
                                   "fitness", "blosum62", "dE"]
    assert len(body) == 121
