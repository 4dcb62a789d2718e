"""Stages 1, 2 and distillation run a few steps on CPU with tiny models and write loadable models."""

from __future__ import annotations

import json
import textwrap

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain import pipeline
from posttrain.models import make_tiny_model


def run_pipeline(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    cfg, planned = pipeline.load(path)
    return pipeline.run(cfg, planned), planned


def test_cold_start_builds_filtered_long_cot_data_and_trains(tmp_path, tiny_model):
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: cs
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: cold_start
            config:
              data: {{families: {{arithmetic: 10, linear: 10}}, no_cot_k: 1, validation_fraction: 0.2}}
              max_length: 256
              train: {{max_steps: 2, batch_size: 4}}
        """)
    stage = planned[0].ctx
    from datasets import load_from_disk
    data = load_from_disk(str(stage.data_dir / "train"))
    assert len(data) == 16 and len(load_from_disk(str(stage.data_dir / "validation"))) == 4
    turn = data[0]["messages"][-1]
    assert turn["role"] == "assistant" and turn["reasoning_content"] and "\\boxed{" in turn["content"]
    report = json.loads((stage.dir / "cold_start_data.json").read_text())
    assert set(report["response_rejections"]) == {"wrong_answer", "repetition", "guesswork",
                                                  "inconsistent_summary", "language_mixing", "eval_overlap"}
    assert {"unverifiable", "near_duplicate_of_eval", "solved_without_cot"} <= set(report["query_filters"])
    AutoModelForCausalLM.from_pretrained(stage.model_dir)
    assert json.loads((stage.dir / "COMPLETE").read_text())["metrics"]["global_step"] == 2


def test_reasoning_rl_runs_grpo_and_logs_rewards(tmp_path, tiny_model):
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: rl
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: reasoning_rl
            config:
              queries: {{families: {{arithmetic: 4, countdown: 2}}, k: 2, band: [-1.0, 2.0], max_new_tokens: 8}}
              num_generations: 4
              max_completion_length: 12
              train: {{max_steps: 2, batch_size: 4, learning_rate: 1.0e-5}}
        """)
    stage = planned[0].ctx
    selection = json.loads((stage.dir / "selection.json").read_text())
    assert selection["candidates"] == 6 and selection["kept"] == 6
    AutoModelForCausalLM.from_pretrained(stage.model_dir)
    from posttrain.report import _scalars
    scalars = _scalars(stage.tb_dir)
    assert any("reward" in tag for tag in scalars), sorted(scalars)
    assert json.loads((stage.dir / "COMPLETE").read_text())["metrics"]["global_step"] == 2


def test_distill_builds_student_and_runs_both_phases(tmp_path):
    teacher = make_tiny_model(tmp_path / "teacher", layers=4)
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: ds
        model: {teacher}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: distill
            config:
              student: layers=2
              prompts: {{families: {{arithmetic: 6}}}}
              off_policy: {{max_new_tokens: 8, filter_by_reward: false, train: {{max_steps: 2, batch_size: 4}}}}
              on_policy: {{max_completion_length: 8, train: {{max_steps: 2, batch_size: 2}}}}
        """)
    stage = planned[0].ctx
    student = AutoModelForCausalLM.from_pretrained(stage.model_dir)
    assert student.config.num_hidden_layers == 2
    s_tok, t_tok = AutoTokenizer.from_pretrained(stage.model_dir), AutoTokenizer.from_pretrained(teacher)
    assert s_tok.get_vocab() == t_tok.get_vocab() and s_tok.chat_template == t_tok.chat_template
    from datasets import load_from_disk
    off = load_from_disk(str(stage.dir / "off_policy" / "data" / "train"))
    assert sorted(set(off["mode"])) == ["no_think", "think"]
    assert all(m[0]["content"].endswith("/no_think" if mode == "no_think" else "/think")
               for m, mode in zip(off["messages"], off["mode"], strict=True))
    on = load_from_disk(str(stage.dir / "on_policy" / "data" / "prompts"))
    assert sorted(set(on["mode"])) == ["no_think", "think"]
    for phase in ("off_policy", "on_policy"):
        assert (stage.dir / phase / "COMPLETE").is_file()


@pytest.mark.parametrize("spec,error", [("layers=99", "layers must be in"), ("depth=2", "unknown or missing"),
                                        ("scratch:layers=1,hidden=7", "multiple of")])
def test_bad_student_specs(tmp_path, tiny_model, spec, error):
    from posttrain.models import build_student
    with pytest.raises(ValueError, match=error):
        build_student(tiny_model, spec, tmp_path / "s")


def test_reward_model_stage_ranks_heldout_pairs(tmp_path, tiny_model):
    rows = []
    for i in range(40):
        rows.append({"prompt": [{"role": "user", "content": f"Question {i}?"}],
                     "chosen": [{"role": "assistant", "content": f"A clear, correct answer number {i}."}],
                     "rejected": [{"role": "assistant", "content": "zzz qqq xxx zzz qqq xxx"}]})
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: rm
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: reward_model
            eval: false
            config: {{data: {data}, heldout_fraction: 0.25,
                      train: {{max_steps: 15, batch_size: 8, learning_rate: 1.0e-3}}}}
        """)
    metrics = json.loads((planned[0].ctx.dir / "reward_model.json").read_text())
    print("held-out ranking accuracy", metrics["heldout_accuracy"])
    assert metrics["pairs"] == 30 and metrics["heldout_accuracy"] > 0.6
