"""Pipeline YAMLs: inheritance, and a one-line error naming the key for each kind of bad config."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from posttrain import pipeline
from posttrain.core.config import ConfigError, load_yaml


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def base(tmp_path, chat_jsonl):
    return write(tmp_path / "base.yaml", f"""
        name: base
        seed: 3
        stages:
          - stage: sft
            id: first
            config: {{data: {chat_jsonl}, train: {{max_steps: 4, learning_rate: 1.0e-4}}}}
          - stage: sft
            id: second
            config: {{data: {chat_jsonl}}}
        """)


def test_inheritance_overrides_and_merges_stages_by_id(tmp_path, base):
    child = write(tmp_path / "child.yaml", """
        defaults: base.yaml
        name: child
        stages:
          - id: first
            config: {train: {max_steps: 9}}
          - id: second
            enabled: false
        """)
    data = load_yaml(child)
    assert data["name"] == "child" and data["seed"] == 3
    cfg, planned = pipeline.load(child)
    assert [p.ctx.stage_id for p in planned] == ["first"]
    train = planned[0].config.train
    assert train.max_steps == 9 and train.learning_rate == 1e-4  # overridden, inherited
    assert planned[0].ctx.input_model == "default"


def test_stage_chaining_and_references(tmp_path, base, chat_jsonl):
    cfg, planned = pipeline.load(base)
    assert planned[1].ctx.input_model == str(planned[0].ctx.model_dir)
    ref = write(tmp_path / "ref.yaml", f"""
        defaults: base.yaml
        stages:
          - stage: sft
            id: third
            model: "@first"
            config: {{data: {chat_jsonl}}}
        """)
    _, planned = pipeline.load(ref)
    assert planned[2].ctx.input_model == str(planned[0].ctx.model_dir)


BAD = {
    "unknown top key": ("lr: 3", "unknown key 'lr'"),
    "unknown stage key": ("stages:\n  - {stage: sft, id: first, lr: 1}", "stages[0]: unknown key 'lr'"),
    "unknown stage config key": ("stages:\n  - {id: first, config: {max_stepz: 3}}", "config: unknown key 'max_stepz'"),
    "unknown nested key": ("stages:\n  - {id: first, config: {train: {max_stepz: 3}}}",
                           "config.train: unknown key 'max_stepz'"),
    "wrong type": ("stages:\n  - {id: first, config: {train: {max_steps: ten}}}",
                   "config.train.max_steps: expects int, got str 'ten'"),
    "wrong top type": ("seed: [1]", "seed: expects int"),
    "bad literal": ("backend: tpu", "backend: must be one of"),
    "unknown stage": ("stages:\n  - {stage: warp_drive, id: x}", "stages[2] (x).stage: unknown stage 'warp_drive'"),
    "missing data file": ("stages:\n  - {id: first, config: {data: nowhere.jsonl}}",
                          "config.data: file not found: nowhere.jsonl"),
    "missing model": ("model: /no/such/model", "model: model not found: /no/such/model"),
    "bad reference": ("stages:\n  - {id: first, model: '@later'}", "model: '@later' names no earlier stage"),
    "missing parent": ("defaults: nope.yaml", "defaults: file not found"),
    # TRL's own keys under `trainer:` are checked when the pipeline is planned (--dry-run), against the
    # TRL config class each stage's options go to
    "bad trainer key": ("stages:\n  - {id: first, config: {train: {trainer: {learning_rat: 1}}}}",
                        "stages[0] (first).config.train.trainer: unknown SFTConfig key 'learning_rat'"),
    "bad trainer type": ("stages:\n  - {id: first, config: {train: {trainer: {gradient_checkpointing: maybe}}}}",
                         "config.train.trainer.gradient_checkpointing: expects bool, got str 'maybe'"),
    "bad distill phase key": ("stages:\n  - {stage: distill, id: d, config: {on_policy: {train: {trainer: "
                              "{lmbda: 1}}}}}", "(d).config.on_policy.train.trainer: unknown DistillationConfig key"),
    "bad GRPO key": ("stages:\n  - {stage: reasoning_rl, id: r, config: {queries: {families: {linear: 2}}, "
                     "train: {trainer: {num_generation: 4}}}}", "(r).config.train.trainer: unknown GRPOConfig key"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configs_rejected_with_key(tmp_path, base, case):
    body, expected = BAD[case]
    bad = write(tmp_path / "bad.yaml", "defaults: base.yaml\n" + body + "\n")
    with pytest.raises(ConfigError) as err:
        pipeline.load(bad)  # what --dry-run does: no model loads, no trainer is built
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_dry_run_cli_one_line_error_and_no_model_load(tmp_path, base):
    bad = write(tmp_path / "bad.yaml", "defaults: base.yaml\nstages:\n  - {id: second, config: {packing: maybe}}\n")
    res = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", str(bad), "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"posttrain run: error: {bad}: stages[1] (second).config.packing: expects bool, got str 'maybe'"]
    ok = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", str(base), "--dry-run",
                         "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "1. first" in ok.stdout and "2. second" in ok.stdout and "dry run" in ok.stdout
    assert not (tmp_path / "out").exists()  # nothing written


def test_command_line_overrides_are_checked_like_the_file(tmp_path, base, capsys):
    from posttrain.cli import main
    cfg, planned = pipeline.load(base, overrides=["stages.first.config.train.max_steps=10", "seed=7",
                                                  "stages.second.config.train.lora={r: 4}", "backend=vllm"])
    assert cfg.seed == 7 and cfg.backend == "vllm" and planned[0].config.train.max_steps == 10
    assert planned[0].config.train.learning_rate == 1e-4 and planned[1].config.train.lora.r == 4
    assert load_yaml(base)["seed"] == 3  # the file is untouched
    for override, error in [("stages.third.config.x=1", "no stage 'third' (stages: first, second)"),
                            ("seed", "expected KEY.PATH=VALUE"),
                            ("stages.first.config.train.max_steps=ten", "max_steps: expects int, got str 'ten'"),
                            ("stages.first.config.nope=1", "unknown key 'nope'"),
                            ("seed=[1", "invalid YAML value")]:
        with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            pipeline.load(base, overrides=[override])
    out = tmp_path / "out"
    assert main(["run", str(base), "--dry-run", "--output-dir", str(out), "stages.second.enabled=false"]) == 0
    assert "2. second" not in capsys.readouterr().out
    assert main(["run", str(base), "--dry-run", "seed=x"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"posttrain run: error: {base}: seed: expects int, got str 'x'"
    stage = write(tmp_path / "stage.yaml", f"data: {planned[0].config.data}\ntrain: {{max_steps: 4}}\n")
    assert main(["stage", "sft", "--config", str(stage), "--dry-run", "train.max_steps=5", "seed=2"]) == 0
    assert main(["stage", "sft", "--config", str(stage), "--dry-run", "train.max_steps=x"]) == 2
    assert "stages[0] (sft).config.train.max_steps: expects int, got str 'x'" in capsys.readouterr().err


def test_fresh_keeps_the_previous_run_and_starts_a_new_one(tmp_path, base, monkeypatch, capsys):
    from posttrain.cli import main
    out = tmp_path / "out"
    (out / "01_first").mkdir(parents=True)
    (out / "01_first" / "COMPLETE").write_text("{}")
    started = []

    def fake_run(cfg, planned, from_stage=None):  # what the CLI needs of a run: its report.json
        started.append(planned)
        out.mkdir(exist_ok=True)
        report = {"pipeline": "base", "run_dir": str(out), "base": {}, "stages": []}
        (out / "report.json").write_text(json.dumps(report))
        return out
    monkeypatch.setattr(pipeline, "run", fake_run)
    assert main(["run", str(base), "--output-dir", str(out), "--fresh", "--dry-run"]) == 0
    assert (out / "01_first" / "COMPLETE").is_file()  # a dry run moves nothing
    assert main(["run", str(base), "--output-dir", str(out), "--fresh"]) == 0
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.")]
    assert len(kept) == 1 and (kept[0] / "01_first" / "COMPLETE").is_file()
    assert not (out / "01_first").exists() and "1. first" in capsys.readouterr().out
    assert not started[0][0].ctx.is_complete()


def test_a_field_added_later_leaves_finished_runs_resumable():
    """A field marked `added` counts in the config hash only when set away from its default."""
    import dataclasses

    from posttrain.core.config import identity

    @dataclasses.dataclass
    class Before:
        steps: int = 10

    @dataclasses.dataclass
    class After:
        steps: int = 10
        keep: str = dataclasses.field(default="all", metadata={"added": True})
        extra: list = dataclasses.field(default_factory=list, metadata={"added": True})

    assert identity(After()) == identity(Before()) == {"steps": 10}
    assert identity(After(keep="think")) == {"steps": 10, "keep": "think"}
    assert identity({"a": [After(extra=[1])]}) == {"a": [{"steps": 10, "extra": [1]}]}
