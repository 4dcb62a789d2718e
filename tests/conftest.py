"""Shared fixtures: tiny random models built from the default tokenizer (fast, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from posttrain.core.models import make_tiny_model

REPO = Path(__file__).resolve().parent.parent

# Runs the CLI with every trainer instrumented (environment variables):
# - RECORD=FILE: each training run appends JSON lines: where it trains, the step it begins at and a
#   digest of its weights then (after a resume: the checkpoint's), and every step it runs;
# - KILL_AT_STEP=N: SIGKILL (no cleanup, as a crash or an OOM kill) right after the first checkpoint at
#   step >= N is written, in a trainer whose output dir contains KILL_IN (e.g. one phase of a stage);
# - KILL_SAVING=TEXT: SIGKILL while a dataset whose path contains TEXT is being saved (written, not
#   yet moved into place).
KILLER = textwrap.dedent("""
    import json, os, signal, sys
    import datasets, transformers
    from posttrain import cli
    from posttrain.core.callbacks import weights_digest

    def record(**entry):
        if os.environ.get("RECORD"):
            with open(os.environ["RECORD"], "a") as f:
                f.write(json.dumps(entry) + "\\n")

    class Instrument(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            record(dir=args.output_dir, begin=state.global_step, weights=weights_digest(model))

        def on_step_end(self, args, state, control, **kw):
            record(dir=args.output_dir, step=state.global_step)

        def on_save(self, args, state, control, **kw):
            step, where = int(os.environ.get("KILL_AT_STEP", "0")), os.environ.get("KILL_IN", "")
            if step and state.global_step >= step and where in args.output_dir:
                os.kill(os.getpid(), signal.SIGKILL)

    original = transformers.Trainer.__init__
    def patched(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(Instrument())
    transformers.Trainer.__init__ = patched

    save = datasets.Dataset.save_to_disk
    def saving(self, path, *a, **kw):
        save(self, path, *a, **kw)
        if os.environ.get("KILL_SAVING") and os.environ["KILL_SAVING"] in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
    datasets.Dataset.save_to_disk = saving
    sys.exit(cli.main(sys.argv[1:]))
""")


def checkpoint_digest(path) -> str:
    """The digest each launched rank records (`posttrain.core.callbacks.weights_digest`) of a saved model dir or
    checkpoint (a causal LM, or a reward model with its head)."""
    import transformers

    from posttrain.core.callbacks import weights_digest
    architecture = transformers.AutoConfig.from_pretrained(path).architectures[0]
    return weights_digest(getattr(transformers, architecture).from_pretrained(path))


def records(path: Path, where: Path | str) -> list[dict]:
    """The RECORD lines of the training runs whose output dir is `where`."""
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in lines if Path(r["dir"]) == Path(where)]


def untouched(directory: Path) -> dict[str, tuple[int, int]]:
    """Each file under `directory` with its inode and modification time: equal before and after a
    rerun when the rerun reused the files rather than writing them again."""
    return {str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def longer(completions, **columns) -> list[float]:
    """A reward with variance on a random model (its completions differ in length): GRPO moves."""
    from posttrain.core.chat import completion_text
    return [len(completion_text(c)) / 100 for c in completions]


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


@pytest.fixture
def shared_dir():
    """A directory outside the sandbox's work dir that the sandbox user can traverse (pytest's tmp_path sits
    under a 0700 directory), for canaries and secrets the sandbox must not reach."""
    path = Path(tempfile.mkdtemp(prefix="posttrain-sbx-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def listen():
    """A listener on 127.0.0.1 that records each connection it accepts: (port, received, stop, server)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                received.append(conn.recv(1024) or b"<connected>")
            except OSError:
                received.append(b"<connected>")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], received, stop, server


class OneEngine:
    """An engine pool (what a stage's context carries) that hands out one given engine, e.g. a scripted one."""

    def __init__(self, engine):
        self.engine = engine

    def get(self, *args, **kwargs):
        return self.engine

    def close(self) -> None:
        pass


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """`acme/gsm_mini` (config `main`, splits train and test) in a datasets cache that the test writes,
    with the Hub switched off: what a machine has after loading the dataset once online."""
    import datasets
    files, splits = {}, {"train": [("What is 2+3?", "5"), ("What is 7*6?", "42")], "test": [("What is 9-4?", "5")]}
    for split, rows in splits.items():
        files[split] = str(tmp_path / f"{split}.jsonl")
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps({"question": q, "final": a}) for q, a in rows))
    builder = datasets.load_dataset_builder("json", data_files=files, cache_dir=str(tmp_path / "build"))
    builder.download_and_prepare()
    cached = tmp_path / "cache" / "acme___gsm_mini" / "main" / "0.0.0" / "0"
    cached.mkdir(parents=True)
    for f in Path(builder.cache_dir).glob("*.arrow"):
        (cached / f.name.replace("json-", "gsm_mini-")).write_bytes(f.read_bytes())
    info = json.loads((Path(builder.cache_dir) / "dataset_info.json").read_text())
    (cached / "dataset_info.json").write_text(json.dumps(dict(info, config_name="main")))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    import huggingface_hub.constants
    for module, flag in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                         (huggingface_hub.constants, "HF_HUB_OFFLINE")):
        monkeypatch.setattr(module, flag, True)
    monkeypatch.chdir(tmp_path)  # `acme/gsm_mini` is not a path here
