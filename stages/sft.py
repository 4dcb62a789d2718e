"""Plain supervised fine-tuning on a conversation dataset (the building block of stages 1, 3, 5).

Data is any `messages` dataset (JSONL, parquet, or a `save_to_disk` dir); assistant turns may carry
`reasoning_content`, which the Qwen3 template renders inside the think block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_builders.sources import messages_problem, read
from posttrain.core.config import ExistingPath
from posttrain.core.context import StageContext
from posttrain.core.training import TrainOptions, sft

TRAINERS = {"train": "SFTConfig"}
REPORT_FILES = ()


@dataclass
class Config:
    data: ExistingPath  # a JSONL/JSON/parquet file or a saved dataset dir with a `messages` column
    max_length: int = 1024
    packing: bool = False
    train: TrainOptions = field(default_factory=TrainOptions)


def load_table(path: str):
    """A dataset from a JSONL/JSON/parquet file or a `save_to_disk` directory."""
    return read(Path(path), {".jsonl": "json", ".json": "json", ".parquet": "parquet"})


def load_messages(path: str):
    """The `messages` column, every row checked before any model loads."""
    ds = load_table(path)
    if "messages" not in ds.column_names:
        raise ValueError(f"data: {path}: no 'messages' column (has: {', '.join(ds.column_names)})")
    for i, messages in enumerate(ds["messages"]):
        problem = messages_problem(messages)
        if problem:
            raise ValueError(f"data: {path}: row {i}: column 'messages' {problem}")
    return ds.select_columns(["messages"])


def run(ctx: StageContext, cfg: Config) -> dict:
    data = ctx.dataset("train", lambda: load_messages(cfg.data))
    return sft(ctx, data, cfg.train, where=f"stages.{ctx.stage_id}.config.train",
               max_length=cfg.max_length, packing=cfg.packing)
