"""`math` (math-verify with a hard time limit) and `countdown`."""

from __future__ import annotations

import json
import threading
import time

import pytest

import rewards
from rewards.math_answer import _WORKER, extract_final, last_boxed


@pytest.fixture(scope="module")
def math_reward():
    reward = rewards.get("math", timeout=3)
    reward(["\\boxed{1}"], answer=["1"])  # start the worker once
    return reward


@pytest.mark.parametrize("text, gold, expected", [
    ("<think>\nAdd them.\n</think>\n\nThe answer is \\boxed{42}.", "42", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("Answer: 3/4", "\\frac{3}{4}", 1.0),
    ("So the final answer is $\\frac{1}{2}$.", "0.5", 1.0),
    ("The answer is 3.5. Let me double-check: 7 / 2 = 3.5.", "7/2", 1.0),
    ("The answer is 12. Check: 3 * 4 = 12.\nAnswer: 13", "12", 0.0),  # the last statement counts
    ("first \\boxed{1}, then on reflection \\boxed{2}", "2", 1.0),  # the last box counts
    ("first \\boxed{1}, then on reflection \\boxed{2}", "1", 0.0),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("42", "42", 1.0),
    ("The answer is \\boxed{41}.", "42", 0.0),  # wrong
    ("<think>\nThe answer is \\boxed{42}", "42", 0.0),  # unterminated think: no answer
    ("<think>\n\\boxed{42}\n</think>\n\nI am not sure.", "42", 0.0),  # only the part after </think> counts
    ("", "42", 0.0),  # empty
    ("\\boxed{", "42", 0.0),  # malformed
    ("The answer is \\boxed{42}", None, None),  # no gold answer: not applicable
    ("The answer is \\boxed{42}", "", None),
])
def test_math_grades_the_final_answer(math_reward, text, gold, expected):
    assert math_reward([text], answer=[gold]) == [expected]


def test_math_takes_conversational_completions_and_trl_kwargs(math_reward):
    completions = [[{"role": "assistant", "content": "The answer is \\boxed{7}."}],
                   [{"role": "assistant", "content": "\\boxed{8}", "reasoning_content": "3 + 4 = 7"}]]
    scores = math_reward(completions, answer=["7", "7"], prompts=[[{"role": "user", "content": "3+4?"}]] * 2,
                         completion_ids=[[1, 2], [3]], trainer_state=None, log_extra=None)
    assert scores == [1.0, 0.0]


def test_last_boxed_balances_braces():
    assert last_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a} \\boxed{b{c}}") == "b{c}"
    assert last_boxed("\\boxed{unclosed") is None
    assert extract_final("Answer: 12.") == ("$12$", False)
    assert extract_final("   ") is None


PATHOLOGICAL = {
    "power-tower": "\\boxed{9^{9^{9^{9}}}}",
    "nested-frac-500": "\\boxed{" + "\\frac{1}{" * 500 + "2" + "}" * 500 + "}",
    "nested-braces-500": "\\boxed{" + "{" * 500 + "1" + "}" * 500 + "}",
    "huge-power": "The answer is $9^{387420489}$",
    "huge-factorial": "\\boxed{(10^{9})!}",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_answers_return_within_the_limit(math_reward, name):
    start = time.monotonic()
    assert math_reward([PATHOLOGICAL[name]], answer=["2"]) == [0.0]
    assert time.monotonic() - start < math_reward.timeout + 1.0


def test_hard_limit_kills_a_worker_stuck_past_math_verify_timeouts(math_reward):
    """math-verify's own limit set far beyond the hard limit: only the kill can stop it in time."""
    start = time.monotonic()
    reply = _WORKER.grade({"gold": "2", "pred": "$9^{387420489}$", "anchored": False, "limit": 60},
                          hard_limit=1.0, memory_mb=4096)
    assert reply["score"] == 0.0
    assert time.monotonic() - start < 1.0 + 1.0
    assert math_reward(["\\boxed{2}"], answer=["2"]) == [1.0]  # a fresh worker took over


def test_math_works_off_the_main_thread_with_its_limit(math_reward):
    out = {}

    def run():
        start = time.monotonic()
        out["scores"] = math_reward([PATHOLOGICAL["power-tower"], "\\boxed{2}"], answer=["2", "2"])
        out["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert out["scores"] == [0.0, 1.0]
    assert out["elapsed"] < math_reward.timeout + 2.0


COUNTDOWN = json.dumps({"target": 24, "numbers": [2, 3, 4]})


@pytest.mark.parametrize("text, expected", [
    ("<think>\n2*3*4\n</think>\n\n\\boxed{2 * 3 * 4}", 1.0),
    ("\\boxed{(4 - 2) \\times 3 \\times 4}", 0.0),  # 4 used twice
    ("\\boxed{2 + 3 + 4}", 0.0),  # wrong value
    ("\\boxed{2 ** 3 * 3}", 0.0),  # operator not allowed
    ("\\boxed{__import__('os')}", 0.0),  # not arithmetic
    ("2 * 3 * 4", 0.0),  # no box
    ("", 0.0),
])
def test_countdown(text, expected):
    reward = rewards.get("countdown")
    assert reward([text], answer=[COUNTDOWN]) == [expected]
    assert reward([text], answer=[None]) == [None]


def test_worker_imports_from_the_parents_path_and_says_why_it_cannot(tmp_path, monkeypatch):
    """The worker runs isolated (`-I`) yet sees the parent's sys.path: a `math_verify` found only
    there is the one it imports; one that fails to import is named in a clear error."""
    from rewards.math_answer import _Worker
    broken = tmp_path / "math_verify"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('planted by the test')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    worker = _Worker()
    try:
        with pytest.raises(RuntimeError, match="cannot import math_verify: planted by the test"):
            worker.grade({"gold": "1", "pred": "1", "anchored": False, "limit": 2}, 10, 0)
    finally:
        worker._kill()
