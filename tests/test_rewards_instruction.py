"""`instruction`: IFEval-style verifiable constraints."""

from __future__ import annotations

import json
import logging

import pytest

import rewards

ANSWER = "<think>\nplan\n</think>\n\n"


@pytest.mark.parametrize("constraint, good, bad", [
    ({"type": "word_count", "min": 3, "max": 5}, "one two three four", "one two"),
    ({"type": "word_count", "max": 3}, "short one", "this one is too long"),
    ({"type": "sentence_count", "count": 2}, "First one. Second one!", "Only one."),
    ({"type": "paragraph_count", "min": 2}, "Para one.\n\nPara two.", "Just one paragraph."),
    ({"type": "paragraph_count", "count": 2}, "A\n***\nB", "A\n***\nB\n***\nC"),
    ({"type": "bullet_count", "count": 3}, "* a\n* b\n- c", "* a\n* b"),
    ({"type": "include_keywords", "keywords": ["Paris", "river"]}, "Paris has a River.", "Paris is nice."),
    ({"type": "exclude_keywords", "keywords": ["very"]}, "Everything is fine.", "It is very fine."),
    ({"type": "json"}, '{"a": [1, 2]}', "{'a': 1}"),
    ({"type": "json"}, '```json\n{"a": 1}\n```', "Here: {\"a\": 1}"),
    ({"type": "language", "language": "fr"}, "Le chat est sur la table et il dort.", "The cat is on the table."),
    ({"type": "language", "language": "zh"}, "今天天气很好，我们去公园散步吧。", "Today the weather is nice."),
    ({"type": "language", "language": "ru"}, "Сегодня хорошая погода.", "Today is nice."),
    ({"type": "language", "language": "de"}, "Das ist nicht der Hund, den ich mit dir sah.",
     "Esto no es el perro que vi con el gato."),
    ({"type": "case", "case": "lower"}, "all lower here.", "Not all lower."),
    ({"type": "case", "case": "upper"}, "ALL CAPS!", "Mostly CAPS"),
    ({"type": "starts_with", "phrase": "Dear team"}, "dear team, hello", "Hello, dear team"),
    ({"type": "ends_with", "phrase": "Any questions?"}, "Done. Any questions? ", "Any questions? Done."),
])
def test_each_constraint_type(constraint, good, bad):
    reward = rewards.get("instruction")
    assert reward([ANSWER + good, ANSWER + bad], constraints=[constraint] * 2) == [1.0, 0.0]


def test_fraction_strict_json_string_and_conversational():
    spec = [{"type": "word_count", "max": 5}, {"type": "include_keywords", "keywords": ["blue"]},
            {"type": "case", "case": "lower"}, {"type": "ends_with", "phrase": "bye"}]
    text = "The sky is blue."  # meets 2 of 4
    fraction, strict = rewards.get("instruction"), rewards.get("instruction", strict=True)
    assert fraction([text], constraints=[spec]) == [0.5]
    assert strict([text], constraints=[json.dumps(spec)]) == [0.0]
    assert strict(["the sky is blue bye"], constraints=[{"constraints": spec}]) == [1.0]
    assert fraction([[{"role": "assistant", "content": text}]], constraints=[json.dumps(spec)]) == [0.5]


def test_only_the_answer_counts_and_empty_or_unterminated_fail():
    reward = rewards.get("instruction")
    spec = {"type": "include_keywords", "keywords": ["banana"]}
    assert reward(["<think>\nbanana\n</think>\n\nNo fruit here."], constraints=[spec]) == [0.0]
    assert reward(["<think>\nbanana banana"], constraints=[spec]) == [0.0]
    assert reward([""], constraints=[{"type": "word_count", "min": 1}]) == [0.0]


def test_missing_malformed_and_unknown_constraints_are_none(caplog):
    reward = rewards.get("instruction")
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        scores = reward(["text"] * 5, constraints=[None, "{not json", {"type": "rhyme_scheme"},
                                                   {"type": "word_count"}, {"type": "case", "case": "title"}])
    assert scores == [None] * 5
    assert "unknown constraint type 'rhyme_scheme'" in caplog.text
    assert "word_count: needs min, max or count" in caplog.text


def test_constraints_from_a_datasets_column():
    """Arrow turns a column of differently-keyed dicts into structs with None in the gaps."""
    from datasets import Dataset
    ds = Dataset.from_list([{"constraints": [{"type": "word_count", "count": 2}]},
                            {"constraints": [{"type": "include_keywords", "keywords": ["tea"]}]}])
    assert ds[0]["constraints"][0]["keywords"] is None  # the gap the reward has to ignore
    reward = rewards.get("instruction")
    assert reward(["two words", "I like tea"], constraints=ds["constraints"]) == [1.0, 1.0]
    assert reward(["three words here", "I like coffee"], constraints=ds["constraints"]) == [0.0, 0.0]
