"""dnalm ablate: the shipped ablations at two steps per arm (arms differ only in the switch, equal tokens),
the per-case validation loss against an independent computation, the summary statistics, resuming, errors."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dnalm.cli import main
from dnalm.config import ConfigError, to_dict
from dnalm.scaling import ablate as A

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "ablations"
LABELS = ROOT / "dnalm" / "resources" / "ecoli_mg1655_essentiality_first_half.tsv"


def _small(name: str, tmp_path: Path, steps: int = 2, **over) -> Path:
    """The shipped ablation at ``steps`` steps per arm, one seed, one validation point on few bases."""
    ab = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    tr, data = ab["base"]["train"], ab["base"]["data"]
    ab["tokens"] = steps * tr["batch_size"] * data["seq_len"]
    ab["seeds"] = [0]
    ab["out_dir"] = str(tmp_path / name)
    tr.update(eval_every=steps, eval_tokens=2 * data["seq_len"], ckpt_every=steps, log_every=1)
    data["inputs"] = [str(ROOT / p) for p in data.get("inputs", [])]  # the tests run from anywhere
    if "essentiality" in ab:
        ab["essentiality"].update(max_genes=40, labels=str(LABELS))
    ab.update(over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(ab, sort_keys=False))
    return path


def _without(d: dict, dotted: str) -> dict:
    d = copy.deepcopy(d)
    *parents, last = dotted.split(".")
    node = d
    for p in parents:
        node = node[p]
    node.pop(last)
    d.pop("out_dir")
    return d


@pytest.mark.parametrize("name", ["repeat_weight", "warmup", "genic_windows"])
def test_shipped_ablation_plans_arms_that_differ_only_in_the_switch(name):
    ab = A.load_ablation(CONFIGS / f"{name}.yaml")
    runs = A.plan_runs(ab, "/nonexistent/out", store="/nonexistent/store")
    assert len(ab["seeds"]) >= 3 and len(runs) == len(ab["seeds"]) * len(ab["arms"])
    by_seed: dict[int, list] = {}
    for r in runs:
        by_seed.setdefault(r.seed, []).append(r)
        assert r.config.train.seed == r.seed == r.config.train.data_seed
    for group in by_seed.values():
        dicts = [to_dict(r.config) for r in group]
        assert all(_without(d, ab["switch"]) == _without(dicts[0], ab["switch"]) for d in dicts)
        switch_values = [json.dumps(_get(d, ab["switch"])) for d in dicts]
        assert len(set(switch_values)) == len(group)  # and the switch does differ
        assert len({r.planned_tokens for r in group}) == 1  # equal token budgets
        assert group[0].planned_tokens == pytest.approx(float(ab["tokens"]), rel=0.01)


def _get(d: dict, dotted: str):
    for p in dotted.split("."):
        d = d[p]
    return d


@pytest.mark.parametrize("name", ["repeat_weight", "warmup", "genic_windows"])
def test_small_ablation_trains_two_steps_per_arm(name, tmp_path):
    if name == "genic_windows" and not LABELS.is_file():
        pytest.skip("essentiality labels not available")
    path = _small(name, tmp_path)
    assert main(["ablate", str(path)]) == 0
    out = tmp_path / name
    rows = list(csv.DictReader((out / "results.csv").open()))
    ab = A.load_ablation(path)
    assert [(r["arm"], r["seed"], r["step"], r["final"]) for r in rows] == [(a, "0", "2", "1") for a in ab["arms"]]
    tokens = {int(r["tokens"]) for r in rows}
    assert len(tokens) == 1  # equal tokens
    snaps = [yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text()) for r in rows]
    for s in snaps:  # the trained configs differ in the switch only
        assert _without(s, ab["switch"]) == _without(snaps[0], ab["switch"])
        assert s["data"]["store"] == str(out / "store")
    for r in rows:
        assert float(r["val_bits_per_base"]) > 1.5 and float(r["train_cpu_s"]) > 0
    if name != "genic_windows":  # the human region: both cases scored
        assert all(float(r["val_bits_per_base_upper"]) > 0 and float(r["val_bits_per_base_lower"]) > 0 for r in rows)
    else:
        for r in rows:
            assert 0 <= float(r["ess_auroc"]) <= 1 and int(r["ess_genes"]) == 40
            assert float(r["ess_auroc_lo"]) <= float(r["ess_auroc"]) <= float(r["ess_auroc_hi"])
        assert rows[0]["ess_gene_length_auroc"] == rows[1]["ess_gene_length_auroc"]  # same genes, same baseline
    assert (out / "curves.png").stat().st_size > 1000
    assert "paired difference" in (out / "summary.md").read_text()


def test_rerun_skips_finished_runs_and_refuses_a_changed_config(tmp_path, monkeypatch):
    path = _small("repeat_weight", tmp_path)
    A.run_ablation(path, progress=False)
    results = tmp_path / "repeat_weight" / "results.csv"
    before = results.read_text()

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(A, "train", boom)
    A.run_ablation(path, progress=False)
    assert results.read_text() == before
    ab = yaml.safe_load(path.read_text())
    ab["base"]["train"]["lr"] = 1e-3
    path.write_text(yaml.safe_dump(ab))
    with pytest.raises(ConfigError, match="different configuration"):
        A.run_ablation(path, progress=False)


def test_max_seeds_trains_the_first_seeds_then_adds_the_rest(tmp_path, monkeypatch):
    path = _small("repeat_weight", tmp_path, steps=1, seeds=[3, 4])
    A.run_ablation(path, progress=False, max_seeds=1)
    rows = list(csv.DictReader((tmp_path / "repeat_weight" / "results.csv").open()))
    assert {r["seed"] for r in rows} == {"3"}
    A.run_ablation(path, progress=False)
    rows = list(csv.DictReader((tmp_path / "repeat_weight" / "results.csv").open()))
    assert sorted((r["arm"], r["seed"]) for r in rows) == [("0.1", "3"), ("0.1", "4"), ("1.0", "3"), ("1.0", "4")]


def test_arms_that_differ_elsewhere_or_in_tokens_are_refused(tmp_path):
    path = _small("warmup", tmp_path)
    ab = yaml.safe_load(path.read_text())
    ab["arms"]["doubling"][0]["batch_size"] = 16  # 1k x 16: fewer tokens per step in stage 1
    path.write_text(yaml.safe_dump(ab))
    with pytest.raises(ConfigError, match="training tokens"):
        A.plan_runs(A.load_ablation(path))
    runs = A.plan_runs(A.load_ablation(_small("repeat_weight", tmp_path)))
    runs[1].config.train.lr = 1.0
    with pytest.raises(ConfigError, match=r"differ in more than data.repeat_weight: train.lr"):
        A.check_only_switch(runs, "data.repeat_weight")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"switch": "repeat_weight"}, "dotted key"),
        ({"switch": "train.seed"}, "set by the ablation"),
        ({"arms": {"only": 1.0}}, "at least two"),
        ({"seeds": []}, "non-empty list"),
        ({"seeds": [1, 1]}, "duplicates"),
        ({"bogus": 1}, "unknown key"),
        ({"tokens": -5}, "positive"),
        ({"essentiality": {"window": 5}}, "labels"),
    ],
)
def test_bad_ablation_files_fail_in_one_line(tmp_path, capsys, change, message):
    path = _small("repeat_weight", tmp_path, **change)
    assert main(["ablate", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "repeat_weight").exists()


def test_switch_value_unknown_to_the_config_fails(tmp_path, capsys):
    path = _small("repeat_weight", tmp_path, switch="data.repeat_wieght")
    assert main(["ablate", str(path), "--dry-run"]) == 2
    assert "repeat_wieght" in capsys.readouterr().err


def test_case_split_matches_an_independent_computation():
    """evaluate_lm's per-case losses against log-softmax sums over a hand-made tiling."""
    from dnalm.data.store import TokenStore, prepare
    from dnalm.models import model_config_from_dict
    from dnalm.models.lm import DNALM
    from dnalm.tokenizer import BOS
    from dnalm.train.evaluate import evaluate_lm

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        fa = Path(tmp) / "x.fa"
        rng = np.random.default_rng(0)
        seq = "".join(rng.choice(list("ACGTacgt"), size=3000))
        fa.write_text(">r\n" + seq + "\n")
        prepare([fa], Path(tmp) / "s", val_fraction=0.2, test_fraction=0.0, progress=False)
        store = TokenStore.open(Path(tmp) / "s")
        torch.manual_seed(0)
        model = DNALM(model_config_from_dict({"family": "hyena", "n_layer": 1, "d_model": 16, "l_max": 130}))
        res = evaluate_lm(model, store, "validation", 128, batch_size=3)
        val = seq[-600:]  # the last 20% of the record
        assert res.n_bases == 600 and res.n_upper + res.n_lower == 600
        assert res.n_lower == sum(c.islower() for c in val)
        from dnalm.tokenizer import encode_bytes

        ids, _ = encode_bytes(val.encode())
        nll = {True: 0.0, False: 0.0}
        with torch.no_grad():
            for a in range(0, 600, 128):
                tgt = torch.from_numpy(ids[a : a + 128].astype(np.int64))
                inp = torch.cat([torch.tensor([BOS]), tgt[:-1]])[None]
                lp = torch.log_softmax(model(inp).logits[0].double(), -1)
                for i, t in enumerate(tgt.tolist()):
                    nll[val[a + i].islower()] -= float(lp[i, t])
        assert res.loss_lower == pytest.approx(nll[True] / res.n_lower, rel=1e-5)
        assert res.loss_upper == pytest.approx(nll[False] / res.n_upper, rel=1e-5)
        assert res.loss == pytest.approx((nll[True] + nll[False]) / 600, rel=1e-5)
        d = res.to_dict("val/")
        assert d["val/bits_per_base_lower"] == pytest.approx(res.loss_lower / math.log(2))


def _rows(values: dict[tuple[str, int], list[float]]) -> list[dict]:
    rows = []
    for (arm, seed), ys in values.items():
        for i, y in enumerate(ys):
            rows.append({"arm": arm, "seed": str(seed), "step": str(10 * (i + 1)), "tokens": str(1000 * (i + 1)),
                         "train_s": str(2.0 * (i + 1)), "train_cpu_s": str(1.0 * (i + 1)),
                         "val_bits_per_base": str(y), "final": "1" if i == len(ys) - 1 else "0"})
    return rows  # fmt: skip


def test_summary_pairs_seeds_and_times_the_target():
    ab = {"switch": "data.x", "arms": {"ref": 0, "new": 1}}
    rows = _rows({("ref", 0): [3.0, 2.0, 1.8], ("new", 0): [2.5, 1.9, 1.7],
                  ("ref", 1): [3.0, 2.2, 2.0], ("new", 1): [2.4, 1.8, 1.9],
                  ("ref", 2): [3.1, 2.1, 1.9], ("new", 2): [2.6, 2.0, 1.6]})  # fmt: skip
    s = A.summarize(rows, ab)
    d = s["vs_reference"]["new"]["val_bits_per_base"]
    assert d["mean"] == pytest.approx(np.mean([-0.1, -0.1, -0.3]))
    assert d["min"] == pytest.approx(-0.3) and d["max"] == pytest.approx(-0.1)
    assert d["ci95"][0] >= -0.3 - 1e-12 and d["ci95"][1] <= -0.1 + 1e-12 and d["ci95"][0] < d["ci95"][1]
    assert s["target"] == 2.0  # the worst run's final value
    # ref seed 0 reaches 2.0 exactly at step 20; new seed 1 crosses 2.0 between 2.4 (1000) and 1.8 (2000)
    assert s["per_arm"]["ref"]["reach"]["tokens"]["values"][0] == 2000
    assert s["per_arm"]["new"]["reach"]["tokens"]["values"][1] == pytest.approx(1000 + 1000 * 0.4 / 0.6)
    assert s["per_arm"]["new"]["reach"]["train_cpu_s"]["values"][1] == pytest.approx(1 + 0.4 / 0.6)
    r = A.reach(A._curves(rows)[("ref", 1)], "val_bits_per_base", 1.0)
    assert r == {"tokens": None, "train_s": None, "train_cpu_s": None}
    assert "new" in A.format_summary(s)


def test_tokens_flag_rescales_every_arm(tmp_path, capsys):
    path = _small("warmup", tmp_path)
    assert main(["ablate", str(path), "--dry-run", "--tokens", str(5 * 2 * 16384)]) == 0
    out = capsys.readouterr().out
    assert out.count("163,840") == 2  # both arms: 5 steps of 2 x 16,384
