"""Any HF `datasets` source, on disk or by Hub id, mapped to the column contract.

    load("data/gsm8k.jsonl", columns={"question": "prompt", "final": "answer"}, task="math")
    load("openai/gsm8k", columns={"question": "prompt"}, task="math", name="main", split="train")

JSON/JSONL, CSV and parquet files load through `datasets.load_dataset`; a directory written by
`save_to_disk` through `load_from_disk`; an `ORG/NAME` that is not a path on disk through
`datasets.load_dataset(ORG/NAME, name, split=split)`, with its cache and its offline mode
(`HF_DATASETS_OFFLINE=1`). A string prompt becomes one user message.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.core.config import FORMATS, is_hub_id


def check_lines(p: Path) -> None:
    """A JSONL (or CSV) file read line by line before `datasets` does, so that a bad line is named:
    undecodable bytes, invalid JSON, a line that is not an object, a column whose type changes."""
    kinds: dict[str, tuple[str, int]] = {}  # column -> (JSON type, first line)
    for i, raw in enumerate(p.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{p}: line {i}: not UTF-8 text (byte {err.start}: {err.reason})") from None
        if p.suffix != ".jsonl" or not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}: line {i}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{p}: line {i}: expected a JSON object, got {type(row).__name__}")
        for key, value in row.items():
            if value is None:
                continue
            this = "number" if type(value) in (int, float) else type(value).__name__  # datasets widens int to float
            kind, first = kinds.setdefault(key, (this, i))
            if kind != this:
                raise ValueError(f"{p}: line {i}: column {key!r} is {this}, but {kind} on line {first}")


def read(p: Path, formats: dict[str, str] = FORMATS):
    """A `datasets.Dataset` from a file (after `check_lines`) or a `save_to_disk` directory."""
    from datasets import load_dataset, load_from_disk
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: {p}")
    if p.is_dir():
        return load_from_disk(str(p))
    if p.suffix not in formats:
        raise ValueError(f"{p}: unsupported dataset type {p.suffix!r} (use {', '.join(formats)} or a saved dir)")
    if p.suffix in (".jsonl", ".csv"):
        check_lines(p)
    return load_dataset(formats[p.suffix], data_files=str(p), split="train")


def hub_label(repo: str, name: str | None) -> str:
    return f"dataset {repo!r}" + (f" (config {name!r})" if name else "")


def from_hub(repo: str, name: str | None = None, split: str | None = None):
    """One split (default `train`) of a Hub dataset, through `datasets` (its cache, its offline mode)."""
    from datasets import load_dataset
    which = hub_label(repo, name)
    try:
        return load_dataset(repo, name, split=split or "train")
    except (ConnectionError, FileNotFoundError, ValueError) as err:  # not reachable, not found, no such split
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{which}: not a file here and not loadable from the Hub or the datasets cache: "
                         f"{reason}") from None


def load(path: str, columns: dict[str, str] | None = None, task: str | None = None, domain: str | None = None,
         name: str | None = None, split: str | None = None):
    p = Path(path)
    if is_hub_id(path):
        ds, p = from_hub(path, name, split), hub_label(path, name)  # `p` names the source in errors
    elif name or split:
        raise ValueError(f"{p}: `name` and `split` choose a Hub dataset's config and split; this is a path on disk")
    else:
        ds = read(p)
    for src, dst in (columns or {}).items():
        if src not in ds.column_names:
            raise ValueError(f"{p}: no column {src!r} to map to {dst!r} (has: {', '.join(ds.column_names)})")
        if dst in ds.column_names:
            ds = ds.remove_columns(dst)
        ds = ds.rename_column(src, dst)
    if "prompt" not in ds.column_names:
        raise ValueError(f"{p}: no 'prompt' column (has: {', '.join(ds.column_names)}); map one with columns:")
    for i, prompt in enumerate(ds["prompt"]):
        problem = _prompt_problem(prompt)
        if problem:
            raise ValueError(f"{p}: row {i}: column 'prompt' {problem}")

    def fix(row):
        out = {}
        if isinstance(row["prompt"], str):
            out["prompt"] = [{"role": "user", "content": row["prompt"]}]
        if task and not row.get("task"):
            out["task"] = task
        if domain and not row.get("domain"):
            out["domain"] = domain
        return out
    for name, value in (("task", task), ("domain", domain), ("answer", ""), ("tests", "")):
        if name not in ds.column_names:
            ds = ds.add_column(name, [value or ""] * len(ds))
    return ds.map(fix)


def _prompt_problem(prompt) -> str | None:
    """Why a prompt cannot be used (None if it can): text, or a list of {role, content} messages."""
    if isinstance(prompt, str):
        return None if prompt.strip() else "is empty"
    if isinstance(prompt, list) and prompt:
        bad = next((m for m in prompt if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                                              and isinstance(m.get("content"), str))), None)
        return None if bad is None else f"has a message without text 'role' and 'content': {bad!r}"
    return "is empty" if prompt in (None, []) else f"must be text or a list of messages, got {type(prompt).__name__}"


def messages_problem(messages) -> str | None:
    """Why a `messages` conversation cannot be trained on (None if it can)."""
    problem = _prompt_problem(messages)
    if problem or isinstance(messages, str):
        return problem or "must be a list of messages, got str"
    if not any(m["role"] == "assistant" for m in messages):
        return "has no assistant turn to learn from"
    return None
