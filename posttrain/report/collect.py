"""What the report is made of: report.json's content (each stage's times, metrics, eval results,
model sizes, training reward and the data files its module names in REPORT_FILES), TensorBoard
scalars, paired gains, missing parts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import stages
from posttrain.core.models import params_on_disk
from posttrain.core.rundir import read_json
from posttrain.core.stats import compare, compare_think_follow


def collect(run_dir: Path, planned) -> dict[str, Any]:
    """report.json: per model (base, then each stage) the eval results, and each stage's wall time."""
    report: dict[str, Any] = {"run_dir": str(run_dir), "base": {"eval": read_json(run_dir / "base_eval.json")},
                              "stages": []}
    for p in planned:
        info = p.ctx.completion_info()
        report["stages"].append({
            "id": p.ctx.stage_id, "stage": p.spec.stage, "input_model": p.ctx.input_model,
            "model": str(p.ctx.model_dir), "wall_time_s": info.get("wall_time_s"),
            "cpu_time_s": info.get("cpu_time_s"), "params": _params(p.ctx.model_dir),
            "input_params": _params(p.ctx.input_model), "train_reward": train_reward(p.ctx),
            "resumed": info.get("resumed"), "metrics": read_json(p.ctx.dir / "metrics.json", {}),
            "eval": read_json(p.ctx.dir / "eval.json"), "curve": read_json(p.ctx.dir / "curve" / "curve.json"),
            "data": {name: read_json(p.ctx.dir / name) for name in stages.get(p.spec.stage).REPORT_FILES
                     if (p.ctx.dir / name).is_file()}})
    report["budget_curve"] = read_json(run_dir / "budget_curve.json")
    return report


def _params(model_dir) -> int | None:
    """Parameter count of a saved model directory (safetensors headers), None where there is none."""
    return (params_on_disk(model_dir) or None) if model_dir and Path(model_dir).is_dir() else None


def train_reward(ctx) -> list[tuple[int, float]]:
    """The mean training reward per logged step of an RL stage (TRL's `train/reward`), in step order."""
    return sorted(v for _, tb in curve_sources(ctx) for v in scalars(tb).get("train/reward", []))


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    if not tb_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # slow to import
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader logs each file's end at INFO
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted({f.parent for f in tb_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events)).Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def curve_sources(ctx) -> list[tuple[str, Path]]:
    """(name, TensorBoard dir) of a stage, or of each phase of a multi-phase stage (distill)."""
    phases = [(f"{ctx.stage_id}_{d.name}", d / "tb") for d in sorted(ctx.dir.iterdir())
              if (d / "tb").is_dir()] if ctx.dir.is_dir() else []
    return [(ctx.stage_id, ctx.tb_dir)] if ctx.tb_dir.is_dir() or not phases else phases


def eval_rows(report: dict[str, Any]) -> list[tuple[str, str, str, dict]]:
    rows = []
    models = [("base", report["base"]["eval"])] + [(s["id"], s["eval"]) for s in report["stages"]]
    for label, results in models:
        for suite, modes in ((results or {}).get("suites") or {}).items():
            for mode, r in modes.items():
                rows.append((label, suite, mode, r))
    return rows


def evaluated(report: dict[str, Any]):
    """(evals, nearest): each model's eval results by label (base, stage ids), and
    `nearest(stage_id, part)`: the label of the nearest model before that stage (its input model, that
    model's input, ...) whose results have `part` ("suites", "think_follow", "tasks"), or None."""
    evals = {"base": report["base"].get("eval")} | {s["id"]: s.get("eval") for s in report["stages"]}
    owner = {str(m): "base" for m in [(evals["base"] or {}).get("model")] if m} | {
        str(s["model"]): s["id"] for s in report["stages"] if s.get("model")}
    inputs = {s["id"]: owner.get(str(s.get("input_model"))) for s in report["stages"]}

    def nearest(sid: str, part: str) -> str | None:
        ref = inputs[sid]
        while ref and ref != "base" and not (evals[ref] or {}).get(part):
            ref = inputs.get(ref)
        return ref if ref and (evals[ref] or {}).get(part) else None
    return evals, nearest


def paired_gains(report: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Each stage's paired gain over the nearest evaluated model before it (`evaluated`), as
    {"ref", "diff", "se"}: per (stage, suite, mode) in accuracy, per (stage, "think_follow", "") in
    ThinkFollow (and "think_follow_held_out" on its held-out suite); none where the two were scored on
    other items."""
    evals, nearest = evaluated(report)
    out = {}
    for s in report["stages"]:
        if not s["eval"]:
            continue
        ref = nearest(s["id"], "think_follow")
        for key, held in (("think_follow", False), ("think_follow_held_out", True)):
            tf = compare_think_follow(evals[ref], s["eval"], held_out=held) if ref else None
            if tf:
                out[(s["id"], key, "")] = {"ref": ref, **tf}
        ref = nearest(s["id"], "suites")
        if not ref:
            continue
        try:
            gains = compare(evals[ref], s["eval"])
        except ValueError:  # evaluated on other items (or before per-item counts): no paired gain
            continue
        for suite, modes in gains.items():
            for mode, g in modes.items():
                out[(s["id"], suite, mode)] = {"ref": ref, **g}
    return out


def gains(report: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    """`paired_gains` as report.md writes them: `+12.5 ± 3.1 vs cold_start` (points)."""
    return {key: f"{100 * g['diff']:+.1f} ± {100 * g['se']:.1f} vs {g['ref']}"
            for key, g in paired_gains(report).items()}


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
        if p.ctx.is_complete() and not any(scalars(tb) for _, tb in curve_sources(p.ctx)):
            out.append(f"{s['id']}: no training curves (no TensorBoard scalars in {p.ctx.tb_dir.name}/)")
    return out
