"""Statistics of evaluation results: standard errors, unbiased pass@k, paired gains on the same items.

Per-item correct counts are kept so that two models evaluated on the same items compare item by
item (`paired_difference`): the paired standard error is much smaller than either accuracy's, since
item difficulty cancels.
"""

from __future__ import annotations

from statistics import stdev
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), in product form."""
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def accuracy_summary(correct: list[int], samples: int, pass_k: list[int]) -> dict[str, Any]:
    """From right answers per item (of `samples` each): accuracy (= pass@1), its standard error over
    items, and unbiased pass@k for each k."""
    return {"accuracy": sum(correct) / (len(correct) * samples),
            "accuracy_se": standard_error([c / samples for c in correct]),
            "pass_at_k": {str(k): sum(pass_at_k(samples, int(c), k) for c in correct) / len(correct) for k in pass_k}}


def standard_error(values: list[float]) -> float:
    """Standard error of the mean of `values` (sample standard deviation / sqrt(n)); 0 for n < 2."""
    return stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def roc_auc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve of `scores` against binary `labels`: the chance that a random positive
    scores above a random negative, ties counting half (the Mann-Whitney U over n_pos * n_neg). 0.5
    for a grader that gives every item the same score; None unless both labels occur."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def paired_difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Accuracy gain of `after` over `before` on the same items (two results of one suite and mode):
    mean per-item difference and its standard error. Raises ValueError if the items differ."""
    a, b = before.get("correct_per_item"), after.get("correct_per_item")
    if a is None or b is None:
        raise ValueError("both results need correct_per_item (rerun posttrain eval)")
    shas = {before.get("items_sha"), after.get("items_sha")} - {None}  # older results have none
    if not a or len(a) != len(b) or not after.get("samples") or before.get("samples") != after.get("samples") \
            or len(shas) > 1:
        raise ValueError(f"not the same items: {len(a)} x {before.get('samples')} samples vs "
                         f"{len(b)} x {after.get('samples')} samples (or a different items_sha)")
    return mean_se([(y - x) / after["samples"] for x, y in zip(a, b, strict=True)])


def compare(baseline: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """`paired_difference` for every suite and mode that both eval JSONs have."""
    out: dict[str, Any] = {}
    for suite, modes in results["suites"].items():
        for mode, r in modes.items():
            base = ((baseline.get("suites") or {}).get(suite) or {}).get(mode)
            if base is not None:
                try:
                    out.setdefault(suite, {})[mode] = paired_difference(base, r)
                except ValueError as err:
                    raise ValueError(f"suite {suite!r} mode {mode!r}: {err}") from None
    return out


def compare_think_follow(baseline: dict[str, Any], results: dict[str, Any],
                         held_out: bool = False) -> dict[str, float] | None:
    """The paired ThinkFollow gain turn by turn (same conversations and flags), on the held-out
    carry-over suite with `held_out`, or None when either result has no such suite or they were made
    on other conversations."""
    a, b = baseline.get("think_follow"), results.get("think_follow")
    if held_out:
        a, b = (a or {}).get("held_out"), (b or {}).get("held_out")
    if not (a and b) or a.get("items_sha") != b.get("items_sha"):
        return None
    as_items = [{"correct_per_item": r["per_turn"], "samples": 1, "items_sha": r["items_sha"]} for r in (a, b)]
    return paired_difference(*as_items)


def task_item_changes(before: dict | None, after: dict | None) -> list[float] | None:
    """Per-item reward changes of one task kind and mode (eval.json `tasks.scores[kind][mode]`),
    over the items both scored; None where either is missing or they were scored on other items."""
    if not before or not after or len(before.get("per_item", [])) != len(after.get("per_item", [])):
        return None
    return [a - b for b, a in zip(before["per_item"], after["per_item"], strict=True) if None not in (a, b)]


def compare_tasks(baseline: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """The paired reward change of every task kind and mode that both eval JSONs scored on the same
    items (`kinds`), and of each area and mode over those kinds' items (`areas`); a kind both scored
    on other items (another `n` or seed: its `kind_shas` differ) is listed in `other_items`."""
    before, after = baseline.get("tasks") or {}, results.get("tasks") or {}
    shas = before.get("kind_shas") or {}, after.get("kind_shas") or {}
    out: dict[str, Any] = {"kinds": {}, "areas": {}, "other_items": []}
    pooled: dict[tuple[str, str], list[float]] = {}
    for kind, modes in (after.get("scores") or {}).items():
        old = (before.get("scores") or {}).get(kind)
        if not old:
            continue
        changes = {mode: task_item_changes(old.get(mode), r) for mode, r in modes.items()}
        sha = {shas[0].get(kind), shas[1].get(kind)} - {None}  # older results have none
        if len(sha) > 1 or any(old.get(mode) and diffs is None for mode, diffs in changes.items()):
            out["other_items"].append(kind)
            continue
        for mode, diffs in changes.items():
            if diffs:
                out["kinds"].setdefault(kind, {})[mode] = mean_se(diffs)
                pooled.setdefault((modes[mode].get("area") or "other", mode), []).extend(diffs)
    for (area, mode), diffs in pooled.items():
        out["areas"].setdefault(area, {})[mode] = mean_se(diffs)
    return out


def mean_se(diffs: list[float]) -> dict[str, float]:
    """The mean of per-item differences, its standard error and the item count."""
    return {"diff": sum(diffs) / len(diffs), "se": standard_error(diffs), "n_items": len(diffs)}
