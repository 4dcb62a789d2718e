"""Generation engines: the interface (`base`), its backends (`hf`, `vllm`) and the run's pool (`pool`)."""

from posttrain.core.generation.base import Completion, GenerationEngine, sampling_for
from posttrain.core.generation.hf import TransformersEngine
from posttrain.core.generation.pool import BACKENDS, EnginePool
from posttrain.core.generation.vllm import VLLMEngine, VLLMError

__all__ = ["BACKENDS", "Completion", "EnginePool", "GenerationEngine", "TransformersEngine", "VLLMEngine",
           "VLLMError", "sampling_for"]
