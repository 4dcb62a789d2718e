"""Stage 1 — long-CoT cold start (Qwen3 report §4.1).

A data builder filters queries and rejection-samples responses (data_builders/cold_start.py); the
model is then fine-tuned on the surviving long-CoT conversations with assistant-only loss. The
report keeps both the sample count and the number of steps small: the goal is to seed reasoning
patterns, not to maximise the score before RL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_builders.cold_start import ColdStartData, build
from posttrain.core.context import StageContext
from posttrain.core.training import TrainOptions, sft

TRAINERS = {"train": "SFTConfig"}  # each TrainOptions field -> the TRL config its `trainer:` keys go to
REPORT_FILES = ("cold_start_data.json",)  # what the report shows of this stage's data


@dataclass
class Config:
    data: ColdStartData = field(default_factory=ColdStartData)
    max_length: int = 1024
    packing: bool = False
    train: TrainOptions = field(default_factory=lambda: TrainOptions(max_steps=60, learning_rate=5e-5))


def run(ctx: StageContext, cfg: Config) -> dict:
    dataset = ctx.dataset("train", lambda: build(ctx, cfg.data))
    return sft(ctx, dataset.select_columns(["messages"]), cfg.train, where=f"stages.{ctx.stage_id}.config.train",
               max_length=cfg.max_length, packing=cfg.packing)
