"""Thin, shared wrappers over TRL trainers: options as dataclasses, resume, save with the chat format."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers.trainer_callback import ProgressCallback

from posttrain.core.callbacks import bar_only, curve_snapshots, rank_record, status_lines
from posttrain.core.chat import SAMPLING
from posttrain.core.config import check_trainer_overrides
from posttrain.core.context import StageContext
from posttrain.core.generation.hf import top_k_sampling
from posttrain.core.generation.vllm import colocated_dtype, release, use_reload_sync
from posttrain.core.models import load_model, residual_stream, save
from posttrain.core.rundir import distributed, wait_for_everyone

log = logging.getLogger("posttrain.core.training")
SHARDED = ("FSDP", "DEEPSPEED")  # accelerate's DistributedType members that shard the weights


@dataclass
class LoraOptions:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def peft_config(self, task_type: str = "CAUSAL_LM"):
        from peft import LoraConfig
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type=task_type)


# Rows per forward/backward by trainer, on CPU (issue 29; default model, 2 cores, bf16 autocast,
# `posttrain bench train`): on-policy distillation in pairs, 1.13x the tokens/s of whole batches of 8
# (its vocabulary-wide divergence dominates). SFT in fours since it scores with the model's own head
# (posttrain/core/model_head.py): a batch of 8 short rows of like length trains 1.2-1.6x faster whole or
# in fours than one row at a time, while 8 rows of 100-500 tokens padded whole are the slowest (README).
# GPUs, and the trainers not listed, take the whole batch at once.
CPU_MICRO_BATCH = {"sft": 4, "distill": 2}


def micro_batch(kind: str | None) -> int | None:
    """The default micro-batch size of trainer `kind` here (None: the whole batch)."""
    return None if torch.cuda.is_available() else CPU_MICRO_BATCH.get(kind)


@dataclass
class TrainOptions:
    """What most stages tune. Anything else TRL's config takes goes under `trainer:` (checked)."""

    max_steps: int = 50
    learning_rate: float = 2e-5
    batch_size: int = 8  # rows per device per optimizer step, times grad_accum
    grad_accum: int = 1
    # rows per forward/backward: each batch runs as micro-batches of this size, their gradients
    # accumulated (the same update: TRL's losses are normalised over the whole batch). None: the
    # trainer's default (`micro_batch`).
    micro_batch_size: int | None = None
    warmup_ratio: float = 0.0
    save_steps: int = 25
    lora: LoraOptions | None = None
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        micro = self.micro_batch_size
        if micro is not None and (micro < 1 or self.batch_size % micro):
            raise ValueError(f"micro_batch_size: {micro} does not divide batch_size {self.batch_size}")
        for name, ours in (("per_device_train_batch_size", "batch_size and micro_batch_size"),
                           ("gradient_accumulation_steps", "grad_accum")):
            if name in self.trainer:  # the batch shape is computed from ours: one place to set it
                raise ValueError(f"trainer: {name}: set {ours} instead")

    def args(self, ctx: StageContext, config_cls: type, where: str, kind: str | None = None, **stage_defaults: Any):
        """A TRL config object: run-dir defaults < stage defaults < the user's `trainer:` keys. `kind`
        names the trainer whose micro-batch default applies (`micro_batch`)."""
        check_trainer_overrides(config_cls, self.trainer, f"{where}.trainer")
        micro = self.micro_batch_size or math.gcd(self.batch_size, micro_batch(kind) or self.batch_size)
        kwargs = ctx.trainer_args(max_steps=self.max_steps, learning_rate=self.learning_rate,
                                  per_device_train_batch_size=micro,
                                  gradient_accumulation_steps=self.grad_accum * (self.batch_size // micro),
                                  warmup_steps=self.warmup_ratio, save_steps=self.save_steps)
        kwargs.update(stage_defaults)
        kwargs.update(self.trainer)
        return config_cls(**kwargs)


def finish(ctx: StageContext, trainer, tokenizer) -> dict[str, Any]:
    """Save the trained model (LoRA merged) with the chat format and return the train metrics.
    Launched on several processes: rank 0 saves; sharded weights (FSDP, ZeRO-3) are gathered by the
    trainer's own `save_model` (the model was given the chat format when it was loaded)."""
    state, model = distributed(), trainer.model
    if state is not None and state.distributed_type.name in SHARDED:
        trainer.save_model(str(ctx.model_dir))
        if state.is_main_process:
            tokenizer.save_pretrained(str(ctx.model_dir))
    elif state is None or state.is_main_process:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        save(model, tokenizer, ctx.model_dir)
    wait_for_everyone()
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {"global_step": trainer.state.global_step,
               "final_loss": history[-1]["loss"] if history else None}
    ctx.write_metrics({"train": metrics})
    return metrics


def train(ctx: StageContext, trainer) -> None:
    """Train, resuming from this stage's last checkpoint when a previous run was interrupted."""
    if trainer.pop_callback(ProgressCallback):
        trainer.add_callback(bar_only())
    trainer.add_callback(status_lines(ctx))
    if ctx.curve_points:
        trainer.add_callback(curve_snapshots(ctx))
    if trainer.args.world_size > 1:
        trainer.add_callback(rank_record(ctx))
    vllm = getattr(trainer.args, "use_vllm", False)
    if vllm:
        use_reload_sync(trainer)
    checkpoint = ctx.last_checkpoint()
    if checkpoint:
        log.warning("%s: resuming from %s", ctx.stage_id, checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    if vllm:
        release(trainer)


def rollouts_in_autocast(trainer):
    """Make an on-policy trainer (GRPO, distillation) sample its transformers rollouts as the
    generation engine decodes: under the trainer's mixed-precision autocast (TRL calls `generate`
    outside it, so a bf16 run would sample with float32 matmuls) with its residual stream and KV
    cache in bf16 as in the engine's bf16 model (`residual_stream`), and with the engine's
    top-k sampler (`top_k_sampling`). The float32 weights are untouched; the loss is recomputed from
    the sampled ids, so no sampled log-probability enters it (vLLM rollouts are left as they are)."""
    if getattr(trainer.args, "use_vllm", False):
        return trainer
    generate, model = trainer._generate, trainer.accelerator.unwrap_model(trainer.model)
    stream = torch.bfloat16 if trainer.args.bf16 else None

    def _generate(prompts):
        with (trainer.accelerator.autocast(), residual_stream(model, stream),
              top_k_sampling(model, trainer.generation_config)):
            return generate(prompts)
    trainer._generate = _generate
    return trainer


def loss_in_autocast(trainer):
    """Run a distillation trainer's loss under its mixed-precision autocast. TRL's DistillationTrainer
    computes it through `_forward_redirection`, which swaps out the model's `forward`, the very
    attribute accelerate wrapped in the autocast: a bf16 run otherwise trained the student in
    float32 matmuls (on the default model here, 9.5 s against 7.1 s per update of 8 rollouts)."""
    compute = trainer._compute_loss

    def _compute_loss(*args, **kwargs):
        with trainer.accelerator.autocast():
            return compute(*args, **kwargs)
    trainer._compute_loss = _compute_loss
    return trainer


def sft_trainer(ctx: StageContext, dataset, options: TrainOptions, where: str, max_length: int = 1024,
                packing: bool = False):
    """TRL's SFTTrainer on `dataset`, with the loss on what the assistant says.

    `messages` conversations: assistant-only loss; TRL swaps the Qwen3 template for its
    generation-tagged training variant, which renders every assistant turn with its think block
    (`<think>\\n\\n</think>\\n\\n` for non-thinking answers) inside the loss mask.
    `prompt`/`completion` conversations: completion-only loss, rendered by the model's own Qwen3
    template, so earlier turns look as they do at inference (their reasoning dropped).
    Packing is off by default: it is only correct with an attention kernel that respects the packed
    boundaries (e.g. flash attention); turn it on for GPU recipes. On CPU the loss comes from the
    model's own LM head (`ModelHeadSFTTrainer`), on GPUs from TRL's fused one.
    """
    from trl import SFTConfig

    from posttrain.core.model_head import ModelHeadSFTTrainer

    model, tokenizer = load_model(ctx.input_model, train=True)
    conversations = "messages" in dataset.column_names
    args = options.args(ctx, SFTConfig, where, "sft", assistant_only_loss=conversations,
                        completion_only_loss=None if conversations else True, max_length=max_length,
                        packing=packing, padding_free=packing, dataset_num_proc=None)
    return ModelHeadSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=options.lora.peft_config() if options.lora else None)


def sft(ctx: StageContext, dataset, options: TrainOptions, where: str, max_length: int = 1024,
        packing: bool = False) -> dict[str, Any]:
    """Supervised fine-tuning (`sft_trainer`), resumed if interrupted; saves the model."""
    trainer = sft_trainer(ctx, dataset, options, where, max_length, packing)
    train(ctx, trainer)
    return finish(ctx, trainer, trainer.processing_class)


@dataclass
class GRPOOptions:
    """TRL GRPO knobs shared by the RL stages (reasoning RL, general RL)."""

    num_generations: int = 8  # rollouts per query (GRPO group size)
    max_completion_length: int = 256
    num_iterations: int = 1  # optimisation passes per generated batch (off-policy reuse)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    beta: float = 0.0  # KL to the reference model; 0 = none (no reference model kept)
    epsilon_high: float | None = 0.28  # DAPO clip-higher
    # rollouts sample as query selection and eval do (the report's thinking-mode settings)
    temperature: float = SAMPLING["think"]["temperature"]
    top_p: float = SAMPLING["think"]["top_p"]
    top_k: int = SAMPLING["think"]["top_k"]
    entropy_coef: float = 0.0
    use_adaptive_entropy: bool = False
    entropy_target: float = 0.2
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    train: TrainOptions = field(default_factory=lambda: TrainOptions(learning_rate=1e-6, batch_size=8))
    # loss micro-batches of rows of like length, each forward cut to the columns its rows use
    # (posttrain/core/grpo_batches.py: the same update, tested; `posttrain bench train --kinds grpo
    # --arms ungrouped after`: 1.17x over the stage-4 shape's steps); false: TRL's shuffled split at
    # the generation batch's width
    length_grouped: bool = field(default=True, metadata={"added": True})


def grpo_trainer(ctx: StageContext, options: GRPOOptions, dataset, reward_funcs: list, where: str,
                 **trainer_kwargs: Any):
    """TRL's GRPOTrainer on `dataset` (conversational `prompt` + reward columns); `trainer_kwargs`
    go to the trainer (e.g. `environment_factory` for tools that run)."""
    from trl import GRPOConfig

    from posttrain.core.grpo_batches import LengthGroupedGRPOTrainer
    from posttrain.core.model_head import ModelHeadGRPOTrainer

    model, tokenizer = load_model(ctx.input_model, train=True)
    o = options
    args = o.train.args(
        ctx, GRPOConfig, where, num_generations=o.num_generations, max_completion_length=o.max_completion_length,
        num_iterations=o.num_iterations, loss_type=o.loss_type, beta=o.beta, epsilon_high=o.epsilon_high,
        temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, entropy_coef=o.entropy_coef,
        use_adaptive_entropy=o.use_adaptive_entropy, entropy_target=o.entropy_target, use_vllm=o.use_vllm,
        vllm_mode=o.vllm_mode, mask_truncated_completions=False, log_completions=False)
    per_step = args.generation_batch_size // o.num_generations
    if len(dataset) < per_step:  # TRL would run zero steps on a dataset shorter than one batch, silently
        raise ValueError(f"{ctx.stage_id}: {len(dataset)} training prompt(s), fewer than the {per_step} that one "
                         f"GRPO step samples ({where}.batch_size x steps per generation / num_generations): "
                         "give the stage more prompts or a smaller batch")
    trainer_class = LengthGroupedGRPOTrainer if o.length_grouped else ModelHeadGRPOTrainer
    with colocated_dtype(args):
        trainer = trainer_class(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                                processing_class=tokenizer,
                                peft_config=o.train.lora.peft_config() if o.train.lora else None, **trainer_kwargs)
    return rollouts_in_autocast(trainer)


def grpo(ctx: StageContext, options: GRPOOptions, dataset, reward_funcs: list, where: str,
         **trainer_kwargs: Any) -> dict[str, Any]:
    """GRPO (`grpo_trainer`), resumed if interrupted; saves the model."""
    trainer = grpo_trainer(ctx, options, dataset, reward_funcs, where, **trainer_kwargs)
    train(ctx, trainer)
    return finish(ctx, trainer, trainer.processing_class)
