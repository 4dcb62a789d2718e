"""posttrain.harness: lm-evaluation-harness tasks from local YAMLs on a model dir, in both modes."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from posttrain.core.chat import EMPTY_THINK, MODES
from posttrain.harness import run_harness

ITEMS = [("What is 2 + 2?", "4"), ("What is 3 + 3?", "6"), ("Name the capital of France.", "Paris"),
         ("Say hello.", "hello")]

# Two filters: `none` scores the model's answer; `always_4` replaces every answer by "4" (a regex that never
# matches, with "4" as its fallback), so its exact match is the share of targets equal to "4" whatever the model says.
TASK = """\
task: tiny_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
filter_list:
  - name: none
    filter:
      - function: take_first
  - name: always_4
    filter:
      - function: regex
        regex_pattern: "(?!)"
        fallback: "4"
      - function: take_first
"""


@pytest.fixture
def lm_eval():
    return pytest.importorskip("lm_eval")


@pytest.fixture
def task_dir(tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in ITEMS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_qa.yaml").write_text(TASK.format(data=data))
    return tasks


def test_both_modes_on_tiny_model(lm_eval, tiny_model, task_dir):
    for mode in MODES:
        result = run_harness(str(tiny_model), ["tiny_qa"], mode=mode, include_path=str(task_dir), limit=4,
                             max_new_tokens=8)
        assert json.loads(json.dumps(result)) == result
        assert set(result) == {"lm_eval_version", "mode", "backend", "tasks", "wall_time_s"}
        assert (result["lm_eval_version"], result["mode"], result["backend"]) == (lm_eval.__version__, mode,
                                                                                  "transformers")
        task = result["tasks"]["tiny_qa"]
        assert task["n_items"] == 4
        assert set(task["metrics"]) == set(task["stderr"]) == {"exact_match", "exact_match/always_4"}
        assert 0 <= task["metrics"]["exact_match"] <= 1
        assert task["metrics"]["exact_match/always_4"] == sum(a == "4" for _, a in ITEMS) / len(ITEMS)
        assert result["wall_time_s"] > 0


def hybrid_model(seen):
    """A scripted `HFLM._model_generate`: it answers the arithmetic items right and the rest wrong, directly
    after the template's empty think block (no_think), else after reasoning with a wrong guess and blank lines
    in it (which a stop sequence applied during generation, or an answer scored with its reasoning, would fail)."""
    import torch

    answers = dict(ITEMS[:2])

    def generate(self, context, max_length, stop, **kwargs):
        rows = []
        for ids in context.tolist():
            prompt = self.tokenizer.decode(ids, skip_special_tokens=False)
            seen.append((prompt, list(stop)))
            question = prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
            answer = answers.get(question, "no idea")
            text = f"{answer}\nso{self.tokenizer.eos_token}" if prompt.endswith(EMPTY_THINK) else (
                f"<think>\nMaybe 5.\n\nCheck again.\n</think>\n\n{answer}\nso{self.tokenizer.eos_token}")
            rows.append(ids + self.tokenizer.encode(text, add_special_tokens=False))
        width = max(map(len, rows))
        return torch.tensor([row + [self.tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    return generate


@pytest.mark.parametrize("special_tags", [False, True], ids=["plain_tags", "special_tags"])
def test_modes_render_and_score_as_the_template_says(lm_eval, tiny_model, task_dir, tmp_path, monkeypatch,
                                                     special_tags):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    model = tiny_model
    if special_tags:  # a tokenizer that marks the think tags special: decoding drops `</think>`
        model = tmp_path / "special"
        shutil.copytree(tiny_model, model)
        tok = AutoTokenizer.from_pretrained(model)
        tok.add_tokens(["<think>", "</think>"], special_tokens=True)
        tok.save_pretrained(model)
    seen: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(HFLM, "_model_generate", hybrid_model(seen))
    expected = sum(q in dict(ITEMS[:2]) for q, _ in ITEMS) / len(ITEMS)
    for mode in MODES:
        seen.clear()
        result = run_harness(str(model), ["tiny_qa"], mode=mode, include_path=str(task_dir), limit=4)
        assert result["tasks"]["tiny_qa"]["metrics"]["exact_match"] == expected == 0.5
        assert len(seen) == 4
        for prompt, stop in seen:
            assert prompt.endswith(EMPTY_THINK if mode == "no_think" else "<|im_start|>assistant\n")
            # think mode: generation stops only at the end of the turn; the task's "\n" cuts the answer after
            assert ("\n" in stop) == (mode == "no_think") and "<|im_end|>" in stop


def test_unknown_task_is_named(lm_eval, tiny_model, task_dir):
    with pytest.raises(ValueError, match="no_such_task_xyz") as error:
        run_harness(str(tiny_model), ["tiny_qa", "no_such_task_xyz"], include_path=str(task_dir))
    assert "tiny_qa" not in str(error.value) and "\n" not in str(error.value)


def test_without_lm_eval_the_error_names_the_extra(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[lm-eval\]'"):
        run_harness(str(tiny_model), ["tiny_qa"])
