"""Pipelines: a YAML names stages in order; each stage's input is the previous stage's output.

A finished stage is skipped on a rerun (its marker is written last), an interrupted one resumes
from its last checkpoint, and `--from STAGE` moves that stage and later ones aside and reruns them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

import stages
from posttrain.config import ConfigError, apply_overrides, from_dict, is_placeholder, load_yaml, placeholders, to_dict
from posttrain.launch import LaunchConfig, machine_rank
from posttrain.rundir import StageContext, archive, cpu_seconds, read_json, run_lock, write_json

log = logging.getLogger("posttrain.pipeline")


@dataclass
class StageSpec:
    stage: str  # the stage kind (stages.REGISTRY)
    id: str | None = None  # unique name in the pipeline; defaults to `stage`
    model: str | None = None  # input model: a path, `default`, `@base` (the pipeline's), `@ID` of a stage
    config: dict[str, Any] = field(default_factory=dict)
    eval: bool = True  # evaluate the stage's model with the pipeline's eval suites
    enabled: bool = True
    launch: dict[str, Any] | None = None  # several processes: posttrain.launch.LaunchConfig


@dataclass
class PipelineConfig:
    name: str
    stages: list[StageSpec]
    model: str = "default"  # the base model: `default` (embedded SmolLM2-135M) or an HF model dir
    output_dir: str | None = None  # default runs/NAME
    seed: int = 0
    backend: Literal["transformers", "vllm"] = "transformers"  # generation jobs: data, eval, judge, teacher
    vllm: dict[str, Any] = field(default_factory=dict)  # vllm.LLM settings over posttrain.vllm_support's defaults
    eval: dict[str, Any] | None = None  # posttrain.evaluate.EvalConfig
    compare: list[str] | None = None  # stage ids to set side by side in the report (accuracy vs compute)
    compare_points: int = 3  # points on each compared stage's accuracy-vs-CPU-seconds curve (the last: its model)
    budget_curve: dict[str, Any] | None = None  # posttrain.evaluate.BudgetCurveConfig, drawn after the stages


@dataclass
class PlannedStage:
    index: int
    spec: StageSpec
    config: Any  # the stage module's Config
    ctx: StageContext
    launch: LaunchConfig | None = None  # not part of the hash: how a stage runs, not what it computes

    @property
    def config_hash(self) -> str:
        return self._hash(_model_key(self.ctx.input_model, self.ctx.run_dir))

    def finished_with_this_config(self) -> bool:
        """Whether the stage's completion marker was written under this config and input model."""
        recorded = self.ctx.completion_info().get("config_hash")
        model = self.ctx.input_model  # markers written before models were keyed by place held the path as spelled
        return recorded in {self.config_hash, self._hash(model), self._hash(str(Path(model).absolute()))}

    def _hash(self, model: str) -> str:
        blob = json.dumps([self.spec.stage, to_dict(self.config), model], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _model_key(model: str, run_dir: Path) -> str:
    """The input model as the config hash sees it: a model inside this run by its place in the run
    dir, any other path resolved; so a finished stage is recognised however the output dir is
    spelled (relative or absolute) and after the run dir moves. A name that is no path is kept as is."""
    if model == "default" or is_placeholder(model) or not Path(model).exists():
        return model
    path = Path(model).resolve()
    try:
        return "<run>/" + path.relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


def load(path: str | Path, output_dir: str | None = None,
         overrides: list[str] | None = None) -> tuple[PipelineConfig, list[PlannedStage]]:
    """Read, inherit, override (`a.b=VALUE`), check every key of a pipeline YAML, and plan its stages
    (no model loads)."""
    data = apply_overrides(load_yaml(path), overrides or [], f"{path} (command-line overrides)")
    cfg = from_dict(PipelineConfig, data, str(path))
    return cfg, plan(cfg, str(path), output_dir)


def plan(cfg: PipelineConfig, where: str, output_dir: str | None = None) -> list[PlannedStage]:
    run_dir = Path(output_dir or cfg.output_dir or Path("runs") / cfg.name)
    held_out: dict[str, Any] = {"eval_suites": {}}  # what the stages keep out of their training data
    if cfg.eval is not None:
        from posttrain.evaluate import EvalConfig
        eval_cfg = from_dict(EvalConfig, cfg.eval, f"{where}: eval")
        held_out = {"eval_suites": eval_cfg.suites, "think_follow": eval_cfg.think_follow}
    _check_model(cfg.model, f"{where}: model")
    planned: list[PlannedStage] = []
    previous = cfg.model
    outputs: dict[str, str] = {}
    for i, spec in enumerate(s for s in cfg.stages if s.enabled):
        sid = spec.id or spec.stage
        at = f"{where}: stages[{i}] ({sid})"
        if spec.stage not in stages.REGISTRY:
            raise ConfigError(f"{at}.stage: unknown stage {spec.stage!r} (known: {', '.join(sorted(stages.REGISTRY))})")
        if sid in outputs:
            raise ConfigError(f"{at}.id: duplicate stage id {sid!r}")
        module = stages.get(spec.stage)
        stage_cfg = from_dict(module.Config, spec.config, f"{at}.config")
        model = previous
        if spec.model:
            if spec.model == "@base":
                model = cfg.model
            elif spec.model.startswith("@"):
                if spec.model[1:] not in outputs:
                    raise ConfigError(f"{at}.model: {spec.model!r} names no earlier stage")
                model = outputs[spec.model[1:]]
            else:
                _check_model(spec.model, f"{at}.model")
                model = spec.model
        stage_dir = run_dir / f"{i + 1:02d}_{sid}"
        ctx = StageContext(stage_id=sid, dir=stage_dir, input_model=model, seed=cfg.seed,
                           backend=cfg.backend, run_dir=run_dir, extra=dict(held_out))
        launch = from_dict(LaunchConfig, spec.launch, f"{at}.launch") if spec.launch is not None else None
        if launch is not None:
            launch.check(f"{at}.launch")
        planned.append(PlannedStage(i, spec, stage_cfg, ctx, launch))
        previous = outputs[sid] = str(ctx.model_dir)
    if not planned:
        raise ConfigError(f"{where}: stages: the pipeline has no enabled stage")
    for sid in cfg.compare or []:
        if sid not in outputs:
            raise ConfigError(f"{where}: compare: {sid!r} is not a stage id (stages: {', '.join(outputs)})")
        if cfg.compare_points < 1:
            raise ConfigError(f"{where}: compare_points: must be at least 1, got {cfg.compare_points}")
        ctx = next(p.ctx for p in planned if p.ctx.stage_id == sid)
        ctx.extra.update(curve_points=cfg.compare_points, curve_dir=ctx.dir / "curve")
    if cfg.budget_curve is not None:
        from posttrain.evaluate import BudgetCurveConfig
        if cfg.eval is None:
            raise ConfigError(f"{where}: budget_curve: needs the pipeline's `eval` suites")
        curve = from_dict(BudgetCurveConfig, cfg.budget_curve, f"{where}: budget_curve")
        if curve.stage is not None and curve.stage not in outputs:
            raise ConfigError(f"{where}: budget_curve.stage: {curve.stage!r} is not a stage id "
                              f"(stages: {', '.join(outputs)})")
    return planned


def _check_model(model: str, where: str) -> None:
    if model != "default" and not is_placeholder(model) and not (Path(model) / "config.json").is_file():
        raise ConfigError(f"{where}: model not found: {model} (an HF model dir, or `default`)")


def describe(cfg: PipelineConfig, planned: list[PlannedStage]) -> str:
    run_dir = planned[0].ctx.run_dir
    lines = [f"pipeline {cfg.name}: {len(planned)} stage(s) -> {run_dir}  (backend {cfg.backend}, seed {cfg.seed})"]
    for p in planned:
        state = "done" if p.ctx.is_complete() else ("resume" if p.ctx.resumable() else "run")
        where = ""
        if p.launch is not None and p.launch.distributed:
            where = f", {p.launch.num_processes} processes" + (f" x {p.launch.num_machines} machines"
                                                              if p.launch.num_machines > 1 else "")
            where += f" ({p.launch.config})" if p.launch.config else ""
        lines.append(f"  {p.index + 1}. {p.ctx.stage_id:<16} [{p.spec.stage}] <- {p.ctx.input_model}  ({state}{where})")
    if cfg.eval:
        lines.append(f"  eval after: base, {', '.join(p.ctx.stage_id for p in planned if p.spec.eval)}")
    unset = placeholders(to_dict(cfg))
    if unset:
        lines.append(f"  placeholders to set before a run ({len(unset)}), e.g. `KEY=VALUE` after the YAML:")
        lines += [f"    {u}" for u in unset]
    if cfg.budget_curve is not None:
        curve = cfg.budget_curve
        lines.append(f"  budget curve: {curve.get('stage') or planned[-1].ctx.stage_id} at budgets "
                     f"{curve.get('budgets', 'default')} and none")
    return "\n".join(lines)


def run(cfg: PipelineConfig, planned: list[PlannedStage], from_stage: str | None = None) -> Path:
    """Run the planned stages, skipping finished ones; returns the run directory. One process at a
    time per run directory (`rundir.run_lock`). On a machine of rank > 0 (multi-machine stages) it
    only joins the launched stages (posttrain.launch)."""
    unset = placeholders(to_dict(cfg))
    if unset:
        raise ConfigError(f"{len(unset)} placeholder(s) not set: {'; '.join(unset)} (set each on the command line as "
                          "KEY=VALUE, e.g. model=/path/to/Qwen3-1.7B-Base)")
    if machine_rank() > 0:
        from posttrain.launch import follow
        follow(cfg, planned, machine_rank())
        return planned[0].ctx.run_dir
    with run_lock(planned[0].ctx.run_dir):
        return _run(cfg, planned, from_stage)


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
    from posttrain import generation
    generation.VLLM_SETTINGS.clear()
    generation.VLLM_SETTINGS.update(cfg.vllm)
    generation.PIPELINE_BACKEND[0] = cfg.backend
    (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    evaluator = _evaluator(cfg, run_dir)
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
            p.ctx.extra["cpu_start"] = cpu
            if p.launch is not None and p.launch.distributed:
                from posttrain.launch import run_stage
                metrics = run_stage(p.ctx, p.spec.stage, p.config, cfg, p.launch)
            else:
                metrics = stages.get(p.spec.stage).run(p.ctx, p.config) or {}
            p.ctx.mark_complete({"config_hash": p.config_hash, "wall_time_s": round(time.time() - start, 2),
                                 "cpu_time_s": round(cpu_seconds() - cpu, 2), "resumed": resumed,
                                 "metrics": metrics})
            log.info("%s: finished in %.0f s wall, %.0f s CPU", at, time.time() - start, cpu_seconds() - cpu)
        if evaluator and p.spec.eval:
            evaluator(str(p.ctx.model_dir), p.ctx.dir / "eval.json", p.ctx.stage_id)
        if cfg.eval and p.ctx.extra.get("curve_points"):
            _curve(cfg, p)
    if cfg.budget_curve is not None:
        _budget_curve(cfg, planned, run_dir)
    from posttrain.report import write_report
    write_report(run_dir, cfg, planned)
    return run_dir


def _curve(cfg: PipelineConfig, p: PlannedStage) -> list[dict]:
    """Think-mode accuracy of a compared stage's snapshots (posttrain.training.curve_snapshots) and
    of its final model, against the CPU seconds spent to reach each; kept in curve/curve.json.
    A snapshot's weights are removed once it is scored."""
    from dataclasses import replace

    from posttrain.evaluate import EvalConfig, evaluate
    path = p.ctx.dir / "curve" / "curve.json"
    info = p.ctx.completion_info()
    points = [e for e in read_json(path, []) if e["model"] != str(p.ctx.model_dir)]
    metrics = info.get("metrics") or {}  # a multi-phase stage (distill) keeps each phase's under its name
    step = metrics.get("global_step") or next((m.get("global_step") for m in reversed(metrics.values())
                                               if isinstance(m, dict) and m.get("global_step")), None)
    points.append({"phase": p.ctx.stage_id, "step": step,
                   "cpu_time_s": info.get("cpu_time_s"), "model": str(p.ctx.model_dir), "final": True,
                   "suites": (read_json(p.ctx.dir / "eval.json") or {}).get("suites")})
    eval_cfg = replace(from_dict(EvalConfig, cfg.eval, "eval"), modes=["think"], think_follow=None, tasks=None)
    for point in points:
        if not point.get("suites") or not all("think" in r for r in point["suites"].values()):
            log.info("compute curve of %s: scoring %s", p.ctx.stage_id, point["model"])
            point["suites"] = evaluate(point["model"], eval_cfg, backend=cfg.backend, seed=cfg.seed)["suites"]
            write_json(path, points)
        if not point.get("final"):
            shutil.rmtree(point["model"], ignore_errors=True)
    write_json(path, points)
    return points


def _evaluator(cfg: PipelineConfig, run_dir: Path):
    """A function (model, path) -> results that evaluates once and keeps the results at `path`;
    `@ID` model references in the eval's task kinds (a judge, a reward model) name this run's stages."""
    if not cfg.eval:
        return None
    from dataclasses import replace
    from functools import partial

    from posttrain.evaluate import EvalConfig, evaluate
    from posttrain.rundir import resolve_model_ref
    eval_cfg = from_dict(EvalConfig, cfg.eval, "eval")
    resolve = partial(resolve_model_ref, run_dir=run_dir, who="eval")

    def run_eval(model: str, path: Path, label: str) -> dict:
        """Evaluates what `path` does not hold yet (a new suite, mode or ThinkFollow) and keeps the rest;
        task kinds and ThinkFollow only for the models their `models:` names (base or stage ids; default all)."""
        cached = read_json(path)
        wanted = {part: getattr(eval_cfg, part) is not None and (not getattr(eval_cfg, part).models
                                                                  or label in getattr(eval_cfg, part).models)
                  for part in ("tasks", "think_follow")}
        this_cfg = replace(eval_cfg, **{part: None for part, yes in wanted.items() if not yes})
        results = evaluate(model, this_cfg, backend=cfg.backend, seed=cfg.seed, previous=cached, resolve=resolve)
        for part, yes in wanted.items():
            if not yes and cached and cached.get(part):
                results[part] = cached[part]  # scored under an earlier config: kept
        if cached is None or any(results.get(k) != cached.get(k) for k in ("suites", "think_follow", "tasks")):
            write_json(path, results)
        return results
    return run_eval


def _budget_curve(cfg: PipelineConfig, planned: list[PlannedStage], run_dir: Path) -> dict:
    """budget_curve.json for the chosen stage's model (kept while model and settings are unchanged)."""
    from posttrain.evaluate import BudgetCurveConfig, EvalConfig, budget_curve
    curve = from_dict(BudgetCurveConfig, cfg.budget_curve, "budget_curve")
    chosen = next(p for p in planned if p.ctx.stage_id == (curve.stage or planned[-1].ctx.stage_id))
    path, model = run_dir / "budget_curve.json", str(chosen.ctx.model_dir)
    cached, made = read_json(path), chosen.ctx.completion_info().get("finished_at")
    if cached and cached.get("model") == model and cached.get("config") == to_dict(curve) \
            and cached.get("model_finished_at") == made:
        return cached
    log.info("budget curve of %s: budgets %s", chosen.ctx.stage_id, curve.budgets)
    result = budget_curve(model, from_dict(EvalConfig, cfg.eval, "eval"), curve, backend=cfg.backend, seed=cfg.seed,
                          previous=read_json(chosen.ctx.dir / "eval.json"))
    result.update(stage=chosen.ctx.stage_id, config=to_dict(curve), model_finished_at=made)
    write_json(path, result)
    return result
