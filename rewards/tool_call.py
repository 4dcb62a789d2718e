"""`tool_call`: one well-formed call of a listed tool, with arguments valid for its JSON schema.

The completion is parsed as Qwen3 writes tool calls (`<tool_call>{"name", "arguments"}</tool_call>`,
by `posttrain.core.chat.parse_assistant`); the sample's `tools` column (JSON list, in the format
`apply_chat_template` takes) gives the schemas, checked with `jsonschema`; `answer` (optional, JSON
`{"name", "arguments"}`) the expected call. Score:
- 0.0 no call, a malformed one, or more than `max_calls`;
- 0.5 every call names a listed tool with arguments valid for its schema (`valid_score`);
- 1.0 and the call equals the expected one (numbers compared as numbers). Without `tools`, None.
"""

from __future__ import annotations

import json
from typing import Any

from posttrain.core.chat import parse_assistant
from rewards.base import Reward, Row


def _load(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class ToolCallReward(Reward):
    """Params: `max_calls` (1), `valid_score` (0.5)."""

    name = "tool_call"
    on_error = 0.0

    def __init__(self, max_calls: int = 1, valid_score: float = 0.5) -> None:
        super().__init__()
        self.max_calls, self.valid_score = int(max_calls), float(valid_score)

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]:
        # when GRPO ran the call (tools in the batch), the completion goes on with its result: the
        # call graded is the first assistant turn's
        return super().__call__([c[:1] if isinstance(c, list) and c else c for c in completions], **columns)

    def score(self, text: str, row: Row) -> float | None:
        import jsonschema
        if not row.get("tools"):
            return None
        schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in _load(row["tools"])}
        try:
            calls = parse_assistant(text).get("tool_calls") or []
        except ValueError:
            return 0.0  # malformed call
        if not calls or len(calls) > self.max_calls:
            return 0.0
        for call in calls:
            fn = call.get("function", call)
            if fn.get("name") not in schemas or not isinstance(fn.get("arguments"), dict):
                return 0.0
            try:
                jsonschema.validate(fn["arguments"], schemas[fn["name"]])
            except jsonschema.ValidationError:
                return 0.0
        want = _load(row.get("answer")) if row.get("answer") else None
        got = calls[0].get("function", calls[0])
        exact = isinstance(want, dict) and len(calls) == 1 and got["name"] == want.get("name") \
            and got["arguments"] == want.get("arguments")
        return 1.0 if exact else self.valid_score
