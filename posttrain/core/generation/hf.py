"""The transformers backend: `model.generate` on left-padded batches (CPU or GPU)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial
from threading import Thread
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopPLogitsWarper,
)

from posttrain.core.generation.base import GenerationEngine
from posttrain.core.models import load_model

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


class TopKSampler(LogitsProcessor):
    """Top-k, temperature and top-p sampling done on the k candidates alone: the chosen token is left
    the only finite logit, so greedy search emits it. The same distribution as transformers' sampling
    (temperature, top-k, then top-p, with its own warpers), without its per-step sort and exponential
    draw over the whole vocabulary: those took 45% of a 64-row decode step of the 135M model on 2 cores
    (`posttrain bench generate --baseline sampling`)."""

    def __init__(self, temperature: float | list[float], top_p: float | list[float], top_k: int):
        """One temperature and top-p for every row, or one per row (lists: a batch of both modes)."""
        rows = list(zip(temperature, top_p, strict=True)) if isinstance(temperature, list) else None
        if rows is not None and len(set(rows)) == 1:
            (temperature, top_p), rows = rows[0], None
        self.top_k, self.settings = top_k, dict(temperature=temperature, top_p=top_p, top_k=top_k)
        self.groups = [(LogitsProcessorList([TemperatureLogitsWarper(t), TopPLogitsWarper(p)]),
                        slice(None) if rows is None else torch.tensor([r == (t, p) for r in rows]))
                       for t, p in ([(temperature, top_p)] if rows is None else sorted(set(rows)))]

    def candidates(self, input_ids: torch.LongTensor, scores: torch.FloatTensor):
        """Each row's k candidate token ids and their sampling probabilities."""
        values, index = scores.topk(min(self.top_k, scores.shape[-1]), dim=-1)
        probs = torch.empty_like(values)
        for warp, rows in self.groups:
            rows = rows if isinstance(rows, slice) else rows.to(values.device)
            probs[rows] = warp(input_ids[rows], values[rows]).softmax(-1)
        return probs, index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs, index = self.candidates(input_ids, scores)
        chosen = index.gather(-1, torch.multinomial(probs, 1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, chosen, 0.0)


@contextmanager
def top_k_sampling(model, config):
    """Within it, `model.generate` samples with `TopKSampler` when `config` (a trainer's
    GenerationConfig: TRL's GRPO and distillation rollouts) samples with a top-k and nothing the sampler
    does not apply (min-p, a repetition penalty); otherwise it is left as it is."""
    if not (config.do_sample and config.top_k and not config.min_p and config.repetition_penalty in (None, 1.0)):
        yield
        return
    sampler = TopKSampler(config.temperature or 1.0, config.top_p or 1.0, config.top_k)
    own = vars(model).get("generate")  # an instance's own generate (a wrapper) is put back as it was
    model.generate = partial(model.generate, do_sample=False, logits_processor=LogitsProcessorList([sampler]))
    try:
        yield
    finally:
        if own is None:
            del model.generate
        else:
            model.generate = own


class TransformersEngine(GenerationEngine):
    backend = "transformers"
    top_k_sampler = True  # False: transformers' own sampling (`posttrain bench generate --baseline sampling`)

    def __init__(self, model, tokenizer, batch_size: int = 16):
        super().__init__(tokenizer)
        self.model, self.batch_size = model, batch_size

    @classmethod
    def load(cls, model_path: str | os.PathLike, batch_size: int = 16, dtype: str | torch.dtype | None = "auto",
             attn_implementation: str | None = None) -> TransformersEngine:
        """An engine on the model dir (or `default`), in inference mode.

        `dtype`: `auto` (load_model's choice: bfloat16 where its matmuls are native, else float32),
        `float32` or `bfloat16`. `attn_implementation`: default the model's own (sdpa), which decoded
        1.1-1.3x faster than eager on short prompts and 1.5-1.7x on ~450-token ones here (bf16, batches of
        16 and 64, 2026-12-06); an earlier measurement, on another machine, had favoured eager.
        """
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        model, tokenizer = load_model(model_path, dtype=dtype)
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
        return cls(model, tokenizer, batch_size=batch_size)

    def _mixable(self, sampling: list[dict]) -> bool:
        """Whether rows with these knobs sample in one batch: the same knobs, or the top-k sampler's
        with one k (its temperature and top-p may differ per row)."""
        first = sampling[0]
        return all(s == first for s in sampling) or self.top_k_sampler and all(
            s["temperature"] > 0 and s["top_k"] == first["top_k"] > 0 for s in sampling)

    def _knobs(self, sampling: list[dict]) -> dict[str, Any]:
        """`generate`'s sampling arguments for one batch whose rows' knobs are `_mixable`."""
        ends, first = dict(eos_token_id=list(self.end_ids), pad_token_id=self.tokenizer.pad_token_id), sampling[0]
        if first["temperature"] == 0:
            return dict(do_sample=False, **ends)
        if first["top_k"] and self.top_k_sampler:  # the report's: sampled among the top k, picked by greedy search
            sampler = TopKSampler([s["temperature"] for s in sampling], [s["top_p"] for s in sampling], first["top_k"])
            return dict(do_sample=False, logits_processor=LogitsProcessorList([sampler]), **ends)
        return dict(do_sample=True, temperature=first["temperature"], top_p=first["top_p"], top_k=None, **ends)

    def _stream(self, prefix, max_new_tokens, sampling, seed):
        """Token by token through transformers' TextIteratorStreamer (generation runs in a thread)."""
        drop = self.drop_ids

        class Streamer(TextIteratorStreamer):
            def put(self, value):  # as `decode`: think tags kept when the tokenizer marks them special
                if drop is not None:
                    value = torch.tensor([t for t in value.reshape(-1).tolist() if t not in drop], dtype=torch.long)
                super().put(value)
        streamer = Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=drop is None)
        out: dict[str, Any] = {}

        if seed is not None:
            torch.manual_seed(seed)

        def work():
            try:
                with torch.inference_mode():
                    out["ids"] = self.model.generate(input_ids=torch.tensor([prefix], device=self.model.device),
                                                     max_new_tokens=max_new_tokens, streamer=streamer,
                                                     **self._knobs([sampling]))
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
        if seed is not None:
            torch.manual_seed(seed)
        pad, dev = self.tokenizer.pad_token_id, self.model.device
        groups: dict[tuple, list[int]] = {}  # rows sampled together: all, or those with the same knobs
        mixable = self._mixable(sampling)
        for i, knobs in enumerate(sampling):
            groups.setdefault(() if mixable else tuple(sorted(knobs.items())), []).append(i)
        size = self.batch_size
        batches = [rows[j:j + size] for rows in groups.values() for j in range(0, len(rows), size)]
        out: list = [None] * len(prefixes)
        for rows in tqdm(batches, desc="generate", disable=not progress, unit="batch"):
            batch = [prefixes[i] for i in rows]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=dev)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=dev)
            gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      output_logits=logprobs, return_dict_in_generate=True,
                                      **self._knobs([sampling[i] for i in rows]))
            new = gen.sequences[:, width:]
            lp = None
            if logprobs:  # raw-model logprobs of the sampled tokens (as vLLM's default)
                logits = torch.stack(gen.logits, dim=1).float()
                lp = torch.log_softmax(logits, -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
            for row, i in enumerate(rows):
                toks = new[row].tolist()
                end = next((j for j, t in enumerate(toks) if t in self.end_ids), None)
                keep = toks[:end] if end is not None else toks
                out[i] = (keep, lp[row, :len(keep)].tolist() if lp is not None else None,
                          "stop" if end is not None else "length")
        return out
