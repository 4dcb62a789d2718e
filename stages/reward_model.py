"""A preference reward model (report §4.4, "model-based reward without reference answer").

TRL's RewardTrainer fits a one-logit sequence-classification head on `chosen`/`rejected` pairs
(with an optional `prompt`); the `preference` reward then scores responses with it. The stage's
input model is the backbone; its output dir is the reward model, so later stages name their input
explicitly (`model: "@previous_policy_stage"`) and the stage sets `eval: false`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_builders.pairs import PairsConfig, build_pairs
from posttrain import training
from posttrain.config import ExistingPath
from posttrain.rundir import StageContext, is_main_process, wait_for_everyone, write_json
from posttrain.training import TrainOptions


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
    from stages.sft import load_table
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


def run(ctx: StageContext, cfg: Config) -> dict:
    from rewards import get
    from rewards.preference import reward_trainer
    pairs = ctx.dataset("train", lambda: load_pairs(cfg.data) if cfg.data else _built(ctx, cfg.pairs))
    split = pairs.train_test_split(test_size=cfg.heldout_fraction, seed=ctx.seed) if len(pairs) >= 10 else None
    train = split["train"] if split else pairs
    overrides = ctx.trainer_args(max_steps=cfg.train.max_steps, learning_rate=cfg.train.learning_rate,
                                 per_device_train_batch_size=cfg.train.batch_size,
                                 gradient_accumulation_steps=cfg.train.grad_accum, save_steps=cfg.train.save_steps,
                                 **cfg.train.trainer)
    trainer = reward_trainer(train, ctx.input_model, **overrides)
    training.train(ctx, trainer)  # resumes from the last checkpoint of an interrupted run
    trainer.save_model(str(ctx.model_dir))
    if is_main_process():
        trainer.processing_class.save_pretrained(str(ctx.model_dir))
    wait_for_everyone()
    metrics = {"pairs": len(train), "global_step": trainer.state.global_step}
    if split:
        held = split["test"]
        score = get("preference", model=str(ctx.model_dir))
        cols = {"prompt": held["prompt"]} if "prompt" in held.column_names else {}
        chosen, rejected = score(held["chosen"], **cols), score(held["rejected"], **cols)
        metrics["heldout_accuracy"] = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held)
    if is_main_process():
        write_json(ctx.dir / "reward_model.json", metrics)
    ctx.write_metrics(metrics)
    return metrics
