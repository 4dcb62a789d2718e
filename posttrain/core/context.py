"""A stage's view of the run: `StageContext`, the typed settings and places every stage module gets."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from posttrain.core.generation import EnginePool
from posttrain.core.models import fast_bf16
from posttrain.core.rundir import (
    MARKER,
    distributed,
    is_main_process,
    read_json,
    resolve_model_ref,
    wait_for_everyone,
    write_json,
)

log = logging.getLogger("posttrain.context")


@dataclass
class StageContext:
    """What a stage module gets: where to read, where to write, and the run's shared settings.
    Plain data (a launched stage's ranks rebuild it from its job file) but for the engines' open cache."""

    stage_id: str
    dir: Path
    input_model: str
    seed: int = 0
    run_dir: Path | None = None
    engines: EnginePool = field(default_factory=EnginePool)  # the run's generation engines (backend, vLLM)
    held_out: list[str] = field(default_factory=list)  # user texts the pipeline evaluates on: never trained on
    curve_points: int = 0  # snapshots for an accuracy-vs-CPU-seconds curve (the pipeline's `compare`); 0: none
    curve_dir: Path | None = None  # where they go: the stage's curve/ (its phases' too)
    cpu_start: float | None = None  # the process's CPU seconds when the stage began (set by the runner)

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def tb_dir(self) -> Path:
        return self.dir / "tb"

    def phase(self, name: str, input_model: str) -> StageContext:
        """A sub-context for one phase of a multi-phase stage (own checkpoints, data, model, marker)."""
        return replace(self, stage_id=f"{self.stage_id}.{name}", dir=self.dir / name, input_model=input_model)

    def resolve(self, ref: str) -> str:
        """A model reference: `@ID` is an earlier stage's model in this run, anything else a path."""
        return resolve_model_ref(ref, self.run_dir or self.dir.parent, self.stage_id)

    def is_complete(self) -> bool:
        return (self.dir / MARKER).is_file()

    def last_checkpoint(self) -> str | None:
        """The newest complete TRL/transformers checkpoint of this stage, to resume from. The Trainer
        writes `trainer_state.json` last, so a checkpoint without it was cut short by a kill during
        the save: it is skipped (and left in place) for the one before."""
        if not self.checkpoints_dir.is_dir():
            return None
        found = sorted((d for d in self.checkpoints_dir.glob("checkpoint-*") if d.name.split("-")[-1].isdigit()),
                       key=lambda d: int(d.name.split("-")[-1]), reverse=True)
        for d in found:
            if (d / "trainer_state.json").is_file():
                return str(d)
            log.warning("%s: %s was not finished (no trainer_state.json); "
                                                          "skipping it", self.stage_id, d)
        return None

    def resumable(self) -> bool:
        """A complete checkpoint in this stage or one of its phases: a rerun resumes, not restarts."""
        return any(self.dir.glob("checkpoints/checkpoint-*/trainer_state.json")) or \
            any(self.dir.glob("*/checkpoints/checkpoint-*/trainer_state.json"))

    def trainer_args(self, **overrides: Any) -> dict[str, Any]:
        """Common TrainingArguments for TRL configs: checkpoints, TensorBoard, seed, device, precision.
        The stage's generation engines are closed first: training needs their memory, and an open
        in-process vLLM engine holds a process group that would make the trainer set up DDP.

        Precision (`posttrain bench train`): bf16 autocast over float32 master weights wherever bf16
        matmuls are native (`fast_bf16`: GPUs, CPUs with AVX512-BF16 or AMX), float32 elsewhere; and
        no activation checkpointing (TRL's default recomputes every forward; a recipe that needs the
        memory sets it under `trainer:`)."""
        self.engines.close()
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.tb_dir)
        args = dict(output_dir=str(self.checkpoints_dir), report_to=["tensorboard"], logging_steps=1,
                    save_strategy="steps", save_steps=50, save_total_limit=2, seed=self.seed,
                    data_seed=self.seed, use_cpu=not torch.cuda.is_available(),
                    bf16=fast_bf16(),
                    gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=False)
        args.update(overrides)
        return args

    def dataset(self, name: str, build: Callable[[], Any]):
        """A dataset saved under data/NAME, built once: a resumed stage reuses it."""
        path = self.data_dir / name
        state = distributed()
        if state is not None:  # a launched stage: rank 0 builds and saves, the others then load it
            with state.main_process_first():
                return self._dataset(path, build)
        return self._dataset(path, build)

    def _dataset(self, path: Path, build: Callable[[], Any]):
        from datasets import load_from_disk  # datasets costs a second to import: the CLI's help need not pay it
        if (path / "dataset_info.json").is_file():
            return load_from_disk(str(path))
        ds = build()
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        os.replace(tmp, path)
        return load_from_disk(str(path))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if not is_main_process():
            return
        current = read_json(self.dir / "metrics.json", {})
        current.update(metrics)
        write_json(self.dir / "metrics.json", current)

    def mark_complete(self, info: dict[str, Any]) -> None:
        """Last act of a stage: drop resume checkpoints, then write the marker (rank 0 of a launched
        stage, once every rank is past training)."""
        wait_for_everyone()
        if not is_main_process():
            return wait_for_everyone()
        if not (self.model_dir / "config.json").is_file():
            raise RuntimeError(f"stage {self.stage_id} wrote no model to {self.model_dir}")
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)
        write_json(self.dir / MARKER, {"finished_at": time.time(), **info})
        wait_for_everyone()

    def completion_info(self) -> dict[str, Any]:
        return read_json(self.dir / MARKER, {})
