"""`posttrain bench`: throughput measured as ratios against a baseline in the same run.

    posttrain bench generate --model default --prompts 16 --batch-size 16 --max-new-tokens 64
    posttrain bench generate --baseline sampling --prompts 64 --batch-size 64 --max-new-tokens 96
    posttrain bench generate --backend vllm --prompts 32 --max-new-tokens 128
    posttrain bench grpo --paths transformers paged vllm
    posttrain bench student --teacher runs/X/05_general_rl/model --data runs/X/06_off_policy/off_policy/data/train

`generate` compares batched sampling (the engine's default path) with one-prompt-at-a-time sampling,
or (`--baseline sampling`) the engine's top-k sampler with transformers' own sampling, batched alike;
with `--backend vllm` it compares the vLLM engine (bf16 eager, bf16 compiled, float32 eager: start
time and tokens/s) with the transformers engine on the same prompts and sampling settings. `grpo`
times GRPO steps of TRL's GRPOTrainer with each rollout path (transformers `generate`, TRL's paged
transformers generation, colocated vLLM) on the same prompts. `student` scores student constructions
(which teacher layers a student keeps) by the NLL of the teacher's answers against the teacher's own.
The last line printed is the headline ratio.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

import torch

from data_builders.synthetic import generate
from posttrain import roofline
from posttrain.core.chat import TRAINING_CHAT_TEMPLATE
from posttrain.core.generation import EnginePool
from posttrain.core.generation.vllm import colocated_dtype, cpu_dtype, on_cpu, release, use_reload_sync
from posttrain.core.models import load_model, load_tokenizer, params_on_disk, resolve_model
from rewards import get as get_reward
from stages.sft import load_messages
from stages.student import build_student, calibration


def _prompts(n: int):
    return generate("arithmetic", n, seed=123)["prompt"]


def _throughput(engine, rows, max_new_tokens: int) -> dict:
    engine.generate(rows[:1], max_new_tokens=4, seed=0)  # warm-up
    start = time.perf_counter()
    outs = engine.generate(rows, mode="think", max_new_tokens=max_new_tokens, seed=0)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outs for c in o)
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}


def bench_generate(model: str, prompts: int, batch_size: int, max_new_tokens: int, backend: str,
                   baseline: str = "one_at_a_time") -> dict:
    """The engine's default against `baseline`: `one_at_a_time` (batch size 1) or `sampling`
    (transformers' own sampling in place of the engine's top-k sampler, the same batches); with
    `sampling`, each arm twice, interleaved, and its faster run kept."""
    rows = _prompts(prompts)
    if backend == "vllm":
        return bench_vllm(model, rows, batch_size, max_new_tokens)
    engine = EnginePool(backend).get(model, batch_size=batch_size)
    # each arm: (batch size, top-k sampler on)
    arms = ({"one_at_a_time": (1, True), "batched": (batch_size, True)} if baseline == "one_at_a_time"
            else {"transformers_sampling": (batch_size, False), "top_k_sampler": (batch_size, True)})
    results: dict = {}
    for _ in range(1 if baseline == "one_at_a_time" else 2):
        for label, (engine.batch_size, engine.top_k_sampler) in arms.items():
            run = {"batch_size": engine.batch_size, **_throughput(engine, rows, max_new_tokens)}
            if label not in results or run["tokens_per_s"] > results[label]["tokens_per_s"]:
                results[label] = run
    first, second = (results[label]["tokens_per_s"] for label in arms)
    results["speedup"] = round(second / first, 2)
    return results


def bench_vllm(model: str, rows, batch_size: int, max_new_tokens: int) -> dict:
    """The vLLM engine in both precisions (eager) and compiled in its default one (`cpu_dtype` on CPU)
    against the transformers engine (its default precision, batched), each with its start time."""
    results, pool = {}, EnginePool("vllm")
    start = time.perf_counter()
    engine = pool.get(model, backend="transformers", batch_size=batch_size)
    results["transformers"] = {"start_s": round(time.perf_counter() - start, 1), "dtype": str(engine.model.dtype),
                               **_throughput(engine, rows, max_new_tokens)}
    del engine
    default = cpu_dtype() if on_cpu() else "bfloat16"
    arms = {"vllm_bfloat16_eager": {"dtype": "bfloat16", "enforce_eager": True},
            "vllm_float32_eager": {"dtype": "float32", "enforce_eager": True},
            f"vllm_{default}_compiled": {"dtype": default, "enforce_eager": False}}
    for key, settings in arms.items():
        start = time.perf_counter()
        engine = pool.get(model, **settings)
        results[key] = {"start_s": round(time.perf_counter() - start, 1), **_throughput(engine, rows, max_new_tokens)}
        pool.close()  # each arm alone in memory
    base = results["transformers"]["tokens_per_s"]
    for key in arms:
        results[key]["ratio_to_transformers"] = round(results[key]["tokens_per_s"] / base, 2)
    results["default"] = f"vllm_{default}_eager"
    results["speedup"] = results[results["default"]]["ratio_to_transformers"]
    return results


def bench_grpo(model: str, paths: list[str], steps: int, prompts: int, generations: int, max_new_tokens: int) -> dict:
    """Median GRPO step time per rollout path (the first step, with its warm-up, left out)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)

    data = Dataset.from_list([{"prompt": p, "answer": a} for p, a in
                              zip(_prompts(prompts * steps), ["0"] * (prompts * steps), strict=True)])
    knobs = {"transformers": {}, "paged": {"use_transformers_paged": True},
             "vllm": {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}}
    knobs["vllm_trl_dtype"] = knobs["vllm"]  # vLLM's own choice for TRL's engine: bf16 on any x86 CPU
    results, medians = {}, {}
    for path in paths:
        model_obj, tokenizer = load_model(model, train=True)
        clock = Clock()
        with tempfile.TemporaryDirectory() as out:
            args = GRPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=prompts * generations,
                              num_generations=generations, max_completion_length=max_new_tokens, report_to=[],
                              save_strategy="no", use_cpu=True, bf16=False, logging_steps=1, disable_tqdm=True,
                              **knobs[path])
            start = time.perf_counter()
            with colocated_dtype(args if path == "vllm" else None):  # the project's: `cpu_dtype()` on CPU
                trainer = GRPOTrainer(model=model_obj, args=args, train_dataset=data, processing_class=tokenizer,
                                      reward_funcs=[get_reward("math")], callbacks=[clock])
            use_reload_sync(trainer)
            setup = time.perf_counter() - start
            trainer.train()
            release(trainer)  # the next path's engine needs the memory
        medians[path] = statistics.median(clock.times[1:] or clock.times)
        results[path] = {"setup_s": round(setup, 1), "step_s": [round(t, 3) for t in clock.times],
                         "median_step_s": round(medians[path], 3)}
    for path in paths:  # the ratio of unrounded medians (a tiny model's step rounds to 0.0 s at 0.1 s)
        results[path]["speedup_vs_" + paths[0]] = round(medians[paths[0]] / medians[path], 3)
    return results


def bench_student(teacher: str, data: str, specs: list[str], limit: int, extra: str | None = None) -> dict:
    """How much of the teacher each student construction keeps before any training: the mean
    negative log-likelihood per assistant token (think block included, as SFT trains it) of the
    teacher's own answers (an off-policy `data/train` dir, or any `messages` file), for the teacher
    and for each `layers=N[,pick=P][,mlp=M[,refit=1|2]]` spec; a width-pruned student is calibrated on
    the answers not scored, and on EXTRA (a messages file or dir) where given."""
    tok = load_tokenizer(teacher)
    everything = list(load_messages(data)["messages"])
    rows = everything[:limit]  # scored; a width-pruned (`mlp=M`) student is ranked on the others
    extra_rows = list(load_messages(extra)["messages"]) if extra else []
    calibration_ids = calibration(tok, everything[limit:] + extra_rows or rows)
    encoded = [tok.apply_chat_template(m, chat_template=TRAINING_CHAT_TEMPLATE, return_dict=True,
                                       return_assistant_tokens_mask=True) for m in rows]

    def nll(model_dir) -> float:
        model, _ = load_model(model_dir, dtype=torch.float32)  # comparable with earlier figures
        total, count = 0.0, 0
        with torch.inference_mode():
            for e in encoded:
                ids = torch.tensor([e["input_ids"]], device=model.device)
                logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
                picked = -logps.gather(-1, ids[0, 1:, None])[:, 0]
                mask = torch.tensor(e["assistant_masks"][1:], device=model.device, dtype=torch.bool)
                total, count = total + picked[mask].sum().item(), count + int(mask.sum())
        return total / max(1, count)
    base = nll(teacher)
    results = {"examples": len(rows), "teacher": {"params_m": round(params_on_disk(resolve_model(teacher)) / 1e6, 1),
                                                 "nll": round(base, 4)}}
    for spec in specs:
        with tempfile.TemporaryDirectory() as tmp:
            build_student(teacher, spec, tmp, calibration_ids)
            value = nll(tmp)
            results[spec] = {"params_m": round(params_on_disk(tmp) / 1e6, 1), "nll": round(value, 4),
                             "nll_over_teacher": round(value / base, 3)}
    return results


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks, reported as ratios to a baseline in the same run")
    kinds = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    roofline.add_parser(kinds)
    g = kinds.add_parser("generate", help="generation throughput: batched vs one at a time, or vLLM vs transformers")
    g.add_argument("--model", default="default")
    g.add_argument("--prompts", type=int, default=16)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    g.add_argument("--baseline", default="one_at_a_time", choices=["one_at_a_time", "sampling"],
                   help="transformers backend: batch size 1, or transformers' own sampling (default: one_at_a_time)")

    def show_generate(a):
        result = bench_generate(a.model, a.prompts, a.batch_size, a.max_new_tokens, a.backend, a.baseline)
        print(json.dumps(result, indent=2))
        what = (f"vLLM ({result.get('default')}) / transformers tokens/s" if a.backend == "vllm"
                else "top-k sampler / transformers' sampling tokens/s" if a.baseline == "sampling"
                else "batched / one-at-a-time tokens/s")
        print(f"{what}: {result['speedup']:.2f}")
    g.set_defaults(func=show_generate)

    r = kinds.add_parser("grpo", help="GRPO step time per rollout path (transformers, paged, vllm)")
    r.add_argument("--model", default="default")
    r.add_argument("--paths", nargs="+", default=["transformers", "paged", "vllm"],
                   choices=["transformers", "paged", "vllm", "vllm_trl_dtype"],
                   help="vllm: colocated in `cpu_dtype()` on CPU, as the stages run it; vllm_trl_dtype: in the "
                        "dtype vLLM picks for TRL's engine (bf16 on any x86 CPU)")
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--prompts", type=int, default=8, help="prompts per step")
    r.add_argument("--generations", type=int, default=4)
    r.add_argument("--max-new-tokens", type=int, default=64)

    def show_grpo(a):
        result = bench_grpo(a.model, a.paths, a.steps, a.prompts, a.generations, a.max_new_tokens)
        print(json.dumps(result, indent=2))
        fastest = min(a.paths, key=lambda k: result[k]["median_step_s"])
        print(f"fastest: {fastest}, {result[fastest]['speedup_vs_' + a.paths[0]]:.2f}x the step rate of {a.paths[0]}")
    r.set_defaults(func=show_grpo)

    t = kinds.add_parser("student", help="student constructions: NLL of the teacher's answers before training")
    t.add_argument("--teacher", required=True)
    t.add_argument("--data", required=True, help="the teacher's answers: an off-policy data/train dir or a "
                                                 "messages file")
    t.add_argument("--specs", nargs="+", default=["layers=10,pick=even", "layers=10,pick=ends",
                                                  "layers=30,mlp=232"])  # depth vs width at half the default
    t.add_argument("--limit", type=int, default=64, help="examples scored")
    t.add_argument("--calibration", help="more conversations to calibrate a width-pruned student on (a messages "
                                         "file or dir, e.g. the teacher's fusion RUN/03_fusion/data/train)")

    def show_student(a):
        result = bench_student(a.teacher, a.data, a.specs, a.limit, a.calibration)
        print(json.dumps(result, indent=2))
        best = min(a.specs, key=lambda k: result[k]["nll"])
        print(f"lowest NLL: {best}, {result[best]['nll_over_teacher']:.2f}x the teacher's")
    t.set_defaults(func=show_student)
