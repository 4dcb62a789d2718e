"""Stage 4 — general RL (Qwen3 report §4.4).

One GRPO run over many task kinds at once, in five areas: instruction following, format following
(obey `/think` and `/no_think`, well-formed think tags), preference alignment, agent ability and
specialised scenarios (RAG faithfulness, tool-call format, language consistency), with the
reasoning families kept in the mix. Each kind (`data_builders/tasks.py`, `pipelines/tasks.yaml`)
brings its prompts and its rewards: rules, an LLM judge against a reference answer, or a
preference reward model; the `routed` reward sends every sample to its kind's rewards and logs
the mean reward per kind (`routed/<kind>/<reward>` in TensorBoard). The mode is set per prompt by
its flag. Held-out items of every kind are kept out of training for the evaluation.

`drop_prompts` applies stage 2's learnability rule (§4.2) to the mix: each prompt's group is sampled
once from the input model as GRPO samples it, and a prompt is dropped when every rollout scores in full
(`saturated`), or when all its rollouts score alike (`uniform`, the zero-advantage groups, unsolved ones
too). Off by default: measured on the demo, a single group of 4 is too small a sample to judge a prompt
by (README, "The demo").
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import rewards
from data_builders.agent import ENVIRONMENTS
from data_builders.rl_queries import eval_asks
from data_builders.tasks import build_mix, eval_items, load_tasks, rollout_rewards, routing_table
from posttrain.core.config import ExistingPath
from posttrain.core.context import StageContext
from posttrain.core.rundir import write_json
from posttrain.core.training import GRPOOptions, TrainOptions, grpo

log = logging.getLogger("posttrain.general_rl")

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
    # drop training prompts by one group of num_generations rollouts from the input model (module doc):
    # those it solves in full every time (saturated) or those whose rollouts all score alike (uniform)
    drop_prompts: Literal["none", "saturated", "uniform"] = field(default="none", metadata={"added": True})
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
    unasked = len(rows)
    selection = {}
    if cfg.drop_prompts != "none":
        rows, selection = select_prompts(ctx, cfg, kinds, rows)
    per_kind = Counter(r["task"] for r in rows)
    write_json(ctx.dir / "general_rl_data.json", {
        "examples": len(rows), "dropped_as_held_out": cfg.examples - len(mix),
        "dropped_as_eval": len(mix) - unasked,  # the pipeline's eval and ThinkFollow items
        **({f"dropped_as_{cfg.drop_prompts}": unasked - len(rows), "selection": selection} if selection else {}),
        "per_kind": dict(sorted(per_kind.items())),
        "areas": dict(Counter(kinds[r["task"]].area for r in rows)),
        "think_share": sum(r["mode"] == "think" for r in rows) / max(len(rows), 1),
        "rewards": {name: [e["name"] for e in k.rewards] for name, k in kinds.items()}})
    return Dataset.from_list(rows)


def select_prompts(ctx: StageContext, cfg: Config, kinds: dict, rows: list[dict]) -> tuple[list[dict], dict]:
    """The rows that a group of `num_generations` rollouts from the input model (GRPO's sampling
    settings) does not mark as `cfg.drop_prompts`, and per kind: candidates, kept, their mean reward."""
    reward = rewards.get("routed", table=routing_table(kinds, ctx.resolve, engines=ctx.engines))
    got = rollout_rewards(ctx.engines.get(ctx.input_model, batch_size=32), kinds, rows, reward, cfg.num_generations,
                          seed=ctx.seed, max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                          top_p=cfg.top_p, top_k=cfg.top_k)
    valid = [[s for s in scores if s is not None] for scores in got]
    keep = [len(set(v)) > 1 if cfg.drop_prompts == "uniform" else not v or min(v) < 1.0 for v in valid]
    stats: dict[str, dict] = {}
    for row, scores, kept in zip(rows, got, keep, strict=True):
        d = stats.setdefault(row["task"], {"candidates": 0, "kept": 0, "rewards": []})
        d["candidates"] += 1
        d["kept"] += kept
        d["rewards"] += [s for s in scores if s is not None]
    for name, d in stats.items():
        d["mean_reward"] = round(sum(d["rewards"]) / len(d["rewards"]), 3) if d["rewards"] else None
        del d["rewards"]
        log.info("%s: %s kept %d/%d prompts (mean reward %s)", ctx.stage_id, name, d["kept"], d["candidates"],
                 d["mean_reward"])
    if not any(keep):  # before anything is saved: a rerun samples again
        raise ValueError(f"{ctx.stage_id}: drop_prompts: {cfg.drop_prompts} leaves none of {len(rows)} prompts; "
                         "set drop_prompts: none or add kinds the input model has not saturated")
    return [r for r, k in zip(rows, keep, strict=True) if k], dict(sorted(stats.items()))


def run(ctx: StageContext, cfg: Config) -> dict:
    kinds = load_tasks(cfg.tasks)
    dataset = ctx.dataset("train", lambda: build(ctx, cfg))
    reward = rewards.get("routed", table=routing_table(kinds, ctx.resolve, engines=ctx.engines))
    # agent kinds: their tools run inside the rollouts (TRL's environment_factory, one per row)
    envs = {k.environment for k in kinds.values() if k.environment}
    extra = {"environment_factory": {e: ENVIRONMENTS[e] for e in envs | {"none"}}} if envs else {}
    return grpo(ctx, cfg, dataset, [reward], f"stages.{ctx.stage_id}.config.train", **extra)
