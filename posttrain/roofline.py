"""`posttrain bench train`: each training kind measured against what this machine can do.

    posttrain bench train                      # the default model, every kind, before vs after
    posttrain bench train --kinds grpo --steps 3 --json runs/bench_train.json

It measures the machine's matmul peak (float32 and bfloat16), then times steps of SFT, GRPO (the
stage-4 shape: 8 prompts x 4 rollouts over the rule-rewarded task kinds, tool prompts included;
rollouts and update timed apart), on-policy distillation (the model as its own teacher), the reward
model, and the transformers generation engine. Each kind runs twice in the same call, in a fresh
process each (so peak memory is its own): `before`, the configuration up to issue 29 (float32
matmuls, activation checkpointing, one batch per GRPO step, a float32 engine), and `after`,
today's defaults (`--arms ungrouped after` isolates GRPO's length-grouped micro-batches). A step's
model FLOPs are ~6·N per trained token and ~2·N per generated token (N: `matmul_params`;
a teacher's forward adds 2·N_teacher); MFU is their rate as a share of the faster measured peak.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import resource
import statistics
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import SFTTrainer

from data_builders.agent import ENVIRONMENTS
from data_builders.pairs import PairsConfig
from data_builders.synthetic import generate
from data_builders.tasks import build_mix, load_tasks, routing_table
from posttrain.core.context import StageContext
from posttrain.core.generation.hf import TransformersEngine
from posttrain.core.models import fast_bf16, num_params
from posttrain.core.training import GRPOOptions, TrainOptions, grpo_trainer, sft_trainer
from rewards import get as get_reward
from stages import distill, reward_model

TASKS = str(Path(__file__).resolve().parents[1] / "pipelines" / "tasks.yaml")  # rule-rewarded kinds, tools included
KINDS = ("sft", "grpo", "distill", "reward_model", "generate")
# The configuration up to issue 29, as trainer overrides: float32 matmuls, activation checkpointing.
# `after` is today's defaults: bf16 autocast only where bf16 matmuls are native (`fast_bf16`).
BEFORE = {"bf16": False, "gradient_checkpointing": True}
GRPO_SHAPE = {"before": {"batch_size": 32, "grad_accum": 1},  # the 32 rollouts in one backward
              "after": {"batch_size": 8, "grad_accum": 4}}  # micro-batches of 8, one optimizer step
# the arms a bench can compare: `ungrouped` is `after` without GRPO's length-grouped micro-batches
# (TRL's split, each forward at the generation batch's width: `length_grouped: false`,
# posttrain/core/grpo_batches.py); `fused` is `after` with TRL's fused LM head where the model's own
# head replaced it (posttrain/core/model_head.py): SFT as it ran before (one row at a time) and GRPO's
# log-probabilities; other kinds as `after`
ARMS = ("before", "after", "ungrouped", "fused")


def matmul_peak(dtype: torch.dtype, largest: int = 2048, seconds: float = 1.0) -> dict[str, float]:
    """GFLOP/s of a square matmul in `dtype`, best of repeats over `seconds`, at the largest size up
    to `largest` whose product takes under 0.05 s (a CPU without native bf16 matmuls takes about a
    minute over one 2048x2048 product: its peak is read at a smaller size)."""
    n = 256
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        start = time.perf_counter()
        a @ b
        if n >= largest or time.perf_counter() - start > 0.05:
            break
        n *= 2
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return {"gflops": round(best, 1), "n": n}


class Meter(TrainerCallback):
    """Step times, tokens through the loss, and time inside rollouts (`_generate`) per step."""

    def __init__(self, trainer):
        self.steps, self.tokens, self.generated, self.rollout = [], [], [], []
        self._tokens = self._generated = self._rollout = 0.0
        for name, wrap in (("compute_loss", self._count), ("_generate", self._time)):
            if hasattr(trainer, name):
                setattr(trainer, name, wrap(getattr(trainer, name)))

    def _count(self, fn):
        def compute_loss(model, inputs, *a, **kw):
            masks = [inputs[k] for k in ("attention_mask", "prompt_mask", "completion_mask",
                                         "chosen_attention_mask", "rejected_attention_mask") if k in inputs]
            self._tokens += sum(int(m.sum()) for m in masks) if masks else inputs["input_ids"].numel()
            if "completion_mask" in inputs:
                self._generated += int(inputs["completion_mask"].sum())
            return fn(model, inputs, *a, **kw)
        return compute_loss

    def _time(self, fn):
        def timed(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self._rollout += time.perf_counter() - start
        return timed

    def on_step_begin(self, args, state, control, **kw):
        self._start, self._tokens, self._generated, self._rollout = time.perf_counter(), 0.0, 0.0, 0.0

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(time.perf_counter() - self._start)
        self.tokens.append(self._tokens)
        self.generated.append(self._generated)
        self.rollout.append(self._rollout)


class Profile(TrainerCallback):
    """`torch.profiler` over the last step: the ops that took its time, the largest first. Its step
    time includes the profiler's overhead: read it for where time goes, not for a ratio."""

    def __init__(self, last_step: int, rows: int):
        self.last, self.rows, self.top, self._prof = last_step, rows, [], None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.last - 1:
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._prof.__enter__()

    def on_step_end(self, args, state, control, **kw):
        if self._prof is not None and state.global_step == self.last:
            self._prof.__exit__(None, None, None)
            self.top = top_ops(self._prof, self.rows)


def top_ops(prof, rows: int) -> list[dict[str, Any]]:
    """The `rows` ops with the most self CPU time in a finished profile, with their share of it."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 2), "calls": e.count,
             "share": round(e.self_cpu_time_total / total, 3)} for e in events[:rows]]


def _options(arm: str, steps: int, before: dict[str, Any] = BEFORE, batch_size: int = 8, **shape: Any) -> TrainOptions:
    """`before`: the whole batch in one forward/backward, as up to issue 29; `fused`: one row at a time;
    `after`: the defaults."""
    return TrainOptions(max_steps=steps, save_steps=10_000, learning_rate=1e-5, batch_size=batch_size,
                        micro_batch_size={"before": batch_size, "fused": 1}.get(arm),
                        trainer=dict(before if arm == "before" else {}, report_to=[], disable_tqdm=True), **shape)


def _conversations(n: int):
    """SFT rows of varied length (~100-500 tokens): a question, a worked think block, an answer."""
    rows = generate("arithmetic", n, seed=7)
    out = []
    for i, (prompt, answer) in enumerate(zip(rows["prompt"], rows["answer"], strict=True)):
        steps = " ".join(f"Step {j}: carry the partial result forward and check it." for j in range(4 + 6 * (i % 7)))
        out.append({"messages": prompt + [{"role": "assistant", "content": f"The answer is {answer}.",
                                           "reasoning_content": steps}]})
    return Dataset.from_list(out)


def _trainer(kind: str, arm: str, ctx: StageContext, model: str, steps: int, new_tokens: int = 128):
    """The trainer each stage builds, on the bench's data."""
    if kind == "sft":
        trainer = sft_trainer(ctx, _conversations(8 * steps), _options(arm, steps, batch_size=8), "bench.sft")
        if arm in ("before", "fused"):  # TRL's own loss, through its fused LM head
            trainer.compute_loss = types.MethodType(SFTTrainer.compute_loss, trainer)
        return trainer
    if kind == "grpo":
        kinds = load_tasks(TASKS)
        rows = build_mix(kinds, 8 * steps, seed=0)
        routed = get_reward("routed", table=routing_table(kinds))
        envs = {k.environment for k in kinds.values() if k.environment} | {"none"}
        base = "before" if arm == "before" else "after"
        options = GRPOOptions(num_generations=4, max_completion_length=new_tokens,
                              length_grouped=arm in ("after", "fused"), train=_options(base, steps, **GRPO_SHAPE[base]))
        trainer = grpo_trainer(ctx, options, Dataset.from_list(rows), [routed], "bench.grpo",
                               environment_factory={e: ENVIRONMENTS[e] for e in envs})
        trainer.model_head = arm not in ("before", "fused")  # before: TRL's log-probabilities, its fused head
        return trainer
    if kind == "distill":
        cfg = distill.Config(on_policy=distill.OnPolicy(max_completion_length=new_tokens,
                                                        train=_options(arm, steps, batch_size=8)))
        return distill.on_policy_trainer(ctx, model, cfg.on_policy, distill.on_policy_prompts(ctx, cfg))
    if kind == "reward_model":
        cfg = reward_model.Config(pairs=PairsConfig(tasks=TASKS, n=16 * steps),
                                  train=_options(arm, steps, {"bf16": False}, batch_size=8))  # never recomputed
        return reward_model.reward_model_trainer(ctx, cfg, reward_model.pairs_split(ctx, cfg)[0])
    raise ValueError(f"unknown kind {kind!r}")


def matmul_params(model) -> int:
    """The parameters a token meets in matmuls (the N of 6·N): all but the input embedding table,
    whose rows are looked up, with the output head over the vocabulary counted (tied or not); a
    sequence-classification model (the reward model) has no such head."""
    table = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    return num_params(model) - table.numel() + (table.numel() if head is not None and head.weight is table else 0)


def _peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _measure(kind: str, arm: str, model: str, steps: int, peak: float, new_tokens: int,
             profile: int = 0) -> dict[str, Any]:
    """One kind, one arm, in this (fresh) process; `profile` > 0: also the top ops of an arm but before."""
    profile = profile if arm != "before" else 0
    if (arm == "ungrouped" and kind != "grpo") or (arm == "fused" and kind not in ("sft", "grpo")):
        arm = "after"
    if kind == "generate":
        # before: float32 under sdpa, the engine up to issue 29; after: the engine's defaults
        old = {"dtype": "float32", "attn_implementation": "sdpa"} if arm == "before" else {}
        engine = TransformersEngine.load(model, batch_size=16, **old)
        prompts = generate("arithmetic", 32, seed=123)["prompt"]
        engine.generate(prompts[:2], max_new_tokens=4, seed=0)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else \
                contextlib.nullcontext() as prof:
            start = time.perf_counter()
            outs = engine.generate(prompts, mode="think", max_new_tokens=new_tokens, seed=0)
            seconds = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for o in outs for c in o)
        n = matmul_params(engine.model)
        out = {"dtype": str(engine.model.dtype).removeprefix("torch."),
               "attention": engine.model.config._attn_implementation, "seconds": round(seconds, 2),
               "tokens_per_s": round(tokens / seconds, 1), "mfu": round(2 * n * tokens / seconds / 1e9 / peak, 4),
               "peak_memory_gb": round(_peak_memory_gb(), 2)}
        return {**out, "profile": top_ops(prof, profile)} if profile else out
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(stage_id=f"bench_{kind}", dir=Path(tmp) / kind, input_model=model, run_dir=Path(tmp))
        trainer = _trainer(kind, arm, ctx, model, steps, new_tokens)
        meter = Meter(trainer)
        trainer.add_callback(meter)
        profiler = Profile(steps, profile)
        if profile:
            trainer.add_callback(profiler)
        trainer.train()
    n = matmul_params(trainer.model)
    teacher = matmul_params(trainer.teacher_model) if getattr(trainer, "teacher_model", None) is not None else 0
    keep = slice(1, None) if len(meter.steps) > 1 else slice(None)  # the first step carries the warm-up
    step = statistics.median(meter.steps[keep])
    rollout = statistics.median(meter.rollout[keep])
    tokens, generated = statistics.median(meter.tokens[keep]), statistics.median(meter.generated[keep])
    # each step's own update time (step minus its rollouts), then their median: a median step minus
    # a median rollout can pair two different steps
    update = statistics.median(s - r for s, r in zip(meter.steps[keep], meter.rollout[keep], strict=True))
    out = {"trainer": type(trainer).__name__, "model_head": getattr(trainer, "model_head", None),  # GRPO's
           "bf16": trainer.args.bf16, "gradient_checkpointing": trainer.args.gradient_checkpointing,
           "batch": trainer.args.per_device_train_batch_size, "grad_accum": trainer.args.gradient_accumulation_steps,
           "step_s": round(step, 2), "steps_s": [round(s, 2) for s in meter.steps],
           "tokens_per_step": int(tokens), "train_tokens_per_s": round(tokens / max(update, 1e-9), 1),
           "mfu": round((6 * n + 2 * teacher) * tokens / max(update, 1e-9) / 1e9 / peak, 6),
           "peak_memory_gb": round(_peak_memory_gb(), 2)}
    if profile:
        out["profile"] = profiler.top
    if rollout:
        out.update(rollout_s=round(rollout, 2), update_s=round(update, 2),
                   rollouts_s=[round(r, 2) for r in meter.rollout],
                   rollout_tokens_per_s=round(generated / rollout, 1),
                   rollout_mfu=round(2 * n * generated / rollout / 1e9 / peak, 4))
    return out


def _child(queue, *args) -> None:
    try:
        queue.put(_measure(*args))
    except BaseException as err:  # noqa: BLE001 - reported by the parent as this arm's result
        queue.put({"error": f"{type(err).__name__}: {err}"})
        raise


def bench_train(model: str = "default", kinds: tuple[str, ...] = KINDS, steps: int = 3,
                new_tokens: int = 128, profile: int = 0, arms: tuple[str, str] = ("before", "after")) -> dict[str, Any]:
    """The roofline, then each kind in both `arms` (the baseline first), each arm in a fresh process."""
    if len(arms) != 2 or arms[0] == arms[1] or not set(arms) <= set(ARMS):
        raise ValueError(f"--arms: two different arms of {', '.join(ARMS)}, the baseline first; got {' '.join(arms)}")
    threads = torch.get_num_threads()
    sizes = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    peaks = {dtype: m["gflops"] for dtype, m in sizes.items()}
    results: dict[str, Any] = {"threads": threads, "peak_gflops": peaks, "peak_matmul_n": {
        dtype: m["n"] for dtype, m in sizes.items()}, "bf16_autocast": fast_bf16(), "arms": list(arms)}
    spawn = multiprocessing.get_context("spawn")
    for kind in kinds:
        results[kind] = {}
        for arm in arms:
            queue = spawn.Queue()
            proc = spawn.Process(target=_child, args=(queue, kind, arm, model, steps, max(peaks.values()),
                                                          new_tokens, profile))
            proc.start()
            results[kind][arm] = queue.get()
            proc.join()
        before, after = (results[kind][arm] for arm in arms)
        if "error" not in before and "error" not in after:
            key = "tokens_per_s" if kind == "generate" else "step_s"
            ratio = after[key] / before[key] if kind == "generate" else before[key] / after[key]
            results[kind]["speedup"] = round(ratio, 2)
    return results


def table(results: dict[str, Any]) -> str:
    """The printed roofline: one row per kind and arm."""
    peaks = results["peak_gflops"]
    lines = [f"matmul peak ({results['threads']} threads): float32 {peaks['float32']} GFLOP/s, "
             f"bfloat16 {peaks['bfloat16']} GFLOP/s; MFU is against the faster; bf16 autocast by default: "
             f"{'yes' if results['bf16_autocast'] else 'no (bf16 matmuls are not native here)'}",
             f"{'kind':<13}{'arm':<7}{'step s':>8}{'rollout s':>10}{'tokens/s':>10}{'MFU':>7}{'peak GB':>9}  speed-up"]
    arms = results.get("arms", ["before", "after"])
    for kind in KINDS:
        if kind not in results:
            continue
        for arm in arms:
            r = results[kind][arm]
            if "error" in r:
                lines.append(f"{kind:<13}{arm:<7}  failed: {r['error']}")
                continue
            step = r.get("step_s", r.get("seconds"))
            speed = r.get("train_tokens_per_s", r.get("tokens_per_s"))
            rollout = f"{r['rollout_s']:.2f}" if "rollout_s" in r else "-"
            mark = f"  {results[kind]['speedup']:.2f}x" if arm == arms[1] and "speedup" in results[kind] else ""
            lines.append(f"{kind:<13}{arm:<7}{step:>8.2f}{rollout:>10}{speed:>10.0f}{r['mfu']:>7.1%}"
                         f"{r['peak_memory_gb']:>9.2f}{mark}")
            lines += [f"    {op['share']:>6.1%} {op['self_s']:>7.2f} s  {op['op']} (x{op['calls']})"
                      for op in r.get("profile", [])]
    return "\n".join(lines)


def add_parser(kinds_parser) -> None:
    t = kinds_parser.add_parser("train", help="the roofline: matmul peak, then each training kind before/after")
    t.add_argument("--model", default="default")
    t.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    t.add_argument("--steps", type=int, default=3, help="steps per kind (the first, with its warm-up, left out)")
    t.add_argument("--max-new-tokens", type=int, default=128, help="rollout and generation length")
    t.add_argument("--json", help="also write the results here")
    t.add_argument("--arms", nargs=2, default=["before", "after"], choices=ARMS, metavar="ARM",
                   help="the baseline arm and the measured one (before: up to issue 29; after: today's "
                        "defaults; ungrouped: after without GRPO's length-grouped micro-batches; "
                        "fused: after with TRL's fused LM head: SFT one row at a time, GRPO's log-probabilities)")
    t.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile the last step of each arm but before: its N costliest ops (self CPU time)")

    def show(a):
        results = bench_train(a.model, tuple(a.kinds), a.steps, a.max_new_tokens, a.profile, tuple(a.arms))
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
        print(table(results))
    t.set_defaults(func=show)
