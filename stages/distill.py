"""Strong-to-weak distillation (Qwen3 report §4.5).

Off-policy: the teacher answers the prompts in both `/think` and `/no_think` modes; answers that
can be checked are kept only when correct; the student is fine-tuned on them (stage-3 style SFT),
with the synthetic families' worked solutions where `off_policy.traces` asks for them.
On-policy: the student samples (a random mode per prompt) and its logits are pulled towards the
teacher's on those samples — TRL's DistillationTrainer, reverse KL by default.

The stage's input model is the teacher unless `teacher` names another; `student` is a model dir,
`@STAGE_ID`, or a spec to build one: `layers=N` (N of the teacher's layers), `heads=H` and `mlp=M`
(width pruning: the H attention heads and M MLP neurons of each layer that do most on the teacher's
answers) or `scratch:layers=N,hidden=H`.
"""

from __future__ import annotations

import logging
import random
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from data_builders.rl_queries import DataSource, QuerySelection, candidates, unseen
from data_builders.synthetic import FAMILIES
from posttrain.core.chat import MODES, split_think, with_flag
from posttrain.core.context import StageContext
from posttrain.core.generation import GenerationEngine
from posttrain.core.generation.vllm import colocated_dtype
from posttrain.core.models import load_model, load_tokenizer, resolve_model
from posttrain.core.rundir import distributed, is_main_process
from posttrain.core.training import TrainOptions, finish, loss_in_autocast, rollouts_in_autocast, sft, train
from rewards.grading import sample_and_grade
from stages.sft import load_messages
from stages.student import build_student, calibration, student_spec

log = logging.getLogger(__name__)
DIVERGENCE_BETA = {"forward_kl": 0.0, "jsd": 0.5, "reverse_kl": 1.0}  # TRL's generalised-JSD beta
TRAINERS = {"off_policy.train": "SFTConfig", "on_policy.train": "DistillationConfig"}
REPORT_FILES = ("off_policy/metrics.json",)


@dataclass
class Prompts:
    families: dict[str, int] = field(default_factory=lambda: {"arithmetic": 64, "linear": 64})
    knobs: dict[str, dict] = field(default_factory=dict)
    data: DataSource | None = None
    seed: int = 5


@dataclass
class Traces:
    """Worked solutions of the synthetic families (their solvers' reasoning, checked by construction)."""
    families: dict[str, int] = field(default_factory=dict)
    knobs: dict[str, dict] = field(default_factory=dict)
    seed: int = 6


@dataclass
class OffPolicy:
    enabled: bool = True
    modes: list[Literal["think", "no_think"]] = field(default_factory=lambda: list(MODES))
    max_new_tokens: int = 256
    filter_by_reward: bool = True  # drop teacher answers that a rule reward grades wrong
    min_examples: int = 32  # stop when the filter keeps fewer (the teacher does not know the prompts)
    # solver traces trained on with the teacher's answers, in think mode (none by default): where the teacher
    # is right too seldom to teach a small student, its curriculum's correct solutions can (README, "The demo")
    traces: Traces = field(default_factory=Traces, metadata={"added": True})
    train: TrainOptions = field(default_factory=lambda: TrainOptions(max_steps=40, learning_rate=1e-4))


@dataclass
class OnPolicy:
    enabled: bool = True
    divergence: Literal["reverse_kl", "forward_kl", "jsd"] = "reverse_kl"
    think_fraction: float = 0.5  # share of prompts the student answers in think mode
    max_completion_length: int = 128
    temperature: float = 1.0
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    train: TrainOptions = field(default_factory=lambda: TrainOptions(max_steps=30, learning_rate=5e-5))


@dataclass
class Config:
    student: str = "layers=6"
    # more conversations to rank a width-pruned (`heads=H`, `mlp=M`) student's heads and neurons on, and refit
    # them, besides the teacher's answers: a messages file or dataset dir, or `@ID`, the training data of stage ID
    calibration: str | None = None
    teacher: str | None = None  # default: the stage's input model
    prompts: Prompts = field(default_factory=Prompts)
    off_policy: OffPolicy = field(default_factory=OffPolicy)
    on_policy: OnPolicy = field(default_factory=OnPolicy)


def teacher_outputs(ctx: StageContext, teacher: str, cfg: Config):
    """The teacher's answers in each mode, as SFT conversations carrying the mode flag."""
    from datasets import Dataset
    rows = list(prompt_set(ctx, cfg))
    engine = ctx.engines.get(teacher)
    out = []
    for mode in cfg.off_policy.modes:
        prompts = [with_flag(r["prompt"], mode) for r in rows]
        gen = dict(mode=mode, seed=ctx.seed, progress=True, max_new_tokens=cfg.off_policy.max_new_tokens)
        if cfg.off_policy.filter_by_reward:
            graded = sample_and_grade(engine, rows, prompts=prompts, **gen)
            texts, right = [c[0].text for c in graded.completions], graded.correct
        else:  # not graded at all: the prompts' tasks need no grader
            texts, right = [o[0].text for o in engine.generate(prompts, **gen)], [1] * len(rows)
        checkable = [bool(r.get("answer") or r.get("tests")) for r in rows]
        for prompt, text, ok, check in zip(prompts, texts, right, checkable, strict=True):
            if ok or not check:
                reasoning, answer = split_think(text)
                out.append({"messages": prompt + [{"role": "assistant", "content": answer,
                                                   "reasoning_content": reasoning or ""}], "mode": mode})
    total = len(rows) * len(cfg.off_policy.modes)
    log.info("off-policy: kept %d of %d teacher answers (%s)", len(out), total,
             ", ".join(f"{m} {sum(o['mode'] == m for o in out)}/{len(rows)}" for m in cfg.off_policy.modes))
    if len(out) < cfg.off_policy.min_examples:
        raise ValueError(f"{ctx.stage_id}: the reward filter kept {len(out)} of {total} answers of teacher {teacher}, "
                         f"fewer than off_policy.min_examples={cfg.off_policy.min_examples}: use a teacher that "
                         "knows these prompts (--teacher), or lower off_policy.min_examples")
    traces = solver_traces(ctx, cfg.off_policy.traces)
    ctx.write_metrics({"off_policy_examples": len(out), "off_policy_prompts": total, "off_policy_traces": len(traces)})
    return Dataset.from_list([{**o, "source": "teacher"} for o in out] + traces)


def solver_traces(ctx: StageContext, cfg: Traces) -> list[dict]:
    """The families' worked solutions as think-mode conversations, less any prompt the eval suites ask."""
    if not cfg.families:
        return []
    rows = unseen(ctx, candidates(QuerySelection(families=cfg.families, knobs=cfg.knobs, seed=cfg.seed)), [])[0]
    return [{"messages": with_flag(r["prompt"], "think") + [
        {"role": "assistant", "content": r["response"], "reasoning_content": r["reasoning"]}],
        "mode": "think", "source": "trace"} for r in rows]


def prompt_set(ctx: StageContext, cfg: Config):
    """The prompts, less any that the pipeline's eval suites ask."""
    pool = candidates(QuerySelection(families=cfg.prompts.families, knobs=cfg.prompts.knobs,
                                     data=cfg.prompts.data, seed=cfg.prompts.seed))
    return unseen(ctx, pool, [])[0]


def on_policy_prompts(ctx: StageContext, cfg: Config):
    """Prompts with a mode drawn per prompt, so the student samples in both modes: flagged, and
    rendered as the generation engine renders them for that mode (a no-think prompt ends with the
    empty think block). TRL then tokenizes the text as is, so student and teacher score what the
    evaluation samples; with the flag alone, whether a no-think sample thinks was left to the
    student's own flag-following, and the teacher scored that."""
    from datasets import Dataset
    engine, rng, rows = GenerationEngine(load_tokenizer(ctx.input_model)), random.Random(ctx.seed), []
    for r in prompt_set(ctx, cfg):
        mode = "think" if rng.random() < cfg.on_policy.think_fraction else "no_think"
        messages = with_flag(r["prompt"], mode)
        rows.append({"prompt": engine.tokenizer.decode(engine.render(messages, mode)), "messages": messages,
                     "mode": mode})
    return Dataset.from_list(rows)


def on_policy_trainer(ctx: StageContext, teacher: str, cfg: OnPolicy, prompts):
    """TRL's DistillationTrainer: the student (this phase's input) samples, and both models score
    the same prompt + completion ids (one tokenizer, one chat rendering: the student is built with
    the teacher's); the divergence is taken on completion tokens up to and including end-of-turn."""
    from trl import DistillationConfig, DistillationTrainer
    student, tokenizer = load_model(ctx.input_model, train=True)
    args = cfg.train.args(ctx, DistillationConfig, f"stages.{ctx.stage_id}.config.on_policy.train", "distill",
                          beta=DIVERGENCE_BETA[cfg.divergence], max_completion_length=cfg.max_completion_length,
                          temperature=cfg.temperature, use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode)
    teacher_model, _ = load_model(teacher, dtype=torch.bfloat16 if args.bf16 else torch.float32)  # the run's precision
    with colocated_dtype(args):
        trainer = DistillationTrainer(model=student, teacher_model=teacher_model, args=args, train_dataset=prompts,
                                      processing_class=tokenizer,
                                      peft_config=cfg.train.lora.peft_config() if cfg.train.lora else None)
    return loss_in_autocast(rollouts_in_autocast(trainer))


def on_policy(ctx: StageContext, teacher: str, cfg: OnPolicy, prompts) -> dict:
    trainer = on_policy_trainer(ctx, teacher, cfg, prompts)
    train(ctx, trainer)
    return finish(ctx, trainer, trainer.processing_class)


def calibration_data(ctx: StageContext, ref: str) -> list:
    """The conversations of the `calibration` key: a messages file or dir, or `@ID`'s training data."""
    path = Path(ctx.resolve(ref)).parent / "data" / "train" if ref.startswith("@") else Path(ref)
    if not path.exists():
        raise FileNotFoundError(f"stages.{ctx.stage_id}.config.calibration: {ref}: no training data at {path}")
    return list(load_messages(str(path))["messages"])


def make_student(ctx: StageContext, teacher: str, spec: str, conversations, extra: list) -> str:
    """The student, built from SPEC into student_init once (rank 0 first when launched); a width-pruned
    one (`heads=H`, `mlp=M`) keeps the heads and neurons that do most on CONVERSATIONS (the teacher's answers, or the
    prompts when the stage has no off-policy phase) and on the EXTRA calibration conversations."""
    init = ctx.dir / "student_init"
    state = distributed()
    with state.main_process_first() if state else nullcontext():
        if (init / "config.json").is_file():
            return str(init)
        ids = None
        if "mlp=" in spec or "heads=" in spec:
            ids = calibration(load_tokenizer(teacher), list(conversations) + extra)
        return str(build_student(teacher, spec, init, ids))


def run(ctx: StageContext, cfg: Config) -> dict:
    teacher = ctx.resolve(cfg.teacher) if cfg.teacher else ctx.input_model
    spec = ctx.resolve(cfg.student) if cfg.student.startswith("@") else cfg.student
    # a bad spec, calibration path or trace family fails now, not after the teacher's answers
    extra = calibration_data(ctx, cfg.calibration) if cfg.calibration else []
    if not (Path(spec) / "config.json").is_file():
        student_spec(resolve_model(teacher), spec)
    if unknown := sorted(set(cfg.off_policy.traces.families) - set(FAMILIES)):
        raise ValueError(f"stages.{ctx.stage_id}.config.off_policy.traces.families: unknown {unknown} "
                         f"(known: {', '.join(FAMILIES)})")
    if not (cfg.off_policy.enabled or cfg.on_policy.enabled):
        raise ValueError(f"stages.{ctx.stage_id}.config: off_policy and on_policy are both disabled; nothing to do")
    student, metrics = None, {}
    for name, phase in (("off_policy", cfg.off_policy), ("on_policy", cfg.on_policy)):
        if not phase.enabled:
            continue
        pctx = ctx.phase(name, student)
        if not pctx.is_complete():
            if name == "off_policy":
                data = pctx.dataset("train", lambda pctx=pctx: teacher_outputs(pctx, teacher, cfg))
                answers = data.filter(lambda r: r["source"] == "teacher") if "source" in data.column_names else data
                pctx.input_model = student or make_student(ctx, teacher, spec, answers["messages"], extra)
                metrics[name] = sft(pctx, data.select_columns(["messages"]), phase.train,
                                    where=f"stages.{ctx.stage_id}.config.off_policy.train")
            else:
                pctx.input_model = student or make_student(ctx, teacher, spec,
                                                           [r["prompt"] for r in prompt_set(ctx, cfg)], extra)
                prompts = pctx.dataset("prompts", lambda pctx=pctx: on_policy_prompts(pctx, cfg))
                metrics[name] = on_policy(pctx, teacher, phase, prompts)
            pctx.mark_complete({})
        student = str(pctx.model_dir)
    if is_main_process():
        shutil.copytree(student, ctx.model_dir, dirs_exist_ok=True)
    ctx.write_metrics({"phases": metrics})
    return metrics
