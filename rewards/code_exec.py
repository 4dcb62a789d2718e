"""`code`: run the answer's final ```python block against the sample's `tests` in the sandbox.

Only the text after `</think>` is searched (an unterminated think block has no answer: 0.0).
Default: 1.0 only if every check passes, else 0.0. `partial=True`: the fraction of top-level
asserts that pass (each runs separately; a timeout keeps the checks done before it).
None when `tests` is missing or is not valid Python (a data problem, logged).
Model code only ever runs inside `rewards.sandbox`.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from posttrain.core.chat import THINK_CLOSE, split_think
from rewards import sandbox
from rewards.base import Reward, Row, log

_FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


def extract_code(answer: str) -> str | None:
    """The last ```python block (or, if there is none, the last bare ``` block)."""
    blocks = _FENCE.findall(answer)
    tagged = [code for lang, code in blocks if lang]
    chosen = tagged or [code for _, code in blocks]
    return chosen[-1] if chosen else None


class CodeReward(Reward):
    """Params: `partial` (fraction of asserts, default False), `timeout` (wall seconds per sample,
    default 5), `memory_mb` (default 512), `workers` (samples run in parallel, default 4), and any
    `rewards.sandbox.Limits` field (e.g. `max_output`, `nproc`)."""

    name = "code"
    on_error = 0.0

    def __init__(self, partial: bool = False, timeout: float = 5.0, memory_mb: int = 512, workers: int = 4,
                 **limits) -> None:
        super().__init__()
        self.partial, self.workers = bool(partial), max(1, int(workers))
        self.limits = dict(timeout=float(timeout), memory_mb=int(memory_mb), **limits)
        sandbox.Limits(**self.limits)  # unknown limit names fail here, at construction

    def score_batch(self, texts: list[str], rows: list[Row]) -> list[float | None]:
        if len(texts) <= 1 or self.workers == 1:
            return [self.safe_score(t, r) for t, r in zip(texts, rows, strict=True)]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(texts))) as pool:
            return list(pool.map(self.safe_score, texts, rows))

    def score(self, text: str, row: Row) -> float | None:
        tests = row.get("tests")
        if not isinstance(tests, str) or not tests.strip():
            return None
        try:
            sandbox.count_checks(tests)
        except SyntaxError as err:
            log.warning("code: the sample's tests are not valid Python (%s); skipped (None)", err)
            return None
        reasoning, answer = split_think(text)
        if reasoning is not None and THINK_CLOSE not in text:
            return 0.0
        code = extract_code(answer)
        if code is None:
            return 0.0
        result = sandbox.run_tests(code, tests, **self.limits)
        if result.status != "ok":
            log.debug("code: %s after %.2fs; %d/%d passed; stderr: %s", result.status, result.elapsed,
                      result.passed, result.total, result.stderr[-300:])
        if self.partial:
            return result.fraction
        return 1.0 if result.all_passed else 0.0
