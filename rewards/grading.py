"""Grading by rules: each task kind's grader, and "sample k answers, grade them, take the pass rate".

One table (`GRADERS`) says which reward grades a task kind. It serves the evaluation, the cold-start
query filter (solved without CoT?) and response rule (1), stage 2's query selection and default
rewards, and the distillation teacher's answer filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rewards import get

# task kind -> the registered reward that grades it (1.0 right, else 0.0)
GRADERS = {"math": "math", "code": "code", "countdown": "countdown", "instruction": "instruction"}


def grade(rows: list[dict[str, Any]], texts: list[str]) -> list[float]:
    """Rule-grade completions against their rows (1.0 correct, else 0.0), grouped by task."""
    scores = [0.0] * len(texts)
    by_task: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_task.setdefault(row.get("task") or "math", []).append(i)
    for task, idx in by_task.items():
        if task not in GRADERS:
            raise ValueError(f"no grader for task {task!r} (graders: {', '.join(GRADERS)})")
        columns = {k: [rows[i].get(k) for i in idx] for k in rows[idx[0]]}
        for i, s in zip(idx, get(GRADERS[task])([texts[i] for i in idx], **columns), strict=True):
            scores[i] = float(s or 0.0)
    return scores


@dataclass
class Graded:
    """`n` sampled completions per row and their grades."""

    completions: list[list[Any]]  # per row, its n Completions
    scores: list[list[float]]  # per row, the grade of each

    @property
    def correct(self) -> list[int]:
        """Right answers per row."""
        return [int(sum(s)) for s in self.scores]

    @property
    def pass_rates(self) -> list[float]:
        return [sum(s) / len(s) for s in self.scores]


def sample_and_grade(engine, rows: Sequence[dict[str, Any]], n: int = 1, prompts: list | None = None,
                     **generate: Any) -> Graded:
    """Sample `n` answers to each row's prompt (or to `prompts`, one per row) with `engine.generate`
    and the given settings, and grade each against its row."""
    rows = list(rows)
    outs = engine.generate(prompts if prompts is not None else [r["prompt"] for r in rows], n=n, **generate)
    flat = grade([r for r in rows for _ in range(n)], [c.text for o in outs for c in o])
    return Graded(outs, [flat[i * n:(i + 1) * n] for i in range(len(rows))])
