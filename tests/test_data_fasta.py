"""FASTA / GenBank readers: real genomes against independently computed facts, format variants, bad input,
and a property test against a simple reference parser. Fixtures: tests/data/SOURCES.md."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dnalm.data.fasta as fasta_mod
from dnalm.data.errors import DataError
from dnalm.data.fasta import read_fasta
from dnalm.data.sequences import read_sequences
from dnalm.tokenizer import A, C, G, N, T, decode

DATA = Path(__file__).parent / "data"


def gc_count(ids: np.ndarray) -> int:
    return int(np.count_nonzero((ids == C) | (ids == G)))


@pytest.mark.parametrize(
    "fname, name, length, gc",
    [
        # lengths from the data README; G+C counted with coreutils (tests/data/SOURCES.md)
        ("phage_lambda.fa", "gi|9626243|ref|NC_001416.1|", 48_502, 24_182),
        ("phage_phix174.fa", "NC_001422.1", 5_386, 2_411),
        ("yeast_chrI.fa", "NC_001133.9", 230_218, 90_407),
    ],
)
def test_real_fasta_lengths_and_gc(fname, name, length, gc):
    (rec,) = list(read_fasta(DATA / fname))
    assert rec.name == name and len(rec) == length
    assert gc_count(rec.ids) == gc
    assert rec.ids.dtype == np.uint8 and set(np.unique(rec.ids)) <= {A, C, G, T}


def test_embedded_ecoli_matches_readme():
    path = resources.files("dnalm") / "resources" / "ecoli_k12_mg1655.fa.gz"
    (rec,) = list(read_sequences(Path(str(path))))
    assert rec.name == "NC_000913.3" and len(rec) == 4_641_652
    assert round(gc_count(rec.ids) / len(rec), 3) == 0.508  # README: GC 50.8%, no N
    assert not np.any(rec.ids == N) and not rec.lower.any()


def test_bgzip_softmasked_slice():
    (rec,) = list(read_sequences(DATA / "human_chr2_1-100000_softmasked.fa.gz"))
    assert rec.name == "chr2:1-100000" and rec.description == "hg38 soft-masked"
    assert len(rec) == 100_000
    assert int(rec.lower.sum()) == 42_491  # coreutils count of a/c/g/t/n (SOURCES.md)
    assert np.all(rec.ids[:10_000] == N) and int(np.sum(rec.ids == N)) == 10_000
    assert gc_count(rec.ids) == 39_228
    # The case mask round-trips: decode(ids, lower) is the file's text.
    text = gzip.open(DATA / "human_chr2_1-100000_softmasked.fa.gz", "rt").read().split("\n", 1)[1].replace("\n", "")
    assert decode(rec.ids, rec.lower) == text


def test_genbank_t7():
    (rec,) = list(read_sequences(DATA / "phage_t7.gb"))
    assert rec.name == "NC_001604.1" and len(rec) == 39_937 and not rec.circular
    assert not rec.lower.any()  # GenBank's lower case is a convention, not soft-masking
    assert sum(f.type == "CDS" for f in rec.features) == 60  # README: 60 CDS
    # Same sequence as a FASTA written from the GenBank text by biopython (an independent route).
    from Bio import SeqIO

    assert decode(rec.ids) == str(SeqIO.read(DATA / "phage_t7.gb", "genbank").seq).upper()


def _records_text(recs, width: int, newline: str) -> str:
    out = []
    for name, seq in recs:
        out.append(f">{name} some description{newline}")
        out.extend(seq[i : i + width] + newline for i in range(0, len(seq), width))
    return "".join(out)


def test_multi_record_widths_crlf_and_compression(tmp_path):
    phix = next(read_fasta(DATA / "phage_phix174.fa"))
    lam = next(read_fasta(DATA / "phage_lambda.fa"))
    # Real sequences with a soft-masked stretch (the case is kept as a mask).
    recs = [("phix", decode(phix.ids)), ("lambda", decode(lam.ids[:5000]).lower() + decode(lam.ids[5000:]))]
    variants = {
        "w60.fa": _records_text(recs, 60, "\n").encode(),
        "w13_crlf.fasta": _records_text(recs, 13, "\r\n").encode(),
        "oneline.fna": _records_text(recs, 10**6, "\n").encode(),
        "gz.fa.gz": gzip.compress(_records_text(recs, 70, "\n").encode()),
        # two gzip members, as bgzip writes: the reader must read past the first member
        "members.fa.gz": gzip.compress(_records_text(recs[:1], 80, "\n").encode())
        + gzip.compress(_records_text(recs[1:], 80, "\n").encode()),
    }
    for fname, data in variants.items():
        (tmp_path / fname).write_bytes(data)
        got = list(read_sequences(tmp_path / fname))
        assert [r.name for r in got] == ["phix", "lambda"], fname
        assert got[0].description == "some description"
        assert np.array_equal(got[0].ids, phix.ids), fname
        assert np.array_equal(got[1].ids, lam.ids), fname
        assert got[1].lower[:5000].all() and not got[1].lower[5000:].any(), fname


def test_iupac_becomes_n_and_keeps_case(tmp_path):
    (tmp_path / "x.fa").write_text(">r\nACGTRYKMSWBDHVN\nacgtrykmswbdhvn\n")
    (rec,) = list(read_fasta(tmp_path / "x.fa"))
    assert decode(rec.ids, rec.lower) == "ACGT" + "N" * 11 + "acgt" + "n" * 11


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("block", [1, 5, 1 << 22])
def test_bad_input_messages(tmp_path, monkeypatch, block):
    monkeypatch.setattr(fasta_mod, "_BLOCK", block)  # line numbers must not depend on the read size
    lam = (DATA / "phage_lambda.fa").read_bytes()
    cases = {
        "empty.fa": (b"", "empty file"),
        "noheader.fa": (b"ACGT\nACGT\n", "line 1: sequence before the first FASTA header"),
        "emptyrec.fa": (b">a\nACGT\n>b\n>c\nAC\n", "record 'b' (header on line 3) is empty"),
        "dup.fa": (b">a\nACGT\n>a\nAC\n", "duplicate record name 'a'"),
        "badchar.fa": (b">a x\nACGT\nACXT\n", "record 'a', position 7 (1-based, line 3): invalid character 'X'"),
        "noname.fa": (b">\nACGT\n", "line 1: empty FASTA header"),
        "blank.fa": (b"\n\n", "no FASTA header"),
        "trunc.fa.gz": (gzip.compress(lam)[:8_000], "truncated or corrupt gzip data in record 'gi|9626243|ref|NC_001416.1|'"),
    }
    for fname, (data, message) in cases.items():
        path = _write(tmp_path / fname, data)
        with pytest.raises(DataError) as e:
            list(read_sequences(path))
        assert message in str(e.value), (fname, str(e.value))
        assert str(path) in str(e.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_sequences(tmp_path / "nope.fa"))
    with pytest.raises(DataError, match="cannot tell the format"):
        list(read_sequences(_write(tmp_path / "x.txt", b"hello\n")))
    # Unknown extension but FASTA content is sniffed.
    assert next(read_sequences(_write(tmp_path / "y.txt", b">a\nAC\n"))).name == "a"


# ----------------------------------------------------------------------------- property test


def reference_parse(text: str) -> list[tuple[str, str]]:
    """The simplest FASTA parser: split lines, '>' starts a record, the rest is sequence."""
    recs: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(">"):
            recs.append((line[1:].split()[0], []))
        elif line.strip():
            recs[-1][1].append(line.strip())
    return [(name, "".join(parts)) for name, parts in recs]


_IUPAC = str.maketrans("RYKMSWBDHVrykmswbdhv", "N" * 10 + "n" * 10)  # ambiguity codes -> N, keeping case

names = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.|-", min_size=1, max_size=12)
seqs = st.text("ACGTNacgtnRYKMSWBDHVrykmswbdhv", min_size=1, max_size=300)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    recs=st.lists(st.tuples(names, seqs), min_size=1, max_size=5, unique_by=lambda r: r[0]),
    width=st.integers(1, 90),
    newline=st.sampled_from(["\n", "\r\n"]),
    trailing_newline=st.booleans(),
    compress=st.booleans(),
    block=st.sampled_from([1, 2, 7, 64, 1 << 22]),  # read size: headers and CRLFs split across reads
)
def test_reader_matches_reference_parser(tmp_path, recs, width, newline, trailing_newline, compress, block):
    text = _records_text(recs, width, newline)
    if not trailing_newline:
        text = text.rstrip("\r\n")
    data = gzip.compress(text.encode()) if compress else text.encode()
    path = _write(tmp_path / ("p.fa.gz" if compress else "p.fa"), data)
    saved, fasta_mod._BLOCK = fasta_mod._BLOCK, block
    try:
        got = [(r.name, decode(r.ids, r.lower)) for r in read_fasta(path)]
    finally:
        fasta_mod._BLOCK = saved
    expected = [(name, seq.translate(_IUPAC)) for name, seq in reference_parse(text)]
    assert got == expected
