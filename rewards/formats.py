"""`think_format` and `think_follow`: the think block's shape, and whether it obeys the mode.

A well-formed response has exactly one `<think>`, at the start (leading whitespace allowed), and
exactly one `</think>` after it: `<think>\\n...\\n</think>\\n\\nanswer`. TRL's `think_format_reward`
checks the opening (one `<think>`, first); we add "exactly one `</think>`".

What the generation prompt already holds is prepended before checking: a sample whose
`enable_thinking` column is False was prompted with the template's empty think block
(`<think>\\n\\n</think>\\n\\n`), so its completion is only the answer; the `prefill` param covers
templates that open the block themselves (e.g. `prefill="<think>\\n"`).
"""

from __future__ import annotations

from trl.rewards import think_format_reward

from posttrain.core.chat import EMPTY_THINK, THINK_CLOSE, THINK_OPEN, resolve_mode, split_think
from rewards.base import Reward, Row, prompt_of


def full_text(text: str, row: Row, prefill: str = "") -> str:
    """The assistant turn as the model saw it: the prompt's prefill, then the completion."""
    if row.get("enable_thinking") is False:
        prefill = EMPTY_THINK
    return prefill + text


def well_formed(text: str) -> bool:
    body = text.lstrip()
    return (think_format_reward([[{"content": body}]])[0] == 1.0
            and body.count(THINK_OPEN) == 1 and body.count(THINK_CLOSE) == 1)


def follows_mode(text: str, mode: str) -> bool:
    """Does an assistant turn obey its mode (ThinkFollow)? It must open with a think block; for
    `no_think` the block is closed and empty, for `think` it has content (a thinking turn cut off by
    the length limit still counts: it did think)."""
    body = text.lstrip()
    if not body.startswith(THINK_OPEN):
        return False
    reasoning = (split_think(body)[0] or "").strip()
    return (THINK_CLOSE in body and not reasoning) if mode == "no_think" else bool(reasoning)


class ThinkFormatReward(Reward):
    """1.0 for one well-formed think block at the start, else 0.0. Param: `prefill`."""

    name = "think_format"
    on_error = 0.0

    def __init__(self, prefill: str = "") -> None:
        super().__init__()
        self.prefill = prefill

    def score(self, text: str, row: Row) -> float:
        return float(well_formed(full_text(text, row, self.prefill)))


class ThinkFollowReward(Reward):
    """1.0 if the response obeys its mode, else 0.0. The mode is `no_think` when the sample's
    `enable_thinking` is False or the last flag in the conversation is /no_think, else `think`.
    no_think: a well-formed block with only whitespace inside; think: one with content."""

    name = "think_follow"
    on_error = 0.0

    def __init__(self, prefill: str = "") -> None:
        super().__init__()
        self.prefill = prefill

    def score(self, text: str, row: Row) -> float:
        full = full_text(text, row, self.prefill)
        if not well_formed(full):
            return 0.0
        mode = resolve_mode(prompt_of(row), row.get("enable_thinking"))
        reasoning = split_think(full)[0] or ""
        return float((reasoning.strip() == "") == (mode == "no_think"))
