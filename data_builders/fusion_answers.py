"""Stage-3 answers (report §4.3): for every task kind of the fusion mix, answers in both modes, each
one checked before it is kept.

- Reasoning queries (the stage-1 queries): thinking answers rejection-sampled with the stage-2 model
  (or taken from the solver traces) through the cold-start response rules; non-thinking answers are
  the solver's short solution, kept when it grades right.
- The direct kinds (data_builders/direct.py: instruction following, QA, rewriting): the answer,
  after a solver plan as the think block in thinking mode, kept when the rule rewards pass it.
- Tool use (`shop`): worked episodes from the stage-4 environment (data_builders/agent.py), kept
  when the final answer grades right; one tool call (`tool_call`): the call, kept when the
  `tool_call` reward gives it full marks.

No evaluation item reaches a pool (`asked`), and nothing near one reaches the reasoning pools.
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
from data_builders.flags import REASONING, TOOL_CALL, TOOL_KINDS, TOOL_USE
from data_builders.rl_queries import QuerySelection, candidates
from data_builders.synthetic import generate_mix
from posttrain.core.chat import MODES, split_think
from posttrain.core.context import StageContext
from rewards.grading import grade
from rewards.tool_call import ToolCallReward

log = logging.getLogger("posttrain.fusion")

Pools = dict[tuple[str, str], list[tuple[dict[str, Any], list[dict[str, Any]]]]]  # (kind, mode) -> (item, reply)


@dataclass
class AnswerSources:
    """Where the fusion mix's answers come from."""

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


def answer_pools(ctx: StageContext, cfg: AnswerSources, need: dict[str, int], seed: int, asked,
                 stats: dict[str, Any]) -> Pools:
    """Per (kind, mode), the checked answers for the `need` turns of each kind (a pool may be empty);
    what was dropped goes into `stats`."""
    pools: Pools = {}
    if need.get(REASONING):
        pools.update(_reasoning(ctx, cfg, seed, asked, stats))
    if need.get(TOOL_USE):
        pools.update(_tool_episodes(need[TOOL_USE], seed, asked))
    if need.get(TOOL_CALL):
        pools.update(_tool_calls(need[TOOL_CALL], seed, asked))
    for kind in (k for k, n in need.items() if k not in (REASONING, *TOOL_KINDS) and n):
        drawn = direct.generate(kind, need[kind], seed=seed)
        items = [i for i in drawn if not asked(i["prompt"][-1]["content"])]
        stats.setdefault("dropped_as_held_out", {})[kind] = len(drawn) - len(items)
        ok = _checked(items, [i["response"] for i in items])
        stats.setdefault("no_think_solver_rejected", {})[kind] = ok.count(False)
        good = [i for i, g in zip(items, ok, strict=True) if g]
        pools[(kind, "think")] = [(i, _reply(i["reasoning"], i["response"])) for i in good]
        pools[(kind, "no_think")] = [(i, _reply("", i["response"])) for i in good]
    return pools


def _reasoning(ctx: StageContext, cfg: AnswerSources, seed: int, asked, stats: dict[str, Any]) -> Pools:
    """Both modes' answers to the stage-1 queries and to `direct_families`."""
    rows, source = reasoning_queries(ctx, cfg)
    fresh = [r for r in rows if not asked(r["prompt"][-1]["content"])]
    stats["reasoning_queries_from"], stats["dropped_as_held_out"] = source, {REASONING: len(rows) - len(fresh)}
    rows = fresh
    thinking = thinking_responses(ctx, cfg, rows, stats)
    extra = list(generate_mix(cfg.direct_families, seed=seed, knobs=cfg.knobs)) if cfg.direct_families else []
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
    pools: Pools = {(REASONING, "think"): [], (REASONING, "no_think"): []}
    for row, sampled, solution, good in zip(rows, thinking, direct_texts, ok, strict=True):
        if good:
            pools[(REASONING, "no_think")].append((row, _reply("", solution)))
        if sampled and (good or cfg.think_answer == "sampled"):
            reasoning, answer = split_think(sampled)
            answer = answer if cfg.think_answer == "sampled" else solution
            pools[(REASONING, "think")].append((row, _reply(reasoning, answer)))
    return pools


def reasoning_queries(ctx: StageContext, cfg: AnswerSources) -> tuple[list[dict[str, Any]], str]:
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


def thinking_responses(ctx: StageContext, cfg: AnswerSources, rows: list[dict], stats: dict) -> list[str | None]:
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


def _checked(rows: list[dict], texts: list[str]) -> list[bool]:
    return [s == 1.0 for s in grade(rows, texts)]


def _reply(reasoning: str | None, answer: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": answer, "reasoning_content": reasoning or ""}]


def _tool_episodes(n: int, seed: int, asked) -> dict[tuple[str, str], list[tuple[dict, list[dict]]]]:
    """Per mode, N worked shop episodes (data_builders/agent.py) whose calls ran and whose answer grades right."""
    pools = {}
    for mode in MODES:
        rng = random.Random(f"{seed}:{TOOL_USE}:{mode}")
        drawn = [agent.shop_episode(rng, mode) for _ in range(n)]
        drawn = [(row, msgs) for row, msgs in drawn if msgs and not asked(row["prompt"][-1]["content"])]
        ok = _checked([row for row, _ in drawn], [msgs[-1]["content"] for _, msgs in drawn])
        pools[(TOOL_USE, mode)] = [d for d, good in zip(drawn, ok, strict=True) if good]
    return pools


def _tool_calls(n: int, seed: int, asked) -> dict[tuple[str, str], list[tuple[dict, list[dict]]]]:
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
