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


# ------------------------------------------------------------------------------------------ CDS with flanks
# aph3II_lacZ_context.fa: the real APH(3')II CDS between the real 5' and 3' context of E. coli lacZ
# (tests/data/SOURCES.md); mutant numbers shifted by +2 play a numbering that does not start at the ATG
# (as Ambler numbering of TEM-1 starts at 3).

FLANKED = DATA / "aph3II_lacZ_context.fa"
TINY = DATA / "ecoli_hyena_tiny"


def _record(path: Path) -> str:
    return "".join(ln.strip() for ln in path.read_text().splitlines() if not ln.startswith(">"))


def test_flanked_file_is_built_from_real_sequence():
    """Re-derive the file: lacZ's 100 bases upstream (gene orientation) + the CDS + lacZ's stop and 97 bases."""
    import gzip

    from dnalm.tokenizer import decode, reverse_complement_ids

    genome = b"".join(ln.strip() for ln in gzip.open(Path(__file__).parents[1] / "dnalm/resources/ecoli_k12_mg1655.fa.gz")
                      if not ln.startswith(b">")).decode()

    def rc(s: str) -> str:
        return decode(reverse_complement_ids(encode_bytes_(s)))

    assert rc(genome[366302:366305]) == "ATG"  # lacZ = complement(363231..366305) in the GFF
    up, down = rc(genome[366305:366405]), rc(genome[363133:363233])
    assert down[:3] == "TAA" and _record(FLANKED) == up + cds_text() + down


def encode_bytes_(s: str):
    from dnalm.tokenizer import encode_bytes

    return encode_bytes(s.encode())[0]


def _shifted_table(tmp_path: Path, shift: int) -> Path:
    """The real mutant table with every residue number + shift."""
    import re

    out = []
    for ln in MUTANTS.read_text().splitlines():
        m = re.match(r"^([A-Z*])(\d+)([A-Z*]);", ln)
        out.append(f"{m[1]}{int(m[2]) + shift}{m[3]};{ln.split(';', 1)[1]}" if m else ln)
    p = tmp_path / "shifted.csv"
    p.write_text("\n".join(out) + "\n")
    return p


@pytest.fixture(scope="module")
def tiny():
    import dnalm

    return dnalm.load(TINY)


def test_flanks_and_offset_numbering_against_hand_checked_codons(tmp_path, tiny):
    table = _shifted_table(tmp_path, 2)
    res = score_dms(tiny, FLANKED, table, numbering_offset=2, progress=False)
    cds = res["cds"]
    # hand-checked: the CDS is record positions 101-895 (100 flank bases, 264 codons, then lacZ's TAA)
    assert (cds.strand, cds.span(), cds.codons, cds.stop) == (1, (101, 895), 264, True)
    assert "100 bases upstream and 97 downstream kept as context" in res["notes"][0]
    rows = {r["variant"]: r for r in res["rows"]}
    rec = _record(FLANKED)
    # residue 23 of the table = codon 21 = record positions 161-163 = GGC (G); A: GCC, 1 change at c.62
    assert rec[160:163] == "GGC" and rows["G23A"]["codons"] == "GGC>GCC" and rows["G23A"]["dna"] == "c.62G>C"
    # residue 24 = codon 22 = positions 164-166 = TAT (Y); F: TTT at c.65; E: GAA|GAG tie (2 changes) -> GAA
    assert rec[163:166] == "TAT"
    assert rows["Y24F"]["codons"] == "TAT>TTT" and rows["Y24F"]["dna"] == "c.65A>T"
    assert rows["Y24E"]["codons"] == "TAT>GAA|GAG" and rows["Y24E"]["dna"] == "c.64T>G;c.66T>A"
    # the window is the model's 257 bases centred on the codon, flanks included: record[33:290]
    for name, i, codon in (("G23A", 160, "GCC"), ("Y24F", 163, "TTT")):
        lo = (2 * i + 3) // 2 - 257 // 2
        assert lo < 100  # upstream flank bases are in the scored window
        ref = rec[lo : lo + 257]
        mut = (rec[:i] + codon + rec[i + 3 :])[lo : lo + 257]
        assert rows[name]["delta_sum"] == pytest.approx(float(dnalm.score(tiny, mut) - dnalm.score(tiny, ref)), abs=2e-4)


def test_without_the_offset_the_frame_is_found_and_the_numbering_flagged(tmp_path, tiny):
    table = _shifted_table(tmp_path, 2)
    with_offset = {r["variant"]: r for r in score_dms(tiny, FLANKED, table, numbering_offset=2, progress=False)["rows"]}
    res = score_dms(tiny, FLANKED, table, progress=False)
    assert res["cds"].span()[0] == 95  # codon "1" two codons before the ATG
    assert any("not ATG" in n and "--numbering-offset" in n for n in res["notes"])
    for r in res["rows"]:  # the same codons and scores; only the c. numbering moves by 6
        assert r["codons"] == with_offset[r["variant"]]["codons"]
        assert r["delta_sum"] == with_offset[r["variant"]]["delta_sum"]
    assert {r["variant"]: r["dna"] for r in res["rows"]}["G23A"] == "c.68G>C"


def test_cds_on_the_reverse_strand_and_given_positions(tmp_path, tiny):
    from dnalm.tokenizer import decode, reverse_complement_ids

    rec = _record(FLANKED)
    rc = tmp_path / "rc.fa"
    rc.write_text(">aph3II_rc\n" + decode(reverse_complement_ids(encode_bytes_(rec))) + "\n")
    fwd = {r["variant"]: r["delta_sum"] for r in score_dms(tiny, FLANKED, MUTANTS, progress=False)["rows"]}
    found = score_dms(tiny, rc, MUTANTS, progress=False)
    assert (found["cds"].strand, found["cds"].span()) == (-1, (98, 892))  # 992 - 895 + 1 .. 992 - 101 + 1
    given = score_dms(tiny, rc, MUTANTS, cds_start=892, cds_end=98, progress=False)
    assert "given by --cds-start" in given["notes"][0]
    for res in (found, given):
        assert {r["variant"]: r["delta_sum"] for r in res["rows"]} == fwd  # the gene read the same way


def test_ambiguous_frames_ask_for_cds_start(tmp_path, tiny):
    p = tmp_path / "one.csv"
    p.write_text("variant;y\nG21A;1.0\n")  # one residue fits many frames of a flanked record
    with pytest.raises(DataError, match=r"reading frames translate to all 1 mutated wild-type residues.*--cds-start"):
        score_dms(tiny, FLANKED, p, progress=False)
    res = score_dms(tiny, FLANKED, p, cds_start=101, progress=False)
    assert res["rows"][0]["codons"] == "GGC>GCC" and res["cds"].span() == (101, 895)
