"""Evaluation and query selection: pass@k, grading, learnability on a scripted model."""

from __future__ import annotations

import json
import statistics
from math import comb

import pytest

from posttrain.core.generation import Completion
from posttrain.core.stats import pass_at_k
from posttrain.evaluate import EvalConfig, SuiteConfig, evaluate
from rewards.grading import grade
from tests.conftest import OneEngine


@pytest.mark.parametrize("n,c,k", [(10, 3, 1), (10, 3, 2), (10, 3, 5), (8, 0, 4), (8, 8, 1), (5, 2, 4), (20, 7, 10)])
def test_pass_at_k_matches_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_fixed_example():
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)


class OracleEngine:
    """Answers item i correctly in the first `right[i]` of its samples, wrongly after."""

    def __init__(self, right):
        self.right = right

    def generate(self, prompts, *, n=1, mode="think", **kw):
        out = []
        for prompt in prompts:
            answer = self.right[prompt[-1]["content"]]
            out.append([Completion(text=("<think>\nok\n</think>\n\n" if mode == "think" else "") +
                                   (f"\\boxed{{{answer[0]}}}" if j < answer[1] else "\\boxed{-12345}"),
                                   token_ids=[1] * (5 + j)) for j in range(n)])
        return out


def test_evaluate_reports_accuracy_pass_at_k_and_length():
    from data_builders.synthetic import generate
    rows = list(generate("linear", 3, seed=7))
    right = {r["prompt"][-1]["content"]: (r["answer"], c) for r, c in zip(rows, [0, 2, 4], strict=True)}
    cfg = EvalConfig(suites={"lin": SuiteConfig(family="linear", n=3, seed=7)}, modes=["think"], samples=4,
                     pass_k=[1, 2, 4])
    res = evaluate("unused", cfg, engine=OracleEngine(right))["suites"]["lin"]["think"]
    assert res["accuracy"] == pytest.approx(6 / 12)
    assert res["pass_at_k"]["1"] == pytest.approx(6 / 12)
    assert res["pass_at_k"]["2"] == pytest.approx((0 + pass_at_k(4, 2, 2) + 1) / 3)
    assert res["pass_at_k"]["4"] == pytest.approx(2 / 3)
    assert res["mean_length"] == pytest.approx(6.5)
    assert res["correct_per_item"] == [0, 2, 4]
    assert res["accuracy_se"] == pytest.approx(0.5 / 3 ** 0.5)  # per-item rates 0, .5, 1: sd 0.5


def test_grade_routes_by_task():
    rows = [{"task": "math", "answer": "4"},
            {"task": "countdown", "answer": json.dumps({"target": 6, "numbers": [2, 3]})}]
    assert grade(rows, ["\\boxed{4}", "\\boxed{2*3}"]) == [1.0, 1.0]
    assert grade(rows, ["\\boxed{5}", "\\boxed{2+3}"]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="no grader for task 'poetry'"):
        grade([{"task": "poetry"}], ["x"])


def test_query_selection_keeps_only_learnable(tmp_path, monkeypatch):
    """Always-right and always-wrong queries are dropped; the distribution is written out."""
    from data_builders import rl_queries
    from data_builders.synthetic import generate
    from posttrain.core.context import StageContext
    rows = list(generate("arithmetic", 6, seed=2))
    counts = [0, 4, 1, 3, 2, 4]  # correct samples of 4
    right = {r["prompt"][-1]["content"]: (r["answer"], c) for r, c in zip(rows, counts, strict=True)}
    ctx = StageContext(stage_id="rl", dir=tmp_path / "02_rl", input_model="unused", run_dir=tmp_path,
                       engines=OneEngine(OracleEngine(right)))
    cfg = rl_queries.QuerySelection(families={"arithmetic": 6}, seed=2, k=4, exclude_stages=[])
    selected = rl_queries.select_queries(ctx, cfg)
    assert sorted(selected["pass_rate"]) == [0.25, 0.5, 0.75]
    stats = json.loads((ctx.dir / "selection.json").read_text())
    assert stats["always_right"] == 2 and stats["always_wrong"] == 1 and stats["kept"] == 3
    cfg.max_queries = 2  # hardest first
    assert sorted(rl_queries.select_queries(ctx, cfg)["pass_rate"]) == [0.25, 0.5]
    # nothing learnable (a pool of two families, filtered, selects nothing): one line, and no dataset is saved
    # that a rerun with a wider band would reuse (it used to fail inside `datasets` with a concatenation error)
    cfg = rl_queries.QuerySelection(families={"arithmetic": 6, "linear": 2}, seed=2, k=4, exclude_stages=[])
    never = [*generate("arithmetic", 6, seed=2), *generate("linear", 2, seed=2)]
    ctx.engines = OneEngine(OracleEngine({r["prompt"][-1]["content"]: (r["answer"], 0) for r in never}))
    with pytest.raises(ValueError, match=r"rl: no learnable query among 8 \(see .*selection.json\): widen"):
        ctx.dataset("train", lambda: rl_queries.select_queries(ctx, cfg))
    assert json.loads((ctx.dir / "selection.json").read_text())["always_wrong"] == 8
    assert not (ctx.data_dir / "train").exists()


def test_query_selection_excludes_prompts_used_in_stage_one(tmp_path, monkeypatch):
    from datasets import Dataset

    from data_builders import rl_queries
    from data_builders.synthetic import generate
    from posttrain.core.context import StageContext
    rows = list(generate("arithmetic", 4, seed=2))
    used = Dataset.from_list([{"messages": rows[0]["prompt"] + [{"role": "assistant", "content": "x"}]}])
    used.save_to_disk(str(tmp_path / "01_cold_start" / "data" / "train"))
    right = {r["prompt"][-1]["content"]: (r["answer"], 1) for r in rows}
    ctx = StageContext(stage_id="rl", dir=tmp_path / "02_rl", input_model="unused", run_dir=tmp_path,
                       engines=OneEngine(OracleEngine(right)))
    selected = rl_queries.select_queries(ctx, rl_queries.QuerySelection(families={"arithmetic": 4}, seed=2, k=2))
    assert len(selected) == 3 and rows[0]["prompt"] not in selected["prompt"]
    assert json.loads((ctx.dir / "selection.json").read_text())["excluded_as_used"] == 1


def test_training_prompts_never_include_the_eval_suites_items(tmp_path, monkeypatch):
    """The synthetic linear family repeats itself: 800 distillation prompts (seed 5) held 6 asking
    eval_large items. Stage-2 queries and distillation prompts now drop what the eval asks."""
    from data_builders import rl_queries
    from data_builders.synthetic import generate
    from posttrain.core.context import StageContext
    from posttrain.evaluate import SuiteConfig, held_out
    from stages.distill import Config, Prompts, prompt_set
    suite = SuiteConfig(family="linear", n=64, seed=10001)
    held = {r["prompt"][-1]["content"] for r in generate("linear", 64, seed=10001)}
    pool = generate("linear", 800, seed=5)
    assert sum(p[-1]["content"] in held for p in pool["prompt"]) == 6  # the overlap that was trained on
    right = {p[-1]["content"]: (a, 1) for p, a in zip(pool["prompt"], pool["answer"], strict=True)}
    ctx = StageContext(stage_id="distill", dir=tmp_path / "d", input_model="unused",
                       held_out=held_out(EvalConfig(suites={"lin": suite})), engines=OneEngine(OracleEngine(right)))
    prompts = prompt_set(ctx, Config(prompts=Prompts(families={"linear": 800}, seed=5)))
    assert len(prompts) == 794 and not any(p[-1]["content"] in held for p in prompts["prompt"])
    cfg = rl_queries.QuerySelection(families={"linear": 800}, seed=5, k=2, exclude_stages=[])
    selected = rl_queries.select_queries(ctx, cfg)  # each query right once in 2: all learnable
    assert len(selected) == 794 and not any(p[-1]["content"] in held for p in selected["prompt"])
    stats = json.loads((ctx.dir / "selection.json").read_text())
    assert stats["candidates"] == 794 and stats["excluded_as_eval"] == 6 and stats["excluded_as_used"] == 0


def test_report_shows_accuracy_with_its_standard_error():
    from posttrain.report.tables import markdown
    result = {"suites": {"lin": {"think": {"accuracy": 0.5, "accuracy_se": 0.125, "pass_at_k": {"1": 0.5},
                                           "mean_length": 6.5}}}}
    stage = {"id": "rl", "stage": "reasoning_rl", "input_model": "runs/x/01_sft/model", "wall_time_s": 1.0,
             "metrics": {}, "eval": result}
    text = markdown({"base": {"eval": None}, "stages": [stage]}, [], "t")
    assert "| rl | lin | think | 0.500 ± 0.125 |  | 1: 0.500 | 6.500 |" in text


def test_paired_difference_on_fixed_items():
    from posttrain.core.stats import paired_difference
    before = {"samples": 4, "correct_per_item": [0, 4, 2], "items_sha": "abc"}
    after = {"samples": 4, "correct_per_item": [2, 4, 4], "items_sha": "abc"}
    g = paired_difference(before, after)  # per-item gains .5, 0, .5
    assert g["diff"] == pytest.approx(1 / 3) and g["n_items"] == 3
    assert g["se"] == pytest.approx(statistics.stdev([0.5, 0, 0.5]) / 3 ** 0.5)
    with pytest.raises(ValueError, match="not the same items"):
        paired_difference(before, after | {"items_sha": "xyz"})
    with pytest.raises(ValueError, match="not the same items"):
        paired_difference(before, after | {"correct_per_item": [2, 4]})


def test_report_shows_each_stage_gain_over_its_input_model():
    from posttrain.report.tables import markdown

    def result(correct, sha="s"):
        return {"model": "m", "suites": {"lin": {"think": {"accuracy": sum(correct) / 8, "samples": 2,
                                                             "correct_per_item": correct, "items_sha": sha}}}}
    stages = [{"id": "sft", "stage": "cold_start", "input_model": "m", "model": "r/sft/model",
               "wall_time_s": 1.0, "metrics": {}, "eval": result([0, 0, 1, 1])},
              {"id": "rl", "stage": "reasoning_rl", "input_model": "r/sft/model", "model": "r/rl/model",
               "wall_time_s": 1.0, "metrics": {}, "eval": result([2, 0, 1, 1], sha="other")}]
    text = markdown({"base": {"eval": result([0, 0, 0, 0])}, "stages": stages}, [], "t")
    assert "| sft | lin | think | 0.250 | +25.0 ± 14.4 vs base |" in text
    assert "| rl | lin | think | 0.500 |  |" in text  # other items: no paired gain
    # a stage whose input was not evaluated is compared with the nearest evaluated model before it
    stages[1]["eval"] = result([2, 0, 1, 1])
    stages.append({"id": "fusion", "stage": "fusion", "input_model": "r/rl/model", "model": "r/fusion/model",
                   "wall_time_s": 1.0, "metrics": {}, "eval": result([2, 2, 1, 1])})
    stages[1]["eval"] = None
    text = markdown({"base": {"eval": result([0, 0, 0, 0])}, "stages": stages}, [], "t")
    assert "| fusion | lin | think | 0.750 | +50.0 ± 28.9 vs sft |" in text


def test_comparison_pairs_each_branch_with_the_first_on_the_same_items():
    """Table 21's comparison carries each branch minus the first, paired item by item, in both modes;
    a branch scored on other items gets no paired row rather than an unpaired one."""
    from posttrain.report.tables import comparison

    def stage(sid, think, no_think, sha="s"):
        modes = {m: {"accuracy": sum(c) / 8, "samples": 2, "correct_per_item": c, "items_sha": sha}
                 for m, c in (("think", think), ("no_think", no_think))}
        return {"id": sid, "cpu_time_s": 1.0, "wall_time_s": 1.0, "eval": {"suites": {"lin": modes}}}
    stages = [stage("rl", [0, 0, 1, 1], [1, 1, 1, 1]), stage("opd", [2, 0, 1, 1], [1, 1, 1, 1]),
              stage("other", [2, 2, 2, 2], [2, 2, 2, 2], sha="x")]
    text = comparison({"stages": stages}, ["rl", "opd", "other"])
    assert "| opd − rl, paired (points ± s.e.) | | | +25.0 ± 25.0 |  | +0.0 ± 0.0 |  |  |" in text
    assert "other − rl" not in text


def test_eval_baseline_errors_name_the_file_and_keep_the_results(tmp_path, monkeypatch, capsys):
    from posttrain import cli
    from posttrain.cli import main
    (tmp_path / "eval.yaml").write_text("eval: {suites: {lin: {family: linear, n: 2}}, modes: [think]}\n")
    args = ["eval", "--model", "unused", "--config", str(tmp_path / "eval.yaml")]
    assert main(args + ["--baseline", str(tmp_path / "missing.json")]) == 2
    assert "--baseline " + str(tmp_path / "missing.json") in capsys.readouterr().err
    new = {"model": "unused", "suites": {"lin": {"think": {"samples": 4, "correct_per_item": [1, 3]}}}}
    monkeypatch.setattr(cli, "evaluate", lambda *a, **k: json.loads(json.dumps(new)))
    (tmp_path / "old.json").write_text(json.dumps(
        {"suites": {"lin": {"think": {"samples": 4, "correct_per_item": [1, 1, 1]}}}}))
    out = tmp_path / "new.json"
    assert main(args + ["--baseline", str(tmp_path / "old.json"), "--output", str(out)]) == 2
    assert "old.json: suite 'lin' mode 'think': not the same items" in capsys.readouterr().err
    assert json.loads(out.read_text())["suites"] == new["suites"]  # written before the error
    (tmp_path / "old.json").write_text(json.dumps({"suites": {"lin": {"think": {"samples": 4,
                                                                                  "correct_per_item": [1, 1]}}}}))
    assert main(args + ["--baseline", str(tmp_path / "old.json"), "--output", str(out)]) == 0
    assert "lin think: +25.0 ± 25.0 points" in capsys.readouterr().err
    assert json.loads(out.read_text())["vs_baseline"]["suites"]["lin"]["think"]["diff"] == pytest.approx(0.25)
    # both ThinkFollow suites, paired turn by turn
    def follow(main_turns, held_turns):
        return {"think_follow": {"per_turn": main_turns, "items_sha": "m",
                                 "held_out": {"per_turn": held_turns, "items_sha": "h"}}}
    new.update(follow([1, 1, 1, 1], [1, 1, 0, 1]))
    (tmp_path / "old.json").write_text(json.dumps({"suites": {"lin": {"think": {"samples": 4, "correct_per_item": [
        1, 2]}}}, **follow([1, 0, 1, 1], [0, 0, 0, 1])}))
    assert main(args + ["--baseline", str(tmp_path / "old.json"), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "ThinkFollow: +25.0 ± 25.0 points" in err and "ThinkFollow, held-out suite: +50.0 ± 28.9 points" in err
    assert json.loads(out.read_text())["vs_baseline"]["think_follow_held_out"]["n_items"] == 4
    # task kinds, paired item by item per kind and mode, and pooled over an area's kinds
    def tasks(per_item, sha="a"):
        return {"tasks": {"kind_shas": {"if_case": sha, "if_json": "b"}, "scores": {
            kind: {"think": {"area": "instruction", "per_item": items}} for kind, items in per_item.items()}}}
    new.update(tasks({"if_case": [1.0, 1.0], "if_json": [0.5, 1.0]}))
    old = json.loads((tmp_path / "old.json").read_text())
    (tmp_path / "old.json").write_text(json.dumps({**old, **tasks({"if_case": [0.0, 1.0], "if_json": [0.5, 0.0]})}))
    assert main(args + ["--baseline", str(tmp_path / "old.json"), "--output", str(out)]) == 0
    assert "task kinds, instruction think: reward +0.500 ± 0.289 vs" in capsys.readouterr().err  # (1 + 0 + 0 + 1) / 4
    paired = json.loads(out.read_text())["vs_baseline"]["tasks"]
    assert paired["kinds"]["if_case"]["think"] == {"diff": 0.5, "se": pytest.approx(0.5), "n_items": 2}
    # a kind scored on other items (another n or seed) is named, not paired; the rest still pairs
    (tmp_path / "old.json").write_text(json.dumps({**old, **tasks({"if_case": [0.0, 1.0], "if_json": [0.5, 0.0]},
                                                                  sha="z")}))
    assert main(args + ["--baseline", str(tmp_path / "old.json"), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "task kinds, instruction think: reward +0.500 ± 0.500 vs" in err and "lin think: +12.5" in err
    assert "task kinds not paired, scored on other items than in " + str(tmp_path / "old.json") + ": if_case" in err
    assert json.loads(out.read_text())["vs_baseline"]["tasks"]["other_items"] == ["if_case"]


def test_eval_reuse_pairs_a_stages_results_without_sampling_again(tmp_path, tiny_model, monkeypatch, capsys):
    """`--reuse STAGE/eval.json` turns a pipeline's stored eval into a paired comparison; results of
    another model are refused by name."""
    from posttrain.cli import main
    from posttrain.core.generation import EnginePool
    (tmp_path / "eval.yaml").write_text("eval: {suites: {lin: {family: linear, n: 2}}, modes: [think], samples: 2, "
                                        "pass_k: [1, 2], max_new_tokens: 4}\n")
    args = ["eval", "--model", str(tiny_model), "--config", str(tmp_path / "eval.yaml")]
    assert main(args + ["--output", str(tmp_path / "stage.json")]) == 0
    capsys.readouterr()

    def no_sampling(*a, **k):
        raise AssertionError("sampled again")
    monkeypatch.setattr(EnginePool, "get", no_sampling)
    reuse = ["--reuse", str(tmp_path / "stage.json")]
    assert main(args + reuse + ["--baseline", str(tmp_path / "stage.json")]) == 0
    assert "lin think: +0.0 ± 0.0 points" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "other"), "--config", str(tmp_path / "eval.yaml")] + reuse) == 2
    assert f"--reuse {tmp_path / 'stage.json'}: holds results of model {tiny_model}" in capsys.readouterr().err


def test_evaluate_asks_every_suite_of_a_mode_in_one_call_and_keeps_each_suites_items_apart():
    from data_builders.synthetic import generate
    lin, ari = list(generate("linear", 3, seed=7)), list(generate("arithmetic", 2, seed=8))
    right = {r["prompt"][-1]["content"]: (r["answer"], c) for r, c in zip(lin + ari, [1, 0, 1, 0, 0], strict=True)}
    calls = []

    class Counting(OracleEngine):
        def generate(self, prompts, *, n=1, mode="think", **kw):
            calls.append((mode, len(prompts)))
            return super().generate(prompts, n=n, mode=mode, **kw)
    cfg = EvalConfig(suites={"lin": SuiteConfig(family="linear", n=3, seed=7),
                             "ari": SuiteConfig(family="arithmetic", n=2, seed=8)}, samples=1, pass_k=[1])
    res = evaluate("m", cfg, engine=Counting(right))["suites"]
    assert calls == [("think", 5), ("no_think", 5)]
    assert res["lin"]["think"]["correct_per_item"] == [1, 0, 1] and res["ari"]["no_think"]["correct_per_item"] == [0, 0]
    assert res["lin"]["think"]["n_items"] == 3 and res["ari"]["think"]["accuracy"] == 0.0
    # a suite already scored is not asked again; the other still is
    again = evaluate("m", cfg, engine=Counting(right), previous={"suites": {"lin": res["lin"]}})["suites"]
    assert calls[2:] == [("think", 2), ("no_think", 2)] and again["lin"] == res["lin"]


def test_evaluate_reuses_what_an_earlier_result_holds():
    from data_builders.synthetic import generate
    rows = list(generate("linear", 3, seed=7))
    calls = []

    class Counting(OracleEngine):
        def generate(self, prompts, *, n=1, mode="think", **kw):
            calls.append(mode)
            return super().generate(prompts, n=n, mode=mode, **kw)
    engine = Counting({r["prompt"][-1]["content"]: (r["answer"], 1) for r in rows})
    cfg = EvalConfig(suites={"lin": SuiteConfig(family="linear", n=3, seed=7)}, modes=["think"], samples=2, pass_k=[1])
    first = evaluate("m", cfg, engine=engine)
    assert calls == ["think"]
    again = evaluate("m", cfg, engine=engine, previous=first)
    assert calls == ["think"] and again["suites"] == first["suites"]  # nothing new to generate
    both = evaluate("m", EvalConfig(**{**cfg.__dict__, "modes": ["think", "no_think"]}), engine=engine, previous=first)
    assert calls == ["think", "no_think"] and both["suites"]["lin"]["think"] == first["suites"]["lin"]["think"]
    evaluate("m", EvalConfig(**{**cfg.__dict__, "max_new_tokens": 9}), engine=engine, previous=first)
    assert calls == ["think", "no_think", "think"]  # other settings: evaluated again


def test_budget_curve_reuses_the_unlimited_point_of_the_eval():
    from data_builders.synthetic import generate
    from posttrain.evaluate import BudgetCurveConfig, budget_curve
    rows = list(generate("linear", 3, seed=7))
    budgets = []

    class Counting(OracleEngine):
        def generate(self, prompts, *, n=1, mode="think", thinking_budget=None, **kw):
            budgets.append(thinking_budget)
            return super().generate(prompts, n=n, mode=mode, **kw)
    engine = Counting({r["prompt"][-1]["content"]: (r["answer"], 1) for r in rows})
    cfg = EvalConfig(suites={"lin": SuiteConfig(family="linear", n=3, seed=7)}, modes=["think", "no_think"],
                     samples=2, pass_k=[1])
    results = evaluate("m", cfg, engine=engine)
    budgets.clear()
    from pathlib import Path

    from posttrain.evaluate import TaskEvalConfig
    tasks = str(Path(__file__).resolve().parents[1] / "pipelines" / "tasks.yaml")
    cfg = EvalConfig(**{**cfg.__dict__, "tasks": TaskEvalConfig(spec=tasks)})  # the curve leaves task kinds out
    curve = budget_curve("m", cfg, BudgetCurveConfig(budgets=[8, 4]), engine=engine, previous=results)
    assert budgets == [4, 8]  # the unlimited point is the eval's think entry
    assert [p["budget"] for p in curve["points"]] == [4, 8, None]
    assert curve["points"][-1]["suites"]["lin"]["accuracy"] == results["suites"]["lin"]["think"]["accuracy"]
    budget_curve("m", cfg, BudgetCurveConfig(budgets=[4], samples=1), engine=engine, previous=results)
    assert budgets == [4, 8, 4, None]  # other sample count: the unlimited point is generated again


def test_roc_auc_on_a_hand_made_case():
    from posttrain.core.stats import roc_auc
    labels = [True, True, True, False, False]
    # positives 0.9, 0.6, 0.4 against negatives 0.6, 0.1: 1 + 1, 0.5 + 1, 0 + 1 wins of 6 pairs
    assert roc_auc([0.9, 0.6, 0.4, 0.6, 0.1], labels) == pytest.approx(4.5 / 6)
    assert roc_auc([1, 1, 1, 1, 1], labels) == 0.5  # one score for everything: cannot tell
    assert roc_auc([1, 1, 1, 0, 0], labels) == 1.0 and roc_auc([0, 0, 0, 1, 1], labels) == 0.0
    assert roc_auc([0.3, 0.2], [True, True]) is None  # one class only: undefined


def test_think_follow_paired_gain():
    from posttrain.core.stats import compare_think_follow
    before = {"think_follow": {"per_turn": [1, 0, 0, 1], "items_sha": "s"}}
    after = {"think_follow": {"per_turn": [1, 1, 1, 1], "items_sha": "s"}}
    g = compare_think_follow(before, after)
    assert g["diff"] == pytest.approx(0.5) and g["se"] == pytest.approx(statistics.stdev([0, 1, 1, 0]) / 2)
    assert compare_think_follow(before, {"think_follow": {**after["think_follow"], "items_sha": "t"}}) is None
    assert compare_think_follow(before, {}) is None


def _suite(correct: list[int], length: float, truncated: float = 0.0) -> dict:
    return {"accuracy": sum(correct) / (2 * len(correct)), "correct_per_item": correct, "samples": 2,
            "items_sha": "s", "mean_length": length, "truncated": truncated}


def _scores(per_item: list[float], area: str = "instruction") -> dict:
    return {"score": sum(per_item) / len(per_item), "score_se": 0.0, "per_item": per_item, "area": area}


def test_each_stage_effect_in_one_line_from_report_json():
    """The terminal summary and report.md's opening lines: what each stage did, computed from the
    report alone, paired on the same items where both models were scored on them."""
    from posttrain.report.tables import markdown, summary

    def model(correct, length=50.0, tf=None, tasks=None, name=None, truncated=0.0, held=None):
        out = {"model": name, "suites": {"lin": {"think": _suite(correct, length, truncated),
                                                  "no_think": _suite(correct, length / 4)}}}
        if tf is not None:
            out["think_follow"] = {"score": sum(tf) / len(tf), "per_turn": tf, "items_sha": "t", "turns": len(tf),
                                   "by_mode": {}, "by_flag": {}}
        if held is not None:  # the held-out carry-over suite
            out["think_follow"]["held_out"] = {"score": sum(held) / len(held), "per_turn": held, "items_sha": "h",
                                               "turns": len(held), "by_mode": {}, "by_flag": {}}
        if tasks is not None:
            out["tasks"] = {"scores": tasks}
        return out

    def stage(sid, kind, source, **extra):
        return {"id": sid, "stage": kind, "input_model": f"runs/p/{source}/model", "model": f"runs/p/{sid}/model",
                "wall_time_s": 1.0, "metrics": {}, "eval": None} | extra

    ifk = {"if_case": {"think": _scores([0, 0.5]), "no_think": _scores([0, 0])},
           "rag": {"think": _scores([1, 1], "specialised")}}
    report = {"pipeline": "p", "run_dir": "runs/p", "base": {"eval": model([0, 0, 0, 0], tf=[0, 0, 1, 1], name="b",
                                                                                   held=[0, 1, 0, 1])},
              "stages": [
                  stage("cold", "cold_start", "base", eval=model([1, 2, 1, 0], name="runs/p/cold/model")),
                  stage("rl", "reasoning_rl", "cold", train_reward=[[1, 0.1], [2, 0.2], [3, 0.3], [4, 0.5]]),
                  stage("fusion", "fusion", "rl", eval=model([2, 2, 1, 0], 80.0, tf=[1, 1, 1, 1],
                                                             name="runs/p/fusion/model", held=[1, 1, 1, 0])),
                  stage("rm", "reward_model", "fusion", metrics={"heldout_accuracy": 0.75}),
                  stage("grl", "general_rl", "fusion", eval=model([2, 2, 1, 0], 80.0, tasks={
                      "if_case": {"think": _scores([1, 0.5]), "no_think": _scores([0.5, 0])},
                      "rag": {"think": _scores([0, 0], "specialised")}}, name="runs/p/grl/model")),
                  stage("student", "distill", "grl", params=50_000_000, input_params=100_000_000,
                        eval=model([1, 1, 0, 0], 60.0, name="runs/p/student/model", truncated=0.25))]}
    report["base"]["eval"]["model"] = "runs/p/base/model"  # the owner of the cold start's input
    report["stages"][0]["input_model"] = "runs/p/base/model"
    report["stages"][2]["eval"]["tasks"] = {"scores": ifk}  # fusion scored the kinds too: grl pairs with it
    lines = summary(report)
    assert lines[:2] == ["pipeline p: 6 stage(s), 6 s of stage wall time",
                         "stages: cold 1.0 s, rl 1.0 s, fusion 1.0 s, rm 1.0 s, grl 1.0 s, student 1.0 s"]
    assert lines[2] == "cold: think accuracy lin 0.000 -> 0.500 (+50.0 ± 20.4) vs base"
    assert lines[3] == "rl: training reward 0.100 -> 0.500 (steps 1-4)"
    # fusion's input (rl) was not evaluated: paired with the nearest model before that was
    assert lines[4] == ("fusion: ThinkFollow 0.500 -> 1.000 (+50.0 ± 28.9 vs base), "
                        "held-out 0.500 -> 0.750 (+25.0 ± 47.9 vs base); "
                        "no-think answers 0.25x think length; instruction kinds' reward 0.125 (1 kind); "
                        "think accuracy lin 0.500 -> 0.625 (+12.5 ± 12.5) vs cold")
    assert lines[5] == "rm: held-out pair accuracy 0.750"
    # instruction kinds only (not rag): per item (1-0, 0.5-0.5, 0.5-0, 0-0) over 4 items
    assert lines[6] == ("grl: instruction kinds' reward 0.125 -> 0.500 (+0.375 ± 0.239, 1 kind) vs fusion; "
                        "think accuracy lin 0.625 -> 0.625 (+0.0 ± 0.0) vs fusion")
    assert lines[7] == ("student: student 50.0M params (0.50x the teacher); 12% of answers at the length cap; "
                        "think accuracy lin 0.625 -> 0.250 (-37.5 ± 12.5, 0.40x the teacher's) vs grl")
    assert lines[8:] == ["end to end, student think accuracy: lin 0.250 (base 0.000)", "report: runs/p/report.md"]
    md = markdown(report, [], "t").splitlines()
    assert md[2:2 + 6] == [f"- {line}" for line in lines[2:8]]  # report.md opens with the same lines
    for s in report["stages"]:  # suites, but no stage evaluated
        s["eval"] = None
    assert summary(report)[2] == "cold: not evaluated (`eval: false`)"
    report["base"]["eval"] = None
    assert summary(report)[2] == "cold: not evaluated (the pipeline has no `eval`)"


def test_a_stage_without_eval_or_training_curves_leaves_a_note_not_a_failure(tmp_path):
    from types import SimpleNamespace

    from posttrain.core.context import StageContext
    from posttrain.core.rundir import MARKER
    from posttrain.report.collect import notes
    from posttrain.report.plots import plots as draw
    from posttrain.report.tables import markdown
    ctx = StageContext(stage_id="rm", dir=tmp_path / "01_rm", input_model="m")
    ctx.dir.mkdir()
    (ctx.dir / MARKER).write_text("{}")  # finished, but wrote no TensorBoard scalars
    planned = [SimpleNamespace(ctx=ctx)]
    result = {"suites": {"lin": {"think": {"accuracy": 0.5}}}}
    report = {"base": {"eval": result}, "stages": [{"id": "rm", "stage": "reward_model", "input_model": "m",
                                                    "wall_time_s": 1.0, "metrics": {}, "eval": None}]}
    report["notes"] = notes(report, planned)
    assert report["notes"] == ["rm: not evaluated (`eval: false` for this stage)",
                               "rm: no training curves (no TensorBoard scalars in tb/)"]
    plots = draw(tmp_path, report, planned)
    assert plots == ["plots/eval_accuracy.png"] and (tmp_path / plots[0]).is_file()  # only what has data
    text = markdown(report, plots, "t")
    assert "- rm: no training curves (no TensorBoard scalars in tb/)" in text


def test_eval_modes_flag_overrides_the_configs_modes(tmp_path, monkeypatch):
    from posttrain import cli
    from posttrain.cli import main
    (tmp_path / "eval.yaml").write_text("eval: {suites: {lin: {family: linear, n: 2}}, modes: [think]}\n")
    seen = []
    monkeypatch.setattr(cli, "evaluate", lambda *a, **k: seen.extend(
        x.modes for x in [*a, *k.values()] if isinstance(x, EvalConfig)) or {"suites": {}})
    args = ["eval", "--model", "unused", "--config", str(tmp_path / "eval.yaml")]
    assert main(args) == 0 and main(args + ["--modes", "think", "no_think"]) == 0
    assert seen == [["think"], ["think", "no_think"]]
