"""`think_format` and `think_follow`."""

from __future__ import annotations

import pytest

import rewards
from posttrain.core.chat import EMPTY_THINK

THINK = "<think>\nLet me work it out.\n</think>\n\nThe answer."
EMPTY = EMPTY_THINK + "The answer."


@pytest.mark.parametrize("text, expected", [
    (THINK, 1.0),
    (EMPTY, 1.0),
    ("\n" + THINK, 1.0),  # leading whitespace is fine
    ("<think>\nreasoning\n</think>", 1.0),  # a block and an empty answer is still well formed
    ("The answer.", 0.0),  # no block
    ("<think>\nnever closed", 0.0),
    ("Preamble <think>\nx\n</think>\n\nanswer", 0.0),  # not at the start
    ("<think>\na <think> b\n</think>\n\nanswer", 0.0),  # nested open
    ("<think>\na\n</think>\n\nanswer </think> more", 0.0),  # stray close (TRL's regex alone accepts it)
    ("<think>\na\n</think>\n\n<think>\nb\n</think>\n\nc", 0.0),  # two blocks
    ("</think>\n\nanswer", 0.0),
    ("", 0.0),
])
def test_think_format(text, expected):
    reward = rewards.get("think_format")
    assert reward([text]) == [expected]
    assert reward([[{"role": "assistant", "content": text}]]) == [expected]


def test_think_format_knows_what_the_prompt_prefilled():
    reward = rewards.get("think_format")
    # enable_thinking=False: the template already holds the empty block, the completion is the answer
    assert reward(["The answer.", THINK], enable_thinking=[False, False]) == [1.0, 0.0]
    opened = rewards.get("think_format", prefill="<think>\n")  # a template that opens the block itself
    assert opened(["reasoning\n</think>\n\nanswer", "answer only"]) == [1.0, 0.0]


def user(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("prompt, text, expected", [
    (user("What is 2+2?"), THINK, 1.0),  # thinking is the default
    (user("What is 2+2?"), EMPTY, 0.0),
    (user("What is 2+2? /no_think"), EMPTY, 1.0),
    (user("What is 2+2? /no_think"), "<think>\n   \n</think>\n\nfour", 1.0),  # whitespace-only block
    (user("What is 2+2? /no_think"), THINK, 0.0),
    (user("What is 2+2? /no_think"), "four", 0.0),  # the empty block must be there
    (user("What is 2+2? /think"), THINK, 1.0),
    ([{"role": "system", "content": "/no_think"}, {"role": "user", "content": "hi"},
      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and now? /think"}], THINK, 1.0),
    ([{"role": "user", "content": "a /think"}, {"role": "assistant", "content": "x"},
      {"role": "user", "content": "b /no_think"}], THINK, 0.0),  # the last flag wins
    (user("hi /no_think"), "<think>\n\n</think>\n\n<think>\nsneaky\n</think>\n\nx", 0.0),  # malformed
    (user("hi"), "", 0.0),
])
def test_think_follow(prompt, text, expected):
    reward = rewards.get("think_follow")
    assert reward([text], prompt=[prompt]) == [expected]
    assert reward([[{"role": "assistant", "content": text}]], prompts=[prompt]) == [expected]  # TRL's kwarg


def test_think_follow_hard_switch_beats_flags():
    reward = rewards.get("think_follow")
    # enable_thinking=False: the prompt ends in the empty block, so the completion is the answer
    assert reward(["The answer.", THINK], prompt=[user("x /think")] * 2, enable_thinking=[False] * 2) == [1.0, 0.0]
