"""`posttrain generate`, `posttrain chat`, and the thinking budget from the command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from posttrain import cli
from posttrain.core.chat import BUDGET_STOP_TEXT, EMPTY_THINK
from posttrain.core.generation import GenerationEngine
from posttrain.interactive import chat_loop
from tests.conftest import REPO


class Thinker(GenerationEngine):
    """Thinks for ever unless the prompt pre-fills the empty block or ends with the budget text."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.prefixes, self.max_new_tokens = [], []

    def _sample(self, prefixes, max_new_tokens, sampling, seed, logprobs, progress):
        self.prefixes += prefixes
        self.max_new_tokens.append(max_new_tokens)
        stop = self.tokenizer.encode(BUDGET_STOP_TEXT, add_special_tokens=False)
        empty = self.tokenizer.encode(EMPTY_THINK, add_special_tokens=False)
        out = []
        for p in prefixes:
            if p[-len(stop):] == stop or p[-len(empty):] == empty:
                out.append((self.tokenizer.encode("Four.", add_special_tokens=False), None, "stop"))
            else:
                ids = self.tokenizer.encode("<think>\n" + "hmm " * 100, add_special_tokens=False)
                out.append((ids[:max_new_tokens], None, "length"))
        return out


@pytest.fixture
def thinker(monkeypatch, tiny_model):
    from posttrain.core.generation import EnginePool
    from posttrain.core.models import load_tokenizer
    engine = Thinker(load_tokenizer(tiny_model))
    monkeypatch.setattr(EnginePool, "get", lambda self, *a, **k: engine)  # every engine the CLI asks for
    return engine


@pytest.mark.parametrize("extra,budget_hit", [(["--mode", "think", "--thinking-budget", "5"], True),
                                              (["--mode", "no_think", "--thinking-budget", "5"], False),
                                              (["--thinking-budget", "7"], True)])
def test_generate_modes_and_budget(thinker, tiny_model, capsys, extra, budget_hit):
    assert cli.main(["generate", "--model", str(tiny_model), "--prompt", "2 + 2?", "--max-new-tokens", "30",
                     "--json", *extra]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget_hit"] is budget_hit and out["answer"] == "Four."
    if budget_hit:
        budget = int(extra[extra.index("--thinking-budget") + 1])
        four = len(thinker.tokenizer.encode("Four.", add_special_tokens=False))
        assert out["text"].endswith(BUDGET_STOP_TEXT + "Four.") and out["tokens"] == budget + four
    else:
        assert out["text"] == EMPTY_THINK + "Four."
    # streamed (no --json), the same reply
    assert cli.main(["generate", "--model", str(tiny_model), "--prompt", "2 + 2?", "--max-new-tokens", "30",
                     *extra]) == 0
    assert capsys.readouterr().out == out["text"] + "\n"


def test_generate_bad_budget(thinker, tiny_model, capsys):
    assert cli.main(["generate", "--model", str(tiny_model), "--prompt", "x", "--thinking-budget", "0"]) == 2
    assert "--thinking-budget must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_end_to_end_on_a_real_model(tiny_model):
    for mode in ("think", "no_think"):
        run = subprocess.run([sys.executable, "-m", "posttrain.cli", "generate", "--model", str(tiny_model),
                              "--prompt", "Say hi.", "--mode", mode, "--thinking-budget", "3", "--max-new-tokens",
                              "6", "--seed", "0", "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)
        assert 0 < out["tokens"] <= 6 and out["text"].startswith(EMPTY_THINK) is (mode == "no_think")
        assert out["finish_reason"] == ("length" if out["tokens"] == 6 else "stop")
        # a random model opens no think block: its answer is not cut by the budget
        assert out["budget_hit"] is False and BUDGET_STOP_TEXT not in out["text"]


def test_chat_keeps_history_as_the_template_does(thinker, tiny_model):
    lines = iter(["first question /think", "second /no_think", "/reset", "fresh start", "/exit"])
    out = io.StringIO()
    history = chat_loop(thinker, read=lambda prompt: next(lines), out=out, max_new_tokens=20, thinking_budget=4)
    text = out.getvalue()
    assert BUDGET_STOP_TEXT in text and "Four." in text and "(new conversation)" in text
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "fresh start"
    # the second turn was rendered with the first answer but without the first turn's reasoning
    second = next(thinker.tokenizer.decode(p) for p in thinker.prefixes if "second /no_think" in
                  thinker.tokenizer.decode(p))
    assert second == ("<|im_start|>user\nfirst question /think<|im_end|>\n<|im_start|>assistant\nFour.<|im_end|>\n"
                      "<|im_start|>user\nsecond /no_think<|im_end|>\n<|im_start|>assistant\n")


def test_eval_budget_curve_writes_json_and_png(tmp_path, tiny_model, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("eval:\n  suites: {lin: {family: linear, n: 2, seed: 10001}}\n  samples: 1\n"
                      "  pass_k: [1]\n  max_new_tokens: 8\n")
    out = tmp_path / "curve.json"
    assert cli.main(["eval", "--model", str(tiny_model), "--config", str(config), "--budgets", "4", "2",
                     "--output", str(out)]) == 0
    curve = json.loads(out.read_text())
    assert [p["budget"] for p in curve["points"]] == [2, 4, None]
    assert set(curve["points"][0]["suites"]["lin"]) >= {"accuracy", "accuracy_se", "mean_length", "budget_hit"}
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert "budget none: lin" in capsys.readouterr().err
    assert cli.main(["eval", "--model", str(tiny_model), "--config", str(config), "--budgets", "0"]) == 2


def test_eval_applies_the_thinking_budget(thinker, tmp_path, tiny_model):
    """`posttrain eval --thinking-budget 3` on a model that never closes its think block: every
    think-mode sample is cut after exactly 3 thinking tokens, gets the early-stop text and answers;
    no-think mode is untouched; without the budget the same model thinks to max_new_tokens."""
    config = tmp_path / "eval.yaml"
    config.write_text("eval:\n  suites: {lin: {family: linear, n: 2, seed: 10001}}\n  modes: [think, no_think]\n"
                      "  samples: 2\n  pass_k: [1]\n  max_new_tokens: 30\n")
    four = len(thinker.tokenizer.encode("Four.", add_special_tokens=False))
    stop = thinker.tokenizer.encode(BUDGET_STOP_TEXT, add_special_tokens=False)
    out = tmp_path / "r.json"
    assert cli.main(["eval", "--model", str(tiny_model), "--config", str(config), "--thinking-budget", "3",
                     "--output", str(out)]) == 0
    lin = json.loads(out.read_text())["suites"]["lin"]
    assert lin["think"]["settings"]["thinking_budget"] == 3
    assert lin["think"]["budget_hit"] == 1.0 and lin["think"]["truncated"] == 0.0
    assert lin["think"]["mean_length"] == 3 + four  # 3 thinking tokens, then the answer
    assert lin["no_think"]["budget_hit"] == 0.0 and lin["no_think"]["mean_length"] == four
    # think: phase one asked for 3 tokens, phase two (all 2 items x 2 samples) went on after the stop text
    assert thinker.max_new_tokens == [3, 27, 30]
    assert sum(p[-len(stop):] == stop for p in thinker.prefixes) == 4

    thinker.max_new_tokens.clear()
    assert cli.main(["eval", "--model", str(tiny_model), "--config", str(config), "--output", str(out)]) == 0
    lin = json.loads(out.read_text())["suites"]["lin"]
    assert lin["think"]["settings"]["thinking_budget"] is None
    assert lin["think"]["budget_hit"] == 0.0 and lin["think"]["truncated"] == 1.0
    assert lin["think"]["mean_length"] == 30 and thinker.max_new_tokens == [30, 30]
