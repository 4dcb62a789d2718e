"""Pipelines: a YAML names stages in order; each stage's input is the previous stage's output.

`plan` reads and checks (`load`, `plan`, `describe`), `runner` runs (`run`), `launch` starts a stage
on several processes, each of which runs `worker` (`python -m posttrain.pipeline.worker JOB.json`).
"""

from posttrain.pipeline.plan import PipelineConfig, PlannedStage, StageSpec, describe, load, plan
from posttrain.pipeline.runner import run

__all__ = ["PipelineConfig", "PlannedStage", "StageSpec", "describe", "load", "plan", "run"]
