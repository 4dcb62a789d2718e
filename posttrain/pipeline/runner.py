"""Pipelines, run: the planned stages in order, each finished stage skipped (its marker is written
last), an interrupted one resumed from its last checkpoint, `--from STAGE` moving that stage and the
later ones aside first; the evaluations after the stages (a task kind whose judge or reward model a
later stage makes is scored at the end), the curves, and the report at the end.
The run owns its engines (the pool in the stages' context) and closes them when it ends.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import yaml

import stages
from posttrain.core.config import ConfigError, from_dict, placeholders, to_dict
from posttrain.core.generation import EnginePool
from posttrain.core.rundir import archive, cpu_seconds, read_json, resolve_model_ref, run_lock, write_json
from posttrain.evaluate import BudgetCurveConfig, EvalConfig, budget_curve, evaluate
from posttrain.pipeline.launch import follow, machine_rank, run_stage
from posttrain.pipeline.plan import PipelineConfig, PlannedStage
from posttrain.report import write_report

log = logging.getLogger("posttrain.pipeline")


def run(cfg: PipelineConfig, planned: list[PlannedStage], from_stage: str | None = None) -> Path:
    """Run the planned stages, skipping finished ones; returns the run directory. One process at a
    time per run directory (`rundir.run_lock`). On a machine of rank > 0 (multi-machine stages) it
    only joins the launched stages (posttrain.pipeline.launch)."""
    unset = placeholders(to_dict(cfg))
    if unset:
        raise ConfigError(f"{len(unset)} placeholder(s) not set: {'; '.join(unset)} (set each on the command line as "
                          "KEY=VALUE, e.g. model=/path/to/Qwen3-1.7B-Base)")
    if machine_rank() > 0:
        follow(planned, machine_rank())
        return planned[0].ctx.run_dir
    with run_lock(planned[0].ctx.run_dir):
        try:
            return _run(cfg, planned, from_stage)
        finally:
            planned[0].ctx.engines.close()


def _run(cfg: PipelineConfig, planned: list[PlannedStage], from_stage: str | None) -> Path:
    run_dir = planned[0].ctx.run_dir
    ids = [p.ctx.stage_id for p in planned]
    if from_stage is not None:
        if from_stage not in ids:
            raise ConfigError(f"--from: unknown stage {from_stage!r} (stages: {', '.join(ids)})")
        moved = archive([p.ctx.dir for p in planned[ids.index(from_stage):]], run_dir)
        if moved:
            log.warning("moved earlier outputs of %s onwards to %s", from_stage, moved)
    for p in planned:  # refuse to mix a finished stage with a changed config before any work
        if p.ctx.is_complete() and not p.finished_with_this_config():
            raise ConfigError(f"stage {p.ctx.stage_id}: finished in {p.ctx.dir} with a different config; "
                              f"rerun with --from {p.ctx.stage_id} or choose another --output-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    engines = planned[0].ctx.engines  # the run's, shared by its stages and its evaluations
    evaluator = _evaluator(cfg, run_dir, engines)
    if evaluator:
        evaluator(cfg.model, run_dir / "base_eval.json", "base")
    began = time.time()
    for p in planned:
        at = f"stage {p.index + 1}/{len(planned)} {p.ctx.stage_id}"
        if p.ctx.is_complete():
            log.info("%s: done in an earlier run (%s s), skipping", at, p.ctx.completion_info().get("wall_time_s"))
        else:
            log.info("%s [%s]: %s (run time so far %.0f s)", at, p.spec.stage, p.ctx.dir, time.time() - began)
            p.ctx.dir.mkdir(parents=True, exist_ok=True)
            start, cpu, resumed = time.time(), cpu_seconds(), p.ctx.resumable()
            p.ctx.cpu_start = cpu
            if p.launch is not None and p.launch.distributed:
                metrics = run_stage(p.ctx, p.spec.stage, p.config, p.launch)
            else:
                metrics = stages.get(p.spec.stage).run(p.ctx, p.config) or {}
            p.ctx.mark_complete({"config_hash": p.config_hash, "wall_time_s": round(time.time() - start, 2),
                                 "cpu_time_s": round(cpu_seconds() - cpu, 2), "resumed": resumed,
                                 "metrics": metrics})
            log.info("%s: finished in %.0f s wall, %.0f s CPU", at, time.time() - start, cpu_seconds() - cpu)
        if evaluator and p.spec.eval:
            evaluator(str(p.ctx.model_dir), p.ctx.dir / "eval.json", p.ctx.stage_id)
        if cfg.eval and p.ctx.curve_points:
            _curve(cfg, p, engines)
    if evaluator:  # task kinds skipped for a judge or reward model that a later stage made: scored now
        for model, path, label in [(cfg.model, run_dir / "base_eval.json", "base"),
                                   *((str(p.ctx.model_dir), p.ctx.dir / "eval.json", p.ctx.stage_id)
                                     for p in planned if p.spec.eval)]:
            if ((read_json(path) or {}).get("tasks") or {}).get("skipped"):
                evaluator(model, path, label)
    if cfg.budget_curve is not None:
        _budget_curve(cfg, planned, run_dir, engines)
    write_report(run_dir, cfg, planned)
    return run_dir


def _curve(cfg: PipelineConfig, p: PlannedStage, engines: EnginePool) -> list[dict]:
    """Think-mode accuracy of a compared stage's snapshots (posttrain.core.callbacks.curve_snapshots) and
    of its final model, against the CPU seconds spent to reach each; kept in curve/curve.json.
    A snapshot's weights are removed once it is scored."""
    path = p.ctx.curve_dir / "curve.json"
    info = p.ctx.completion_info()
    points = [e for e in read_json(path, []) if e["model"] != str(p.ctx.model_dir)]
    metrics = info.get("metrics") or {}  # a multi-phase stage (distill) keeps each phase's under its name
    step = metrics.get("global_step") or next((m.get("global_step") for m in reversed(metrics.values())
                                               if isinstance(m, dict) and m.get("global_step")), None)
    points.append({"phase": p.ctx.stage_id, "step": step,
                   "cpu_time_s": info.get("cpu_time_s"), "model": str(p.ctx.model_dir), "final": True,
                   "suites": (read_json(p.ctx.dir / "eval.json") or {}).get("suites")})
    eval_cfg = replace(from_dict(EvalConfig, cfg.eval, "eval"), modes=["think"], think_follow=None, tasks=None,
                       benchmarks={})
    for point in points:
        if not point.get("suites") or not all("think" in r for r in point["suites"].values()):
            log.info("compute curve of %s: scoring %s", p.ctx.stage_id, point["model"])
            point["suites"] = evaluate(point["model"], eval_cfg, engines=engines, seed=cfg.seed)["suites"]
            write_json(path, points)
        if not point.get("final"):
            shutil.rmtree(point["model"], ignore_errors=True)
    write_json(path, points)
    return points


def _evaluator(cfg: PipelineConfig, run_dir: Path, engines: EnginePool):
    """A function (model, path) -> results that evaluates once and keeps the results at `path`;
    `@ID` model references in the eval's task kinds (a judge, a reward model) name this run's stages."""
    if not cfg.eval:
        return None
    eval_cfg = from_dict(EvalConfig, cfg.eval, "eval")
    resolve = partial(resolve_model_ref, run_dir=run_dir, who="eval")

    def run_eval(model: str, path: Path, label: str) -> dict:
        """Evaluates what `path` does not hold yet (a new suite, mode or ThinkFollow) and keeps the rest;
        suites, task kinds, ThinkFollow and a mode of `mode_models` only for the models named there
        (base or stage ids; default all)."""
        cached = read_json(path)
        wanted = {part: getattr(eval_cfg, part) is not None and (not getattr(eval_cfg, part).models
                                                                  or label in getattr(eval_cfg, part).models)
                  for part in ("tasks", "think_follow")}
        modes = [m for m in eval_cfg.modes if label in eval_cfg.mode_models.get(m, [label])]
        benchmarks = {k: b for k, b in eval_cfg.benchmarks.items() if not b.models or label in b.models}
        suites = {k: s for k, s in eval_cfg.suites.items() if not s.models or label in s.models}
        this_cfg = replace(eval_cfg, **{part: None for part, yes in wanted.items() if not yes}, benchmarks=benchmarks,
                           suites=suites)
        results = evaluate(model, this_cfg, engines=engines, seed=cfg.seed, previous=cached, resolve=resolve,
                           suite_modes=modes)
        for part, yes in wanted.items():
            if not yes and cached and cached.get(part):
                results[part] = cached[part]  # scored under an earlier config: kept
        kept = {k: v for k, v in ((cached or {}).get("benchmarks") or {}).items() if k not in benchmarks}
        if kept:
            results["benchmarks"] = {**kept, **results.get("benchmarks", {})}
        if cached is None or any(results.get(k) != cached.get(k)
                                 for k in ("suites", "think_follow", "tasks", "benchmarks")):
            write_json(path, results)
        return results
    return run_eval


def _budget_curve(cfg: PipelineConfig, planned: list[PlannedStage], run_dir: Path, engines: EnginePool) -> dict:
    """budget_curve.json for the chosen stage's model (kept while model and settings are unchanged)."""
    curve = from_dict(BudgetCurveConfig, cfg.budget_curve, "budget_curve")
    chosen = next(p for p in planned if p.ctx.stage_id == (curve.stage or planned[-1].ctx.stage_id))
    path, model = run_dir / "budget_curve.json", str(chosen.ctx.model_dir)
    cached, made = read_json(path), chosen.ctx.completion_info().get("finished_at")
    if cached and cached.get("model") == model and cached.get("config") == to_dict(curve) \
            and cached.get("model_finished_at") == made:
        return cached
    log.info("budget curve of %s: budgets %s", chosen.ctx.stage_id, curve.budgets)
    result = budget_curve(model, from_dict(EvalConfig, cfg.eval, "eval"), curve, engines=engines, seed=cfg.seed,
                          previous=read_json(chosen.ctx.dir / "eval.json"))
    result.update(stage=chosen.ctx.stage_id, config=to_dict(curve), model_finished_at=made)
    write_json(path, result)
    return result
