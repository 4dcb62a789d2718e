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
