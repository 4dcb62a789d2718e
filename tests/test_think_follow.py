"""ThinkFollow: the turn rule, scoring on hand-made conversations, the held-out suite."""

from __future__ import annotations

import pytest

from posttrain.core.chat import EMPTY_THINK, resolve_mode
from posttrain.core.generation import Completion
from posttrain.thinkfollow import ThinkFollowConfig, think_follow
from rewards.formats import follows_mode


@pytest.mark.parametrize("text,think,no_think", [
    ("<think>\nworking\n</think>\n\n4", True, False),
    (EMPTY_THINK + "4", False, True),
    ("\n<think>\n\n</think>\n\n4", False, True),
    ("<think>\ncut off by the length lim", True, False),  # it did think
    ("<think>\n\n", False, False),  # neither: an empty block never closed
    ("4, no block at all", False, False),
])
def test_follows_mode(text, think, no_think):
    assert follows_mode(text, "think") is think and follows_mode(text, "no_think") is no_think


def turn(prompt, flag, where, mode):
    return {"prompt": prompt, "flag": flag, "where": where, "mode": mode, "kind": "qa", "default": False}


# A flag in the system message, later overridden by a user flag; a user /no_think that a flag-less
# turn inherits, then a /think that overrides it; no flag at all (thinking is the default).
PLANS = [
    {"system": "/no_think", "turns": [turn("Capital of Peru?", "/no_think", "system", "no_think"),
                                      turn("And of Chile?", "/think", "user", "think")]},
    {"system": None, "turns": [turn("2 + 2?", "/no_think", "user", "no_think"),
                               turn("3 + 3?", None, None, "no_think"),
                               turn("4 + 4?", "/think", "user", "think")]},
    {"system": None, "turns": [turn("Day after Monday?", None, None, "think")]},
]


class FlagEngine:
    """Answers with a think block chosen by `policy(messages)`; records what it was shown."""

    def __init__(self, policy):
        self.policy, self.shown = policy, []

    def generate(self, prompts, *, mode=None, **kwargs):
        assert mode is None  # ThinkFollow never forces the mode: the flags must do it
        self.shown += [list(p) for p in prompts]  # as shown, before the reply is appended
        return [[Completion("<think>\nsteps\n</think>\n\nok" if self.policy(m) == "think" else EMPTY_THINK + "ok")]
                for m in prompts]


@pytest.mark.parametrize("policy,score,by_flag_none,by_system", [
    (resolve_mode, 1.0, 1.0, 1.0),  # obeys the last flag
    (lambda m: "think", 0.5, 0.5, 0.0),  # always thinks: right exactly on the thinking turns
    (lambda m: resolve_mode([x for x in m if x["role"] != "system"]), 5 / 6, 1.0, 0.0),  # ignores system flags
])
def test_think_follow_scores_hand_made_conversations(policy, score, by_flag_none, by_system):
    engine = FlagEngine(policy)
    result = think_follow(engine, ThinkFollowConfig(), plans=PLANS)
    assert result["turns"] == 6 and result["conversations"] == 3
    assert result["score"] == pytest.approx(score)
    assert result["by_flag"]["none"] == pytest.approx(by_flag_none)
    assert result["by_flag"]["system"] == pytest.approx(by_system)
    assert len(result["per_turn"]) == 6
    # the model answered each turn with its earlier replies in the history, reasoning kept apart
    last = next(m for m in engine.shown if m[-1]["content"] == "4 + 4? /think")
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert last[1]["content"] == "ok" and last[1]["reasoning_content"] in ("steps", "")


def test_suite_is_held_out_multi_turn_and_deterministic():
    from data_builders.flags import suite
    cfg = ThinkFollowConfig(n=40)
    plans = suite(cfg.kinds, cfg.n, cfg.seed, cfg.max_turns)
    assert plans == suite(cfg.kinds, cfg.n, cfg.seed, cfg.max_turns)
    turns = [t for p in plans for t in p["turns"]]
    assert {len(p["turns"]) for p in plans} == {1, 2, 3}
    assert {t["where"] for t in turns} == {"user", "system", None}
    assert {t["mode"] for t in turns} == {"think", "no_think"}
    assert {t["kind"] for t in turns} == set(cfg.kinds)
    assert len({t["prompt"] for t in turns}) > 0.8 * len(turns)
