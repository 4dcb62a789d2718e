"""Pipelines, planned: a YAML names stages in order; each stage's input is the previous stage's output.

`load` reads a YAML (inheritance, overrides) and `plan` checks every key, TRL's `trainer:` keys of
every stage included, and gives each stage its context, before any model loads (`--dry-run` stops
there). The config hash a finished stage is recognised by lives here too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import stages
from posttrain.benchmarks import resolved
from posttrain.core.config import (
    ConfigError,
    apply_overrides,
    check_trainer_overrides,
    from_dict,
    identity,
    is_placeholder,
    load_yaml,
    placeholders,
    to_dict,
)
from posttrain.core.context import StageContext
from posttrain.core.generation import EnginePool
from posttrain.evaluate import BudgetCurveConfig, EvalConfig, held_out
from posttrain.pipeline.launch import LaunchConfig


@dataclass
class StageSpec:
    stage: str  # the stage kind (stages.REGISTRY)
    id: str | None = None  # unique name in the pipeline; defaults to `stage`
    model: str | None = None  # input model: a path, `default`, `@base` (the pipeline's), `@ID` of a stage
    config: dict[str, Any] = field(default_factory=dict)
    eval: bool = True  # evaluate the stage's model with the pipeline's eval suites
    enabled: bool = True
    launch: dict[str, Any] | None = None  # several processes: posttrain.pipeline.launch.LaunchConfig


@dataclass
class PipelineConfig:
    name: str
    stages: list[StageSpec]
    model: str = "default"  # the base model: `default` (embedded SmolLM2-135M) or an HF model dir
    output_dir: str | None = None  # default runs/NAME
    seed: int = 0
    backend: Literal["transformers", "vllm"] = "transformers"  # generation jobs: data, eval, judge, teacher
    vllm: dict[str, Any] = field(default_factory=dict)  # vllm.LLM settings (posttrain.core.generation.vllm)
    transformers: dict[str, Any] = field(default_factory=dict)  # its engine's dtype (auto), attn_implementation
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
        blob = json.dumps([self.spec.stage, identity(self.config), model], sort_keys=True, default=str)
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
    eval_cfg = from_dict(EvalConfig, cfg.eval, f"{where}: eval") if cfg.eval is not None else None
    _check_model(cfg.model, f"{where}: model")
    shared = {"seed": cfg.seed, "run_dir": run_dir, "engines": EnginePool(cfg.backend, cfg.vllm, cfg.transformers),
              "held_out": held_out(eval_cfg) if eval_cfg else []}  # one pool, one held-out list for the run
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
        _check_trainer_keys(module, stage_cfg, f"{at}.config")
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
        ctx = StageContext(stage_id=sid, dir=run_dir / f"{i + 1:02d}_{sid}", input_model=model, **shared)
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
        ctx = next(p for p in planned if p.ctx.stage_id == sid).ctx
        ctx.curve_points, ctx.curve_dir = cfg.compare_points, ctx.dir / "curve"
    if eval_cfg is not None:
        _check_eval_models(eval_cfg, ["base", *outputs], f"{where}: eval")
    if cfg.budget_curve is not None:
        if cfg.eval is None:
            raise ConfigError(f"{where}: budget_curve: needs the pipeline's `eval` suites")
        curve = from_dict(BudgetCurveConfig, cfg.budget_curve, f"{where}: budget_curve")
        if curve.stage is not None and curve.stage not in outputs:
            raise ConfigError(f"{where}: budget_curve.stage: {curve.stage!r} is not a stage id "
                              f"(stages: {', '.join(outputs)})")
    return planned


def _check_eval_models(eval_cfg: EvalConfig, labels: list[str], where: str) -> None:
    """The models that the suites, ThinkFollow, the task kinds and `mode_models` name must be `base` or stage ids."""
    named = [(f"mode_models.{m}", names) for m, names in eval_cfg.mode_models.items()] + [
        (f"{part}.models", getattr(eval_cfg, part).models or []) for part in ("think_follow", "tasks")
        if getattr(eval_cfg, part) is not None] + [
        (f"benchmarks.{name}.models", b.models or []) for name, b in eval_cfg.benchmarks.items()] + [
        (f"suites.{name}.models", suite.models or []) for name, suite in eval_cfg.suites.items()]
    for name, bench in eval_cfg.benchmarks.items():
        try:
            resolved(name, bench)
        except ValueError as err:
            raise ConfigError(f"{where}.benchmarks: {err}") from None
    extra = sorted(set(eval_cfg.mode_models) - set(eval_cfg.modes))
    if extra:
        raise ConfigError(f"{where}.mode_models: {', '.join(extra)} is not one of the eval's modes {eval_cfg.modes}")
    for key, names in named:
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise ConfigError(f"{where}.{key}: {', '.join(map(repr, unknown))} is not `base` or a stage id "
                              f"(stages: {', '.join(labels[1:])})")


def _check_trainer_keys(module, stage_cfg: Any, where: str) -> None:
    """Each `trainer:` mapping of the stage's config against the TRL config class it goes to (the
    stage module's TRAINERS), so that a wrong key fails the plan, not the run hours later."""
    import trl  # a heavy import, paid only when planning
    for path, config_cls in module.TRAINERS.items():
        options = stage_cfg
        for part in path.split("."):
            options = getattr(options, part)
        check_trainer_overrides(getattr(trl, config_cls), options.trainer, f"{where}.{path}.trainer")


def _check_model(model: str, where: str) -> None:
    if model != "default" and not is_placeholder(model) and not (Path(model) / "config.json").is_file():
        raise ConfigError(f"{where}: model not found: {model} (an HF model dir, or `default`)")


def describe(cfg: PipelineConfig, planned: list[PlannedStage]) -> str:
    run_dir = planned[0].ctx.run_dir
    lines = [f"pipeline {cfg.name}: {len(planned)} stage(s) -> {run_dir}  (backend {cfg.backend}, seed {cfg.seed})"]
    for p in planned:
        state = ("done" if p.finished_with_this_config() else f"done with another config: --from {p.ctx.stage_id}"
                 ) if p.ctx.is_complete() else ("resume" if p.ctx.resumable() else "run")
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


