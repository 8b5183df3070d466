"""Bad inputs and outputs across the commands: each case must end with exit code 2, exactly one line on
stderr, no Python traceback, a message naming the file, field or position, and nothing new on disk.

The cases are a table: a command line (with {placeholders}), how to build its broken input from a REAL
file of tests/data (a Latin-1 byte in a field, a NUL byte, a truncated gzip stream, a header without rows,
a ragged row, a directory, an empty file, ...), or how to break its output (a directory where a file goes,
a path under a regular file, a read-only directory, a full disk), and the text the message must contain.
They run in-process through ``dnalm.cli.main``; a few run as real subprocesses to prove the exit code.

Full disk: ``os.fsync`` raises ENOSPC (every atomic writer flushes through it), and where this machine may
mount a tmpfs, a real 64 KiB file system fills up. Read-only: a tmpfs remounted read-only (root ignores
permission bits), or a chmod 555 directory for other users.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from dnalm.cli import main

DATA = Path(__file__).parent / "data"
TINY = DATA / "ecoli_hyena_tiny"
BRCA_FA = DATA / "brca1_chr17_43044001-43064000.fa"
BRCA_TSV = DATA / "brca1_findlay2018_demo40.tsv"
CDS = DATA / "aph3II_nt.fasta"
MUTANTS = DATA / "MERGE_kka2_klepn_head.csv"
LABELS = DATA / "ecoli_essentiality_first60.tsv"
ECOLI_GFF = DATA / "ecoli_k12_mg1655_head40.gff3"
PHIX_FA = DATA / "phage_phix174.fa"
PHIX_GFF = DATA / "phage_phix174.gff"
GUE = DATA / "gue_prom_core_tata_small"
T7 = DATA / "phage_t7.gb"
CHR2 = DATA / "human_chr2_1-100000_softmasked.fa.gz"
YEAST_GTF = DATA / "yeast_chrI.gtf.gz"


# ------------------------------------------------------------------------------------------ corruptions
# Each takes the real source file and the path to write; it returns nothing.


def lines_of(src: Path) -> list[bytes]:
    data = gzip.decompress(src.read_bytes()) if src.read_bytes()[:2] == b"\x1f\x8b" else src.read_bytes()
    return data.splitlines(keepends=True)


def latin1_in_line(n: int) -> Callable[[Path, Path], None]:
    """A Latin-1 'é' (byte 0xE9, not UTF-8) after the first 2 characters of line n (1-based)."""

    def make(src: Path, dst: Path) -> None:
        ls = lines_of(src)
        ls[n - 1] = ls[n - 1][:2] + b"\xe9" + ls[n - 1][2:]
        dst.write_bytes(b"".join(ls))

    return make


def binary(src: Path, dst: Path) -> None:
    """A real binary file (the tiny model's weights) where a text table is expected."""
    dst.write_bytes((TINY / "model.safetensors").read_bytes()[:4096])


def truncated_gzip(src: Path, dst: Path) -> None:
    """The file gzipped, then cut in the middle of the compressed stream."""
    z = gzip.compress(b"".join(lines_of(src)))
    dst.write_bytes(z[: len(z) // 2])


def header_only(src: Path, dst: Path) -> None:
    """Comments and the header line, no data rows."""
    out = []
    for ln in lines_of(src):
        out.append(ln)
        if not ln.startswith(b"#") and ln.strip():
            break
    dst.write_bytes(b"".join(out))


def drop_field(n: int) -> Callable[[Path, Path], None]:
    """Line n (1-based) loses its last field (a ragged row)."""

    def make(src: Path, dst: Path) -> None:
        ls = lines_of(src)
        body = ls[n - 1].rstrip(b"\r\n")
        sep = b"\t" if b"\t" in body else b";" if b";" in body else b","
        ls[n - 1] = body.rsplit(sep, 1)[0] + b"\n"
        dst.write_bytes(b"".join(ls))

    return make


def replace_in_line(n: int, old: bytes, new: bytes) -> Callable[[Path, Path], None]:
    def make(src: Path, dst: Path) -> None:
        ls = lines_of(src)
        assert old in ls[n - 1], (src, n, ls[n - 1][:80])
        ls[n - 1] = ls[n - 1].replace(old, new, 1)
        dst.write_bytes(b"".join(ls))

    return make


def replace_all(old: bytes, new: bytes) -> Callable[[Path, Path], None]:
    def make(src: Path, dst: Path) -> None:
        data = b"".join(lines_of(src))
        assert old in data
        dst.write_bytes(data.replace(old, new))

    return make


def keep_lines(*numbers: int) -> Callable[[Path, Path], None]:
    """Only these lines (1-based) of the file."""

    def make(src: Path, dst: Path) -> None:
        ls = lines_of(src)
        dst.write_bytes(b"".join(ls[i - 1] for i in numbers))

    return make


def truncate_bytes(n: int) -> Callable[[Path, Path], None]:
    def make(src: Path, dst: Path) -> None:
        dst.write_bytes(src.read_bytes()[:n])

    return make


def copy(src: Path, dst: Path) -> None:
    shutil.copy(src, dst)


def a_directory(src: Path, dst: Path) -> None:
    dst.mkdir()


def empty(src: Path, dst: Path) -> None:
    dst.write_bytes(b"")


def missing(src: Path, dst: Path) -> None:
    pass


def checkpoint_with(change: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """A copy of the tiny checkpoint directory, then ``change`` applied to the copy."""

    def make(src: Path, dst: Path) -> None:
        shutil.copytree(TINY, dst)
        change(dst)

    return make


def nan_weights(d: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(d / "model.safetensors"))
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[:3] = float("nan")
    save_file(state, str(d / "model.safetensors"))


# ------------------------------------------------------------------------------------------ the table


@dataclass
class Case:
    """``argv`` with {in} (the broken input, built by ``make`` from ``src``), {out} (must not appear), {tmp},
    {tiny}, {clf}, {run}; ``expect``: strings the one-line message must contain ({in}/{out} filled in)."""

    id: str
    argv: list[str]
    src: Path | None = None
    make: Callable[[Path, Path], None] | None = None
    name: str = "bad.tsv"
    expect: tuple[str, ...] = ()
    output: str | None = None  # "dir" | "under_file" | "readonly" | "enospc": how the output is broken
    out_name: str = "out.tsv"


def table_cases(cmd: str, argv: list[str], src: Path, data_line: int, name: str, flag: str) -> list[Case]:
    """The corruptions every text table must survive, for one command's table argument."""
    gz = name + ".gz"
    return [
        Case(f"{cmd}-{flag}-latin1-field", argv, src, latin1_in_line(data_line), name,
             ("{in}", f"line {data_line}, column 3", "not UTF-8")),
        Case(f"{cmd}-{flag}-binary", argv, src, binary, name, ("{in}", "NUL byte", "binary")),
        Case(f"{cmd}-{flag}-truncated-gz", argv, src, truncated_gzip, gz, ("{in}", "truncated or corrupt gzip")),
        Case(f"{cmd}-{flag}-header-only", argv, src, header_only, name, ("{in}", "no data rows")),
        Case(f"{cmd}-{flag}-ragged-row", argv, src, drop_field(data_line), name, ("{in}", f"line {data_line}:")),
        Case(f"{cmd}-{flag}-directory", argv, src, a_directory, name, ("{in}", "is a directory")),
        Case(f"{cmd}-{flag}-empty", argv, src, empty, name, ("{in}", "empty")),
        Case(f"{cmd}-{flag}-missing", argv, src, missing, name, ("{in}", "not found")),
    ]


def output_cases(cmd: str, argv: list[str], kind: str = "file", out_name: str = "out.tsv",
                 enospc: bool = True) -> list[Case]:
    """The output failures every command must survive: ``argv`` writes to {out}."""
    first = ("{out}", "is a directory") if kind == "file" else ("{out}", "exists and is a file")
    cases = [
        Case(f"{cmd}-out-wrong-kind", argv, output="dir", expect=first, out_name=out_name),
        Case(f"{cmd}-out-under-a-file", argv, output="under_file", expect=("{out}", "is a file, not a directory"),
             out_name=out_name),
        Case(f"{cmd}-out-read-only", argv, output="readonly", expect=("{out}", "not writable"), out_name=out_name),
    ]
    if enospc:
        cases.append(Case(f"{cmd}-out-disk-full", argv, output="enospc", expect=("{out}", "No space left on device"),
                          out_name=out_name))
    return cases


Q = "--quiet"
SV = ["score-variants", "{tiny}", "--fasta", str(BRCA_FA), "--variants", "{in}", "--window", "64", "-o", "{out}", Q]
DMS = ["dms", "{tiny}", "--cds", str(CDS), "--variants", "{in}", "-o", "{out}", Q]
ESS = ["essentiality", "{tiny}", "--fasta", str(PHIX_FA), "--gff", str(PHIX_GFF), "--zero-based-gff",
       "--circular", "NC_001422.1", "--labels", "{in}", "-o", "{out}", Q]
EMB = ["embed", "{tiny}", "--csv", "{in}", "-o", "{out}", Q]
FT = ["finetune", "{tiny}", "--train", "{in}", "--probe-steps", "5", "-o", "{out}", Q]
PRED = ["predict", "{clf}", "--csv", "{in}", "-o", "{out}", Q]

CASES: list[Case] = []
# -- text tables: the same corruptions through every command that reads one (shared reader)
CASES += table_cases("score-variants", SV, BRCA_TSV, 5, "variants.tsv", "variants")
CASES += table_cases("dms", DMS, MUTANTS, 9, "mutants.csv", "variants")
CASES += table_cases("essentiality", ESS, LABELS, 4, "labels.tsv", "labels")
CASES += table_cases("embed", EMB, GUE / "dev.csv", 3, "seqs.csv", "csv")
CASES += table_cases("finetune", FT, GUE / "train.csv", 7, "train.csv", "train")
CASES += table_cases("predict", PRED, GUE / "test.csv", 4, "new.csv", "csv")

# -- rows that parse but say something impossible: each names the line (1-based) and the field
CASES += [
    Case("score-variants-pos-not-integer", SV, BRCA_TSV, replace_in_line(2, b"43045706", b"43O45706"), "v.tsv",
         ("{in}", "line 2: pos_hg38 '43O45706' is not an integer")),
    Case("score-variants-ref-mismatch", SV, BRCA_TSV, replace_in_line(2, b"\tA\tT\t", b"\tC\tT\t"), "v.tsv",
         ("{in}", "line 2", "ref C but the FASTA has A")),
    Case("score-variants-symbolic-allele", SV, BRCA_TSV, replace_in_line(3, b"\tG\tA\t", b"\tG\t<DEL>\t"), "v.tsv",
         ("{in}", "line 3", "not plain A/C/G/T/N")),
    Case("score-variants-no-position-column", SV, BRCA_TSV, replace_in_line(1, b"pos_hg38", b"hg38"), "v.tsv",
         ("{in}", "no position column")),
    Case("score-variants-label-one-class", SV + ["--label-column", "gene", "--positive", "BRCA1"], BRCA_TSV,
         copy, "v.tsv", ("{in}", "label column 'gene'", "all 40 labels are positive")),
    Case("score-variants-unknown-baseline", SV + ["--baseline-column", "CADD"], BRCA_TSV, copy, "v.tsv",
         ("{in}", "no column 'CADD'")),
    Case("dms-fitness-not-a-number", DMS, MUTANTS, replace_in_line(7, b";0.7929999999999999;", b";abc;"), "m.csv",
         ("{in}", "line 7: y 'abc' is not a number")),
    Case("dms-malformed-mutant", DMS, MUTANTS, replace_in_line(6, b"G21A", b"G21"), "m.csv",
         ("{in}", "line 6: 'G21' is not a mutation")),
    Case("dms-wild-type-mismatch", DMS, MUTANTS, replace_in_line(6, b"G21A", b"W21A"), "m.csv",
         ("{in}", "line 6: W21A: the CDS encodes G at 21")),
    Case("dms-residue-outside-cds", DMS, MUTANTS, replace_in_line(6, b"G21A", b"G999A"), "m.csv",
         ("{in}", "line 6: G999A: residue 999 outside 1..264")),
    Case("dms-no-mutant-column", DMS, MUTANTS, replace_in_line(4, b"variant", b"name"), "m.csv",
         ("{in}", "no mutant column")),
    Case("dms-cds-start-outside", DMS + ["--cds-start", "5000"], MUTANTS, copy, "m.csv",
         ("aph3II_nt.fasta", "--cds-start 5000 is outside record")),
    Case("essentiality-label-not-01", ESS, LABELS, replace_in_line(5, b"\t0\t", b"\t2\t"), "l.tsv",
         ("{in}", "line 5 essential_")),
    Case("essentiality-no-label-columns", ESS, LABELS, replace_all(b"essential_", b"ess_"), "l.tsv",
         ("{in}", "no label columns")),
    Case("essentiality-no-key-column", ESS, LABELS, replace_in_line(1, b"locus_tag\tgene\t", b"tag\tsymbol\t"),
         "l.tsv",
         ("{in}", "no locus_tag (or gene) column")),
    Case("essentiality-gff-strand-x", ["essentiality", "{tiny}", "--fasta", str(PHIX_FA), "--gff", "{in}",
                                       "--zero-based-gff", "-o", "{out}", Q],
         PHIX_GFF, replace_all(b"\t+\t", b"\tx\t"), "g.gff", ("{in}", "line", "strand 'x'")),
    Case("essentiality-cds-past-record-end", ["essentiality", "{tiny}", "--fasta", str(PHIX_FA), "--gff", "{in}",
                                              "--zero-based-gff", "-o", "{out}", Q],
         PHIX_GFF, replace_in_line(3, b"\t393\t", b"\t9393\t"), "g.gff", ("{in}", "line 3", "lies outside record")),
    Case("embed-bad-base", EMB, GUE / "dev.csv", replace_in_line(3, b",", b"X,"), "s.csv",
         ("{in}", "line 3, column 'sequence'", "invalid character 'X'", "(1-based)")),
    Case("embed-no-sequence-column", EMB, GUE / "dev.csv", replace_in_line(1, b"sequence", b"dna"), "s.csv",
         ("{in}", "no sequence column")),
    Case("embed-empty-sequence", EMB, GUE / "dev.csv", replace_in_line(5, b"", b""), "s.csv", ("{in}",)),
    Case("finetune-stray-label", FT, GUE / "train.csv", replace_in_line(9, b",0\n", b",0.5\n"), "t.csv",
         ("{in}", "line 9: '0.5'", "not whole numbers")),
    Case("finetune-empty-label", FT, GUE / "train.csv", replace_in_line(9, b",0\n", b",\n"), "t.csv",
         ("{in}", "empty label", "line 9")),
    Case("finetune-no-label-column", FT, GUE / "train.csv", replace_in_line(1, b"label", b"kind"), "t.csv",
         ("{in}", "no label column")),
    Case("finetune-one-class", FT, GUE / "train.csv", replace_all(b",1\n", b",0\n"), "t.csv",
         ("{in}", "at least two classes")),
    Case("predict-bad-base", PRED, GUE / "test.csv", replace_in_line(4, b",", b"!,"), "p.csv",
         ("{in}", "line 4, column 'sequence'", "invalid character '!'")),
]
# the empty-sequence case: blank out line 5's sequence
CASES[[c.id for c in CASES].index("embed-empty-sequence")].make = (
    lambda src, dst: dst.write_bytes(b"".join(ln if i != 4 else b"," + ln.split(b",", 1)[1]
                                              for i, ln in enumerate(lines_of(src)))))
CASES[[c.id for c in CASES].index("embed-empty-sequence")].expect = ("{in}", "empty sequence", "line 5")

# -- sequences longer than the model (default: the clear error; --crop/--windows are tested elsewhere)
LONG = replace_in_line(3, b",", b"" + b"ACGT" * 60 + b",")  # a real 70-bp promoter made 310 bp: past 257
CASES += [
    Case("embed-too-long", EMB, GUE / "dev.csv", LONG, "s.csv", ("{in}", "longer than the model's 257 bases",
                                                               "--crop", "--windows")),
    Case("finetune-too-long", FT, GUE / "train.csv", LONG, "t.csv", ("{in}", "longer than the model's 257 bases")),
    Case("predict-too-long", PRED, GUE / "test.csv", LONG, "p.csv", ("{in}", "longer than the classifier's 257")),
    Case("embed-crop-and-windows", EMB + ["--crop", "center", "--windows"], GUE / "dev.csv", copy, "s.csv",
         ("--crop or --windows, not both",)),
]

# -- sequence files and annotations
SCORE = ["score", "{tiny}", "--fasta", "{in}", "-o", "{out}", Q]
PREP = ["prepare", "{in}", "--out", "{out}", "--quiet"]
CASES += [
    Case("score-fasta-truncated-gz", SCORE, CHR2, truncate_bytes(9000), "chr2.fa.gz", ("{in}", "truncated or corrupt gzip")),
    Case("score-fasta-bad-character", SCORE, BRCA_FA, replace_in_line(3, b"A", b"J"), "x.fa",
         ("{in}", "position", "(1-based, line 3)", "invalid character 'J'")),
    Case("score-fasta-directory", SCORE, BRCA_FA, a_directory, "x.fa", ("{in}", "is a directory")),
    Case("score-fasta-empty", SCORE, BRCA_FA, empty, "x.fa", ("{in}", "empty")),
    Case("score-fasta-binary", SCORE, BRCA_FA, binary, "x.fa", ("{in}",)),
    Case("prepare-genbank-truncated", PREP, T7, truncate_bytes(100_000), "t7.gb",
         ("{in}", "has 17,054 bases but its LOCUS line says 39,937", "truncated")),
    Case("prepare-input-directory", PREP, T7, a_directory, "t7.gb", ("{in}", "is a directory")),
    Case("prepare-input-missing", PREP, T7, missing, "t7.gb", ("{in}", "not found")),
    Case("prepare-gtf-truncated-gz", ["prepare", str(DATA / "yeast_chrI.fa"), "--gff", "{in}", "--out", "{out}", Q],
         YEAST_GTF, truncate_bytes(12000), "y.gtf.gz", ("{in}", "truncated or corrupt gzip")),
    Case("prepare-gff-strand-x", ["prepare", str(DATA / "phage_phix174.fa"), "--gff", "{in}", "--zero-based-gff",
                                  "--out", "{out}", Q], PHIX_GFF, replace_in_line(3, b"\t+\t", b"\tx\t"), "g.gff",
         ("{in}", "line 3", "strand 'x'")),
]

# -- configs and checkpoints
TRAIN = ["train", "--config", "{in}", "--out", "{out}"]
RUN_YAML = DATA / "ecoli_hyena_tiny" / "run.yaml"
CASES += [
    Case("train-lr-nan", TRAIN, RUN_YAML, replace_all(b"lr: 3.0e-3", b"lr: .nan"), "run.yaml",
         ("train.lr must be a finite number",)),
    Case("train-steps-inf", TRAIN, RUN_YAML, replace_all(b"steps: 2000", b"steps: .inf"), "run.yaml",
         ("train.steps must be an integer",)),
    Case("train-config-latin1", TRAIN, RUN_YAML, latin1_in_line(2), "run.yaml", ("{in}", "not UTF-8")),
    Case("train-config-a-list", TRAIN, RUN_YAML, lambda s, d: d.write_text("- 1\n- 2\n"), "run.yaml",
         ("{in}", "must be a mapping")),
    Case("train-config-directory", TRAIN, RUN_YAML, a_directory, "run.yaml", ("{in}", "is a directory")),
    Case("eval-config-json-list", ["eval", "{in}", "--fasta", str(PHIX_FA), "--markov-order", "0"], TINY,
         checkpoint_with(lambda d: (d / "config.json").write_text("[1, 2]\n")), "ckpt",
         ("{in}/config.json", "JSON list")),
    Case("info-config-json-list", ["info", "{in}"], TINY,
         checkpoint_with(lambda d: (d / "config.json").write_text("[1, 2]\n")), "ckpt", ("{in}/config.json", "JSON list")),
    Case("score-config-json-invalid", SCORE[:1] + ["{in}", "--fasta", str(BRCA_FA), Q], TINY,
         checkpoint_with(lambda d: (d / "config.json").write_text('{"format": "dnalm", \n')), "ckpt",
         ("{in}/config.json", "not valid JSON")),
    Case("embed-nan-weights", ["embed", "{in}", "--csv", str(GUE / "dev.csv"), "-o", "{out}", Q], TINY,
         checkpoint_with(nan_weights), "ckpt", ("{in}/model.safetensors", "non-finite")),
    Case("score-truncated-weights", ["score", "{in}", "--fasta", str(BRCA_FA), "-o", "{out}", Q], TINY,
         checkpoint_with(lambda d: (d / "model.safetensors").write_bytes((TINY / "model.safetensors").read_bytes()[:999])),
         "ckpt", ("{in}/model.safetensors", "cannot read safetensors")),
    Case("export-truncated-weights", ["export", "{in}", "--out", "{out}"], TINY,
         checkpoint_with(lambda d: (d / "model.safetensors").write_bytes((TINY / "model.safetensors").read_bytes()[:999])),
         "ckpt", ("{in}/model.safetensors",), out_name="exported"),
    Case("predict-not-a-classifier", ["predict", "{tiny}", "--csv", str(GUE / "test.csv"), "-o", "{out}", Q],
         expect=("ecoli_hyena_tiny", "not a fine-tuned classifier")),
    Case("generate-model-is-a-file", ["generate", "{in}", "--prompt", "ACGT", "-o", "{out}", Q], BRCA_FA,
         lambda s, d: shutil.copy(s, d), "x.fa", ("{in}", "is a file"), out_name="out.fa"),
]

# -- outputs: every command that writes, with its output broken four ways
SHORT_FA = "{tmp}/short.fa"  # written by the harness from the real BRCA1 slice (see run_case)
OUTPUT_COMMANDS = [
    ("score", ["score", "{tiny}", "--fasta", SHORT_FA, "-o", "{out}", Q], "file", "out.tsv"),
    ("prepare", ["prepare", str(PHIX_FA), "--out", "{out}", Q], "dir", "store"),
    ("train", ["train", "--config", "{tmp}/run.yaml", "--out", "{out}"], "dir", "run"),
    ("score-variants", SV[:5] + [str(BRCA_TSV)] + SV[6:], "file", "out.tsv"),
    ("dms", DMS[:5] + ["{tmp}/m20.csv"] + DMS[6:], "file", "out.tsv"),
    ("essentiality", ESS[:9] + ["--window", "256", "-o", "{out}", Q], "file", "out.tsv"),
    ("embed", ["embed", "{tiny}", "--csv", str(GUE / "dev.csv"), "-o", "{out}", Q], "file", "out.npy"),
    ("finetune", FT[:3] + [str(GUE / "train.csv")] + FT[4:], "dir", "clf"),
    ("predict", PRED[:3] + [str(GUE / "test.csv")] + PRED[4:], "file", "out.tsv"),
    ("export", ["export", "{run}", "--out", "{out}"], "dir", "exported"),
    ("generate", ["generate", "{tiny}", "--prompt", "ACGT", "--n-tokens", "5", "-o", "{out}", Q], "file", "out.fa"),
]
for cmd, argv, kind, name in OUTPUT_COMMANDS:
    CASES += output_cases(cmd, argv, kind, name)
CASES.append(Case("score-variants-plot-under-a-file", SV[:5] + [str(BRCA_TSV)] + SV[6:] +
                  ["--label-column", "func_class", "--positive", "LOF", "--plot", "{tmp}/afile/roc.png"],
                  output="plain", expect=("{tmp}/afile/roc.png", "is a file, not a directory")))


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def classifier(tmp_path_factory) -> Path:
    """A linear probe fine-tuned once per session on the tiny model (for `dnalm predict`)."""
    out = tmp_path_factory.mktemp("clf") / "clf"
    assert main(["finetune", str(TINY), "--train", str(GUE / "train.csv"), "--probe-steps", "5", "-o", str(out),
                 "--quiet"]) == 0
    return out


def _run_yaml(run_dir: Path | str, steps: int = 2) -> str:
    return (f"out_dir: {run_dir}\nmodel: {{family: hyena, n_layer: 1, d_model: 16, l_max: 66}}\n"
            f"data: {{inputs: [{PHIX_FA}], seq_len: 64, holdout_fraction: 0.2}}\n"
            f"train: {{steps: {steps}, batch_size: 4, eval_every: 100, ckpt_every: 1, log_every: 1, "
            "eval_tokens: 512, threads: 1, keep_last: 3}\n")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A tiny training run (phiX174, 2 steps) with checkpoints, once per session."""
    import yaml

    from dnalm.train.config import run_config_from_dict
    from dnalm.train.trainer import train

    run = tmp_path_factory.mktemp("run") / "run"
    train(run_config_from_dict(yaml.safe_load(_run_yaml(run))), progress=False)
    return run


@pytest.fixture(scope="session")
def can_mount(tmp_path_factory) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    d = tmp_path_factory.mktemp("mnt")
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(d)], capture_output=True)
    return ok


def _tree(root: Path) -> dict[str, float | None]:
    """Every path under ``root`` with its file's modification time (directories: presence only)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.stat().st_mtime for p in sorted(root.rglob("*"))}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


def check_one_line(rc: int, err: str, expect: list[str]) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, f"exit code {rc}, stderr: {err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err}"
    for text in expect:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"


# ------------------------------------------------------------------------------------------ the test


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, tmp_path, capsys, monkeypatch, request, can_mount):
    monkeypatch.chdir(tmp_path)  # default outputs land here, where the check below sees them
    paths = {"tmp": str(tmp_path), "tiny": str(TINY), "in": str(tmp_path / case.name),
             "out": str(tmp_path / case.out_name)}
    argv_text = " ".join(case.argv)
    if "{clf}" in argv_text:
        paths["clf"] = str(request.getfixturevalue("classifier"))
    if "{run}" in argv_text:
        paths["run"] = str(request.getfixturevalue("run_dir"))
    if "{tmp}/short.fa" in argv_text:  # two short records of the real BRCA1 slice, for `dnalm score`
        seq = "".join(BRCA_FA.read_text().splitlines()[1:])
        (tmp_path / "short.fa").write_text(f">a\n{seq[:120]}\n>b\n{seq[5000:5200]}\n")
    if "{tmp}/run.yaml" in argv_text:
        (tmp_path / "run.yaml").write_text(_run_yaml(tmp_path / "unused"))
    if "{tmp}/m20.csv" in argv_text:
        (tmp_path / "m20.csv").write_bytes(b"".join(lines_of(MUTANTS)[:24]))
    if case.make is not None:
        case.make(case.src, tmp_path / case.name)
    out = Path(paths["out"])
    mounted = None
    if case.output == "dir":  # the wrong kind of thing already sits at the output path
        if case.expect[1] == "is a directory":
            out.mkdir()
        else:
            out.write_text("a file that must survive\n")
    elif case.output == "under_file":
        (tmp_path / "afile").write_text("a regular file\n")
        out = tmp_path / "afile" / case.out_name
        paths["out"] = str(out)
    elif case.output == "plain":
        (tmp_path / "afile").write_text("a regular file\n")
    elif case.output == "readonly":
        ro = tmp_path / "ro"
        ro.mkdir()
        if os.geteuid() == 0:
            if not can_mount:
                pytest.skip("root ignores permission bits and this machine cannot mount a read-only tmpfs")
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], check=True)
            mounted = ro
        else:
            ro.chmod(0o555)
        out = ro / case.out_name
        paths["out"] = str(out)
    elif case.output == "enospc":
        real_fsync = os.fsync

        def full_disk(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full_disk)
        assert real_fsync is not full_disk
    argv = [a.format(**paths) for a in case.argv]
    expect = [e.format(**paths) for e in case.expect]
    before = _tree(tmp_path)
    try:
        rc, err = run_cli(argv, capsys)
    finally:
        monkeypatch.undo()
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], check=True)
        elif case.output == "readonly":
            (tmp_path / "ro").chmod(0o755)
    check_one_line(rc, err, expect)
    assert _tree(tmp_path) == before, "files appeared or changed: " + str(set(_tree(tmp_path)) ^ set(before))


def test_at_least_80_cases_over_the_commands():
    commands = {c.argv[0] for c in CASES}
    assert len(CASES) >= 80, len(CASES)
    assert {"score", "prepare", "train", "score-variants", "embed", "finetune", "export", "dms", "essentiality",
            "predict"} <= commands


# ------------------------------------------------------------------------------------------ real processes


@pytest.mark.parametrize(
    "argv, make, expect",
    [
        (["score-variants", str(TINY), "--fasta", str(BRCA_FA), "--variants", "{in}", "-o", "{tmp}/o.tsv", Q],
         latin1_in_line(5), "line 5, column 3"),
        (["dms", str(TINY), "--cds", str(CDS), "--variants", "{in}", "-o", "{tmp}/o.tsv", Q], truncated_gzip,
         "truncated or corrupt gzip"),
        (["train", "--config", "{in}", "--out", "{tmp}/run"], replace_all(b"lr: 3.0e-3", b"lr: .nan"),
         "train.lr must be a finite number"),
    ],
)
def test_real_exit_code_in_a_subprocess(argv, make, expect, tmp_path):
    src = {"score-variants": BRCA_TSV, "dms": MUTANTS, "train": RUN_YAML}[argv[0]]
    bad = tmp_path / ("bad.yaml" if argv[0] == "train" else "bad.tsv")
    make(src, bad)
    before = _tree(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "dnalm", *[a.format(tmp=tmp_path, **{"in": bad}) for a in argv]],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    check_one_line(r.returncode, r.stderr, [expect, str(bad)] if argv[0] != "train" else [expect])
    assert _tree(tmp_path) == before
