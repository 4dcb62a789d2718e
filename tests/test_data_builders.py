"""Synthetic families and the cold-start filters: each rejects what it should and keeps what it should."""

from __future__ import annotations

import json
import re

import pytest

from data_builders import filters
from data_builders.synthetic import FAMILIES, PY_TASKS, generate
from rewards.countdown import verify_countdown
from rewards.sandbox import run_tests


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_families_are_deterministic_and_in_the_column_contract(family):
    a, b = generate(family, 5, seed=3), generate(family, 5, seed=3)
    assert a.to_list() == b.to_list() and a.to_list() != generate(family, 5, seed=4).to_list()
    for row in a:
        assert row["prompt"][0]["role"] == "user" and row["task"] in ("math", "countdown", "code")
        assert row["domain"] == family and row["reasoning"] and row["response"]


def test_arithmetic_and_linear_traces_end_in_the_right_answer():
    for row in generate("arithmetic", 20, seed=1, steps=3):
        final = row["reasoning"].splitlines()
        assert final[0].split(" starts with ")[1].split()[0].isdigit()
        assert f"\\boxed{{{row['answer']}}}" in row["response"]
        assert final[-1].split(" has ")[1].split()[0] == row["answer"]
    for row in generate("linear", 20, seed=1, two_sided=True):
        eq = row["prompt"][0]["content"].removeprefix("Solve for x: ").split(". Put")[0]
        left, right = re.sub(r"(\d)x", r"\1*x", eq).split("=")
        x = int(row["answer"])
        assert eval(left, {"x": x}) == eval(right, {"x": x})  # our own generated equation text


def test_countdown_solutions_verify():
    for row in generate("countdown", 20, seed=2, numbers=4):
        spec = json.loads(row["answer"])
        expr = row["response"].split("\\boxed{")[1].rsplit("}", 1)[0]
        assert verify_countdown(expr, spec["numbers"], spec["target"])


def test_python_reference_solutions_pass_their_tests_in_the_sandbox():
    rows = generate("python", 12, seed=5)
    assert len({r["prompt"][0]["content"].split("`")[1] for r in rows}) > 4  # several templates
    row = rows[0]
    code = row["response"].split("```python\n")[1].split("```")[0]
    assert run_tests(code, row["tests"]).all_passed
    assert not run_tests("def nothing(): pass\n", row["tests"]).all_passed
    assert len(PY_TASKS) >= 12


def row(prompt="Solve for x: 2x + 1 = 5. Put the final answer in \\boxed{}.", answer="2", task="math"):
    return {"prompt": [{"role": "user", "content": prompt}], "answer": answer, "tests": "", "task": task}


GOOD = ("<think>\nSubtract 1 from both sides: 2x = 4.\nDivide both sides by 2: x = 2.\nCheck: 2*2 + 1 = 5.\n"
        "</think>\n\nThe answer is \\boxed{2}.")


def test_query_filters():
    assert not filters.unverifiable(row())
    assert filters.unverifiable(row(answer=""))
    assert filters.unverifiable(row("(a) Find x. (b) Find y."))
    assert filters.unverifiable(row("Write a short story about a dragon."))
    index = filters.NearDuplicateIndex(["Solve for x: 2x + 1 = 5. Put the final answer in \\boxed{}."], threshold=0.8)
    assert index.is_near_duplicate("Solve for x:  2x + 1 = 5. Put the final answer in \\boxed{}")
    assert not index.is_near_duplicate("Tom has 3 apples and buys 4 more. How many apples?")


REJECT = {
    "wrong_answer": GOOD.replace("\\boxed{2}", "\\boxed{3}").replace("x = 2.", "x = 3."),
    "repetition": "<think>\n" + "Divide both sides by 2 to get x.\n" * 6 + "</think>\n\nThe answer is \\boxed{2}.",
    "guesswork": ("<think>\nI guess it is probably two, hard to say really without trying.\n</think>\n\n"
                  "The answer is \\boxed{2}."),
    "inconsistent_summary": GOOD.replace("Check: 2*2 + 1 = 5.", "So x = 7, done.").replace("x = 2.", "x = 2 maybe."),
    "language_mixing": GOOD.replace("Divide both sides", "两边同时除以二 然后得到答案 Divide both sides"),
    "eval_overlap": "<think>\nThe eval item says: Solve for x: 2x + 1 = 5. Put the final answer in boxed.\n"
                    "Subtract and divide to get 2.\n</think>\n\nThe answer is \\boxed{2}.",
}


@pytest.mark.parametrize("rule", list(filters.RESPONSE_FILTERS))
def test_each_response_rule_rejects_its_case_and_keeps_a_good_response(rule):
    index = filters.NearDuplicateIndex(["The eval item says: Solve for x: 2x + 1 = 5. Put the final answer in boxed. "
                                        "Subtract and divide to get 2. The answer is 2."], threshold=0.5)
    ctx = {"eval_index": index}
    check = filters.RESPONSE_FILTERS[rule]
    assert check(REJECT[rule], row(), ctx), f"{rule} kept a response it should reject"
    assert not check(GOOD, row(), ctx), f"{rule} rejected a good response"


def test_apply_response_filters_counts_per_rule():
    kept, counts = filters.apply_response_filters([GOOD, REJECT["wrong_answer"], REJECT["repetition"], GOOD], row(), {})
    assert kept == [GOOD, GOOD]
    assert counts["wrong_answer"] == 1 and counts["repetition"] == 1 and sum(counts.values()) == 2
    with pytest.raises(ValueError, match="unknown response filter"):
        filters.apply_response_filters([GOOD], row(), {"rules": ["vibes"]})


def test_learnability_drops_always_right_and_always_wrong():
    rates = [0.0, 0.25, 1.0, 0.5, 0.0, 0.75, 1.0]
    assert filters.learnable(rates) == [1, 3, 5]
    assert filters.learnable(rates, low=0.25, high=0.9) == [3, 5]
    assert filters.pass_rate_histogram(rates, bins=5) == {"0.00": 2, "0.25": 1, "0.50": 1, "0.75": 1, "1.00": 2}


@pytest.mark.parametrize("family", ["arithmetic", "linear", "countdown"])
def test_solver_traces_pass_all_six_rules(family):
    for r in generate(family, 10, seed=9):
        response = f"<think>\n{r['reasoning']}\n</think>\n\n{r['response']}"
        kept, counts = filters.apply_response_filters([response], r, {})
        assert kept == [response], counts


def test_cold_start_rejects_each_bad_response_by_its_rule(tmp_path):
    """The cold-start builder on a responder that answers every query with one good response and six
    bad ones, each breaking one rule: each rule's count is the number of queries, only the good
    responses are kept, a query the model solves without CoT is dropped, and a query with no good
    response is set aside (pass@N = 0), not silently lost."""
    from data_builders import cold_start
    from posttrain.core.context import StageContext
    from posttrain.core.generation import Completion
    from tests.conftest import OneEngine
    eval_item = generate("linear", 1, seed=10001)[0]["prompt"][0]["content"]
    rows = {r["prompt"][0]["content"]: r for r in generate("arithmetic", 10, seed=1)}
    picked = {}  # the first query asked without CoT is answered right; the first asked with CoT, never well

    def responses(row):
        think, answer = row["reasoning"], row["response"]
        block = lambda reasoning, said=answer: f"<think>\n{reasoning}\n</think>\n\n{said}"  # noqa: E731
        bad = [block(think, "The answer is \\boxed{-1}."),  # wrong_answer
               block(think + "\nLet me add it all up once more.\n" * 3),  # repetition
               block(f"I guess it is {row['answer']}."),  # guesswork
               block(think + "\nTherefore the answer is 123456."),  # inconsistent_summary
               block(think + " 我们再仔细地检查一遍这个计算的每一个步骤吧好的没有问题的"),  # language_mixing
               block(eval_item + f" x = {row['answer']}", f"\\boxed{{{row['answer']}}}")]  # eval_overlap
        return bad if row is picked["hopeless"] else [*bad, block(think)]

    class Responder:
        def generate(self, prompts, n=1, mode="think", **kw):
            asked = [rows[p[0]["content"]] for p in prompts]
            if mode == "no_think":
                picked.setdefault("solved", asked[0])
                return [[Completion(f"\\boxed{{{r['answer']}}}" if r is picked["solved"] else "no idea")] * n
                        for r in asked]
            picked.setdefault("hopeless", asked[0])
            return [[Completion(t) for t in responses(r)] for r in asked]
    ctx = StageContext(stage_id="cold_start", dir=tmp_path / "cs", input_model="unused", held_out=[eval_item],
                       engines=OneEngine(Responder()))
    cfg = cold_start.ColdStartData(families={"arithmetic": 10}, validation_fraction=0.2, responder="input",
                                   no_cot_k=2, near_duplicate_threshold=0.6)
    data = cold_start.build(ctx, cfg)
    report = json.loads((ctx.dir / "cold_start_data.json").read_text())
    assert report["query_filters"] == {"unverifiable": 0, "near_duplicate_of_eval": 0, "solved_without_cot": 1}
    assert report["queries_after_filters"] == 7  # 10 - 2 held out for validation - 1 solved without CoT
    assert report["response_rejections"] == {rule: 7 for rule in filters.RESPONSE_FILTERS}
    assert report["examples"] == len(data) == 6 and report["set_aside_pass_at_n_zero"] == 1
    for messages in data["messages"]:  # the good response: the solver's trace, then its answer
        row = rows[messages[0]["content"]]
        assert (messages[-1]["reasoning_content"], messages[-1]["content"]) == (row["reasoning"], row["response"])
    questions = {m[0]["content"] for m in data["messages"]}
    assert picked["solved"]["prompt"][0]["content"] not in questions
    set_aside = json.loads((ctx.dir / "set_aside.json").read_text())
    assert [s["prompt"] for s in set_aside] == [picked["hopeless"]["prompt"]]
