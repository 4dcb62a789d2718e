"""The saved tokenizer renders conversations exactly as Qwen3's official template does."""

from __future__ import annotations

import jinja2
import pytest
from transformers import AutoTokenizer
from trl.chat_template_utils import qwen3_chat_template

from posttrain.chat import (
    BUDGET_STOP_TEXT,
    EMPTY_THINK,
    completion_text,
    last_flag,
    resolve_mode,
    split_think,
    with_flag,
)
from posttrain.models import prepare_model


def official(messages, **kwargs) -> str:
    """Qwen3's template text rendered by plain Jinja (as the Hub tokenizer_config would)."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v: __import__("json").dumps(v)
    return env.from_string(qwen3_chat_template).render(messages=messages, **kwargs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("prep") / "model"
    prepare_model(out, tiny_model)
    return AutoTokenizer.from_pretrained(out)


CASES = {
    "think": ([{"role": "user", "content": "What is 2+2?"}], {}),
    "no_think": ([{"role": "user", "content": "What is 2+2? /no_think"}], {"enable_thinking": False}),
    "system": ([{"role": "system", "content": "You are terse. /think"},
                {"role": "user", "content": "Hi"}], {}),
    "multi_turn_history": ([
        {"role": "user", "content": "First? /think"},
        {"role": "assistant", "content": "One.", "reasoning_content": "hidden first thought"},
        {"role": "user", "content": "Second? /no_think"},
        {"role": "assistant", "content": "<think>\ninline thought\n</think>\n\nTwo."},
        {"role": "user", "content": "Third?"}], {}),
    "last_turn_keeps_reasoning": ([
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A", "reasoning_content": "kept"}], {"add_generation_prompt": False}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prepared_tokenizer_matches_official_template(prepared, name):
    messages, kwargs = CASES[name]
    kwargs = {"add_generation_prompt": True, **kwargs}
    ours = prepared.apply_chat_template(messages, tokenize=False, **kwargs)
    assert ours == official(messages, **kwargs)


def test_known_renderings(prepared):
    # Report Table 9, the non-thinking training format.
    msgs = [{"role": "user", "content": "q /no_think"}, {"role": "assistant", "content": "r", "reasoning_content": ""}]
    assert prepared.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>user\nq /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nr<|im_end|>\n")
    gen = prepared.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert gen.endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    # Reasoning of earlier turns is stripped from history.
    hist = prepared.apply_chat_template(CASES["multi_turn_history"][0], tokenize=False, add_generation_prompt=True)
    assert "hidden first thought" not in hist and "inline thought" not in hist
    assert hist.count("<think>") == 0


def test_think_tags_are_plain_text(prepared):
    ids = prepared.encode("<think>\nx\n</think>", add_special_tokens=False)
    assert "<think>" not in prepared.all_special_tokens and len(prepared) == 49152  # vocabulary not extended
    assert prepared.decode(ids, skip_special_tokens=True) == "<think>\nx\n</think>"
    assert prepared.eos_token == "<|im_end|>" and prepared.pad_token != prepared.eos_token


def test_flags_last_one_wins():
    two_users = [{"role": "user", "content": "a /think"}, {"role": "user", "content": "b /no_think"}]
    assert last_flag(two_users) == "no_think"
    assert last_flag([{"role": "system", "content": "/no_think"}, {"role": "user", "content": "b /think"}]) == "think"
    assert last_flag([{"role": "user", "content": "a/no_think path /think/x"}]) is None
    assert last_flag([{"role": "assistant", "content": "/no_think"}]) is None
    assert resolve_mode([{"role": "user", "content": "x"}]) == "think"
    assert resolve_mode([{"role": "user", "content": "x /think"}], enable_thinking=False) == "no_think"
    flagged = with_flag([{"role": "user", "content": "x"}], "no_think")
    assert flagged[-1]["content"] == "x /no_think"
    in_system = with_flag([{"role": "user", "content": "x"}], "think", where="system")
    assert in_system[0] == {"role": "system", "content": "/think"}


def test_split_think_and_completion_forms():
    assert split_think("<think>\nr\n</think>\n\na") == ("r", "a")
    assert split_think(EMPTY_THINK + "a") == ("", "a")
    assert split_think("<think>\nunfinished") == ("unfinished", "")
    assert split_think("plain") == (None, "plain")
    conversational = [{"role": "assistant", "content": "a", "reasoning_content": "r"}]
    assert completion_text(conversational) == "<think>\nr\n</think>\n\na"
    assert "\n</think>\n\n" in BUDGET_STOP_TEXT and not BUDGET_STOP_TEXT.endswith(".")


@pytest.mark.parametrize("special", [False, True], ids=["as_in_qwen3", "marked_special"])
def test_a_tokenizer_with_think_tokens_keeps_them_as_single_ids(tmp_path, special):
    """Qwen3's tokenizer has `<think>`/`</think>` as tokens (ids 151667/151668, not special): the format
    keeps those ids, training masks cover them, and decoding keeps the tags (also when a tokenizer
    marks them special, which would otherwise drop them)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from posttrain.chat import TRAINING_CHAT_TEMPLATE
    from posttrain.generation import GenerationEngine
    from posttrain.models import apply_chat_format, default_tokenizer_dir
    tok = AutoTokenizer.from_pretrained(default_tokenizer_dir())
    tok.add_tokens([AddedToken(t, special=special, normalized=False) for t in ("<think>", "</think>")],
                   special_tokens=special)
    tok.save_pretrained(tmp_path)
    tok = apply_chat_format(AutoTokenizer.from_pretrained(tmp_path))
    think, close = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert (think, close) == (49152, 49153) and len(tok) == 49154  # kept, not re-added or split

    msgs = [{"role": "user", "content": "q /no_think"}, {"role": "assistant", "content": "r", "reasoning_content": ""}]
    gen = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, enable_thinking=False, return_dict=False)
    assert gen[-4:] == [think, *tok.encode("\n\n", add_special_tokens=False), close,
                        *tok.encode("\n\n", add_special_tokens=False)][-4:]
    assert think in gen and close in gen
    for reasoning in ("", "x is 2"):  # the non-thinking and the thinking training format
        msgs[-1]["reasoning_content"] = reasoning
        out = tok.apply_chat_template(msgs, chat_template=TRAINING_CHAT_TEMPLATE, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids, mask = out["input_ids"], out["assistant_masks"]
        trained = [t for t, m in zip(ids, mask, strict=True) if m]
        assert trained[0] == think and close in trained and tok.eos_token_id in trained  # think block in the loss

    engine = GenerationEngine(tok)
    ids = [think, *tok.encode("x is 2", add_special_tokens=False), close,
           *tok.encode("\n\nr", add_special_tokens=False), tok.eos_token_id]
    assert engine.decode(ids) == "<think>x is 2</think>\n\nr"
    assert split_think(engine.decode(ids)) == ("x is 2", "r")
