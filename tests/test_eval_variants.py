"""Variant-effect scoring: the batched, window-sharing delta against a direct two-pass computation, window
placement, bad input, an interrupted run, and a briefly trained model ranking premature stops below
synonymous changes. Fixtures: a 20 kb GRCh38 slice around BRCA1 and 40 Findlay et al. 2018 variants
(tests/data/SOURCES.md), the embedded E. coli genome, and a tiny HyenaDNA trained on it by `dnalm train`."""

from __future__ import annotations

import importlib.resources as ir
from pathlib import Path

import numpy as np
import pytest
import torch

import dnalm
from dnalm.cli import main
from dnalm.models.hyena import HyenaConfig
from dnalm.data.errors import DataError
from dnalm.eval.variants import Variant, read_variants, score_variants
from dnalm.models.lm import DNALM

DATA = Path(__file__).parent / "data"
FASTA = DATA / "brca1_chr17_43044001-43064000.fa"
TSV = DATA / "brca1_findlay2018_demo40.tsv"
REGION_START = 43044001
TINY = DATA / "ecoli_hyena_tiny"  # 2 x 32 HyenaDNA, l_max 258, trained by `dnalm train` (see SOURCES.md)
COMP = str.maketrans("ACGT", "TGCA")


def fixture_seq() -> str:
    """The FASTA fixture read with plain Python (independent of dnalm's reader)."""
    return "".join(line.strip() for line in FASTA.read_text().splitlines() if not line.startswith(">")).upper()


def other(base: str) -> str:
    """A base different from ``base``."""
    return "C" if base == "A" else "A"


def rc(s: str) -> str:
    return s.translate(COMP)[::-1]


@pytest.fixture(scope="module")
def model() -> DNALM:
    torch.manual_seed(0)
    return DNALM(HyenaConfig(n_layer=1, d_model=16, l_max=130)).eval()


def test_delta_matches_direct_two_pass(model):
    w = 96
    res = score_variants(model, FASTA, TSV, window=w, rc_average=True, progress=False)
    seq = fixture_seq()
    assert len(res.rows) == 40
    for r in res.rows[:12]:
        i = r["pos"] - REGION_START
        start = i - w // 2
        ref = seq[start : start + w]
        assert ref[w // 2] == r["ref"]
        alt = ref[: w // 2] + r["alt"] + ref[w // 2 + 1 :]
        fwd = float(dnalm.score(model, alt) - dnalm.score(model, ref))
        rev = float(dnalm.score(model, rc(alt)) - dnalm.score(model, rc(ref)))
        assert r["window_start"] == REGION_START + start and r["window_len"] == w
        assert r["delta_sum_fwd"] == pytest.approx(fwd, abs=2e-4)
        assert r["delta_sum_rc"] == pytest.approx(rev, abs=2e-4)
        assert r["delta_sum"] == pytest.approx((fwd + rev) / 2, abs=2e-4)
        assert r["delta_mean"] == pytest.approx(r["delta_sum"] / w)


def test_each_reference_window_scored_once(model):
    seq = fixture_seq()
    pos = REGION_START + 5000
    ref = seq[5000]
    vs = [Variant(i + 1, "chr17", pos, ref, alt) for i, alt in enumerate(b for b in "ACGT" if b != ref)]
    vs.append(Variant(9, "17", pos + 1, seq[5001], other(seq[5001])))
    res = score_variants(model, FASTA, vs, window=64, progress=False)
    assert res.n_windows_scored == 1 + 3 + 2  # one shared ref window + 3 alts, then ref + alt of the neighbour
    assert len({(r["window_start"], r["window_len"]) for r in res.rows[:3]}) == 1


def test_window_shifted_inwards_at_record_ends(model):
    seq = fixture_seq()
    vs = [Variant(1, "17", REGION_START + 3, seq[3], other(seq[3])),
          Variant(2, "17", REGION_START + len(seq) - 1, seq[-1], other(seq[-1]))]
    res = score_variants(model, FASTA, vs, window=100, progress=False)
    first, last = res.rows
    assert first["window_start"] == REGION_START and first["window_len"] == 100
    assert last["window_end"] == REGION_START + len(seq) - 1 and last["window_len"] == 100
    direct = float(dnalm.score(model, seq[:3] + vs[0].alt + seq[4:100]) - dnalm.score(model, seq[:100]))
    assert first["delta_sum"] == pytest.approx(direct, abs=2e-4)


def test_indels_use_same_length_windows(model):
    seq = fixture_seq()
    i = 8000
    dele = Variant(1, "17", REGION_START + i, seq[i : i + 4], seq[i])  # delete 3 bases
    ins = Variant(2, "17", REGION_START + i, seq[i], seq[i] + "GATTACA")
    with pytest.raises(DataError, match="non-SNV rows.*--indels"):
        score_variants(model, FASTA, [dele, ins], window=80, progress=False)
    res = score_variants(model, FASTA, [dele, ins], window=80, allow_indels=True, progress=False)
    s = i - 40
    ref = seq[s : s + 80]
    alt_del = (seq[s:i] + seq[i] + seq[i + 4 :])[:80]
    alt_ins = (seq[s:i] + seq[i] + "GATTACA" + seq[i + 1 :])[:80]
    assert len(alt_del) == len(alt_ins) == 80
    assert res.rows[0]["delta_sum"] == pytest.approx(float(dnalm.score(model, alt_del) - dnalm.score(model, ref)), abs=2e-4)
    assert res.rows[1]["delta_sum"] == pytest.approx(float(dnalm.score(model, alt_ins) - dnalm.score(model, ref)), abs=2e-4)


def test_vcf_reading(tmp_path):
    vcf = tmp_path / "v.vcf"
    vcf.write_text(
        "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
        "chr17\t43045000\trs1\tA\tC,T\t.\t.\tLAB=1\n17\t43045010\t.\tg\ta\t.\t.\t.\n"
    )
    vs, cols = read_variants(vcf)
    assert [(v.chrom, v.pos, v.ref, v.alt, v.id) for v in vs] == [
        ("chr17", 43045000, "A", "C", "rs1"), ("chr17", 43045000, "A", "T", "rs1"), ("17", 43045010, "G", "A", ".")]
    assert vs[0].fields["LAB"] == "1" and cols["format"] == "vcf"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("#CHROM\tPOS\tID\tREF\tALT\n17\t43045000\t.\tA\n", r"line 2: 4 tab-separated columns"),
        ("#CHROM\tPOS\tID\tREF\tALT\n17\tabc\t.\tA\tC\n", r"line 2: POS 'abc' is not an integer"),
        ("#CHROM\tPOS\tID\tREF\tALT\n17\t0\t.\tA\tC\n", r"POS 0 < 1"),
        ("#CHROM\tPOS\tID\tREF\tALT\n17\t43045000\t.\tA\t<DEL>\n", r"not plain A/C/G/T/N"),
        ("#CHROM\tPOS\tID\tREF\tALT\n17\t43045000\t.\tAT\tA\n", r"1 non-SNV rows: line 2"),
        ("##fileformat=VCFv4.2\n17\t43045000\t.\tA\tC\n", r"no '#CHROM' header"),
    ],
)
def test_malformed_vcf_lines(tmp_path, text, needle):
    p = tmp_path / "bad.vcf"
    p.write_text(text)
    with pytest.raises(DataError, match=needle):
        read_variants(p)


def _table(tmp_path, rows: list[str]) -> Path:
    p = tmp_path / "v.tsv"
    p.write_text("chromosome\tpos_hg38\treference\talt\tfunc_class\n" + "".join(r + "\n" for r in rows))
    return p


def test_bad_variants_are_listed(tmp_path, model):
    seq = fixture_seq()
    good = f"17\t{REGION_START + 100}\t{seq[100]}\t{other(seq[100])}\tLOF"
    with pytest.raises(DataError, match=r"chromosomes not in the FASTA: line 3: 'chrX'.*FASTA has: chr17"):
        score_variants(model, FASTA, _table(tmp_path, [good, "chrX\t5\tA\tC\tLOF"]), window=64, progress=False)
    with pytest.raises(DataError, match=r"outside the FASTA: line 2: 17:43064001 \(the FASTA covers chr17:43044001-43064000\)"):
        score_variants(model, FASTA, _table(tmp_path, ["17\t43064001\tA\tC\tLOF"]), window=64, progress=False)
    wrong = "ACGT".replace(seq[200], "")[0]
    alt = "ACGT".replace(wrong, "")[0]
    with pytest.raises(DataError, match=rf"do not match the FASTA: line 3: 17:{REGION_START + 200} ref {wrong} but the FASTA has {seq[200]}"):
        score_variants(model, FASTA, _table(tmp_path, [good, f"17\t{REGION_START + 200}\t{wrong}\t{alt}\tLOF"]),
                       window=64, progress=False)
    with pytest.raises(DataError, match="no position column"):
        p = tmp_path / "nopos.tsv"
        p.write_text("chrom\tref\talt\n17\tA\tC\n")
        read_variants(p)


def test_explicit_fasta_offset(tmp_path, model):
    seq = fixture_seq()
    plain = tmp_path / "plain.fa"
    plain.write_text(">chr17\n" + seq + "\n")
    v = [Variant(1, "17", REGION_START + 700, seq[700], other(seq[700]))]
    a = score_variants(model, FASTA, v, window=64, progress=False).rows[0]["delta_sum"]
    res = score_variants(model, plain, v, window=64, fasta_offset=REGION_START, progress=False)
    assert res.rows[0]["delta_sum"] == pytest.approx(a, abs=1e-6)
    assert "--fasta-offset" in " ".join(res.notes)
    with pytest.raises(DataError, match="outside the FASTA"):  # without the offset the record starts at 1
        score_variants(model, plain, v, window=64, progress=False)


def test_cli_end_to_end_with_labels(tmp_path, capsys):
    out = tmp_path / "scores.tsv"
    rc_ = main(["score-variants", str(TINY), "--fasta", str(FASTA), "--variants", str(TSV), "--window", "128",
                "--label-column", "func_class", "--positive", "LOF", "--baseline-column", "phyloP_mammalian",
                "-o", str(out)])
    assert rc_ == 0
    text = capsys.readouterr()
    assert "AUROC (func_class = LOF vs the rest" in text.out and "baseline AUROC of phyloP_mammalian" in text.out
    assert "variants" in text.err  # the progress bar
    lines = out.read_text().splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    assert body[0].split("\t")[:11] == ["row", "id", "chrom", "pos", "ref", "alt", "window_start", "window_end",
                                         "window_len", "delta_sum", "delta_mean"]
    assert len(body) == 41 and out.with_suffix(".roc.png").stat().st_size > 1000


def test_cli_label_errors(tmp_path, capsys):
    seq = fixture_seq()
    p = _table(tmp_path, [f"17\t{REGION_START + 100}\t{seq[100]}\t{other(seq[100])}\tLOF",
                          f"17\t{REGION_START + 101}\t{seq[101]}\t{other(seq[101])}\t"])
    out = tmp_path / "o.tsv"
    args = ["score-variants", str(TINY), "--fasta", str(FASTA), "--variants", str(p), "-o", str(out), "--quiet"]
    assert main(args + ["--label-column", "func_class", "--positive", "LOF"]) == 2
    err = capsys.readouterr().err
    assert "rows with an empty or missing label: line 3" in err and len(err.strip().splitlines()) == 1
    assert main(args + ["--label-column", "nope"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    good = [a if a != str(p) else str(TSV) for a in args]
    assert main(good + ["--label-column", "func_class"]) == 2  # string labels need --positive
    assert "name the positive class" in capsys.readouterr().err
    assert not out.exists()


def test_interrupted_run_leaves_no_table(tmp_path, monkeypatch):
    import dnalm.eval.variants as V

    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C while windows were being scored

    monkeypatch.setattr(V, "window_logliks", interrupted)
    out = tmp_path / "scores.tsv"
    rc_ = main(["score-variants", str(TINY), "--fasta", str(FASTA), "--variants", str(TSV), "--window", "64",
                "-o", str(out), "--quiet"])
    assert rc_ == 130 and calls["n"] == 1
    assert list(tmp_path.iterdir()) == []  # no table, no temporary file


def _stop_and_synonymous_snvs(n_genes: int) -> list[Variant]:
    """For genes in the held-out last 10% of the genome: one codon where one SNV makes a stop codon and
    another (third position) is synonymous; both SNVs, in genome coordinates."""
    from dnalm.data.sequences import read_sequences
    from dnalm.eval.dms import CODON_TABLE
    from dnalm.eval.essentiality import genes_from_gff
    from dnalm.tokenizer import decode

    res = ir.files("dnalm") / "resources"
    genome = decode(next(read_sequences(res / "ecoli_k12_mg1655.fa.gz")).ids)
    n = len(genome)
    out: list[Variant] = []
    for g in genes_from_gff(res / "ecoli_k12_mg1655.gff3.gz"):
        if g.start < 0.9 * n + 300 or g.end > n - 300 or len(g) < 90:
            continue
        cds = genome[g.start : g.end] if g.strand == 1 else rc(genome[g.start : g.end])
        for c in range(10, len(cds) // 3 - 5):
            cod = cds[3 * c : 3 * c + 3]
            stop = next(((k, b) for k in range(3) for b in "ACGT"
                         if b != cod[k] and CODON_TABLE[cod[:k] + b + cod[k + 1 :]] == "*"), None)
            syn = next(((2, b) for b in "ACGT" if b != cod[2] and CODON_TABLE[cod[:2] + b] == CODON_TABLE[cod]), None)
            if stop and syn and CODON_TABLE[cod] != "*":
                for kind, (k, b) in (("stop", stop), ("syn", syn)):
                    i = 3 * c + k
                    if g.strand == 1:
                        pos, ref, alt = g.start + i + 1, cod[k], b
                    else:
                        pos, ref, alt = g.end - i, cod[k].translate(COMP), b.translate(COMP)
                    out.append(Variant(len(out) + 1, "NC_000913.3", pos, ref, alt, f"{g.locus_tag}:{kind}"))
                break
        if len(out) >= 2 * n_genes:
            break
    return out


def test_trained_model_scores_premature_stops_below_synonymous_changes():
    vs = _stop_and_synonymous_snvs(60)
    model = dnalm.load(TINY)
    res = score_variants(model, ir.files("dnalm") / "resources" / "ecoli_k12_mg1655.fa.gz", vs, window=256,
                         progress=False)
    delta: dict[str, dict[str, float]] = {}
    for r in res.rows:
        gene, kind = r["id"].split(":")
        delta.setdefault(gene, {})[kind] = r["delta_sum"]
    wins = [d["stop"] < d["syn"] for d in delta.values()]
    assert len(wins) == 60
    assert np.mean(wins) > 0.5, f"stop below synonymous in only {np.mean(wins):.2f} of genes"


def test_lowercase_follows_the_tokenizer_rule(tmp_path):
    """A model whose tokenizer maps lower case to [UNK] (imported HyenaDNA) sees soft-masked reference
    bases as [UNK] in both windows; its deltas match model.score on the same strings."""
    from dnalm.tokenizer import Tokenizer

    torch.manual_seed(0)
    m = DNALM(HyenaConfig(n_layer=1, d_model=16, l_max=130), tokenizer=Tokenizer(lowercase="unk", model_max_length=130))
    seq = fixture_seq()[:400]
    masked = seq[:150] + seq[150:250].lower() + seq[250:]
    fa = tmp_path / "soft.fa"
    fa.write_text(">chr17\n" + masked + "\n")
    v = [Variant(1, "17", 201, seq[200], other(seq[200]))]
    res = score_variants(m, fa, v, window=64, progress=False)
    ref = masked[168:232]
    alt = ref[:32] + v[0].alt + ref[33:]
    assert res.rows[0]["delta_sum"] == pytest.approx(float(dnalm.score(m, alt) - dnalm.score(m, ref)), abs=2e-4)
