"""Conversations with `/think` and `/no_think` flags (report §4.3): which task kind each turn
asks, where its flag sits, and the mode the answer must take — the last flag seen so far, thinking
when there is none. Shared by the stage-3 data builder and the held-out ThinkFollow suite.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from data_builders import direct, synthetic
from posttrain.core.chat import NO_THINK_FLAG, THINK_FLAG, resolve_mode

REASONING = "reasoning"  # the reasoning families (stage-1 queries)
TOOL_USE = "shop"  # agent episodes whose tools run (data_builders/agent.py); the other kinds are direct.KINDS
TOOL_CALL = "tool_call"  # one call of a tool given by its schema (stage 4's `tool_call_format` items)
TOOL_KINDS = (TOOL_USE, TOOL_CALL)


@dataclass
class FlagMix:
    think_share: float = 0.5  # share of assistant turns in thinking mode (the mix ratio)
    # task kinds by weight, drawn independently of the mode: `reasoning`, the direct kinds
    # (instruction, qa, rewrite), `shop` (tool use) and `tool_call` (one call)
    kinds: dict[str, float] = field(default_factory=lambda: {REASONING: 0.5, "instruction": 0.2, "qa": 0.15,
                                                              "rewrite": 0.15})
    no_flag_share: float = 0.3  # turns whose mode is already implied that carry no flag
    system_flag_share: float = 0.3  # conversations whose first flag sits in the system message
    multi_turn_share: float = 0.5  # conversations of 2..max_turns turns
    max_turns: int = 3
    # multi-turn conversations of max_turns turns whose first turn (and the second, in half of them)
    # carries a flag and no later turn does: the mode is set one or two turns back and must carry over
    carry_share: float = field(default=0.0, metadata={"added": True})

    def __post_init__(self):
        for name in ("think_share", "no_flag_share", "system_flag_share", "multi_turn_share", "carry_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        unknown = set(self.kinds) - {REASONING, *TOOL_KINDS, *direct.KINDS}
        if unknown or not self.kinds or min(self.kinds.values()) < 0:
            raise ValueError(f"kinds: unknown {sorted(unknown)} or empty/negative weights "
                             f"(known: {', '.join([REASONING, *TOOL_KINDS, *direct.KINDS])})")
        if self.max_turns < 1:
            raise ValueError("max_turns must be at least 1")


def script(cfg: FlagMix, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """`n` conversation plans: an optional system flag, then turns of {kind, flag, where, mode}.

    A turn's mode is the last flag seen so far (`resolve_mode`, as the model must learn it): a later
    flag overrides an earlier one, a turn without a flag keeps the mode in force, and with no flag
    at all the mode is thinking (the default). `where` is "user", "system" or None (no flag). A carry
    conversation (`carry_share` of the multi-turn ones) has flags on its opening turn or two only."""
    kinds, weights = zip(*cfg.kinds.items(), strict=True)
    plans = []
    for _ in range(n):
        multi = cfg.max_turns > 1 and rng.random() < cfg.multi_turn_share
        # no extra draw without carry_share, so mixes made before it are drawn the same
        carry = multi and cfg.carry_share > 0 and rng.random() < cfg.carry_share
        flagged = (1 + (cfg.max_turns > 2 and rng.random() < 0.5)) if carry else cfg.max_turns
        seen: list[dict[str, str]] = []  # the flags so far, as messages, for resolve_mode
        plan: dict[str, Any] = {"system": None, "turns": []}
        for t in range(cfg.max_turns if carry else rng.randint(2, cfg.max_turns) if multi else 1):
            want = "think" if rng.random() < cfg.think_share else "no_think"
            flag = THINK_FLAG if want == "think" else NO_THINK_FLAG
            if t >= flagged:  # a carry conversation's later turns: the mode set earlier holds
                where, flag = None, None
            elif t == 0 and rng.random() < cfg.system_flag_share:
                where, plan["system"] = "system", flag
                seen.append({"role": "system", "content": flag})
            elif not carry and want == resolve_mode(seen) and rng.random() < cfg.no_flag_share:
                where, flag = None, None
            else:
                where = "user"
                seen.append({"role": "user", "content": flag})
            plan["turns"].append({"kind": rng.choices(kinds, weights)[0], "flag": flag, "where": where,
                                  "mode": resolve_mode(seen), "default": not seen})
        plans.append(plan)
    return plans


def flipped(plan: dict[str, Any]) -> dict[str, Any] | None:
    """The plan with every flag turned over (`/think` <-> `/no_think`, each in its place) and each turn's
    mode resolved again: the same conversation in which only the flags differ, so only they can decide
    the mode. None for a plan without any flag (it would be the same conversation). The twin is marked
    `twin: True`."""
    if plan["system"] is None and all(t["where"] is None for t in plan["turns"]):
        return None
    other = {THINK_FLAG: NO_THINK_FLAG, NO_THINK_FLAG: THINK_FLAG, None: None}
    twin: dict[str, Any] = {"system": other[plan["system"]], "turns": [], "twin": True}
    seen = [{"role": "system", "content": twin["system"]}] if twin["system"] else []
    for turn in plan["turns"]:
        flag = other[turn["flag"]]
        if turn["where"] == "user":
            seen.append({"role": "user", "content": flag})
        twin["turns"].append({**turn, "flag": flag, "mode": resolve_mode(seen)})
    return twin


def user_text(prompt: str, turn: dict[str, Any]) -> str:
    return f"{prompt} {turn['flag']}" if turn["where"] == "user" else prompt


def suite(kinds: dict[str, float], n: int, seed: int, max_turns: int = 3) -> list[dict[str, Any]]:
    """Held-out multi-turn conversations with random flags (the ThinkFollow suite): per plan, its
    system flag and turns with their `prompt` and the `mode` a model must answer in."""
    if set(TOOL_KINDS) & set(kinds):
        raise ValueError(f"think_follow kinds: {sorted(set(TOOL_KINDS) & set(kinds))} are tool-use kinds, not "
                         "ThinkFollow question sources")
    cfg = FlagMix(kinds=kinds, max_turns=max_turns, multi_turn_share=0.6, system_flag_share=0.3, no_flag_share=0.4)
    plans = script(cfg, n, random.Random(f"think_follow:{seed}"))
    need = {k: sum(t["kind"] == k for p in plans for t in p["turns"]) for k in kinds}
    items = {k: direct.generate(k, need[k], seed=seed) for k in kinds if k != REASONING and need[k]}
    if need.get(REASONING):
        half = (need[REASONING] + 1) // 2
        items[REASONING] = [*synthetic.generate("arithmetic", half, seed=seed, steps=2),
                            *synthetic.generate("linear", half, seed=seed)][:need[REASONING]]
    used = {k: 0 for k in items}
    for plan in plans:
        for turn in plan["turns"]:
            turn["prompt"] = items[turn["kind"]][used[turn["kind"]]]["prompt"][-1]["content"]
            used[turn["kind"]] += 1
    return plans


# Questions of the held-out ThinkFollow suite only (`carry_suite`): no training data draws on these
# tables or on the countdown family, so the suite tests the flags on questions the model never saw.
TRIVIA = ["How many legs does a spider have?", "What colour do you get by mixing blue and yellow?",
          "How many minutes are in an hour?", "Which planet is closest to the sun?",
          "What is frozen water called?", "How many sides does a hexagon have?",
          "Which animal is known as the king of the jungle?", "What do bees make?",
          "How many wheels does a tricycle have?", "Which ocean is the largest?",
          "What is the plural of 'mouse'?", "How many hours are in a day?",
          "What gas do plants take in from the air?", "Which instrument has black and white keys?",
          "How many strings does a standard violin have?", "What is the tallest animal?",
          "Name a fruit that is yellow when ripe.", "How many continents are there?",
          "What is the boiling point of water in Celsius?", "Which bird is a symbol of peace?",
          "How many players are on a football (soccer) team on the field?", "What is a baby cat called?",
          "Which season comes after autumn?", "What shape has three sides?"]


def carry_suite(n: int, seed: int, turns: int = 3) -> list[dict[str, Any]]:
    """The held-out ThinkFollow suite: N conversations of TURNS turns whose questions come from sources
    no training data uses (TRIVIA and countdown puzzles), with a flag on the first turn (in the user
    or the system message), a flag on the second in half of them, and none after: the last turn's
    mode is decided one or two turns back (`distance`), so the flag must carry over. Same plan format
    as `suite`."""
    rng = random.Random(f"think_follow_carry:{seed}")
    puzzles = [r["prompt"][-1]["content"] for r in synthetic.generate("countdown", n * turns, seed=seed)]
    questions = [q for pair in zip(rng.sample(TRIVIA * (1 + n * turns // len(TRIVIA)), n * turns), puzzles,
                                   strict=False) for q in pair]
    plans = []
    for i in range(n):
        plan: dict[str, Any] = {"system": None, "turns": []}
        seen: list[dict[str, str]] = []
        second = rng.random() < 0.5
        for t in range(turns):
            flag = rng.choice([THINK_FLAG, NO_THINK_FLAG]) if t == 0 or (t == 1 and second) else None
            where = None if flag is None else "system" if t == 0 and rng.random() < 0.3 else "user"
            if where == "system":
                plan["system"] = flag
            if flag:
                seen.append({"role": where, "content": flag})
            plan["turns"].append({"kind": "held_out", "flag": flag, "where": where, "mode": resolve_mode(seen),
                                  "default": False, "distance": None if flag else (t - (1 if second else 0)),
                                  "prompt": questions[i * turns + t]})
        plans.append(plan)
    return plans
