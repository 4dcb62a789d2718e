"""Any HF `datasets` source on disk, mapped to the column contract.

    load("data/gsm8k.jsonl", columns={"question": "prompt", "final": "answer"}, task="math")

JSON/JSONL, CSV and parquet files load through `datasets.load_dataset`; a directory written by
`save_to_disk` through `load_from_disk`. A string prompt becomes one user message.
"""

from __future__ import annotations

from pathlib import Path

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load(path: str, columns: dict[str, str] | None = None, task: str | None = None, domain: str | None = None):
    from datasets import load_dataset, load_from_disk
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: {p}")
    if p.is_dir():
        ds = load_from_disk(str(p))
    elif p.suffix in FORMATS:
        ds = load_dataset(FORMATS[p.suffix], data_files=str(p), split="train")
    else:
        raise ValueError(f"{p}: unsupported dataset type {p.suffix!r} (use {', '.join(FORMATS)} or a saved dir)")
    for src, dst in (columns or {}).items():
        if src not in ds.column_names:
            raise ValueError(f"{p}: no column {src!r} to map to {dst!r} (has: {', '.join(ds.column_names)})")
        if dst in ds.column_names:
            ds = ds.remove_columns(dst)
        ds = ds.rename_column(src, dst)
    if "prompt" not in ds.column_names:
        raise ValueError(f"{p}: no 'prompt' column (has: {', '.join(ds.column_names)}); map one with columns:")

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
