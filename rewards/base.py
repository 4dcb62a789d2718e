"""The shared shape of every reward: TRL's call signature, per-sample rows, failures contained."""

from __future__ import annotations

import logging
import threading
from typing import Any

from posttrain.core.chat import completion_text, prompt_messages

log = logging.getLogger("posttrain.rewards")

Row = dict[str, Any]


def is_column(value: Any, n: int) -> bool:
    """A per-sample column: a sequence (list, tuple, a `datasets` Column, ...) of length n."""
    return (not isinstance(value, (str, bytes, dict)) and hasattr(value, "__getitem__")
            and hasattr(value, "__len__") and len(value) == n)


def rows_of(columns: dict[str, Any], n: int) -> list[Row]:
    """Per-sample dicts: columns aligned with the completions are sliced, anything else
    (TRL's `trainer_state`, `log_metric`, ...) is passed to every row as is."""
    aligned = {k: list(v) for k, v in columns.items() if is_column(v, n)}
    shared = {k: v for k, v in columns.items() if k not in aligned}
    return [{**shared, **{k: v[i] for k, v in aligned.items()}} for i in range(n)]


def prompt_of(row: Row) -> list[dict[str, Any]]:
    """The sample's chat prompt: the dataset's `prompt` column, or TRL's `prompts` argument."""
    prompt = row.get("prompt", row.get("prompts"))
    if prompt is None:
        return []
    try:
        return [m for m in prompt_messages(prompt) if isinstance(m, dict)]
    except TypeError:
        return []


def call_with_time_limit(fn: Any, seconds: float | None, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, or TimeoutError when it has not returned within `seconds` (None: no limit).
    It runs in a daemon thread, which a hung call leaves behind: Python cannot stop a thread."""
    if seconds is None:
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["error"] = err
    worker = threading.Thread(target=target, daemon=True, name=f"reward-{getattr(fn, '__name__', 'call')}")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def text_of(completion: Any) -> str:
    try:
        return completion_text(completion)
    except Exception as err:  # noqa: BLE001 - a malformed completion is scored, not raised
        log.warning("malformed completion (%s: %s); scored as empty text", type(err).__name__, err)
        return ""


class Reward:
    """Subclasses set `name` and implement `score(text, row)` or `score_batch(texts, rows)`.

    `on_error` is what a sample scores when scoring it raised (logged with the reason)."""

    name = "reward"
    on_error: float | None = 0.0

    def __init__(self) -> None:
        self.__name__ = self.name

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        texts = [text_of(c) for c in completions]
        rows = rows_of(columns, n)
        try:
            out = list(self.score_batch(texts, rows))
            if len(out) != n:
                raise RuntimeError(f"returned {len(out)} scores for {n} completions")
            return out
        except Exception as err:  # noqa: BLE001 - never raise into the training step
            log.warning("%s: batch of %d failed (%s: %s); scored %s", self.name, n, type(err).__name__,
                        err, self.on_error)
            return [self.on_error] * n

    def score_batch(self, texts: list[str], rows: list[Row]) -> list[float | None]:
        return [self.safe_score(text, row) for text, row in zip(texts, rows, strict=True)]

    def safe_score(self, text: str, row: Row) -> float | None:
        try:
            return self.score(text, row)
        except Exception as err:  # noqa: BLE001
            log.warning("%s: sample failed (%s: %s); scored %s", self.name, type(err).__name__, err,
                        self.on_error)
            return self.on_error

    def score(self, text: str, row: Row) -> float | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<reward {self.name}>"
