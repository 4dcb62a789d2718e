"""`length`, `repetition` (wrapping TRL's) and `language` (script consistency)."""

from __future__ import annotations

import logging

import pytest

import rewards


def test_length_in_tokens_and_chars():
    length = rewards.get("length", max_len=100, cache=20)
    ids = [[1] * 50, [1] * 90, [1] * 100, [1] * 150, []]
    assert length(["x"] * 5, completion_ids=ids) == [0.0, -0.5, -1.0, -1.0, 0.0]
    chars = rewards.get("length", max_len=10, cache=4, unit="chars")
    assert chars(["short", "eight ch", "much too long text", [{"role": "assistant", "content": "123456789"}]]) \
        == [0.0, -0.5, -1.0, -0.75]


def test_length_without_ids_needs_a_tokenizer(caplog):
    length = rewards.get("length", max_len=10)
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        assert length(["some text"]) == [None]
    assert "completion_ids" in caplog.text

    class WordTokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text.split())))}

    counted = rewards.get("length", max_len=4, cache=2, tokenizer=WordTokenizer())
    assert counted(["a b", "a b c", "a b c d e"]) == [0.0, -0.5, -1.0]
    with pytest.raises(ValueError):
        rewards.get("length", max_len=10, cache=20)


def test_repetition_tokens_and_words():
    rep = rewards.get("repetition", ngram_size=2)
    assert rep(["x", "y", "z"], completion_ids=[[1, 2, 3, 4], [5, 5, 5, 5, 5], [7]]) == [0.0, -0.75, 0.0]
    words = rewards.get("repetition", ngram_size=2, unit="words")
    fresh, loop = words(["the cat sat on the mat", "go go go go go"])
    assert fresh == 0.0 and loop == pytest.approx(-0.75)
    assert words([""]) == [0.0]


def test_language_consistency():
    lang = rewards.get("language")
    en = [{"role": "user", "content": "Explain the water cycle in simple words."}]
    zh = [{"role": "user", "content": "请简单解释一下水循环。"}]
    texts = ["<think>\nWater evaporates.\n</think>\n\nWater evaporates, forms clouds and falls as rain.",
             "Water evaporates, 然后形成云 and falls as rain.",  # CJK mixed into English
             "水蒸发，形成云，然后以雨的形式落下。",
             "<think>\nThe user asks in Chinese.\n</think>\n\n水蒸发，形成云，然后以雨的形式落下。",
             ""]
    assert lang(texts, prompt=[en, en, zh, zh, en]) == [1.0, 0.0, 1.0, 0.0, 0.0]
    # a few foreign letters (an acronym) stay under the threshold; code and math are ignored
    ok = "水蒸发形成云然后以雨的形式落下这是一个很长的句子用来测试阈值是否有效果的呢我们再多写一点字吧 AI"
    assert lang([ok, "Use `print(\"你好\")` here, it prints a greeting."], prompt=[zh, en]) == [1.0, 1.0]


def test_language_target_param_and_answer_only():
    fr = rewards.get("language", language="fr")
    assert fr(["Le chat dort.", "Кот спит."]) == [1.0, 0.0]
    answer_only = rewards.get("language", language="en", answer_only=True)
    assert answer_only(["<think>\n思考一下\n</think>\n\nThe cat sleeps."]) == [1.0]
    assert rewards.get("language", language="en")(["<think>\n思考一下\n</think>\n\nThe cat sleeps."]) == [0.0]
    with pytest.raises(ValueError):
        rewards.get("language", language="xx")
