"""posttrain: the Qwen3 post-training recipe, reproducible, over TRL."""

__version__ = "0.1.0"
