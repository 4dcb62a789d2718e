"""Stage-3 data (report §4.3): thinking and non-thinking samples in one mix, with mode flags.

- The answers (data_builders/fusion_answers.py): thinking responses to reasoning queries
  rejection-sampled with the stage-2 model through the cold-start response rules; direct answers
  to the same families and to the direct-answer kinds (instruction following, QA, rewriting); tool
  use (`shop` episodes from the stage-4 environment, and single `tool_call`s). Each is checked by
  the rules before it is kept.
- Every kind is asked in both modes (a direct kind's thinking turn is its solver plan), so the flag,
  not the topic, decides the mode. A conversation with a tool turn lists its tools in the system
  message as the Qwen3 template lists them.
- Flags (data_builders/flags.py) sit in the user message or in the system message; some thinking
  turns carry none (thinking is the default); multi-turn conversations draw a flag per turn and
  every assistant turn follows the last flag seen so far. With `flag_twins`, each conversation also
  comes with every flag turned over, on the same questions: a pair that differs only in its flags.
  Non-thinking turns have `reasoning_content: ""`, which the template renders as the empty block
  `<think>\\n\\n</think>\\n\\n`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from data_builders import agent, general
from data_builders.flags import REASONING, TOOL_CALL, TOOL_KINDS, TOOL_USE, FlagMix, flipped, script, user_text
from data_builders.fusion_answers import AnswerSources, answer_pools
from data_builders.rl_queries import eval_asks
from posttrain.core.chat import tools_system_message
from posttrain.core.context import StageContext
from posttrain.core.rundir import write_json

log = logging.getLogger("posttrain.fusion")


@dataclass
class FusionData(AnswerSources, FlagMix):
    """The mix (FlagMix: mode share, kinds, flag positions, turns) and where its answers come from
    (AnswerSources, data_builders/fusion_answers.py)."""

    # task kinds by weight; `shop` and `tool_call` turns teach the tool-call format stage 4's tool kinds ask for
    kinds: dict[str, float] = field(default_factory=lambda: {REASONING: 0.45, "instruction": 0.2, "qa": 0.1,
                                                              "rewrite": 0.1, TOOL_USE: 0.1, TOOL_CALL: 0.05})
    examples: int = 800  # conversations in the mix
    # each conversation with a flag is also trained with every flag turned over (flags.flipped) on the same
    # questions, each turn answered in its new mode from the same item: minimal pairs in which only the flag
    # decides the mode, not the topic (up to twice `examples` conversations)
    flag_twins: bool = field(default=False, metadata={"added": True})
    seed: int = 3  # draws of kinds, modes, flags and turns


def tools_listed(kinds: set[str]) -> str | None:
    """The system text that lists the tools of the tool kinds in a conversation (None without any)."""
    schemas = {TOOL_USE: agent.tool_schemas(agent.ShopEnv), TOOL_CALL: general.TOOLS}
    tools = [t for k in TOOL_KINDS if k in kinds for t in schemas[k]]
    return tools_system_message(tools)["content"] if tools else None


def build(ctx: StageContext, cfg: FusionData):
    """The fusion conversations (`messages`, `kinds`, `modes`); writes fusion_data.json beside them."""
    from datasets import Dataset
    rng = random.Random(cfg.seed)
    plans = script(cfg, cfg.examples, rng)
    need = {k: sum(t["kind"] == k for p in plans for t in p["turns"]) for k in cfg.kinds}
    if cfg.flag_twins:  # each plan with a flag followed by its twin, which reuses its items
        plans = [q for p in plans for q in (p, flipped(p)) if q is not None]
    stats: dict[str, Any] = {"conversations": len(plans)}
    asked = eval_asks(ctx)  # eval and ThinkFollow items never reach the mix
    pools = answer_pools(ctx, cfg, need, cfg.seed, asked, stats)
    for key, pool in pools.items():
        if not pool:
            write_json(ctx.dir / "fusion_data.json", stats)
            raise RuntimeError(f"{ctx.stage_id}: no {key[1]} response survived for kind {key[0]!r} "
                               f"(see {ctx.dir / 'fusion_data.json'})")
        rng.shuffle(pool)
    used = {key: 0 for key in pools}
    by_item = {key: {id(row): (row, reply) for row, reply in pool} for key, pool in pools.items()}
    out, counts, twinned, rows = [], {}, {"same_item": 0, "other_item": 0}, []
    listed = {kinds: tools_listed(set(kinds)) for kinds in ((), (TOOL_USE,), (TOOL_CALL,), TOOL_KINDS)}
    for plan in plans:  # a conversation with a tool turn lists its tools in the system message
        tools = listed[tuple(k for k in TOOL_KINDS if any(t["kind"] == k for t in plan["turns"]))]
        system = " ".join(filter(None, [tools, plan["system"]]))
        messages = [{"role": "system", "content": system}] if system else []
        # a twin asks its original's questions (the conversation before it): the same items, in the turns' modes
        original, rows = (rows if plan.get("twin") else None), []
        for i, turn in enumerate(plan["turns"]):
            key = (turn["kind"], turn["mode"])
            item = by_item[key].get(id(original[i])) if original else None
            if original:
                twinned["same_item" if item else "other_item"] += 1
            if item is None:
                item = pools[key][used[key] % len(pools[key])]
                used[key] += 1
            row, reply = item
            rows.append(row)
            messages += [{"role": "user", "content": user_text(row["prompt"][-1]["content"], turn)}, *reply]
            name = f"{turn['kind']}/{turn['mode']}"
            counts[name] = counts.get(name, 0) + 1
        out.append({"messages": messages, "kinds": [t["kind"] for t in plan["turns"]],
                    "modes": [t["mode"] for t in plan["turns"]]})
    turns = [t for p in plans for t in p["turns"]]
    stats.update(
        turns=len(turns), think_share=sum(t["mode"] == "think" for t in turns) / len(turns),
        per_kind_mode=dict(sorted(counts.items())),
        flags={where or "none": sum(t["where"] == where for t in turns) for where in ("user", "system", None)},
        thinking_by_default=sum(t["default"] for t in turns),
        # turns without a flag whose mode an earlier flag set (carry-over), per mode
        carried_over={m: sum(t["where"] is None and not t["default"] and t["mode"] == m for t in turns)
                      for m in ("think", "no_think")},
        turns_histogram={str(k): sum(len(p["turns"]) == k for p in plans) for k in range(1, cfg.max_turns + 1)},
        reuse={f"{k}/{m}": round(used[(k, m)] / len(pools[(k, m)]), 2) for k, m in pools if used[(k, m)]},
        **({"flag_twins": {"conversations": sum(bool(p.get("twin")) for p in plans), **twinned}}
           if cfg.flag_twins else {}))
    write_json(ctx.dir / "fusion_data.json", stats)
    log.info("fusion data: %d conversations, %d turns, think share %.2f, %s", len(out), len(turns),
             stats["think_share"], stats["per_kind_mode"])
    return Dataset.from_list(out)
