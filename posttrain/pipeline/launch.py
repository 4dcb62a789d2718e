"""A stage on several processes: the runner starts it with `torchrun` or `accelerate launch` as a
child process and waits; it keeps its own role (plan, markers, eval, report).

    stages:
      - stage: cold_start
        launch: {num_processes: 8, config: pipelines/accelerate/fsdp2.yaml}

Inside the child every rank runs the stage module (`python -m posttrain.pipeline.worker JOB.json`) and the
trainer shards the batches (DDP, FSDP2 or DeepSpeed ZeRO, as the accelerate config says; gloo on
CPU). Datasets are built by rank 0 first and loaded by the others; rank 0 alone writes the model,
the metrics and phase markers. A killed stage resumes on every rank from the same checkpoint.

Several machines: the same `posttrain run` on each (`srun --ntasks-per-node=1`); the machine whose
rank (`MACHINE_RANK`, else `SLURM_NODEID`) is 0 is the runner, the others only join the launched
stages, each once the stages before it are finished (pipelines/accelerate/multi_node.yaml).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

import stages
from posttrain.core.config import ConfigError, ExistingPath, from_dict, to_dict
from posttrain.core.context import StageContext
from posttrain.core.rundir import cpu_seconds, read_json, write_json

log = logging.getLogger("posttrain.launch")
JOB, RESULT = "launch.json", "launch_result.json"


class LaunchError(RuntimeError):
    """A launched stage failed (its ranks printed why)."""


@dataclass
class LaunchConfig:
    num_processes: int = 1  # processes per machine (GPUs per node; CPU processes here)
    config: ExistingPath | None = None  # an accelerate config file (pipelines/accelerate/); None: plain DDP
    launcher: Literal["auto", "accelerate", "torchrun"] = "auto"  # auto: accelerate with a config or CUDA
    num_machines: int = 1
    main_process_ip: str | None = None  # the rank-0 machine (needed when num_machines > 1)
    main_process_port: int = 29500

    @property
    def distributed(self) -> bool:
        return self.num_processes * self.num_machines > 1 or self.config is not None

    def check(self, where: str) -> None:
        if self.num_processes < 1 or self.num_machines < 1:
            raise ConfigError(f"{where}: num_processes and num_machines must be at least 1")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ConfigError(f"{where}.main_process_ip: needed with num_machines={self.num_machines}")
        if self.config is not None and self.launcher == "torchrun":
            raise ConfigError(f"{where}.config: an accelerate config needs launcher `accelerate` or `auto`")
        if self.config is not None:  # accelerate's own reader: unknown keys and bad values are refused
            from accelerate.commands.config.config_args import load_config_from_file
            try:
                load_config_from_file(self.config)
            except (ValueError, TypeError, KeyError) as err:
                raise ConfigError(f"{where}.config: {self.config}: {err}") from None


def machine_rank() -> int:
    return int(os.environ.get("MACHINE_RANK", os.environ.get("SLURM_NODEID", "0")) or 0)


def command(launch: LaunchConfig, job: Path, rank: int = 0) -> list[str]:
    """The launcher's command line for one machine."""
    use_accelerate = launch.launcher == "accelerate" or (
        launch.launcher == "auto" and (launch.config is not None or torch.cuda.is_available()))
    worker = ["-m", "posttrain.pipeline.worker", str(job)]
    if not use_accelerate:  # CPU: torchrun; the trainer picks gloo
        where = ["--standalone"] if launch.num_machines == 1 else [
            f"--nnodes={launch.num_machines}", f"--node_rank={rank}", f"--master_addr={launch.main_process_ip}",
            f"--master_port={launch.main_process_port}"]
        return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={launch.num_processes}",
                *worker]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.config:
        cmd += ["--config_file", str(launch.config)]
    elif launch.num_processes > 1:
        cmd += ["--multi_gpu"]
    cmd += [f"--num_processes={launch.num_processes * launch.num_machines}", f"--num_machines={launch.num_machines}"]
    if launch.num_machines > 1:
        cmd += [f"--machine_rank={rank}", f"--main_process_ip={launch.main_process_ip}",
                f"--main_process_port={launch.main_process_port}"]
    return cmd + worker


@dataclass
class Job:
    """What the ranks need to rebuild a stage: its kind, its config and its context (the run's engine
    settings and held-out texts included); written as JSON, read back as the same dataclasses."""

    stage: str
    config: dict[str, Any]
    ctx: StageContext


def write_job(ctx: StageContext, kind: str, config: Any) -> Path:
    write_json(ctx.dir / JOB, to_dict(Job(kind, to_dict(config), replace(ctx, cpu_start=None))))
    return ctx.dir / JOB


def run_stage(ctx: StageContext, kind: str, config: Any, launch: LaunchConfig) -> dict:
    """Launch the stage on `launch`'s processes, wait, and return rank 0's metrics (plus whether the
    ranks ended with the same weights, for data-parallel training)."""
    job = write_job(ctx, kind, config)
    (ctx.dir / RESULT).unlink(missing_ok=True)
    cmd = command(launch, job, machine_rank())
    log.info("%s: launching %d process(es): %s", ctx.stage_id, launch.num_processes * launch.num_machines,
             " ".join(cmd[1:]))
    code = subprocess.run(cmd, preexec_fn=_die_with_parent).returncode
    result = read_json(ctx.dir / RESULT)
    if code != 0 or result is None:
        raise LaunchError(f"stage {ctx.stage_id}: the launched processes exited with code {code} (their output is "
                          "above); rerun to resume from the last checkpoint")
    return {**result["metrics"], "launch": result["launch"]}


def follow(planned: list, rank: int, poll_s: float = 10.0) -> None:
    """A machine of rank > 0: join each multi-machine stage once the stages before it are finished
    (their markers, on the shared run directory, say so)."""
    for i, p in enumerate(planned):
        launch = p.launch
        if launch is None or launch.num_machines < 2 or p.ctx.is_complete():
            continue
        while not all(q.ctx.is_complete() for q in planned[:i]):
            time.sleep(poll_s)
        job = p.ctx.dir / JOB if (p.ctx.dir / JOB).is_file() else write_job(p.ctx, p.spec.stage, p.config)
        log.info("machine %d: joining stage %s", rank, p.ctx.stage_id)
        code = subprocess.run(command(launch, job, rank), preexec_fn=_die_with_parent).returncode
        if code != 0:
            raise LaunchError(f"machine {rank}: stage {p.ctx.stage_id} exited with code {code}")


def _die_with_parent() -> None:
    """The launcher gets SIGTERM when the runner dies (and stops its ranks), instead of living on."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def read_job(path: Path) -> tuple[Any, Any, StageContext]:
    """The stage module, its config and its context, as the runner planned them (`write_job`); the
    context's CPU clock starts now, in this rank."""
    job = from_dict(Job, json.loads(Path(path).read_text()), str(path))
    module = stages.get(job.stage)
    return module, from_dict(module.Config, job.config, f"{path}: config"), replace(job.ctx, cpu_start=cpu_seconds())
