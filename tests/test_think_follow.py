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


def test_held_out_suite_carries_the_flag_over_on_questions_no_training_data_uses():
    """The held-out suite: three turns, the last unflagged and decided one or two turns back, on TRIVIA
    and countdown questions that neither the fusion mix's sources nor the first suite draw from."""
    from data_builders import direct, synthetic
    from data_builders.flags import TRIVIA, carry_suite
    plans = carry_suite(60, 10_002)
    assert plans == carry_suite(60, 10_002) and all(len(p["turns"]) == 3 for p in plans)
    for p in plans:
        seen = [{"role": "system", "content": p["system"]}] if p["system"] else []
        for i, t in enumerate(p["turns"]):
            seen.append({"role": "user", "content": f"{t['prompt']} {t['flag']}" if t["where"] == "user" else ""})
            assert t["mode"] == resolve_mode(seen)
            flagged = [j for j, u in enumerate(p["turns"][:i + 1]) if u["flag"]]
            assert t["distance"] == (None if t["flag"] else i - flagged[-1])
        assert p["turns"][-1]["flag"] is None and p["turns"][-1]["distance"] in (1, 2)
    last = [p["turns"][-1] for p in plans]
    assert {t["distance"] for t in last} == {1, 2} and {t["mode"] for t in last} == {"think", "no_think"}
    assert {t["where"] for p in plans for t in p["turns"]} == {"user", "system", None}
    asked = {t["prompt"] for p in plans for t in p["turns"]}
    countdown = [q for q in asked if q not in TRIVIA]
    assert countdown and all(q.startswith("Using the numbers") for q in countdown)
    trained = {r["prompt"][-1]["content"] for kind in direct.KINDS for r in direct.generate(kind, 300, seed=0)}
    trained |= {r["prompt"][-1]["content"] for f in ("arithmetic", "linear") for r in synthetic.generate(f, 300)}
    assert not asked & trained


def test_held_out_suite_is_scored_beside_the_first_and_paired():
    """`held_out: N` scores the carry-over suite too, paired turn by turn; a model that sees only the
    flags of the last two user turns fails where the deciding flag is further back or in the system."""
    from posttrain.core.stats import compare_think_follow

    def forgetful(messages):
        return resolve_mode([m for m in messages if m["role"] == "user"][-2:])
    cfg = ThinkFollowConfig(n=4, held_out=24, kinds={"qa": 1.0})
    good, bad = (think_follow(FlagEngine(p), cfg) for p in (resolve_mode, forgetful))
    assert good["held_out"]["score"] == 1.0 and good["held_out"]["by_distance"] == {"1": 1.0, "2": 1.0}
    turns = [(t, p["turns"][max(0, i - 1):i + 1]) for p in cfg.held_out_plans() for i, t in enumerate(p["turns"])]
    right = [next((u["flag"] for u in reversed(recent) if u["where"] == "user"), "/think") == f"/{t['mode']}"
             for t, recent in turns]
    assert 0 < sum(right) < len(right) and bad["held_out"]["per_turn"] == [int(r) for r in right]
    far = [r for (t, _), r in zip(turns, right, strict=True) if t["distance"] == 2]
    assert bad["held_out"]["by_distance"]["2"] == pytest.approx(sum(far) / len(far)) and not all(far)
    gain = compare_think_follow({"think_follow": bad}, {"think_follow": good}, held_out=True)
    assert gain["diff"] == pytest.approx(1 - sum(right) / len(right))
