"""`instruction`: IFEval's verifiable instructions (its own checkers, from if-verifiable)."""

from __future__ import annotations

import json
import logging

import pytest

import rewards
from rewards.instruction import meets, parse_constraints

ANSWER = "<think>\nplan\n</think>\n\n"


@pytest.mark.parametrize("constraint, good, bad", [
    ({"type": "word_count", "min": 3, "max": 5}, "one two three four", "one two"),
    ({"type": "word_count", "max": 3}, "short one", "this one is too long"),
    ({"type": "sentence_count", "count": 2}, "First one. Second one!", "Only one."),
    ({"type": "paragraph_count", "min": 2}, "Para one.\n***\nPara two.", "Just one paragraph."),
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
    ({"type": "case", "case": "upper"}, "THE RIVER RUNS TO THE SEA.", "The river RUNS to the sea."),
    ({"type": "starts_with", "phrase": "Dear team"}, "dear team, hello", "Hello, dear team"),
    ({"type": "ends_with", "phrase": "Any questions?"}, "Done. Any questions? ", "Any questions? Done."),
])
def test_each_constraint_type(constraint, good, bad):
    reward = rewards.get("instruction")
    assert reward([ANSWER + good, ANSWER + bad], constraints=[constraint] * 2) == [1.0, 0.0]


# Boundary cases, each with IFEval's verdict (the official checkers' rules, which the project's own
# earlier code got wrong on several of them).
@pytest.mark.parametrize("constraint, text, verdict", [
    # counts at and off the limit: "at most 5 words" is IFEval's "less than 6"
    ({"type": "word_count", "max": 5}, "one two three four five", True),
    ({"type": "word_count", "max": 5}, "one two three four five six", False),
    ({"type": "word_count", "min": 3}, "one two three", True),
    ({"type": "word_count", "min": 3}, "one-two", False),  # "one", "two": two words
    ({"type": "length_constraints:number_words", "relation": "less than", "num_words": 3}, "a b c", False),
    ({"type": "bullet_count", "count": 3}, "* a\n* b\n- c", True),
    ({"type": "bullet_count", "count": 2}, "* a\n* b\n- c", False),
    # bullet markers: "*" or "-" at a line's start, not "**" (bold) nor "•"
    ({"type": "bullet_count", "count": 1}, "**Title**\n* one", True),
    ({"type": "bullet_count", "count": 2}, "• a\n• b", False),
    ({"type": "bullet_count", "count": 2}, "-a\n-b", True),
    # fenced JSON passes, JSON inside prose does not
    ({"type": "json"}, '```json\n{"a": 1}\n```', True),
    ({"type": "json"}, '```\n[1, 2]\n```', True),
    ({"type": "json"}, 'Here it is: {"a": 1}', False),
    # quoted endings: IFEval strips outer quotes before comparing
    ({"type": "ends_with", "phrase": "Any questions?"}, '"That is all. Any questions?"', True),
    ({"type": "ends_with", "phrase": "Any questions?"}, "That is all. Any questions?!", False),
    # paragraph separators: the markdown divider ***, not a blank line; an empty paragraph fails
    ({"type": "paragraph_count", "count": 2}, "One.\n***\nTwo.", True),
    ({"type": "paragraph_count", "count": 2}, "One.\n\nTwo.", False),
    ({"type": "paragraph_count", "count": 2}, "One.\n***\n***\nTwo.", False),
    ({"type": "paragraph_count", "count": 2}, "***\nOne.\n***\nTwo.\n***", True),
    # case with digits: digits are not letters, so they neither break nor make the case; IFEval's
    # case instructions also ask for English
    ({"type": "change_case:english_capital"}, "THE TRAIN LEAVES AT 9 AND ARRIVES AT 11 IN THE MORNING.", True),
    ({"type": "change_case:english_lowercase"}, "the train leaves at 9 and arrives at 11 in the morning.", True),
    ({"type": "change_case:english_lowercase"}, "the train leaves at 9 and arrives at 11 in the Morning.", False),
    ({"type": "change_case:english_lowercase"}, "le train part à 9 heures et arrive à 11 heures du matin.", False),
    ({"type": "case", "case": "lower"}, "le train part à 9 heures et arrive à 11 heures du matin.", True),
    ({"type": "case", "case": "upper"}, "123 !", False),
    # keywords inside longer words: existence is a substring test, forbidden words are whole words
    ({"type": "include_keywords", "keywords": ["art"]}, "We went to a party.", True),
    ({"type": "exclude_keywords", "keywords": ["art"]}, "We went to a party.", True),
    ({"type": "exclude_keywords", "keywords": ["art"]}, "We saw Art today.", False),
    ({"type": "keywords:existence", "keywords": ["Sea"]}, "the sea", True),
])
def test_boundary_cases_follow_ifeval(constraint, text, verdict):
    assert meets(text, constraint) is verdict
    assert rewards.get("instruction")([ANSWER + text], constraints=[constraint]) == [float(verdict)]


def test_the_verdicts_are_the_official_checkers():
    """Every short form that maps to an IFEval instruction gives that checker's verdict."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    text = "* Paris is big\n* Lyon is old\n***\nThat is all. Bye"
    for c, (iid, kwargs) in [({"type": "bullet_count", "count": 2}, ("detectable_format:number_bullet_lists",
                                                                     {"num_bullets": 2})),
                             ({"type": "ends_with", "phrase": "bye"}, ("startend:end_checker", {"end_phrase": "bye"})),
                             ({"type": "paragraph_count", "count": 3}, ("length_constraints:number_paragraphs",
                                                                        {"num_paragraphs": 3}))]:
        checker = INSTRUCTION_DICT[iid](iid)
        checker.build_description(**kwargs)
        assert meets(text, c) is bool(checker.check_following(text)), c


def test_loose_mode_forgives_a_preamble_and_markdown():
    c = {"type": "starts_with", "phrase": "dear team"}
    text = "Sure, here it is:\nDear team, the report is done."
    assert (meets(text, c), meets(text, c, loose=True)) == (False, True)
    bold = {"type": "ends_with", "phrase": "the end."}
    assert (meets("It was **the end.**", bold), meets("It was **the end.**", bold, loose=True)) == (False, True)
    loose = rewards.get("instruction", loose=True)
    assert loose([ANSWER + text], constraints=[c]) == [1.0]


def test_ifeval_ids_take_their_kwargs_and_no_others():
    with pytest.raises(ValueError, match="keywords:existence: needs keywords"):
        parse_constraints({"type": "keywords:existence"})
    with pytest.raises(ValueError, match="unknown kwargs"):
        parse_constraints({"type": "keywords:existence", "keywords": ["a"], "count": 2})
    # the two that need NLTK's punkt data are the project's own
    assert meets("One. Two. Three.", {"type": "length_constraints:number_sentences", "relation": "less than",
                                      "num_sentences": 3}) is False
    assert meets("I LOVE NEW YORK and Paris", {"type": "change_case:capital_word_frequency",
                                               "capital_relation": "at least", "capital_frequency": 3}) is True


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
