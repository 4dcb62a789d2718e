"""`make gpu-check`: the GPU paths in one short script (sized for about 8 minutes on one GPU; never run yet).

Every stage kind of `pipelines/demo.yaml` for a few steps on the default model, with bf16 training,
vLLM for every generation job and colocated vLLM rollouts in the RL stages and on-policy
distillation; then `posttrain bench generate --backend vllm` and `posttrain bench train` on the
generation and GRPO kinds. One line per check (PASS/FAIL, seconds, what it measured); exits 1 when a
check failed. Run it whenever a GPU machine is lent; the project's CPU suite does not cover it.

    .venv/bin/python benchmarks/gpu_check.py [--output-dir runs/gpu-check]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "posttrain.cli"]
SHORT = [  # demo.yaml, a few steps of each stage
    "eval.suites.arithmetic.n=8", "eval.suites.linear.n=8", "eval.think_follow.n=4", "eval.max_new_tokens=48",
    "eval.tasks.n=1", "budget_curve.budgets=[8]",
    "stages.cold_start.config.data.families={arithmetic: 16, linear: 16}", "stages.cold_start.config.train.max_steps=3",
    "stages.reasoning_rl.config.queries.families={arithmetic: 4, linear: 4}",
    "stages.reasoning_rl.config.queries.band=[-1.0, 2.0]", "stages.reasoning_rl.config.max_completion_length=48",
    "stages.reasoning_rl.config.train.max_steps=2", "stages.fusion.config.data.examples=32",
    "stages.fusion.config.train.max_steps=3", "stages.reward_model.config.pairs.n=24",
    "stages.reward_model.config.train.max_steps=2", "stages.general_rl.config.examples=16",
    "stages.general_rl.config.held_out=1", "stages.general_rl.config.max_completion_length=32",
    "stages.general_rl.config.train.max_steps=2", "stages.distill.config.prompts.families={arithmetic: 8, linear: 8}",
    "stages.distill.config.off_policy.max_new_tokens=48", "stages.distill.config.off_policy.train.max_steps=2",
    "stages.distill.config.on_policy.max_completion_length=32", "stages.distill.config.on_policy.train.max_steps=2",
]
VLLM = ["backend=vllm", "stages.reasoning_rl.config.use_vllm=true", "stages.general_rl.config.use_vllm=true",
        "stages.distill.config.on_policy.use_vllm=true"]


def check(name: str, cmd: list[str], timeout: int) -> subprocess.CompletedProcess | None:
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"FAIL {name}: over {timeout} s", flush=True)
        return None
    took = time.perf_counter() - start
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"FAIL {name} ({took:.0f} s): {last}", flush=True)
        return None
    print(f"PASS {name} ({took:.0f} s): {(done.stdout.strip().splitlines() or [''])[-1]}", flush=True)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/gpu-check")
    a = parser.parse_args()
    failed = 0
    probe = check("cuda", [sys.executable, "-c", "import torch, vllm; assert torch.cuda.is_available(); "
                           "print(torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported(), "
                           "'vllm', vllm.__version__)"], 120)
    if probe is None:
        return 1
    run = check("demo stages (bf16, vLLM rollouts)",
                [*CLI, "run", "pipelines/demo.yaml", "--fresh", "--output-dir", a.output_dir, *SHORT, *VLLM], 330)
    failed += run is None
    for metrics in sorted(Path(a.output_dir).glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        train = m.get("train") or next((v for v in m.values() if isinstance(v, dict) and "global_step" in v), {})
        ok = bool(train.get("global_step") or m.get("global_step"))
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} stage {metrics.parent.name}: "
              f"steps {train.get('global_step', m.get('global_step'))}, final loss {train.get('final_loss')}")
    failed += check("bench generate (vLLM vs transformers)",
                    [*CLI, "bench", "generate", "--backend", "vllm", "--prompts", "64", "--max-new-tokens", "128"],
                    150) is None
    failed += check("bench train (GRPO, generation)", [*CLI, "bench", "train", "--kinds", "grpo", "generate",
                                                        "--json", f"{a.output_dir}/bench_train.json"], 150) is None
    print(f"gpu-check: {'all passed' if not failed else f'{failed} failed'}")
    return int(bool(failed))


if __name__ == "__main__":
    sys.exit(main())
