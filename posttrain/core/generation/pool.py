"""The engines of a run, owned by the run: its backend, its vLLM settings and the open vLLM engines.

A pipeline makes one pool and hands it to every stage in its context; stages, data builders, judges
and the evaluation ask it for an engine on a model. vLLM engines stay open, two at most (a policy
and a judge), so the jobs on one model (its eval, the next stage's data, the budget curve) share
one; training closes them first, as it needs the memory. Transformers engines load afresh.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from posttrain.core.generation.base import GenerationEngine
from posttrain.core.generation.hf import TransformersEngine
from posttrain.core.generation.vllm import VLLMEngine
from posttrain.core.models import load_tokenizer, resolve_model

BACKENDS = ("transformers", "vllm")


@dataclass
class EnginePool:
    backend: Literal["transformers", "vllm"] = "transformers"  # generation jobs: data, eval, judge, teacher
    vllm: dict[str, Any] = field(default_factory=dict)  # vllm.LLM settings over vllm.py's defaults
    transformers: dict[str, Any] = field(default_factory=dict)  # TransformersEngine.load's dtype, attn_implementation

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        unknown = set(self.transformers) - {"dtype", "attn_implementation"}
        if unknown:
            raise ValueError(f"transformers: unknown setting(s) {', '.join(sorted(unknown))} "
                             "(known: dtype, attn_implementation)")
        self._open: dict[str, VLLMEngine] = {}  # oldest first; not a field: a pool's data is its settings

    def get(self, model: str | os.PathLike, backend: str | None = None, batch_size: int = 16,
            **settings: Any) -> GenerationEngine:
        """An engine on a model dir (or `default`), on `backend` (default: the pool's)."""
        backend = backend or self.backend
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "transformers":
            return TransformersEngine.load(model, batch_size=batch_size, **{**self.transformers, **settings})
        path, settings = str(resolve_model(model)), {**self.vllm, **settings}
        key = json.dumps([path, settings], sort_keys=True, default=str)
        if key not in self._open:
            while len(self._open) >= 2:  # a policy and a judge at most
                self._open.pop(next(iter(self._open))).close()
            self._open[key] = VLLMEngine(path, load_tokenizer(model), **settings)
        return self._open[key]

    def close(self) -> None:
        """Free the open vLLM engines (before training, which needs the memory)."""
        while self._open:
            self._open.pop(next(iter(self._open))).close()
