"""Stage 2 — reasoning RL (Qwen3 report §4.2).

Query–verifier pairs that stage 1 did not use, kept only if they are *learnable* for the stage-1
model (pass rate over k samples strictly inside a band, by default (0, 1)), trained with GRPO on
rule rewards. Large groups of rollouts per query, optional off-policy reuse (`num_iterations` > 1),
entropy kept from collapsing (TRL's entropy bonus, optionally adaptive), DAPO / Dr.GRPO losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from data_builders.rl_queries import QuerySelection, select_queries
from posttrain.chat import SAMPLING
from posttrain.rundir import StageContext
from posttrain.training import TrainOptions, finish, train


@dataclass
class RewardSpec:
    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    queries: QuerySelection
    # rule rewards, routed per sample by its `task` column
    rewards: dict[str, list[RewardSpec]] = field(default_factory=lambda: {
        "math": [RewardSpec("math")], "code": [RewardSpec("code")], "countdown": [RewardSpec("countdown")]})
    num_generations: int = 8  # rollouts per query (GRPO group size)
    max_completion_length: int = 256
    num_iterations: int = 1  # optimisation passes per generated batch (off-policy reuse)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    beta: float = 0.0  # KL to the reference model; 0 = none (no reference model kept)
    epsilon_high: float | None = 0.28  # DAPO clip-higher
    # rollouts sample as query selection and eval do (the report's thinking-mode settings), so the
    # pass rates that made a query "learnable" are the ones GRPO sees
    temperature: float = SAMPLING["think"]["temperature"]
    top_p: float = SAMPLING["think"]["top_p"]
    top_k: int = SAMPLING["think"]["top_k"]
    entropy_coef: float = 0.0
    use_adaptive_entropy: bool = False
    entropy_target: float = 0.2
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    train: TrainOptions = field(default_factory=lambda: TrainOptions(learning_rate=1e-6, batch_size=8))


def reward_function(cfg: Config):
    """One TRL reward function that routes each sample to its task's rule rewards."""
    import rewards
    table = {task: [{"name": r.name, "weight": r.weight, **({"params": r.params} if r.params else {})}
                    for r in specs] for task, specs in cfg.rewards.items()}
    return rewards.get("routed", table=table)


def run(ctx: StageContext, cfg: Config) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.models import load_model
    queries = ctx.dataset("train", lambda: select_queries(ctx, cfg.queries))
    if len(queries) == 0:
        raise RuntimeError(f"{ctx.stage_id}: no learnable query left (see {ctx.dir / 'selection.json'}); "
                           "widen queries.band or add harder/easier families")
    model, tokenizer = load_model(ctx.input_model, train=True)
    args = cfg.train.args(
        ctx, GRPOConfig, f"stages.{ctx.stage_id}.config.train",
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        num_iterations=cfg.num_iterations, loss_type=cfg.loss_type, beta=cfg.beta,
        epsilon_high=cfg.epsilon_high, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        entropy_coef=cfg.entropy_coef, use_adaptive_entropy=cfg.use_adaptive_entropy,
        entropy_target=cfg.entropy_target, use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode,
        mask_truncated_completions=False, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_function(cfg)], args=args,
                          train_dataset=queries, processing_class=tokenizer,
                          peft_config=cfg.train.lora.peft_config() if cfg.train.lora else None)
    train(ctx, trainer)
    return finish(ctx, trainer, tokenizer)
