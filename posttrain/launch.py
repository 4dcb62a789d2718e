"""A stage on several processes: the runner starts it with `torchrun` or `accelerate launch` as a
child process and waits; it keeps its own role (plan, markers, eval, report).

    stages:
      - stage: cold_start
        launch: {num_processes: 8, config: pipelines/accelerate/fsdp2.yaml}

Inside the child every rank runs the stage module (`python -m posttrain.launch JOB.json`) and the
trainer shards the batches (DDP, FSDP2 or DeepSpeed ZeRO, as the accelerate config says; gloo on
CPU). Datasets are built by rank 0 first and loaded by the others; rank 0 alone writes the model,
the metrics and phase markers. A killed stage resumes on every rank from the same checkpoint.

Several machines: the same `posttrain run` on each (`srun --ntasks-per-node=1`); the machine whose
rank (`MACHINE_RANK`, else `SLURM_NODEID`) is 0 is the runner, the others only join the launched
stages, each once the stages before it are finished (pipelines/accelerate/multi_node.yaml).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from posttrain.config import ExistingPath
from posttrain.rundir import StageContext, read_json, write_json

log = logging.getLogger("posttrain.launch")
JOB, RESULT, RANKS = "launch.json", "launch_result.json", "ranks"


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
        from posttrain.config import ConfigError
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
    import torch
    use_accelerate = launch.launcher == "accelerate" or (
        launch.launcher == "auto" and (launch.config is not None or torch.cuda.is_available()))
    worker = ["-m", "posttrain.launch", str(job)]
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


def write_job(ctx: StageContext, kind: str, config: Any, pipeline: Any) -> Path:
    """What the ranks need to rebuild the stage: its kind, config and context, and the run's engine."""
    from posttrain.config import to_dict
    extra = {k: str(v) if isinstance(v, Path) else to_dict(v) for k, v in ctx.extra.items() if k != "cpu_start"}
    job = {"stage": kind, "config": to_dict(config), "backend": pipeline.backend, "vllm": pipeline.vllm,
           "ctx": {"stage_id": ctx.stage_id, "dir": str(ctx.dir), "input_model": ctx.input_model, "seed": ctx.seed,
                   "backend": ctx.backend, "run_dir": str(ctx.run_dir) if ctx.run_dir else None, "extra": extra}}
    write_json(ctx.dir / JOB, job)
    return ctx.dir / JOB


def run_stage(ctx: StageContext, kind: str, config: Any, pipeline: Any, launch: LaunchConfig) -> dict:
    """Launch the stage on `launch`'s processes, wait, and return rank 0's metrics (plus whether the
    ranks ended with the same weights, for data-parallel training)."""
    job = write_job(ctx, kind, config, pipeline)
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


def follow(pipeline: Any, planned: list, rank: int, poll_s: float = 10.0) -> None:
    """A machine of rank > 0: join each multi-machine stage once the stages before it are finished
    (their markers, on the shared run directory, say so)."""
    for i, p in enumerate(planned):
        launch = p.launch
        if launch is None or launch.num_machines < 2 or p.ctx.is_complete():
            continue
        while not all(q.ctx.is_complete() for q in planned[:i]):
            time.sleep(poll_s)
        job = p.ctx.dir / JOB if (p.ctx.dir / JOB).is_file() else write_job(p.ctx, p.spec.stage, p.config, pipeline)
        log.info("machine %d: joining stage %s", rank, p.ctx.stage_id)
        code = subprocess.run(command(launch, job, rank), preexec_fn=_die_with_parent).returncode
        if code != 0:
            raise LaunchError(f"machine {rank}: stage {p.ctx.stage_id} exited with code {code}")


def _die_with_parent() -> None:
    """The launcher gets SIGTERM when the runner dies (and stops its ranks), instead of living on."""
    import ctypes
    import signal
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def rank_record(ctx: StageContext):
    """A callback writing, at the end of training, what each rank ended with (ranks/rankN.json): its
    step, the world size and a digest of its weights; data-parallel ranks must agree on the digest."""
    from transformers import TrainerCallback

    class RankRecord(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            write_json(ctx.dir / RANKS / f"rank{args.process_index}.json",
                       {"rank": args.process_index, "world_size": args.world_size, "global_step": state.global_step,
                        "weights_sha256": weights_digest(model)})
    return RankRecord()


def weights_digest(model) -> str:
    """sha256 over a model's parameters by name (this rank's shard of a sharded one)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        local = param.to_local() if hasattr(param, "to_local") else param  # an FSDP2 shard
        digest.update(name.encode())
        digest.update(local.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_job(path: Path) -> tuple[Any, Any, StageContext]:
    """The stage module, its config and its context, as the runner planned them (`write_job`)."""
    import stages
    from posttrain import generation
    from posttrain.config import from_dict
    from posttrain.evaluate import EvalConfig
    from posttrain.rundir import cpu_seconds
    job = json.loads(Path(path).read_text())
    generation.VLLM_SETTINGS.update(job["vllm"])
    generation.PIPELINE_BACKEND[0] = job["backend"]
    c = job["ctx"]
    extra = dict(c["extra"], cpu_start=cpu_seconds())
    if "eval_suites" in extra:
        held = from_dict(EvalConfig, {"suites": extra["eval_suites"], "think_follow": extra.get("think_follow")},
                         f"{path}: eval suites")
        extra.update(eval_suites=held.suites, think_follow=held.think_follow)
    if "curve_dir" in extra:
        extra["curve_dir"] = Path(extra["curve_dir"])
    ctx = StageContext(stage_id=c["stage_id"], dir=Path(c["dir"]), input_model=c["input_model"], seed=c["seed"],
                       backend=c["backend"], run_dir=Path(c["run_dir"]) if c["run_dir"] else None, extra=extra)
    module = stages.get(job["stage"])
    return module, from_dict(module.Config, job["config"], f"{path}: config"), ctx


def main(argv: list[str] | None = None) -> int:
    """One rank: rebuild the stage from the job file and run it."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    from posttrain.cli import setup_logging
    # data building on rank 0 can take long while the others wait at the barrier
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=6))
    setup_logging(verbose=False, quiet_rank=not state.is_main_process)
    if not torch.cuda.is_available():
        # transformers resumes a multi-process run's optimizer with map_location=args.device, which on
        # CPU is `cpu:RANK`, a location torch cannot restore to: such storage stays on the CPU
        torch.serialization.register_package(5, lambda obj: None,
                                             lambda storage, where: storage if where.startswith("cpu:") else None)
    module, config, ctx = read_job(Path((argv or sys.argv[1:])[0]))
    metrics = module.run(ctx, config) or {}
    state.wait_for_everyone()
    if state.is_main_process:
        from posttrain.training import SHARDED
        info = {"processes": state.num_processes, "distributed_type": str(state.distributed_type)}
        for d in sorted(ctx.dir.rglob(RANKS)):  # one per trained phase
            ranks = [read_json(p) for p in sorted(d.glob("rank*.json"))]
            phase = "train" if d.parent == ctx.dir else str(d.parent.relative_to(ctx.dir))
            # data-parallel ranks hold the same weights; sharded ones (FSDP, ZeRO) only their shards
            agree = None if state.distributed_type.name in SHARDED else len({r["weights_sha256"] for r in ranks}) == 1
            info[phase] = {"ranks_trained": len(ranks), "weights_agree": agree}
        write_json(ctx.dir / RESULT, {"metrics": metrics, "launch": info})
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
