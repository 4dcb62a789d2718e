"""The hybrid tax: a split pair planned beside the fused model, leakage measures, the comparison table."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.evaluate import leakage
from posttrain.report.hybrid import hybrid_tax
from stages.fusion import Config, training_data

REPO = Path(__file__).resolve().parents[1]
EMPTY = "<think>\n\n</think>\n\n"


def test_split_yaml_plans_two_models_from_the_stage2_model_on_the_fused_models_data():
    from posttrain import pipeline
    _, planned = pipeline.load(REPO / "pipelines" / "split.yaml")
    by_id = {p.ctx.stage_id: p for p in planned}
    assert list(by_id) == ["cold_start", "reasoning_rl", "fusion", "thinking", "instruct"]
    stage2 = str(by_id["reasoning_rl"].ctx.model_dir)
    assert by_id["fusion"].ctx.input_model == by_id["thinking"].ctx.input_model == by_id["instruct"].ctx.input_model \
        == stage2
    thinking, instruct, fused = (by_id[k].config for k in ("thinking", "instruct", "fusion"))
    assert (thinking.keep, instruct.keep, fused.keep) == ("think", "no_think", "all")
    assert thinking.data_from == instruct.data_from == "@fusion"
    # the accounting: as many optimizer steps (of the same batch) in the pair as in the fused model
    assert thinking.train.max_steps + instruct.train.max_steps == fused.train.max_steps
    assert thinking.train.batch_size == instruct.train.batch_size == fused.train.batch_size


def test_keep_trains_on_one_modes_turns():
    from datasets import Dataset
    conv = [{"role": "user", "content": "2+2? /think"},
            {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
            {"role": "user", "content": "3+3? /no_think"},
            {"role": "assistant", "content": "6", "reasoning_content": ""},
            {"role": "user", "content": "and 4+4?"},
            {"role": "assistant", "content": "8", "reasoning_content": ""}]
    ds = Dataset.from_list([{"messages": conv}])
    answers = {keep: [r["completion"][0]["content"] for r in training_data(ds, "inference", keep)]
               for keep in ("all", "think", "no_think")}
    assert answers == {"all": ["4", "6", "8"], "think": ["4"], "no_think": ["6", "8"]}
    # a no-think example keeps the thinking turn before it in its history
    assert training_data(ds, "inference", "no_think")[0]["prompt"][1]["content"] == "4"
    with pytest.raises(ValueError, match="keep: think needs history: inference"):
        Config(keep="think", history="training_template")


def test_leakage_measures_on_hand_made_answers():
    texts = [EMPTY + "Wait, let me check that again. The answer is \\boxed{4}.",  # reflects
             EMPTY + "x + 3 = 7\nx = 7 - 3 = 4\nSo \\boxed{4}.",  # derives over two lines with =
             EMPTY + "Step 1: add them.\nThe answer is \\boxed{4}.",  # a step line
             EMPTY + "16 + 20 = 36, 36 - 21 = 15. \\boxed{15}",  # one line: the direct answer's form
             "<think>\nWait, 2 + 2 = 4\nhmm = fine\n</think>\n\nThe answer is 4."]  # reasoning inside the block
    got = leakage(texts)
    assert got == {"reflective": 0.2, "step_by_step": 0.4, "leaky": 0.6, "think_skipped": 0.8}
    assert leakage(["The answer is 4.", "<think>\nok\n</think>\n\n4"])["think_skipped"] == 0.5


def _suite(acc, correct, length, leaky, sha="s"):
    return {"accuracy": acc, "correct_per_item": correct, "samples": 1, "items_sha": sha, "mean_length": length,
            "leakage": {"leaky": leaky}}


def test_the_comparison_table_pairs_fused_with_each_split_model():
    fused = {"suites": {"arith": {"think": _suite(0.5, [1, 0, 1, 0], 80, 0.0),
                                  "no_think": _suite(0.25, [1, 0, 0, 0], 20, 0.5)}}, "think_follow": {"score": 0.95}}
    stage = {"stage": "fusion", "wall_time_s": 1}
    report = {"stages": [
        {**stage, "id": "fusion", "eval": fused, "cpu_time_s": 100, "data": {"fusion_turns.json": {
            "keep": "all", "examples_seen": 960}}},
        {**stage, "id": "thinking", "eval": {"suites": {"arith": {"think": _suite(0.75, [1, 1, 1, 0], 90, 0.0)}}},
         "cpu_time_s": 45, "data": {"fusion_turns.json": {"keep": "think", "examples_seen": 480}}},
        {**stage, "id": "instruct", "eval": {"suites": {"arith": {"no_think": _suite(0.5, [1, 1, 0, 0], 15, 0.0)}}},
         "cpu_time_s": 40, "data": {"fusion_turns.json": {"keep": "no_think", "examples_seen": 480}}}]}
    lines = hybrid_tax(report)
    assert "| arith | think | 0.500 | 0.750 | -25.0 ± 25.0 | 80 / 90 | 0.00 / 0.00 |" in lines
    assert "| arith | no_think | 0.250 | 0.500 | -25.0 ± 25.0 | 20 / 15 | 0.50 / 0.00 |" in lines
    assert "ThinkFollow 0.950; no-think length against its own think length arith 0.25x" in lines[-1]
    assert "fused 100, split 45 + 40; examples seen: fused 960, split 480 + 480" in lines[-1]
    assert hybrid_tax({"stages": report["stages"][:2]}) == []  # no instruct model: no table
