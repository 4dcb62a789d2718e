"""The recipe's stages. Each module has `Config` (a dataclass) and `run(ctx, cfg) -> metrics`."""

from __future__ import annotations

import importlib
from types import ModuleType

# stage name -> module; a stage appears here once it exists.
REGISTRY = {
    "sft": "stages.sft",
    "cold_start": "stages.cold_start",
    "reasoning_rl": "stages.reasoning_rl",
    "fusion": "stages.fusion",
    "general_rl": "stages.general_rl",
    "distill": "stages.distill",
    "reward_model": "stages.reward_model",
    "judge": "stages.judge",
}


def get(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise KeyError(f"unknown stage {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return importlib.import_module(REGISTRY[name])
