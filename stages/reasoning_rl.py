"""Stage 2 — reasoning RL (Qwen3 report §4.2).

Query–verifier pairs that stage 1 did not use, kept only if they are *learnable* for the stage-1
model (pass rate over k samples strictly inside a band, by default (0, 1)), trained with GRPO on
rule rewards. Large groups of rollouts per query, optional off-policy reuse (`num_iterations` > 1),
entropy kept from collapsing (TRL's entropy bonus, optionally adaptive), DAPO / Dr.GRPO losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import rewards
from data_builders.rl_queries import QuerySelection, select_queries
from posttrain.core.context import StageContext
from posttrain.core.training import GRPOOptions, grpo
from rewards.grading import GRADERS

TRAINERS = {"train": "GRPOConfig"}
REPORT_FILES = ("selection.json",)


@dataclass
class RewardSpec:
    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Config(GRPOOptions):
    """GRPO knobs (`GRPOOptions`: group size, loss, clip-higher, entropy, sampling, vLLM, `train`)
    plus where the queries come from and how they are rewarded."""

    queries: QuerySelection
    # rule rewards, routed per sample by its `task` column (default: each task kind's grader)
    rewards: dict[str, list[RewardSpec]] = field(default_factory=lambda: {
        task: [RewardSpec(GRADERS[task])] for task in ("math", "code", "countdown")})


def reward_function(cfg: Config):
    """One TRL reward function that routes each sample to its task's rule rewards."""
    table = {task: [{"name": r.name, "weight": r.weight, **({"params": r.params} if r.params else {})}
                    for r in specs] for task, specs in cfg.rewards.items()}
    return rewards.get("routed", table=table)


def run(ctx: StageContext, cfg: Config) -> dict:
    queries = ctx.dataset("train", lambda: select_queries(ctx, cfg.queries))
    return grpo(ctx, cfg, queries, [reward_function(cfg)], f"stages.{ctx.stage_id}.config.train")
