"""A two-stage toy pipeline: completion markers, skip, resume after SIGKILL, --from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import yaml
from transformers import AutoModelForCausalLM

from tests.conftest import KILLER, REPO, checkpoint_digest, cli, records, untouched


@pytest.fixture
def toy(tmp_path, tiny_model, chat_jsonl):
    path = tmp_path / "toy.yaml"
    path.write_text(textwrap.dedent(f"""
        name: toy
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: sft
            id: first
            config: {{data: {chat_jsonl}, max_length: 64,
                      train: {{max_steps: 6, save_steps: 2, batch_size: 2, learning_rate: 1.0e-3}}}}
          - stage: sft
            id: second
            config: {{data: {chat_jsonl}, max_length: 64, train: {{max_steps: 2, batch_size: 2}}}}
        """))
    return path


@pytest.mark.slow
def test_killed_stage_resumes_then_skips(toy, tmp_path):
    run = tmp_path / "run"
    first, log = run / "01_first", tmp_path / "record.jsonl"
    killed = cli("run", str(toy), env={"KILL_AT_STEP": "2", "RECORD": str(log)}, script=KILLER)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (first / "checkpoints" / "checkpoint-2").is_dir()
    assert not (first / "COMPLETE").exists() and not (run / "02_second").exists()
    checkpoint, data = checkpoint_digest(first / "checkpoints" / "checkpoint-2"), untouched(first / "data")
    assert data and records(log, first / "checkpoints")[0]["weights"] != checkpoint  # two steps moved the weights

    resumed = cli("run", str(toy), env={"RECORD": str(log)}, script=KILLER)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "first: resuming from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    # the rerun began at step 2 with the checkpoint's weights, ran steps 3-6 only, on the saved data
    seen = records(log, first / "checkpoints")
    assert [(r["begin"], r["weights"]) for r in seen if "begin" in r] == [(0, seen[0]["weights"]), (2, checkpoint)]
    assert [r["step"] for r in seen if "step" in r] == [1, 2, 3, 4, 5, 6]
    assert untouched(first / "data") == data
    done = json.loads((first / "COMPLETE").read_text())
    assert done["resumed"] is True and done["metrics"]["global_step"] == 6
    assert not (first / "checkpoints").exists()  # resume points go once the stage is complete
    second = json.loads((run / "02_second" / "COMPLETE").read_text())
    assert second["resumed"] is False
    AutoModelForCausalLM.from_pretrained(run / "02_second" / "model")  # loadable
    report = json.loads((run / "report.json").read_text())
    assert [s["id"] for s in report["stages"]] == ["first", "second"]
    assert all(s["wall_time_s"] > 0 for s in report["stages"])
    assert "- no evaluation: the pipeline has no `eval` suites" in (run / "report.md").read_text()
    assert "stage 2/2 second [sft]" in resumed.stderr and "second: training step 2/2" in resumed.stderr
    assert "first: training step 6/6" in resumed.stderr and "left" in resumed.stderr  # status lines
    summary = resumed.stdout.strip().splitlines()[-5:]  # the terminal summary (this toy has no eval)
    assert summary[0].startswith("pipeline toy: 2 stage(s)") and summary[1].startswith("stages: first ")
    assert summary[2:] == ["first: not evaluated (the pipeline has no `eval`)",
                           "second: not evaluated (the pipeline has no `eval`)", f"report: {run / 'report.md'}"]

    stamp = (run / "02_second" / "model" / "model.safetensors").stat().st_mtime
    again = cli("run", str(toy))
    assert again.returncode == 0 and again.stderr.count("done in an earlier run") == 2
    assert (run / "02_second" / "model" / "model.safetensors").stat().st_mtime == stamp

    rerun = cli("run", str(toy), "--from", "second")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    previous = list((run / ".previous").glob("*/02_second/COMPLETE"))
    assert len(previous) == 1  # the earlier output was moved aside, not lost
    assert (run / "02_second" / "COMPLETE").is_file() and (run / "01_first" / "COMPLETE").is_file()


@pytest.mark.slow
def test_changed_config_of_finished_stage_is_refused(toy, tmp_path):
    assert cli("run", str(toy)).returncode == 0
    toy.write_text(toy.read_text().replace("max_steps: 2", "max_steps: 3"))
    res = cli("run", str(toy))
    assert res.returncode == 2
    assert "stage second: finished" in res.stderr and "--from second" in res.stderr


@pytest.mark.slow
def test_finished_stages_are_recognised_however_the_run_dir_is_spelled(toy, tmp_path):
    """The config hash keys a stage's input model by its place in the run dir: a run started with an
    absolute output dir resumes under a relative one and after the run dir moves (these used to be
    refused as a changed config); a marker written with the path as spelled is still honoured."""
    import os
    import shutil

    from posttrain import pipeline
    assert cli("run", str(toy)).returncode == 0
    relative = os.path.relpath(tmp_path / "run", REPO)
    again = cli("run", str(toy), "--output-dir", relative)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("done in an earlier run") == 2
    shutil.move(tmp_path / "run", tmp_path / "moved")
    moved = cli("run", str(toy), "--output-dir", str(tmp_path / "moved"))
    assert moved.returncode == 0 and moved.stderr.count("done in an earlier run") == 2, moved.stderr[-2000:]

    _, planned = pipeline.load(toy, str(tmp_path / "moved"))
    second = planned[1]
    marker = second.ctx.dir / "COMPLETE"
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "config_hash": second._hash(second.ctx.input_model)}))
    assert second.finished_with_this_config()  # an older marker
    marker.write_text(json.dumps({**info, "config_hash": second._hash("elsewhere/model")}))
    assert not second.finished_with_this_config()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "pipelines").glob("*.yaml")
                                        if "stages:" in p.read_text()))
def test_every_shipped_pipeline_plans(name):
    from posttrain import pipeline
    cfg, planned = pipeline.load(REPO / "pipelines" / name)
    assert planned and all(p.ctx.input_model for p in planned)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "pipelines" / "gpu").glob("*.yaml")))
def test_every_gpu_recipe_dry_runs_and_names_its_placeholders(name, tmp_path, capsys):
    """The GPU recipes plan here (every key, every accelerate config checked); their model paths
    are placeholders, listed by --dry-run under the keys that set them, and a run refuses them."""
    from posttrain.cli import main
    path, out = REPO / "pipelines" / "gpu" / name, str(tmp_path / "run")
    assert main(["run", str(path), "--dry-run", "--output-dir", out]) == 0
    dry = capsys.readouterr().out
    assert "placeholders to set before a run" in dry and "    model: <" in dry
    assert "processes (pipelines/accelerate/" in dry  # stages launched on 8 GPUs each
    assert "[0]" not in dry  # stages named by id, as overrides name them
    assert main(["run", str(path), "--output-dir", out]) == 2
    err = capsys.readouterr().err
    assert "placeholder(s) not set: " in err and "model: <" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_gpu_recipes_use_every_shipped_accelerate_config():
    configs = {p.name for p in (REPO / "pipelines" / "accelerate").glob("*.yaml")}
    used = " ".join(p.read_text() for p in (REPO / "pipelines" / "gpu").glob("*.yaml"))
    assert configs == {"ddp.yaml", "fsdp2.yaml", "zero2.yaml", "zero3.yaml", "multi_node.yaml"}
    assert all(f"pipelines/accelerate/{c}" in used for c in configs)
    assert "pipelines/gpu/qwen3_multi_node.yaml" in (REPO / "pipelines" / "accelerate" / "slurm.sbatch").read_text()


@pytest.mark.slow
def test_table21_distils_from_the_hybrid_stage4_teacher_into_at_most_half():
    """The old set-up's flaw: a stage-2 teacher never learned /no_think, yet the student sampled
    half its prompts in no-think mode. Every distillation branch now learns from the stage-4 model,
    and every compared branch starts from the same off-policy student."""
    from posttrain import pipeline
    cfg, planned = pipeline.load(REPO / "pipelines" / "table21.yaml")
    by_id = {p.ctx.stage_id: p for p in planned}
    teacher = str(by_id["general_rl"].ctx.model_dir)
    student = str(by_id["off_policy"].ctx.model_dir)
    spec = by_id["off_policy"].config.student
    assert by_id["off_policy"].ctx.input_model == teacher and spec == "layers=30,mlp=232"
    for sid in cfg.compare:
        p = by_id[sid]
        if p.spec.stage == "distill":
            assert p.ctx.input_model == teacher and p.config.student == "@off_policy"
            assert not p.config.off_policy.enabled
        else:
            assert p.ctx.input_model == student
    assert {by_id[s].config.on_policy.divergence for s in cfg.compare if by_id[s].spec.stage == "distill"} == \
        {"reverse_kl", "forward_kl", "jsd"}
    small, full, _ = _student_size(cfg.model, spec)
    assert small <= full / 2, (small, full)


def test_demo_covers_all_five_stages_with_the_kinds_it_names():
    from data_builders.tasks import load_tasks
    from posttrain import pipeline
    cfg, planned = pipeline.load(REPO / "pipelines" / "demo.yaml")
    assert {"cold_start", "reasoning_rl", "fusion", "reward_model", "general_rl", "distill"} <= \
        {p.spec.stage for p in planned}
    kinds = load_tasks(REPO / "pipelines" / "tasks_demo.yaml")
    assert "tool_call_format" not in kinds and "shop_agent" not in kinds and "preference" in kinds
    # stage 4 trains on some of the kinds the eval scores (the others stay scored), and on preference
    general = next(p for p in planned if p.spec.stage == "general_rl").config
    trained = load_tasks(general.tasks)
    assert cfg.eval["tasks"]["spec"] == "pipelines/tasks_demo.yaml"
    assert "preference" in trained and set(trained) < set(kinds) and "think_follow" not in trained
    # its student has at most half the teacher's parameters (heads and MLP pruned)
    small, full, opts = _student_size(cfg.model, next(p for p in planned if p.spec.stage == "distill").config.student)
    assert "heads" in opts and small <= full / 2, (small, full)


def _student_size(model: str, spec: str) -> tuple[int, int, dict]:
    """(student parameters, teacher parameters, parsed options) of a `layers=N[,heads=H],mlp=M` SPEC
    on MODEL, counted on the meta device from the project's own parser of the spec."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from posttrain.core.models import resolve_model
    from stages.student import student_spec
    config = AutoConfig.from_pretrained(resolve_model(model))
    with torch.device("meta"):
        full = sum(t.numel() for t in AutoModelForCausalLM.from_config(config).parameters())
        opts = student_spec(resolve_model(model), spec)[2]
        config.num_attention_heads = opts.get("heads", config.num_attention_heads)
        config.num_hidden_layers, config.intermediate_size = opts["layers"], opts["mlp"]
        small = sum(t.numel() for t in AutoModelForCausalLM.from_config(config).parameters())
    return small, full, opts


def test_think_follow_and_task_kinds_only_for_the_models_named(tmp_path, monkeypatch):
    from posttrain.core.generation import EnginePool
    from posttrain.pipeline import PipelineConfig, runner
    from posttrain.thinkfollow import ThinkFollowConfig
    seen = {}

    def fake_evaluate(model, cfg, suite_modes=None, **kw):
        seen[model] = (cfg.think_follow is not None, cfg.tasks is not None, suite_modes)
        seen[model, "benchmarks"] = sorted(cfg.benchmarks)
        seen[model, "suites"] = sorted(cfg.suites)
        return {"model": model, "suites": {}, **({"think_follow": {"score": 1.0}} if cfg.think_follow else {}),
                **({"benchmarks": {k: {"think": {"accuracy": 1.0}} for k in cfg.benchmarks}} if cfg.benchmarks else {})}
    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    cfg = PipelineConfig(name="t", stages=[], eval={
        "suites": {"lin": {"family": "linear", "n": 2}, "lin_more": {"family": "linear", "n": 4, "models": ["fusion"]}},
        "think_follow": {"n": 2, "models": ["fusion"]},
        "tasks": {"spec": str(REPO / "pipelines" / "tasks.yaml"), "models": ["fusion"]},
        "mode_models": {"no_think": ["fusion"]}, "benchmarks": {"humaneval": {"models": ["fusion"]}}})
    run_eval = runner._evaluator(cfg, tmp_path, EnginePool())
    run_eval("a", tmp_path / "a.json", "base")
    run_eval("b", tmp_path / "b.json", "fusion")
    assert seen == {"a": (False, False, ["think"]), "b": (True, True, ["think", "no_think"]),
                    ("a", "benchmarks"): [], ("b", "benchmarks"): ["humaneval"],
                    ("a", "suites"): ["lin"], ("b", "suites"): ["lin", "lin_more"]}
    (tmp_path / "c.json").write_text(json.dumps({"suites": {}, "think_follow": {"score": 0.5}}))
    assert run_eval("c", tmp_path / "c.json", "base")["think_follow"] == {"score": 0.5}  # an earlier score is kept
    # which models are scored is not a setting of the score: earlier results stay reusable
    assert ThinkFollowConfig(models=["fusion"]).settings(0) == ThinkFollowConfig().settings(0)


@pytest.mark.parametrize("given, message", [
    ({"mode_models": {"no_think": ["fusoin"]}},
     "eval.mode_models.no_think: 'fusoin' is not `base` or a stage id (stages: first, second)"),
    ({"think_follow": {"models": ["base", "third"]}}, "eval.think_follow.models: 'third' is not `base` or a stage id"),
    ({"think_follow": {"n": 0}}, "n: ThinkFollow needs at least 1 conversation, got 0"),
    ({"modes": ["think"], "mode_models": {"no_think": ["first"]}},
     "eval.mode_models: no_think is not one of the eval's modes ['think']"),
    ({"mode_models": {"no_think": ["base"]}}, None),
    ({"benchmarks": {"humaneval": {"models": ["secnod"]}}}, "eval.benchmarks.humaneval.models: 'secnod' is not"),
    ({"benchmarks": {"gsm8k": {"kind": "math"}}}, "eval.benchmarks: benchmark 'gsm8k' (math) needs data: FILE"),
    ({"benchmarks": {"humaneval": {"models": ["second"], "limit": 8}}}, None),
    ({"suites": {"lin": {"family": "linear", "n": 2, "models": ["base", "thrid"]}}},
     "eval.suites.lin.models: 'thrid' is not `base` or a stage id"),
])
def test_eval_models_must_name_the_base_model_or_a_stage(toy, tmp_path, given, message):
    from posttrain import pipeline
    from posttrain.core.config import ConfigError
    data = yaml.safe_load(toy.read_text())
    data["eval"] = {"suites": {"lin": {"family": "linear", "n": 2}}, "modes": ["think", "no_think"], **given}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    if message is None:
        pipeline.load(path)
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        pipeline.load(path)


def test_a_second_run_on_the_same_directory_is_refused_while_the_first_holds_it(toy, tmp_path):
    """Two `posttrain run` on one run directory at once: the second stops in one line and writes nothing."""
    from posttrain import pipeline
    from posttrain.core.rundir import run_lock
    cfg, planned = pipeline.load(toy)
    run_dir = planned[0].ctx.run_dir
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from posttrain.core.rundir import run_lock
        with run_lock(Path({str(run_dir)!r})):
            print("held", flush=True)
            time.sleep(60)
        """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", str(toy)], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2
        assert f"{run_dir}: in use by another posttrain run (pid {holder.pid})" in res.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run_dir):  # a killed holder leaves no stale lock
        pass


@pytest.mark.slow
def test_a_checkpoint_cut_short_by_a_kill_during_save_is_skipped_on_resume(toy, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "01_first" / "checkpoints"
    killed = cli("run", str(toy), env={"KILL_AT_STEP": "4"}, script=KILLER)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (ckpts / "checkpoint-4" / "trainer_state.json").unlink()  # the Trainer writes it last: the save was cut
    resumed = cli("run", str(toy))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-4 was not finished" in resumed.stderr and "resuming from" in resumed.stderr
    assert f"resuming from {ckpts / 'checkpoint-2'}" in resumed.stderr
    done = json.loads((run / "01_first" / "COMPLETE").read_text())
    assert done["resumed"] is True and done["metrics"]["global_step"] == 6


def test_no_space_left_while_saving_is_one_line_and_keeps_what_was_finished(toy, tmp_path, monkeypatch, capsys):
    import errno

    from posttrain.cli import main
    from posttrain.core import context, rundir
    run = tmp_path / "run"
    real = rundir.write_json

    def full_disk(path, data):
        if path.name == rundir.MARKER and path.parent.name == "02_second":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)
    monkeypatch.setattr(context, "write_json", full_disk)  # where the stage marker is written
    assert main(["run", str(toy)]) == 2
    err = capsys.readouterr().err
    assert f"error: no space left on the device while writing {run / '02_second' / 'COMPLETE'}" in err
    assert (run / "01_first" / "COMPLETE").is_file() and not (run / "02_second" / "COMPLETE").exists()
    monkeypatch.setattr(context, "write_json", real)
    assert main(["run", str(toy)]) == 0  # space again: the first stage is kept, the second redone
    assert json.loads((run / "01_first" / "COMPLETE").read_text())["resumed"] is False
    assert (run / "02_second" / "COMPLETE").is_file()


def test_dry_run_flags_a_finished_stage_whose_config_changed(tmp_path, capsys):
    """A stage finished under another config is not "done": the dry run says so and how to rerun it,
    and a run refuses before anything is written."""
    from posttrain import pipeline
    from posttrain.cli import main
    from posttrain.core.rundir import write_json
    out = tmp_path / "run"
    _, planned = pipeline.load(REPO / "pipelines" / "demo.yaml", output_dir=str(out))
    first, second = planned[0], planned[1]
    for p, recorded in ((first, first.config_hash), (second, "0123456789abcdef")):
        p.ctx.dir.mkdir(parents=True)
        write_json(p.ctx.dir / "COMPLETE", {"config_hash": recorded})
    assert main(["run", str(REPO / "pipelines" / "demo.yaml"), "--dry-run", "--output-dir", str(out)]) == 0
    dry = capsys.readouterr().out
    assert re.search(rf"{first.ctx.stage_id} .*\(done\)", dry)
    assert re.search(rf"{second.ctx.stage_id} .*\(done with another config: --from {second.ctx.stage_id}\)", dry)
    assert main(["run", str(REPO / "pipelines" / "demo.yaml"), "--output-dir", str(out)]) == 2
    assert f"stage {second.ctx.stage_id}: finished in" in capsys.readouterr().err
    assert not (out / "pipeline.yaml").exists()
