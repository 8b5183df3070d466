"""The shared table reader and output writer on inputs that must WORK (the failures are in
test_bad_inputs.py): a UTF-8 byte-order mark, CRLF, UTF-16, a Latin-1 comment, gzip, standard input and
bash process substitution, '#chrom' headers, quoted CSV fields; and the writer's promises: grouped outputs
appear together or not at all, stale temporaries of dead processes are cleaned, a temporary folder never
opens as a store, a real full disk (a 64 KiB tmpfs, where this machine may mount one) leaves nothing.
All tables are real files of tests/data, re-encoded."""

from __future__ import annotations

import codecs
import gzip
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnalm.cli import main
from dnalm.data.errors import DataError
from dnalm.data.tables import read_table
from dnalm.eval.dms import read_mutants
from dnalm.eval.embed import read_sequence_file
from dnalm.eval.variants import read_variants
from dnalm.outputs import OutputError, atomic_write_text, check_output, clean_stale, output_group

DATA = Path(__file__).parent / "data"
BRCA_TSV = DATA / "brca1_findlay2018_demo40.tsv"
MUTANTS = DATA / "MERGE_kka2_klepn_head.csv"
GUE_DEV = DATA / "gue_prom_core_tata_small" / "dev.csv"
TINY = DATA / "ecoli_hyena_tiny"


def _variants(path) -> list[tuple]:
    vs, _ = read_variants(path)
    return [(v.chrom, v.pos, v.ref, v.alt) for v in vs]


REFERENCE = None


def reference() -> list[tuple]:
    global REFERENCE
    if REFERENCE is None:
        REFERENCE = _variants(BRCA_TSV)
    return REFERENCE


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: codecs.BOM_UTF8 + b,  # Excel's "CSV UTF-8"
        lambda b: b.replace(b"\n", b"\r\n"),  # Windows line ends
        lambda b: b.replace(b"\n", b"\r"),  # old Mac spreadsheets
        lambda b: codecs.BOM_UTF16_LE + b.decode().encode("utf-16-le"),  # Excel's "Unicode text"
        lambda b: b"# curated by Ren\xe9e, caf\xe9 notes (Latin-1 bytes in a comment)\n" + b,
        lambda b: gzip.compress(b),
        lambda b: b.replace(b"gene\tchromosome", b"#gene\tchromosome", 1),  # a '#name' header line
    ],
    ids=["utf8-bom", "crlf", "cr", "utf16-bom", "latin1-comment", "gzip", "hash-header"],
)
def test_encodings_and_layouts_read_the_same_rows(encode, tmp_path):
    p = tmp_path / "v.tsv"
    p.write_bytes(encode(BRCA_TSV.read_bytes()))
    assert _variants(p) == reference()
    assert len(reference()) == 40


def test_bom_csv_reports_clean_column_names(tmp_path):
    p = tmp_path / "s.csv"
    p.write_bytes(codecs.BOM_UTF8 + GUE_DEV.read_bytes())
    t = read_table(p)
    assert t.header == ["sequence", "label"] and t.lines[0] == 2
    ids, toks, _ = read_sequence_file(p)
    assert len(ids) == 60 and ids[0] == "line2"


def test_line_numbers_count_comments_and_quotes_are_csv(tmp_path):
    p = tmp_path / "m.csv"
    text = MUTANTS.read_text().replace("variant;y;dE", "variant;y;dE;note", 1)
    rows = text.splitlines()
    rows = rows[:4] + [r + ';"a; quoted, note"' for r in rows[4:]]
    p.write_text("\n".join(rows) + "\n")
    muts, meta = read_mutants(p)
    assert muts[0]["line"] == 5 and muts[0]["cols"][3] == "a; quoted, note" and meta["baselines"] == ["dE"]


def test_standard_input(monkeypatch):
    class Stdin:
        buffer = io.BytesIO(gzip.compress(BRCA_TSV.read_bytes()))

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert _variants("-") == reference()


def test_process_substitution_and_stdin_through_the_cli(tmp_path):
    """bash's <(zcat ...) is a pipe under /dev/fd: it must read like a file (it once said 'not found')."""
    if not shutil.which("bash"):
        pytest.skip("needs bash")
    gz = tmp_path / "v.tsv.gz"
    gz.write_bytes(gzip.compress(BRCA_TSV.read_bytes()))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    common = f"{sys.executable} -m dnalm score-variants {TINY} --fasta {DATA / 'brca1_chr17_43044001-43064000.fa'} " \
             "--window 64 --quiet"
    r = subprocess.run(["bash", "-c", f"{common} --variants <(zcat {gz}) -o a.tsv && "
                                      f"zcat {gz} | {common} --variants - -o b.tsv"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    a = [ln for ln in (tmp_path / "a.tsv").read_text().splitlines() if not ln.startswith("#")]
    b = [ln for ln in (tmp_path / "b.tsv").read_text().splitlines() if not ln.startswith("#")]
    assert len(a) == 41 and a == b


def test_binary_and_latin1_data_are_named(tmp_path):
    p = tmp_path / "v.tsv"
    p.write_bytes(BRCA_TSV.read_bytes().replace(b"BRCA1\t17\t41197727", b"BRCA1\t17\t4119\xb77727", 1))
    with pytest.raises(DataError, match=r"v.tsv: line 3, column 14: byte 0xb7 is not UTF-8"):
        read_variants(p)


# ------------------------------------------------------------------------------------------ outputs


def test_output_group_all_or_nothing(tmp_path):
    a, b = tmp_path / "t.tsv", tmp_path / "sub" / "t.png"
    with pytest.raises(RuntimeError):
        with output_group():
            atomic_write_text(a, "table\n")
            atomic_write_text(b, "plot\n")
            assert not a.exists()  # staged, not yet in place
            raise RuntimeError("a metric failed after the table was written")
    assert sorted(tmp_path.rglob("*")) == []  # no file, no temporary, no created directory
    with output_group():
        atomic_write_text(a, "table\n")
        atomic_write_text(b, "plot\n")
    assert a.read_text() == "table\n" and b.read_text() == "plot\n"


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    stale = tmp_path / f".store.tmp-{pid}-abcd"
    stale.mkdir()
    (stale / "manifest.json").write_text('{"format": "dnalm-token-store", "complete": true}')
    mine = tmp_path / f".store.tmp-{os.getpid()}-efgh"
    mine.mkdir()
    old_style = tmp_path / ".store.tmp-k2x9_a1q"  # an older dnalm's mkdtemp name: no PID
    shutil.copytree(stale, old_style)
    assert sorted(clean_stale(tmp_path / "store")) == sorted([stale, old_style])
    assert not stale.exists() and not old_style.exists() and mine.exists()


def test_prepare_removes_leftovers_of_a_killed_prepare(tmp_path):
    from dnalm.data.store import prepare

    prepare([DATA / "phage_phix174.fa"], tmp_path / "store", progress=False)
    left = tmp_path / ".store.tmp-k2x9_a1q"
    shutil.copytree(tmp_path / "store", left)  # complete manifest and all
    assert prepare([DATA / "phage_phix174.fa"], tmp_path / "store", progress=False)["up_to_date"]
    assert not left.exists()


def test_a_temporary_folder_never_opens_as_a_store(tmp_path):
    from dnalm.data.store import TokenStore, prepare

    prepare([DATA / "phage_phix174.fa"], tmp_path / "store", progress=False)
    shutil.copytree(tmp_path / "store", tmp_path / ".store.tmp-123-x")
    with pytest.raises(DataError, match="temporary folder"):
        TokenStore.open(tmp_path / ".store.tmp-123-x")


def test_check_output_kinds(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a directory"):
        check_output(tmp_path, "file")
    with pytest.raises(OutputError, match="exists and is a file"):
        check_output(tmp_path / "f", "dir")
    with pytest.raises(OutputError, match=r"f is a file, not a directory"):
        check_output(tmp_path / "f" / "deeper" / "out.tsv", "file")
    assert check_output(tmp_path / "new" / "deeper" / "out.tsv", "file") == tmp_path / "new" / "deeper" / "out.tsv"
    assert not (tmp_path / "new").exists()  # a check creates nothing


def test_real_full_disk_leaves_nothing(tmp_path, capsys):
    """`dnalm export` of the tiny model (220 KB of weights) into a 64 KiB tmpfs: ENOSPC from the kernel."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        assert main(["export", str(TINY), "--out", str(disk / "model")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{disk / 'model'}: cannot write:" in err[0] and "No space left on device" in err[0], err
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
