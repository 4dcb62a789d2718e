"""Stage-1 data (report §4.1): a small, verified long-CoT set that seeds reasoning.

1. Hold out a validation split before anything else.
2. Query filtering: drop unverifiable queries, near-duplicates of eval/validation items, and queries
   the base model already answers correctly *without* CoT (k no-think samples).
3. Response filtering: rejection-sample N responses per query from a reasoning model (or, for
   synthetic families, take the step-by-step solver trace) and keep a response only if none of the
   six rules rejects it. Queries left with no response (pass@N = 0) are set aside and reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from data_builders import filters
from data_builders.rl_queries import DataSource, QuerySelection, candidates
from posttrain.core.chat import split_think
from posttrain.core.context import StageContext
from posttrain.core.rundir import write_json
from rewards.grading import sample_and_grade

log = logging.getLogger("posttrain.cold_start")


@dataclass
class ColdStartData:
    families: dict[str, int] = field(default_factory=dict)  # synthetic family -> query count
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: DataSource | None = None  # and/or a dataset on disk (path, columns, task, domain)
    seed: int = 1
    validation_fraction: float = 0.1
    no_cot_k: int = 4  # base-model no-think samples per query; 0 turns the filter off
    no_cot_max_pass: float = 0.5  # drop queries the base model solves this often without CoT
    near_duplicate_threshold: float = 0.8
    responder: str = "trace"  # "trace" (solver traces), "input" (the stage's model) or a model dir
    n_responses: int = 4  # rejection-sampling width for a model responder
    keep_per_query: int = 1
    max_new_tokens: int = 512
    rules: list[str] | None = None  # subset of the six rules; default all


def responder_engine(ctx: StageContext, responder: str):
    """The engine that answers for rejection sampling: the stage's input model (`input`) or a model dir."""
    return ctx.engines.get(ctx.input_model if responder == "input" else responder)


def _responses(ctx: StageContext, cfg: ColdStartData, rows: list[dict]) -> list[list[str]]:
    if cfg.responder == "trace":
        missing = [r.get("domain") for r in rows if not r.get("reasoning")]
        if missing:
            raise ValueError(f"responder 'trace' needs synthetic rows with a trace; {len(missing)} rows "
                             f"(e.g. domain {missing[0]!r}) have none: set responder to a model")
        return [[f"<think>\n{r['reasoning']}\n</think>\n\n{r['response']}"] for r in rows]
    outs = responder_engine(ctx, cfg.responder).generate([r["prompt"] for r in rows], n=cfg.n_responses, mode="think",
                           max_new_tokens=cfg.max_new_tokens, seed=ctx.seed, progress=True)
    return [[c.text for c in o] for o in outs]


def _solved_without_cot(ctx: StageContext, cfg: ColdStartData, rows: list[dict]) -> list[float]:
    return sample_and_grade(ctx.engines.get(ctx.input_model), rows, n=cfg.no_cot_k, mode="no_think",
                            max_new_tokens=64, seed=ctx.seed, progress=True).pass_rates


def build(ctx: StageContext, cfg: ColdStartData):
    """The SFT conversations; writes validation split, filter counts and set-aside queries."""
    from datasets import Dataset
    pool = candidates(QuerySelection(families=cfg.families, knobs=cfg.knobs, data=cfg.data, seed=cfg.seed))
    split = pool.train_test_split(test_size=cfg.validation_fraction, seed=cfg.seed)
    split["test"].save_to_disk(str(ctx.data_dir / "validation"))
    rows, report = list(split["train"]), {"pool": len(pool), "validation": len(split["test"]), "query_filters": {}}

    def drop(name: str, flags: list[bool]) -> None:
        nonlocal rows
        report["query_filters"][name] = sum(flags)
        rows = [r for r, f in zip(rows, flags, strict=True) if not f]

    drop("unverifiable", [filters.unverifiable(r) for r in rows])
    index = filters.NearDuplicateIndex(ctx.held_out + [r["prompt"][-1]["content"] for r in split["test"]],
                                       threshold=cfg.near_duplicate_threshold)
    drop("near_duplicate_of_eval", [index.is_near_duplicate(r["prompt"][-1]["content"]) for r in rows])
    if cfg.no_cot_k:
        rates = _solved_without_cot(ctx, cfg, rows)
        drop("solved_without_cot", [rate >= cfg.no_cot_max_pass for rate in rates])

    kept_rows, set_aside, rejections = [], [], {}
    for row, responses in zip(rows, _responses(ctx, cfg, rows), strict=True):
        kept, counts = filters.apply_response_filters(responses, row, {"eval_index": index, "rules": cfg.rules})
        for rule, c in counts.items():
            rejections[rule] = rejections.get(rule, 0) + c
        if not kept:
            set_aside.append({"prompt": row["prompt"], "answer": row.get("answer"), "domain": row.get("domain")})
        for text in kept[:cfg.keep_per_query]:
            reasoning, answer = split_think(text)
            kept_rows.append({"messages": row["prompt"] + [
                {"role": "assistant", "content": answer, "reasoning_content": reasoning or ""}],
                "domain": row.get("domain"), "task": row.get("task"),
                "answer": row.get("answer") or "", "tests": row.get("tests") or ""})
    report.update(queries_after_filters=len(rows), response_rejections=rejections,
                  set_aside_pass_at_n_zero=len(set_aside), examples=len(kept_rows))
    write_json(ctx.dir / "cold_start_data.json", report)
    write_json(ctx.dir / "set_aside.json", set_aside)
    log.info("cold-start data: %s", report)
    if not kept_rows:
        raise RuntimeError(f"{ctx.stage_id}: every response was rejected (see {ctx.dir / 'cold_start_data.json'})")
    return Dataset.from_list(kept_rows)
