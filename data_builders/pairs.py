"""Preference pairs and judge verdicts the pipeline builds itself from rule-checked task kinds: for the
reward model of stage 4's preference kinds (report §4.4, "model-based reward without reference
answer"), and for a generative verifier, the judge of its reference-answer kinds (`build_verdicts`).

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
from posttrain.core.chat import without_flag
from posttrain.core.config import ConfigError, ExistingPath
from rewards.instruction import parse_constraints
from rewards.judge import RUBRIC_YES_NO, judge_prompt


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


def _short_forms(row: dict[str, Any]) -> list[str]:
    """Answers to ROW that say only what it asks: its boxed `answer`, or each keyword it must include."""
    if row.get("answer"):
        return [f"\\boxed{{{row['answer']}}}"]
    constraints = parse_constraints(row["constraints"]) if row.get("constraints") else []
    return [f"{w}." for c in constraints if c.get("type") == "include_keywords" for w in c.get("keywords") or []]


def build_verdicts(cfg: PairsConfig, seed: int = 0, exclude: set[str] = frozenset()) -> tuple[list[dict], dict]:
    """(examples, stats): SFT conversations for a yes/no judge (rewards/judge.py's RUBRIC_YES_NO, with
    `verdict: yes_no`). Per training item of a kind with `check` rules (never a question in EXCLUDE,
    the evaluation's, compared without mode flags): the rubric filled with its question, its
    reference (`reference`, else the solver's answer) and a candidate answer — its own answer or a
    short form of it, or the answer (or short form) to another item of the kind — answered `Yes`
    when the kind's check rules pass the candidate and `No` when they fail it; as many Yes as No."""
    kinds = load_tasks(cfg.tasks)
    names = cfg.kinds or [k for k, kind in kinds.items() if kind.check]
    unknown = [k for k in names if k not in kinds or not kinds[k].check]
    if unknown or not names:
        raise ConfigError(f"verdicts.kinds: {unknown[0] if unknown else '(none)'!r} is not a kind of {cfg.tasks} "
                          f"with check rules (kinds with them: {', '.join(k for k in kinds if kinds[k].check)})")
    rng = random.Random(f"verdicts:{seed}")
    out, stats = [], Counter()
    for name in names:
        want = -(-cfg.n // len(names))
        rows = [r for r in items(name, kinds[name], 4 * want, seed) if r.get("response")]
        fresh = [r for r in rows if without_flag(r["prompt"][-1]["content"]) not in exclude]
        stats[f"{name}/dropped_as_eval"] = len(rows) - len(fresh)
        rules = rewards.get("routed", table=routing_table({name: kinds[name]}, which="check"))
        for row in fresh:
            if stats[f"{name}/yes"] + stats[f"{name}/no"] >= want:
                break
            others = rng.sample(fresh, k=min(3, len(fresh)))
            candidates = list(dict.fromkeys([row["response"], *_short_forms(row), *(o["response"] for o in others),
                                             *(f for o in others[:1] for f in _short_forms(o))]))
            scores = rules(candidates, **{k: [row.get(k, "")] * len(candidates) for k in row})
            yes = [c for c, s in zip(candidates, scores, strict=True) if s is not None and s >= 1.0]
            no = [c for c, s in zip(candidates, scores, strict=True) if s is not None and s < 1.0]
            k = min(len(yes), len(no))
            shown = {**row, "reference": row.get("reference") or row["response"]}
            for verdict, chosen in (("Yes", rng.sample(yes, k)), ("No", rng.sample(no, k))):
                for text in chosen:
                    out.append({"messages": [{"role": "user", "content": judge_prompt(RUBRIC_YES_NO, text, shown)},
                                             {"role": "assistant", "content": verdict, "reasoning_content": ""}],
                                "label": verdict == "Yes", "task": name})
                stats[f"{name}/{verdict.lower()}"] += k
    if not out:
        raise ConfigError(f"verdicts: no verdict could be built from kinds {names} (stats: {dict(stats)})")
    rng.shuffle(out)
    return out, dict(sorted(stats.items()))
