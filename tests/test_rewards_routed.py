"""`routed` and the registry (`rewards.get`)."""

from __future__ import annotations

import logging
import pickle

import pytest
import yaml
from trl.trainer.utils import get_callable_name

import rewards

EMPTY = "<think>\n\n</think>\n\n"
CALLS: list[dict] = []


def recording_reward(completions, **columns):
    """A plain reward function (module level, so `rewards.get` can import it by path)."""
    CALLS.append({"n": len(completions), **{k: v for k, v in columns.items() if isinstance(v, list)}})
    return [0.5] * len(completions)


def constant_factory(value=1.0):
    def constant(completions, **columns):
        return [value] * len(completions)
    return constant


def test_routes_each_task_to_its_rewards_with_sliced_columns():
    CALLS.clear()
    routed = rewards.get("routed", table={
        "math": [{"name": "math"}],
        "ifeval": [{"name": "instruction"}, {"name": "think_follow", "weight": 0.5}],
        "spy": [{"name": f"{__name__}:recording_reward"}],
    })
    completions = ["\\boxed{4}", EMPTY + "all lower case", "anything", "\\boxed{5}", EMPTY + "UPPER"]
    columns = dict(
        task=["math", "ifeval", "spy", "math", "ifeval"],
        answer=["4", None, None, "4", None],
        constraints=[None, {"type": "case", "case": "lower"}, None, None, {"type": "case", "case": "lower"}],
        prompt=[[{"role": "user", "content": f"q{i} /no_think"}] for i in range(5)],
        trainer_state=None)
    scores = routed(completions, **columns)
    assert scores[:4] == [1.0, 1.0, 0.5, 0.0]
    assert scores[4] == pytest.approx((0.0 * 1 + 1.0 * 0.5) / 1.5)  # case fails, think_follow passes
    assert CALLS == [{"n": 1, "task": ["spy"], "answer": [None], "constraints": [None],
                      "prompt": [[{"role": "user", "content": "q2 /no_think"}]]}]


def test_none_components_are_dropped_and_weights_renormalised():
    routed = rewards.get("routed", table={"mix": [{"name": "math", "weight": 3.0},
                                                  {"name": "think_format", "weight": 1.0}]})
    # no gold answer: math is None, so think_format alone decides
    assert routed([EMPTY + "x", "x"], task=["mix", "mix"], answer=[None, None]) == [1.0, 0.0]
    assert routed([EMPTY + "\\boxed{2}"], task=["mix"], answer=["3"]) == [0.25]


def test_unknown_task_default_and_warning_once(caplog):
    table = {"math": [{"name": "math"}]}
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        plain = rewards.get("routed", table=table)
        assert plain(["\\boxed{1}"] * 3, task=["poetry", "poetry", "math"], answer=["1"] * 3) == [None, None, 1.0]
        plain(["x"], task=["poetry"], answer=["1"])
    assert caplog.text.count("no reward for task 'poetry'") == 1
    fallback = rewards.get("routed", table=table, default="math")
    assert fallback(["\\boxed{1}", "\\boxed{2}"], task=["poetry", None], answer=["1", "1"]) == [1.0, 0.0]
    listed = rewards.get("routed", table=table, default=[{"name": "think_format"}])
    assert listed([EMPTY + "x"], task=["poetry"]) == [1.0]


def test_all_none_is_none_and_a_broken_component_is_contained(caplog):
    def broken(completions, **kwargs):
        raise RuntimeError("boom")

    routed = rewards.get("routed", table={"t": [{"name": "math"}]})
    assert routed(["\\boxed{1}"], task=["t"], answer=[None]) == [None]
    routed.groups["t"] = [(broken, 1.0, "broken", 1.0), *routed.groups["t"]]
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        assert routed(["\\boxed{1}"], task=["t"], answer=["1"]) == [1.0]
    assert "boom" in caplog.text


def flaky(completions, **kwargs):
    """Hangs on a completion that says `hang`, raises on one that says `boom`, else scores 1."""
    import time
    if any("hang" in c for c in completions):
        time.sleep(30)
    if any("boom" in c for c in completions):
        raise RuntimeError("judge endpoint returned 500")
    return [1.0] * len(completions)


def test_a_reward_that_hangs_or_raises_on_some_samples_scores_only_those_none(caplog):
    import time
    routed = rewards.get("routed", table={"t": [{"name": f"{__name__}:flaky", "time_limit": 0.3}]})
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        scores = routed(["fine", "hang", "boom", "also fine"], task=["t"] * 4)
    assert scores == [1.0, None, None, 1.0]
    assert time.monotonic() - start < 5  # the batch gets 4 x 0.3 s, then the hung sample 0.3 s
    assert "failed on a batch of 4 of task 't' (TimeoutError: no answer within 1.2 s)" in caplog.text
    assert "failed on sample 1 of task 't' (TimeoutError: no answer within 0.3 s); it scores None" in caplog.text
    assert "failed on sample 2 of task 't' (RuntimeError: judge endpoint returned 500)" in caplog.text
    with pytest.raises(ValueError, match="time_limit"):
        rewards.get("routed", table={"t": [{"name": "math", "time_limit": 0}]})


def test_table_from_yaml_with_params_and_inline_params(tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({
        "code": [{"name": "code", "params": {"partial": True, "timeout": 2}}],
        "short": [{"name": "length", "max_len": 10, "cache": 5, "unit": "chars"}],
        "const": [f"{__name__}.constant_factory"]}))
    routed = rewards.get("routed", table=str(path))
    tests = "assert f() == 1\nassert f() == 2\n"
    scores = routed(["```python\ndef f():\n    return 1\n```", "x" * 8, "y"], task=["code", "short", "const"],
                    tests=[tests, None, None])
    assert scores == [0.5, -0.6, 1.0]


def test_bad_tables_fail_at_construction():
    for table in ({}, {"t": []}, {"t": [{"weight": 1}]}, {"t": [{"name": "math", "weight": -1}]}):
        with pytest.raises(ValueError):
            rewards.get("routed", table=table)
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        rewards.get("routed", table={"t": [{"name": "nope"}]})
    with pytest.raises(ValueError, match="default"):
        rewards.get("routed", table={"t": ["math"]}, default="other")


# --- the registry --------------------------------------------------------------------------------

def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        rewards.get("accuracy")
    message = str(err.value)
    assert "\n" not in message
    for name in ("math", "code", "think_format", "think_follow", "instruction", "length", "repetition",
                 "language", "judge", "preference", "routed"):
        assert name in message


def test_import_paths_functions_and_factories():
    fn = rewards.get(f"{__name__}:recording_reward")  # this module, as pytest imported it
    assert fn is recording_reward and get_callable_name(fn) == "recording_reward"
    built = rewards.get(f"{__name__}.constant_factory", value=0.25)
    assert built(["a", "b"]) == [0.25, 0.25] and get_callable_name(built) == "constant"
    with pytest.raises(ValueError, match="cannot import"):
        rewards.get(f"{__name__}:missing")
    with pytest.raises(ValueError, match="cannot import"):
        rewards.get("no_such_package.module:fn")


@pytest.mark.parametrize("name, params", [
    ("math", {}), ("code", {}), ("think_format", {}), ("think_follow", {}), ("instruction", {}),
    ("length", {"max_len": 8}), ("repetition", {}), ("language", {}), ("countdown", {}),
    ("routed", {"table": {"math": ["math"]}})])
def test_registered_rewards_have_trl_names_and_pickle(name, params):
    reward = rewards.get(name, **params)
    assert get_callable_name(reward) == name  # TRL logs it as rewards/<name>
    clone = pickle.loads(pickle.dumps(reward))  # TRL's async rollout worker pickles reward functions
    assert get_callable_name(clone) == name
    assert len(clone(["", "x"], completion_ids=[[], [1]])) == 2
