"""Stage 4 — general RL (Qwen3 report §4.4).

One GRPO run over many task kinds at once, in five areas: instruction following, format following
(obey `/think` and `/no_think`, well-formed think tags), preference alignment, agent ability and
specialised scenarios (RAG faithfulness, tool-call format, language consistency), with the
reasoning families kept in the mix. Each kind (`data_builders/tasks.py`, `pipelines/tasks.yaml`)
brings its prompts and its rewards: rules, an LLM judge against a reference answer, or a
preference reward model; the `routed` reward sends every sample to its kind's rewards and logs
the mean reward per kind (`routed/<kind>/<reward>` in TensorBoard). The mode is set per prompt by
its flag. Held-out items of every kind are kept out of training for the evaluation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import rewards
from data_builders.agent import ENVIRONMENTS
from data_builders.rl_queries import eval_asks
from data_builders.tasks import build_mix, eval_items, load_tasks, routing_table
from posttrain.core.config import ExistingPath
from posttrain.core.context import StageContext
from posttrain.core.rundir import write_json
from posttrain.core.training import GRPOOptions, TrainOptions, grpo

TRAINERS = {"train": "GRPOConfig"}
REPORT_FILES = ("general_rl_data.json",)


@dataclass(kw_only=True)
class Config(GRPOOptions):
    """GRPO knobs (`GRPOOptions`) plus the task mix."""

    tasks: ExistingPath  # YAML with `tasks:` (see pipelines/tasks.yaml)
    examples: int = 400  # training prompts, split over the kinds by share
    held_out: int = 16  # per kind and mode: the evaluation's items, never trained on
    num_generations: int = 4
    max_completion_length: int = 192
    train: TrainOptions = field(default_factory=lambda: TrainOptions(max_steps=50, learning_rate=1e-6))

    def __post_init__(self):
        if self.examples < 1 or self.held_out < 0:
            raise ValueError(f"examples must be >= 1 and held_out >= 0, got {self.examples}, {self.held_out}")


def build(ctx: StageContext, cfg: Config):
    """The training prompts, with per-kind counts written next to them (`general_rl_data.json`)."""
    from datasets import Dataset
    kinds = load_tasks(cfg.tasks)
    held = eval_items(kinds, cfg.held_out, ctx.seed)
    mix, asked = build_mix(kinds, cfg.examples, ctx.seed, held_out=held), eval_asks(ctx)
    rows = [r for r in mix if not any(asked(m["content"]) for m in r["prompt"] if m["role"] == "user")]
    per_kind = Counter(r["task"] for r in rows)
    write_json(ctx.dir / "general_rl_data.json", {
        "examples": len(rows), "dropped_as_held_out": cfg.examples - len(mix),
        "dropped_as_eval": len(mix) - len(rows),  # the pipeline's eval and ThinkFollow items
        "per_kind": dict(sorted(per_kind.items())),
        "areas": dict(Counter(kinds[r["task"]].area for r in rows)),
        "think_share": sum(r["mode"] == "think" for r in rows) / max(len(rows), 1),
        "rewards": {name: [e["name"] for e in k.rewards] for name, k in kinds.items()}})
    return Dataset.from_list(rows)


def run(ctx: StageContext, cfg: Config) -> dict:
    kinds = load_tasks(cfg.tasks)
    dataset = ctx.dataset("train", lambda: build(ctx, cfg))
    reward = rewards.get("routed", table=routing_table(kinds, ctx.resolve, engines=ctx.engines))
    # agent kinds: their tools run inside the rollouts (TRL's environment_factory, one per row)
    envs = {k.environment for k in kinds.values() if k.environment}
    extra = {"environment_factory": {e: ENVIRONMENTS[e] for e in envs | {"none"}}} if envs else {}
    return grpo(ctx, cfg, dataset, [reward], f"stages.{ctx.stage_id}.config.train", **extra)
