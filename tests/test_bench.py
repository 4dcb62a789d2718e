"""`posttrain bench`: each benchmark runs its arms on the same work and reports ratios (no timing asserted)."""

from __future__ import annotations

import pytest

from posttrain import bench, cli


def test_generate_bench_compares_batched_with_one_at_a_time(tiny_model, capsys):
    cli.main(["bench", "generate", "--model", str(tiny_model), "--prompts", "4", "--batch-size", "4",
              "--max-new-tokens", "6"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("batched / one-at-a-time tokens/s: ")
    assert float(out[-1].split(": ")[1]) > 0


def test_grpo_bench_times_each_rollout_path_on_the_same_steps(tiny_model):
    result = bench.bench_grpo(str(tiny_model), ["transformers", "paged"], steps=2, prompts=2, generations=2,
                              max_new_tokens=6)
    for path in ("transformers", "paged"):
        assert len(result[path]["step_s"]) == 2 and result[path]["median_step_s"] > 0
    assert result["transformers"]["speedup_vs_transformers"] == 1.0
    assert result["paged"]["speedup_vs_transformers"] == pytest.approx(
        result["transformers"]["median_step_s"] / result["paged"]["median_step_s"], rel=0.1)
