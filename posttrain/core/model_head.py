"""TRL's SFT and GRPO trainers with the model's own LM head where TRL's fused head has no kernel (CPU).

TRL (1.16) scores tokens through a fused LM head (`trl.trainer.utils.add_fused_lm_head`) that never
builds the full logits. On CUDA a Triton kernel projects only the positions that are scored.
Elsewhere it falls back to torch tiles that project every position (prompt and padding included),
in float32 whatever the autocast, and project them again in backward. On the default model that
is 55% of an SFT step here (a profile of one step: `aten::mm`/`addmm_` under
`ChunkedLogProbFunction`), because the 49,152-token head is a fifth of the model's matmul FLOPs.
GRPO's log-probabilities (the old policy's pass and every loss micro-batch) take the same path,
over ~100-500 prompt tokens per row that are never scored.

Here, on CPU, a step takes transformers' own path instead: the head once, inside the trainer's bf16
autocast, over the scored positions only (`logits_to_keep` for GRPO's completions).
- SFT: the model's causal-LM loss (logits upcast to float32, the mean over the batch's loss tokens,
  `num_items_in_batch` across micro-batches). Entropy and token accuracy are logged as TRL logs them.
- GRPO: the completion logits, upcast to float32, through TRL's `selective_log_softmax` (and
  `selective_log_softmax_and_entropy`), divided by the sampling temperature as TRL's head divides.
Both equal TRL's to rounding (tested in float32: losses, gradients, log-probabilities, entropies).
"""

from __future__ import annotations

import torch
from transformers import Trainer
from trl import GRPOTrainer, SFTTrainer
from trl.trainer.utils import entropy_from_logits, selective_log_softmax, selective_log_softmax_and_entropy


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


class ModelHeadGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose log-probabilities come from the model's own head on CPU (TRL's fused head
    elsewhere, and for MoE auxiliary losses, images and `cast_lm_head_to_fp32`)."""

    model_head = True  # False: TRL's fused head here too (`posttrain bench train`'s `fused` arm)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **multimodal):
        if compute_aux_loss or any(v is not None for v in multimodal.values()):  # MoE, images: TRL's own
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **multimodal)
        size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for s in range(0, input_ids.size(0), size):
            lp, ent = self._score(model, input_ids[s:s + size], attention_mask[s:s + size], logits_to_keep,
                                  compute_entropy)
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def _score(self, model, ids, mask, logits_to_keep: int, compute_entropy: bool):
        """One chunk's log-probabilities of its last `logits_to_keep` tokens (0 where masked), and their
        entropies when asked."""
        if not self.model_head or ids.device.type != "cpu" or self.args.cast_lm_head_to_fp32:
            lp, ent, _ = super()._get_per_token_logps_and_entropies(model, ids, mask, logits_to_keep, None,
                                                                    compute_entropy)
            return lp, ent
        with self.accelerator.autocast():
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1,
                           use_cache=False).logits
        logits = logits[:, :-1].float()  # position t scores token t + 1
        targets, scored = ids[:, -logits_to_keep:], mask[:, -logits_to_keep:]
        if not compute_entropy:
            return selective_log_softmax(logits, targets, self.temperature, scored), None
        # entropy keeps its gradient only for the entropy bonus, as in TRL's loss
        return selective_log_softmax_and_entropy(logits, targets, self._entropy_bonus_enabled, self.temperature,
                                                 scored)
