"""Precision and CPU threads chosen for the machine this runs on.

**Precision** (``train.precision``, ``--precision``): ``fp32``, ``bf16`` or ``fp16`` autocast, or ``auto``.
``auto`` means bf16 on a GPU that supports it (float32 on other GPUs: the trainer has no fp16 loss
scaling). On a CPU it means bf16 only where bf16 autocast is measurably faster than float32: a
micro-benchmark (well under a second) times both ways, interleaved, and picks bf16 when it takes at most
``BF16_MARGIN`` of float32's time. Training times the model's own forward + backward on 4,096 tokens
(:func:`model_step_bench`); inference commands time forward + backward of the model's linear-layer shapes
(:func:`benchmark_bf16`). On CPUs with native
bf16 (AVX512-BF16, AMX) it can be; without them (AVX2-only x86, most ARM) PyTorch emulates bf16 and
autocast is several times slower than float32. The result is cached per machine, ISA setting, torch
version and shape set in ``~/.cache/dnalm/precision.json`` (``$DNALM_CACHE_DIR`` or ``$XDG_CACHE_HOME``
move it), so later runs decide in a millisecond. The choice is printed once, with its reason.

**Threads** (``train.threads``, ``--threads``; ``OMP_NUM_THREADS`` counts as an explicit choice too): the
default is the cores this process may use (its CPU affinity and cgroup quota) minus the cores other
processes keep busy when it starts (its CPUs' lines of /proc/stat, sampled for a fifth of a second). PyTorch's OpenMP threads
spin while they wait; when another process holds a core they wait a lot, and a 2-thread step can run 3-10x
slower than a 1-thread one. During training :class:`ThreadGovernor` watches the step time and halves the
threads when steps become much slower than they were (the machine got busy after the start).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPUTES = ("auto", "float32", "weights")  # how blocks holding half-precision weights compute (see half_compute)
PRECISION_COMPUTE = {"fp32": "float32", "bf16": "weights", "fp16": "weights", "auto": "auto"}  # --precision -> compute
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_MARGIN = 0.85  # auto picks bf16 on a CPU only when its time is at most this share of float32's
BENCH_BUDGET_S = 0.6  # wall-clock budget of the micro-benchmark (it stops early once it is)
MAX_BENCH_TOKENS = 2048  # rows of the benchmarked matmuls (enough for a stable ratio, fast to run) ...
MIN_BENCH_TOKENS = 256  # ... and at least this many, even for wide models
BENCH_FLOPS = 30_000_000  # multiply-adds of one forward pass over all shapes, below which rows are not cut
_printed: set[str] = set()


def say_once(message: str) -> None:
    """Print ``message`` to stderr the first time it is seen in this process."""
    if message not in _printed:
        _printed.add(message)
        print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ precision


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is fp32, bf16 or fp16, ``reason`` says why."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.name)

    def autocast(self, device_type: str):
        """The autocast context for this precision (a no-op context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def message(self) -> str:
        return f"precision: {self.name} ({self.reason})"


def cache_dir() -> Path:
    """Where dnalm keeps per-machine measurements: $DNALM_CACHE_DIR, else $XDG_CACHE_HOME/dnalm, else ~/.cache/dnalm."""
    if os.environ.get("DNALM_CACHE_DIR"):
        return Path(os.environ["DNALM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dnalm"


def machine_key() -> str:
    """This CPU (model name and feature flags), the ISA limits set in the environment, and torch's version."""
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = [os.environ.get(k, "") for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")]
    text = "|".join([cpu, hashlib.sha1(flags.encode()).hexdigest()[:12], *isa, torch.__version__])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def matmul_shapes(model: torch.nn.Module, tokens: int) -> list[tuple[int, int, int]]:
    """The distinct (rows, in, out) matmuls of ``model``'s linear layers for ``tokens`` tokens per step
    (rows capped so that the benchmark stays short)."""
    layers: list[tuple[int, int]] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and (m.in_features, m.out_features) not in layers:
            layers.append((m.in_features, m.out_features))
    layers = layers or [(128, 128)]
    # rows: the step's tokens, capped so that one pass stays near BENCH_FLOPS (wide models get fewer rows)
    per_row = sum(k * n for k, n in layers)
    rows = max(1, min(int(tokens), MAX_BENCH_TOKENS, max(MIN_BENCH_TOKENS, BENCH_FLOPS // per_row)))
    return [(rows, k, n) for k, n in layers]


def time_bf16(run: Callable[[bool], None], budget_s: float = BENCH_BUDGET_S) -> tuple[float, float]:
    """(float32 seconds, bf16 seconds) of ``run(bf16)``, in CPU time of the calling thread (robust to other
    processes on a busy machine; wall time decides the budget): one warm-up each, then the two interleaved (the
    order alternating), best of the repeats; at least 3 repeats, or 1 once the budget is spent and one is
    over twice as fast as the other, at most 30; none when the warm-ups alone spent the budget and differ
    by 2.5x or more."""
    t_start = time.perf_counter()

    def once(bf16: bool) -> float:  # this thread's CPU time: what other processes take does not count
        t0 = time.thread_time()
        run(bf16)
        return time.thread_time() - t0

    w32, w16 = once(False), once(True)  # warm-up: kernel selection, first-touch allocations
    if time.perf_counter() - t_start > budget_s and (w16 > 2.5 * w32 or w16 < 0.4 * w32):
        return w32, w16  # slow passes and a clear verdict already: no repeats (emulated bf16 is 3-40x slower)
    best = {False: math.inf, True: math.inf}
    for reps in range(1, 31):
        for bf16 in (reps % 2 == 0, reps % 2 == 1):
            best[bf16] = min(best[bf16], once(bf16))
        ratio = best[True] / max(best[False], 1e-12)
        over = time.perf_counter() - t_start > budget_s
        if over and (reps >= 3 or ratio > 2.0 or ratio < 0.5):
            break
    return best[False], best[True]


def benchmark_bf16(shapes: Sequence[tuple[int, int, int]], budget_s: float = BENCH_BUDGET_S) -> tuple[float, float]:
    """(float32 seconds, bf16-autocast seconds): forward + backward of ``F.linear`` over ``shapes``
    (:func:`time_bf16`). Used where no model step can be run (inference commands, sharded training)."""
    gen = torch.Generator().manual_seed(0)
    tensors = [
        (torch.randn(m, k, generator=gen, requires_grad=True), torch.randn(n, k, generator=gen, requires_grad=True))
        for m, k, n in shapes
    ]

    def run(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for x, w in tensors:
                torch.nn.functional.linear(x, w).float().sum().backward()

    return time_bf16(run, budget_s)


def model_step_bench(model: torch.nn.Module, vocab_size: int, seq_len: int, tokens: int = 4096):
    """A benchmark for :func:`resolve_precision` that times the model's own forward + backward on
    ``tokens`` random tokens (windows of at most ``seq_len``), float32 against bf16 autocast. Gradients
    are cleared afterwards and the RNG state is restored, so training continues as if it never ran."""

    def bench(shapes: Sequence[tuple[int, int, int]]) -> tuple[float, float]:
        length = max(1, min(seq_len, tokens))
        with torch.random.fork_rng(devices=[]):
            x = torch.randint(0, vocab_size, (max(1, tokens // length), length))

            def run(bf16: bool) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(x)
                getattr(out, "logits", out).float().mean().backward()

            try:
                return time_bf16(run)
            finally:
                model.zero_grad(set_to_none=True)

    bench.kind = "model step"  # type: ignore[attr-defined]
    return bench


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measure again next time


def resolve_precision(
    requested: str,
    device: torch.device | str = "cpu",
    shapes: Sequence[tuple[int, int, int]] | None = None,
    *,
    where: str = "train.precision",
    bench: Callable[[Sequence[tuple[int, int, int]]], tuple[float, float]] | None = None,
    cache: Path | None = None,
) -> Precision:
    """Turn ``requested`` (auto, fp32, bf16, fp16) into a :class:`Precision` for ``device``; ``shapes`` are
    the model's matmuls (:func:`matmul_shapes`), used by ``auto`` on a CPU: ``bench`` (default
    :func:`benchmark_bf16`; the trainer passes :func:`model_step_bench`) measures, unless the cache knows."""
    if requested not in PRECISIONS:
        raise ValueError(f"{where} must be one of {', '.join(PRECISIONS)} (got {requested!r})")
    device = torch.device(device)
    if requested != "auto":
        return Precision(requested, f"set by {where}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "auto: this GPU supports bf16")
        return Precision("fp32", "auto: this GPU has no bf16, and fp16 training would need loss scaling")
    if device.type != "cpu":
        return Precision("fp32", f"auto: float32 on {device.type}")
    shapes = [tuple(int(v) for v in s) for s in (shapes or [(MAX_BENCH_TOKENS, 128, 128)])]
    kind = getattr(bench, "kind", "matmuls")
    key = f"{machine_key()}:{hashlib.sha1(repr((kind, sorted(shapes))).encode()).hexdigest()[:12]}"
    path = (cache or cache_dir()) / "precision.json"
    data = _read_cache(path)
    hit = data.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("fp32_s"), (int, float)) and isinstance(hit.get("bf16_s"), (int, float)):
        fp32_s, bf16_s, measured = float(hit["fp32_s"]), float(hit["bf16_s"]), f"measured earlier, cached in {path}"
    else:
        try:
            fp32_s, bf16_s = (bench or benchmark_bf16)(shapes)
        except Exception as e:  # bf16 autocast not supported by some op of this model: float32, measured next time again
            return Precision("fp32", f"auto: bf16 autocast failed on this model ({type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:120]})")
        data[key] = {"fp32_s": fp32_s, "bf16_s": bf16_s, "torch": torch.__version__, "shapes": [list(s) for s in shapes], "kind": kind,
                     "threads": torch.get_num_threads(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        _write_cache(path, data)
        measured = f"measured now on the model's {'own training step' if kind == 'model step' else 'matmul shapes'}"
    ratio = bf16_s / max(fp32_s, 1e-12)
    if ratio <= BF16_MARGIN:
        return Precision("bf16", f"auto: bf16 autocast takes {ratio:.2f}x the float32 time on this CPU; {measured}")
    return Precision("fp32", f"auto: bf16 autocast takes {ratio:.2f}x the float32 time on this CPU "
                             f"(not measurably faster); {measured}")


# ----------------------------------------------------------------------- half-precision weights (bf16 as released)


def fast_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX, with PyTorch dispatching its AVX512
    kernels and oneDNN not capped below them); elsewhere bf16 is emulated and float32 is faster."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and not isa.startswith(("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")):
        return False
    return _cpu_has_bf16()


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


_COMPUTE: contextvars.ContextVar[str | None] = contextvars.ContextVar("dnalm_compute", default=None)


@contextlib.contextmanager
def computing(compute: str | None):
    """Inside the context, every model holding half-precision weights computes as ``compute`` says (one of
    :data:`COMPUTES`; None leaves each model's own setting): the command line's ``--precision`` sets it."""
    if compute is not None and compute not in COMPUTES:
        raise ValueError(f"compute must be one of {', '.join(COMPUTES)} (got {compute!r})")
    token = _COMPUTE.set(compute)
    try:
        yield
    finally:
        _COMPUTE.reset(token)


def half_compute(requested: str = "auto", device_type: str = "cpu", ambient: bool = True) -> str:
    """How a block whose weights are stored in bf16/fp16 computes: "float32" (its weights converted to
    float32 for its pass, one block at a time) or "weights" (in their dtype). ``requested`` (a model's own
    setting) is overridden by :func:`computing` when ``ambient``; "auto" is "weights" where this CPU is fast
    in bf16 (:func:`fast_bf16`) or on an accelerator, "float32" elsewhere."""
    mode = (_COMPUTE.get() if ambient else None) or requested
    if mode not in COMPUTES:
        raise ValueError(f"compute must be one of {', '.join(COMPUTES)} (got {mode!r})")
    if mode == "auto":
        return "weights" if device_type != "cpu" or fast_bf16() else "float32"
    return mode


# -------------------------------------------------------------------------------------------- threads


def usable_cores(affinity: Callable[[], Iterable[int]] | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (v2 cpu.max or v1 cfs)."""
    try:
        n = len(set((affinity or (lambda: os.sched_getaffinity(0)))()))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota, or None when there is none (or it cannot be read)."""
    try:
        parts = (root / "cpu.max").read_text().split()
        if parts and parts[0] != "max":
            return int(parts[0]) / int(parts[1] if len(parts) > 1 else 100000)
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _cpu_ticks(cpus: set[int] | None = None, stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over ``cpus`` (all CPUs if None) from /proc/stat, or None off Linux."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        try:
            fields = [int(v) for v in rest.split()]
        except ValueError:
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        t = sum(fields[:8])  # guest time is already counted in user
        busy, total = busy + t - idle, total + t
    return (busy, total) if total else None


def busy_cores(sample_s: float = 0.2, cpus: set[int] | None = None) -> float:
    """How many of this process's CPUs (its affinity) other processes keep busy now: /proc/stat sampled
    for ``sample_s`` seconds while this process sleeps; off Linux, the 1-minute load average."""
    if cpus is None:
        try:
            cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = None
    a = _cpu_ticks(cpus)
    if a is not None:
        time.sleep(sample_s)
        b = _cpu_ticks(cpus)
        if b is not None and b[1] > a[1]:
            n = len(cpus) if cpus else (os.cpu_count() or 1)
            return n * (b[0] - a[0]) / (b[1] - a[1])
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


@dataclass(frozen=True)
class Threads:
    """A thread count and why."""

    n: int
    reason: str
    explicit: bool  # set by the user (config, flag, OMP_NUM_THREADS): never changed by the governor

    def message(self) -> str:
        return f"threads: {self.n} ({self.reason})"


def choose_threads(
    requested: int | None = None,
    where: str = "train.threads",
    *,
    cores: int | None = None,
    busy: float | None = None,
    environ: dict | None = None,
) -> Threads:
    """The CPU threads to use: ``requested`` if given, else OMP_NUM_THREADS if set, else the usable cores
    minus the cores visibly busy with other work (at least 1)."""
    env = os.environ if environ is None else environ
    if requested:
        return Threads(int(requested), f"set by {where}", True)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return Threads(int(omp), "set by OMP_NUM_THREADS", True)
    cores = usable_cores() if cores is None else cores
    if busy is None:
        try:
            n_cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n_cpus = os.cpu_count() or 1
        busy = busy_cores() * min(1.0, cores / max(1, n_cpus))  # a cgroup quota below the affinity: its share
    else:
        busy = float(busy)
    n = max(1, min(cores, int(math.floor(cores - busy + 0.5))))
    if n < cores:
        reason = f"{cores} usable cores, about {busy:.1f} busy with other work"
    else:
        reason = f"{cores} usable core{'s' if cores > 1 else ''}, idle"
    return Threads(n, reason, False)


def apply_threads(threads: Threads) -> None:
    if threads.n != torch.get_num_threads():
        torch.set_num_threads(threads.n)


class ThreadGovernor:
    """Halve the threads when training steps become much slower than the best seen so far.

    Step times are grouped in windows of ``window`` steps (the first window is skipped: warm-up); when a
    window's median is over ``slowdown`` times the best window median at the current thread count, the
    OpenMP threads are likely waiting on cores someone else took, and fewer threads do the same work sooner.
    """

    def __init__(self, threads: Threads, window: int = 10, slowdown: float = 1.8):
        self.n = threads.n
        self.active = not threads.explicit and threads.n > 1
        self.window, self.slowdown = window, slowdown
        self.times: list[float] = []
        self.best: float | None = None
        self.skipped_first = False
        self.key: object = None

    def step(self, seconds: float, key: object = None) -> str | None:
        """Record one step's wall time; ``key`` names the step's shape (a new one restarts the comparison).
        Returns a message when the thread count was changed."""
        if not self.active:
            return None
        if key != self.key:
            self.key, self.times, self.best, self.skipped_first = key, [], None, False
        self.times.append(seconds)
        if len(self.times) < self.window:
            return None
        med = sorted(self.times)[len(self.times) // 2]
        self.times = []
        if not self.skipped_first:
            self.skipped_first = True
            return None
        if self.best is None or med < self.best:
            self.best = med
            return None
        if med > self.slowdown * self.best:
            old, self.n, ratio = self.n, max(1, self.n // 2), med / self.best
            torch.set_num_threads(self.n)
            self.best, self.skipped_first = None, False
            self.active = self.n > 1
            return f"threads: {old} -> {self.n} (steps became {ratio:.1f}x slower than before: the machine is busy)"
        return None
