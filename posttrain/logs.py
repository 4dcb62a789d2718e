"""Logging for the command line and the ranks of a launched stage: timestamped lines, quiet libraries."""

from __future__ import annotations

import logging
import os
import warnings

from transformers.utils import logging as hf_logging


def setup_logging(verbose: bool, quiet_rank: bool = False) -> None:
    """Timestamped INFO lines (DEBUG with -v); a launched stage's ranks other than 0 warn only."""
    logging.basicConfig(level=logging.WARNING if quiet_rank else logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if not verbose:
        _quiet_libraries()


def _quiet_libraries() -> None:
    """No wall of library chatter on the terminal (`-v` keeps it): vLLM's INFO lines, deprecation
    FutureWarnings, transformers' per-load tokenizer notice and its weight-loading bars."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers.tokenization_utils_tokenizers").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
