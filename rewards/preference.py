"""`preference`: a reward model trained on `chosen`/`rejected` pairs (TRL `RewardTrainer`) scores
prompt + response; no reference needed.

    path = train_reward_model(pairs, base_model_path, "runs/rm", max_steps=200)
    reward = rewards.get("preference", model=path, batch_size=8)   # raw scores; normalize="sigmoid"

The pairs dataset has `chosen`/`rejected` (and optionally `prompt`), conversational or plain text,
as TRL's RewardTrainer takes them. Scoring renders prompt + response the same way (the chat
template for conversational prompts, plain concatenation plus EOS otherwise).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.trainer_callback import ProgressCallback

from posttrain.core.callbacks import bar_only
from posttrain.core.chat import split_think
from posttrain.core.models import resolve_model
from rewards.base import Reward, Row, prompt_of

# RewardConfig defaults that suit this project (CPU-friendly; every one can be overridden)
RM_DEFAULTS: dict[str, Any] = dict(
    per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-4, logging_steps=10,
    save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False, max_length=1024,
    disable_tqdm=True, seed=0)


def train_reward_model(dataset, base_model_path: str, output_dir: str, **overrides: Any) -> str:
    """Train a sequence-classification reward model (one logit) on preference pairs; returns the
    directory holding the model and its tokenizer. `overrides` are RewardConfig fields."""
    from trl import RewardConfig
    trainer = reward_trainer(dataset, base_model_path, RewardConfig(output_dir=str(output_dir),
                                                                    **{**RM_DEFAULTS, **overrides}))
    trainer.train()
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(output_dir))
    return str(output_dir)


def reward_trainer(dataset, base_model_path: str, args, peft_config=None):
    """TRL's RewardTrainer over a one-logit head on `base_model_path`, with `args` (a RewardConfig)."""
    from datasets import Dataset
    from trl import RewardTrainer
    if isinstance(dataset, list):
        dataset = Dataset.from_list(dataset)
    path = resolve_model(base_model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)  # project models carry the chat format already
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=peft_config)
    if trainer.pop_callback(ProgressCallback):  # the bar, without a printed dict at every logging step
        trainer.add_callback(bar_only())
    return trainer


class PreferenceReward(Reward):
    """Params: `model` (reward model dir, required), `batch_size` (8), `normalize` (None or
    'sigmoid'), `max_length` (tokens kept from the right end, default 2048), `device`, `answer_only`
    (score the text after `</think>`, as for pairs without reasoning; default False)."""

    name = "preference"
    on_error = None

    def __init__(self, model: str, batch_size: int = 8, normalize: str | None = None, max_length: int = 2048,
                 device: str | None = None, answer_only: bool = False) -> None:
        super().__init__()
        if normalize not in (None, "sigmoid"):
            raise ValueError(f"preference: normalize must be None or 'sigmoid', got {normalize!r}")
        if not (Path(model) / "config.json").is_file():
            raise ValueError(f"preference: no reward model at {model} (expected config.json)")
        self.path, self.batch_size, self.normalize = str(model), int(batch_size), normalize
        self.max_length, self.device, self.answer_only = int(max_length), device, bool(answer_only)
        self._model = self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                self._tokenizer = AutoTokenizer.from_pretrained(self.path)
                if self._tokenizer.pad_token is None:
                    self._tokenizer.pad_token = self._tokenizer.eos_token
                model = AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=1)
                model.config.pad_token_id = self._tokenizer.pad_token_id
                self._model = model.to(device).eval()
        return self._model, self._tokenizer

    def encode(self, completion_text: str, row: Row) -> list[int]:
        """Token ids of prompt + response, rendered as RewardTrainer renders training pairs."""
        _, tok = self._load()
        prompt = row.get("prompt", row.get("prompts"))
        if prompt is None or isinstance(prompt, str):
            text = (prompt or "") + completion_text
            if not text.endswith(tok.eos_token):
                text += tok.eos_token
            ids = tok(text, add_special_tokens=True)["input_ids"]
        else:
            messages = prompt_of(row) + [{"role": "assistant", "content": completion_text}]
            ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        return list(ids)[-self.max_length:]

    def score_batch(self, texts: list[str], rows: list[Row]) -> list[float | None]:
        model, tok = self._load()
        if self.answer_only:
            texts = [split_think(t)[1] for t in texts]
        encoded = [self.encode(t, r) for t, r in zip(texts, rows, strict=True)]
        scores: list[float | None] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start:start + self.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for i, ids in enumerate(batch):  # right padding: the head reads the last non-pad token
                input_ids[i, :len(ids)] = torch.tensor(ids)
                mask[i, :len(ids)] = 1
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits
            scores.extend(float(v) for v in logits[:, 0].float().cpu())
        if self.normalize == "sigmoid":
            scores = [1.0 / (1.0 + math.exp(-s)) for s in scores]
        return scores

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__, _model=None, _tokenizer=None)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
