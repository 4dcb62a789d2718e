"""The transformers backend: `model.generate` on left-padded batches (CPU or GPU)."""

from __future__ import annotations

import os
from threading import Thread
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TextIteratorStreamer

from posttrain.core.generation.base import GenerationEngine
from posttrain.core.models import decode_attention, load_model

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


class TransformersEngine(GenerationEngine):
    backend = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 16):
        super().__init__(tokenizer)
        self.model, self.batch_size = model, batch_size

    @classmethod
    def load(cls, model_path: str | os.PathLike, batch_size: int = 16, dtype: str | torch.dtype | None = "auto",
             attn_implementation: str | None = None) -> TransformersEngine:
        """An engine on the model dir (or `default`), in inference mode.

        `dtype`: `auto` (load_model's choice: bfloat16 where its matmuls are native, else float32),
        `float32` or `bfloat16`. `attn_implementation`: default `decode_attention` (eager on CPU), else the model's.
        """
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        model, tokenizer = load_model(model_path, dtype=dtype)
        attn_implementation = attn_implementation or decode_attention(model)
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
        return cls(model, tokenizer, batch_size=batch_size)

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
