"""Stage 3 — thinking-mode fusion (Qwen3 report §4.3).

Continual SFT of the stage-2 model on a mix of thinking and non-thinking data, so one model thinks
or answers directly on request. Thinking data is rejection-sampled from the stage-2 model itself on
the stage-1 queries; non-thinking data spans direct answers to the same families, instruction
following, QA and rewriting (data_builders/fusion.py, fusion_answers.py, flags.py). `/think` and
`/no_think` sit in the user or the system message, the last one wins over several turns, and a
non-thinking answer keeps an empty think block, which is trained (it is inside the loss mask), so
the model learns to emit it.

The thinking budget needs no training: it emerges from fusion, and the generation engine applies it
at inference (`posttrain generate --thinking-budget N`).

`keep` splits the same data for the comparison the report's authors faced later (Qwen3-2507 shipped
separate Thinking and Instruct models): `think` trains on the thinking turns alone, `no_think` on the
non-thinking turns alone (the empty think block kept, as an instruct model answers); `split.yaml`
trains both from the stage-2 model beside the fused one.

`history` decides how earlier turns of a multi-turn sample look in training:
- `inference` (default): one example per assistant turn, the conversation before it rendered by the
  Qwen3 template exactly as at inference (earlier turns' reasoning dropped), loss on that turn;
- `training_template`: whole conversations through TRL's Qwen3 training template, assistant-only
  loss on every turn, earlier turns keeping their think blocks (which inference never shows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_builders.fusion import FusionData, build
from posttrain.core.context import StageContext
from posttrain.core.rundir import is_main_process, write_json
from posttrain.core.training import TrainOptions, sft

TRAINERS = {"train": "SFTConfig"}
REPORT_FILES = ("fusion_data.json", "fusion_turns.json")


@dataclass
class Config:
    data: FusionData = field(default_factory=FusionData)
    history: Literal["inference", "training_template"] = "inference"
    # the assistant turns trained on: all (fused), or one mode; `data_from: "@ID"`: train on that fusion
    # stage's conversations (the same examples). Added later: runs made before them still resume.
    keep: Literal["all", "think", "no_think"] = field(default="all", metadata={"added": True})
    data_from: str | None = field(default=None, metadata={"added": True})
    max_length: int = 1024
    train: TrainOptions = field(default_factory=lambda: TrainOptions(max_steps=60, learning_rate=2e-5))

    def __post_init__(self):
        if self.keep != "all" and self.history != "inference":
            raise ValueError(f"keep: {self.keep} needs history: inference (a whole conversation mixes the modes)")


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


def thinks(turn: dict) -> bool:
    """A thinking turn: its think block holds reasoning (a non-thinking turn's is empty)."""
    return bool((turn.get("reasoning_content") or "").strip())


def training_data(conversations, history: str, keep: str = "all"):
    """What SFT sees: whole conversations (`training_template`) or one example per turn (`inference`),
    the turns of one mode only with `keep`."""
    if history == "training_template":
        return conversations.select_columns(["messages"])
    rows = per_turn(conversations)
    return rows if keep == "all" else rows.filter(lambda r: thinks(r["completion"][0]) == (keep == "think"))


def shared_data(ctx: StageContext, ref: str):
    """Another fusion stage's conversations in this run (`@ID`), which must have been built."""
    from datasets import load_from_disk
    path = Path(ctx.resolve(ref)).parent / "data" / "train"
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"stages.{ctx.stage_id}.config.data_from: {ref} has no fusion data at {path} "
                                "(run that stage first)")
    return load_from_disk(str(path))


def run(ctx: StageContext, cfg: Config) -> dict:
    conversations = shared_data(ctx, cfg.data_from) if cfg.data_from else \
        ctx.dataset("train", lambda: build(ctx, cfg.data))
    data = training_data(conversations, cfg.history, cfg.keep)
    if is_main_process():
        write_json(ctx.dir / "fusion_turns.json", {"keep": cfg.keep, "examples": len(data),
                                                   "examples_seen": cfg.train.max_steps * cfg.train.batch_size
                                                   * cfg.train.grad_accum})
    return sft(ctx, data, cfg.train, where=f"stages.{ctx.stage_id}.config.train", max_length=cfg.max_length)
