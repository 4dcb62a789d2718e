"""GRPO without paying for other rows' padding: loss micro-batches of rows of like length, and
every forward cut to the columns its rows use.

TRL pads a whole generation batch (stage 4: 8 prompts x 4 rollouts) to its longest prompt and its
longest completion, and every forward over it — the no-grad pass for the old log-probs, then each
loss micro-batch — computes over that full width. Stage 4's tool prompts are ~500 tokens against
~100 for the rest, so one of them in a generation batch made every row cost ~600 tokens: steps
with tool prompts took 3-4x those without (issue 29). Here:

- each forward chunk drops the columns where none of its rows has a token (prompt padding on the
  left, completion padding on the right). Causal attention makes the right cut exact; the left cut
  shifts every row's positions by the same amount, which rotary position embeddings do not see;
- the rows of a generation batch are ordered by length before they are split into loss
  micro-batches, so long rows share micro-batches. That leaves the update unchanged when the
  generation batch makes one optimizer step and the loss is normalised per sequence or over the
  whole batch (`grpo`, `dapo`, `dr_grpo`): the micro-batches' gradients are summed before the step.
  Otherwise (`bnpo` normalises per micro-batch; several optimizer steps per generation batch)
  TRL's shuffled split is kept and only the padding is cut.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from trl.trainer.utils import split_tensor_dict

from posttrain.core.model_head import ModelHeadGRPOTrainer

GROUPABLE_LOSSES = ("grpo", "dapo", "dr_grpo")


def used_columns(mask: torch.Tensor, completion: int) -> tuple[int, int]:
    """[first, last) of the columns where some row of `mask` has a token, never cutting into the
    first completion column (the last `completion` columns are the completion)."""
    used = mask.any(0).nonzero().flatten()
    start = mask.size(1) - completion
    if not len(used):
        return start, start + 1
    return min(int(used[0]), start), max(int(used[-1]) + 1, start + 1)


def by_length(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of TRL's micro-batches regrouped, longest first, into as many micro-batches."""
    whole = {}
    for key, first in batches[0].items():
        parts = [b[key] for b in batches]
        if isinstance(first, torch.Tensor) and first.ndim > 0:
            whole[key] = torch.cat(parts)
        elif isinstance(first, list):
            whole[key] = [x for p in parts for x in p]
        else:  # a scalar of the whole generation batch (num_items_in_batch), or None
            whole[key] = first
    length = whole["prompt_mask"].sum(1) + whole["completion_mask"].sum(1)
    order = torch.argsort(length, descending=True, stable=True)
    for key, value in whole.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            whole[key] = value[order]
        elif isinstance(value, list):
            whole[key] = [value[i] for i in order.tolist()]
    return split_tensor_dict(whole, len(batches))


class LengthGroupedGRPOTrainer(ModelHeadGRPOTrainer):
    """TRL's GRPOTrainer with length-grouped loss micro-batches and padding cut per forward (and the
    model's own LM head on CPU: `ModelHeadGRPOTrainer`)."""

    def _groups_by_length(self) -> bool:
        return (self.loss_type in GROUPABLE_LOSSES
                and self.args.steps_per_generation == self.args.gradient_accumulation_steps)

    def _prepare_inputs(self, generation_batch):
        before = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        fresh = self.model.training and self._buffered_inputs is not before  # TRL just generated and split
        if not fresh or not self._groups_by_length() or "pixel_values" in inputs:
            return inputs
        self._buffered_inputs = by_length(self._buffered_inputs)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _score(self, model, ids, mask, logits_to_keep: int, compute_entropy: bool):
        first, last = used_columns(mask, logits_to_keep)
        keep = logits_to_keep - (ids.size(1) - last)
        lp, ent = super()._score(model, ids[:, first:last], mask[:, first:last], keep, compute_entropy)
        pad = (0, logits_to_keep - keep)  # cut completion padding scores 0, as masked
        return F.pad(lp, pad), F.pad(ent, pad) if compute_entropy else None
