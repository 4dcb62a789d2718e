"""One rank of a launched stage (`python -m posttrain.pipeline.worker JOB.json`, started by
`posttrain.pipeline.launch`): rebuild the stage from its job file, run it, and on rank 0 record what
the ranks ended with."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch

from posttrain.core.callbacks import RANKS
from posttrain.core.rundir import read_json, write_json
from posttrain.core.training import SHARDED
from posttrain.logs import setup_logging
from posttrain.pipeline.launch import RESULT, read_job


def main(argv: list[str] | None = None) -> int:
    """One rank: rebuild the stage from the job file and run it."""
    from accelerate import PartialState
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
