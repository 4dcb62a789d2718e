"""The human report at the end of a pipeline: report.json, report.md and PNG plots."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from posttrain.rundir import read_json, write_json

log = logging.getLogger("posttrain.report")
CURVES = ("train/loss", "train/reward", "train/entropy", "train/completions/mean_length")
# what the data builders made and dropped, per stage (cold-start filters and rejections per rule,
# learnable-query selection, fusion mix, preference pairs, stage-4 mix, distillation kept/total)
DATA_FILES = ("cold_start_data.json", "selection.json", "fusion_data.json", "pairs.json", "reward_model.json",
              "general_rl_data.json", "off_policy/metrics.json")


def collect(run_dir: Path, planned) -> dict[str, Any]:
    """report.json: per model (base, then each stage) the eval results, and each stage's wall time."""
    report: dict[str, Any] = {"run_dir": str(run_dir), "base": {"eval": read_json(run_dir / "base_eval.json")},
                              "stages": []}
    for p in planned:
        info = p.ctx.completion_info()
        report["stages"].append({
            "id": p.ctx.stage_id, "stage": p.spec.stage, "input_model": p.ctx.input_model,
            "model": str(p.ctx.model_dir), "wall_time_s": info.get("wall_time_s"),
            "cpu_time_s": info.get("cpu_time_s"),
            "resumed": info.get("resumed"), "metrics": read_json(p.ctx.dir / "metrics.json", {}),
            "eval": read_json(p.ctx.dir / "eval.json"), "curve": read_json(p.ctx.dir / "curve" / "curve.json"),
            "data": {name: read_json(p.ctx.dir / name) for name in DATA_FILES if (p.ctx.dir / name).is_file()}})
    report["budget_curve"] = read_json(run_dir / "budget_curve.json")
    return report


def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    if not tb_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted({f.parent for f in tb_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events)).Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def _curve_sources(ctx) -> list[tuple[str, Path]]:
    """(name, TensorBoard dir) of a stage, or of each phase of a multi-phase stage (distill)."""
    phases = [(f"{ctx.stage_id}_{d.name}", d / "tb") for d in sorted(ctx.dir.iterdir())
              if (d / "tb").is_dir()] if ctx.dir.is_dir() else []
    return [(ctx.stage_id, ctx.tb_dir)] if ctx.tb_dir.is_dir() or not phases else phases


def _eval_rows(report: dict[str, Any]) -> list[tuple[str, str, str, dict]]:
    rows = []
    models = [("base", report["base"]["eval"])] + [(s["id"], s["eval"]) for s in report["stages"]]
    for label, results in models:
        for suite, modes in ((results or {}).get("suites") or {}).items():
            for mode, r in modes.items():
                rows.append((label, suite, mode, r))
    return rows


def _gains(report: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    """Each stage's paired gain over the model it started from, or over the nearest model before it
    that has the measure: per (stage, suite, mode) in accuracy, per (stage, "think_follow", "") in
    ThinkFollow."""
    from posttrain.evaluate import compare, compare_think_follow
    evals = {"base": report["base"]["eval"]} | {s["id"]: s["eval"] for s in report["stages"]}
    owner = {str(m): "base" for m in [(report["base"]["eval"] or {}).get("model")] if m} | {
        str(s["model"]): s["id"] for s in report["stages"] if s.get("model")}
    inputs = {s["id"]: owner.get(str(s["input_model"])) for s in report["stages"]}

    def nearest(sid: str, part: str) -> str | None:
        ref = inputs[sid]
        while ref and ref != "base" and not (evals[ref] or {}).get(part):
            ref = inputs.get(ref)
        return ref if ref and (evals[ref] or {}).get(part) else None
    out = {}
    for s in report["stages"]:
        if not s["eval"]:
            continue
        ref = nearest(s["id"], "think_follow")
        tf = compare_think_follow(evals[ref], s["eval"]) if ref else None
        if tf:
            out[(s["id"], "think_follow", "")] = f"{100 * tf['diff']:+.1f} ± {100 * tf['se']:.1f} vs {ref}"
        ref = nearest(s["id"], "suites")
        if not ref:
            continue
        try:
            gains = compare(evals[ref], s["eval"])
        except ValueError:  # evaluated on other items (or before per-item counts): no paired gain
            continue
        for suite, modes in gains.items():
            for mode, g in modes.items():
                out[(s["id"], suite, mode)] = f"{100 * g['diff']:+.1f} ± {100 * g['se']:.1f} vs {ref}"
    return out


def _save(fig, path: Path) -> None:
    """Write a figure as a PNG and free it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_budget_curve(curve: dict[str, Any], path: Path) -> None:
    """Think-mode accuracy (± s.e.) per suite against the thinking budget; 'none' is no budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = curve["points"]
    xs = list(range(len(points)))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for suite in points[0]["suites"]:
        ys = [p["suites"][suite]["accuracy"] for p in points]
        ax.errorbar(xs, ys, yerr=[p["suites"][suite].get("accuracy_se") or 0 for p in points], marker="o",
                    capsize=3, label=suite)
    ax.set_xticks(xs, [str(p["budget"]) if p["budget"] else "none" for p in points])
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("accuracy (think mode)")
    ax.set_title(f"Accuracy vs thinking budget: {curve.get('stage') or curve['model']}", fontsize=9)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    _save(fig, path)


def _plots(run_dir: Path, report: dict[str, Any], planned, compare: list[str] | None = None) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    made = []
    for name, tb_dir in [source for p in planned for source in _curve_sources(p.ctx)]:
        scalars = _scalars(tb_dir)
        tags = [t for t in CURVES if t in scalars] or sorted(t for t in scalars if t.startswith("train/"))[:4]
        if not tags:
            continue
        fig, axes = plt.subplots(1, len(tags), figsize=(4 * len(tags), 3), squeeze=False)
        for ax, tag in zip(axes[0], tags, strict=True):
            steps, values = zip(*sorted(scalars[tag]), strict=True)
            ax.plot(steps, values, marker=".")
            ax.set_title(tag, fontsize=9)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(tag.rsplit("/", 1)[-1])
        fig.suptitle(f"{name}: training curves")
        _save(fig, run_dir / f"plots/{name}_training.png")
        made.append(f"plots/{name}_training.png")
        routed = sorted(t for t in scalars if t.startswith("train/routed/"))
        if routed:  # the mean reward of each task kind and reward function (the `routed` reward's logs)
            fig, ax = plt.subplots(figsize=(7, 3.5))
            for tag in routed:
                steps, values = zip(*sorted(scalars[tag]), strict=True)
                ax.plot(steps, values, marker=".", label=tag.removeprefix("train/routed/"))
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("mean reward")
            ax.set_title(f"{name}: reward per task kind / reward function", fontsize=9)
            ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
            _save(fig, run_dir / f"plots/{name}_rewards.png")
            made.append(f"plots/{name}_rewards.png")
    for s in report["stages"]:
        hist = ((s.get("data") or {}).get("selection.json") or {}).get("histogram")
        if hist:  # learnable-query selection: the candidates' pass rates over k samples
            fig, ax = plt.subplots(figsize=(5, 3.2))
            ax.bar(range(len(hist)), list(hist.values()), color=["tab:gray" if k in ("0.00", "1.00") else "tab:blue"
                                                                  for k in hist])
            ax.set_xticks(range(len(hist)), list(hist))  # the rates as labels: numeric strings, not a category axis
            ax.set_xlabel("pass rate over k samples (gray: dropped)")
            ax.set_ylabel("queries")
            ax.set_title(f"{s['id']}: query pass rates before selection", fontsize=9)
            _save(fig, run_dir / f"plots/{s['id']}_query_pass_rates.png")
            made.append(f"plots/{s['id']}_query_pass_rates.png")
    rows = _eval_rows(report)
    if rows:
        series: dict[tuple[str, str], dict[str, float]] = {}
        labels = list(dict.fromkeys(r[0] for r in rows))
        for label, suite, mode, r in rows:
            series.setdefault((suite, mode), {})[label] = r.get("accuracy", 0.0)
        fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(labels) * max(1, len(series)) / 2), 3.5))
        width = 0.8 / len(series)
        for k, ((suite, mode), values) in enumerate(sorted(series.items())):
            xs = [i + k * width for i in range(len(labels))]
            ax.bar(xs, [values.get(lab, 0.0) for lab in labels], width, label=f"{suite} ({mode})")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
        ax.set_xlabel("model")
        ax.set_ylabel("accuracy (pass@1)")
        ax.set_title("Held-out accuracy per model, suite and mode", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run_dir / "plots/eval_accuracy.png", dpi=90)
        plt.close(fig)
        made.insert(0, "plots/eval_accuracy.png")
    if report.get("budget_curve"):
        plot_budget_curve(report["budget_curve"], run_dir / "plots/budget_curve.png")
        made.append("plots/budget_curve.png")
    if compare and plot_compute_curve(report, compare, run_dir / "plots/compute_curve.png"):
        made.append("plots/compute_curve.png")
    return made


def markdown(report: dict[str, Any], plots: list[str], title: str) -> str:
    lines = [f"# {title}", "", "## Stages", "",
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
    rows = _eval_rows(report)
    if rows:
        gains = _gains(report)
        lines += ["", "## Evaluation", "",
                  "| model | suite | mode | accuracy ± s.e. | gain, points (paired ± s.e.) | pass@k | mean length |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for label, suite, mode, r in rows:
            passk = ", ".join(f"{k}: {_fmt(v)}" for k, v in (r.get("pass_at_k") or {}).items())
            se = f" ± {r['accuracy_se']:.3f}" if r.get("accuracy_se") is not None else ""
            lines.append(f"| {label} | {suite} | {mode} | {_fmt(r.get('accuracy'))}{se} "
                         f"| {gains.get((label, suite, mode), '')} | {passk} "
                         f"| {_fmt(r.get('mean_length'))} |")
    lines += _data_section(report)
    lines += _think_follow(report, _gains(report)) + _task_table(report) + _budget_table(report.get("budget_curve"))
    for extra in report.get("sections", []):
        lines += ["", extra]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _data_section(report: dict[str, Any]) -> list[str]:
    """One line per data file of a stage (DATA_FILES): counts, filters, rejections per rule, mixes."""
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


def notes(report: dict[str, Any], planned) -> list[str]:
    """One line for each part of the report that is missing, saying why."""
    out = []
    if not report["base"].get("eval"):
        out.append("no evaluation: the pipeline has no `eval` suites")
    for p, s in zip(planned, report["stages"], strict=True):
        if not p.ctx.is_complete():
            out.append(f"{s['id']}: not finished, so no model, times or eval")
        elif report["base"].get("eval") and not s.get("eval"):
            out.append(f"{s['id']}: not evaluated (`eval: false` for this stage)")
        if p.ctx.is_complete() and not any(_scalars(tb) for _, tb in _curve_sources(p.ctx)):
            out.append(f"{s['id']}: no training curves (no TensorBoard scalars in {p.ctx.tb_dir.name}/)")
    return out


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
    return lines


def _task_table(report: dict[str, Any]) -> list[str]:
    """Stage 4's per-task-kind scores (mean reward on held-out items ± s.e.), one column per model."""
    models = [("base", report["base"]["eval"])] + [(s["id"], s["eval"]) for s in report["stages"]]
    models = [(label, r["tasks"]["scores"]) for label, r in models if r and r.get("tasks")]
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
    agree = [f"{label} {kind} {mode}: {_fmt(r['agreement'])} (rules pass {_fmt(r.get('rule_pass'))})"
             for label, scores in models for kind, modes in scores.items() for mode, r in modes.items()
             if r.get("agreement") is not None]
    if agree:
        lines += ["", "Agreement of model-based rewards (judge, reward model) with the kinds' rule checks, "
                  "share of items where both pass or both fail: " + "; ".join(agree) + "."]
    rms = [f"{s['id']}: {_fmt(s['metrics']['heldout_accuracy'])}" for s in report["stages"]
           if (s.get("metrics") or {}).get("heldout_accuracy") is not None]
    if rms:
        lines += ["", "Reward model held-out pair accuracy (chosen scored above rejected): " + "; ".join(rms) + "."]
    return lines


def _paired_task_change(before: dict | None, after: dict | None) -> str:
    """Mean per-item reward change over the items both scored, with its standard error."""
    from posttrain.evaluate import standard_error
    if not before or not after or len(before.get("per_item", [])) != len(after.get("per_item", [])):
        return ""
    diffs = [a - b for a, b in zip(after["per_item"], before["per_item"], strict=True) if None not in (a, b)]
    return f"{sum(diffs) / len(diffs):+.3f} ± {standard_error(diffs):.3f}" if diffs else ""


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
    from posttrain.evaluate import compare
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


def plot_compute_curve(report: dict[str, Any], ids: list[str], path: Path, mode: str = "think") -> bool:
    """Accuracy (± s.e.) per suite against CPU seconds, one line per compared stage."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    stages = {s["id"]: s for s in report["stages"]}
    curves = {i: [p for p in stages[i].get("curve") or [] if p.get("suites") and p.get("cpu_time_s") is not None]
              for i in ids}
    suites = sorted({suite for points in curves.values() for p in points for suite in p["suites"]})
    if not suites:
        return False
    fig, axes = plt.subplots(1, len(suites), figsize=(4.5 * len(suites), 3.5), squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        for i, points in curves.items():
            points = sorted((p for p in points if mode in (p["suites"].get(suite) or {})),
                            key=lambda p: p["cpu_time_s"])
            rs = [p["suites"][suite][mode] for p in points]
            ax.errorbar([p["cpu_time_s"] for p in points], [r["accuracy"] for r in rs],
                        yerr=[r.get("accuracy_se") or 0 for r in rs], marker="o", capsize=3, label=i)
        ax.set_title(f"{suite} ({mode} pass@1)", fontsize=9)
        ax.set_xlabel("CPU seconds spent by the stage")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    _save(fig, path)
    return True


def summary(report: dict[str, Any]) -> list[str]:
    """Five lines for the terminal at the end of a run: stages and times, the last evaluated model's
    accuracy (think mode) against the base model's, its ThinkFollow, and where the report is."""
    stages = report["stages"]
    wall = sum(s.get("wall_time_s") or 0 for s in stages)
    times = ", ".join(f"{s['id']} {s.get('wall_time_s') or '-'} s" for s in stages)
    last = next((s for s in reversed(stages) if s.get("eval")), None)
    base = (report["base"].get("eval") or {}).get("suites") or {}
    lines = [f"pipeline {report.get('pipeline')}: {len(stages)} stage(s), {wall:.0f} s of stage wall time",
             f"stages: {times}"]
    if last:
        cells = [f"{suite} {r['think']['accuracy']:.3f}" + (f" (base {base[suite]['think']['accuracy']:.3f})"
                                                             if "think" in base.get(suite, {}) else "")
                 for suite, r in (last["eval"].get("suites") or {}).items() if "think" in r]
        lines.append(f"{last['id']} think accuracy: {', '.join(cells) or 'not measured'}")
        follow = next((s for s in reversed(stages) if (s.get("eval") or {}).get("think_follow")), None)
        lines.append(f"{follow['id']} ThinkFollow: {follow['eval']['think_follow']['score']:.3f}" if follow
                     else "ThinkFollow: not measured")
    else:
        lines += ["eval: none " + ("(no stage has `eval: true`)" if report["base"].get("eval")
                                   else "(the pipeline has no `eval`)"), ""]
    lines.append(f"report: {Path(report['run_dir']) / 'report.md'}")
    return [line for line in lines if line]


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))


def write_report(run_dir: Path, cfg, planned, sections: list[str] | None = None) -> Path:
    report = collect(run_dir, planned)
    report["pipeline"] = cfg.name
    report["notes"] = notes(report, planned)
    report["sections"] = list(sections or [])
    if getattr(cfg, "compare", None):
        report["sections"].append(comparison(report, cfg.compare))
    write_json(run_dir / "report.json", report)
    try:
        plots = _plots(run_dir, report, planned, getattr(cfg, "compare", None))
    except Exception as err:  # a plot must never cost the run its report
        log.warning("plots skipped: %s", err)
        plots = []
    (run_dir / "report.md").write_text(markdown(report, plots, f"posttrain report: {cfg.name}"))
    log.info("report: %s", run_dir / "report.md")
    return run_dir / "report.md"
