"""`code`: the answer's final python block against the sample's tests, in the sandbox."""

from __future__ import annotations

import time

import pytest

import rewards
from rewards.code_exec import extract_code

TESTS = "assert square(2) == 4\nassert square(-3) == 9\nassert square(0) == 0\nassert square(5) == 25\n"
GOOD = "Here it is:\n```python\ndef square(x):\n    return x * x\n```"
LOOP = "```python\ndef square(x):\n    while True:\n        pass\n```"


@pytest.fixture(scope="module")
def code():
    return rewards.get("code", timeout=2)


def test_correct_wrong_malformed_and_empty(code):
    texts = [GOOD,
             "```python\ndef square(x):\n    return x + x\n```",  # wrong (passes 2 of 4)
             "```python\ndef square(x) return x\n```",  # syntax error
             "def square(x):\n    return x * x",  # no code block
             ""]
    assert code(texts, tests=[TESTS] * 5) == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_partial_credit_is_the_fraction_of_asserts():
    partial = rewards.get("code", partial=True, timeout=2)
    texts = [GOOD, "```python\ndef square(x):\n    return x + x\n```", "```python\nsquare = abs\n```", ""]
    assert partial(texts, tests=[TESTS] * 4) == [1.0, 0.5, 0.25, 0.0]  # abs passes only square(0)


def test_only_the_final_python_block_after_think_is_run(code):
    draft = "```python\ndef square(x):\n    return 0\n```\nActually:\n" + GOOD
    in_think = "<think>\n" + GOOD + "\n</think>\n\nI could not do it."
    unterminated = "<think>\n" + GOOD
    assert code([draft, in_think, unterminated], tests=[TESTS] * 3) == [1.0, 0.0, 0.0]


def test_conversational_completions_and_missing_or_broken_tests(code):
    conv = [[{"role": "assistant", "content": GOOD}]] * 3
    assert code(conv, tests=[TESTS, None, "assert (\n"]) == [1.0, None, None]


def test_timeouts_are_contained_and_parallel(code):
    start = time.monotonic()
    assert code([LOOP, LOOP, GOOD, LOOP], tests=[TESTS] * 4) == [0.0, 0.0, 1.0, 0.0]
    assert time.monotonic() - start < 2 * 2 + 3  # four samples, four workers: about one timeout


def test_hostile_solutions_score_zero(code):
    hostile = ["```python\nimport os\nos.kill(os.getppid(), 9)\ndef square(x):\n    return x * x\n```",
               "```python\nimport socket\nsocket.create_connection(('127.0.0.1', 22))\n```",
               "```python\nprint('x' * 10 ** 8)\n```"]
    scores = code(hostile, tests=[TESTS] * 3)
    assert scores[1:] == [0.0, 0.0]
    assert scores[0] in (0.0, 1.0)  # killing the parent fails; the function itself is correct


def test_extract_code():
    assert extract_code("```py\na = 1\n```\n```python\nb = 2\n```") == "b = 2\n"
    assert extract_code("```\nc = 3\n```") == "c = 3\n"
    assert extract_code("```python\nd = 4\n```\n```\nplain\n```") == "d = 4\n"
    assert extract_code("no code") is None


def test_unknown_sandbox_limit_is_rejected_at_construction():
    with pytest.raises(TypeError):
        rewards.get("code", not_a_limit=1)
