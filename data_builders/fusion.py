"""Stage-3 data (report §4.3): thinking and non-thinking samples in one mix, with mode flags.

- Thinking responses to reasoning queries come from rejection sampling on the stage-1 queries
  with the stage-2 model (the stage's input model), through the cold-start response rules.
- Non-thinking responses are direct: short solver answers to the same reasoning families, and the
  direct-answer kinds of `data_builders/direct.py` (instruction following, QA, rewriting), each
  checked by the rule rewards before it is kept.
- Every kind is asked in both modes (a direct kind's thinking turn is its solver plan), so the flag,
  not the topic, decides the mode.
- Tool use (`shop`): the tools listed in the system message as the Qwen3 template lists them, then
  worked episodes from the stage-4 environment (data_builders/agent.py): `<tool_call>` turns, the
  tools' own results, and the final answer, kept when it grades right.
- One tool call (`tool_call`): a request that one call of a listed tool answers (stage 4's
  `tool_call_format` items, data_builders/general.py), the call as the assistant's `tool_calls`;
  kept when the `tool_call` reward gives it full marks.
- Flags (data_builders/flags.py) sit in the user message or in the system message; some thinking
  turns carry none (thinking is the default); multi-turn conversations draw a flag per turn and
  every assistant turn follows the last flag seen so far. With `flag_twins`, each conversation also
  comes with every flag turned over, on the same questions: a pair that differs only in its flags.
  Non-thinking turns have `reasoning_content: ""`, which the template renders as the empty block
  `<think>\\n\\n</think>\\n\\n`.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_builders import agent, direct, filters, general
from data_builders.cold_start import responder_engine
from data_builders.flags import REASONING, TOOL_CALL, TOOL_KINDS, TOOL_USE, FlagMix, flipped, script, user_text
from data_builders.rl_queries import QuerySelection, candidates, eval_asks
from data_builders.synthetic import generate_mix
from posttrain.core.chat import MODES, split_think, tools_system_message
from posttrain.core.context import StageContext
from posttrain.core.rundir import write_json
from rewards.grading import grade
from rewards.tool_call import ToolCallReward

log = logging.getLogger("posttrain.fusion")


@dataclass
class FusionData(FlagMix):
    """The mix (FlagMix: mode share, kinds, flag positions, turns) and where its answers come from."""

    # task kinds by weight; `shop` and `tool_call` turns teach the tool-call format stage 4's tool kinds ask for
    kinds: dict[str, float] = field(default_factory=lambda: {REASONING: 0.45, "instruction": 0.2, "qa": 0.1,
                                                              "rewrite": 0.1, TOOL_USE: 0.1, TOOL_CALL: 0.05})
    examples: int = 800  # conversations in the mix
    # thinking responses: rejection sampling with the input model on the queries of this stage's
    # training data in the run (or of a saved dataset dir), or on `families` when there is none
    queries_from: str = "cold_start"
    families: dict[str, int] = field(default_factory=lambda: {"arithmetic": 120, "linear": 120})
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries_seed: int = 1
    # more reasoning-family items answered directly (synthetic, drawn with `seed`), beyond the
    # stage-1 queries: the non-thinking side needs no sampling, so it can be wider
    direct_families: dict[str, int] = field(default_factory=dict)
    # ... and in think mode too, their solver trace as the think block: the thinking side otherwise has
    # only the stage-1 queries that kept a sampled answer (35 of 68 in recipe_vllm.yaml's run)
    direct_thinking: bool = field(default=False, metadata={"added": True})
    responder: str = "input"  # "input" (the stage's model), a model dir, or "trace" (solver traces)
    n_responses: int = 4  # samples per query
    max_new_tokens: int = 192
    rules: list[str] | None = None  # cold-start response rules to apply (default: all six)
    # what follows the think block of a reasoning query's thinking answer: the sampled answer, or the
    # solver's short solution (the non-thinking answer: a summary that restates each step), so that an
    # answer forced early by the thinking budget still walks through the solution
    think_answer: Literal["sampled", "solution"] = "solution"
    # each conversation with a flag is also trained with every flag turned over (flags.flipped) on the same
    # questions, each turn answered in its new mode from the same item: minimal pairs in which only the flag
    # decides the mode, not the topic (up to twice `examples` conversations)
    flag_twins: bool = field(default=False, metadata={"added": True})
    seed: int = 3  # draws of kinds, modes, flags and turns


# ---------------------------------------------------------------------------------------------
# the reasoning queries and their thinking responses

def reasoning_queries(ctx: StageContext, cfg: FusionData) -> tuple[list[dict[str, Any]], str]:
    """Stage-1 queries (prompt, answer, tests, task, domain, trace) and where they came from."""
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
    pool = candidates(QuerySelection(families=cfg.families, knobs=cfg.knobs, seed=cfg.queries_seed))
    return list(pool), f"synthetic families {cfg.families} (seed {cfg.queries_seed})"


def thinking_responses(ctx: StageContext, cfg: FusionData, rows: list[dict], stats: dict) -> list[str | None]:
    """Per query, the first sampled response that passes every response rule (None if none does).
    The samples are kept in data/thinking_samples, so a resumed stage does not sample again."""
    from datasets import Dataset

    def sample() -> Dataset:
        if cfg.responder == "trace":
            return Dataset.from_list([{"texts": [f"<think>\n{r['reasoning']}\n</think>\n\n{r['response']}"],
                                       "stopped": [True]} for r in rows])
        outs = responder_engine(ctx, cfg.responder).generate([r["prompt"] for r in rows], n=cfg.n_responses,
                                                             mode="think", max_new_tokens=cfg.max_new_tokens,
                                                             seed=ctx.seed, progress=True)
        return Dataset.from_list([{"texts": [c.text for c in o], "stopped": [c.finish_reason == "stop" for c in o]}
                                  for o in outs])
    samples = ctx.dataset("thinking_samples", sample)
    if len(samples) != len(rows):
        raise RuntimeError(f"{ctx.data_dir / 'thinking_samples'} holds {len(samples)} queries' samples, not "
                           f"{len(rows)}: it was made for other queries; remove it to sample again")
    index = filters.NearDuplicateIndex(ctx.held_out)
    rejections: dict[str, int] = {}
    kept: list[str | None] = []
    for row, out in zip(rows, samples, strict=True):
        # a response cut off by the length limit has no answer: rejected as "truncated"
        texts = [t for t, done in zip(out["texts"], out["stopped"], strict=True) if done]
        rejections["truncated"] = rejections.get("truncated", 0) + len(out["texts"]) - len(texts)
        good, counts = filters.apply_response_filters(texts, row, {"eval_index": index, "rules": cfg.rules})
        for rule, c in counts.items():
            rejections[rule] = rejections.get(rule, 0) + c
        kept.append(good[0] if good else None)
    stats["thinking"] = {"queries": len(rows), "samples_per_query": len(samples[0]["texts"]) if rows else 0,
                         "rejections": rejections, "kept": sum(k is not None for k in kept),
                         "set_aside_pass_at_n_zero": sum(k is None for k in kept)}
    return kept


# ---------------------------------------------------------------------------------------------
# the mix

def _checked(rows: list[dict], texts: list[str]) -> list[bool]:
    return [s == 1.0 for s in grade(rows, texts)]


def _reply(reasoning: str | None, answer: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": answer, "reasoning_content": reasoning or ""}]


def tool_episodes(n: int, seed: int, asked) -> dict[tuple[str, str], list[tuple[dict, list[dict]]]]:
    """Per mode, N worked shop episodes (data_builders/agent.py) whose calls ran and whose answer grades right."""
    pools = {}
    for mode in MODES:
        rng = random.Random(f"{seed}:{TOOL_USE}:{mode}")
        drawn = [agent.shop_episode(rng, mode) for _ in range(n)]
        drawn = [(row, msgs) for row, msgs in drawn if msgs and not asked(row["prompt"][-1]["content"])]
        ok = _checked([row for row, _ in drawn], [msgs[-1]["content"] for _, msgs in drawn])
        pools[(TOOL_USE, mode)] = [d for d, good in zip(drawn, ok, strict=True) if good]
    return pools


def tool_calls(n: int, seed: int, asked) -> dict[tuple[str, str], list[tuple[dict, list[dict]]]]:
    """Per mode, N requests answered by one call of a listed tool (general.tool_call); a thinking turn
    names the tool and its arguments first. Kept when the `tool_call` reward gives the call 1.0."""
    check, pools = ToolCallReward(), {}
    for mode in MODES:
        rng = random.Random(f"{seed}:{TOOL_CALL}:{mode}")
        rows = [r for r in (general.tool_call(rng) for _ in range(n)) if not asked(r["prompt"][-1]["content"])]
        pool = []
        for row in (r for r in rows if check.score(r["response"], r) == 1.0):
            call = json.loads(row["answer"])
            args = ", ".join(f"{k} {json.dumps(v)}" for k, v in call["arguments"].items())
            reasoning = f"The {call['name']} tool does this; its arguments: {args}." if mode == "think" else ""
            pool.append((row, [agent.stored({"role": "assistant", "content": "", "reasoning_content": reasoning,
                                             "tool_calls": [agent.function_call(call["name"], **call["arguments"])]})]))
        pools[(TOOL_CALL, mode)] = pool
    return pools


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
    pools: dict[tuple[str, str], list[tuple[dict, str | None, str]]] = {}
    asked = eval_asks(ctx)  # eval and ThinkFollow items never reach the mix
    if need.get(REASONING):
        rows, source = reasoning_queries(ctx, cfg)
        fresh = [r for r in rows if not asked(r["prompt"][-1]["content"])]
        stats["reasoning_queries_from"], stats["dropped_as_held_out"] = source, {REASONING: len(rows) - len(fresh)}
        rows = fresh
        thinking = thinking_responses(ctx, cfg, rows, stats)
        extra = list(generate_mix(cfg.direct_families, seed=cfg.seed, knobs=cfg.knobs)) if cfg.direct_families else []
        if extra:  # as in stage 1: nothing near an eval item
            index = filters.NearDuplicateIndex(ctx.held_out)
            fresh = [r for r in extra if not index.is_near_duplicate(r["prompt"][-1]["content"])]
            stats["direct_families"] = {"items": len(extra), "near_duplicate_of_eval": len(extra) - len(fresh)}
            extra = fresh
        traced = [f"<think>\n{r['reasoning']}\n</think>\n\n{r['response']}" if cfg.direct_thinking else None
                  for r in extra]
        rows, thinking = rows + extra, thinking + traced
        direct_texts = [direct.direct_answer(r) for r in rows]
        ok = _checked(rows, direct_texts)
        stats["no_think_solver_rejected"] = {REASONING: ok.count(False)}
        pools[(REASONING, "think")], pools[(REASONING, "no_think")] = [], []
        for row, sampled, solution, good in zip(rows, thinking, direct_texts, ok, strict=True):
            if good:
                pools[(REASONING, "no_think")].append((row, _reply("", solution)))
            if sampled and (good or cfg.think_answer == "sampled"):
                reasoning, answer = split_think(sampled)
                answer = answer if cfg.think_answer == "sampled" else solution
                pools[(REASONING, "think")].append((row, _reply(reasoning, answer)))
    if need.get(TOOL_USE):
        pools.update(tool_episodes(need[TOOL_USE], cfg.seed, asked))
    if need.get(TOOL_CALL):
        pools.update(tool_calls(need[TOOL_CALL], cfg.seed, asked))
    for kind in (k for k in cfg.kinds if k not in (REASONING, *TOOL_KINDS) and need[k]):
        drawn = direct.generate(kind, max(need[kind], 1), seed=cfg.seed)
        items = [i for i in drawn if not asked(i["prompt"][-1]["content"])]
        stats.setdefault("dropped_as_held_out", {})[kind] = len(drawn) - len(items)
        ok = _checked(items, [i["response"] for i in items])
        stats.setdefault("no_think_solver_rejected", {})[kind] = ok.count(False)
        good = [i for i, g in zip(items, ok, strict=True) if g]
        pools[(kind, "think")] = [(i, _reply(i["reasoning"], i["response"])) for i in good]
        pools[(kind, "no_think")] = [(i, _reply("", i["response"])) for i in good]
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
        turns_histogram={str(k): sum(len(p["turns"]) == k for p in plans) for k in range(1, cfg.max_turns + 1)},
        reuse={f"{k}/{m}": round(used[(k, m)] / len(pools[(k, m)]), 2) for k, m in pools if used[(k, m)]},
        **({"flag_twins": {"conversations": sum(bool(p.get("twin")) for p in plans), **twinned}}
           if cfg.flag_twins else {}))
    write_json(ctx.dir / "fusion_data.json", stats)
    log.info("fusion data: %d conversations, %d turns, think share %.2f, %s", len(out), len(turns),
             stats["think_share"], stats["per_kind_mode"])
    return Dataset.from_list(out)
