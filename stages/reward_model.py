"""A preference reward model (report §4.4, "model-based reward without reference answer").

TRL's RewardTrainer fits a one-logit sequence-classification head on `chosen`/`rejected` pairs
(with an optional `prompt`); the `preference` reward then scores responses with it. The stage's
input model is the backbone; its output dir is the reward model, so later stages name their input
explicitly (`model: "@previous_policy_stage"`) and the stage sets `eval: false`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_builders.pairs import PairsConfig, build_pairs
from posttrain.core.config import ExistingPath
from posttrain.core.context import StageContext
from posttrain.core.rundir import is_main_process, wait_for_everyone, write_json
from posttrain.core.training import TrainOptions, train
from rewards import get
from rewards.preference import reward_trainer
from stages.sft import load_table

TRAINERS = {"train": "RewardConfig"}
REPORT_FILES = ("pairs.json", "reward_model.json")


@dataclass
class Config:
    data: ExistingPath | None = None  # JSONL/parquet/saved dataset with `chosen`, `rejected` (+ optional `prompt`)
    pairs: PairsConfig | None = None  # or pairs built from task kinds' rules (data_builders/pairs.py)
    heldout_fraction: float = 0.1  # pairs kept aside to report ranking accuracy
    train: TrainOptions = field(default_factory=lambda: TrainOptions(max_steps=50, learning_rate=5e-5))

    def __post_init__(self):
        if (self.data is None) == (self.pairs is None):
            raise ValueError("give exactly one of `data` (a pairs file) or `pairs` (built from task kinds)")


def load_pairs(path: str):
    ds = load_table(path)
    missing = {"chosen", "rejected"} - set(ds.column_names)
    if missing:
        raise ValueError(f"data: {path}: missing column(s) {sorted(missing)} (has: {', '.join(ds.column_names)})")
    return ds


def _built(ctx: StageContext, cfg: PairsConfig):
    from datasets import Dataset
    pairs, stats = build_pairs(cfg, ctx.seed)
    write_json(ctx.dir / "pairs.json", {"pairs": len(pairs), **stats})
    return Dataset.from_list(pairs)


def pairs_split(ctx: StageContext, cfg: Config):
    """(training pairs, held-out pairs or None)."""
    pairs = ctx.dataset("train", lambda: load_pairs(cfg.data) if cfg.data else _built(ctx, cfg.pairs))
    split = pairs.train_test_split(test_size=cfg.heldout_fraction, seed=ctx.seed) if len(pairs) >= 10 else None
    return (split["train"], split["test"]) if split else (pairs, None)


def reward_model_trainer(ctx: StageContext, cfg: Config, pairs):
    """TRL's RewardTrainer on the input model as backbone."""
    from trl import RewardConfig
    args = cfg.train.args(ctx, RewardConfig, f"stages.{ctx.stage_id}.config.train", max_length=1024,
                          gradient_checkpointing=False)
    return reward_trainer(pairs, ctx.input_model, args,
                          peft_config=cfg.train.lora.peft_config(task_type="SEQ_CLS") if cfg.train.lora else None)


def run(ctx: StageContext, cfg: Config) -> dict:
    pairs_seen, held = pairs_split(ctx, cfg)
    trainer = reward_model_trainer(ctx, cfg, pairs_seen)
    train(ctx, trainer)  # resumes from the last checkpoint of an interrupted run
    if hasattr(trainer.model, "merge_and_unload"):  # LoRA: the reward model is saved merged, head included
        if is_main_process():
            trainer.model.merge_and_unload().save_pretrained(str(ctx.model_dir))
    else:
        trainer.save_model(str(ctx.model_dir))
    if is_main_process():
        trainer.processing_class.save_pretrained(str(ctx.model_dir))
    wait_for_everyone()
    metrics = {"pairs": len(pairs_seen), "global_step": trainer.state.global_step}
    if held is not None:
        score = get("preference", model=str(ctx.model_dir))
        cols = {"prompt": held["prompt"]} if "prompt" in held.column_names else {}
        chosen, rejected = score(held["chosen"], **cols), score(held["rejected"], **cols)
        metrics["heldout_accuracy"] = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held)
    if is_main_process():
        write_json(ctx.dir / "reward_model.json", metrics)
    ctx.write_metrics(metrics)
    return metrics
