"""The report's text: report.md (each stage's effect in one line, then tables: stages, evaluation with
paired gains, data, ThinkFollow, task kinds, thinking budget, compared stages) and the terminal's
end-of-run summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.core.stats import compare, mean_se, task_item_changes
from posttrain.report.collect import eval_rows, gains
from posttrain.report.effects import effects
from posttrain.report.hybrid import hybrid_tax


def markdown(report: dict[str, Any], plots: list[str], title: str) -> str:
    lines = [f"# {title}", "", *[f"- {line}" for line in effects(report)], "", "## Stages", "",
             "| stage | kind | input | wall time (s) | CPU time (s) | steps | final loss |",
             "|---|---|---|---:|---:|---:|---:|"]
    for s in report["stages"]:
        train = (s["metrics"] or {}).get("train", {})
        phases = {k: v.get("global_step") for k, v in ((s["metrics"] or {}).get("phases") or {}).items()
                  if isinstance(v, dict)}
        if not train and phases:  # a multi-phase stage (distill): steps per phase
            train = {"global_step": ", ".join(f"{k} {v}" for k, v in phases.items())}
        lines.append(f"| {s['id']} | {s['stage']} | {Path(s['input_model']).parent.name or s['input_model']} "
                     f"| {s['wall_time_s']} | {s.get('cpu_time_s')} | {train.get('global_step', '')} "
                     f"| {_fmt(train.get('final_loss'))} |")
    rows = eval_rows(report)
    if rows:
        paired = gains(report)
        lines += ["", "## Evaluation", "",
                  "| model | suite | mode | accuracy ± s.e. | gain, points (paired ± s.e.) | pass@k | mean length |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for label, suite, mode, r in rows:
            passk = ", ".join(f"{k}: {_fmt(v)}" for k, v in (r.get("pass_at_k") or {}).items())
            se = f" ± {r['accuracy_se']:.3f}" if r.get("accuracy_se") is not None else ""
            lines.append(f"| {label} | {suite} | {mode} | {_fmt(r.get('accuracy'))}{se} "
                         f"| {paired.get((label, suite, mode), '')} | {passk} "
                         f"| {_fmt(r.get('mean_length'))} |")
    lines += _data_section(report)
    lines += _think_follow(report, gains(report)) + hybrid_tax(report) + _task_table(report)
    lines += benchmark_table(_models(report))
    lines += _budget_table(report.get("budget_curve"))
    for extra in report.get("sections", []):
        lines += ["", extra]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _data_section(report: dict[str, Any]) -> list[str]:
    """One line per data file of a stage (its module's REPORT_FILES): counts, filters, rejections per rule, mixes."""
    rows = [(s["id"], name, d) for s in report["stages"] for name, d in (s.get("data") or {}).items() if d]
    if not rows:
        return []
    return ["", "## Data", "", "What each stage's data builder kept and dropped (from the files in its directory).",
            ""] + [f"- **{sid}** (`{name}`): {_describe(d)}" for sid, name, d in rows]


def _describe(value: Any) -> str:
    """A mapping of counts as one line: `key value, key (nested ...)`; lists are left out."""
    if not isinstance(value, dict):
        return _fmt(value)
    return ", ".join(f"{k} ({_describe(v)})" if isinstance(v, dict) else f"{k} {_fmt(v)}"
                     for k, v in value.items() if not isinstance(v, list))


def _think_follow(report: dict[str, Any], gains: dict) -> list[str]:
    """ThinkFollow per evaluated model: overall, by the mode asked for, by where the flag sits."""
    models = [("base", report["base"]["eval"])] + [(s["id"], s["eval"]) for s in report["stages"]]
    rows = [(label, r["think_follow"]) for label, r in models if r and r.get("think_follow")]
    if not rows:
        return []
    lines = ["", "## ThinkFollow", "",
             "Share of assistant turns whose think block is empty exactly when the last flag is `/no_think`"
             " (held-out multi-turn suite, flags in user and system messages).", "",
             "| model | ThinkFollow | gain, points (paired ± s.e.) | turns | asked to think | asked not to "
             "| multi-turn | flag in system | no flag |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, tf in rows:
        lines.append(f"| {label} | {_fmt(tf['score'])} | {gains.get((label, 'think_follow', ''), '')} | {tf['turns']} "
                     f"| {_fmt(tf['by_mode'].get('think'))} "
                     f"| {_fmt(tf['by_mode'].get('no_think'))} | {_fmt(tf.get('multi_turn'))} "
                     f"| {_fmt(tf['by_flag'].get('system'))} | {_fmt(tf['by_flag'].get('none'))} |")
    held = [(label, tf["held_out"]) for label, tf in rows if tf.get("held_out")]
    if held:
        lines += ["", "Held-out suite: three-turn conversations on questions no training data uses, the last turn "
                  "unflagged, its mode set one or two turns back.", "",
                  "| model | ThinkFollow (held-out) | gain, points (paired ± s.e.) | turns | flag 1 turn back "
                  "| 2 turns back | asked not to think |", "|---|---:|---:|---:|---:|---:|---:|"]
        for label, tf in held:
            dist = tf.get("by_distance") or {}
            lines.append(f"| {label} | {_fmt(tf['score'])} | {gains.get((label, 'think_follow_held_out', ''), '')} "
                         f"| {tf['turns']} | {_fmt(dist.get('1'))} | {_fmt(dist.get('2'))} "
                         f"| {_fmt(tf['by_mode'].get('no_think'))} |")
    return lines


def _models(report: dict[str, Any]) -> list[tuple[str, dict]]:
    return [("base", report["base"]["eval"])] + [(s["id"], s["eval"]) for s in report["stages"]]


def benchmark_table(models: list[tuple[str, dict | None]]) -> list[str]:
    """Standard benchmarks (posttrain/benchmarks.py, lm-eval), one column per model that has them: accuracy
    (pass@1; IFEval prompt-level strict) ± s.e., or an lm-eval task's first metric ± its stderr."""
    models = [(label, r["benchmarks"]) for label, r in models if r and r.get("benchmarks")]
    if not models:
        return []
    keys = sorted({(name, mode) for _, b in models for name, modes in b.items() for mode in modes})
    lines = ["", "## Benchmarks", "", "| benchmark | mode | items | " + " | ".join(m for m, _ in models) + " |",
             "|---|---|---:|" + "---:|" * len(models)]
    for name, mode in keys:
        rows = [b.get(name, {}).get(mode) for _, b in models]
        cells = [_benchmark_cell(r) for r in rows]
        items = next(r["n_items"] for r in rows if r)
        lines.append(f"| {name} | {mode} | {items} | " + " | ".join(cells) + " |")
    ifeval = [f"{label} {name} {mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items())
              for label, b in models for name, modes in b.items() for mode, r in modes.items()
              if r.get("benchmark") == "ifeval"]
    if ifeval:
        lines += ["", "IFEval accuracies (prompt and instruction level, strict and loose): " + "; ".join(ifeval) + "."]
    return lines


def _benchmark_cell(r: dict | None) -> str:
    if not r:
        return ""
    if "accuracy" in r:
        return f"{r['accuracy']:.3f} ± {r['accuracy_se']:.3f}"
    metric = next(iter(r.get("metrics") or {}), None)
    return "" if metric is None else f"{metric} {r['metrics'][metric]:.3f} ± {r['stderr'].get(metric, 0.0):.3f}"


def _task_table(report: dict[str, Any]) -> list[str]:
    """Stage 4's per-task-kind scores (mean reward on held-out items ± s.e.), one column per model."""
    models = [(label, r["tasks"]["scores"]) for label, r in _models(report) if r and r.get("tasks")]
    if not models:
        return []
    keys = sorted({(kind, mode, r[mode].get("area", "")) for _, scores in models for kind, r in scores.items()
                   for mode in r}, key=lambda k: (k[2], k[0], k[1]))
    change = f"{models[-1][0]} - {models[-2][0]} (paired ± s.e.)" if len(models) > 1 else ""
    lines = ["", "## Task kinds", "", "Mean reward of each task kind's own rewards on held-out items, asked by "
             "flag in each mode (`flagged`: the items carry their own flags).", "",
             "| kind | area | mode | " + " | ".join(label for label, _ in models) + (f" | {change}" if change else "")
             + " |", "|---|---|---|" + "---:|" * (len(models) + bool(change))]
    for kind, mode, area in keys:
        cells = []
        for _, scores in models:
            r = scores.get(kind, {}).get(mode)
            cells.append(f"{_fmt(r['score'])} ± {r['score_se']:.2f}" if r and r["score"] is not None else "")
        if change:
            before, after = (m[1].get(kind, {}).get(mode) for m in models[-2:])
            cells.append(_paired_task_change(before, after))
        lines.append(f"| {kind} | {area} | {mode} | " + " | ".join(cells) + " |")
    agree = [f"{label} {kind} {mode}: {_fmt(r['agreement'])} (rules pass {_fmt(r.get('rule_pass'))}, "
             f"ROC AUC {_fmt(r.get('auc'))})"
             for label, scores in models for kind, modes in scores.items() for mode, r in modes.items()
             if r.get("agreement") is not None]
    if agree:
        lines += ["", "Agreement of model-based rewards (judge, reward model) with the kinds' rule checks, "
                  "share of items where both pass or both fail, and the ROC AUC of the reward's score against "
                  "the rules' verdict (0.5: it cannot tell a passing answer from a failing one): "
                  + "; ".join(agree) + "."]
    rms = [f"{s['id']}: {_fmt(s['metrics']['heldout_accuracy'])}" for s in report["stages"]
           if (s.get("metrics") or {}).get("heldout_accuracy") is not None]
    if rms:
        lines += ["", "Reward model held-out pair accuracy (chosen scored above rejected): " + "; ".join(rms) + "."]
    return lines


def _paired_task_change(before: dict | None, after: dict | None) -> str:
    """Mean per-item reward change over the items both scored, with its standard error."""
    diffs = task_item_changes(before, after)
    return "{diff:+.3f} ± {se:.3f}".format(**mean_se(diffs)) if diffs else ""


def _budget_table(curve: dict[str, Any] | None) -> list[str]:
    if not curve:
        return []
    suites = list(curve["points"][0]["suites"])
    lines = ["", f"## Thinking budget ({curve.get('stage') or curve['model']})", "",
             f"Think-mode accuracy when thinking is stopped after N tokens and the answer is generated at once "
             f"({curve['samples']} samples per item, at most {curve['max_new_tokens']} new tokens).", "",
             "| budget | " + " | ".join(f"{s} accuracy ± s.e. | {s} length | {s} budget hit" for s in suites) + " |",
             "|---:" + "|---:|---:|---:" * len(suites) + "|"]
    for p in curve["points"]:
        cells = [f"{_fmt(p['suites'][s]['accuracy'])} ± {_fmt(p['suites'][s].get('accuracy_se'))} "
                 f"| {_fmt(p['suites'][s]['mean_length'])} | {_fmt(p['suites'][s]['budget_hit'])}" for s in suites]
        lines.append(f"| {p['budget'] or 'none'} | " + " | ".join(cells) + " |")
    return lines


def comparison(report: dict[str, Any], ids: list[str], mode: str = "think") -> str:
    """The named stages side by side (the report's Table 21, in miniature): think-mode pass@1 and
    pass@k, no-think accuracy, length and truncation per suite, and each stage's compute; then
    accuracy at each point of their compute curves (plots/compute_curve.png)."""
    stages = {s["id"]: s for s in report["stages"]}
    suites = sorted({suite for i in ids for suite in ((stages[i]["eval"] or {}).get("suites") or {})})
    head = "| stage | CPU time (s) | wall time (s) | " + " | ".join(
        f"{suite} pass@1 | {suite} pass@k | {suite} no-think | {suite} length | {suite} truncated"
        for suite in suites) + " |"
    lines = [f"## Comparison ({mode} mode unless marked)", "", head, "|---" * (3 + 5 * len(suites)) + "|"]
    for i in ids:
        s, cells = stages[i], []
        for suite in suites:
            modes = ((s["eval"] or {}).get("suites") or {}).get(suite) or {}
            r, other = modes.get(mode) or {}, modes.get("no_think" if mode == "think" else "think") or {}
            ks = r.get("pass_at_k") or {}
            top = max(ks, key=int) if ks else None
            cells += [_fmt(r.get("accuracy")), f"{_fmt(ks.get(top))} (k={top})" if top else "",
                      _fmt(other.get("accuracy")), _fmt(r.get("mean_length")), _fmt(r.get("truncated"))]
        lines.append(f"| {i} | {s.get('cpu_time_s')} | {s.get('wall_time_s')} | " + " | ".join(cells) + " |")
    lines += _paired_rows(stages, ids, suites, mode)
    curves = [(i, point) for i in ids for point in stages[i].get("curve") or []]
    if curves:
        lines += ["", f"Accuracy against compute ({mode} pass@1; CPU seconds since the stage began, its data "
                  "building included):", "", "| stage | step | CPU time (s) | " + " | ".join(suites) + " |",
                  "|---" * (3 + len(suites)) + "|"]
        for i, point in curves:
            acc = [_fmt(((point.get("suites") or {}).get(suite) or {}).get(mode, {}).get("accuracy"))
                   for suite in suites]
            lines.append(f"| {i} | {point.get('step')} | {point.get('cpu_time_s')} | " + " | ".join(acc) + " |")
    return "\n".join(lines)


def _paired_rows(stages: dict[str, Any], ids: list[str], suites: list[str], mode: str) -> list[str]:
    """Each later compared stage minus the first on the same items, in points ± s.e. (pass@1 and the
    other mode's accuracy); none where either was not evaluated or was scored on other items."""
    first, rows = stages[ids[0]].get("eval"), []
    other = "no_think" if mode == "think" else "think"
    for i in ids[1:]:
        try:
            gains = compare(first, stages[i]["eval"]) if first and stages[i].get("eval") else None
        except ValueError:
            gains = None
        if not gains:
            continue
        cells = []
        for suite in suites:
            g = gains.get(suite) or {}
            diff = {m: f"{100 * g[m]['diff']:+.1f} ± {100 * g[m]['se']:.1f}" for m in g}
            cells += [diff.get(mode, ""), "", diff.get(other, ""), "", ""]  # pass@1, -, other mode, -, -
        rows.append(f"| {i} − {ids[0]}, paired (points ± s.e.) | | | " + " | ".join(cells) + " |")
    return rows


def summary(report: dict[str, Any]) -> list[str]:
    """The terminal's lines at the end of a run: stages and times, each stage's effect in one line
    (`effects`, as report.md opens), the last evaluated model's think accuracy against the base
    model's, and where the report is."""
    stages = report["stages"]
    wall = sum(s.get("wall_time_s") or 0 for s in stages)
    times = ", ".join(f"{s['id']} {s.get('wall_time_s') or '-'} s" for s in stages)
    lines = [f"pipeline {report.get('pipeline')}: {len(stages)} stage(s), {wall:.0f} s of stage wall time",
             f"stages: {times}", *effects(report)]
    last = next((s for s in reversed(stages) if s.get("eval")), None)
    base = (report["base"].get("eval") or {}).get("suites") or {}
    if last:
        cells = [f"{suite} {r['think']['accuracy']:.3f}" + (f" (base {base[suite]['think']['accuracy']:.3f})"
                                                             if "think" in base.get(suite, {}) else "")
                 for suite, r in (last["eval"].get("suites") or {}).items() if "think" in r]
        if cells:
            lines.append(f"end to end, {last['id']} think accuracy: {', '.join(cells)}")
    lines.append(f"report: {Path(report['run_dir']) / 'report.md'}")
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))
