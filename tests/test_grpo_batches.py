"""GRPO's length-grouped micro-batches (posttrain/core/grpo_batches.py): the same update as TRL's
split, over narrower forwards."""

from __future__ import annotations

import torch
from datasets import Dataset

from posttrain.core.context import StageContext
from posttrain.core.grpo_batches import by_length, used_columns
from posttrain.core.training import GRPOOptions, TrainOptions, grpo_trainer


def test_used_columns_cut_padding_on_both_sides_but_never_the_first_completion_column():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0],
                         [0, 0, 0, 1, 1, 1, 1, 0]])
    assert used_columns(mask, completion=4) == (2, 7)  # completion: the last 4 columns
    prompt_only = torch.tensor([[0, 1, 1, 0, 0, 0]])  # an empty completion
    assert used_columns(prompt_only, completion=3) == (1, 4)
    assert used_columns(torch.zeros(2, 5, dtype=torch.long), completion=2) == (3, 4)


def _rows(prompt_lengths, completion_lengths, width=6):
    pm = torch.tensor([[0] * (width - p) + [1] * p for p in prompt_lengths])
    cm = torch.tensor([[1] * c + [0] * (width - c) for c in completion_lengths])
    return {"prompt_ids": pm * 7, "prompt_mask": pm, "completion_ids": cm * 9, "completion_mask": cm,
            "advantages": torch.tensor(prompt_lengths, dtype=torch.float) * 10 + torch.tensor(completion_lengths),
            "labels": [f"{p}/{c}" for p, c in zip(prompt_lengths, completion_lengths, strict=True)],
            "num_items_in_batch": torch.tensor(10.0),  # the whole generation batch's, in each
            "old_per_token_logps": None}


def test_by_length_regroups_whole_rows_longest_first():
    batches = [_rows([1, 6], [2, 6]), _rows([2, 5], [1, 1])]
    out = by_length(batches)
    assert len(out) == 2 and [len(b["labels"]) for b in out] == [2, 2]
    lengths = [int(b["prompt_mask"][i].sum() + b["completion_mask"][i].sum()) for b in out for i in range(2)]
    assert lengths == [12, 6, 3, 3]
    for b in out:  # every key moved with its row
        for i, label in enumerate(b["labels"]):
            p, c = map(int, label.split("/"))
            assert int(b["prompt_mask"][i].sum()) == p and int(b["completion_ids"][i].sum()) == 9 * c
            assert float(b["advantages"][i]) == 10 * p + c
        assert float(b["num_items_in_batch"]) == 10.0 and b["old_per_token_logps"] is None


def _train(tmp_path, tiny_model, grouped: bool, widths: list[int]):
    # prompts of very different lengths, as stage 4's tool prompts beside short ones
    prompts = [[{"role": "user", "content": "Count. " + "Then keep counting further. " * (8 * i)}] for i in range(8)]
    ctx = StageContext(stage_id="rl", dir=tmp_path / f"rl{grouped}", input_model=str(tiny_model))
    options = GRPOOptions(num_generations=4, max_completion_length=8, length_grouped=grouped,
                          train=TrainOptions(max_steps=1, batch_size=8, micro_batch_size=2, save_steps=100,
                                             learning_rate=1e-2, trainer={"report_to": [], "disable_tqdm": True,
                                                                       "optim": "sgd",  # update = lr x gradient
                                                                       # float32: the same update to 1e-4, not bf16
                                                                       # autocast's rounding, which differs by shape
                                                                       "bf16": False}))
    rows = Dataset.from_list([{"prompt": p} for p in prompts])
    trainer = grpo_trainer(ctx, options, rows, [lambda completions, **kw: [len(str(c)) / 100 for c in completions]],
                           "rl.train")
    trainer.model.register_forward_pre_hook(
        # the scoring forwards (not generation's): TRL's fused head takes labels, the model's own head no cache
        lambda mod, args, kwargs: widths.append(kwargs["input_ids"].shape[1])
        if "labels" in kwargs or kwargs.get("use_cache") is False else None,
        with_kwargs=True)
    trainer.train()
    return trainer


def test_length_grouped_grpo_makes_trls_update_over_narrower_forwards(tmp_path, tiny_model):
    wide, narrow = [], []
    trl = _train(tmp_path, tiny_model, False, wide)
    ours = _train(tmp_path, tiny_model, True, narrow)
    assert type(trl).__name__ == "ModelHeadGRPOTrainer" and type(ours).__name__ == "LengthGroupedGRPOTrainer"
    assert len(wide) == len(narrow) and sum(narrow) < sum(wide) and max(narrow) == max(wide), (wide, narrow)
    logs = [next(h for h in t.state.log_history if "grad_norm" in h) for t in (trl, ours)]
    assert logs[0]["grad_norm"] > 0
    for key in ("loss", "grad_norm"):
        assert abs(logs[0][key] - logs[1][key]) <= 1e-4 * abs(logs[0][key]) + 1e-7, (key, logs)
    for (name, a), b in zip(trl.model.named_parameters(), ours.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert ours._groups_by_length()
    ours.loss_type = "bnpo"  # normalised per micro-batch: regrouping would change the update
    assert not ours._groups_by_length()
