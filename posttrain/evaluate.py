"""Evaluation: held-out suites, accuracy per mode with the report's sampling, unbiased pass@k.

A suite is a synthetic family (generated with an eval seed that no training data uses) or a dataset
file in the column contract. Each item is sampled `samples` times per mode; accuracy is the mean
fraction correct (= pass@1) with its standard error over items (the noise to read gains against),
pass@k uses the unbiased estimator, length is in generated tokens. Per-item correct counts are kept so
two models evaluated on the same items can be compared item by item (posttrain.core.stats).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from data_builders import sources, synthetic
from data_builders.tasks import evaluate_tasks, load_tasks, routing_table
from posttrain.benchmarks import BenchmarkConfig, items_sha, load_benchmark, run_benchmark
from posttrain.core.chat import split_think
from posttrain.core.config import ExistingPath, identity
from posttrain.core.generation import EnginePool
from posttrain.core.stats import accuracy_summary
from posttrain.thinkfollow import ThinkFollowConfig, plans_sha, think_follow
from rewards.grading import sample_and_grade

log = logging.getLogger("posttrain.evaluate")

# Reasoning leaking into answers (arXiv 2510.12680 measured it in no-think mode). An answer reflects
# when it second-guesses itself in words; it reasons step by step when it derives over several lines
# (two or more lines with an `=`, or lines opened by "Step N", "First,", "Next,", "Then,").
REFLECTION = re.compile(r"\b(wait|hmm+|let me (check|verify|re-?check|think|see)|double[- ]check|let's (check|verify)"
                        r"|on second thought|actually,|check:|verify)", re.I)
STEP_LINE = re.compile(r"^\s*(step \d+|first,|next,|then,)", re.I | re.M)


def leakage(texts: list[str]) -> dict[str, float]:
    """Shares of answers (the text after the think block) that reflect, that reason step by step, that do
    either (`leaky`), and of responses with no reasoning in their think block (`think_skipped`)."""
    parts = [split_think(t) for t in texts]
    reflect = [bool(REFLECTION.search(a)) for _, a in parts]
    steps = [sum("=" in line for line in a.splitlines()) >= 2 or bool(STEP_LINE.search(a)) for _, a in parts]
    n = max(len(texts), 1)
    return {"reflective": sum(reflect) / n, "step_by_step": sum(steps) / n,
            "leaky": sum(r or s for r, s in zip(reflect, steps, strict=True)) / n,
            "think_skipped": sum(not (r or "").strip() for r, _ in parts) / n}

@dataclass
class SuiteConfig:
    family: str | None = None  # a synthetic family (data_builders.synthetic.FAMILIES)
    data: ExistingPath | None = None  # or a dataset file/dir with prompt/answer/tests/task columns
    n: int = 40
    seed: int = 10_000  # eval items are generated from seeds no training split uses
    knobs: dict[str, Any] = field(default_factory=dict)
    models: list[str] | None = None  # in a pipeline: the models scored on this suite (`base`, stage ids); default all

    def __post_init__(self):
        if (self.family is None) == (self.data is None):
            raise ValueError("a suite needs exactly one of `family` or `data`")


@dataclass
class TaskEvalConfig:
    """Per-task-kind scores on held-out items (stage 4's kinds, `data_builders/tasks.py`)."""

    spec: ExistingPath  # a tasks YAML (e.g. pipelines/tasks.yaml)
    n: int = 16  # items per kind and mode (stage 4's `held_out` should be at least this)
    max_new_tokens: int = 192
    models: list[str] | None = None  # in a pipeline: the models scored (`base`, stage ids); default all


@dataclass
class EvalConfig:
    suites: dict[str, SuiteConfig]
    modes: list[Literal["think", "no_think"]] = field(default_factory=lambda: ["think", "no_think"])
    # in a pipeline: the suites are scored in a mode named here only on the models listed (`base`,
    # stage ids), e.g. {no_think: [fusion]}; a mode not named scores every evaluated model (the
    # task kinds are scored in every mode)
    mode_models: dict[Literal["think", "no_think"], list[str]] = field(default_factory=dict)
    samples: int = 4  # samples per item and mode (pass@k needs k <= samples)
    pass_k: list[int] = field(default_factory=lambda: [1, 4])
    max_new_tokens: int = 256
    thinking_budget: int | None = None  # stop thinking after this many tokens (think mode)
    batch_size: int = 32
    think_follow: ThinkFollowConfig | None = None  # the ThinkFollow suite (posttrain/thinkfollow.py)
    tasks: TaskEvalConfig | None = None  # per-task-kind scores
    # standard benchmarks (posttrain/benchmarks.py) by name, e.g. {humaneval: {}, gsm8k: {kind: math, data: F}}
    benchmarks: dict[str, BenchmarkConfig] = field(default_factory=dict)

    def __post_init__(self):
        if any(k > self.samples for k in self.pass_k):
            raise ValueError(f"pass_k {self.pass_k} needs samples >= {max(self.pass_k)}")
        if self.thinking_budget is not None and self.thinking_budget < 1:
            raise ValueError(f"thinking_budget must be at least 1, got {self.thinking_budget}")


@dataclass
class BudgetCurveConfig:
    """Accuracy against the thinking budget (think mode, the eval suites), for one model."""

    budgets: list[int] = field(default_factory=lambda: [16, 32, 64])  # plus no budget
    stage: str | None = None  # in a pipeline: the stage whose model is measured (default: the last)
    samples: int | None = None  # default: the eval's
    max_new_tokens: int | None = None  # default: the eval's

    def __post_init__(self):
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"budgets must be positive token counts, got {self.budgets}")


def load_suite(name: str, suite: SuiteConfig):
    if suite.family:
        return synthetic.generate(suite.family, suite.n, seed=suite.seed, **suite.knobs)
    ds = sources.load(suite.data)
    return ds.select(range(min(suite.n, len(ds))))


def held_out(cfg: EvalConfig) -> list[str]:
    """The user texts the evaluation asks (suites and ThinkFollow): the stages keep them out of training."""
    texts = [row["prompt"][-1]["content"] for name, suite in cfg.suites.items() for row in load_suite(name, suite)]
    if cfg.think_follow is not None:
        tf = cfg.think_follow
        texts += [t["prompt"] for p in tf.plans() + tf.held_out_plans() for t in p["turns"]]
    return texts


def evaluate(model: str, cfg: EvalConfig, engines: EnginePool | None = None, seed: int = 0, engine=None,
             previous: dict[str, Any] | None = None, resolve=None,
             suite_modes: list[str] | None = None) -> dict[str, Any]:
    """Evaluate `model` on every suite and mode (and ThinkFollow); returns the JSON the report reads.
    The engine comes from `engines` (default: transformers), unless one is given.

    Entries of `previous` (an earlier result of this model) made on the same items with the same
    settings are reused, so adding a suite or ThinkFollow to a finished run costs only what is new.
    `resolve` maps `@ID` model references of the task kinds' rewards to paths (in a pipeline run);
    `suite_modes` narrows the modes the suites are scored in (a pipeline's `mode_models`)."""
    start, loaded, engines = time.time(), [engine], engines or EnginePool()

    def get_engine():
        if loaded[0] is None:
            loaded[0] = engines.get(model, batch_size=cfg.batch_size)
        return loaded[0]
    previous = previous or {}
    results: dict[str, Any] = {"model": str(model), "suites": {}}
    settings = {"samples": cfg.samples, "max_new_tokens": cfg.max_new_tokens, "thinking_budget": cfg.thinking_budget,
                "seed": seed}
    suites = {name: list(load_suite(name, suite)) for name, suite in cfg.suites.items()}
    shas = {name: hashlib.sha256("\0".join(str(r["prompt"]) for r in rows).encode()).hexdigest()[:16]
            for name, rows in suites.items()}
    results["suites"] = {name: {} for name in suites}
    for mode in cfg.modes if suite_modes is None else suite_modes:
        todo = []
        for name in suites:
            old = ((previous.get("suites") or {}).get(name) or {}).get(mode)
            if _reusable(old, shas[name], settings):
                results["suites"][name][mode] = old
            else:
                todo.append(name)
        if not todo:
            continue
        # every suite's items in one call: the engine batches them together (faster per item on CPU)
        graded = sample_and_grade(get_engine(), [r for name in todo for r in suites[name]], n=cfg.samples, mode=mode,
                                  max_new_tokens=cfg.max_new_tokens, thinking_budget=cfg.thinking_budget, seed=seed,
                                  progress=True)
        start_row = 0
        for name in todo:
            rows = suites[name]
            span = slice(start_row, start_row + len(rows))
            start_row += len(rows)
            flat, correct = [c for o in graded.completions[span] for c in o], graded.correct[span]
            r = {"n_items": len(rows), "samples": cfg.samples, "items_sha": shas[name], "settings": settings,
                 **accuracy_summary(correct, cfg.samples, cfg.pass_k),
                 "mean_length": sum(len(c.token_ids) for c in flat) / len(flat),
                 "truncated": sum(c.finish_reason == "length" for c in flat) / len(flat),
                 "budget_hit": sum(c.budget_hit for c in flat) / len(flat),
                 "leakage": leakage([c.text for c in flat]), "correct_per_item": correct}
            results["suites"][name][mode] = r
            log.info("eval %s %s: accuracy %.3f pass@k %s", name, mode, r["accuracy"], r["pass_at_k"])
    if cfg.think_follow is not None:
        tf, old = cfg.think_follow, previous.get("think_follow")
        sha = plans_sha(tf.plans())
        if _reusable(old, sha, tf.settings(seed)):
            results["think_follow"] = old
        else:
            results["think_follow"] = think_follow(get_engine(), tf, seed=seed)
            done = results["think_follow"]
            log.info("eval ThinkFollow: %.3f over %d turns", done["score"], done["turns"])
            if tf.held_out:
                log.info("eval ThinkFollow, held-out suite: %.3f over %d turns", done["held_out"]["score"],
                         done["held_out"]["turns"])
    if cfg.tasks is not None:
        results["tasks"] = _task_scores(cfg, seed, previous.get("tasks"), get_engine, resolve, engines)
    if cfg.benchmarks:
        results["benchmarks"] = {}
        for name, bench in cfg.benchmarks.items():
            settings = {**identity(bench), "models": None, "seed": seed}  # results made before a field was added match
            rows = load_benchmark(name, bench)  # read again: a result is reused only on unchanged items
            for mode in cfg.modes:
                old = ((previous.get("benchmarks") or {}).get(name) or {}).get(mode)
                results["benchmarks"].setdefault(name, {})[mode] = old if _reusable(old, items_sha(rows), settings) \
                    else {**run_benchmark(get_engine(), name, bench, mode, seed, rows), "settings": settings}
                r = results["benchmarks"][name][mode]
                log.info("benchmark %s %s: accuracy %.3f ± %.3f over %d items", name, mode, r["accuracy"],
                         r["accuracy_se"], r["n_items"])
    results["wall_time_s"] = round(time.time() - start, 2)
    return results


def _task_scores(cfg: EvalConfig, seed: int, old: dict[str, Any] | None, get_engine, resolve,
                 engines: EnginePool) -> dict[str, Any]:
    """Stage 4's per-kind scores. A kind's earlier score is kept while its definition and the
    settings are unchanged; a kind whose judge or reward model does not exist yet (`@ID` of a later
    stage) is skipped with the reason, and scored by a later evaluation of the same model."""
    kinds = load_tasks(cfg.tasks.spec)
    shas = {k: hashlib.sha256(json.dumps(asdict(v), sort_keys=True, default=str).encode()).hexdigest()[:16]
            for k, v in kinds.items()}
    settings = {**asdict(cfg.tasks), "spec": Path(cfg.tasks.spec).name, "modes": list(cfg.modes), "seed": seed}
    kept = {k: v for k, v in (old or {}).get("scores", {}).items()
            if old.get("settings") == settings and old.get("kind_shas", {}).get(k) == shas.get(k)}
    todo, skipped = {}, {}
    for name, kind in kinds.items():
        if name in kept:
            continue
        try:
            routing_table({name: kind}, resolve)
            routing_table({name: kind}, resolve, "check")
            todo[name] = kind
        except (FileNotFoundError, ValueError) as err:
            skipped[name] = str(err)
    new = evaluate_tasks(get_engine(), todo, n=cfg.tasks.n, seed=seed, modes=tuple(cfg.modes),
                         max_new_tokens=cfg.tasks.max_new_tokens, resolve=resolve, engines=engines) if todo else {}
    scores = {**kept, **new}
    return {"settings": settings, "kind_shas": shas, "scores": {k: scores[k] for k in kinds if k in scores},
            "skipped": skipped}


def _reusable(old: dict[str, Any] | None, sha: str, settings: dict[str, Any]) -> bool:
    """An earlier result made on the same items with the same settings (results written before
    settings were recorded are matched on items and sample count)."""
    if not old or old.get("items_sha") != sha:
        return False
    if "settings" in old:
        return old["settings"] == settings
    return "samples" in settings and old.get("samples") == settings["samples"]


def budget_curve(model: str, cfg: EvalConfig, curve: BudgetCurveConfig, engines: EnginePool | None = None,
                 seed: int = 0, engine=None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Think-mode accuracy, length and budget hits at each budget and with none (the last point).

    `previous` (the model's eval results) supplies any point made with the same settings, usually
    the unlimited one."""
    base = replace(cfg, modes=["think"], think_follow=None, tasks=None, benchmarks={},
                   samples=curve.samples or cfg.samples, pass_k=[1],
                   max_new_tokens=curve.max_new_tokens or cfg.max_new_tokens)
    engine = engine or (engines or EnginePool()).get(model, batch_size=cfg.batch_size)
    points = []
    for budget in [*sorted(set(curve.budgets)), None]:
        r = evaluate(model, replace(base, thinking_budget=budget), seed=seed, engine=engine, previous=previous)
        points.append({"budget": budget, "suites": {
            name: {k: modes["think"][k] for k in ("accuracy", "accuracy_se", "mean_length", "budget_hit", "truncated")}
            for name, modes in r["suites"].items()}})
    return {"model": str(model), "samples": base.samples, "max_new_tokens": base.max_new_tokens,
            "budgets": sorted(set(curve.budgets)), "points": points}
