"""Precision and threads chosen per machine (dnalm/runtime.py): auto's decision with the benchmark mocked,
the cache, the thread choice from mocked affinity / cgroup / load, the governor, the old train.bf16 key,
and the demo config that must never hard-code a precision. No timing is asserted anywhere here."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import dnalm.runtime as R
from dnalm.config import ConfigError, DataConfig, RunConfig, TrainConfig
from dnalm.models.transformer import TransformerConfig
from dnalm.train.config import load_run_config, run_config_from_dict

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
SHAPES = [(2048, 24, 72), (2048, 64, 24)]


class Bench:
    """A benchmark stand-in: returns fixed (fp32, bf16) seconds and counts its calls."""

    def __init__(self, fp32_s, bf16_s):
        self.result, self.calls = (fp32_s, bf16_s), 0

    def __call__(self, shapes):
        self.calls += 1
        return self.result


def never(shapes):
    raise AssertionError("the benchmark should not run")


# ------------------------------------------------------------------------------------------ precision


@pytest.mark.parametrize("fp32_s, bf16_s, expect", [
    (1.0, 0.5, "bf16"),    # native bf16 (AVX512-BF16 / AMX): twice as fast
    (1.0, 12.0, "fp32"),   # emulated bf16 (AVX2): far slower
    (1.0, 0.95, "fp32"),   # within noise: not measurably faster, float32 stays
    (1.0, R.BF16_MARGIN, "bf16"),  # exactly at the margin
])
def test_auto_on_cpu_follows_the_benchmark(tmp_path, fp32_s, bf16_s, expect):
    bench = Bench(fp32_s, bf16_s)
    p = R.resolve_precision("auto", "cpu", SHAPES, bench=bench, cache=tmp_path)
    assert p.name == expect and bench.calls == 1
    assert f"{bf16_s / fp32_s:.2f}x" in p.reason and "measured now" in p.reason
    assert (p.dtype is torch.bfloat16) == (expect == "bf16")


def test_auto_caches_per_machine_and_shapes(tmp_path, monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    first = R.resolve_precision("auto", "cpu", SHAPES, bench=Bench(1.0, 0.5), cache=tmp_path)
    saved = json.loads((tmp_path / "precision.json").read_text())
    assert len(saved) == 1 and next(iter(saved.values()))["bf16_s"] == 0.5
    hit = R.resolve_precision("auto", "cpu", SHAPES, bench=never, cache=tmp_path)  # cache hit: no benchmark
    assert hit.name == first.name == "bf16" and "cached in" in hit.reason
    other = Bench(1.0, 3.0)  # other shapes: a miss
    assert R.resolve_precision("auto", "cpu", [(512, 128, 128)], bench=other, cache=tmp_path).name == "fp32"
    assert other.calls == 1
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # another ISA setting is another machine
    avx2 = Bench(1.0, 12.0)
    assert R.resolve_precision("auto", "cpu", SHAPES, bench=avx2, cache=tmp_path).name == "fp32"
    assert avx2.calls == 1 and len(json.loads((tmp_path / "precision.json").read_text())) == 3


def test_a_damaged_cache_is_measured_again(tmp_path):
    (tmp_path / "precision.json").write_text("{not json")
    bench = Bench(1.0, 0.5)
    assert R.resolve_precision("auto", "cpu", SHAPES, bench=bench, cache=tmp_path).name == "bf16"
    assert bench.calls == 1
    key = next(iter(json.loads((tmp_path / "precision.json").read_text())))
    (tmp_path / "precision.json").write_text(json.dumps({key: {"fp32_s": "x"}}))  # a bad entry: a miss
    assert R.resolve_precision("auto", "cpu", SHAPES, bench=Bench(1.0, 2.0), cache=tmp_path).name == "fp32"


def test_a_failing_bf16_run_means_fp32_and_is_not_cached(tmp_path):
    def broken(shapes):
        raise RuntimeError("expected scalar type Float but found BFloat16")

    p = R.resolve_precision("auto", "cpu", SHAPES, bench=broken, cache=tmp_path)
    assert p.name == "fp32" and "failed" in p.reason and "BFloat16" in p.reason
    assert not (tmp_path / "precision.json").exists()


def test_a_read_only_cache_still_decides(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert R.resolve_precision("auto", "cpu", SHAPES, bench=Bench(1.0, 0.5), cache=blocker / "sub").name == "bf16"


@pytest.mark.parametrize("supported, expect", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_gpu_uses_bf16_where_supported(monkeypatch, tmp_path, supported, expect):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    p = R.resolve_precision("auto", "cuda", SHAPES, bench=never, cache=tmp_path)
    assert p.name == expect and "GPU" in p.reason
    assert not (tmp_path / "precision.json").exists()


def test_explicit_precision_is_kept_and_bad_names_fail(tmp_path):
    for name in ("fp32", "bf16", "fp16"):
        p = R.resolve_precision(name, "cpu", SHAPES, where="--precision", bench=never, cache=tmp_path)
        assert p.name == name and p.reason == "set by --precision"
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        R.resolve_precision("float16", "cpu", SHAPES, bench=never, cache=tmp_path)


def test_autocast_contexts():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with R.Precision("bf16", "").autocast("cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with R.Precision("fp32", "").autocast("cpu"):
        assert (x @ w).dtype == torch.float32


def test_matmul_shapes_are_the_models_linear_layers():
    from dnalm.models.lm import DNALM
    from dnalm.train.demo import demo_config

    model = DNALM(demo_config().model)
    shapes = R.matmul_shapes(model, 64 * 256)
    layers = {(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert {(k, n) for _, k, n in shapes} == layers and len(shapes) == len(layers)
    assert {m for m, _, _ in shapes} == {R.MAX_BENCH_TOKENS}  # capped rows
    wide = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.Linear(4096, 1024))
    assert R.matmul_shapes(wide, 10**6)[0][0] == R.MIN_BENCH_TOKENS  # wide layers: fewer rows, bounded work
    assert R.matmul_shapes(wide, 8)[0][0] == 8


def test_time_bf16_stops_after_the_warm_ups_on_a_clear_slow_verdict(monkeypatch):
    monkeypatch.undo()  # conftest's stand-in for time_bf16

    class Clock:  # runtime.py's view of time: advanced only by the runs below
        now = 0.0

        @classmethod
        def perf_counter(cls):
            return cls.now

        thread_time = perf_counter

    monkeypatch.setattr(R, "time", Clock)
    calls = []

    def runner(fp32_cost, bf16_cost):
        def run(bf16):
            calls.append(bf16)
            Clock.now += bf16_cost if bf16 else fp32_cost
        return run

    assert R.time_bf16(runner(0.1, 2.0), budget_s=0.5) == pytest.approx((0.1, 2.0))  # emulated bf16: warm-ups decide
    assert calls == [False, True]
    calls.clear()
    assert R.time_bf16(runner(0.1, 0.1), budget_s=0.5) == pytest.approx((0.1, 0.1))  # alike: 3 interleaved repeats
    assert calls == [False, True, False, True, True, False, False, True]
    calls.clear()
    R.time_bf16(runner(0.001, 0.0009), budget_s=0.5)  # cheap passes: repeats until the budget (at most 30)
    assert len(calls) == 62


def test_the_real_benchmarks_run_and_leave_no_trace(monkeypatch):
    monkeypatch.undo()  # conftest's stand-in for time_bf16
    fp32_s, bf16_s = R.benchmark_bf16([(64, 16, 16)], budget_s=0.01)
    assert fp32_s > 0 and bf16_s > 0
    from dnalm.models.lm import DNALM

    model = DNALM(TransformerConfig(n_layer=1, d_model=16, n_head=2, max_len=66))
    torch.manual_seed(5)
    expect = torch.rand(3)
    torch.manual_seed(5)
    bench = R.model_step_bench(model, 16, 64, tokens=128)
    fp32_s, bf16_s = bench([(128, 16, 16)])
    assert fp32_s > 0 and bf16_s > 0 and bench.kind == "model step"
    assert torch.equal(torch.rand(3), expect)  # the RNG state is restored
    assert all(p.grad is None for p in model.parameters())  # and the gradients cleared


# -------------------------------------------------------------------------------------------- threads


@pytest.mark.parametrize("cores, busy, expect", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 6.0, 1), (1, 0.0, 1), (8, 2.2, 6), (8, 0.0, 8),
])
def test_default_threads_are_the_free_usable_cores(cores, busy, expect):
    t = R.choose_threads(None, cores=cores, busy=busy, environ={})
    assert t.n == expect and not t.explicit
    assert (("busy" in t.reason) == (expect < cores))


def test_explicit_threads_win():
    t = R.choose_threads(3, "--threads", cores=2, busy=2.0, environ={"OMP_NUM_THREADS": "1"})
    assert (t.n, t.explicit, t.reason) == (3, True, "set by --threads")
    t = R.choose_threads(None, cores=2, busy=0.0, environ={"OMP_NUM_THREADS": "1"})
    assert (t.n, t.explicit) == (1, True) and "OMP_NUM_THREADS" in t.reason
    assert R.choose_threads(None, cores=2, busy=0.0, environ={"OMP_NUM_THREADS": "x"}).n == 2  # unreadable: ignored


def cgroup(tmp_path, v2=None, v1=None):
    root = tmp_path / "cg"
    root.mkdir()
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return root


@pytest.mark.parametrize("v2, v1, expect", [
    (None, None, 4),                   # no cgroup files: the affinity
    ("max 100000", None, 4),           # v2, no quota
    ("150000 100000", None, 2),        # v2, 1.5 CPUs: 2 threads
    ("50000 100000", None, 1),         # half a CPU: still 1
    (None, (200000, 100000), 2),       # v1 quota
    (None, (-1, 100000), 4),           # v1, no quota
    ("800000 100000", None, 4),        # a quota above the affinity: the affinity
])
def test_usable_cores_from_affinity_and_cgroup(tmp_path, v2, v1, expect):
    assert R.usable_cores(lambda: {0, 1, 2, 3}, cgroup(tmp_path, v2, v1)) == expect


def test_busy_cores_reads_the_machine(tmp_path):
    assert R.busy_cores(0.01) >= 0.0
    stat = tmp_path / "stat"  # two CPUs: cpu0 half busy, cpu1 idle (user nice system idle iowait ...)
    stat.write_text("cpu  60 0 0 140 0 0 0 0 0 0\ncpu0 50 0 0 50 0 0 0 0 0 0\ncpu1 10 0 0 90 0 0 0 0 0 0\nintr 1\n")
    assert R._cpu_ticks(None, stat) == (60, 200)
    assert R._cpu_ticks({1}, stat) == (10, 100)  # only this process's CPUs count
    assert R._cpu_ticks(None, tmp_path / "missing") is None


def test_governor_halves_threads_when_steps_slow_down(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    g = R.ThreadGovernor(R.Threads(4, "", False), window=5, slowdown=1.8)
    messages = [g.step(t) for t in [3.0] * 5 + [1.0] * 5 + [1.1] * 5]  # warm-up window skipped, then a best
    assert not any(messages) and not calls
    messages = [g.step(2.5) for _ in range(5)]  # 2.5x slower: a neighbour took the cores
    assert messages[-1] and "4 -> 2" in messages[-1] and calls == [2] and g.n == 2
    for t in [2.0] * 10 + [5.0] * 5:  # at 2 threads: warm-up skipped, best 2.0, then 2.5x slower again
        message = g.step(t)
    assert "2 -> 1" in message and calls == [2, 1] and not g.active
    assert g.step(100.0) is None  # at one thread it stops


def test_governor_restarts_on_a_new_step_shape_and_leaves_explicit_threads(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    g = R.ThreadGovernor(R.Threads(2, "", False), window=2)
    for t, key in [(1, "a")] * 4 + [(5, "b")] * 4:  # longer windows later (a length schedule): not a slow-down
        assert g.step(t, key) is None
    assert not calls
    assert not R.ThreadGovernor(R.Threads(2, "set by train.threads", True)).active
    assert not R.ThreadGovernor(R.Threads(1, "", False)).active


# ------------------------------------------------------------------------------- config and the demo


def test_the_demo_never_hard_codes_a_precision():
    from dnalm.train.demo import demo_config

    assert demo_config().train.precision == "auto" and demo_config().train.threads is None
    demo_yaml = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert "precision" not in demo_yaml["train"] and "bf16" not in demo_yaml["train"]
    assert "threads" not in demo_yaml["train"]
    source = (REPO / "dnalm" / "train" / "demo.py").read_text()
    assert "precision=" not in source and "bf16=" not in source


def test_old_bf16_key_is_read_as_precision(capsys, tmp_path):
    base = {"model": {"family": "hyena", "n_layer": 1, "d_model": 32, "l_max": 130}}
    for old, new in ((True, "bf16"), (False, "fp32")):
        run = run_config_from_dict({**base, "train": {"bf16": old}})
        assert run.train.precision == new
        assert f"precision: {new}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="both set"):
        run_config_from_dict({**base, "train": {"bf16": True, "precision": "fp32"}})
    with pytest.raises(ConfigError, match="true or false"):
        run_config_from_dict({**base, "train": {"bf16": "yes"}})
    with pytest.raises(ConfigError, match="one of"):
        run_config_from_dict({**base, "train": {"precision": "half"}})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base))
    assert load_run_config(path, ["train.bf16=true"]).train.precision == "bf16"  # --set with the old key
    assert load_run_config(path, ["train.precision=fp16"]).train.precision == "fp16"


def test_training_uses_the_resolved_precision(tmp_path, monkeypatch):
    from dnalm.data.store import prepare
    from dnalm.train.trainer import train

    monkeypatch.setattr(R, "time_bf16", lambda run, budget_s=0.0: (1.0, 0.4))  # "native bf16"
    prepare([DATA / "phage_lambda.fa"], tmp_path / "store", val_fraction=0.1, test_fraction=0.05, progress=False)
    run = RunConfig(
        model=TransformerConfig(n_layer=1, d_model=32, n_head=2, max_len=130),
        data=DataConfig(store=str(tmp_path / "store"), seq_len=128),
        train=TrainConfig(steps=2, batch_size=2, eval_every=2, eval_tokens=512, log_every=1, ckpt_every=2),
        out_dir=str(tmp_path / "run"),
    )
    train(run, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    event = next(r for r in rows if r.get("event") == "runtime")
    assert event["precision"] == "bf16" and "0.40x" in event["precision_reason"]
    assert "own training step" in event["precision_reason"]
    assert event["threads"] == 1 and "OMP_NUM_THREADS" in event["threads_reason"]  # set by conftest


def test_inference_commands_take_precision_and_threads(tmp_path, capsys):
    from dnalm.cli import main

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\n" + "ACGT" * 40 + "\n")
    assert main(["score", "hyenadna-tiny-1k", "--fasta", str(fasta), "--precision", "bf16", "--threads", "1",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "precision: bf16 (set by --precision); threads: 1 (set by --threads)" in err
    assert main(["score", "hyenadna-tiny-1k", "--fasta", str(fasta), "--quiet"]) == 0
    assert "precision: fp32 (auto:" in capsys.readouterr().err  # conftest's benchmark: float32 wins
    for cmd in ("eval", "score", "score-variants", "essentiality", "dms", "embed"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "--precision" in text and "--threads" in text, cmd


def test_demo_verdict_is_honest():
    from dnalm.cli.run import demo_verdict

    def report(bpb, stopped):
        return {"bits_per_base": bpb, "markov_bits_per_base": {5: 1.94, 6: 1.934, 7: 1.95},
                "stopped_by_time_guard": stopped, "train_steps": 300 if stopped else 1400,
                "planned_steps": 1400, "wall_time_s": 540.0}

    assert "as promised" in demo_verdict(report(1.90, False), 9.0)
    short = demo_verdict(report(2.00, True), 9.0)
    assert "NOT the promised result" in short and "time guard (9 min) stopped training at step 300 of 1,400" in short
    assert "as promised" not in short and "dnalm demo" in short
    assert "NOT the promised result" in demo_verdict(report(1.925, False), 9.0)  # beats Markov, not by 0.02
    early_but_good = demo_verdict(report(1.90, True), 9.0)
    assert "time guard" in early_but_good and "as promised" not in early_but_good
