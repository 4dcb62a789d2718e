"""`tool_use`: an agent episode (data_builders/agent.py) — the final answer, and the calls it made.

Reads the episode's environment from the `environments` column (TRL's GRPOTrainer passes it when
it runs an `environment_factory`; `run_episodes` callers pass it the same way): its `calls` and
`failures` counters. Score = `answer_weight` x the `math` reward of the answer (the last boxed
value against `answer`) + (1 - `answer_weight`) x the share of calls that ran without error; an
episode with fewer than `min_calls` calls gets no credit for its calls. None without an environment.
"""

from __future__ import annotations

import rewards
from rewards.base import Reward, Row


class ToolUseReward(Reward):
    """Params: `answer_weight` (0.7), `min_calls` (1)."""

    name = "tool_use"
    on_error = 0.0

    def __init__(self, answer_weight: float = 0.7, min_calls: int = 1) -> None:
        super().__init__()
        if not 0.0 <= answer_weight <= 1.0:
            raise ValueError(f"tool_use: answer_weight must be within [0, 1], got {answer_weight}")
        self.answer_weight, self.min_calls = float(answer_weight), int(min_calls)

    def score(self, text: str, row: Row) -> float | None:
        env = row.get("environments")
        if env is None or not hasattr(env, "calls"):
            return None
        correct = rewards.get("math")([text], answer=[row.get("answer")])[0] or 0.0
        valid = (env.calls - env.failures) / env.calls if env.calls >= max(self.min_calls, 1) else 0.0
        return self.answer_weight * correct + (1 - self.answer_weight) * valid
