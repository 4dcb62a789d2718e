"""`preference`: a tiny reward model trained with TRL's RewardTrainer on CPU, then used as a reward."""

from __future__ import annotations

import math
import random

import pytest
import torch

import rewards
from rewards.preference import train_reward_model


def pairs(seed: int, n: int) -> list[dict]:
    """Chosen: a polite, correct sentence. Rejected: a fixed junk-token pattern around a wrong sum."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        out.append({
            "prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
            "chosen": [{"role": "assistant", "content": f"Thank you for asking! {a} plus {b} equals {a + b}."}],
            "rejected": [{"role": "assistant", "content": f"zx qq zx qq {a + b + rng.randint(1, 9)} zx qq"}]})
    return out


def train(base, out, data):
    # one intra-op thread: a 64-wide model gains nothing from more, and on a busy 2-core machine
    # OpenMP threads contending with other processes made these 16 steps 20x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_reward_model(data, str(base), str(out), learning_rate=1e-3, max_steps=16)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory):
    return train(tiny_model, tmp_path_factory.mktemp("rm") / "model", pairs(0, 64))


def held_out_accuracy(model_dir) -> float:
    reward = rewards.get("preference", model=model_dir, batch_size=8)
    held_out = pairs(1, 40)  # different numbers than training
    prompts = [p["prompt"] for p in held_out]
    chosen = reward([p["chosen"] for p in held_out], prompt=prompts)
    rejected = reward([p["rejected"] for p in held_out], prompt=prompts)
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held_out)


def test_trained_reward_model_ranks_held_out_chosen_above_rejected(reward_model):
    accuracy = held_out_accuracy(reward_model)
    print(f"preference RM held-out accuracy: {accuracy:.3f} (40 pairs)")
    assert accuracy > 0.6


def test_the_ranking_comes_from_training(tiny_model, tmp_path):
    """Control: the same backbone trained on swapped pairs ranks the other way (a random head alone
    could happen to prefer either side)."""
    swapped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs(0, 64)]
    accuracy = held_out_accuracy(train(tiny_model, tmp_path / "swapped", swapped))
    print(f"swapped-label RM held-out accuracy: {accuracy:.3f}")
    assert accuracy < 0.4


def test_scores_do_not_depend_on_batching_or_completion_form(reward_model):
    held_out = pairs(2, 5)
    prompts = [p["prompt"] for p in held_out]
    conv = [p["chosen"] if i % 2 else p["rejected"] for i, p in enumerate(held_out)]
    texts = [c[0]["content"] for c in conv]
    big = rewards.get("preference", model=reward_model, batch_size=8)(conv, prompt=prompts)
    small = rewards.get("preference", model=reward_model, batch_size=2)(texts, prompts=prompts)  # TRL's kwarg
    assert small == pytest.approx(big, abs=1e-4)  # padding does not leak into the score
    assert len(set(round(s, 3) for s in big)) > 1


def test_sigmoid_normalisation_plain_prompts_and_empty_completions(reward_model):
    texts = ["Thank you for asking! 2 plus 2 equals 4.", "zx qq zx qq", ""]
    prompts = ["What is 2 plus 2?", "What is 2 plus 2?", None]
    raw = rewards.get("preference", model=reward_model)(texts, prompt=prompts)
    scores = rewards.get("preference", model=reward_model, normalize="sigmoid")(texts, prompt=prompts)
    assert scores == pytest.approx([1 / (1 + math.exp(-r)) for r in raw], abs=1e-5)
    # a plain-text prompt is scored as RewardTrainer trained on it: prompt + completion + EOS, one sequence
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model, num_labels=1).eval()
    for text, prompt, r in zip(texts, prompts, raw, strict=True):
        ids = tok((prompt or "") + text + tok.eos_token)["input_ids"]
        with torch.no_grad():
            assert r == pytest.approx(model(torch.tensor([ids])).logits[0, 0].item(), abs=1e-4)
    assert len(set(round(r, 3) for r in raw)) == 3  # three different raw scores, not one constant
    assert scores[0] > scores[1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="no reward model"):
        rewards.get("preference", model="/nonexistent/rm")
    with pytest.raises(ValueError, match="normalize"):
        rewards.get("preference", model="/nonexistent/rm", normalize="tanh")
