"""The length schedule: HyenaDNA's warm-up example (docs/architectures.md §1: 1k/256, 2k/128, ... 32k/8), stage boundaries
by steps and by tokens, and resuming."""

from __future__ import annotations

import json

import pytest

from dnalm.data.errors import DataError
from dnalm.data.schedule import LengthSchedule, Stage


def test_hyenadna_warmup_stages():
    sched = LengthSchedule.warmup(1024, 32768, final_batch=8, steps_per_stage=100)
    got = [(s.seq_len, s.batch_size) for s in sched.stages]
    assert got == [(1024, 256), (2048, 128), (4096, 64), (8192, 32), (16384, 16), (32768, 8)]
    assert {s.tokens_per_step() for s in sched.stages} == {32768 * 8}
    assert [sched.stage_index(k) for k in (0, 99, 100, 199, 200, 499, 500, 10**9)] == [0, 0, 1, 1, 2, 4, 5, 5]
    assert sched.at(10**9).seq_len == 32768  # the last stage continues forever
    assert sched.total_steps() == 500 and sched.max_seq_len() == 32768
    with pytest.raises(DataError, match="power of 2"):
        LengthSchedule.warmup(1000, 32768, 8, 10)


def test_token_stages_convert_to_steps():
    sched = LengthSchedule([Stage(8192, 4, tokens=100_000), Stage(16384, 2, steps=3), Stage(32768, 1)])
    # 100,000 tokens at 32,768 tokens per step = 3.05 -> 4 steps; then 3 steps; then forever.
    assert [sched.stage_index(k) for k in range(9)] == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    # A trainer's own token counter (here one rank's half of each batch) does not move the boundaries.
    for step in range(12):
        per_rank = sum(sched.at(k).tokens_per_step() // 2 for k in range(step))
        assert sched.stage_index(step, tokens_seen=per_rank) == sched.stage_index(step)


def test_constant_and_resume_checks():
    sched = LengthSchedule.constant(1024, 16)
    assert all(sched.at(k) == Stage(1024, 16) for k in (0, 5, 10**6))
    warm = LengthSchedule.warmup(256, 1024, 4, 10)
    warm.at(25)
    state = json.loads(json.dumps(warm.state_dict()))
    assert state["stage_index"] == 2
    again = LengthSchedule.warmup(256, 1024, 4, 10)
    again.load_state_dict(state)
    assert again.at(25) == warm.at(25)
    other = LengthSchedule.warmup(256, 1024, 4, 20)
    with pytest.raises(DataError, match="schedule changed"):
        other.load_state_dict(state)
    other.load_state_dict(state, strict=False)  # deliberately continue with a new schedule


@pytest.mark.parametrize(
    "stages, message",
    [
        ([], "at least one stage"),
        ([Stage(0, 4)], "must be >= 1"),
        ([Stage(128, 4, steps=2, tokens=10)], "not both"),
        ([Stage(128, 4), Stage(256, 2)], "only the last stage may be open-ended"),
        ([Stage(128, 4, steps=0)], "steps/tokens must be >= 1"),
    ],
)
def test_bad_schedules(stages, message):
    with pytest.raises(DataError, match=message):
        LengthSchedule(stages)
