"""Each stage's effect in one line, from report.json alone: what the stage is for, measured against
the model it started from, with the paired standard error where the same items were scored.

    cold_start: think accuracy arithmetic 0.010 -> 0.250 (+24.0 ± 4.4), linear ... vs base
    reasoning_rl: training reward 0.19 -> 0.41 (steps 1-8); think accuracy ...
    fusion: ThinkFollow 0.375 -> 0.938 (+56.2 ± 7.1 vs base); no-think answers 0.18x think length; ...
    general_rl: instruction kinds' reward 0.412 -> 0.530 (+0.118 ± 0.041, 5 kinds); ...
    distill: student 67.6M params (0.50x the teacher); 3% of answers at the length cap; think accuracy
             arithmetic 0.250 -> 0.125 (-12.5 ± 6.0, 0.50x the teacher's), ... vs general_rl

The terminal prints these lines at the end of a run and report.md opens with them.
"""

from __future__ import annotations

from typing import Any

from posttrain.core.stats import mean_se, task_item_changes
from posttrain.report.collect import evaluated, paired_gains

INSTRUCTION_AREA = "instruction"


def effects(report: dict[str, Any]) -> list[str]:
    """One line per stage of the run: its own measures (training reward, reward-model accuracy,
    student size) and its evaluated ones against the nearest evaluated model before it."""
    gains, (evals, nearest), lines = paired_gains(report), evaluated(report), []
    for s in report["stages"]:
        parts = [_reward(s), _reward_model(s), _student(s)]
        if s.get("eval"):
            parts += [_think_follow(s, gains, evals), _lengths(s), _tasks(s, evals, nearest(s["id"], "tasks")),
                      _accuracy(s, gains, evals)]
        parts = [p for p in parts if p]
        if not parts:
            parts = ["not finished" if s.get("wall_time_s") is None else "not evaluated (`eval: false`)"
                     if report["base"].get("eval") else "not evaluated (the pipeline has no `eval`)"]
        lines.append(f"{s['id']}: " + "; ".join(parts))
    return lines


def _acc(results: dict | None, suite: str, mode: str = "think") -> float | None:
    return ((((results or {}).get("suites") or {}).get(suite) or {}).get(mode) or {}).get("accuracy")


def _accuracy(s: dict, gains: dict, evals: dict) -> str:
    """Think accuracy per suite, before -> after (paired gain in points ± s.e.) and against which model;
    for a distilled student against its evaluated teacher, also the share of the teacher's it keeps."""
    cells, refs = [], set()
    for suite, modes in (s["eval"].get("suites") or {}).items():
        if "think" not in modes:
            continue
        g = gains.get((s["id"], suite, "think"))
        if g:
            refs.add(g["ref"])
            before, after = _acc(evals[g["ref"]], suite), modes["think"]["accuracy"]
            teacher = s.get("stage") == "distill" and evals[g["ref"]].get("model") == s["input_model"]
            share = f", {after / before:.2f}x the teacher's" if teacher and before else ""
            cells.append(f"{suite} {before:.3f} -> {after:.3f} ({100 * g['diff']:+.1f} ± {100 * g['se']:.1f}{share})")
        else:
            cells.append(f"{suite} {modes['think']['accuracy']:.3f}")
    if not cells:  # a model asked in no-think mode only (an instruct model)
        suites = (s["eval"].get("suites") or {}).items()
        plain = [f"{suite} {modes['no_think']['accuracy']:.3f}" for suite, modes in suites if "no_think" in modes]
        return "no-think accuracy " + ", ".join(plain) if plain else ""
    return "think accuracy " + ", ".join(cells) + (f" vs {', '.join(sorted(refs))}" if refs else "")


def _think_follow(s: dict, gains: dict, evals: dict) -> str:
    """ThinkFollow, and on its held-out suite, before -> after (paired gain) where both were scored."""
    tf, cells = s["eval"].get("think_follow"), []
    for key, name, result in (("think_follow", "ThinkFollow", tf), ("think_follow_held_out", "held-out",
                                                                     (tf or {}).get("held_out"))):
        if not result:
            continue
        g = gains.get((s["id"], key, ""))
        if not g:
            cells.append(f"{name} {result['score']:.3f}")
            continue
        before = evals[g["ref"]]["think_follow"]["score"] if key == "think_follow" else \
            evals[g["ref"]]["think_follow"]["held_out"]["score"]
        cells.append(f"{name} {before:.3f} -> {result['score']:.3f} ({100 * g['diff']:+.1f} ± {100 * g['se']:.1f} "
                     f"vs {g['ref']})")
    return ", ".join(cells)


def _lengths(s: dict) -> str:
    """For the stage that fuses the modes: mean no-think answer length as a share of think mode's."""
    if s.get("stage") != "fusion":
        return ""
    pairs = [(m["no_think"]["mean_length"], m["think"]["mean_length"])
             for m in (s["eval"].get("suites") or {}).values() if {"think", "no_think"} <= set(m)]
    think = sum(t for _, t in pairs)
    return f"no-think answers {sum(n for n, _ in pairs) / think:.2f}x think length" if think else ""


def _tasks(s: dict, evals: dict, ref: str | None) -> str:
    """The instruction-following kinds' mean held-out reward, paired item by item with `ref`, the
    nearest model before that scored the task kinds."""
    after = ((s["eval"].get("tasks") or {}).get("scores")) or {}
    before = (((evals.get(ref) or {}).get("tasks") or {}).get("scores")) or {}
    rows = [(kind, mode) for kind, modes in after.items() for mode, r in modes.items()
            if r.get("area") == INSTRUCTION_AREA and r.get("score") is not None]
    if not rows:
        return ""
    mean_after = sum(after[k][m]["score"] for k, m in rows) / len(rows)
    diffs = _item_diffs(before, after, rows)
    count = len({k for k, _ in rows})
    kinds = f"{count} kind{'s' if count > 1 else ''}"
    if diffs is None:
        return f"instruction kinds' reward {mean_after:.3f} ({kinds})"
    d = mean_se(diffs)
    return (f"instruction kinds' reward {mean_after - d['diff']:.3f} -> {mean_after:.3f} "
            f"({d['diff']:+.3f} ± {d['se']:.3f}, {kinds}) vs {ref}")


def _item_diffs(before: dict, after: dict, rows: list[tuple[str, str]]) -> list[float] | None:
    """Per-item reward changes over every (kind, mode) row, or None where a row is missing before
    or was scored on other items."""
    changes = [task_item_changes((before.get(kind) or {}).get(mode), after[kind][mode]) for kind, mode in rows]
    return None if any(c is None for c in changes) else [d for c in changes for d in c] or None


def _reward(s: dict) -> str:
    """An RL stage's training reward: the mean of its first and of its last quarter of logged steps."""
    curve = s.get("train_reward") or []
    if len(curve) < 2:
        return f"training reward {curve[0][1]:.3f} (step {curve[0][0]})" if curve else ""
    q = max(1, len(curve) // 4)
    first, last = (sum(v for _, v in part) / len(part) for part in (curve[:q], curve[-q:]))
    return f"training reward {first:.3f} -> {last:.3f} (steps {curve[0][0]}-{curve[-1][0]})"


def _reward_model(s: dict) -> str:
    """A reward model's held-out pair accuracy; a judge's held-out verdict accuracy and ROC AUC."""
    metrics = s.get("metrics") or {}
    acc, auc = metrics.get("heldout_accuracy"), metrics.get("heldout_auc")
    if acc is None:
        return ""
    if "heldout_verdicts" in metrics:
        return f"held-out verdict accuracy {acc:.3f}, ROC AUC " + (f"{auc:.3f}" if auc is not None else "n/a")
    return f"held-out pair accuracy {acc:.3f}"


def _student(s: dict) -> str:
    """A distilled student: its size against the teacher's and its answers cut at the length cap."""
    if s.get("stage") != "distill" or not s.get("params") or not s.get("input_params"):
        return ""
    parts = [f"student {s['params'] / 1e6:.1f}M params ({s['params'] / s['input_params']:.2f}x the teacher)"]
    cut = [r["truncated"] for m in ((s.get("eval") or {}).get("suites") or {}).values() for r in m.values()
           if r.get("truncated") is not None]
    if cut:
        parts.append(f"{100 * sum(cut) / len(cut):.0f}% of answers at the length cap")
    return "; ".join(parts)
