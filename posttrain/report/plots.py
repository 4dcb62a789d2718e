"""The report's PNG plots: training curves per stage (and phase), rewards per task kind, query pass
rates, held-out accuracy per model, accuracy against the thinking budget and against CPU seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from posttrain.report.collect import curve_sources, eval_rows, scalars  # noqa: E402

CURVES = ("train/loss", "train/reward", "train/entropy", "train/completions/mean_length")


def _save(fig, path: Path) -> None:
    """Write a figure as a PNG and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_budget_curve(curve: dict[str, Any], path: Path) -> None:
    """Think-mode accuracy (± s.e.) per suite against the thinking budget; 'none' is no budget."""
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


def plots(run_dir: Path, report: dict[str, Any], planned, compare: list[str] | None = None) -> list[str]:
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    made = []
    for name, tb_dir in [source for p in planned for source in curve_sources(p.ctx)]:
        logged = scalars(tb_dir)
        tags = [t for t in CURVES if t in logged] or sorted(t for t in logged if t.startswith("train/"))[:4]
        if not tags:
            continue
        fig, axes = plt.subplots(1, len(tags), figsize=(4 * len(tags), 3), squeeze=False)
        for ax, tag in zip(axes[0], tags, strict=True):
            steps, values = zip(*sorted(logged[tag]), strict=True)
            ax.plot(steps, values, marker=".")
            ax.set_title(tag, fontsize=9)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(tag.rsplit("/", 1)[-1])
        fig.suptitle(f"{name}: training curves")
        _save(fig, run_dir / f"plots/{name}_training.png")
        made.append(f"plots/{name}_training.png")
        routed = sorted(t for t in logged if t.startswith("train/routed/"))
        if routed:  # the mean reward of each task kind and reward function (the `routed` reward's logs)
            fig, ax = plt.subplots(figsize=(7, 3.5))
            for tag in routed:
                steps, values = zip(*sorted(logged[tag]), strict=True)
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
    rows = eval_rows(report)
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


def plot_compute_curve(report: dict[str, Any], ids: list[str], path: Path, mode: str = "think") -> bool:
    """Accuracy (± s.e.) per suite against CPU seconds, one line per compared stage."""
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
