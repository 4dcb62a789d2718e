"""`posttrain bench`: throughput measured as ratios against a baseline in the same run.

    posttrain bench generate --model default --prompts 16 --batch-size 16 --max-new-tokens 64

compares batched sampling (the engine's default path) with one-prompt-at-a-time sampling on the
same prompts and seed, and prints tokens/s for both and the speed-up.
"""

from __future__ import annotations

import json
import time


def bench_generate(model: str, prompts: int, batch_size: int, max_new_tokens: int, backend: str) -> dict:
    from data_builders.synthetic import generate
    from posttrain.generation import load_engine
    engine = load_engine(model, backend=backend, batch_size=batch_size)
    rows = generate("arithmetic", prompts, seed=123)["prompt"]
    engine.generate(rows[:1], max_new_tokens=4, seed=0)  # warm-up
    results = {}
    for label, size in (("one_at_a_time", 1), ("batched", batch_size)):
        if hasattr(engine, "batch_size"):
            engine.batch_size = size
        start = time.perf_counter()
        outs = engine.generate(rows, mode="think", max_new_tokens=max_new_tokens, seed=0)
        seconds = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for o in outs for c in o)
        results[label] = {"batch_size": size, "seconds": round(seconds, 2), "tokens": tokens,
                          "tokens_per_s": round(tokens / seconds, 1)}
    results["speedup"] = round(results["batched"]["tokens_per_s"] / results["one_at_a_time"]["tokens_per_s"], 2)
    return results


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks, reported as ratios to a baseline in the same run")
    kinds = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    g = kinds.add_parser("generate", help="batched vs one-prompt-at-a-time generation throughput")
    g.add_argument("--model", default="default")
    g.add_argument("--prompts", type=int, default=16)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    g.set_defaults(func=lambda a: print(json.dumps(
        bench_generate(a.model, a.prompts, a.batch_size, a.max_new_tokens, a.backend), indent=2)))
