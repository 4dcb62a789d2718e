"""ThinkFollow (report Table 22): does the model think, or not, when the conversation says so?

A held-out suite of one- to three-turn conversations with random `/think` and `/no_think` flags in
user and system messages (data_builders/flags.py `suite`). The model answers turn by turn with
its own earlier replies in the history (reasoning dropped, as the Qwen3 template keeps history),
and no mode is forced: the flags are plain text, as in `posttrain chat`. A turn follows when its
think block is empty exactly when the last flag so far is `/no_think`, and has content when it is
`/think` or there is none. The score is the share of assistant turns that follow.

`held_out: N` adds a second suite (`flags.carry_suite`): N three-turn conversations on questions no
training data draws from, where the last turn has no flag and its mode was set one or two turns
back; it is scored the same way and reported beside the first (`held_out` in the results).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from data_builders.flags import FlagMix, carry_suite, suite, user_text
from posttrain.core.chat import MODES, split_think
from rewards.formats import follows_mode


@dataclass
class ThinkFollowConfig:
    n: int = 32  # conversations
    seed: int = 10_002  # an eval-only seed: no training data uses it
    max_turns: int = 3
    # task kinds of the turns, by weight (see data_builders/flags.py)
    kinds: dict[str, float] = field(default_factory=lambda: {"reasoning": 0.5, "instruction": 0.2, "qa": 0.15,
                                                              "rewrite": 0.15})
    max_new_tokens: int = 96  # enough to see the block; a thinking turn may be cut off
    held_out: int = 0  # conversations of the held-out carry-over suite (flags.carry_suite); 0: none
    models: list[str] | None = None  # in a pipeline: the models scored (`base`, stage ids); default all

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n: ThinkFollow needs at least 1 conversation, got {self.n}")
        FlagMix(kinds=self.kinds)  # the same checks as the builder's

    def plans(self) -> list[dict[str, Any]]:
        return suite(self.kinds, self.n, self.seed, self.max_turns)

    def held_out_plans(self) -> list[dict[str, Any]]:
        return carry_suite(self.held_out, self.seed) if self.held_out else []

    def settings(self, seed: int) -> dict[str, Any]:
        """What a score depends on (which models get one does not change it)."""
        return {k: v for k, v in asdict(self).items() if k != "models"} | {"eval_seed": seed}


def plans_sha(plans: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(plans, sort_keys=True).encode()).hexdigest()[:16]


def think_follow(engine, cfg: ThinkFollowConfig, seed: int = 0, plans: list[dict] | None = None) -> dict[str, Any]:
    """Generate every turn of the suite (or of `plans`, in its format) and score it, and the held-out
    suite when the config has one; per-turn results are kept for paired comparisons."""
    out = _score(engine, cfg, seed, plans if plans is not None else cfg.plans())
    if plans is None and cfg.held_out:
        out["held_out"] = _score(engine, cfg, seed, cfg.held_out_plans())
    return out


def _score(engine, cfg: ThinkFollowConfig, seed: int, plans: list[dict]) -> dict[str, Any]:
    convs = [[{"role": "system", "content": p["system"]}] if p["system"] else [] for p in plans]
    ok: list[list[bool]] = [[] for _ in plans]
    for t in range(max(len(p["turns"]) for p in plans)):
        active = [i for i, p in enumerate(plans) if len(p["turns"]) > t]
        for i in active:
            turn = plans[i]["turns"][t]
            convs[i].append({"role": "user", "content": user_text(turn["prompt"], turn)})
        # one batch per turn: the engine samples each conversation as its flags' mode asks (the report's settings)
        outs = engine.generate([convs[i] for i in active], mode=None, max_new_tokens=cfg.max_new_tokens,
                               seed=seed + t, progress=False)
        for i, [c] in zip(active, outs, strict=True):
            ok[i].append(follows_mode(c.text, plans[i]["turns"][t]["mode"]))
            reasoning, answer = split_think(c.text)
            convs[i].append({"role": "assistant", "content": answer if reasoning is not None else c.text,
                             "reasoning_content": reasoning})
    turns = [(t, o) for p, oks in zip(plans, ok, strict=True) for t, o in zip(p["turns"], oks, strict=True)]

    def share(keep) -> float | None:
        picked = [o for t, o in turns if keep(t)]
        return sum(picked) / len(picked) if picked else None
    multi = {id(t) for p in plans if len(p["turns"]) > 1 for t in p["turns"]}
    distances = sorted({t["distance"] for t, _ in turns if t.get("distance")})  # the held-out suite's
    return {"score": share(lambda t: True), "turns": len(turns), "conversations": len(plans),
            **({"by_distance": {str(d): share(lambda t, d=d: t.get("distance") == d) for d in distances}}
               if distances else {}),
            "by_mode": {m: share(lambda t, m=m: t["mode"] == m) for m in MODES},
            "by_flag": {w or "none": share(lambda t, w=w: t["where"] == w) for w in ("user", "system", None)},
            "multi_turn": share(lambda t: id(t) in multi),
            "items_sha": plans_sha(plans), "settings": cfg.settings(seed),
            "per_turn": [int(o) for _, o in turns],
            "examples": [{"messages": c, "follows": o} for c, o in zip(convs[:3], ok[:3], strict=True)]}
