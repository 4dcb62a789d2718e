"""The trainer callbacks the stages share: status lines, a quiet progress bar, snapshots for
accuracy-vs-compute curves, and what each rank of a launched stage ended with."""

from __future__ import annotations

import copy
import hashlib
import logging
import time

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from posttrain.core.context import StageContext
from posttrain.core.models import save
from posttrain.core.rundir import cpu_seconds, read_json, write_json

log = logging.getLogger("posttrain.core.training")
RANKS = "ranks"  # a launched stage's per-rank records (ranks/rankN.json)


def curve_snapshots(ctx: StageContext):
    """A callback that saves the model at evenly spaced steps, with the CPU seconds the stage has
    spent so far (data building included), for accuracy-against-compute curves; `curve.json` lists
    them and the final model is the last point. Set up by the pipeline (`compare_points`)."""
    points, start, curve_dir = ctx.curve_points, ctx.cpu_start, ctx.curve_dir

    class CurveSnapshots(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            steps = {round(state.max_steps * k / points) for k in range(1, points)}
            if state.global_step not in steps or start is None or not state.is_world_process_zero:
                return
            path = curve_dir / f"{ctx.stage_id}-step{state.global_step}"
            cpu = round(cpu_seconds() - start, 1)  # measured before the save, which is not training
            save(copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model,
                 processing_class, path)
            entries = [e for e in read_json(curve_dir / "curve.json", []) if e["model"] != str(path)]
            write_json(curve_dir / "curve.json", entries + [{"phase": ctx.stage_id, "step": state.global_step,
                                                             "cpu_time_s": cpu, "at": time.time(),
                                                             "model": str(path)}])
    return CurveSnapshots()


def status_lines(ctx: StageContext):
    """A callback that logs one status line at every tenth of training: step k/N, elapsed, time left."""
    def clock(seconds: float) -> str:
        return time.strftime("%H:%M:%S" if seconds >= 3600 else "%M:%S", time.gmtime(seconds))

    class StatusLines(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.first = time.time(), state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            step, total = state.global_step, state.max_steps
            if step % max(1, total // 10) and step != total:
                return
            elapsed = time.time() - self.start
            left = elapsed / max(1, step - self.first) * (total - step)
            log.info("%s: training step %d/%d, %s elapsed, ~%s left", ctx.stage_id, step, total, clock(elapsed),
                     clock(left))
    return StatusLines()


def bar_only():
    """transformers' progress bar without the dict of metrics it prints at every logging step (they
    are in TensorBoard, and the status lines give the progress)."""
    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass
    return BarOnly


def rank_record(ctx: StageContext):
    """A callback writing, at the end of training, what each rank ended with (ranks/rankN.json): its
    step, the world size and a digest of its weights; data-parallel ranks must agree on the digest."""
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
