"""Datasets on disk mapped to the column contract, alone or mixed with synthetic families."""

from __future__ import annotations

import json

import pytest

from data_builders.rl_queries import DataSource, QuerySelection, candidates
from data_builders.sources import load


@pytest.fixture
def qa(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"question": "What is 2+3?", "final": "5"},
                                                      {"question": "What is 7*6?", "final": "42"}]))
    return path


def test_jsonl_mapped_and_mixed_with_synthetic(qa):
    ds = candidates(QuerySelection(families={"linear": 3}, data=DataSource(
        str(qa), columns={"question": "prompt", "final": "answer"}, task="math", domain="qa")))
    assert len(ds) == 5 and ds.column_names == ["prompt", "answer", "tests", "task", "domain"]
    assert ds[-1] == {"prompt": [{"role": "user", "content": "What is 7*6?"}], "answer": "42", "tests": "",
                      "task": "math", "domain": "qa"}


def test_saved_dataset_and_parquet_roundtrip(tmp_path, qa):
    ds = load(str(qa), columns={"question": "prompt", "final": "answer"}, task="math")
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "qa.parquet"))
    assert load(str(tmp_path / "saved"))["answer"] == ["5", "42"]
    assert load(str(tmp_path / "qa.parquet"))["prompt"][0] == [{"role": "user", "content": "What is 2+3?"}]


def test_one_line_errors_name_file_and_column(tmp_path, qa):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load(str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(ValueError, match=r"qa.jsonl: no column 'quest' to map to 'prompt'"):
        load(str(qa), columns={"quest": "prompt"})
    with pytest.raises(ValueError, match=r"qa.jsonl: no 'prompt' column"):
        load(str(qa))


@pytest.mark.parametrize("lines,error", [
    ([b'{"prompt": "a"}', b'{"prompt": "b"'], r"bad.jsonl: line 2: invalid JSON \(Expecting ',' delimiter"),
    ([b'{"prompt": "a"}', b'{"prompt": "caf\xe9"}'], r"bad.jsonl: line 2: not UTF-8 text \(byte 15: invalid"),
    ([b'{"prompt": "a"}', b'["prompt"]'], r"bad.jsonl: line 2: expected a JSON object, got list"),
    ([b'{"prompt": "a"}', b'{"prompt": 3}'], r"bad.jsonl: line 2: column 'prompt' is number, but str on line 1"),
    ([b'{"prompt": 3}'], r"bad.jsonl: row 0: column 'prompt' must be text or a list of messages, got int"),
    ([b'{"prompt": "a"}', b'{"prompt": "  "}'], r"bad.jsonl: row 1: column 'prompt' is empty"),
    ([b'{"prompt": [{"role": "user"}]}'], r"bad.jsonl: row 0: column 'prompt' has a message without text 'role'"),
])
def test_bad_rows_are_named_by_file_line_or_row_and_column(tmp_path, lines, error):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=error):
        load(str(path))


@pytest.mark.parametrize("messages,error", [
    ([{"role": "user", "content": "hi"}], "row 1: column 'messages' has no assistant turn to learn from"),
    ([], "row 1: column 'messages' is empty"),
])
def test_sft_rows_without_a_turn_to_learn_from_are_named(tmp_path, messages, error):
    from stages.sft import load_messages
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}) for m in (good, messages)) + "\n")
    with pytest.raises(ValueError, match=f"data: {path}: {error}"):
        load_messages(str(path))
    path.write_text(json.dumps({"messages": good}) + "\n")
    assert len(load_messages(str(path))) == 1


def test_a_column_of_ints_and_floats_is_not_a_type_change(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"prompt": "a", "w": 1}\n{"prompt": "b", "w": 1.5}\n')
    assert load(str(path))["w"] == [1.0, 1.5]


def test_a_hub_dataset_by_id_is_mapped_and_mixed_like_a_file(hub_cache):
    ds = candidates(QuerySelection(families={"linear": 2}, data=DataSource(
        "acme/gsm_mini", columns={"question": "prompt", "final": "answer"}, task="math", name="main")))
    assert len(ds) == 4
    assert ds[-1] == {"prompt": [{"role": "user", "content": "What is 7*6?"}], "answer": "42", "tests": "",
                      "task": "math", "domain": ""}
    test = load("acme/gsm_mini", columns={"question": "prompt", "final": "answer"}, name="main", split="test")
    assert test["answer"] == ["5"]


def test_a_hub_dataset_fails_in_one_line_naming_it(hub_cache, tmp_path):
    with pytest.raises(ValueError, match=r"^dataset 'acme/absent': not a file here and not loadable") as err:
        load("acme/absent")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^dataset 'acme/gsm_mini' \(config 'main'\): .*validation"):
        load("acme/gsm_mini", name="main", split="validation")
    with pytest.raises(ValueError, match=r"^dataset 'acme/gsm_mini' \(config 'main'\): no column 'quest'"):
        load("acme/gsm_mini", columns={"quest": "prompt"}, name="main")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"prompt": "What is 1+1?"}))
    with pytest.raises(ValueError, match=r"qa.jsonl: `name` and `split` choose a Hub dataset"):
        load("qa.jsonl", split="test")
