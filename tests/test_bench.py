"""`posttrain bench`: each benchmark runs its arms on the same work and reports ratios (no timing asserted)."""

from __future__ import annotations

import pytest

from posttrain import bench, cli
from posttrain.core.generation import TransformersEngine


def test_generate_bench_compares_batched_with_one_at_a_time(tiny_model, capsys):
    cli.main(["bench", "generate", "--model", str(tiny_model), "--prompts", "4", "--batch-size", "4",
              "--max-new-tokens", "6"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("batched / one-at-a-time tokens/s: ")
    assert float(out[-1].split(": ")[1]) > 0


def test_generate_bench_compares_the_top_k_sampler_with_transformers_sampling(tiny_model, capsys, monkeypatch):
    knobs, used = TransformersEngine._knobs, []

    def spy(self, sampling):
        out = knobs(self, sampling)
        used.append(("sampler" if "logits_processor" in out else "transformers", out["do_sample"]))
        return out
    monkeypatch.setattr(TransformersEngine, "_knobs", spy)
    cli.main(["bench", "generate", "--model", str(tiny_model), "--prompts", "4", "--batch-size", "4",
              "--max-new-tokens", "6", "--baseline", "sampling"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("top-k sampler / transformers' sampling tokens/s: ") and float(out[-1].split(": ")[1]) > 0
    # each arm twice, interleaved, each run after its warm-up: transformers' sampling, then the sampler
    assert used == [("transformers", True)] * 2 + [("sampler", False)] * 2 + [("transformers", True)] * 2 + \
        [("sampler", False)] * 2


@pytest.mark.slow
def test_grpo_bench_times_each_rollout_path_on_the_same_steps(tiny_model):
    result = bench.bench_grpo(str(tiny_model), ["transformers", "paged"], steps=2, prompts=2, generations=2,
                              max_new_tokens=6)
    for path in ("transformers", "paged"):
        assert len(result[path]["step_s"]) == 2 and result[path]["median_step_s"] > 0
    assert result["transformers"]["speedup_vs_transformers"] == 1.0
    assert result["paged"]["speedup_vs_transformers"] == pytest.approx(
        result["transformers"]["median_step_s"] / result["paged"]["median_step_s"], rel=0.05, abs=0.002)


def test_student_bench_scores_constructions_against_the_teacher(tmp_path, chat_jsonl, capsys):
    """A student that keeps every layer is the teacher (same NLL); ones keeping different layers differ."""
    from posttrain.core.models import make_tiny_model
    from stages.student import PICKS
    assert PICKS["first"](3, 6) == [0, 1, 5] and PICKS["even"](3, 6) == [0, 2, 5]
    assert PICKS["ends"](4, 6) == [0, 1, 4, 5] and PICKS["even"](3, 7) == [0, 3, 6]
    teacher = make_tiny_model(tmp_path / "teacher", layers=6)
    cli.main(["bench", "student", "--teacher", str(teacher), "--data", str(chat_jsonl), "--limit", "6",
              "--specs", "layers=6", "layers=3,pick=first", "layers=3,pick=even"])
    out = capsys.readouterr().out
    result = bench.json.loads(out[out.index("\n{") + 1:out.rindex("}") + 1])  # after build_student's lines
    assert result["examples"] == 6
    assert result["layers=6"]["nll"] == pytest.approx(result["teacher"]["nll"], rel=1e-4)
    assert result["layers=6"]["params_m"] == result["teacher"]["params_m"] > result["layers=3,pick=first"]["params_m"]
    assert result["layers=3,pick=first"]["nll"] != result["layers=3,pick=even"]["nll"]  # different layers kept
    assert out.strip().splitlines()[-1].startswith("lowest NLL: ")


def test_student_bench_calibrates_a_width_pruned_student_on_extra_conversations(tmp_path, chat_jsonl):
    """--calibration adds conversations to the ones a width-pruned student is ranked and refit on: the
    same spec scores differently with them, and a student that keeps every neuron is unaffected."""
    import json

    from posttrain.core.models import make_tiny_model
    teacher = make_tiny_model(tmp_path / "teacher", layers=2)
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Spell {w} backwards."},
                                                      {"role": "assistant", "content": w[::-1]}]}) + "\n"
                             for w in ("alpha", "river", "stone", "candle", "orbit", "meadow")))
    specs = ["layers=2,mlp=16,refit=2", "layers=2,mlp=128"]
    alone = bench.bench_student(str(teacher), str(chat_jsonl), specs, 12)
    more = bench.bench_student(str(teacher), str(chat_jsonl), specs, 12, str(extra))
    assert alone["layers=2,mlp=16,refit=2"]["nll"] != more["layers=2,mlp=16,refit=2"]["nll"]
    full = "layers=2,mlp=128"
    assert alone[full]["nll"] == more[full]["nll"] == pytest.approx(alone["teacher"]["nll"], rel=1e-4)
