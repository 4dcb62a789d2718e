"""`judge`: reference-answer LLM judge, with a fake engine (no model)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pytest

import rewards
from rewards.judge import parse_score


@dataclass
class FakeCompletion:
    text: str

    @property
    def answer(self) -> str:
        return self.text.split("</think>")[-1].lstrip("\n")


class FakeEngine:
    """Scores by keyword overlap with the reference, in whichever verdict format it was given."""

    def __init__(self, template="Looks right.\nScore: {score}"):
        self.template, self.calls, self.prompts = template, 0, []

    def generate(self, prompts, *, n=1, mode="no_think", max_new_tokens=256, temperature=None, top_p=None,
                 top_k=None, seed=None):
        self.calls += 1
        outs = []
        for messages in prompts:
            text = messages[-1]["content"]
            self.prompts.append(text)
            reference = re.search(r"REFERENCE:\n(.*?)\n\nRESPONSE:", text, re.S).group(1)
            response = re.search(r"RESPONSE:\n(.*?)\n\nGive a score", text, re.S).group(1)
            score = 10 if reference.lower() in response.lower() else 2
            outs.append([FakeCompletion("<think>\n\n</think>\n\n" + self.template.format(score=score))] * n)
        return outs


PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def test_judge_scores_against_the_reference_and_caches():
    engine = FakeEngine()
    judge = rewards.get("judge", engine=engine)
    texts = ["<think>\nhmm\n</think>\n\nIt is Paris.", "It is Lyon.", "", "It is Paris."]
    scores = judge(texts, prompt=[PROMPT] * 4, reference=["Paris"] * 4)
    assert scores == [1.0, 0.2, 0.2, 1.0]
    assert "What is the capital of France?" in engine.prompts[0] and "hmm" not in engine.prompts[0]
    assert len(engine.prompts) == 3  # the repeated response was judged once
    judge(texts[:2], prompt=[PROMPT] * 2, reference=["Paris"] * 2)
    assert engine.calls == 1  # all cached


def test_missing_reference_is_none_and_conversational_completions_work():
    judge = rewards.get("judge", engine=FakeEngine())
    conv = [[{"role": "assistant", "content": "Paris."}], [{"role": "assistant", "content": "Paris."}]]
    assert judge(conv, prompt=[PROMPT] * 2, reference=["Paris", None]) == [1.0, None]


def test_disk_cache_survives_a_new_judge(tmp_path):
    path = tmp_path / "cache" / "judge.jsonl"
    first = FakeEngine()
    rewards.get("judge", engine=first, cache_path=str(path))(["Paris"], prompt=[PROMPT], reference=["Paris"])
    second = FakeEngine()
    again = rewards.get("judge", engine=second, cache_path=str(path))
    assert again(["Paris"], prompt=[PROMPT], reference=["Paris"]) == [1.0]
    assert second.calls == 0 and path.read_text().count("\n") == 1


@pytest.mark.parametrize("verdict, expected", [
    ("Score: 7", 7), ("The response is fine. 7/10", 7), ("Verdict: **8**", 8), ("Rating: [[6]]", 6),
    ('{"score": 9, "reason": "ok"}', 9), ("**Score:** 3", 3), ("5", 5), ("Score: 4.5", 4.5),
    ("Early guess Score: 2, after checking, Score: 9", 9), ("no number here", None), ("Score: 85", None),
])
def test_parse_score(verdict, expected):
    assert parse_score(verdict) == expected


def test_unparsable_verdict_is_none_and_logged(caplog):
    judge = rewards.get("judge", engine=FakeEngine(template="I refuse to grade this."))
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        assert judge(["Paris"], prompt=[PROMPT], reference=["Paris"]) == [None]
    assert "unparsable verdict" in caplog.text


def test_engine_failure_scores_none_without_raising(caplog):
    class Broken:
        def generate(self, prompts, **kwargs):
            raise RuntimeError("out of memory")

    judge = rewards.get("judge", engine=Broken())
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        assert judge(["Paris", "Lyon"], prompt=[PROMPT] * 2, reference=["Paris"] * 2) == [None, None]
    assert "out of memory" in caplog.text


def test_judge_needs_exactly_one_of_engine_or_model():
    with pytest.raises(ValueError):
        rewards.get("judge")
    with pytest.raises(ValueError):
        rewards.get("judge", engine=FakeEngine(), model="x")


def test_judge_builds_a_real_engine_from_a_model_path(tiny_model, caplog):
    """Integration with posttrain.core.generation: a random tiny model's verdicts parse or are None, but
    the call itself must go through (no batch failure logged)."""
    judge = rewards.get("judge", model=str(tiny_model), max_new_tokens=4)
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        scores = judge(["Paris.", "Lyon."], prompt=[PROMPT] * 2, reference=["Paris"] * 2)
    assert len(scores) == 2 and all(s is None or 0.0 <= s <= 1.0 for s in scores)
    assert "batch of" not in caplog.text
    assert len(judge.cache) == 2


class YesNoEngine:
    """P(Yes) 0.9 when the reference is in the response, else 0.2; records what it was asked."""

    def __init__(self):
        self.asked = []

    def option_probs(self, prompts, options, *, mode="no_think"):
        self.asked.append((len(prompts), list(options), mode))
        out = []
        for messages in prompts:
            text = messages[-1]["content"]
            assert text.endswith("Is the RESPONSE correct? Answer Yes or No.")
            reference = re.search(r"REFERENCE:\n(.*?)\n\nRESPONSE:", text, re.S).group(1)
            response = re.search(r"RESPONSE:\n(.*?)\n\nIs the RESPONSE", text, re.S).group(1)
            yes = 0.9 if reference.lower() in response.lower() else 0.2
            out.append([yes, 1 - yes])
        return out


def test_yes_no_verdict_scores_the_probability_of_yes_and_caches_it(tmp_path):
    engine, path = YesNoEngine(), tmp_path / "judge.jsonl"
    judge = rewards.get("judge", engine=engine, verdict="yes_no", cache_path=str(path))
    texts = ["<think>\n\n</think>\n\nParis.", "It is Lyon.", "<think>\n\n</think>\n\nParis."]
    assert judge(texts, prompt=[PROMPT] * 3, reference=["Paris"] * 3) == pytest.approx([0.9, 0.2, 0.9])
    assert engine.asked == [(2, ["Yes", "No"], "no_think")]  # the repeated response asked once
    again = rewards.get("judge", engine=YesNoEngine(), verdict="yes_no", cache_path=str(path))
    assert again(texts[:2], prompt=[PROMPT] * 2, reference=["Paris"] * 2) == pytest.approx([0.9, 0.2])


def test_yes_no_verdict_with_no_option_seen_is_none_and_bad_verdict_kind_fails(caplog):
    class Blind(YesNoEngine):
        def option_probs(self, prompts, options, *, mode="no_think"):
            return [None] * len(prompts)
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        assert rewards.get("judge", engine=Blind(), verdict="yes_no")(
            ["Paris"], prompt=[PROMPT], reference=["Paris"]) == [None]
    assert "unparsable verdict" in caplog.text
    with pytest.raises(ValueError, match="verdict must be"):
        rewards.get("judge", engine=YesNoEngine(), verdict="maybe")


def test_in_a_pipeline_the_judge_takes_its_engine_from_the_runs_pool(tiny_model):
    """Stage 4 and its evaluation build the routing table with the run's engine pool: a reward that
    generates (the judge) gets it, rule rewards do not, and the judge asks it for an engine on its
    model once (no process-wide engine state decides the backend)."""
    from data_builders.tasks import load_tasks, routing_table
    from tests.conftest import OneEngine
    asked = []

    class Pool(OneEngine):
        def get(self, model, backend=None, **kwargs):
            asked.append((model, backend))
            return super().get()
    pool = Pool(FakeEngine())
    kinds = load_tasks({"tasks": {
        "judged": {"area": "specialised", "source": "open_answer", "rewards": [{"name": "judge", "params": {
            "model": "@judge"}}]},
        "ruled": {"area": "instruction", "source": "instruction", "rewards": [{"name": "instruction"}]}}})
    table = routing_table(kinds, resolve=lambda ref: str(tiny_model), engines=pool)
    assert table["judged"][0]["params"] == {"model": str(tiny_model), "engines": pool}
    assert "engines" not in table["ruled"][0]["params"]
    reward = rewards.get("routed", table=table)
    scores = reward(["It is Paris.", "Lyon.", "some text"], task=["judged", "judged", "ruled"],
                    prompt=[PROMPT] * 3, reference=["Paris", "Paris", ""], constraints=["", "", "[]"])
    assert scores[:2] == [1.0, 0.2] and asked == [(str(tiny_model), None)]
