"""GRPO's scoring passes on fixed batches: TRL's fused LM head against the model's own head (CPU).

`posttrain bench train --kinds grpo` times whole steps, whose rollouts differ between arms after the
first step (the weights differ), and the rollouts are most of a step here. This times what the
head changes, on the same rows in both arms: the old policy's log-probabilities (no grad) and one
loss micro-batch's log-probabilities and entropies with their backward, for 8 rows of stage-4 shape
(left-padded prompts of ~100 or ~500 tokens, right-padded completions of up to 128), through the
stage-4 trainer (`length_grouped`, bf16 autocast where it is the default). Arms alternate in one
process; the median of `--repeats` per arm.

    .venv/bin/python benchmarks/grpo_scoring.py [--model default] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from posttrain import roofline
from posttrain.core.context import StageContext

COMPLETION = 128
SHAPES = {  # prompt and completion lengths of one loss micro-batch of 8 rollouts
    "short prompts (~100 tokens)": ([90, 95, 100, 100, 105, 110, 110, 120], [128, 128, 120, 100, 90, 80, 60, 40]),
    "tool prompts (~500 tokens)": ([480, 490, 500, 500, 500, 505, 510, 520], [128, 128, 128, 110, 90, 80, 60, 40]),
}


def rows(prompts: list[int], completions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(prompts)
    ids = torch.randint(100, 40_000, (len(prompts), width + COMPLETION))
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        mask[i, width - p:width + c] = 1
    return ids, mask


def time_passes(trainer, ids, mask) -> tuple[float, float]:
    """Seconds of the no-grad pass and of the loss pass with its backward."""
    start = time.perf_counter()
    with torch.no_grad():
        trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, COMPLETION, batch_size=len(ids))
    middle = time.perf_counter()
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, COMPLETION,
                                                             batch_size=len(ids), compute_entropy=True)
    (logps * mask[:, -COMPLETION:]).sum().backward()
    trainer.model.zero_grad()
    return middle - start, time.perf_counter() - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    a = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(stage_id="bench", dir=Path(tmp) / "bench", input_model=a.model, run_dir=Path(tmp))
        trainer = roofline._trainer("grpo", "after", ctx, a.model, steps=1)
        trainer.model.train()
        out = {"bf16": trainer.args.bf16, "threads": torch.get_num_threads()}
        for name, shape in SHAPES.items():
            ids, mask = rows(*shape)
            times = {"fused": [], "model_head": []}
            for _ in range(a.repeats):
                for arm in times:
                    trainer.model_head = arm == "model_head"
                    times[arm].append(time_passes(trainer, ids, mask))
            med = {arm: [statistics.median(t) for t in zip(*ts, strict=True)] for arm, ts in times.items()}
            f, m = med["fused"], med["model_head"]
            out[name] = {"fused_s": f, "model_head_s": m, "speedup": round(sum(f) / sum(m), 2)}
            print(f"{name}: no-grad {f[0]:.2f} -> {m[0]:.2f} s; loss pass + backward {f[1]:.2f} -> {m[1]:.2f} s; "
                  f"both {sum(f):.2f} -> {sum(m):.2f} s ({sum(f) / sum(m):.2f}x)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
