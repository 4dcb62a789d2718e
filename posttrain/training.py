"""Thin, shared wrappers over TRL trainers: options as dataclasses, resume, save with the chat format."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from posttrain.config import check_trainer_overrides
from posttrain.rundir import StageContext

log = logging.getLogger("posttrain.training")


@dataclass
class LoraOptions:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def peft_config(self):
        from peft import LoraConfig
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type="CAUSAL_LM")


@dataclass
class TrainOptions:
    """What most stages tune. Anything else TRL's config takes goes under `trainer:` (checked)."""

    max_steps: int = 50
    learning_rate: float = 2e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    save_steps: int = 25
    lora: LoraOptions | None = None
    trainer: dict[str, Any] = field(default_factory=dict)

    def args(self, ctx: StageContext, config_cls: type, where: str, **stage_defaults: Any):
        """A TRL config object: run-dir defaults < stage defaults < the user's `trainer:` keys."""
        check_trainer_overrides(config_cls, self.trainer, f"{where}.trainer")
        kwargs = ctx.trainer_args(max_steps=self.max_steps, learning_rate=self.learning_rate,
                                  per_device_train_batch_size=self.batch_size,
                                  gradient_accumulation_steps=self.grad_accum,
                                  warmup_steps=self.warmup_ratio, save_steps=self.save_steps)
        kwargs.update(stage_defaults)
        kwargs.update(self.trainer)
        return config_cls(**kwargs)


def finish(ctx: StageContext, trainer, tokenizer) -> dict[str, Any]:
    """Save the trained model (LoRA merged) with the chat format and return the train metrics."""
    from posttrain.models import save
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    save(model, tokenizer, ctx.model_dir)
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {"global_step": trainer.state.global_step,
               "final_loss": history[-1]["loss"] if history else None}
    ctx.write_metrics({"train": metrics})
    return metrics


def train(ctx: StageContext, trainer) -> None:
    """Train, resuming from this stage's last checkpoint when a previous run was interrupted."""
    checkpoint = ctx.last_checkpoint()
    if checkpoint:
        log.warning("%s: resuming from %s", ctx.stage_id, checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)


def sft(ctx: StageContext, dataset, options: TrainOptions, where: str, max_length: int = 1024,
        packing: bool = False) -> dict[str, Any]:
    """Supervised fine-tuning with TRL's SFTTrainer, loss on what the assistant says.

    `messages` conversations: assistant-only loss; TRL swaps the Qwen3 template for its
    generation-tagged training variant, which renders every assistant turn with its think block
    (`<think>\\n\\n</think>\\n\\n` for non-thinking answers) inside the loss mask.
    `prompt`/`completion` conversations: completion-only loss, rendered by the model's own Qwen3
    template, so earlier turns look as they do at inference (their reasoning dropped).
    Packing is off by default: it is only correct with an attention kernel that respects the packed
    boundaries (e.g. flash attention); turn it on for GPU recipes.
    """
    from trl import SFTConfig, SFTTrainer

    from posttrain.models import load_model
    model, tokenizer = load_model(ctx.input_model, train=True)
    conversations = "messages" in dataset.column_names
    args = options.args(ctx, SFTConfig, where, assistant_only_loss=conversations,
                        completion_only_loss=None if conversations else True, max_length=max_length,
                        packing=packing, padding_free=packing, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=options.lora.peft_config() if options.lora else None)
    train(ctx, trainer)
    return finish(ctx, trainer, tokenizer)
