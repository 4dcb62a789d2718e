"""The generation engine: modes, n samples, logprobs, and the thinking budget."""

from __future__ import annotations

import argparse
import sys
import types

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from posttrain.cli import _pool
from posttrain.core.chat import BUDGET_STOP_TEXT, EMPTY_THINK, THINK_CLOSE
from posttrain.core.generation import EnginePool, GenerationEngine, TransformersEngine
from posttrain.core.generation.hf import TopKSampler
from posttrain.core.models import fast_bf16, prepare_model

PROMPTS = [[{"role": "user", "content": "What is 3 + 4?"}], [{"role": "user", "content": "Say hi. /no_think"}]]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return TransformersEngine.load(tiny_model)


def test_shapes_modes_and_logprobs(engine):
    outs = engine.generate(PROMPTS, n=3, mode="no_think", max_new_tokens=12, seed=0, logprobs=True)
    assert [len(o) for o in outs] == [3, 3]
    for c in (c for o in outs for c in o):
        assert c.text.startswith(EMPTY_THINK) and c.reasoning == ""
        assert 0 < len(c.token_ids) <= 12 and len(c.logprobs) == len(c.token_ids)
        assert c.finish_reason == ("length" if len(c.token_ids) == 12 else "stop")  # stopped early: at EOS
        assert engine.tokenizer.eos_token_id not in c.token_ids
    # sampled (T 0.7, top-k 20) from a left-padded batch, the logprobs are still the raw model's
    # (as vLLM's default), not the temperature/top-k-processed distribution the sample was drawn from
    for prompt, samples in zip(PROMPTS, outs, strict=True):
        prefix = engine.render(prompt, "no_think")
        for c in samples:
            ids = torch.tensor([prefix + c.token_ids], device=engine.model.device)
            with torch.no_grad():
                logits = engine.model(ids).logits[0, len(prefix) - 1:-1].float().cpu()
            raw = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(c.logprobs), raw, atol=1e-4 if engine.model.dtype == torch.float32
                                  else 5e-2)
    # the three samples of one prompt differ (sampling), and a seed reproduces them
    texts = [c.text for c in outs[0]]
    assert len(set(texts)) > 1
    again = engine.generate(PROMPTS, n=3, mode="no_think", max_new_tokens=12, seed=0)
    assert [c.text for c in again[0]] == texts


def test_logprobs_match_a_forward_pass(engine):
    [[c]] = engine.generate(PROMPTS[:1], mode="think", max_new_tokens=6, temperature=0, logprobs=True)
    prefix = engine.render(PROMPTS[0], "think")
    ids = torch.tensor([prefix + c.token_ids], device=engine.model.device)
    with torch.no_grad():
        logits = engine.model(ids).logits[0, len(prefix) - 1:-1].float().cpu()
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
    atol = 1e-4 if engine.model.dtype == torch.float32 else 5e-2  # bf16 where native (GPU, AVX512-BF16)
    assert torch.allclose(torch.tensor(c.logprobs), expected, atol=atol)


def test_option_probs_are_the_next_token_distribution_over_the_options(engine):
    """A batch of prompts of different lengths (left padding) gives each prompt's own distribution,
    the one a single unpadded forward pass gives, renormalised over the options."""
    prompts = [[{"role": "user", "content": "Is 2 + 2 = 4? Answer Yes or No."}],
               [{"role": "user", "content": "Is the sky green? Think about it, then answer Yes or No."}]]
    options = ["Yes", "No", "Maybe"]
    got = engine.option_probs(prompts, options, mode="no_think")
    ids = [engine.tokenizer.encode(o, add_special_tokens=False)[0] for o in options]
    for prompt, probs in zip(prompts, got, strict=True):
        prefix = engine.render(prompt, "no_think")
        assert engine.tokenizer.decode(prefix).endswith(EMPTY_THINK)  # scored after the empty think block
        with torch.no_grad():
            logits = engine.model(torch.tensor([prefix], device=engine.model.device)).logits[0, -1].float().cpu()
        expected = logits[ids].softmax(-1)
        assert sum(probs) == pytest.approx(1.0)
        assert torch.allclose(torch.tensor(probs, dtype=torch.float32), expected, atol=1e-4)
    assert got[0] != got[1]
    with pytest.raises(ValueError, match="distinct tokens"):
        engine.option_probs(prompts, ["Yes", "Yes"])


class ScriptedEngine(GenerationEngine):
    """Emits a fixed token stream per prefix: thinks forever unless told the budget text was appended."""

    def __init__(self, tokenizer, think_ids, answer_ids):
        super().__init__(tokenizer)
        self.think_ids, self.answer_ids, self.calls = think_ids, answer_ids, []

    def _sample(self, prefixes, max_new_tokens, sampling, seed, logprobs, progress):
        self.calls.append(max_new_tokens)
        out = []
        for p in prefixes:
            stop = self.tokenizer.encode(BUDGET_STOP_TEXT, add_special_tokens=False)
            if p[-len(stop):] == stop:  # phase two: after the budget text
                out.append((self.answer_ids[:max_new_tokens], None, "stop"))
            else:
                out.append((self.think_ids[:max_new_tokens], None, "length"))
        return out


@pytest.mark.parametrize("budget", [1, 5, 17])
def test_thinking_budget_stops_thinking_then_answers(engine, budget):
    tok = engine.tokenizer
    think = tok.encode("<think>\n" + "step " * 200, add_special_tokens=False)
    answer = tok.encode("The answer is 7.", add_special_tokens=False)
    scripted = ScriptedEngine(tok, think, answer)
    [[c]] = scripted.generate(PROMPTS[:1], mode="think", max_new_tokens=64, thinking_budget=budget)
    assert c.budget_hit and scripted.calls == [budget, 64 - budget]
    thinking, _, rest = c.text.partition(BUDGET_STOP_TEXT)
    assert len(tok.encode(thinking, add_special_tokens=False)) <= budget
    assert rest == "The answer is 7." and c.answer == "The answer is 7."
    assert c.token_ids == think[:budget] + answer  # generated tokens only; the budget text is ours


class PrefilledEngine(TransformersEngine):
    """A template that opens the think block itself (as thinking-only templates do)."""

    def render(self, messages, mode):
        return super().render(messages, mode) + self.tokenizer.encode("<think>\n", add_special_tokens=False)


def test_thinking_budget_on_a_real_model(engine):
    budget = 4
    # a random model never opens a think block: its answer is not cut by the budget
    [plain] = engine.generate(PROMPTS[:1], n=4, mode="think", max_new_tokens=24, thinking_budget=budget, seed=1)
    assert not any(c.budget_hit or BUDGET_STOP_TEXT in c.text for c in plain)
    prefilled = PrefilledEngine(engine.model, engine.tokenizer)
    outs = prefilled.generate(PROMPTS[:1], n=4, mode="think", max_new_tokens=24, thinking_budget=budget, seed=1)
    assert any(c.budget_hit for c in outs[0])  # a random model does not close its think block in 4 tokens
    for c in outs[0]:
        if c.budget_hit:
            decode = lambda ids: engine.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
            # exactly `budget` generated thinking tokens, the early-stop text, then the answer tokens
            assert c.text == decode(c.token_ids[:budget]) + BUDGET_STOP_TEXT + decode(c.token_ids[budget:])
            assert THINK_CLOSE not in decode(c.token_ids[:budget])
        else:  # it stopped by itself within the budget
            assert len(c.token_ids) <= budget or THINK_CLOSE in c.text


def test_no_budget_in_no_think_mode(engine):
    [[c]] = engine.generate(PROMPTS[:1], mode="no_think", max_new_tokens=8, thinking_budget=2, seed=0)
    assert not c.budget_hit and BUDGET_STOP_TEXT not in c.text


def test_unknown_backend_is_refused(tiny_model):
    for make in (lambda: EnginePool("tgi"), lambda: EnginePool().get(tiny_model, backend="tgi")):
        with pytest.raises(ValueError, match=r"backend must be one of \('transformers', 'vllm'\), got 'tgi'"):
            make()
    assert TransformersEngine.backend == "transformers"


def test_engine_dtype_follows_the_machine_unless_set(tiny_model, tmp_path):
    """`auto` is bfloat16 exactly where its matmuls are native (fast_bf16), float32 elsewhere; a set
    dtype wins; the engine decodes with the model's own attention (sdpa); the weights a run trains from stay float32."""
    auto = TransformersEngine.load(tiny_model)
    assert auto.model.dtype == (torch.bfloat16 if fast_bf16() else torch.float32)
    pooled = EnginePool(transformers={"dtype": "float32"}).get(tiny_model)
    assert pooled.model.dtype == torch.float32
    if auto.model.device.type == "cpu":
        assert auto.model.config._attn_implementation == pooled.model.config._attn_implementation == "sdpa"
    # the same greedy tokens' logprobs in both precisions, within bf16's rounding
    [[a]] = auto.generate(PROMPTS[:1], mode="think", max_new_tokens=6, temperature=0, logprobs=True)
    [[b]] = pooled.generate(PROMPTS[:1], mode="think", max_new_tokens=6, temperature=0, logprobs=True)
    n = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=False)) if x != y), len(a.token_ids))
    assert n > 0 and torch.allclose(torch.tensor(a.logprobs[:n]), torch.tensor(b.logprobs[:n]), atol=5e-2)
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, got 'fp8'"):
        TransformersEngine.load(tiny_model, dtype="fp8")
    with pytest.raises(ValueError, match="transformers: unknown setting.s. max_model_len"):
        EnginePool(transformers={"max_model_len": 64})
    for flag, settings in (("auto", {}), ("float32", {"dtype": "float32"})):  # `posttrain eval --dtype`
        pool = _pool(argparse.Namespace(backend="transformers", dtype=flag))
        assert pool.transformers == pool.vllm == settings
    prepare_model(tmp_path / "m", tiny_model)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype="auto")
    assert {p.dtype for p in saved.parameters()} == {torch.float32}


def test_vllm_backend_fails_clearly_without_vllm(tiny_model, monkeypatch):
    """Runs where vLLM is installed too: the import is made to fail as it does where vLLM is absent."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # import_vllm sets it; restored after
    with pytest.raises(RuntimeError, match="backend 'vllm' needs vLLM .*make install-vllm"):
        EnginePool("vllm").get(tiny_model)


@pytest.mark.parametrize("native", [True, False])
def test_vllm_precision_on_cpu_follows_the_machine(monkeypatch, native):
    """vLLM's engines on CPU, the offline one and the one TRL colocates in a trainer, run bf16 only where
    bf16 matmuls are native (`fast_bf16`); a set dtype wins; on a GPU, a vLLM server or without vLLM
    rollouts nothing is changed. TRL builds `vllm.LLM` with no dtype: a stand-in records what it gets."""
    from posttrain.core.generation import vllm as backend
    monkeypatch.setattr(backend, "fast_bf16", lambda: native)
    monkeypatch.setattr(backend, "on_cpu", lambda: True)
    want = "bfloat16" if native else "float32"
    assert backend.engine_kwargs()["dtype"] == want
    assert backend.engine_kwargs({"dtype": "float32", "max_model_len": 64})["dtype"] == "float32"

    class LLM:
        def __init__(self, model, dtype="auto", **kwargs):
            self.dtype = dtype
    monkeypatch.setattr(backend, "import_vllm", lambda: types.SimpleNamespace(LLM=LLM))
    with backend.colocated_dtype(types.SimpleNamespace(use_vllm=True, vllm_mode="colocate")):
        assert LLM("m").dtype == want and LLM("m", dtype="float16").dtype == "float16"
    assert LLM("m").dtype == "auto"  # put back after the block
    for args in (types.SimpleNamespace(use_vllm=True, vllm_mode="server"), types.SimpleNamespace(use_vllm=False),
                 None):
        with backend.colocated_dtype(args):
            assert LLM("m").dtype == "auto"
    monkeypatch.setattr(backend, "on_cpu", lambda: False)  # a GPU: vLLM's own choice
    assert "dtype" not in backend.engine_kwargs()
    with backend.colocated_dtype(types.SimpleNamespace(use_vllm=True, vllm_mode="colocate")):
        assert LLM("m").dtype == "auto"


def test_unset_sampling_knobs_reach_model_generate_per_mode(engine, monkeypatch):
    """The report's sampling (thinking T 0.6 / top-p 0.95 / top-k 20, non-thinking 0.7 / 0.8 / 20) is
    what `model.generate` receives when the caller sets none (as the settings of its top-k sampler), in
    `generate`, `stream`, and both phases of the thinking budget (the model's generation_config holds
    the thinking settings, so the non-thinking ones must be passed explicitly)."""
    seen = []
    original = engine.model.generate

    def spy(*args, **kwargs):
        [sampler] = kwargs.get("logits_processor") or [None]
        knobs = sampler.settings if sampler else {k: kwargs.get(k) for k in ("temperature", "top_p", "top_k")}
        seen.append({"sampler": sampler is not None, "do_sample": kwargs.get("do_sample"), **knobs})
        return original(*args, **kwargs)
    monkeypatch.setattr(engine.model, "generate", spy)
    think = {"sampler": True, "do_sample": False, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
    no_think = {"sampler": True, "do_sample": False, "temperature": 0.7, "top_p": 0.8, "top_k": 20}
    engine.generate(PROMPTS[:1], mode="think", max_new_tokens=2, seed=0)
    assert seen == [think]
    engine.generate(PROMPTS[:1], mode="no_think", max_new_tokens=2, seed=0)
    assert seen[1:] == [no_think]
    seen.clear()
    list(engine.stream(PROMPTS[0], mode="think", max_new_tokens=2, seed=0))
    list(engine.stream(PROMPTS[0], mode="no_think", max_new_tokens=2, seed=0))
    list(engine.stream(PROMPTS[1], mode=None, max_new_tokens=2, seed=0))  # the prompt's /no_think flag decides
    assert seen == [think, no_think, no_think]
    seen.clear()
    prefilled = PrefilledEngine(engine.model, engine.tokenizer)  # thinks: the budget's second phase runs
    [[c]] = prefilled.generate(PROMPTS[:1], mode="think", max_new_tokens=6, thinking_budget=2, seed=0)
    assert c.budget_hit and seen == [think, think]
    seen.clear()
    engine.generate(PROMPTS[:1], mode="no_think", max_new_tokens=2, temperature=1.0, seed=0)  # the caller's wins
    engine.generate(PROMPTS[:1], mode="no_think", max_new_tokens=2, temperature=0)  # greedy: no sampling knobs
    engine.generate(PROMPTS[:1], mode="no_think", max_new_tokens=2, top_k=0, seed=0)  # no top-k: transformers samples
    assert seen == [{**no_think, "temperature": 1.0},
                    {"sampler": False, "do_sample": False, "temperature": None, "top_p": None, "top_k": None},
                    {"sampler": False, "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": None}]


def test_flags_decide_each_prompts_sampling_in_one_batch(engine, monkeypatch):
    """`mode=None`: each prompt samples with the report's settings for its own last flag, in one batch
    (the sampler's temperature and top-p per row); knobs one batch cannot mix (no top-k) split it by
    setting, and every completion still belongs to its own prompt."""
    prompts = [[{"role": "user", "content": "Add 2 and 3. /think"}], [{"role": "user", "content": "Hi. /no_think"}],
               [{"role": "system", "content": "/no_think"}, {"role": "user", "content": "Name a colour."}]]
    seen, original = [], engine.model.generate

    def spy(*args, **kwargs):
        [sampler] = kwargs.get("logits_processor") or [None]
        seen.append((len(kwargs["input_ids"]), sampler.settings if sampler else kwargs.get("temperature")))
        return original(*args, **kwargs)
    monkeypatch.setattr(engine.model, "generate", spy)
    engine.generate(prompts, mode=None, max_new_tokens=3, seed=0)
    assert seen == [(3, {"temperature": [0.6, 0.7, 0.7], "top_p": [0.95, 0.8, 0.8], "top_k": 20})]
    seen.clear()
    outs = engine.generate(prompts, mode=None, max_new_tokens=4, top_k=0, seed=0, logprobs=True)
    assert sorted(seen) == [(1, 0.6), (2, 0.7)]
    for prompt, [c] in zip(prompts, outs, strict=True):
        prefix = engine.render(prompt, None)
        with torch.no_grad():
            logits = engine.model(torch.tensor([prefix + c.token_ids])).logits[0, len(prefix) - 1:-1].float()
        raw = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(c.logprobs), raw, atol=1e-4 if engine.model.dtype == torch.float32
                              else 5e-2)


def test_top_k_sampler_draws_from_transformers_sampling_distribution():
    """The engine's sampler gives each token the probability transformers' own sampling does
    (temperature, top-k, top-p warpers, then softmax), and leaves the token it draws as the only finite
    logit, so greedy search emits it; its draws follow those probabilities."""
    torch.manual_seed(0)
    scores = torch.randn(3, 500) * 3
    ids = torch.zeros(3, 1, dtype=torch.long)
    for temperature, top_p, top_k in [(0.6, 0.95, 20), (0.7, 0.8, 20), (1.0, 1.0, 5), (0.6, 0.95, 1000)]:
        reference = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k),
                                         TopPLogitsWarper(top_p)])(ids, scores.clone()).softmax(-1)
        sampler = TopKSampler(temperature, top_p, top_k)
        probs, index = sampler.candidates(ids, scores.clone())
        ours = torch.zeros_like(scores).scatter_(-1, index, probs)
        assert torch.allclose(ours, reference, atol=1e-6)
    # one setting per row (a batch of both modes): each row's distribution as its own setting gives it
    mixed = TopKSampler([0.6, 0.7, 0.6], [0.95, 0.8, 0.95], 20)
    probs, index = mixed.candidates(ids, scores.clone())
    for row, (temperature, top_p) in enumerate([(0.6, 0.95), (0.7, 0.8), (0.6, 0.95)]):
        alone, at = TopKSampler(temperature, top_p, 20).candidates(ids[row:row + 1], scores[row:row + 1].clone())
        assert torch.equal(index[row], at[0]) and torch.allclose(probs[row], alone[0])
    assert TopKSampler([0.6, 0.6], [0.95, 0.95], 20).settings == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    sampler = TopKSampler(0.6, 0.95, 20)
    counts = torch.zeros_like(scores)
    for _ in range(2000):
        out = sampler(ids, scores.clone())
        assert (out == 0).sum(-1).tolist() == [1, 1, 1] and torch.isinf(out).sum(-1).tolist() == [499] * 3
        counts += out == 0
    probs, index = sampler.candidates(ids, scores)
    expected = torch.zeros_like(scores).scatter_(-1, index, probs)
    assert (counts / 2000 - expected).abs().max() < 0.05  # 2000 draws: s.e. <= 0.011


def test_stream_is_generate_token_by_token(engine):
    for mode in ("think", "no_think"):
        pieces = list(engine.stream(PROMPTS[0], mode=mode, max_new_tokens=12, temperature=0))
        [[c]] = engine.generate(PROMPTS[:1], mode=mode, max_new_tokens=12, temperature=0)
        assert len(pieces) > 2 and "".join(pieces) == c.text


@pytest.mark.parametrize("thinks", [True, False])
def test_stream_applies_the_budget_only_to_thinking(engine, thinks):
    tok = engine.tokenizer
    start = "<think>\n" if thinks else "Plainly, "
    scripted = ScriptedEngine(tok, tok.encode(start + "step " * 50, add_special_tokens=False),
                              tok.encode("The answer is 7.", add_special_tokens=False))
    streamed = "".join(scripted.stream(PROMPTS[0], mode="think", max_new_tokens=40, thinking_budget=6))
    [[c]] = scripted.generate(PROMPTS[:1], mode="think", max_new_tokens=40, thinking_budget=6)
    assert streamed == c.text and c.budget_hit is thinks and (BUDGET_STOP_TEXT in streamed) is thinks


def test_the_pool_keeps_two_vllm_engines_open_and_closes_them(tiny_model, tmp_path, monkeypatch):
    """A run's vLLM engines: one per model and settings, shared by the jobs on it; a third evicts the
    oldest (a policy and a judge at most), and `close` (before training) frees them all. Transformers
    engines are not kept."""
    from posttrain.core.generation import pool as pools
    from posttrain.core.models import make_tiny_model
    closed = []

    class FakeVLLM:
        def __init__(self, path, tokenizer, **settings):
            self.path, self.settings = path, settings

        def close(self):
            closed.append((self.path, self.settings))
    monkeypatch.setattr(pools, "VLLMEngine", FakeVLLM)
    other = make_tiny_model(tmp_path / "other")
    pool = EnginePool("vllm", {"dtype": "float32"})
    first = pool.get(tiny_model)
    assert pool.get(tiny_model) is first and first.settings == {"dtype": "float32"}
    second = pool.get(tiny_model, max_model_len=64)  # other settings: another engine
    assert second is not first and second.settings == {"dtype": "float32", "max_model_len": 64}
    pool.get(other)
    assert closed == [(first.path, first.settings)]  # the oldest went
    pool.close()
    assert [c[0] for c in closed] == [str(tiny_model)] * 2 + [str(other)]
    engine = pool.get(tiny_model, backend="transformers")
    assert isinstance(engine, TransformersEngine) and pool.get(tiny_model, backend="transformers") is not engine
