"""`length` and `repetition`: shaping penalties, thin wrappers over TRL's own.

`length` is TRL's soft overlong punishment (DAPO eq. 13): 0 up to `max_len - cache`, then a linear
ramp to -1 at `max_len`, -1 beyond. `repetition` is TRL's n-gram repetition penalty: the share of
repeated n-grams times `max_penalty` (0 for none, towards -1 for fully repetitive).

Lengths and n-grams are over tokens: TRL passes each completion's `completion_ids` to reward
functions; outside a trainer, pass `completion_ids=` or a `tokenizer` (path or object). `unit="chars"`
(length) or `unit="words"` (repetition) works on the text instead.
"""

from __future__ import annotations

from typing import Any

from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment

from rewards.base import Reward, Row, log


class _TokenReward(Reward):
    on_error = None
    units = ("tokens",)

    def __init__(self, unit: str, tokenizer: Any = None) -> None:
        super().__init__()
        if unit not in self.units:
            raise ValueError(f"{self.name}: unit must be one of {self.units}, got {unit!r}")
        self.unit, self.tokenizer = unit, tokenizer

    def _ids(self, text: str, row: Row) -> list[int] | None:
        if row.get("completion_ids") is not None:
            return list(row["completion_ids"])
        if self.tokenizer is not None:
            if isinstance(self.tokenizer, str):
                from transformers import AutoTokenizer
                self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        log.warning("%s: unit='tokens' needs `completion_ids` (TRL passes them) or a `tokenizer`; "
                    "sample skipped (None)", self.name)
        return None


class LengthReward(_TokenReward):
    """Params: `max_len` (required), `cache` (the soft ramp's length, default max_len // 4),
    `unit` ('tokens' or 'chars'), `tokenizer`."""

    name = "length"
    units = ("tokens", "chars")

    def __init__(self, max_len: int, cache: int | None = None, unit: str = "tokens", tokenizer: Any = None) -> None:
        super().__init__(unit, tokenizer)
        cache = max_len // 4 if cache is None else cache
        if not 0 < cache <= max_len:
            raise ValueError(f"length: need 0 < cache <= max_len, got cache={cache}, max_len={max_len}")
        self.punish = get_soft_overlong_punishment(max_completion_len=int(max_len), soft_punish_cache=int(cache))

    def score(self, text: str, row: Row) -> float | None:
        seq = range(len(text)) if self.unit == "chars" else self._ids(text, row)
        return None if seq is None else float(self.punish([seq])[0])


class RepetitionReward(_TokenReward):
    """Params: `ngram_size` (3), `max_penalty` (-1.0), `unit` ('tokens' or 'words'), `tokenizer`."""

    name = "repetition"
    units = ("tokens", "words")

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0, unit: str = "tokens",
                 tokenizer: Any = None) -> None:
        super().__init__(unit, tokenizer)
        self.penalty = get_repetition_penalty_reward(ngram_size=int(ngram_size), max_penalty=float(max_penalty))

    def score(self, text: str, row: Row) -> float | None:
        seq = text.lower().split() if self.unit == "words" else self._ids(text, row)
        return None if seq is None else float(self.penalty([seq])[0])
