"""The run directory: one sub-directory per stage, written so a killed run resumes, never restarts
(a stage's own view of it is `posttrain.core.context.StageContext`).

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
from collections.abc import Iterator
from contextlib import contextmanager
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
    """accelerate's state when this process is one rank of a launched stage (posttrain.pipeline), else None."""
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
