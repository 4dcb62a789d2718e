"""An optional bridge to lm-evaluation-harness (`pip install -e '.[lm-eval]'`): its tasks on a model dir.

The model answers through its own chat template in one mode, as posttrain's own eval asks it: `no_think`
renders the template's empty think block (`enable_thinking=False`); `think` lets the model think
(`enable_thinking=True`) and scores only the text after the last `</think>` (lm-eval's `think_end_token`).
In think mode the task's stop sequences cut the answer, never the reasoning: vLLM does this in lm-eval
already, and the transformers backend here stops generation only at the end of the turn.
Local task YAMLs come in through `include_path`; nothing is fetched from a hub.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from posttrain.core.chat import MODES, THINK_CLOSE

BACKENDS = {"transformers": "hf", "vllm": "vllm"}
_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_harness(model: str, tasks: list[str], *, mode: str = "no_think", backend: str = "transformers",
                include_path: str | None = None, limit: int | None = None, batch_size: int = 8,
                max_new_tokens: int = 256, seed: int = 0) -> dict:
    """Run lm-eval `tasks` (names or YAML paths) on the model dir `model` in `mode`; returns
    `{"lm_eval_version", "mode", "backend", "tasks": {name: {"n_items", "metrics", "stderr"}}, "wall_time_s"}`.
    Metric names drop lm-eval's `,none` filter suffix and write other filters as `metric/filter`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RuntimeError("lm-evaluation-harness is not installed: pip install -e '.[lm-eval]'") from None
    start = time.monotonic()
    with _offline():
        manager = _task_manager(TaskManager, tasks, include_path, {"pretrained": model})
        results = lm_eval.simple_evaluate(
            model=_model(model, backend, mode, batch_size, max_new_tokens, seed), tasks=list(tasks),
            task_manager=manager, apply_chat_template=True, limit=limit,
            gen_kwargs={"max_gen_toks": max_new_tokens}, log_samples=False, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    return {"lm_eval_version": lm_eval.__version__, "mode": mode, "backend": backend,
            "tasks": _tasks(results), "wall_time_s": round(time.monotonic() - start, 3)}


def harness_rows(model: str, tasks: list[str], modes: list[str], **settings: Any) -> dict[str, dict[str, Any]]:
    """`run_harness` in each mode, as eval.json's benchmark rows: `{"lm-eval:TASK": {mode: row}}`."""
    rows: dict[str, dict[str, Any]] = {}
    for mode in modes:
        run = run_harness(model, tasks, mode=mode, **settings)
        for name, r in run["tasks"].items():
            rows.setdefault(f"lm-eval:{name}", {})[mode] = {
                "benchmark": "lm-eval", **r, "lm_eval_version": run["lm_eval_version"], "backend": run["backend"],
                "wall_time_s": run["wall_time_s"]}
    return rows


def _task_manager(task_manager_cls, tasks: list[str], include_path: str | None, metadata: dict):
    """lm-eval's task index: the local YAMLs alone when they hold every task asked for (the built-in index
    takes seconds to build), else with the built-in tasks. ValueError naming any task found nowhere."""
    if include_path:
        local = task_manager_cls(include_path=include_path, include_defaults=False, metadata=metadata)
        if all(name in local.all_subtasks for name in tasks):
            return local
    manager = task_manager_cls(include_path=include_path, metadata=metadata)
    unknown = [name for name in tasks if name not in manager.all_tasks and not Path(name).is_file()]
    if unknown:
        where = f" (built-in tasks and {include_path})" if include_path else " (built-in tasks)"
        raise ValueError(f"unknown lm-eval task{'s' if len(unknown) > 1 else ''}{where}: {', '.join(unknown)}")
    return manager


def _model(model: str, backend: str, mode: str, batch_size: int, max_new_tokens: int, seed: int):
    """The lm-eval LM for `model` in `mode`: its chat template with `enable_thinking` set to the mode."""
    thinking = mode == "think"
    args: dict[str, Any] = {"pretrained": model, "batch_size": batch_size, "enable_thinking": thinking,
                            "think_end_token": THINK_CLOSE if thinking else None}
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM
        return VLLM(**args, max_gen_toks=max_new_tokens, seed=seed)

    import torch
    from lm_eval.models.huggingface import HFLM

    class ThinkingHFLM(HFLM):
        """HFLM that, in think mode, stops only at the end of the turn: the task's stop sequences are
        applied after the reasoning is cut off, as lm-eval's vLLM backend does."""

        def _model_generate(self, context, max_length, stop, **kwargs):
            if self.think_end_token is not None:
                eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
                stop = [s for s in stop if s == eos]
            return super()._model_generate(context, max_length, stop, **kwargs)

    lm = ThinkingHFLM(**args, device="cuda" if torch.cuda.is_available() else "cpu")
    if thinking:  # a `</think>` the tokenizer marks special is dropped when decoding: cut at its id instead
        tok = lm.tokenizer
        special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
        end_id = tok.get_vocab().get(THINK_CLOSE)
        if end_id is not None and end_id in special:
            lm.think_end_token = end_id
    return lm


def _tasks(results: dict) -> dict[str, dict[str, Any]]:
    """Per task (and group): items scored, metrics and their standard errors, as plain floats."""
    counts = {name: int(n["effective"]) for name, n in results.get("n-samples", {}).items()}
    subtasks = results.get("group_subtasks", {})

    def n_items(name: str) -> int:
        return counts[name] if name in counts else sum(n_items(sub) for sub in subtasks.get(name, []))

    out = {}
    for name, values in results["results"].items():
        metrics, stderr = {}, {}
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, int | float):
                continue  # alias, sample counts, "N/A" standard errors
            if not math.isfinite(value):
                continue
            metric, _, filt = key.partition(",")
            target = stderr if metric.endswith("_stderr") else metrics
            metric = metric.removesuffix("_stderr")
            target[metric if filt == "none" else f"{metric}/{filt}"] = float(value)
        out[name] = {"n_items": n_items(name), "metrics": metrics, "stderr": stderr}
    return out


@contextmanager
def _offline():
    """No hub for the call: the offline switches in the environment (libraries imported during the call) and
    in the flags that `huggingface_hub` and `datasets` read them into when imported earlier; all restored."""
    saved_env = {key: os.environ.get(key) for key in _OFFLINE}
    flags = [(module, name) for module, names in (("huggingface_hub.constants", ["HF_HUB_OFFLINE"]),
                                                   ("datasets.config", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"]))
             if module in sys.modules for name in names if hasattr(sys.modules[module], name)]
    saved_flags = [getattr(sys.modules[module], name) for module, name in flags]
    os.environ.update(_OFFLINE)
    for module, name in flags:
        setattr(sys.modules[module], name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(flags, saved_flags, strict=True):
            setattr(sys.modules[module], name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
