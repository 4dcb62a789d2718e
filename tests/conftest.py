"""Shared fixtures: tiny random models built from the default tokenizer (fast, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posttrain.models import make_tiny_model

REPO = Path(__file__).resolve().parent.parent

# Runs the CLI, but kills its own process (SIGKILL: no cleanup) right after the stage's first
# checkpoint is written, as a crash or an OOM kill would (KILL_AT_STEP; KILL_IN: only in a
# trainer whose output dir has that text, e.g. one phase of a stage).
KILLER = textwrap.dedent("""
    import os, signal, sys
    import transformers
    from posttrain import cli

    class Kill(transformers.TrainerCallback):
        def on_save(self, args, state, control, **kw):
            step, where = int(os.environ["KILL_AT_STEP"]), os.environ.get("KILL_IN", "")
            if state.global_step >= step and where in args.output_dir:
                os.kill(os.getpid(), signal.SIGKILL)

    original = transformers.Trainer.__init__
    def patched(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(Kill())
    transformers.Trainer.__init__ = patched
    sys.exit(cli.main(sys.argv[1:]))
""")


def cli(*args, env=None, script=None):
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "posttrain.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama with the project's tokenizer and chat format."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def run_one_stage():
    """Runs a one-stage pipeline YAML; returns (run dir, the stage's context, its completion metrics)."""
    def run(path: Path):
        from posttrain import pipeline
        cfg, planned = pipeline.load(path)
        run_dir = pipeline.run(cfg, planned)
        stage = planned[0].ctx
        return run_dir, stage, json.loads((stage.dir / "COMPLETE").read_text())["metrics"]
    return run


@pytest.fixture
def chat_jsonl(tmp_path) -> Path:
    """A small SFT file: thinking and non-thinking conversations."""
    rows = []
    for i in range(16):
        rows.append({"messages": [
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"The answer is {2 * i}.",
             "reasoning_content": f"{i} plus {i} is {2 * i}." if i % 2 else ""}]})
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
