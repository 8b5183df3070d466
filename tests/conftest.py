"""Test-wide settings: the models here are tiny, so one CPU thread is fastest and deterministic.

``precision: auto`` (the default) would time bf16 against float32 and could pick either on a given
machine; tests run in float32 unless they ask otherwise: the benchmark is replaced by one where float32
wins, and measurements are cached in a temporary directory, never in the user's ~/.cache.
"""

import os
import tempfile

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # dnalm's thread choice honours it (and subprocesses inherit it)
os.environ.setdefault("DNALM_CACHE_DIR", tempfile.mkdtemp(prefix="dnalm-test-cache-"))


@pytest.fixture(autouse=True)
def _float32_wins(monkeypatch, tmp_path_factory):
    import dnalm.runtime

    monkeypatch.setattr(dnalm.runtime, "time_bf16", lambda run, budget_s=0.0: (1.0, 2.0))
    monkeypatch.setenv("DNALM_CACHE_DIR", str(tmp_path_factory.mktemp("dnalm-cache")))  # no decision leaks between tests

