"""One generation engine for data builders, judges, teachers and eval.

Batched sampling from chat prompts in think or no-think mode, returning text, token ids and
(optionally) per-token logprobs. Backends: `transformers` (CPU or GPU) and `vllm` (offline engine,
imported lazily). The thinking budget lives here: a thinking response that reaches the budget
without `</think>` is stopped, Qwen's early-stop text is appended, and the answer is generated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from posttrain.chat import BUDGET_STOP_TEXT, EMPTY_THINK, SAMPLING, THINK_CLOSE, split_think

Messages = list[dict[str, Any]]
BACKENDS = ("transformers", "vllm")


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

    def render(self, messages: Messages, mode: str | None) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                  return_dict=False, **_mode_kwargs(mode))

    def generate(self, prompts: Sequence[Messages], *, n: int = 1, mode: str | None = "think",
                 max_new_tokens: int = 256, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, thinking_budget: int | None = None, seed: int | None = None,
                 logprobs: bool = False, progress: bool = False) -> list[list[Completion]]:
        """Sample `n` completions per chat prompt. Unset sampling knobs take the report's settings for
        the mode; temperature 0 is greedy. `mode=None` leaves the mode to the flags in the prompt."""
        defaults = SAMPLING["no_think" if mode == "no_think" else "think"]
        sampling = dict(temperature=defaults["temperature"] if temperature is None else temperature,
                        top_p=defaults["top_p"] if top_p is None else top_p,
                        top_k=defaults["top_k"] if top_k is None else top_k)
        prefix = [self.render(m, mode) for m in prompts for _ in range(n)]
        prefill = EMPTY_THINK if mode == "no_think" else ""  # the template's no-think prefill
        budget = thinking_budget if thinking_budget and mode != "no_think" else None
        first = min(budget, max_new_tokens) if budget else max_new_tokens
        outs = self._sample(prefix, first, sampling, seed, logprobs, progress)
        results = [Completion(prefill + self.tokenizer.decode(ids, skip_special_tokens=True), ids, lps, fin)
                   for ids, lps, fin in outs]
        if budget:
            self._finish_budgeted(prefix, results, max_new_tokens - first, sampling, seed, logprobs)
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _finish_budgeted(self, prefix, results, remaining, sampling, seed, logprobs) -> None:
        """Phase two: stop thinking that ran over budget, then generate the answer."""
        stop_ids = self.tokenizer.encode(BUDGET_STOP_TEXT, add_special_tokens=False)
        todo, cont = [], []
        for i, c in enumerate(results):
            if c.finish_reason != "length" or remaining <= 0:
                continue
            if THINK_CLOSE in c.text:  # thought within budget; the answer was cut by phase one
                cont.append(prefix[i] + c.token_ids)
            else:
                c.budget_hit, c.text = True, c.text + BUDGET_STOP_TEXT
                cont.append(prefix[i] + c.token_ids + stop_ids)
            todo.append(i)
        if not todo:
            return
        for i, (ids, lps, fin) in zip(todo, self._sample(cont, remaining, sampling, seed, logprobs, False)):
            c = results[i]
            c.text += self.tokenizer.decode(ids, skip_special_tokens=True)
            c.token_ids = c.token_ids + ids
            c.logprobs = None if c.logprobs is None else c.logprobs + (lps or [])
            c.finish_reason = fin

    def _sample(self, prefixes, max_new_tokens, sampling, seed, logprobs, progress):
        """[(generated_ids, logprobs|None, finish_reason)] for each token-id prefix."""
        raise NotImplementedError


class TransformersEngine(GenerationEngine):
    backend = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 16):
        super().__init__(tokenizer)
        self.model, self.batch_size = model, batch_size

    @torch.inference_mode()
    def _sample(self, prefixes, max_new_tokens, sampling, seed, logprobs, progress):
        if seed is not None:
            torch.manual_seed(seed)
        greedy = sampling["temperature"] == 0
        knobs = {} if greedy else dict(temperature=sampling["temperature"], top_p=sampling["top_p"],
                                       top_k=sampling["top_k"] or None)
        pad, dev = self.tokenizer.pad_token_id, self.model.device
        out = []
        starts = range(0, len(prefixes), self.batch_size)
        for start in tqdm(starts, desc="generate", disable=not progress, unit="batch"):
            batch = prefixes[start:start + self.batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=dev)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=dev)
            gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      do_sample=not greedy, eos_token_id=list(self.end_ids), pad_token_id=pad,
                                      output_logits=logprobs, return_dict_in_generate=True, **knobs)
            new = gen.sequences[:, width:]
            lp = None
            if logprobs:  # raw-model logprobs of the sampled tokens (as vLLM's default)
                logits = torch.stack(gen.logits, dim=1).float()
                lp = torch.log_softmax(logits, -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
            for row in range(new.shape[0]):
                toks = new[row].tolist()
                end = next((j for j, t in enumerate(toks) if t in self.end_ids), None)
                keep = toks[:end] if end is not None else toks
                out.append((keep, lp[row, :len(keep)].tolist() if lp is not None else None,
                            "stop" if end is not None else "length"))
        return out


class VLLMEngine(GenerationEngine):
    backend = "vllm"

    def __init__(self, model_path: str, tokenizer, **llm_kwargs):
        super().__init__(tokenizer)
        try:
            from vllm import LLM
        except ImportError:
            raise RuntimeError("backend 'vllm' needs vLLM: pip install 'posttrain[vllm]' on a GPU machine, "
                               "or use backend 'transformers'") from None
        self.llm = LLM(model=str(model_path), **llm_kwargs)

    def _sample(self, prefixes, max_new_tokens, sampling, seed, logprobs, progress):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=sampling["temperature"],
                                 top_p=sampling["top_p"], top_k=sampling["top_k"] or -1,
                                 seed=None if seed is None else seed + i,  # repeated prompts must differ
                                 logprobs=0 if logprobs else None, stop_token_ids=list(self.end_ids),
                                 skip_special_tokens=True) for i in range(len(prefixes))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prefixes], params, use_tqdm=progress)
        results = []
        for o in outs:
            c = o.outputs[0]
            ids = [t for t in c.token_ids if t not in self.end_ids]
            lps = [d[t].logprob for t, d in zip(ids, c.logprobs)] if logprobs else None
            results.append((ids, lps, "length" if c.finish_reason == "length" else "stop"))
        return results


def load_engine(model_path: str | os.PathLike, backend: str = "transformers", batch_size: int = 16,
                **kwargs) -> GenerationEngine:
    """An engine for a model directory (or `default`)."""
    from posttrain.models import load_model, load_tokenizer, resolve_model
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "vllm":
        return VLLMEngine(str(resolve_model(model_path)), load_tokenizer(model_path), **kwargs)
    model, tokenizer = load_model(model_path)
    return TransformersEngine(model, tokenizer, batch_size=batch_size)
