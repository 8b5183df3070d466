"""Boundary analysis: annotation masks checked against the real E. coli annotation (start and stop
codons read through the codon-position mask), window stitching against direct runs, and the CLI."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from dnalm.cli import main
from dnalm.models.hnet import HNetConfig
from dnalm.data.annotation import read_annotations
from dnalm.eval.boundaries import REGIONS, codon_positions, predict_boundaries, region_labels
from dnalm.models.hnet import nucleotide_boundaries
from dnalm.models.lm import DNALM
from dnalm.tokenizer import BOS, decode, encode_bytes, reverse_complement_ids

SLICE = 30_000  # the first 30 kb of E. coli K-12 MG1655 (NC_000913.3), from the embedded genome


@pytest.fixture(scope="module")
def ecoli_slice(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A FASTA + GFF3 of the genome's first 30 kb, cut from dnalm/resources (real RefSeq data)."""
    base = resources.files("dnalm") / "resources"
    with gzip.open(str(base / "ecoli_k12_mg1655.fa.gz"), "rt") as f:
        header = f.readline().strip()
        seq, have = [], 0
        for line in f:
            seq.append(line.strip())
            have += len(seq[-1])
            if have >= SLICE:
                break
    dna = "".join(seq)[:SLICE]
    name = header[1:].split()[0]
    d = tmp_path_factory.mktemp("ecoli")
    fa, gff = d / "ecoli_30kb.fa", d / "ecoli_30kb.gff3"
    fa.write_text(f">{name}\n" + "\n".join(dna[i : i + 80] for i in range(0, len(dna), 80)) + "\n")
    lines = ["##gff-version 3"]
    with gzip.open(str(base / "ecoli_k12_mg1655.gff3.gz"), "rt") as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) == 9 and cols[2] != "region" and int(cols[4]) <= SLICE:
                lines.append(line.rstrip("\n"))
    gff.write_text("\n".join(lines) + "\n")
    return fa, gff, encode_bytes(dna.encode())[0]


def test_codon_positions_read_start_and_stop_codons(ecoli_slice):
    fa, gff, ids = ecoli_slice
    feats = read_annotations(gff)
    L = len(ids)
    n_checked = 0
    for strand in (1, -1):
        pos = codon_positions(feats, L, strand)
        seq = ids if strand == 1 else reverse_complement_ids(ids)
        p = pos if strand == 1 else pos[::-1]  # codon positions along the coding strand
        for f in feats:
            if f.type != "CDS" or f.strand != strand or len(f.parts) != 1 or len(f) % 3:
                continue
            a, b = (f.start, f.end) if strand == 1 else (L - f.end, L - f.start)
            if not (p[a : b] >= 0).all():
                continue  # bases shared with another CDS in a different frame are left out
            assert list(p[a : a + 6]) == [0, 1, 2, 0, 1, 2]
            assert decode(seq[a : a + 3]) in ("ATG", "GTG", "TTG")  # the start codon
            assert decode(seq[b - 3 : b]) in ("TAA", "TAG", "TGA")  # the stop codon
            n_checked += 1
    assert n_checked >= 15  # the first 30 kb hold ~25 genes on both strands


def test_region_labels_around_thrL(ecoli_slice):
    fa, gff, ids = ecoli_slice
    lab = region_labels(read_annotations(gff), len(ids), upstream=100)
    # thrL: CDS 190..255 (1-based) on +, the genome's first gene
    assert REGIONS[lab[189]] == "CDS" and REGIONS[lab[254]] == "CDS"
    assert REGIONS[lab[188]] == "upstream" and REGIONS[lab[89]] == "upstream"
    assert REGIONS[lab[88]] == "intergenic" and REGIONS[lab[0]] == "intergenic"
    # yaaA is on -: 5683..6459; its upstream lies after its end
    assert REGIONS[lab[6459]] == "upstream" and REGIONS[lab[6458]] == "CDS"


def _tiny_model() -> DNALM:
    torch.manual_seed(0)
    cfg = HNetConfig(
        d_model=32, inner_d_model=[32, 64], encoder_layout=["m2", "m1"], decoder_layout=["m2", "m1"],
        main_layout="t1", attn_head_dim=32, d_state=8, mamba_headdim=16, ssd_chunk_size=16, max_len=300,
    )  # fmt: skip
    return DNALM(cfg).eval()


def test_window_stitching_matches_direct_runs(ecoli_slice):
    _, _, ids = ecoli_slice
    model = _tiny_model()
    seq = ids[5000:5300]
    window, context = 128, 32
    out = predict_boundaries(model, seq, window=window, context=context, batch_size=2)
    assert out.shape == (2, 300)
    # windows: [0,128) counted fully; then [96,224) counts 128..223; then [192,300) counts 224..299
    for a, b, first in ((0, 128, 0), (96, 224, 128), (192, 300, 224)):
        tok = torch.from_numpy(np.concatenate([[BOS], seq[a:b]]).astype(np.int64))[None]
        with torch.no_grad():
            marks = nucleotide_boundaries(model.backbone.boundaries(model.embed(tok)), b - a + 1)
        for s in range(2):
            np.testing.assert_array_equal(out[s, first:b], marks[s][0, 1 + first - a :].numpy())
    assert out[0].any() and not (out[1] & ~out[0]).any()


def test_cli_writes_tables_and_plots(ecoli_slice, tmp_path, capsys):
    fa, gff, _ = ecoli_slice
    ckpt = tmp_path / "model"
    from dnalm.checkpoint import save_pretrained

    save_pretrained(_tiny_model(), ckpt)
    out = tmp_path / "bd"
    rc = main(["boundaries", str(ckpt), "--fasta", str(fa), "--gff", str(gff), "-o", str(out),
               "--max-bases", "4000", "--window", "256", "--quiet"])  # fmt: skip
    assert rc == 0
    for name in ("boundaries.tsv", "gene_profile.tsv", "codon_positions.png", "gene_profile.png"):
        assert (out / name).stat().st_size > 0
    rows = [l.split("\t") for l in (out / "boundaries.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 2 * (1 + 3 + len(REGIONS))
    overall = {int(r[0]): r for r in rows if r[1] == "overall"}
    assert int(overall[0][3]) == 8000  # 4000 bases, both strands
    region_total = sum(int(r[3]) for r in rows if r[0] == "0" and r[1] == "region")
    assert region_total == 8000  # every base has exactly one region type
    assert int(overall[1][4]) <= int(overall[0][4])  # stage-1 chunks start at stage-0 boundaries
    assert "codon1" in capsys.readouterr().out


def test_cli_rejects_a_non_hnet_model_and_unmatched_names(ecoli_slice, tmp_path, capsys):
    fa, gff, _ = ecoli_slice
    rc = main(["boundaries", "transformer-tiny-1k", "--fasta", str(fa), "--gff", str(gff), "-o", str(tmp_path / "x")])
    assert rc == 2 and "dnaHNet" in capsys.readouterr().err
    other = tmp_path / "other.fa"
    other.write_text(">chrX\nACGTACGTAC\n")
    rc = main(["boundaries", "dnahnet-tiny-32", "--fasta", str(other), "--gff", str(gff), "-o", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert rc == 2 and "seqid" in err and err.count("\n") == 1
