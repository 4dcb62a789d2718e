"""One generation engine for data builders, judges, teachers and eval.

Batched sampling from chat prompts in think or no-think mode, returning text, token ids and
(optionally) per-token logprobs. Backends: `transformers` (CPU or GPU) and `vllm` (offline engine,
imported lazily). The thinking budget lives here: a thinking response that reaches the budget
without `</think>` is stopped, Qwen's early-stop text is appended, and the answer is generated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from posttrain.chat import BUDGET_STOP_TEXT, EMPTY_THINK, SAMPLING, THINK_CLOSE, THINK_OPEN, resolve_mode, split_think

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
        the mode; temperature 0 is greedy. `mode=None` leaves the mode to the flags in the prompt."""
        sampling = _sampling(mode, temperature, top_p, top_k)
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
        answers = self._sample(cont, remaining, sampling, seed, logprobs, False)
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
        sampling = _sampling(mode or resolve_mode(messages), temperature, top_p, top_k)
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
        [(ids, _, finish)] = self._sample([prefix], max_new_tokens, sampling, seed, False, False)
        yield self.decode(ids)
        return ids, finish

    def _sample(self, prefixes, max_new_tokens, sampling, seed, logprobs, progress):
        """[(generated_ids, logprobs|None, finish_reason)] for each token-id prefix."""
        raise NotImplementedError


def _sampling(mode: str | None, temperature: float | None, top_p: float | None, top_k: int | None) -> dict:
    """Sampling knobs: what the caller set, else the report's settings for the mode."""
    defaults = SAMPLING["no_think" if mode == "no_think" else "think"]
    return dict(temperature=defaults["temperature"] if temperature is None else temperature,
                top_p=defaults["top_p"] if top_p is None else top_p,
                top_k=defaults["top_k"] if top_k is None else top_k)


class TransformersEngine(GenerationEngine):
    backend = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 16):
        super().__init__(tokenizer)
        self.model, self.batch_size = model, batch_size

    def _knobs(self, sampling, seed) -> dict[str, Any]:
        if seed is not None:
            torch.manual_seed(seed)
        greedy = sampling["temperature"] == 0
        knobs = {} if greedy else dict(temperature=sampling["temperature"], top_p=sampling["top_p"],
                                       top_k=sampling["top_k"] or None)
        return dict(do_sample=not greedy, eos_token_id=list(self.end_ids), pad_token_id=self.tokenizer.pad_token_id,
                    **knobs)

    def _stream(self, prefix, max_new_tokens, sampling, seed):
        """Token by token through transformers' TextIteratorStreamer (generation runs in a thread)."""
        from threading import Thread

        from transformers import TextIteratorStreamer
        drop = self.drop_ids

        class Streamer(TextIteratorStreamer):
            def put(self, value):  # as `decode`: think tags kept when the tokenizer marks them special
                if drop is not None:
                    value = torch.tensor([t for t in value.reshape(-1).tolist() if t not in drop], dtype=torch.long)
                super().put(value)
        streamer = Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=drop is None)
        out: dict[str, Any] = {}

        def work():
            try:
                with torch.inference_mode():
                    out["ids"] = self.model.generate(input_ids=torch.tensor([prefix], device=self.model.device),
                                                     max_new_tokens=max_new_tokens, streamer=streamer,
                                                     **self._knobs(sampling, seed))
            except Exception as err:  # noqa: BLE001 - re-raised below, after the stream is closed
                out["error"] = err
                streamer.end()
        thread = Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if "error" in out:
            raise out["error"]
        toks = out["ids"][0, len(prefix):].tolist()
        end = next((j for j, t in enumerate(toks) if t in self.end_ids), None)
        return (toks[:end], "stop") if end is not None else (toks, "length")

    @torch.inference_mode()
    def _next_logprobs(self, prefixes, token_ids):
        pad, dev, out = self.tokenizer.pad_token_id, self.model.device, []
        for start in range(0, len(prefixes), self.batch_size):
            batch = prefixes[start:start + self.batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=dev)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=dev)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            out += torch.log_softmax(logits, -1)[:, token_ids].tolist()
        return out

    @torch.inference_mode()
    def _sample(self, prefixes, max_new_tokens, sampling, seed, logprobs, progress):
        knobs = self._knobs(sampling, seed)
        pad, dev = self.tokenizer.pad_token_id, self.model.device
        out = []
        starts = range(0, len(prefixes), self.batch_size)
        for start in tqdm(starts, desc="generate", disable=not progress, unit="batch"):
            batch = prefixes[start:start + self.batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=dev)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=dev)
            gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
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
    """vLLM's offline `LLM` (posttrain.vllm_support: CPU and GPU defaults, in-process engine core)."""

    backend = "vllm"

    def __init__(self, model_path: str, tokenizer, **llm_kwargs):
        from posttrain.vllm_support import start_llm
        super().__init__(tokenizer)
        self.model_path = str(model_path)
        self.llm = start_llm(self.model_path, llm_kwargs)

    def close(self) -> None:
        """Free the engine (its KV cache and weights) before another one starts."""
        from posttrain.vllm_support import shutdown
        llm, self.llm = getattr(self, "llm", None), None
        shutdown(llm)

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
            lps = [d[t].logprob for t, d in zip(ids, c.logprobs, strict=False)] if logprobs else None
            results.append((ids, lps, "length" if c.finish_reason == "length" else "stop"))
        return results

    def _next_logprobs(self, prefixes, token_ids):
        """Each option appended to the prefix, scored as a prompt token (exact, whatever its rank)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p + [t]) for p in prefixes for t in token_ids],
                                 params, use_tqdm=False)
        scores = [o.prompt_logprobs[-1][o.prompt_token_ids[-1]].logprob for o in outs]
        k = len(token_ids)
        return [scores[i * k:(i + 1) * k] for i in range(len(prefixes))]


VLLM_SETTINGS: dict[str, Any] = {}  # the pipeline's `vllm:` engine settings (over vllm_support's defaults)
PIPELINE_BACKEND = ["transformers"]  # the pipeline's `backend:`, for engines a reward starts (a judge)
_VLLM: dict[str, VLLMEngine] = {}  # the open vLLM engines, oldest first


def close_engines() -> None:
    """Free the open vLLM engines (before training, which needs the memory)."""
    while _VLLM:
        _VLLM.pop(next(iter(_VLLM))).close()


def load_engine(model_path: str | os.PathLike, backend: str | None = "transformers", batch_size: int = 16,
                **kwargs) -> GenerationEngine:
    """An engine for a model directory (or `default`); `backend=None`: the running pipeline's."""
    from posttrain.models import load_model, load_tokenizer, resolve_model
    backend = backend or PIPELINE_BACKEND[0]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "vllm":  # started once: the jobs on one model (data, eval, budget curve) share it
        path = str(resolve_model(model_path))
        settings = {**VLLM_SETTINGS, **kwargs}
        key = json.dumps([path, settings], sort_keys=True, default=str)
        if key not in _VLLM:
            while len(_VLLM) >= 2:  # a policy and a judge at most
                _VLLM.pop(next(iter(_VLLM))).close()
            _VLLM[key] = VLLMEngine(path, load_tokenizer(model_path), **settings)
        return _VLLM[key]
    model, tokenizer = load_model(model_path)
    return TransformersEngine(model, tokenizer, batch_size=batch_size)
