"""GFF3 / GTF / GenBank features checked against biology: CDS start with start codons and translate
without internal stops (biopython's translate is the independent reference), phiX174's 0-based GFF,
spliced yeast genes on both strands. Fixtures: tests/data/SOURCES.md and dnalm/resources/."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import pytest
from Bio.Data import CodonTable
from Bio.Seq import Seq

from dnalm.data.annotation import feature_ids, gene_features, read_annotations
from dnalm.data.errors import DataError
from dnalm.data.sequences import read_sequences
from dnalm.tokenizer import decode

DATA = Path(__file__).parent / "data"
RES = resources.files("dnalm") / "resources"
STARTS_11 = set(CodonTable.unambiguous_dna_by_id[11].start_codons)  # bacterial start codons
STOPS = {"TAA", "TAG", "TGA"}


def cds_problems(seq: str, table: int = 11) -> list[str]:
    problems = []
    if len(seq) % 3:
        problems.append("length not a multiple of 3")
    if seq[:3] not in STARTS_11:
        problems.append(f"starts with {seq[:3]}")
    if seq[-3:] not in STOPS:
        problems.append(f"ends with {seq[-3:]}")
    if "*" in str(Seq(seq[: len(seq) - len(seq) % 3]).translate(table=table))[:-1]:
        problems.append("internal stop")
    return problems


def test_ecoli_cds_start_codons_and_translation():
    (genome,) = list(read_sequences(Path(str(RES / "ecoli_k12_mg1655.fa.gz"))))
    feats = read_annotations(Path(str(RES / "ecoli_k12_mg1655.gff3.gz")), lengths={genome.name: len(genome)})
    cds = [f for f in feats if f.type == "CDS"]
    assert sum(f.type == "gene" for f in feats) == 4494  # README: 4,494 genes
    assert sum(len(f.parts) for f in cds) == 4337  # README: 4,337 CDS lines; multi-part ones are merged
    assert sum(len(f.parts) > 1 for f in cds) == 20
    assert {f.strand for f in cds} == {1, -1}
    flagged, unflagged_bad = [], []
    for f in cds:
        problems = cds_problems(decode(feature_ids(f, genome.ids)))
        is_flagged = f.attributes.get("pseudo") == "true" or "transl_except" in f.attributes
        if problems and is_flagged:
            flagged.append((f.id, problems))
        elif problems:
            unflagged_bad.append((f.id, problems))
    assert unflagged_bad == []
    # The few flagged exceptions: 3 pseudogenes and 3 selenoproteins whose TGA codes for Sec.
    assert len(flagged) == 6, flagged
    sec = [fid for fid, _ in flagged if "aa:Sec" in next(f for f in cds if f.id == fid).attributes.get("transl_except", "")]
    assert len(sec) == 3
    # Multi-part CDS (ribosomal frameshifts such as prfB) translate cleanly once their parts are joined.
    prfb = next(f for f in cds if f.name == "NP_417375.1" or f.attributes.get("gene") == "prfB")
    assert len(prfb.parts) == 2 and cds_problems(decode(feature_ids(prfb, genome.ids))) == []


def test_gff_head_coordinates():
    feats = read_annotations(DATA / "ecoli_k12_mg1655_head40.gff3")
    thrl = next(f for f in feats if f.type == "gene" and f.name == "thrL")
    assert (thrl.start, thrl.end, thrl.strand) == (189, 255, 1)  # GFF line: 190 255 + (1-based inclusive)
    assert thrl.id == "gene-b0001" and thrl.attributes["locus_tag"] == "b0001"
    cds = next(f for f in feats if f.type == "CDS" and f.parent == "gene-b0001")
    assert cds.parts == [(189, 255)] and cds.attributes["product"] == "thr operon leader peptide"
    yaaa = next(f for f in feats if f.type == "gene" and f.name == "yaaA")
    assert (yaaa.start, yaaa.end, yaaa.strand) == (5682, 6459, -1)
    # URL-escaped attribute values are decoded.
    assert all("%3D" not in (f.id or "") for f in feats)


def test_phix_gff_needs_zero_based_starts():
    (phix,) = list(read_sequences(DATA / "phage_phix174.fa"))
    lengths = {phix.name: len(phix)}
    gff = DATA / "phage_phix174.gff"
    # As 1-based, no ORF starts with ATG; as 0-based (README), all 11 do.
    as_one_based = read_annotations(gff)
    assert sum(decode(feature_ids(f, phix.ids))[:3] == "ATG" for f in as_one_based) == 0
    feats = read_annotations(gff, zero_based_starts=True, lengths=lengths, circular={phix.name})
    assert len(feats) == 11  # the ##FASTA section after the features is not read as features
    for f in feats:
        seq = decode(feature_ids(f, phix.ids))
        assert seq[:3] == "ATG" and cds_problems(seq) == [], (f.id, f.start, f.end)
    # One ORF crosses the origin of the circular genome: it needs the record to be circular.
    assert any(f.end > len(phix) for f in feats)
    with pytest.raises(DataError, match=r"line 9: feature 'NC_001422.1_ORF.14' .* outside record 'NC_001422.1'"):
        read_annotations(gff, zero_based_starts=True, lengths=lengths)
    assert gene_features(feats) == feats  # no gene lines: the CDS are the genes


def test_yeast_gtf_spliced_genes_both_strands():
    (chr1,) = list(read_sequences(DATA / "yeast_chrI.fa"))
    feats = read_annotations(DATA / "yeast_chrI.gtf.gz", lengths={chr1.name: len(chr1)})
    assert sum(f.type == "gene" for f in feats) == 101
    cds = [f for f in feats if f.type == "CDS"]
    assert len(cds) == 94 and {f.strand for f in cds} == {1, -1}  # README: 94 genes (protein coding)
    spliced = {f.name: f for f in cds if len(f.parts) > 1}
    assert set(spliced) == {"SNC1", "EFB1", "TFC3"} and spliced["TFC3"].strand == -1
    starts = [decode(feature_ids(f, chr1.ids)) for f in feats if f.type == "start_codon"]
    stops = [decode(feature_ids(f, chr1.ids)) for f in feats if f.type == "stop_codon"]
    assert starts == ["ATG"] * 94 and set(stops) <= STOPS and len(stops) == 94
    for f in cds:  # GTF CDS exclude the stop codon: the whole CDS translates without a stop
        prot = str(Seq(decode(feature_ids(f, chr1.ids))).translate())
        assert prot[0] == "M" and "*" not in prot, f.name
    gene = next(f for f in feats if f.type == "gene" and f.id == "YAL068C")
    assert (gene.start, gene.end, gene.strand, gene.name) == (1806, 2169, -1, "PAU8")


def test_genbank_features_t7():
    (t7,) = list(read_sequences(DATA / "phage_t7.gb"))
    cds = [f for f in t7.features if f.type == "CDS"]
    assert len(cds) == 60
    for f in cds:
        assert cds_problems(decode(feature_ids(f, t7.ids))) == [], f.name


def _gff_lines(*lines: str) -> bytes:
    return ("##gff-version 3\n" + "\n".join(lines) + "\n").encode()


def test_bad_gff_messages(tmp_path):
    real = (DATA / "ecoli_k12_mg1655_head40.gff3").read_text().splitlines()
    gene = next(line for line in real if "\tgene\t" in line)  # thrL: 190..255
    cols = gene.split("\t")
    swapped = "\t".join(cols[:3] + [cols[4], cols[3]] + cols[5:])
    zero = "\t".join(cols[:3] + ["0", cols[4]] + cols[5:])
    cases = {
        "swapped.gff3": (_gff_lines(swapped), "line 2: feature 'gene-b0001' on 'NC_000913.3' has end 190 < start 255"),
        "cols.gff3": (_gff_lines(gene.replace("\t", " ")), "line 2: expected 9 tab-separated columns, found 1"),
        "zero.gff3": (_gff_lines(zero), "starts at 0, before the first base (1); if the file's starts are 0-based"),
        "nonint.gff3": (_gff_lines(gene.replace("\t190\t", "\tx\t")), "start/end must be integers"),
    }
    for fname, (data, message) in cases.items():
        (tmp_path / fname).write_bytes(data)
        with pytest.raises(DataError) as e:
            read_annotations(tmp_path / fname)
        assert message in str(e.value) and fname in str(e.value), str(e.value)
    # Outside the sequence (the E. coli head checked against a too-short record length).
    with pytest.raises(DataError, match=r"line 8: feature 'NC_000913.3:1..4641652' .* record 'NC_000913.3' of length 200"):
        read_annotations(DATA / "ecoli_k12_mg1655_head40.gff3", lengths={"NC_000913.3": 200})
    # A truncated gzip annotation.
    (tmp_path / "t.gff3.gz").write_bytes(gzip.compress((DATA / "ecoli_k12_mg1655_head40.gff3").read_bytes())[:1000])
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        read_annotations(tmp_path / "t.gff3.gz")
