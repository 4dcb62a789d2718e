"""Training precision (bf16 autocast over float32 master weights) and `posttrain bench train`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from posttrain import roofline
from posttrain.core.config import ConfigError, from_dict
from posttrain.core.context import StageContext
from posttrain.core.models import fast_bf16, residual_stream
from posttrain.core.training import GRPOOptions, TrainOptions, grpo_trainer, micro_batch, sft_trainer
from tests.conftest import longer


def _matmul_dtypes(model) -> list[torch.dtype]:
    """The output dtypes of the model's linear layers while it runs (a forward hook on each)."""
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


def _sft(tmp_path, tiny_model, name: str, micro: int | None = None, **trainer):
    ctx = StageContext(stage_id=name, dir=tmp_path / name, input_model=str(tiny_model), seed=0)
    options = TrainOptions(max_steps=4, batch_size=4, learning_rate=1e-3, save_steps=100, micro_batch_size=micro,
                           trainer={"report_to": [], "disable_tqdm": True, **trainer})
    return sft_trainer(ctx, roofline._conversations(16), options, f"{name}.train")


BF16 = {"bf16": True, "gradient_checkpointing": False}  # the defaults where bf16 matmuls are native


def test_defaults_autocast_to_bf16_only_where_it_is_native_and_faster(tmp_path, tiny_model):
    from posttrain.core.models import BF16_MIN_SPEEDUP, bf16_speedup
    trainer = _sft(tmp_path, tiny_model, "defaults")
    assert trainer.args.bf16 == fast_bf16() and not trainer.args.gradient_checkpointing
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    cpu_flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if not torch.cuda.is_available() and cpu_flags:
        native = any(f in cpu_flags.split() for f in ("avx512_bf16", "amx_bf16", "amx_tile"))
        assert fast_bf16() == (native and bf16_speedup() >= BF16_MIN_SPEEDUP)  # measured once, then kept
        print(f"bf16 matmul speed-up over float32 here: {bf16_speedup():.2f}x; bf16 default: {fast_bf16()}")


def test_a_bf16_step_on_cpu_keeps_float32_master_weights(tmp_path, tiny_model):
    trainer = _sft(tmp_path, tiny_model, "new", **BF16)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    seen = _matmul_dtypes(trainer.model)
    trainer.train()
    assert torch.bfloat16 in seen and torch.float32 not in seen  # every matmul ran in bf16
    params = dict(trainer.model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}  # the weights AdamW updates
    assert any(not torch.equal(before[k], params[k]) for k in before)


def test_bf16_defaults_match_the_float32_loss(tmp_path, tiny_model):
    """Four SFT steps from the same seed: bf16 autocast without recomputation against float32 with
    activation checkpointing (the defaults up to issue 29). Stated tolerance: 1% of the loss."""
    old = _sft(tmp_path, tiny_model, "old", micro=4, **roofline.BEFORE)
    new = _sft(tmp_path, tiny_model, "new", **BF16)
    assert old.args.gradient_checkpointing and not old.args.bf16
    assert (old.args.per_device_train_batch_size, old.args.gradient_accumulation_steps) == (4, 1)
    losses = {}
    for name, trainer in (("old", old), ("new", new)):
        trainer.train()
        losses[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses["old"]) == len(losses["new"]) == 4
    assert losses["old"][-1] < losses["old"][0]  # it learned, so the comparison is not of two constants
    for a, b in zip(losses["old"], losses["new"], strict=True):
        assert abs(a - b) <= 0.01 * a, losses


def test_micro_batches_make_the_whole_batchs_update(tmp_path, tiny_model):
    """A batch of 4 in micro-batches of 1 against one forward of 4, in float32: the loss is normalised
    over the batch's tokens, so the updates agree to rounding."""
    default = _sft(tmp_path, tiny_model, "default")
    micro = micro_batch("sft") or 4
    assert (default.args.per_device_train_batch_size, default.args.gradient_accumulation_steps) == (micro, 4 // micro)
    whole = _sft(tmp_path, tiny_model, "whole", micro=4, bf16=False)
    split = _sft(tmp_path, tiny_model, "split", micro=1, bf16=False)
    assert (split.args.per_device_train_batch_size, split.args.gradient_accumulation_steps) == (1, 4)
    losses = {}
    for name, trainer in (("whole", whole), ("split", split)):
        trainer.train()
        losses[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses["whole"][-1] < losses["whole"][0]
    for a, b in zip(losses["whole"], losses["split"], strict=True):
        assert abs(a - b) <= 1e-3 * a, losses
    for (name, a), b in zip(whole.model.named_parameters(), split.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4), name


def test_on_cpu_sft_scores_with_the_models_head_as_trls_fused_head_does(tmp_path, tiny_model):
    """posttrain/core/model_head.py: one padded batch with prompt tokens outside the loss, in float32. The
    model's own head gives TRL's loss, gradients and logged entropy and token accuracy."""
    from trl import SFTTrainer

    from posttrain.core.model_head import ModelHeadSFTTrainer
    trainer = _sft(tmp_path, tiny_model, "head", micro=4, bf16=False)
    assert isinstance(trainer, ModelHeadSFTTrainer)
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["attention_mask"] == 0).any() and (batch["labels"][batch["attention_mask"] == 1] == -100).any()
    tokens = (batch["labels"][:, 1:] != -100).sum()
    results = []
    for compute_loss in (ModelHeadSFTTrainer.compute_loss, SFTTrainer.compute_loss):
        trainer.model.zero_grad()
        loss = compute_loss(trainer, trainer.model, dict(batch), num_items_in_batch=tokens)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]))
    (ours, our_grads), (theirs, their_grads) = results
    assert ours.item() > 1.0 and torch.allclose(ours, theirs, rtol=1e-5)
    for a, b in zip(our_grads, their_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    metrics = trainer._metrics["train"]
    for name in ("entropy", "mean_token_accuracy"):
        assert len(metrics[name]) == 2 and metrics[name][0] == pytest.approx(metrics[name][1], rel=1e-4), name
    assert metrics["num_tokens"] == [2 * int(batch["attention_mask"].sum())]


@pytest.mark.parametrize("trainer", [{"loss_type": "dft"}, {"label_smoothing_factor": 0.1}])
def test_sft_losses_other_than_nll_keep_trls_path(tmp_path, tiny_model, trainer):
    from trl import SFTTrainer
    sft = _sft(tmp_path, tiny_model, "other", micro=4, bf16=False, **trainer)
    sft.model.train()
    batch = next(iter(sft.get_train_dataloader()))
    ours = sft.compute_loss(sft.model, dict(batch))
    theirs = SFTTrainer.compute_loss(sft, sft.model, dict(batch))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("micro", [3, 0, 16])
def test_a_micro_batch_must_divide_the_batch(micro):
    with pytest.raises(ConfigError, match=rf"^stage.yaml: train: micro_batch_size: {micro} does not divide batch_size"):
        from_dict(TrainOptions, {"batch_size": 8, "micro_batch_size": micro}, "stage.yaml: train")


def test_the_batch_shape_is_set_by_the_options_not_under_trainer():
    with pytest.raises(ConfigError, match=r"^s.yaml: train: trainer: per_device_train_batch_size: set batch_size"):
        from_dict(TrainOptions, {"trainer": {"per_device_train_batch_size": 4}}, "s.yaml: train")
    with pytest.raises(ConfigError, match=r"^s.yaml: train: trainer: gradient_accumulation_steps: set grad_accum"):
        from_dict(TrainOptions, {"trainer": {"gradient_accumulation_steps": 4}}, "s.yaml: train")


def test_grpo_rollouts_sample_under_the_trainers_autocast(tmp_path, tiny_model):
    """TRL samples outside autocast; the project's GRPO trainer samples in bf16 as its loss runs, and
    decodes with the generation engine's attention kernel and top-k sampler."""
    from datasets import Dataset
    prompts = [[{"role": "user", "content": f"Count to {i}."}] for i in range(8)]
    ctx = StageContext(stage_id="rl", dir=tmp_path / "rl", input_model=str(tiny_model))
    options = GRPOOptions(num_generations=4, max_completion_length=8,
                          train=TrainOptions(max_steps=1, batch_size=8, save_steps=100,
                                             trainer={"report_to": [], "disable_tqdm": True, **BF16}))
    trainer = grpo_trainer(ctx, options, Dataset.from_list([{"prompt": p} for p in prompts]), [longer], "rl.train")
    seen, kernels = _matmul_dtypes(trainer.model), []
    trainer.model.register_forward_pre_hook(lambda mod, args: kernels.append(mod.config._attn_implementation))
    training_kernel = trainer.model.config._attn_implementation
    in_rollouts, decode_kernels = [], []
    generate = trainer._generate

    def spy(batch):
        start, first = len(seen), len(kernels)
        out = generate(batch)
        in_rollouts.extend(seen[start:])
        decode_kernels.extend(kernels[first:])
        del kernels[first:]
        return out
    trainer._generate = spy
    model, calls = trainer.accelerator.unwrap_model(trainer.model), []
    original = model.generate

    def spy_generate(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)
    model.generate = spy_generate
    trainer.train()
    assert calls and all(not kw["do_sample"] and kw["logits_processor"][0].settings == {
        "temperature": 0.6, "top_p": 0.95, "top_k": 20} for kw in calls)  # GRPOOptions' defaults: the report's
    assert model.generate is spy_generate  # put back after the rollouts
    assert in_rollouts and set(in_rollouts) == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    # decoding and the loss with the model's own attention kernel
    assert set(decode_kernels) == {training_kernel}
    assert kernels and set(kernels) == {training_kernel} == {trainer.model.config._attn_implementation}


def test_on_policy_distillation_trains_the_student_under_the_autocast(tmp_path, tiny_model):
    """TRL's DistillationTrainer routes its loss around the forward that accelerate wrapped in the
    autocast; the project's puts it back: a bf16 run's loss forward computes in bf16 matmuls, over
    float32 weights that the step updates."""
    from stages.distill import Config, OnPolicy, Prompts, on_policy_prompts, on_policy_trainer
    ctx = StageContext(stage_id="distill", dir=tmp_path / "distill", input_model=str(tiny_model))
    prompts = on_policy_prompts(ctx, Config(prompts=Prompts(families={"arithmetic": 4})))
    cfg = OnPolicy(max_completion_length=8, train=TrainOptions(
        max_steps=1, batch_size=4, learning_rate=1e-3, save_steps=100,
        trainer={"report_to": [], "disable_tqdm": True, **BF16}))
    trainer = on_policy_trainer(ctx, str(tiny_model), cfg, prompts)
    seen, in_loss = _matmul_dtypes(trainer.model), []
    compute = trainer._compute_loss

    def spy(*args, **kwargs):
        start = len(seen)
        out = compute(*args, **kwargs)
        in_loss.extend(seen[start:])
        return out
    trainer._compute_loss = spy
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert in_loss and set(in_loss) == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_matmul_params_count_the_head_not_the_lookup(tiny_model):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    lm = AutoModelForCausalLM.from_pretrained(tiny_model)  # tied: the table is also the head
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    table = lm.get_input_embeddings().weight.numel()
    assert roofline.matmul_params(lm) == sum(p.numel() for p in lm.parameters())
    assert roofline.matmul_params(rm) == sum(p.numel() for p in rm.parameters()) - table


def test_matmul_peak_is_measured_per_dtype():
    fp32 = roofline.matmul_peak(torch.float32, largest=512, seconds=0.2)
    bf16 = roofline.matmul_peak(torch.bfloat16, largest=512, seconds=0.2)
    assert fp32["gflops"] > 0 and bf16["gflops"] > 0 and 256 <= fp32["n"] <= 512


@pytest.mark.slow
def test_bench_train_before_and_after_on_a_tiny_model(tiny_model):
    results = roofline.bench_train(str(tiny_model), kinds=("sft", "grpo", "reward_model", "generate"), steps=2,
                                   new_tokens=16, profile=3)
    assert results["peak_gflops"]["float32"] > 0
    for kind in ("sft", "grpo", "reward_model"):
        before, after = results[kind]["before"], results[kind]["after"]
        assert "error" not in before and "error" not in after, results[kind]
        assert not before["bf16"] and after["bf16"] == fast_bf16() == results["bf16_autocast"]
        assert not after["gradient_checkpointing"]
        assert before["gradient_checkpointing"] == (kind != "reward_model")  # the RM stage never had it
        for arm in (before, after):
            assert arm["step_s"] > 0 and arm["tokens_per_step"] > 0 and 0 < arm["mfu"] < 1
            assert arm["peak_memory_gb"] > 0.1  # a process with torch loaded
        assert results[kind]["speedup"] == round(before["step_s"] / after["step_s"], 2)
    sft, micro = results["sft"], micro_batch("sft") or 8
    assert (sft["before"]["batch"], sft["before"]["grad_accum"]) == (8, 1)  # the whole batch at once
    assert (sft["after"]["batch"], sft["after"]["grad_accum"]) == (micro, 8 // micro)
    grpo = results["grpo"]
    assert (grpo["before"]["batch"], grpo["before"]["grad_accum"]) == (32, 1)
    assert (grpo["after"]["batch"], grpo["after"]["grad_accum"]) == (8, 4)
    assert (grpo["before"]["trainer"], grpo["after"]["trainer"]) == ("ModelHeadGRPOTrainer", "LengthGroupedGRPOTrainer")
    assert (grpo["before"]["model_head"], grpo["after"]["model_head"]) == (False, True)  # TRL's fused head before
    for arm in ("before", "after"):  # rollouts and update timed apart, the same 32 rollouts per step
        assert 0 < grpo[arm]["rollout_s"] < grpo[arm]["step_s"]
        assert grpo[arm]["update_s"] > 0
    gen = results["generate"]
    assert gen["before"]["dtype"] == "float32" and gen["before"]["tokens_per_s"] > 0
    assert (gen["before"]["attention"], gen["after"]["dtype"]) == ("sdpa", "bfloat16" if fast_bf16() else "float32")
    for kind in ("sft", "grpo", "reward_model", "generate"):  # --profile: the after arm's costliest ops
        assert "profile" not in results[kind]["before"]
        top = results[kind]["after"]["profile"]
        assert len(top) == 3 and all(op["op"] and op["calls"] > 0 for op in top)
        assert [op["self_s"] for op in top] == sorted((op["self_s"] for op in top), reverse=True)
        assert 0 < sum(op["share"] for op in top) <= 1
    printed = roofline.table(results)
    assert "bfloat16" in printed and printed.count("\n") == 1 + 2 * 4 + 3 * 4


@pytest.mark.slow
@pytest.mark.parametrize(("arm", "lever"), [("ungrouped", "trainer"), ("fused", "model_head")])
def test_bench_train_isolates_one_grpo_lever(tiny_model, arm, lever):
    """`--arms ungrouped after`: only the trainer class differs (length-grouped micro-batches);
    `--arms fused after`: only the LM head that scores GRPO's log-probabilities."""
    results = roofline.bench_train(str(tiny_model), kinds=("grpo",), steps=2, new_tokens=16, arms=(arm, "after"))
    baseline, after = results["grpo"][arm], results["grpo"]["after"]
    assert "error" not in baseline and "error" not in after, results["grpo"]
    assert after["trainer"] == "LengthGroupedGRPOTrainer" and after["model_head"] is True
    for key in ("trainer", "model_head", "bf16", "gradient_checkpointing", "batch", "grad_accum"):
        assert (baseline[key] != after[key]) == (key == lever), key
    assert results["grpo"]["speedup"] == round(baseline["step_s"] / after["step_s"], 2)
    assert arm in roofline.table(results)


@pytest.mark.parametrize("arms", [("after", "after"), ("after", "faster")])
def test_bench_train_wants_two_different_known_arms(arms):
    with pytest.raises(ValueError, match="--arms"):
        roofline.bench_train("default", kinds=("grpo",), arms=arms)


def test_gpu_check_runs_a_valid_plan(tmp_path, capsys):
    """`make gpu-check` cannot run here (no GPU); its pipeline overrides are checked as a dry run."""
    import importlib.util

    from posttrain.cli import main
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    args = ["run", "pipelines/demo.yaml", "--dry-run", "--output-dir", str(tmp_path / "run"), *check.SHORT, *check.VLLM]
    assert main(args) == 0
    plan = capsys.readouterr().out
    assert "vllm" in plan


@pytest.mark.parametrize("entropy_bonus", [False, True])
def test_on_cpu_grpo_scores_with_the_models_head_as_trls_fused_head_does(tmp_path, tiny_model, entropy_bonus):
    """posttrain/core/model_head.py: rows with left-padded prompts and right-padded completions, in
    float32, at the rollouts' temperature. The model's own head gives TRL's log-probabilities,
    entropies and their gradients on every completion token."""
    from datasets import Dataset

    from posttrain.core.model_head import ModelHeadGRPOTrainer
    ctx = StageContext(stage_id="rl", dir=tmp_path / "rl", input_model=str(tiny_model))
    options = GRPOOptions(num_generations=2, max_completion_length=8, length_grouped=False,
                          entropy_coef=0.01 if entropy_bonus else 0.0,
                          train=TrainOptions(max_steps=1, batch_size=4, save_steps=100,
                                             trainer={"report_to": [], "disable_tqdm": True, "bf16": False}))
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi."}]}] * 4)
    trainer = grpo_trainer(ctx, options, rows, [longer], "rl.train")
    assert type(trainer) is ModelHeadGRPOTrainer and trainer.temperature != 1.0
    torch.manual_seed(0)
    ids = torch.randint(0, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # prompt padding on the left
    mask[1, -4:] = 0  # completion padding on the right
    mask[2, :1] = 0
    completion = mask[:, -6:].bool()
    results = []
    for head in (True, False):
        trainer.model_head = head
        trainer.model.zero_grad()
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 6, batch_size=2,
                                                                         compute_entropy=True)
        assert logps.shape == entropies.shape == (3, 6)
        # entropy enters the loss (and needs its gradient) only as the entropy bonus
        (logps[completion].sum() + entropy_bonus * entropies[completion].sum()).backward()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in trainer.model.parameters()]
        results.append((logps.detach()[completion], entropies.detach()[completion], grads))
    (ours, our_entropy, our_grads), (theirs, their_entropy, their_grads) = results
    assert (ours < 0).all() and torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(our_entropy, their_entropy, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in our_grads)
    for a, b in zip(our_grads, their_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_residual_stream_keeps_the_kv_cache_in_the_autocast_dtype(tiny_model):
    """Under a bf16 autocast over float32 weights, the KV cache is float32 (each decoding step casts it
    back for attention's matmuls); with the residual stream in bf16 it is bf16, the weights untouched."""
    from posttrain.core.models import load_model
    model, _ = load_model(tiny_model, train=True)
    ids = torch.randint(0, 200, (2, 9))
    caches = {}
    for dtype in (None, torch.bfloat16):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), residual_stream(model, dtype):
            cache = model(input_ids=ids, use_cache=True).past_key_values
        caches[dtype] = {t.dtype for layer in cache.layers for t in (layer.keys, layer.values)}
    assert caches == {None: {torch.float32}, torch.bfloat16: {torch.bfloat16}}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not model.get_input_embeddings()._forward_hooks  # the hook is gone after the block
