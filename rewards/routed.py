"""`routed`: per sample, the reward(s) of its `task`, so one batch can mix task kinds (stage 4).

    rewards.get("routed", table={
        "math":   [{"name": "math"}],
        "ifeval": [{"name": "instruction"}, {"name": "think_follow", "weight": 0.5}],
        "code":   [{"name": "code", "params": {"partial": True}}],
    }, default="math")

`table` maps a task to a list of entries: `{"name", "weight" (1.0), "params" ({})}` (other keys are
taken as params too; a bare string is a name), or is the path of a YAML file holding that mapping.
Each group's rewards see only that group's samples, with every column sliced to match. The
components are combined by weight; components that return None are left out and the remaining
weights renormalised; all None -> None. A task with no entry uses `default` (a task of the table,
or a list of entries); without one, it scores None and is warned about once.
When TRL passes `log_metric`, each component's batch mean is logged as `routed/<task>/<name>`.
"""

from __future__ import annotations

import threading
from typing import Any

from rewards.base import Reward, is_column, log

Entry = tuple[Any, float, str]  # (reward callable, weight, name)


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
        if weight < 0:
            raise ValueError(f"routed: table[{task!r}]: {name} has a negative weight {weight}")
        out.append({"name": name, "weight": weight, "params": {**spec.pop("params", {}), **spec}})
    return out


def _build(entries: list[dict[str, Any]]) -> list[Entry]:
    import rewards
    return [(rewards.get(e["name"], **e["params"]), e["weight"], e["name"]) for e in entries]


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
            parts = [(self._component(fn, name, [completions[i] for i in idx], sub, group), w)
                     for fn, w, name in self.groups[group]]
            for j, i in enumerate(idx):
                scored = [(s[j], w) for s, w in parts if s[j] is not None]
                weight = sum(w for _, w in scored)
                out[i] = sum(s * w for s, w in scored) / weight if scored and weight > 0 else None
        return out

    def _component(self, fn, name: str, completions: list[Any], columns: dict[str, Any], group: str) -> list:
        n = len(completions)
        try:
            scores = list(fn(completions, **columns))
            if len(scores) != n:
                raise RuntimeError(f"returned {len(scores)} scores for {n} samples")
        except Exception as err:  # noqa: BLE001 - a broken component must not break the batch
            log.warning("routed: %s failed on task %r (%s: %s); its scores are None", name, group,
                        type(err).__name__, err)
            return [None] * n
        scores = [None if s is None else float(s) for s in scores]
        log_metric = columns.get("log_metric")
        valid = [s for s in scores if s is not None]
        if callable(log_metric) and valid:
            try:
                log_metric(f"routed/{group}/{name}", sum(valid) / len(valid))
            except Exception:  # noqa: BLE001
                pass
        return scores

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
