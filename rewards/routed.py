"""`routed`: per sample, the reward(s) of its `task`, so one batch can mix task kinds (stage 4).

    rewards.get("routed", table={
        "math":   [{"name": "math"}],
        "ifeval": [{"name": "instruction"}, {"name": "think_follow", "weight": 0.5}],
        "code":   [{"name": "code", "params": {"partial": True}}],
    }, default="math")

`table` maps a task to a list of entries: `{"name", "weight" (1.0), "params" ({})}` (other keys are
taken as params too; a bare string is a name), or is the path of a YAML file holding that mapping.
`time_limit` (seconds per sample, default 60, null for none), in the entry or its params, bounds
how long the reward may take.
Each group's rewards see only that group's samples, with every column sliced to match. The
components are combined by weight; components that return None are left out and the remaining
weights renormalised; all None -> None. A task with no entry uses `default` (a task of the table,
or a list of entries); without one, it scores None and is warned about once.
When TRL passes `log_metric`, each component's batch mean is logged as `routed/<task>/<name>`.
A component that raises or runs past its time limit on a batch is asked again sample by sample:
the samples it still fails or hangs on score None, with the reason logged, and training goes on.
"""

from __future__ import annotations

import threading
from typing import Any

import rewards
from rewards.base import Reward, call_with_time_limit, is_column, log

Entry = tuple[Any, float, str, float | None]  # (reward callable, weight, name, seconds per sample)
TIME_LIMIT = 60.0  # seconds per sample a component may take (a batch gets that times its size)


def load_table(table: dict[str, Any] | str) -> dict[str, list[dict[str, Any]]]:
    """The routing table as {task: [{"name", "weight", "params"}]}, from a mapping or a YAML path."""
    if isinstance(table, str):
        import yaml
        with open(table, encoding="utf-8") as f:
            table = yaml.safe_load(f)
    if not isinstance(table, dict) or not table:
        raise ValueError("routed: table must be a non-empty mapping task -> list of rewards (or a YAML path)")
    return {str(task): _entries(task, specs) for task, specs in table.items()}


def _entries(task: Any, specs: Any) -> list[dict[str, Any]]:
    specs = [specs] if isinstance(specs, (str, dict)) else specs
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"routed: table[{task!r}] must be a non-empty list of rewards")
    out = []
    for spec in specs:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        if not isinstance(spec.get("name"), str):
            raise ValueError(f"routed: table[{task!r}]: every entry needs a `name`, got {spec}")
        name, weight = spec.pop("name"), float(spec.pop("weight", 1.0))
        params = {**spec.pop("params", {}), **spec}
        limit = params.pop("time_limit", TIME_LIMIT)  # the entry's, never the reward's own parameter
        if weight < 0:
            raise ValueError(f"routed: table[{task!r}]: {name} has a negative weight {weight}")
        if limit is not None and float(limit) <= 0:
            raise ValueError(f"routed: table[{task!r}]: {name} has time_limit {limit}; give seconds > 0 or null")
        out.append({"name": name, "weight": weight, "time_limit": None if limit is None else float(limit),
                    "params": params})
    return out


def _build(entries: list[dict[str, Any]]) -> list[Entry]:
    return [(rewards.get(e["name"], **e["params"]), e["weight"], e["name"], e["time_limit"]) for e in entries]


class RoutedReward(Reward):
    name = "routed"
    on_error = None

    def __init__(self, table: dict[str, Any] | str, default: str | list | None = None) -> None:
        super().__init__()
        self.table = load_table(table)
        if isinstance(default, str) and default not in self.table:
            raise ValueError(f"routed: default {default!r} is not a task of the table ({', '.join(self.table)})")
        self.groups: dict[str, list[Entry]] = {task: _build(entries) for task, entries in self.table.items()}
        self.default = default if isinstance(default, str) or default is None else "<default>"
        if self.default == "<default>":
            self.groups["<default>"] = _build(_entries("default", default))
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        tasks = columns.get("task")
        tasks = list(tasks) if is_column(tasks, n) else [None] * n
        by_group: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            group = str(task) if str(task) in self.groups else self.default
            if group is None:
                self._warn_once(task)
                continue
            by_group.setdefault(group, []).append(i)
        out: list[float | None] = [None] * n
        for group, idx in by_group.items():
            sub = {k: [v[i] for i in idx] if is_column(v, n) else v for k, v in columns.items()}
            parts = [(self._component(fn, name, [completions[i] for i in idx], sub, group, limit), w)
                     for fn, w, name, limit in self.groups[group]]
            for j, i in enumerate(idx):
                scored = [(s[j], w) for s, w in parts if s[j] is not None]
                weight = sum(w for _, w in scored)
                out[i] = sum(s * w for s, w in scored) / weight if scored and weight > 0 else None
        return out

    def _component(self, fn, name: str, completions: list[Any], columns: dict[str, Any], group: str,
                   limit: float | None = TIME_LIMIT) -> list:
        n = len(completions)
        try:
            scores = self._scores(fn, completions, columns, None if limit is None else limit * n)
        except Exception as err:  # noqa: BLE001 - a broken component must not break the batch
            log.warning("routed: %s failed on a batch of %d of task %r (%s: %s); scoring its samples one by one",
                        name, n, group, type(err).__name__, err)
            scores = [self._one(fn, name, completions, columns, group, limit, i) for i in range(n)]
        scores = [None if s is None else float(s) for s in scores]
        log_metric = columns.get("log_metric")
        valid = [s for s in scores if s is not None]
        if callable(log_metric) and valid:
            try:
                log_metric(f"routed/{group}/{name}", sum(valid) / len(valid))
            except Exception:  # noqa: BLE001
                pass
        return scores

    @staticmethod
    def _scores(fn, completions: list[Any], columns: dict[str, Any], seconds: float | None) -> list:
        scores = list(call_with_time_limit(fn, seconds, completions, **columns))
        if len(scores) != len(completions):
            raise RuntimeError(f"returned {len(scores)} scores for {len(completions)} samples")
        return scores

    def _one(self, fn, name: str, completions: list[Any], columns: dict[str, Any], group: str,
             limit: float | None, i: int) -> float | None:
        n = len(completions)
        one = {k: [v[i]] if is_column(v, n) else v for k, v in columns.items()}
        try:
            return self._scores(fn, [completions[i]], one, limit)[0]
        except Exception as err:  # noqa: BLE001
            log.warning("routed: %s failed on sample %d of task %r (%s: %s); it scores None", name, i, group,
                        type(err).__name__, err)
            return None

    def _warn_once(self, task: Any) -> None:
        with self._lock:
            if str(task) not in self._warned:
                self._warned.add(str(task))
                log.warning("routed: no reward for task %r and no default; its samples score None", task)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
