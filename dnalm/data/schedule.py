"""The length schedule: sequence-length warm-up and staged context extension, in one small object.

A schedule is a list of stages ``(seq_len, batch_size, steps | tokens)``. The trainer asks it each step
which stage is in force; nothing else in the code knows about stages. A stage lasts ``steps`` optimizer
steps, or ``tokens`` training tokens (``seq_len * batch_size`` per step, so ``ceil(tokens / (seq_len *
batch_size))`` steps); the last stage continues forever, and its duration may be left out.

The stage is a pure function of the step, so resuming at step k gives the stage of step k (and every
rank agrees). ``state_dict`` records the stages so that resuming with a different schedule is caught.

``LengthSchedule.warmup`` builds HyenaDNA's warm-up: the length doubles from ``start_len`` to
``final_len`` while the batch halves, keeping tokens per step constant (e.g. 1k/256, 2k/128, ... 32k/8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dnalm.data.errors import DataError


@dataclass(frozen=True)
class Stage:
    """One stage: ``batch_size`` windows of ``seq_len`` per step, for ``steps`` steps or ``tokens`` tokens."""

    seq_len: int
    batch_size: int
    steps: int | None = None
    tokens: int | None = None

    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size

    def num_steps(self) -> int | None:
        """Steps this stage lasts (None = open-ended)."""
        if self.steps is not None:
            return self.steps
        if self.tokens is not None:
            return -(-self.tokens // self.tokens_per_step())
        return None


class LengthSchedule:
    """Stages of (sequence length, batch size) that the trainer queries each step."""

    def __init__(self, stages: Sequence[Stage]):
        if not stages:
            raise DataError("a length schedule needs at least one stage")
        for i, s in enumerate(stages):
            if s.seq_len < 1 or s.batch_size < 1:
                raise DataError(f"schedule stage {i}: seq_len and batch_size must be >= 1 (got {s})")
            if s.steps is not None and s.tokens is not None:
                raise DataError(f"schedule stage {i}: give steps or tokens, not both")
            if (s.steps is not None and s.steps < 1) or (s.tokens is not None and s.tokens < 1):
                raise DataError(f"schedule stage {i}: steps/tokens must be >= 1 (got {s})")
            if i < len(stages) - 1 and s.steps is None and s.tokens is None:
                raise DataError(f"schedule stage {i}: only the last stage may be open-ended (give steps or tokens)")
        self.stages = list(stages)
        # Cumulative end step of each stage (the last is open-ended).
        self._step_ends: list[int] = []
        steps = 0
        for s in self.stages[:-1]:
            steps += s.num_steps()  # type: ignore[operator]
            self._step_ends.append(steps)
        self._last_index = 0

    @classmethod
    def constant(cls, seq_len: int, batch_size: int) -> LengthSchedule:
        """One stage forever."""
        return cls([Stage(seq_len, batch_size)])

    @classmethod
    def warmup(cls, start_len: int, final_len: int, final_batch: int, steps_per_stage: int) -> LengthSchedule:
        """HyenaDNA warm-up: lengths start_len, 2*start_len, ..., final_len; the batch halves as the length
        doubles (tokens per step stay ``final_len * final_batch``); each stage but the last lasts
        ``steps_per_stage`` steps."""
        if start_len < 1 or final_len < start_len:
            raise DataError(f"warm-up needs 1 <= start_len <= final_len (got {start_len}, {final_len})")
        lengths = [start_len]
        while lengths[-1] < final_len:
            lengths.append(lengths[-1] * 2)
        if lengths[-1] != final_len:
            raise DataError(f"warm-up: final_len {final_len} must be start_len {start_len} times a power of 2")
        stages = []
        for i, length in enumerate(lengths):
            batch = final_batch * (final_len // length)
            last = i == len(lengths) - 1
            stages.append(Stage(length, batch, steps=None if last else steps_per_stage))
        return cls(stages)

    def stage_index(self, step: int, tokens_seen: int | None = None) -> int:
        """Index of the stage in force at ``step`` (0-based).

        The stage depends on the step alone: a stage given in tokens is converted to steps exactly
        (every step trains ``seq_len * batch_size`` tokens of the global batch). ``tokens_seen`` is
        accepted so trainers can pass their counter, but deliberately not used: counts of valid tokens,
        of one rank's share, or that skip bad steps would otherwise move the stage boundaries.
        """
        if step < 0:
            raise DataError(f"step must be >= 0 (got {step})")
        i = 0
        while i < len(self._step_ends) and step >= self._step_ends[i]:
            i += 1
        self._last_index = i
        return i

    def at(self, step: int, tokens_seen: int | None = None) -> Stage:
        """The stage in force at ``step`` (the last stage continues forever)."""
        return self.stages[self.stage_index(step, tokens_seen)]

    def max_seq_len(self) -> int:
        return max(s.seq_len for s in self.stages)

    def total_steps(self) -> int:
        """Steps before the last (open-ended) stage begins; 0 for a single stage."""
        return self._step_ends[-1] if self._step_ends else 0

    def state_dict(self) -> dict:
        """The stages and the stage last reported (JSON-able)."""
        return {"stages": [asdict(s) for s in self.stages], "stage_index": self._last_index}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Check that the saved schedule is this one (``strict``); a changed schedule would change the run."""
        saved = [Stage(**s) for s in state.get("stages", [])]
        if strict and saved != self.stages:
            raise DataError(
                f"the length schedule changed since the checkpoint (saved {saved}, now {self.stages}); "
                "start a new run, or resume with the saved schedule"
            )
        self._last_index = int(state.get("stage_index", 0))

    def __repr__(self) -> str:
        return f"LengthSchedule({self.stages})"
