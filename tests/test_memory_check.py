"""Every command that builds a model checks the memory it will need before allocating anything, and refuses with
one line naming the need and the limit (exit code 2). The estimates reuse the planner (dnalm.scaling.plan) and
the family specs; the limit is MemAvailable capped by the cgroup, or DNALM_MAX_MEMORY / --max-memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import dnalm.formats
from dnalm.cli import main
from dnalm.memory import RUNTIME_BYTES, MemoryNeed, NotEnoughMemoryError, available_memory, memory_limit, require
from dnalm.models import get_preset
from dnalm.scaling.flops import count_params
from dnalm.scaling.memory import check_model_memory, inference_need, training_need

DATA = Path(__file__).parent / "data"
TINY = DATA / "ecoli_hyena_tiny"
PHIX_FA = DATA / "phage_phix174.fa"
PHIX_GFF = DATA / "phage_phix174.gff"
BRCA_FA = DATA / "brca1_chr17_43044001-43064000.fa"
BRCA_TSV = DATA / "brca1_findlay2018_demo40.tsv"
CDS = DATA / "aph3II_nt.fasta"
MUTANTS = DATA / "MERGE_kka2_klepn_head.csv"
GUE = DATA / "gue_prom_core_tata_small"
REPO = Path(__file__).resolve().parent.parent


def _no_load(*a, **k):
    raise AssertionError("the model was built although the memory check should have refused")


# every command that builds a model, on real inputs; {out} is a fresh path
COMMANDS = {
    "score": ["score", str(TINY), "--fasta", str(PHIX_FA)],
    "eval": ["eval", str(TINY), "--fasta", str(PHIX_FA), "--markov-order", "0"],
    "embed": ["embed", str(TINY), "--fasta", str(PHIX_FA), "-o", "{out}/e.npy", "--windows"],
    "generate": ["generate", str(TINY), "--prompt", "ACGT", "--n-tokens", "5"],
    "score-variants": ["score-variants", str(TINY), "--fasta", str(BRCA_FA), "--variants", str(BRCA_TSV),
                       "--fasta-offset", "43044001", "-o", "{out}/v.tsv"],
    "essentiality": ["essentiality", "striped-hyena-tiny", "--fasta", str(PHIX_FA), "--gff", str(PHIX_GFF),
                     "--zero-based-gff", "-o", "{out}/e.tsv"],
    "dms": ["dms", str(TINY), "--cds", str(CDS), "--variants", str(MUTANTS), "-o", "{out}/d.tsv"],
    "finetune": ["finetune", str(TINY), "--train", str(GUE / "train.csv"), "--dev", str(GUE / "dev.csv"),
                 "--test", str(GUE / "test.csv"), "-o", "{out}/ft"],
    "finetune-full": ["finetune", str(TINY), "--train", str(GUE / "train.csv"), "--dev", str(GUE / "dev.csv"),
                      "--test", str(GUE / "test.csv"), "--mode", "full", "-o", "{out}/ft"],
    "boundaries": ["boundaries", "dnahnet-tiny-32", "--fasta", str(PHIX_FA), "--gff", str(PHIX_GFF),
                   "--zero-based-gff", "-o", "{out}/b"],
    "train": ["train", "--config", str(TINY / "run.yaml"), "--out", "{out}/run"],
    "export": ["export", str(TINY), "--out", "{out}/x", "--format", "hyenadna-hf"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_refuses_before_allocating(name, tmp_path, monkeypatch, capsys):
    """With a 100 MiB limit (less than the runtime alone), each command stops with one line and exit 2, and
    the model is never built (dnalm.formats.load / DNALM construction would fail the test)."""
    monkeypatch.setenv("DNALM_MAX_MEMORY", "0.1")
    import dnalm.cli.apps as apps
    import dnalm.cli.models as models
    import dnalm.cli.run as run

    for mod in (apps, models, run, dnalm.formats):
        monkeypatch.setattr(mod, "load", _no_load)
    monkeypatch.setattr(run, "train", _no_load)
    argv = [a.replace("{out}", str(tmp_path)) for a in COMMANDS[name]]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert "needs about" in err[0] and "GiB" in err[0] and "DNALM_MAX_MEMORY" in err[0], err[0]
    assert not any(p for p in tmp_path.rglob("*") if p.is_file())  # nothing written


def test_the_check_passes_on_this_machine(tmp_path):
    """With the real limit the tiny model fits: the same command runs to the end (phiX174's first 200 bases)."""
    seq = "".join(PHIX_FA.read_text().splitlines()[1:])[:200]
    (tmp_path / "phix200.fa").write_text(f">phix200\n{seq}\n")
    assert main(["score", str(TINY), "--fasta", str(tmp_path / "phix200.fa")]) == 0


def test_a_40b_model_is_refused_in_a_subprocess():
    """`dnalm score evo2-40b` exits 2 with one line naming the need (weights of 41B parameters) and the limit,
    without building the model (the process never grows past a few hundred MB)."""
    fa = str(PHIX_FA)
    run = subprocess.run([sys.executable, "-m", "dnalm", "score", "evo2-40b", "--fasta", fa], capture_output=True,
                         text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                   "DNALM_MAX_MEMORY": "24"})
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "evo2-40b" in lines[0] and "weights 153.2 GiB" in lines[0], lines
    assert "24.0 GiB is available (DNALM_MAX_MEMORY)" in lines[0]  # its time: BENCHMARKS.md


def test_estimates_scale_and_use_the_planner():
    cfg = get_preset("hyenadna-tiny-1k")
    a, b = inference_need(cfg, 1000), inference_need(cfg, 4000, batch=2)
    assert a.parts["weights"] == 4 * count_params(cfg) and a.parts["runtime"] == RUNTIME_BYTES
    assert b.parts["largest block's activations"] > 7 * a.parts["largest block's activations"]
    assert inference_need(cfg, 1000, hidden_states=True).total > a.total
    t = training_need(cfg, 1000, 8)
    assert t.parts["weights, gradients, optimizer"] == 16 * count_params(cfg)
    assert training_need(cfg, 1000, 8, activation_checkpointing=True).total < t.total


def test_require_and_limits(monkeypatch):
    need = MemoryNeed(3 * 2**30, {"runtime": RUNTIME_BYTES, "weights": 2 * 2**30, "logits": 2**29})
    with pytest.raises(NotEnoughMemoryError, match=r"^job needs about 3\.0 GiB \(weights 2\.0 GiB, logits 0\.5 GiB\), "
                       r"but only 1\.0 GiB is available \(--max-memory\)$"):
        require(need, "job", max_memory=2**30)
    assert require(need, "job", max_memory=4 * 2**30) is need
    monkeypatch.setenv("DNALM_MAX_MEMORY", "2.5")
    assert memory_limit() == (int(2.5 * 2**30), "DNALM_MAX_MEMORY")
    monkeypatch.delenv("DNALM_MAX_MEMORY")
    limit, source = memory_limit()
    avail = available_memory()
    held = limit - avail if avail is not None else 0  # its resident set, at least the runtime (MemAvailable moves)
    assert avail is None or (RUNTIME_BYTES - 2**28 <= held < avail and ("MemAvailable" in source or "cgroup" in source))


def test_unreadable_model_is_left_to_the_loader():
    """A path that is not a model is not the memory check's business: the loader's own error stays."""
    assert check_model_memory("/nonexistent/model", "x").total == 0
