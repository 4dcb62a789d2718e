"""Stage-3 data (report §4.3): thinking and non-thinking samples in one mix, with mode flags.

- Thinking responses to reasoning queries come from rejection sampling on the stage-1 queries
  with the stage-2 model (the stage's input model), through the cold-start response rules.
- Non-thinking responses are direct: short solver answers to the same reasoning families, and the
  direct-answer kinds of `data_builders/direct.py` (instruction following, QA, rewriting), each
  checked by the rule rewards before it is kept.
- Every kind is asked in both modes (a direct kind's thinking turn is its solver plan), so the flag,
  not the topic, decides the mode.
- Flags sit in the user message or in the system message; some thinking turns carry none (thinking
  is the default); multi-turn conversations draw a flag per turn and every assistant turn follows
  the last flag seen so far. Non-thinking turns have `reasoning_content: ""`, which the template
  renders as the empty block `<think>\\n\\n</think>\\n\\n`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from data_builders import direct
from posttrain.chat import NO_THINK_FLAG, THINK_FLAG, resolve_mode
from posttrain.rundir import StageContext, write_json

log = logging.getLogger("posttrain.fusion")
REASONING = "reasoning"


@dataclass
class FusionData:
    examples: int = 400  # conversations in the mix
    think_share: float = 0.5  # share of assistant turns in thinking mode (the mix ratio)
    # task kinds by weight, drawn independently of the mode: `reasoning` (the stage-1 queries) and
    # the direct kinds (instruction, qa, rewrite)
    kinds: dict[str, float] = field(default_factory=lambda: {REASONING: 0.5, "instruction": 0.2, "qa": 0.15,
                                                              "rewrite": 0.15})
    no_flag_share: float = 0.3  # turns whose mode is already implied that carry no flag
    system_flag_share: float = 0.2  # conversations whose first flag sits in the system message
    multi_turn_share: float = 0.25  # conversations of 2..max_turns turns
    max_turns: int = 3
    # thinking responses: rejection sampling with the input model on the queries of this stage's
    # training data in the run (or of a saved dataset dir), or on `families` when there is none
    queries_from: str = "cold_start"
    families: dict[str, int] = field(default_factory=lambda: {"arithmetic": 120, "linear": 120})
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries_seed: int = 1
    responder: str = "input"  # "input" (the stage's model), a model dir, or "trace" (solver traces)
    n_responses: int = 4  # samples per query
    max_new_tokens: int = 192
    rules: list[str] | None = None  # cold-start response rules to apply (default: all six)
    seed: int = 3  # draws of kinds, modes, flags and turns

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


# ---------------------------------------------------------------------------------------------
# conversation scripts: kinds, modes and flags per turn (shared with the ThinkFollow eval suite)

def script(cfg: FusionData, n: int, rng: random.Random) -> list[dict[str, Any]]:
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
    from data_builders import synthetic
    cfg = FusionData(examples=n, kinds=kinds, max_turns=max_turns, multi_turn_share=0.6, system_flag_share=0.3,
                     no_flag_share=0.4, seed=seed)
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


# ---------------------------------------------------------------------------------------------
# the reasoning queries and their thinking responses

def reasoning_queries(ctx: StageContext, cfg: FusionData) -> tuple[list[dict[str, Any]], str]:
    """Stage-1 queries (prompt, answer, tests, task, domain, trace) and where they came from."""
    from pathlib import Path

    from datasets import load_from_disk
    root = ctx.run_dir or ctx.dir.parent
    given = Path(cfg.queries_from)
    found = [given] if (given / "dataset_info.json").is_file() else sorted(
        root.glob(f"[0-9][0-9]_{cfg.queries_from}/data/train"))
    for data in found:
        ds = load_from_disk(str(data))
        if {"messages", "answer"} <= set(ds.column_names):
            rows = [{"prompt": [{"role": m["role"], "content": m["content"]} for m in r["messages"]
                                if m["role"] != "assistant"], "answer": r["answer"],
                     "tests": r.get("tests") or "", "task": r["task"], "domain": r["domain"],
                     "reasoning": r["messages"][-1].get("reasoning_content") or "",
                     "response": r["messages"][-1]["content"]} for r in ds]
            return rows, str(data)
        log.warning("%s has no answer column (made by an older version): using `families`", data)
    from data_builders.rl_queries import QuerySelection, candidates
    pool = candidates(QuerySelection(families=cfg.families, knobs=cfg.knobs, seed=cfg.queries_seed))
    return list(pool), f"synthetic families {cfg.families} (seed {cfg.queries_seed})"


def thinking_responses(ctx: StageContext, cfg: FusionData, rows: list[dict], stats: dict) -> list[str | None]:
    """Per query, the first sampled response that passes every response rule (None if none does)."""
    from data_builders import filters
    from data_builders.cold_start import eval_texts
    from posttrain.generation import Completion, load_engine
    if cfg.responder == "trace":
        outs = [[Completion(f"<think>\n{r['reasoning']}\n</think>\n\n{r['response']}")] for r in rows]
    else:
        engine = load_engine(ctx.input_model if cfg.responder == "input" else cfg.responder, backend=ctx.backend)
        outs = engine.generate([r["prompt"] for r in rows], n=cfg.n_responses, mode="think",
                               max_new_tokens=cfg.max_new_tokens, seed=ctx.seed, progress=True)
        del engine
    index = filters.NearDuplicateIndex(eval_texts(ctx))
    rejections: dict[str, int] = {}
    kept: list[str | None] = []
    for row, out in zip(rows, outs, strict=True):
        texts = [c.text for c in out if c.finish_reason == "stop"]  # a cut-off answer is no answer
        rejections["truncated"] = rejections.get("truncated", 0) + len(out) - len(texts)
        good, counts = filters.apply_response_filters(texts, row, {"eval_index": index, "rules": cfg.rules})
        for rule, c in counts.items():
            rejections[rule] = rejections.get(rule, 0) + c
        kept.append(good[0] if good else None)
    stats["thinking"] = {"queries": len(rows), "samples_per_query": cfg.n_responses,
                         "rejections": rejections, "kept": sum(k is not None for k in kept),
                         "set_aside_pass_at_n_zero": sum(k is None for k in kept)}
    return kept


# ---------------------------------------------------------------------------------------------
# the mix

def _checked(rows: list[dict], texts: list[str]) -> list[bool]:
    from posttrain.evaluate import grade
    return [s == 1.0 for s in grade(rows, texts)]


def build(ctx: StageContext, cfg: FusionData):
    """The fusion conversations (`messages`, `kinds`, `modes`); writes fusion_data.json beside them."""
    from datasets import Dataset

    from posttrain.chat import split_think
    rng = random.Random(cfg.seed)
    plans = script(cfg, cfg.examples, rng)
    need = {k: sum(t["kind"] == k for p in plans for t in p["turns"]) for k in cfg.kinds}
    stats: dict[str, Any] = {"conversations": len(plans)}
    pools: dict[tuple[str, str], list[tuple[dict, str | None, str]]] = {}
    if need.get(REASONING):
        rows, source = reasoning_queries(ctx, cfg)
        stats["reasoning_queries_from"] = source
        thinking = thinking_responses(ctx, cfg, rows, stats)
        direct_texts = [direct.direct_answer(r) for r in rows]
        ok = _checked(rows, direct_texts)
        stats["no_think_solver_rejected"] = {REASONING: ok.count(False)}
        pools[(REASONING, "think")] = [(r, *split_think(t)) for r, t in zip(rows, thinking, strict=True) if t]
        pools[(REASONING, "no_think")] = [(r, "", t) for r, t, g in zip(rows, direct_texts, ok, strict=True) if g]
    for kind in (k for k in cfg.kinds if k != REASONING and need[k]):
        items = direct.generate(kind, max(need[kind], 1), seed=cfg.seed)
        ok = _checked(items, [i["response"] for i in items])
        stats.setdefault("no_think_solver_rejected", {})[kind] = ok.count(False)
        pools[(kind, "think")] = [(i, i["reasoning"], i["response"]) for i, g in zip(items, ok, strict=True) if g]
        pools[(kind, "no_think")] = [(i, "", i["response"]) for i, g in zip(items, ok, strict=True) if g]
    for key, pool in pools.items():
        if not pool:
            write_json(ctx.dir / "fusion_data.json", stats)
            raise RuntimeError(f"{ctx.stage_id}: no {key[1]} response survived for kind {key[0]!r} "
                               f"(see {ctx.dir / 'fusion_data.json'})")
        rng.shuffle(pool)
    used = {key: 0 for key in pools}
    out, counts = [], {}
    for plan in plans:
        messages = [{"role": "system", "content": plan["system"]}] if plan["system"] else []
        for turn in plan["turns"]:
            key = (turn["kind"], turn["mode"])
            row, reasoning, answer = pools[key][used[key] % len(pools[key])]
            used[key] += 1
            prompt = row["prompt"][-1]["content"]
            messages += [{"role": "user", "content": user_text(prompt, turn)},
                         {"role": "assistant", "content": answer, "reasoning_content": reasoning or ""}]
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
        turns_histogram={str(k): sum(len(p["turns"]) == k for p in plans) for k in range(1, cfg.max_turns + 1)},
        reuse={f"{k}/{m}": round(used[(k, m)] / len(pools[(k, m)]), 2) for k, m in pools if used[(k, m)]})
    write_json(ctx.dir / "fusion_data.json", stats)
    log.info("fusion data: %d conversations, %d turns, think share %.2f, %s", len(out), len(turns),
             stats["think_share"], stats["per_kind_mode"])
    return Dataset.from_list(out)
