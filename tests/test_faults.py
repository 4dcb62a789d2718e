"""The fault suite: stages on several processes, kills in every stage kind, rewards that hang.

Each case ends with nothing lost and nothing marked complete that is not. (Also here in spirit, in
test_pipeline.py: SFT killed mid-stage, a checkpoint cut short during its save, no space left while
saving, two runs on one directory; bad data files and rows in test_sources_mapping.py.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tests.conftest import KILLER, REPO, checkpoint_digest, cli, records, untouched


def _yaml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# One stage of each kind on the tiny model, checkpointing at step 2 of 4. GRPO is rewarded by completion
# length, which varies on a random model (a math reward would be 0 everywhere: nothing would train).
STAGES = {
    "reasoning_rl": """
          - stage: reasoning_rl
            config:
              queries: {families: {arithmetic: 8}, k: 2, band: [-1.0, 2.0], max_new_tokens: 8}
              rewards: {math: [{name: "tests.conftest:longer"}]}
              num_generations: 4
              max_completion_length: 8
              train: {max_steps: 4, save_steps: 2, batch_size: 4, learning_rate: 1.0e-3}""",
    "cold_start": """
          - stage: cold_start
            config:
              data: {families: {arithmetic: 8, linear: 8}, no_cot_k: 1}
              max_length: 256
              train: {max_steps: 4, save_steps: 2, batch_size: 2}""",
    "fusion": """
          - stage: fusion
            config:
              data: {examples: 12, responder: trace, families: {arithmetic: 6, linear: 6}}
              max_length: 512
              train: {max_steps: 4, save_steps: 2, batch_size: 2}""",
    "general_rl": """
          - stage: general_rl
            config:
              tasks: TASKS
              examples: 8
              held_out: 1
              num_generations: 2
              max_completion_length: 8
              train: {max_steps: 4, save_steps: 2, batch_size: 4, learning_rate: 1.0e-3}""",
    "distill": """
          - stage: distill
            config:
              student: layers=1
              prompts: {families: {arithmetic: 8}}
              off_policy: {max_new_tokens: 8, filter_by_reward: false, min_examples: 8,
                           train: {max_steps: 4, save_steps: 2, batch_size: 4}}
              on_policy: {max_completion_length: 8, train: {max_steps: 4, save_steps: 2, batch_size: 2}}""",
    "reward_model": """
          - stage: reward_model
            eval: false
            config: {data: PAIRS, heldout_fraction: 0.25, train: {max_steps: 4, save_steps: 2, batch_size: 4}}""",
}


def _ranks_alive(job: Path) -> list[int]:
    """PIDs of processes whose command line names this launch job (the ranks and their launcher)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(job).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_one_stage_on_two_processes_trains_in_sync_and_resumes_after_a_kill(tmp_path, tiny_model, chat_jsonl):
    """DDP over gloo on CPU: both ranks step together and end with the same weights; killing the
    runner stops its ranks (none lives on), and the rerun resumes every rank from the checkpoint."""
    run = tmp_path / "run"
    pipeline = _yaml(tmp_path / "p.yaml", f"""
        name: ddp
        model: {tiny_model}
        output_dir: {run}
        stages:
          - stage: sft
            id: first
            launch: {{num_processes: 2}}
            config: {{data: {chat_jsonl}, max_length: 64,
                      train: {{max_steps: 40, save_steps: 2, batch_size: 2, learning_rate: 1.0e-3}}}}
        """)
    stage = run / "01_first"
    runner = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(pipeline)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (stage / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
        assert runner.poll() is None and time.monotonic() < deadline, runner.stderr.read()[-3000:]
        time.sleep(0.2)
    runner.send_signal(signal.SIGKILL)  # the runner dies with no cleanup
    runner.wait()
    for _ in range(100):  # its launcher got SIGTERM from the kernel and stops the ranks
        if not _ranks_alive(stage / "launch.json"):
            break
        time.sleep(0.2)
    assert not _ranks_alive(stage / "launch.json")
    assert not (stage / "COMPLETE").exists()

    resumed = cli("run", str(pipeline))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "launching 2 process(es)" in resumed.stderr and "first: resuming from" in resumed.stderr
    done = json.loads((stage / "COMPLETE").read_text())
    assert done["resumed"] is True and done["metrics"]["global_step"] == 40
    launch = done["metrics"]["launch"]
    assert launch["processes"] == 2 and launch["distributed_type"] == "DistributedType.MULTI_CPU"
    assert launch["train"] == {"ranks_trained": 2, "weights_agree": True}
    ranks = [json.loads((stage / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in ranks] == [(0, 2, 40), (1, 2, 40)]
    trained = AutoModelForCausalLM.from_pretrained(stage / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert any((a != b).any() for a, b in zip(trained.parameters(), base.parameters(), strict=True))
    assert not (stage / "checkpoints").exists() and (run / "report.md").is_file()


@pytest.mark.slow
def test_grpo_and_both_distillation_phases_run_on_two_processes(tmp_path, tiny_model):
    """The other trainers under a launch: TRL's GRPO (each rank samples its share of the groups, on a
    reward with variance, so the weights move) and distillation's two phases (rank 0 builds the student
    and writes each phase's marker)."""
    run = tmp_path / "run"
    path = _yaml(tmp_path / "p.yaml", f"""
        name: ddp2
        model: {tiny_model}
        output_dir: {run}
        stages:""" + STAGES["reasoning_rl"] + "\n            launch: {num_processes: 2}\n"
                 + STAGES["distill"] + "\n            launch: {num_processes: 2}\n")
    done = cli("run", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    rl = json.loads((run / "01_reasoning_rl" / "COMPLETE").read_text())["metrics"]
    assert rl["global_step"] == 4 and rl["launch"]["train"] == {"ranks_trained": 2, "weights_agree": True}
    # the ranks agree on weights that training moved: each rank's final weights are the saved model's
    trained = checkpoint_digest(run / "01_reasoning_rl" / "model")
    assert trained != checkpoint_digest(tiny_model)
    assert {json.loads((run / "01_reasoning_rl" / "ranks" / f"rank{r}.json").read_text())["weights_sha256"]
            for r in (0, 1)} == {trained}
    distill = json.loads((run / "02_distill" / "COMPLETE").read_text())["metrics"]
    for phase in ("off_policy", "on_policy"):
        assert distill["launch"][phase] == {"ranks_trained": 2, "weights_agree": True}
        assert (run / "02_distill" / phase / "COMPLETE").is_file()
    assert AutoModelForCausalLM.from_pretrained(run / "02_distill" / "model").config.num_hidden_layers == 1


def test_a_launched_stage_is_rebuilt_from_its_job_file_as_planned(tmp_path):
    """The job file is a plain dataclass round trip: the ranks see the stage as the runner planned it,
    config and context alike (the eval and ThinkFollow texts cold start keeps out of its data, the
    accuracy-vs-compute curve setting, the run's engine settings: not the default a fresh process has);
    only the CPU clock starts again, in the rank."""
    from dataclasses import replace

    from posttrain import pipeline
    from posttrain.core.generation import EnginePool
    from posttrain.pipeline.launch import read_job, write_job
    cfg, planned = pipeline.load(REPO / "pipelines" / "table21.yaml", output_dir=str(tmp_path / "run"),
                                 overrides=["backend=vllm", "vllm.max_model_len=1024", "transformers.dtype=float32"])
    for p in (planned[0], next(p for p in planned if p.ctx.stage_id == "rl_branch")):
        p.ctx.dir.mkdir(parents=True)
        module, config, ctx = read_job(write_job(p.ctx, p.spec.stage, p.config))
        assert module.__name__ == f"stages.{p.spec.stage}" and config == p.config
        assert replace(ctx, cpu_start=None) == p.ctx and ctx.cpu_start > 0
    assert ctx.curve_points == 3 and ctx.curve_dir == p.ctx.dir / "curve"
    assert ctx.engines == EnginePool("vllm", {"max_model_len": 1024}, {"dtype": "float32"}) and len(ctx.held_out) > 40


def test_launch_command_lines(tmp_path, monkeypatch):
    import torch

    from posttrain.pipeline.launch import LaunchConfig, command
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    job = tmp_path / "launch.json"
    cpu = command(LaunchConfig(num_processes=2), job)
    assert cpu[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                       "posttrain.pipeline.worker", str(job)]
    config = REPO / "pipelines" / "accelerate" / "fsdp2.yaml"
    nodes = command(LaunchConfig(num_processes=8, config=str(config), num_machines=2, main_process_ip="10.0.0.1"),
                    job, rank=1)
    assert nodes[1:4] == ["-m", "accelerate.commands.launch", "--config_file"] and nodes[4] == str(config)
    assert {"--num_processes=16", "--num_machines=2", "--machine_rank=1", "--main_process_ip=10.0.0.1",
            "--main_process_port=29500"} <= set(nodes)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "--multi_gpu" in command(LaunchConfig(num_processes=4), job)


@pytest.mark.parametrize("launch, error", [
    ("{num_processes: 0}", "num_processes and num_machines must be at least 1"),
    ("{num_processes: 2, num_machines: 2}", "launch.main_process_ip: needed with num_machines=2"),
    ("{num_processes: 2, config: nowhere.yaml}", "nowhere.yaml"),
    ("{processes: 2}", "processes"),
    ("{num_processes: 2, launcher: torchrun, config: BAD}", "needs launcher `accelerate` or `auto`"),
    ("{num_processes: 2, config: BAD}", "unknown keys (['bogus_key'])"),
])
def test_bad_launch_settings_are_refused_at_plan_time(tmp_path, tiny_model, chat_jsonl, launch, error):
    from posttrain import pipeline
    from posttrain.core.config import ConfigError
    (tmp_path / "bad.yaml").write_text("distributed_type: FSDP\nbogus_key: 3\n")
    launch = launch.replace("BAD", str(tmp_path / "bad.yaml"))
    path = _yaml(tmp_path / "p.yaml", f"""
        name: bad
        model: {tiny_model}
        stages:
          - stage: sft
            launch: {launch}
            config: {{data: {chat_jsonl}}}
        """)
    with pytest.raises(ConfigError, match="launch") as err:
        pipeline.load(path)
    assert error in str(err.value)


def test_a_second_machine_joins_each_multi_machine_stage_after_the_stages_before_it(tmp_path, tiny_model,
                                                                                     chat_jsonl, monkeypatch):
    """`posttrain run` on a machine of rank 1 (Slurm's SLURM_NODEID) runs nothing itself: it waits
    for the earlier stages' markers, then starts its share of the launched stage."""
    from posttrain import pipeline
    from posttrain.pipeline import launch
    path = _yaml(tmp_path / "p.yaml", f"""
        name: nodes
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - {{stage: sft, id: one, config: {{data: {chat_jsonl}}}}}
          - stage: sft
            id: two
            launch: {{num_processes: 2, num_machines: 2, main_process_ip: 10.0.0.1}}
            config: {{data: {chat_jsonl}}}
        """)
    cfg, planned = pipeline.load(path)
    started = []

    def fake_run(cmd, **kwargs):
        assert (planned[0].ctx.dir / "COMPLETE").is_file(), "joined before the stage before it was finished"
        started.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    def finish_one(seconds):  # rank 0 finishes stage one while this machine waits
        planned[0].ctx.dir.mkdir(parents=True, exist_ok=True)
        (planned[0].ctx.dir / "COMPLETE").write_text("{}")
    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    monkeypatch.setattr(launch.time, "sleep", finish_one)
    monkeypatch.setenv("SLURM_NODEID", "1")
    assert pipeline.run(cfg, planned) == planned[0].ctx.run_dir
    assert len(started) == 1 and "--node_rank=1" in started[0] and "--nnodes=2" in started[0]
    assert not (planned[0].ctx.run_dir / ".lock").exists()  # the runner's lock is rank 0's


def _one_stage(tmp_path: Path, kind: str, tiny_model: Path) -> Path:
    """A one-stage pipeline YAML of STAGES[kind], with the files it needs."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"chosen": f"a fine answer {i}", "rejected": "zzz"}) for i in range(24)))
    tasks = _yaml(tmp_path / "tasks.yaml", """
        tasks:
          echo: {area: instruction, source: instruction, params: {families: [keyword]},
                 rewards: [{name: "tests.conftest:longer"}]}
        """)
    return _yaml(tmp_path / "p.yaml", f"""
        name: kill
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:""" + STAGES[kind].replace("PAIRS", str(pairs)).replace("TASKS", str(tasks)) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("kind, phase", [("cold_start", ""), ("reasoning_rl", ""), ("fusion", ""),
                                         ("general_rl", ""), ("distill", "off_policy"), ("distill", "on_policy"),
                                         ("reward_model", "")])
def test_a_stage_killed_mid_training_resumes_from_its_last_checkpoint(tmp_path, tiny_model, kind, phase):
    """SIGKILL right after the first checkpoint of each stage kind and each distillation phase: the rerun
    starts training at that checkpoint's step with its weights (which training had moved), runs only
    the steps left, reuses the data the stage saved (finished phases too), and only then is the stage
    marked done."""
    path, log = _one_stage(tmp_path, kind, tiny_model), tmp_path / "record.jsonl"
    stage = tmp_path / "run" / f"01_{kind}"
    where = stage / phase if phase else stage
    killed = cli("run", str(path), env={"KILL_AT_STEP": "2", "KILL_IN": str(where / "checkpoints"),
                                        "RECORD": str(log)}, script=KILLER)
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoint = where / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file()
    assert not (stage / "COMPLETE").exists() and not (where / "COMPLETE").exists()
    weights, saved = checkpoint_digest(checkpoint), untouched(stage)
    before = records(log, where / "checkpoints")
    assert [r["step"] for r in before if "step" in r] == [1, 2] and before[0]["weights"] != weights
    if phase == "on_policy":
        assert (stage / "off_policy" / "COMPLETE").is_file()  # the finished phase is kept, not redone

    resumed = cli("run", str(path), env={"RECORD": str(log)}, script=KILLER)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoint}" in resumed.stderr
    after = records(log, where / "checkpoints")[len(before):]
    assert after[0]["begin"] == 2 and after[0]["weights"] == weights  # the checkpoint's weights, not the input's
    assert [r["step"] for r in after if "step" in r] == [3, 4]
    if phase == "off_policy":  # the next phase trains from the resumed phase's model, from step 0
        assert records(log, stage / "on_policy" / "checkpoints")[0]["begin"] == 0
    for name, stamp in saved.items():  # data and finished phases: reused, not written again
        if "/data/" in f"/{name}" or name.startswith("off_policy/") and phase == "on_policy":
            assert untouched(stage).get(name) == stamp, name
    assert json.loads((stage / "COMPLETE").read_text())["resumed"] is True
    assert not (where / "checkpoints").exists()
    metrics = json.loads((where / "metrics.json").read_text())
    assert metrics.get("train", metrics)["global_step"] == 4
    assert (stage / "model" / "config.json").is_file()


@pytest.mark.slow
def test_a_stage_killed_while_saving_its_data_builds_it_again(tmp_path, tiny_model):
    """SIGKILL while the cold start's training set is being written: nothing half-written is taken for
    data on the rerun; the set is built again, whole, and the stage completes."""
    path = _one_stage(tmp_path, "cold_start", tiny_model)
    data = tmp_path / "run" / "01_cold_start" / "data"
    killed = cli("run", str(path), env={"KILL_SAVING": ".train.tmp"}, script=KILLER)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (data / ".train.tmp" / "dataset_info.json").is_file() and not (data / "train").exists()
    resumed = cli("run", str(path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from datasets import load_from_disk
    built = json.loads((data.parent / "cold_start_data.json").read_text())["examples"]
    assert len(load_from_disk(str(data / "train"))) == built > 0 and not (data / ".train.tmp").exists()
    assert json.loads((data.parent / "COMPLETE").read_text())["metrics"]["global_step"] == 4


calls: list[int] = []


def stuck_batches(completions, **kwargs):
    """A judge whose endpoint hangs on any batch of more than one sample and fails on every third
    sample it is then asked for alone."""
    if len(completions) > 1:
        time.sleep(3600)  # a daemon thread: it is left behind, and ends with the process
    calls.append(1)
    if len(calls) % 3 == 0:
        raise ConnectionError("judge endpoint reset the connection")
    return [1.0]


def test_grpo_goes_on_when_its_reward_hangs_or_raises(tmp_path, tiny_model, caplog, run_one_stage):
    import logging
    calls.clear()
    path = _yaml(tmp_path / "p.yaml", f"""
        name: flaky
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: reasoning_rl
            config:
              queries: {{families: {{arithmetic: 4}}, k: 1, band: [-1.0, 2.0], max_new_tokens: 4}}
              rewards: {{math: [{{name: "{__name__}:stuck_batches", params: {{time_limit: 0.2}}}}]}}
              num_generations: 4
              max_completion_length: 8
              train: {{max_steps: 2, batch_size: 4}}
        """)
    with caplog.at_level(logging.WARNING, logger="posttrain.rewards"):
        run_dir, stage, metrics = run_one_stage(path)
    assert metrics["global_step"] == 2 and (stage.dir / "COMPLETE").is_file()
    assert "no answer within 0.8 s" in caplog.text  # the batch of 4
    assert "ConnectionError: judge endpoint reset the connection); it scores None" in caplog.text
    assert len(calls) == 8  # 2 steps x 4 samples, each asked alone after its batch hung
