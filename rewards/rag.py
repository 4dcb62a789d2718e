"""`rag`: faithfulness to a given context (report §4.4, specialised scenarios).

The sample's `answer` is the fact the context gives, or the refusal phrase (`not in the context`)
when the context does not hold it; `context_values` (a JSON list, optional) names every value the
prompt's context mentions. Graded on the answer part (after `</think>`), whole words, any case:
- answerable: 1.0 when the fact is there, no other context value is, and it does not refuse;
- unanswerable: 1.0 when it refuses and names no context value (a guess is unsupported);
- anything else 0.0. Without an `answer`, None.
"""

from __future__ import annotations

import json
import re

from posttrain.core.chat import split_think
from rewards.base import Reward, Row

REFUSAL = "not in the context"


def _says(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.I) is not None


class RagReward(Reward):
    """Params: `refusal` (the phrase that declines, default REFUSAL)."""

    name = "rag"
    on_error = 0.0

    def __init__(self, refusal: str = REFUSAL) -> None:
        super().__init__()
        self.refusal = refusal

    def score(self, text: str, row: Row) -> float | None:
        gold = str(row.get("answer") or "").strip()
        if not gold:
            return None
        answer = split_think(text)[1]
        values = json.loads(row["context_values"]) if row.get("context_values") else []
        refused = _says(answer, self.refusal)
        if gold.lower() == self.refusal.lower():
            return float(refused and not any(_says(answer, str(v)) for v in values))
        others = [str(v) for v in values if str(v).lower() != gold.lower()]
        return float(_says(answer, gold) and not refused and not any(_says(answer, v) for v in others))
