"""The generation engine's interface, for data builders, judges, teachers and eval.

Batched sampling from chat prompts in think or no-think mode, returning text, token ids and
(optionally) per-token logprobs; a backend (`hf.py`, `vllm.py`) supplies only the sampling itself.
The thinking budget lives here: a thinking response that reaches the budget without `</think>` is
stopped, Qwen's early-stop text is appended, and the answer is generated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from posttrain.core.chat import (
    BUDGET_STOP_TEXT,
    EMPTY_THINK,
    SAMPLING,
    THINK_CLOSE,
    THINK_OPEN,
    resolve_mode,
    split_think,
)

Messages = list[dict[str, Any]]


@dataclass
class Completion:
    """One sampled assistant turn. `text` is the whole turn (including a no-think prefill);
    `token_ids`/`logprobs` cover only what the model generated (not the prefill or budget text)."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    finish_reason: str = "stop"  # "stop" (end of turn) or "length"
    budget_hit: bool = False

    @property
    def reasoning(self) -> str | None:
        return split_think(self.text)[0]

    @property
    def answer(self) -> str:
        return split_think(self.text)[1]


def _mode_kwargs(mode: str | None) -> dict[str, Any]:
    if mode not in (None, "think", "no_think"):
        raise ValueError(f"mode must be 'think', 'no_think' or None, got {mode!r}")
    return {"enable_thinking": False} if mode == "no_think" else {}


class GenerationEngine:
    """Backend-independent half: prompt rendering, sampling defaults, the thinking budget."""

    backend = "base"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.end_ids = {tokenizer.eos_token_id}
        # A tokenizer may mark `<think>`/`</think>` special: decoding then keeps them and drops the rest.
        tags = {tokenizer.convert_tokens_to_ids(t) for t in (THINK_OPEN, THINK_CLOSE) if t in tokenizer.get_vocab()}
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self.drop_ids = special - tags if tags & special else None

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids: special tokens dropped, never the think tags (the parser needs them)."""
        if self.drop_ids is None:
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode([t for t in ids if t not in self.drop_ids], skip_special_tokens=False)

    def render(self, messages: Messages, mode: str | None) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                  return_dict=False, **_mode_kwargs(mode))

    def generate(self, prompts: Sequence[Messages], *, n: int = 1, mode: str | None = "think",
                 max_new_tokens: int = 256, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, thinking_budget: int | None = None, seed: int | None = None,
                 logprobs: bool = False, progress: bool = False) -> list[list[Completion]]:
        """Sample `n` completions per chat prompt. Unset sampling knobs take the report's settings for
        the mode; temperature 0 is greedy. `mode=None` leaves the mode to the flags in each prompt, and
        its sampling too (the last flag's mode: one batch can hold both)."""
        sampling = [sampling_for(mode or resolve_mode(m), temperature, top_p, top_k) for m in prompts for _ in range(n)]
        prefix = [self.render(m, mode) for m in prompts for _ in range(n)]
        prefill = EMPTY_THINK if mode == "no_think" else ""  # the template's no-think prefill
        budget = thinking_budget if thinking_budget and mode != "no_think" else None
        first = min(budget, max_new_tokens) if budget else max_new_tokens
        outs = self._sample(prefix, first, sampling, seed, logprobs, progress)
        results = [Completion(prefill + self.decode(ids), ids, lps, fin)
                   for ids, lps, fin in outs]
        if budget:
            self._finish_budgeted(prefix, results, max_new_tokens - first, sampling, seed, logprobs)
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]

    def option_probs(self, prompts: Sequence[Messages], options: Sequence[str], *,
                     mode: str | None = "no_think") -> list[list[float] | None]:
        """For each chat prompt, the probability that the assistant's answer starts with each option
        (its first token), renormalised over the options: a verdict as a number, with no sampling
        (None if it is not a number)."""
        firsts = [self.tokenizer.encode(o, add_special_tokens=False)[:1] for o in options]
        if any(not f for f in firsts) or len({f[0] for f in firsts}) != len(firsts):
            raise ValueError(f"option_probs: options {list(options)} must start with distinct tokens")
        prefixes = [self.render(m, mode) for m in prompts]  # no-think: the template holds the empty block
        out = []
        for row in self._next_logprobs(prefixes, [f[0] for f in firsts]):
            probs = torch.tensor(row, dtype=torch.float64).softmax(-1)
            out.append(None if torch.isnan(probs).any() else probs.tolist())
        return out

    def _next_logprobs(self, prefixes, token_ids) -> list[list[float]]:
        """Log-probabilities of `token_ids` as the next token after each prefix (-inf if unknown)."""
        raise NotImplementedError

    def _finish_budgeted(self, prefix, results, remaining, sampling, seed, logprobs) -> None:
        """Phase two: stop thinking that ran over budget, then generate the answer."""
        stop_ids = self.tokenizer.encode(BUDGET_STOP_TEXT, add_special_tokens=False)
        todo, cont = [], []
        for i, c in enumerate(results):
            if c.finish_reason != "length" or remaining <= 0:
                continue
            if not self._still_thinking(prefix[i], c.text):  # the answer was cut by phase one
                cont.append(prefix[i] + c.token_ids)
            else:
                c.budget_hit, c.text = True, c.text + BUDGET_STOP_TEXT
                cont.append(prefix[i] + c.token_ids + stop_ids)
            todo.append(i)
        if not todo:
            return
        answers = self._sample(cont, remaining, [sampling[i] for i in todo], seed, logprobs, False)
        for i, (ids, lps, fin) in zip(todo, answers, strict=True):
            c = results[i]
            c.text += self.decode(ids)
            c.token_ids = c.token_ids + ids
            c.logprobs = None if c.logprobs is None else c.logprobs + (lps or [])
            c.finish_reason = fin

    def _still_thinking(self, prefix: list[int], text: str) -> bool:
        """Inside an open think block: opened by the model (or pre-filled by the template) and not
        closed. An answer given without a think block is never cut by the budget."""
        head = text.lstrip()
        opened = (head.startswith(THINK_OPEN) or bool(head) and THINK_OPEN.startswith(head)  # (a tag cut short)
                  or self.tokenizer.decode(prefix[-8:]).rstrip().endswith(THINK_OPEN))
        return opened and THINK_CLOSE not in text

    def stream(self, messages: Messages, *, mode: str | None = None, max_new_tokens: int = 1024,
               thinking_budget: int | None = None, seed: int | None = None, temperature: float | None = None,
               top_p: float | None = None, top_k: int | None = None) -> Iterator[str]:
        """The reply to one conversation as text pieces, while it is generated. `mode=None` leaves
        the mode to the flags in the conversation (the report's sampling follows the last flag).
        The thinking budget works as in `generate`: the early-stop text is streamed, then the answer."""
        sampling = sampling_for(mode or resolve_mode(messages), temperature, top_p, top_k)
        prefix = self.render(messages, mode)
        if mode == "no_think":
            yield EMPTY_THINK
        budget = thinking_budget if thinking_budget and mode != "no_think" else None
        first = min(budget, max_new_tokens) if budget else max_new_tokens
        ids, finish = yield from self._stream(prefix, first, sampling, seed)
        text = self.decode(ids)
        if budget and finish == "length" and max_new_tokens > first:
            extra = []
            if self._still_thinking(prefix, text):
                yield BUDGET_STOP_TEXT
                extra = self.tokenizer.encode(BUDGET_STOP_TEXT, add_special_tokens=False)
            yield from self._stream(prefix + ids + extra, max_new_tokens - first, sampling, seed)

    def _stream(self, prefix, max_new_tokens, sampling, seed):
        """Yields text pieces, returns (generated_ids, finish_reason). Default: all at once."""
        [(ids, _, finish)] = self._sample([prefix], max_new_tokens, [sampling], seed, False, False)
        yield self.decode(ids)
        return ids, finish

    def _sample(self, prefixes, max_new_tokens, sampling, seed, logprobs, progress):
        """[(generated_ids, logprobs|None, finish_reason)] for each token-id prefix, sampled with the
        knobs of its own entry of `sampling` (one `sampling_for` dict per prefix)."""
        raise NotImplementedError


def sampling_for(mode: str | None, temperature: float | None, top_p: float | None, top_k: int | None) -> dict:
    """Sampling knobs: what the caller set, else the report's settings for the mode."""
    defaults = SAMPLING["no_think" if mode == "no_think" else "think"]
    return dict(temperature=defaults["temperature"] if temperature is None else temperature,
                top_p=defaults["top_p"] if top_p is None else top_p,
                top_k=defaults["top_k"] if top_k is None else top_k)
