"""Preference pairs the pipeline builds itself, for the reward model of stage 4's preference kinds
(report §4.4, "model-based reward without reference answer").

For a prompt of a rule-checked task kind, `chosen` is the solver's answer to it and `rejected` the
answer written for another item of the same kind that does not fully meet this prompt's rules (checked by the
kind's `check` rules, else its own rewards), so the reward model learns what the rules reward
without seeing them. Pairs are conversational (`prompt`, `chosen`, `rejected`), as TRL's
RewardTrainer takes them; the answers carry no think block (the `preference` reward scores the
answer part with `answer_only`).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import rewards
from data_builders.tasks import items, load_tasks, routing_table
from posttrain.core.config import ConfigError, ExistingPath


@dataclass
class PairsConfig:
    tasks: ExistingPath  # a tasks YAML (pipelines/tasks.yaml)
    kinds: list[str] | None = None  # default: every kind outside the `format` area (its rules need think blocks)
    n: int = 400  # pairs, split evenly over the kinds

    def __post_init__(self):
        if self.n < 2:
            raise ValueError(f"n must be at least 2, got {self.n}")


def build_pairs(cfg: PairsConfig, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pairs, stats): per kind, its training items' solver answers paired against failing ones."""
    kinds = load_tasks(cfg.tasks)
    names = cfg.kinds or [k for k, kind in kinds.items() if kind.area != "format"]
    unknown = [k for k in names if k not in kinds]
    if unknown:
        raise ConfigError(f"pairs.kinds: {unknown[0]!r} is not a kind of {cfg.tasks} (kinds: {', '.join(kinds)})")
    rng = random.Random(f"pairs:{seed}")
    pairs, stats = [], Counter()
    for name in names:
        want = -(-cfg.n // len(names))
        rows = [r for r in items(name, kinds[name], 2 * want, seed) if r.get("response")]
        if len(rows) < 2:
            stats[f"{name}/skipped_no_solver"] += 1
            continue
        which = "check" if kinds[name].check else "rewards"
        rules = rewards.get("routed", table=routing_table({name: kinds[name]}, which=which))
        for row in rows[:want]:
            candidates = sorted({r["response"] for r in rows} - {row["response"]})
            others = rng.sample(candidates, k=min(4, len(candidates)))
            scores = rules([row["response"], *others], **{k: [row.get(k, "")] * (1 + len(others)) for k in row})
            if scores[0] is None or scores[0] < 1.0:
                stats[f"{name}/solver_failed"] += 1
                continue
            bad = [o for o, s in zip(others, scores[1:], strict=True) if s is not None and s < 1.0]
            if not bad:
                stats[f"{name}/no_failing_answer"] += 1
                continue
            pairs.append({"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": row["response"]}],
                          "rejected": [{"role": "assistant", "content": bad[0]}], "task": name})
            stats[f"{name}/pairs"] += 1
    if not pairs:
        raise ConfigError(f"pairs: no pair could be built from kinds {names} (stats: {dict(stats)})")
    rng.shuffle(pairs)
    return pairs, dict(sorted(stats.items()))
