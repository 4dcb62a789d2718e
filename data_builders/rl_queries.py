"""Stage-2 query selection (report §4.2): unused in stage 1, learnable for the stage-1 model.

Each candidate is answered k times by the input model; its pass rate decides: always right (nothing
to learn) and always wrong (no signal for GRPO) are dropped, what lies strictly inside the band is
kept, hardest first. The pass-rate distribution is written to `selection.json` next to the data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from data_builders import filters, sources, synthetic
from posttrain.core.chat import without_flag
from posttrain.core.context import StageContext
from posttrain.core.rundir import write_json
from rewards.grading import sample_and_grade

log = logging.getLogger("posttrain.rl_queries")


@dataclass
class DataSource:
    """A dataset on disk or on the Hub (`ORG/NAME`) mapped to the column contract (data_builders/sources.py)."""

    path: str
    columns: dict[str, str] = field(default_factory=dict)  # source column -> contract column
    task: str | None = None  # e.g. math, code (when the file has no `task` column)
    domain: str | None = None
    name: str | None = field(default=None, metadata={"added": True})  # a Hub dataset's config
    split: str | None = field(default=None, metadata={"added": True})  # a Hub dataset's split (default train)


@dataclass
class QuerySelection:
    families: dict[str, int] = field(default_factory=dict)  # synthetic family -> candidate count
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> difficulty knobs
    data: DataSource | None = None  # and/or a dataset on disk
    seed: int = 2  # a pool disjoint from stage 1's (which uses its own seed) and from eval's
    k: int = 8  # samples per query to estimate the pass rate
    band: list[float] = field(default_factory=lambda: [0.0, 1.0])  # keep low < pass rate < high
    max_queries: int | None = None
    exclude_stages: list[str] = field(default_factory=lambda: ["cold_start"])  # their train prompts
    max_new_tokens: int = 256
    batch_size: int = 32


def candidates(cfg: QuerySelection):
    from datasets import concatenate_datasets
    parts = [synthetic.generate(f, n, seed=cfg.seed, **cfg.knobs.get(f, {})) for f, n in cfg.families.items()]
    if cfg.data and parts:  # a common schema to concatenate with a dataset on disk
        parts = [p.select_columns(["prompt", "answer", "tests", "task", "domain"]) for p in parts]
    if cfg.data:
        d = cfg.data
        parts.append(sources.load(d.path, d.columns, d.task, d.domain, name=d.name, split=d.split)
                      .select_columns(["prompt", "answer", "tests", "task", "domain"]))
    if not parts:
        raise ValueError("queries: give `families` or `data`")
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def unseen(ctx: StageContext, pool, stage_ids: list[str]):
    """`pool` without the prompts that the named earlier stages trained on or that the pipeline's
    eval suites ask (exact match after whitespace folding), and how many of each were dropped."""
    used, held = used_prompts(ctx, stage_ids), {without_flag(t) for t in ctx.held_out}
    keys = [without_flag(p[-1]["content"]) for p in pool["prompt"]]
    counts = {"excluded_as_used": sum(k in used for k in keys),
              "excluded_as_eval": sum(k in held and k not in used for k in keys)}
    if counts["excluded_as_eval"]:
        log.info("%s: dropped %d candidate prompts that the eval suites ask", ctx.stage_id, counts["excluded_as_eval"])
    return pool.select([i for i, k in enumerate(keys) if k not in used and k not in held]), counts


def eval_asks(ctx: StageContext):
    """A test `text -> bool`: whether a user text is one the pipeline evaluates on (`ctx.held_out`),
    exactly after whitespace folding and without a trailing mode flag."""
    held = {without_flag(t) for t in ctx.held_out}
    return lambda text: without_flag(text) in held


def used_prompts(ctx: StageContext, stage_ids: list[str]) -> set[str]:
    """User texts of earlier stages' training data in this run (exact match after whitespace folding)."""
    from datasets import load_from_disk
    seen: set[str] = set()
    for sid in stage_ids:
        for stage_dir in (ctx.run_dir or ctx.dir.parent).glob(f"[0-9][0-9]_{sid}"):
            for data in [p for p in stage_dir.rglob("data/train") if (p / "dataset_info.json").is_file()]:
                ds = load_from_disk(str(data))
                column = "messages" if "messages" in ds.column_names else "prompt"
                for conv in ds[column]:
                    seen.update(without_flag(m["content"]) for m in conv if m["role"] == "user")
    return seen


def select_queries(ctx: StageContext, cfg: QuerySelection):
    pool, excluded = unseen(ctx, candidates(cfg), cfg.exclude_stages)
    engine = ctx.engines.get(ctx.input_model, batch_size=cfg.batch_size)
    rows = list(pool)
    rates = sample_and_grade(engine, rows, n=cfg.k, mode="think", max_new_tokens=cfg.max_new_tokens, seed=ctx.seed,
                             progress=True).pass_rates
    low, high = cfg.band
    keep = filters.learnable(rates, low=low, high=high)
    keep = sorted(keep, key=lambda i: rates[i])[:cfg.max_queries]  # hardest learnable first
    stats = {"candidates": len(rows), **excluded,
             "k": cfg.k, "band": cfg.band, "kept": len(keep),
             "always_right": sum(r == 1.0 for r in rates), "always_wrong": sum(r == 0.0 for r in rates),
             "histogram": filters.pass_rate_histogram(rates, bins=cfg.k + 1),
             "by_domain": _by_domain(rows, rates, keep)}
    write_json(ctx.dir / "selection.json", stats)
    log.info("%s: kept %d/%d learnable queries (always right %d, always wrong %d)", ctx.stage_id,
             stats["kept"], len(rows), stats["always_right"], stats["always_wrong"])
    if not keep:  # raised before anything is saved, so a rerun with a wider band selects again
        raise ValueError(f"{ctx.stage_id}: no learnable query among {len(rows)} (see {ctx.dir / 'selection.json'}): "
                         "widen queries.band, or add harder/easier families")
    return pool.select(sorted(keep)).add_column("pass_rate", [rates[i] for i in sorted(keep)])


def _by_domain(rows: list[dict], rates: list[float], keep: list[int]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    kept = set(keep)
    for i, row in enumerate(rows):
        d = out.setdefault(row.get("domain") or row.get("task") or "?", {"n": 0, "kept": 0, "mean_pass": 0.0})
        d["n"] += 1
        d["kept"] += i in kept
        d["mean_pass"] += rates[i]
    for d in out.values():
        d["mean_pass"] = round(d["mean_pass"] / d["n"], 3)
    return out
