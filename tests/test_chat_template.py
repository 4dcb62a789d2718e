"""The saved tokenizer renders conversations in Qwen3's hybrid chat format.

The expected strings below are written out by hand from Qwen3's published format (the Hub
template of Qwen/Qwen3-*, report Table 9, DESIGN.md section 1), not rendered by any template: the
project's template is TRL's copy of Qwen3's, so comparing it with that copy could never fail.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from posttrain.core.chat import (
    BUDGET_STOP_TEXT,
    EMPTY_THINK,
    SAMPLING,
    completion_text,
    last_flag,
    parse_assistant,
    resolve_mode,
    split_think,
    tools_system_message,
    with_flag,
)
from posttrain.core.models import prepare_model


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("prep") / "model"
    prepare_model(out, tiny_model)
    return AutoTokenizer.from_pretrained(out)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

# Qwen3's tool preamble (the system turn's text after any system message), written out by hand.
TOOLS_TEXT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def call(city):
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


# name: (messages, apply_chat_template kwargs, the exact text Qwen3's format gives)
GOLDEN = {
    "think_generation_prompt": (
        [{"role": "user", "content": "What is 2+2?"}], {"add_generation_prompt": True},
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"),
    "no_think_generation_prompt": (
        [{"role": "user", "content": "What is 2+2? /no_think"}],
        {"add_generation_prompt": True, "enable_thinking": False},
        "<|im_start|>user\nWhat is 2+2? /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    "enable_thinking_true_adds_nothing": (
        [{"role": "user", "content": "Hi"}], {"add_generation_prompt": True, "enable_thinking": True},
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    "system": (
        [{"role": "system", "content": "You are terse. /think"}, {"role": "user", "content": "Hi"}],
        {"add_generation_prompt": True},
        "<|im_start|>system\nYou are terse. /think<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"),
    "history_reasoning_stripped": (
        [{"role": "user", "content": "First? /think"},
         {"role": "assistant", "content": "One.", "reasoning_content": "hidden first thought"},
         {"role": "user", "content": "Second? /no_think"},
         {"role": "assistant", "content": "<think>\ninline thought\n</think>\n\nTwo."},
         {"role": "user", "content": "Third?"}],
        {"add_generation_prompt": True},
        "<|im_start|>user\nFirst? /think<|im_end|>\n"
        "<|im_start|>assistant\nOne.<|im_end|>\n"
        "<|im_start|>user\nSecond? /no_think<|im_end|>\n"
        "<|im_start|>assistant\nTwo.<|im_end|>\n"
        "<|im_start|>user\nThird?<|im_end|>\n"
        "<|im_start|>assistant\n"),
    "only_the_turn_after_the_last_query_keeps_reasoning": (
        [{"role": "user", "content": "First?"},
         {"role": "assistant", "content": "One.", "reasoning_content": "old thought"},
         {"role": "user", "content": "Second?"},
         {"role": "assistant", "content": "Two.", "reasoning_content": "\nnew thought\n"}],
        {},
        "<|im_start|>user\nFirst?<|im_end|>\n"
        "<|im_start|>assistant\nOne.<|im_end|>\n"
        "<|im_start|>user\nSecond?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nnew thought\n</think>\n\nTwo.<|im_end|>\n"),
    "last_turn_without_reasoning_gets_the_empty_block": (
        [{"role": "user", "content": "q /no_think"}, {"role": "assistant", "content": "r"}], {},
        "<|im_start|>user\nq /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nr<|im_end|>\n"),
    "tools_with_system_message": (
        [{"role": "system", "content": "You are a weather bot."},
         {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!", "reasoning_content": "greet them"},
         {"role": "user", "content": "Weather in Paris and Rome?"},
         {"role": "assistant", "content": "", "reasoning_content": "need both cities",
          "tool_calls": [call("Paris"), call("Rome")]},
         {"role": "tool", "content": '{"temp": 21}'},
         {"role": "tool", "content": '{"temp": 25}'},
         {"role": "assistant", "content": "Paris 21, Rome 25.", "reasoning_content": "compare"}],
        {"tools": [WEATHER]},
        "<|im_start|>system\nYou are a weather bot.\n\n" + TOOLS_TEXT + "<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nneed both cities\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n'
        '<tool_response>\n{"temp": 25}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n<think>\ncompare\n</think>\n\nParis 21, Rome 25.<|im_end|>\n"),
    "tools_without_system_call_with_text_then_pending_result": (
        [{"role": "user", "content": "Weather in Paris? /no_think"},
         {"role": "assistant", "content": "Checking.", "tool_calls": [
             {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
         {"role": "tool", "content": "sunny"}],
        {"tools": [WEATHER], "add_generation_prompt": True, "enable_thinking": False},
        "<|im_start|>system\n" + TOOLS_TEXT + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris? /no_think<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_prepared_tokenizer_renders_qwen3_format(prepared, name):
    messages, kwargs, expected = GOLDEN[name]
    assert prepared.apply_chat_template(messages, tokenize=False, **kwargs) == expected


def test_tool_helpers_write_and_read_qwen3_text():
    assert tools_system_message([WEATHER]) == {"role": "system", "content": TOOLS_TEXT}
    text = ('<think>\nneed it\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            "</tool_call><|im_end|>")
    assert parse_assistant(text) == {"role": "assistant", "reasoning_content": "need it",
                                     "tool_calls": [call("Paris")]}
    assert completion_text([{"role": "assistant", "content": "", "tool_calls": [call("Paris")]},
                            {"role": "tool", "content": "sunny"}]) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')


def test_budget_text_empty_block_and_sampling_are_the_reports():
    # Qwen's two-phase early-stop text, exactly (without the report's stray '.' after </think>)
    assert BUDGET_STOP_TEXT == ("\n\nConsidering the limited time by the user, I have to give the solution "
                                "based on the thinking directly now.\n</think>\n\n")
    assert EMPTY_THINK == "<think>\n\n</think>\n\n"
    assert SAMPLING == {"think": {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
                        "no_think": {"temperature": 0.7, "top_p": 0.8, "top_k": 20}}


def test_known_renderings(prepared):
    # Report Table 9, the non-thinking training format.
    msgs = [{"role": "user", "content": "q /no_think"}, {"role": "assistant", "content": "r", "reasoning_content": ""}]
    assert prepared.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>user\nq /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nr<|im_end|>\n")
    gen = prepared.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert gen.endswith("<|im_start|>assistant\n" + EMPTY_THINK)


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


@pytest.mark.parametrize("special", [False, True], ids=["as_in_qwen3", "marked_special"])
def test_a_tokenizer_with_think_tokens_keeps_them_as_single_ids(tmp_path, special):
    """Qwen3's tokenizer has `<think>`/`</think>` as tokens (ids 151667/151668, not special): the format
    keeps those ids, training masks cover them, and decoding keeps the tags (also when a tokenizer
    marks them special, which would otherwise drop them)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from posttrain.core.chat import TRAINING_CHAT_TEMPLATE
    from posttrain.core.generation import GenerationEngine
    from posttrain.core.models import apply_chat_format, default_tokenizer_dir
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
