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

REASONING = "reasoning"  # the reasoning families (stage-1 queries); the other kinds are direct.KINDS


@dataclass
class FlagMix:
    think_share: float = 0.5  # share of assistant turns in thinking mode (the mix ratio)
    # task kinds by weight, drawn independently of the mode: `reasoning` and the direct kinds
    # (instruction, qa, rewrite)
    kinds: dict[str, float] = field(default_factory=lambda: {REASONING: 0.5, "instruction": 0.2, "qa": 0.15,
                                                              "rewrite": 0.15})
    no_flag_share: float = 0.3  # turns whose mode is already implied that carry no flag
    system_flag_share: float = 0.3  # conversations whose first flag sits in the system message
    multi_turn_share: float = 0.5  # conversations of 2..max_turns turns
    max_turns: int = 3

    def __post_init__(self):
        for name in ("think_share", "no_flag_share", "system_flag_share", "multi_turn_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        unknown = set(self.kinds) - {REASONING, *direct.KINDS}
        if unknown or not self.kinds or min(self.kinds.values()) < 0:
            raise ValueError(f"kinds: unknown {sorted(unknown)} or empty/negative weights "
                             f"(known: {REASONING}, {', '.join(direct.KINDS)})")
        if self.max_turns < 1:
            raise ValueError("max_turns must be at least 1")


def script(cfg: FlagMix, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """`n` conversation plans: an optional system flag, then turns of {kind, flag, where, mode}.

    A turn's mode is the last flag seen so far (`resolve_mode`, as the model must learn it): a later
    flag overrides an earlier one, a turn without a flag keeps the mode in force, and with no flag
    at all the mode is thinking (the default). `where` is "user", "system" or None (no flag)."""
    kinds, weights = zip(*cfg.kinds.items(), strict=True)
    plans = []
    for _ in range(n):
        multi = cfg.max_turns > 1 and rng.random() < cfg.multi_turn_share
        seen: list[dict[str, str]] = []  # the flags so far, as messages, for resolve_mode
        plan: dict[str, Any] = {"system": None, "turns": []}
        for t in range(rng.randint(2, cfg.max_turns) if multi else 1):
            want = "think" if rng.random() < cfg.think_share else "no_think"
            flag = THINK_FLAG if want == "think" else NO_THINK_FLAG
            if t == 0 and rng.random() < cfg.system_flag_share:
                where, plan["system"] = "system", flag
                seen.append({"role": "system", "content": flag})
            elif want == resolve_mode(seen) and rng.random() < cfg.no_flag_share:
                where, flag = None, None
            else:
                where = "user"
                seen.append({"role": "user", "content": flag})
            plan["turns"].append({"kind": rng.choices(kinds, weights)[0], "flag": flag, "where": where,
                                  "mode": resolve_mode(seen), "default": not seen})
        plans.append(plan)
    return plans


def user_text(prompt: str, turn: dict[str, Any]) -> str:
    return f"{prompt} {turn['flag']}" if turn["where"] == "user" else prompt


def suite(kinds: dict[str, float], n: int, seed: int, max_turns: int = 3) -> list[dict[str, Any]]:
    """Held-out multi-turn conversations with random flags (the ThinkFollow suite): per plan, its
    system flag and turns with their `prompt` and the `mode` a model must answer in."""
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
