"""TRL's SFTTrainer with the model's own LM head where TRL's fused head has no kernel (CPU).

TRL (1.16) computes the SFT loss through a fused LM head (`trl.trainer.utils.add_fused_lm_head`)
that never builds the full logits. On CUDA a Triton kernel projects only the positions in the loss.
Elsewhere it falls back to torch tiles that project every position (prompt and padding included),
in float32 whatever the autocast, and project them again in backward. On the default model that
is 55% of an SFT step here (a profile of one step: `aten::mm`/`addmm_` under
`ChunkedLogProbFunction`), because the 49,152-token head is a fifth of the model's matmul FLOPs.

Here the step takes transformers' own path instead: the head once, inside the trainer's bf16
autocast, and the model's causal-LM loss (logits upcast to float32, the mean over the batch's
loss tokens, `num_items_in_batch` across micro-batches). The loss is the same up to bf16 rounding
of the logits (tested against TRL's). Entropy and token accuracy are logged as TRL logs them.
"""

from __future__ import annotations

import torch
from transformers import Trainer
from trl import SFTTrainer
from trl.trainer.utils import entropy_from_logits


class ModelHeadSFTTrainer(SFTTrainer):
    """`SFTTrainer` that scores with the model's own head on CPU (TRL's fused head elsewhere)."""

    def _model_head(self, inputs) -> bool:
        """On CPU, for the plain NLL loss: DFT, label smoothing, a custom loss function and an MoE's
        auxiliary loss keep TRL's own path."""
        return (inputs["input_ids"].device.type == "cpu" and self.args.loss_type in ("nll", "chunked_nll")
                and self.label_smoother is None and self.compute_loss_func is None and not self.aux_loss_enabled)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._model_head(inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        loss, outputs = Trainer.compute_loss(self, model, inputs, True, num_items_in_batch)
        with torch.no_grad():
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            scored = outputs.logits[:, :-1][mask]  # the positions in the loss only
            valid = self.accelerator.gather_for_metrics(mask.sum()).sum().clamp(min=1)
            entropy = entropy_from_logits(scored.float()).sum()
            correct = (scored.argmax(-1) == labels[mask]).sum()
            metrics = self._metrics[mode]
            metrics["entropy"].append((self.accelerator.gather_for_metrics(entropy).sum() / valid).item())
            metrics["mean_token_accuracy"].append((self.accelerator.gather_for_metrics(correct).sum() / valid).item())
            if mode == "train":
                attention = inputs.get("attention_mask")
                tokens = attention.sum() if attention is not None else inputs["position_ids"].size(1)
                self._total_train_tokens += self.accelerator.gather_for_metrics(torch.as_tensor(tokens)).sum().item()
            metrics["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss
