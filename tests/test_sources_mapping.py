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
