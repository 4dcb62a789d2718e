"""The run directory: one sub-directory per stage, written so a killed run resumes, never restarts.

    runs/NAME/
      pipeline.yaml            resolved config of the run
      01_cold_start/
        data/                  what the stage trained on (datasets `save_to_disk`)
        checkpoints/           TRL checkpoints (resume points), removed once the stage completes
        tb/                    TensorBoard event files
        model/                 the saved HF model (weights, tokenizer, template, generation config)
        metrics.json
        COMPLETE               written last: the stage finished
      report.json, report.md, plots/
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "COMPLETE"
LOCK = ".lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory for this process: a second `posttrain run` on it at the same time is
    refused in one line (an OS lock, released even when the holder is killed)."""
    import fcntl
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise FileExistsError(f"{run_dir}: in use by another posttrain run ({holder}); wait for it to "
                                  "finish or choose another --output-dir") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def distributed():
    """accelerate's state when this process is one rank of a launched stage (posttrain.launch), else None."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        from accelerate import PartialState
        return PartialState()
    return None


def is_main_process() -> bool:
    state = distributed()
    return state is None or state.is_main_process


def wait_for_everyone() -> None:
    state = distributed()
    if state is not None:
        state.wait_for_everyone()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system), all cores summed."""
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def resolve_model_ref(ref: str, run_dir: Path | None, who: str) -> str:
    """`@ID` is the model of the run's stage ID (`run_dir/NN_ID/model`); anything else a path."""
    if not ref.startswith("@"):
        return ref
    found = [d for d in sorted(Path(run_dir).glob(f"[0-9][0-9]_{ref[1:]}")) if (d / MARKER).is_file()] \
        if run_dir else []
    if not found:
        raise FileNotFoundError(f"{who}: {ref} names no finished stage in {run_dir or '(no run directory)'}")
    return str(found[-1] / "model")


# Teachers for `posttrain distill` without --teacher: hybrid models first (a teacher can only teach
# a mode it has, and only fusion and later stages know /no_think), then the stage-2 reasoner.
TEACHER_STAGES = ("general_rl", "fusion", "reasoning_rl")


def find_teacher(runs_dir: Path = Path("runs")) -> tuple[str, str]:
    """The newest finished run's most advanced model (TEACHER_STAGES order), and a line saying why.

    A run counts by its newest finished stage; stages are told by the kinds in its pipeline.yaml."""
    import yaml
    best = None
    for snapshot in sorted(Path(runs_dir).glob("*/pipeline.yaml")):
        try:
            stages = (yaml.safe_load(snapshot.read_text()) or {}).get("stages") or []
        except yaml.YAMLError:
            continue
        kinds = {s.get("id") or s.get("stage"): s.get("stage") for s in stages if isinstance(s, dict)}
        done = {}
        for d in snapshot.parent.glob("[0-9][0-9]_*"):
            kind = kinds.get(d.name[3:])
            if (d / MARKER).is_file() and kind in TEACHER_STAGES and (d / "model" / "config.json").is_file():
                done[d] = (TEACHER_STAGES.index(kind), -read_json(d / MARKER, {}).get("finished_at", 0.0))
        if done:
            stage = min(done, key=done.get)
            newest = max(-v[1] for v in done.values())
            if best is None or newest > best[0]:
                best = (newest, stage, kinds[stage.name[3:]])
    if best is None:
        raise FileNotFoundError(f"no finished reasoning_rl, fusion or general_rl stage under {runs_dir}/ to use "
                                "as the teacher: run `make pipeline PIPELINE=pipelines/hybrid.yaml` first, or pass "
                                "--teacher DIR")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(best[0]))
    return str(best[1] / "model"), f"stage {best[2]} of {best[1].parent}, the newest finished run ({when})"


@dataclass
class StageContext:
    """What a stage module gets: where to read, where to write, and the run's shared settings."""

    stage_id: str
    dir: Path
    input_model: str
    seed: int = 0
    backend: str = "transformers"
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

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
        return StageContext(stage_id=f"{self.stage_id}.{name}", dir=self.dir / name, input_model=input_model,
                            seed=self.seed, backend=self.backend, run_dir=self.run_dir, extra=self.extra)

    def resolve(self, ref: str) -> str:
        """A model reference: `@ID` is an earlier stage's model in this run, anything else a path."""
        return resolve_model_ref(ref, self.run_dir or self.dir.parent, self.stage_id)

    def is_complete(self) -> bool:
        return (self.dir / MARKER).is_file()

    def last_checkpoint(self) -> str | None:
        """The newest complete TRL/transformers checkpoint of this stage, to resume from. The Trainer
        writes `trainer_state.json` last, so a checkpoint without it was cut short by a kill during
        the save: it is skipped (and left in place) for the one before."""
        import logging
        if not self.checkpoints_dir.is_dir():
            return None
        found = sorted((d for d in self.checkpoints_dir.glob("checkpoint-*") if d.name.split("-")[-1].isdigit()),
                       key=lambda d: int(d.name.split("-")[-1]), reverse=True)
        for d in found:
            if (d / "trainer_state.json").is_file():
                return str(d)
            logging.getLogger("posttrain.rundir").warning("%s: %s was not finished (no trainer_state.json); "
                                                          "skipping it", self.stage_id, d)
        return None

    def resumable(self) -> bool:
        """A complete checkpoint in this stage or one of its phases: a rerun resumes, not restarts."""
        return any(self.dir.glob("checkpoints/checkpoint-*/trainer_state.json")) or \
            any(self.dir.glob("*/checkpoints/checkpoint-*/trainer_state.json"))

    def trainer_args(self, **overrides: Any) -> dict[str, Any]:
        """Common TrainingArguments for TRL configs: checkpoints, TensorBoard, seed, device. The
        stage's generation engines are closed first: training needs their memory, and an open
        in-process vLLM engine holds a process group that would make the trainer set up DDP."""
        from posttrain.generation import close_engines
        close_engines()
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.tb_dir)
        import torch
        args = dict(output_dir=str(self.checkpoints_dir), report_to=["tensorboard"], logging_steps=1,
                    save_strategy="steps", save_steps=50, save_total_limit=2, seed=self.seed,
                    data_seed=self.seed, use_cpu=not torch.cuda.is_available(),
                    bf16=torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=False)
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
        from datasets import load_from_disk
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


def archive(paths: list[Path], run_dir: Path) -> Path | None:
    """Move stage dirs aside (never delete them) before they are rerun; returns the archive dir."""
    existing = [p for p in paths if p.exists()]
    if not existing:
        return None
    dest = run_dir / ".previous" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in existing:
        shutil.move(str(p), str(dest / p.name))
    return dest
