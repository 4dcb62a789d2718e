"""The Qwen3 hybrid chat format: one place for template text, think blocks and mode flags.

The templates themselves are TRL's copies of Qwen3's (`trl/chat_templates/qwen3*.jinja`); this
module only names them and adds the small text helpers every stage needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from transformers.utils.chat_parsing.response_parser import parse_response
from transformers.utils.chat_template_utils import render_jinja_template
from trl.chat_template_utils import qwen3_chat_template, qwen3_template, qwen3_training_chat_template

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# What a non-thinking answer starts with (report Table 9; Qwen3 template, enable_thinking=False).
EMPTY_THINK = "<think>\n\n</think>\n\n"
# Appended when the thinking budget runs out (Qwen's two-phase recipe, without the report's stray '.').
BUDGET_STOP_TEXT = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the "
    "thinking directly now.\n</think>\n\n"
)
THINK_FLAG, NO_THINK_FLAG = "/think", "/no_think"
MODES = ("think", "no_think")

# The report's evaluation sampling per mode.
SAMPLING = {
    "think": {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
    "no_think": {"temperature": 0.7, "top_p": 0.8, "top_k": 20},
}

CHAT_TEMPLATE = qwen3_chat_template
TRAINING_CHAT_TEMPLATE = qwen3_training_chat_template

_FLAG_RE = re.compile(r"(?<!\S)/(no_think|think)(?=$|[\s.,!?;:])")


def last_flag(messages: Iterable[dict[str, Any]]) -> str | None:
    """The last `/think` or `/no_think` in user or system messages, as a mode name, or None."""
    flag = None
    for message in messages:
        if message.get("role") in ("user", "system") and isinstance(message.get("content"), str):
            found = _FLAG_RE.findall(message["content"])
            if found:
                flag = found[-1]
    return flag


def resolve_mode(messages: Iterable[dict[str, Any]], enable_thinking: bool | None = None) -> str:
    """The mode a Qwen3 model should answer in: the hard switch wins, then the last flag, then think."""
    if enable_thinking is False:
        return "no_think"
    return last_flag(messages) or "think"


def with_flag(messages: list[dict[str, Any]], mode: str, where: str = "user") -> list[dict[str, Any]]:
    """A copy of `messages` with the mode's flag appended to the last user (or the system) message."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    flag = THINK_FLAG if mode == "think" else NO_THINK_FLAG
    out = [dict(m) for m in messages]
    if where == "system":
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']} {flag}".strip()
        else:
            out.insert(0, {"role": "system", "content": flag})
        return out
    for message in reversed(out):
        if message["role"] == "user":
            message["content"] = f"{message['content']} {flag}"
            return out
    raise ValueError("with_flag: no user message to carry the flag")


def without_flag(text: str) -> str:
    """TEXT whitespace-folded, without a trailing mode flag: a user text as asked in either mode."""
    text = " ".join(text.split())
    for flag in (f" {NO_THINK_FLAG}", f" {THINK_FLAG}"):
        text = text.removesuffix(flag)
    return text


def split_think(text: str) -> tuple[str | None, str]:
    """Split a response into (reasoning, answer). reasoning is None when there is no think block;
    an unterminated block is all reasoning and no answer."""
    if THINK_CLOSE in text:
        head, _, answer = text.partition(THINK_CLOSE)
        reasoning = head.split(THINK_OPEN, 1)[-1]
        return reasoning.strip("\n"), answer.lstrip("\n")
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        return stripped[len(THINK_OPEN):].strip("\n"), ""
    return None, text


def join_think(reasoning: str | None, answer: str) -> str:
    """The assistant text the template renders for (reasoning, answer); '' reasoning is the empty block."""
    if reasoning is None:
        return answer
    return f"{THINK_OPEN}\n{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{answer.lstrip(chr(10))}"


def tools_system_message(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The system message the Qwen3 template writes for `tools` (rendered by the template itself),
    so that a prompt carries its own tool list through any trainer or engine."""
    text = render_jinja_template([[{"role": "user", "content": ""}]], tools=tools, chat_template=CHAT_TEMPLATE)[0][0]
    return {"role": "system", "content": text.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]}


def parse_assistant(text: str, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An assistant turn as a message (`content`, `reasoning_content`, `tool_calls`), parsed by
    transformers' response parser with TRL's Qwen3 response template; ValueError if malformed."""
    return parse_response(text, qwen3_template, prefix="<|im_start|>assistant\n", tools=tools)


def _tool_call_text(call: dict[str, Any]) -> str:
    fn = call.get("function", call)
    return f"<tool_call>\n{json.dumps({'name': fn.get('name'), 'arguments': fn.get('arguments')})}\n</tool_call>"


def completion_text(completion: Any) -> str:
    """A completion as plain text, whether TRL passes a string or the conversational form. In a
    tool-using completion only what the model wrote counts: its turns, with their tool calls written
    back as Qwen3 writes them (`<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`); the
    tools' results are left out."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts = []
    for message in completion or []:
        if message.get("role") == "tool":
            continue
        content = message.get("content") or ""
        if isinstance(content, list):  # multimodal-style content blocks
            content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        calls = "\n".join(_tool_call_text(c) for c in message.get("tool_calls") or [])
        if calls:
            content = f"{content}\n{calls}" if content else calls
        reasoning = message.get("reasoning_content")
        parts.append(join_think(reasoning, content) if isinstance(reasoning, str) else content)
    return "".join(parts)


def prompt_messages(prompt: Any) -> list[dict[str, Any]]:
    """A `prompt` column value as chat messages (a bare string becomes one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)
