"""`posttrain`: run pipelines and stages, distil, evaluate, prepare models, benchmark."""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from posttrain import bench, interactive, pipeline
from posttrain.benchmarks import KINDS, BenchmarkConfig, resolved
from posttrain.core.config import ConfigError, apply_overrides, from_dict, load_yaml
from posttrain.core.generation import EnginePool, VLLMError
from posttrain.core.models import prepare_model
from posttrain.core.rundir import LOCK, find_teacher, run_lock
from posttrain.core.stats import compare, compare_tasks, compare_think_follow
from posttrain.evaluate import BudgetCurveConfig, EvalConfig, budget_curve, evaluate
from posttrain.harness import harness_rows
from posttrain.logs import setup_logging
from posttrain.pipeline.launch import LaunchError
from posttrain.report import plot_budget_curve, summary


def _run(args) -> None:
    cfg, planned = pipeline.load(args.pipeline, args.output_dir, args.overrides)
    run_dir = planned[0].ctx.run_dir
    if args.fresh and not args.dry_run and run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir()):
        kept = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        with run_lock(run_dir):  # not from under a run that is still going
            run_dir.rename(kept)
        print(f"--fresh: the previous run is kept in {kept}")
    print(pipeline.describe(cfg, planned))
    if args.dry_run:
        print("dry run: config is valid; nothing was run")
        return
    run_dir = pipeline.run(cfg, planned, from_stage=args.from_stage)
    print("\n".join(summary(json.loads((run_dir / "report.json").read_text()))))


def _stage(args) -> None:
    """One stage from a stage config file: the stage's keys, plus optional model/output_dir/seed."""
    data = apply_overrides(load_yaml(args.config), args.overrides, f"{args.config} (command-line overrides)")
    top = {k: data.pop(k) for k in ("model", "output_dir", "seed", "backend", "eval") if k in data}
    if args.model:
        top["model"] = args.model
    cfg_data = {"name": Path(args.config).stem, **top, "stages": [{"stage": args.name, "config": data}]}
    cfg = from_dict(pipeline.PipelineConfig, cfg_data, args.config)
    planned = pipeline.plan(cfg, args.config, args.output_dir)
    print(pipeline.describe(cfg, planned))
    if args.dry_run:
        print("dry run: config is valid; nothing was run")
        return
    run_dir = pipeline.run(cfg, planned)
    print(f"done: {planned[0].ctx.model_dir} (report {run_dir / 'report.md'})")


def _distill(args) -> None:
    """`distill` is a one-stage pipeline: the teacher is the stage's input model."""
    data = load_yaml(args.config) if args.config else {}
    top = {k: data.pop(k) for k in ("output_dir", "seed", "backend", "eval") if k in data}
    if args.student:
        data["student"] = args.student
    if args.teacher is None:
        args.teacher, why = find_teacher(Path(args.runs_dir))
        print(f"teacher: {args.teacher} ({why}; --teacher to choose another)")
    teacher = Path(args.teacher)
    name = "distill" if args.teacher == "default" else \
        f"distill-{teacher.parent.parent.name}-{teacher.parent.name[3:]}" if teacher.name == "model" else \
        f"distill-{teacher.name}"
    cfg = from_dict(pipeline.PipelineConfig, {"name": name, "model": args.teacher, **top,
                                              "stages": [{"stage": "distill", "config": data}]},
                    args.config or "distill")
    planned = pipeline.plan(cfg, args.config or "distill", args.output_dir)
    print(pipeline.describe(cfg, planned))
    if not args.dry_run:
        run_dir = pipeline.run(cfg, planned)
        print(f"student: {planned[0].ctx.model_dir} (report {run_dir / 'report.md'})")


def _eval(args) -> None:
    where = args.config or "pipelines/eval.yaml"
    data = load_yaml(where)
    cfg = from_dict(EvalConfig, data.get("eval", data), where)
    if args.thinking_budget is not None:
        cfg = from_dict(EvalConfig, {**data.get("eval", data), "thinking_budget": args.thinking_budget},
                        f"{where} (--thinking-budget)")
    if args.modes:
        cfg = replace(cfg, modes=args.modes)
    if args.benchmark or args.lm_eval:  # a standard benchmark instead of the config's suites
        bad = [c for c in args.columns or [] if "=" not in c]
        if bad:
            raise ValueError(f"--columns: {bad[0]!r} is not SRC=DST (e.g. question=prompt)")
        bench = {"data": args.data, "columns": dict(c.split("=", 1) for c in args.columns or []),
                 "name": args.data_config, "split": args.data_split,
                 "limit": args.limit, "samples": args.samples or 1, "pass_k": sorted({1, args.samples or 1}),
                 **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {})}
        named = {args.benchmark: from_dict(BenchmarkConfig, bench, f"--benchmark {args.benchmark}")} \
            if args.benchmark else {}
        for name, b in named.items():
            resolved(name, b)  # a missing or superfluous --data fails before the model loads
        cfg = replace(cfg, suites={}, think_follow=None, tasks=None, benchmarks=named)
    elif args.data or args.limit or args.columns or args.max_new_tokens or args.data_config or args.data_split:
        raise ValueError("--data, --data-config, --data-split, --columns, --limit and --max-new-tokens go with "
                         "--benchmark NAME")
    if args.budgets:
        return _budget_curve(args, cfg, where)
    baseline, previous = None, None
    for flag, path in (("--baseline", args.baseline), ("--reuse", args.reuse)):
        if path:  # read before the (long) eval, so a bad path fails at once
            try:
                loaded = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{flag} {path}: {err}") from None
            if flag == "--baseline":
                baseline = loaded
            elif Path(str(loaded.get("model"))).resolve() != Path(args.model).resolve():
                raise ValueError(f"--reuse {path}: holds results of model {loaded.get('model')}, not {args.model}")
            else:
                previous = loaded
    results = evaluate(args.model, cfg, engines=_pool(args), seed=args.seed, previous=previous)
    if args.lm_eval:
        results.setdefault("benchmarks", {}).update(harness_rows(
            args.model, args.lm_eval.split(","), cfg.modes, backend=args.backend, include_path=args.lm_eval_include,
            limit=args.limit, seed=args.seed))
    problem = None
    if baseline is not None:
        try:
            results["vs_baseline"] = {"baseline": args.baseline, "suites": compare(baseline, results),
                                      "benchmarks": compare({"suites": baseline.get("benchmarks") or {}},
                                                            {"suites": results.get("benchmarks") or {}}),
                                      "think_follow": compare_think_follow(baseline, results),
                                      "think_follow_held_out": compare_think_follow(baseline, results, held_out=True),
                                      "tasks": compare_tasks(baseline, results)}
        except ValueError as err:  # still write the results: they took minutes to make
            problem = f"--baseline {args.baseline}: {err}"
    text = json.dumps(results, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    if problem:
        raise ValueError(problem)
    paired = results.get("vs_baseline", {})
    for suite, modes in [*paired.get("suites", {}).items(), *paired.get("benchmarks", {}).items()]:
        for mode, g in modes.items():
            print(f"{suite} {mode}: {100 * g['diff']:+.1f} \u00b1 {100 * g['se']:.1f} points vs {args.baseline} "
                  f"(paired over {g['n_items']} items)", file=sys.stderr)
    for key, name in (("think_follow", "ThinkFollow"), ("think_follow_held_out", "ThinkFollow, held-out suite")):
        if tf := paired.get(key):
            print(f"{name}: {100 * tf['diff']:+.1f} \u00b1 {100 * tf['se']:.1f} points vs {args.baseline} "
                  f"(paired over {tf['n_items']} turns)", file=sys.stderr)
    for area, modes in paired.get("tasks", {}).get("areas", {}).items():
        for mode, g in modes.items():
            print(f"task kinds, {area} {mode}: reward {g['diff']:+.3f} \u00b1 {g['se']:.3f} vs {args.baseline} "
                  f"(paired over {g['n_items']} items)", file=sys.stderr)
    if other := paired.get("tasks", {}).get("other_items"):
        print(f"task kinds not paired, scored on other items than in {args.baseline}: {', '.join(other)}",
              file=sys.stderr)


def _pool(args) -> EnginePool:
    """The eval's engines: `--dtype` for whichever backend (vLLM's `auto` is its own default)."""
    settings = {} if args.dtype == "auto" else {"dtype": args.dtype}
    return EnginePool(args.backend, vllm=settings, transformers=settings)


def _budget_curve(args, cfg, where: str) -> None:
    """`posttrain eval --budgets 16 32 64`: the accuracy-vs-budget curve as JSON (and a PNG beside it)."""
    curve = from_dict(BudgetCurveConfig, {"budgets": args.budgets}, f"{where} (--budgets)")
    result = budget_curve(args.model, cfg, curve, engines=_pool(args), seed=args.seed)
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        plot_budget_curve(result, Path(args.output).with_suffix(".png"))
    print(text)
    for p in result["points"]:
        cells = ", ".join(f"{s} {r['accuracy']:.3f}" for s, r in p["suites"].items())
        print(f"budget {p['budget'] or 'none'}: {cells}", file=sys.stderr)


def _prepare(args) -> None:
    print(f"wrote {prepare_model(args.output, args.model)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("run", help="run a pipeline YAML (skips finished stages, resumes interrupted ones)")
    p.add_argument("pipeline")
    p.add_argument("--dry-run", action="store_true", help="validate the whole YAML and print the plan")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun from this stage id on")
    p.add_argument("--fresh", action="store_true",
                   help="start a new run: an existing run directory is renamed to NAME.TIMESTAMP, not deleted")
    p.add_argument("--output-dir", help="run directory (default: the YAML's output_dir or runs/NAME)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, values as YAML: stages.cold_start.config.train.max_steps=10 seed=3")
    p.set_defaults(func=_run)

    p = sub.add_parser("stage", help="run one stage from its config file")
    p.add_argument("name", help="stage kind, e.g. cold_start")
    p.add_argument("--config", required=True, help="the stage's YAML config")
    p.add_argument("--model", help="input model (default: the config's `model`, else the default model)")
    p.add_argument("--output-dir")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides of the stage config, values as YAML: train.max_steps=10 seed=3")
    p.set_defaults(func=_stage)

    p = sub.add_parser("distill", help="strong-to-weak distillation: off-policy, then on-policy")
    p.add_argument("--teacher", help="teacher model dir, or `default` (the embedded model); default: the most "
                   "advanced model (general_rl, fusion, reasoning_rl) of the newest finished run under --runs-dir")
    p.add_argument("--runs-dir", default="runs", help="where to look for that teacher (default: runs)")
    p.add_argument("--student", help="student model dir, or a spec: layers=N[,pick=P][,mlp=M[,refit=1|2]] | "
                                     "scratch:layers=N,hidden=H")
    p.add_argument("--config", help="distill stage YAML (pipelines/stages/distill.yaml)")
    p.add_argument("--output-dir")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_distill)

    p = sub.add_parser("eval", help="evaluate a model on held-out suites (accuracy, pass@k, length)")
    p.add_argument("--model", required=True)
    p.add_argument("--config", help="YAML with an eval mapping (default pipelines/eval.yaml)")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="the engine's weights (auto: bfloat16 where its matmuls are native, else float32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="also write the JSON here")
    p.add_argument("--baseline", help="an earlier eval JSON on the same suites: print the paired accuracy gain")
    p.add_argument("--reuse", help="an earlier eval JSON of this model (e.g. a stage's eval.json): keep its "
                                   "results made on the same items and settings instead of sampling again")
    p.add_argument("--thinking-budget", type=int, help="stop thinking after N tokens, then answer (think mode)")
    p.add_argument("--budgets", type=int, nargs="+", metavar="N",
                   help="instead: think-mode accuracy at each budget and with none (JSON; --output also gets a PNG)")
    p.add_argument("--benchmark", choices=KINDS, help="instead of the suites: a standard benchmark "
                   "(humaneval; ifeval and math take --data FILE)")
    p.add_argument("--data", help="the benchmark's file: IFEval's JSONL format (ifeval), or a dataset file or Hub "
                                  "dataset id ORG/NAME (math)")
    p.add_argument("--data-config", help="math from the Hub: the dataset's config (e.g. main)")
    p.add_argument("--data-split", help="math from the Hub: the split (default test)")
    p.add_argument("--columns", nargs="+", metavar="SRC=DST", help="math: map the file's columns to prompt/answer")
    p.add_argument("--limit", type=int, help="the first N items of the benchmark (a quick look)")
    p.add_argument("--samples", type=int, help="samples per item (pass@k for k = 1 and this)")
    p.add_argument("--max-new-tokens", type=int, help="the benchmark's answer length cap (default 512)")
    p.add_argument("--modes", nargs="+", choices=["think", "no_think"], help="the modes (default: the config's)")
    p.add_argument("--lm-eval", metavar="TASKS", help="lm-evaluation-harness tasks, comma-separated (extra lm-eval)")
    p.add_argument("--lm-eval-include", metavar="DIR", help="a folder of lm-eval task YAMLs (local tasks)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("prepare-model", help="write the default model (or --model) as an HF dir in the chat format")
    p.add_argument("--output", required=True)
    p.add_argument("--model", default="default")
    p.set_defaults(func=_prepare)

    interactive.add_parsers(sub)

    bench.add_parser(sub)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides after options (argparse only takes them before)
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    setup_logging(args.verbose)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, KeyError, ValueError, VLLMError, LaunchError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"posttrain {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        where = f" while writing {err.filename}" if err.filename else ""
        print(f"posttrain {args.verb}: error: no space left on the device{where}; free some and rerun "
              "(finished stages and complete checkpoints are kept, and the stage resumes)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
