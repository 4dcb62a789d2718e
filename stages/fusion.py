"""Stage 3 — thinking-mode fusion (Qwen3 report §4.3).

Continual SFT of the stage-2 model on a mix of thinking and non-thinking data, so one model thinks
or answers directly on request. Thinking data is rejection-sampled from the stage-2 model itself on
the stage-1 queries; non-thinking data spans direct answers to the same families, instruction
following, QA and rewriting (data_builders/fusion.py, flags.py). `/think` and `/no_think` sit in the user or
the system message, the last one wins over several turns, and a non-thinking answer keeps an empty
think block, which is trained (it is inside the loss mask), so the model learns to emit it.

The thinking budget needs no training: it emerges from fusion, and the generation engine applies it
at inference (`posttrain generate --thinking-budget N`).

`history` decides how earlier turns of a multi-turn sample look in training:
- `inference` (default): one example per assistant turn, the conversation before it rendered by the
  Qwen3 template exactly as at inference (earlier turns' reasoning dropped), loss on that turn;
- `training_template`: whole conversations through TRL's Qwen3 training template, assistant-only
  loss on every turn, earlier turns keeping their think blocks (which inference never shows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_builders.fusion import FusionData, build
from posttrain.core.context import StageContext
from posttrain.core.training import TrainOptions, sft

TRAINERS = {"train": "SFTConfig"}
REPORT_FILES = ("fusion_data.json",)


@dataclass
class Config:
    data: FusionData = field(default_factory=FusionData)
    history: Literal["inference", "training_template"] = "inference"
    max_length: int = 1024
    train: TrainOptions = field(default_factory=lambda: TrainOptions(max_steps=60, learning_rate=2e-5))


def per_turn(conversations):
    """One prompt/completion example per assistant turn: the messages before it, and the turn. The
    history keeps tool calls and results, and the think blocks of a tool episode's earlier turns
    (the template shows those after the last user message, as an agent loop renders them)."""
    from datasets import Dataset
    rows = []
    for conv in conversations["messages"]:
        conv = [{k: v for k, v in m.items() if v is not None} for m in conv]  # a datasets column fills in None
        for i, message in enumerate(conv):
            if message["role"] == "assistant":
                rows.append({"prompt": conv[:i], "completion": [message]})
    return Dataset.from_list(rows)


def training_data(conversations, history: str):
    """What SFT sees: whole conversations (`training_template`) or one example per turn (`inference`)."""
    return conversations.select_columns(["messages"]) if history == "training_template" else per_turn(conversations)


def run(ctx: StageContext, cfg: Config) -> dict:
    conversations = ctx.dataset("train", lambda: build(ctx, cfg.data))
    return sft(ctx, training_data(conversations, cfg.history), cfg.train, where=f"stages.{ctx.stage_id}.config.train",
               max_length=cfg.max_length)
