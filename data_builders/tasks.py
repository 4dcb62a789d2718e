"""Stage 4's task kinds (report §4.4): one definition per kind owns its prompts, its reward(s) and
its evaluation; the same definitions build the training mix and the held-out items.

    kinds = load_tasks("pipelines/tasks.yaml")           # {name: TaskKind}
    mix = build_mix(kinds, n=400, seed=0)                 # rows: prompt, task, the kinds' columns
    reward = rewards.get("routed", table=routing_table(kinds))
    held = items("rag", kinds["rag"], n=16, seed=0, split="eval")

A kind in YAML (under `tasks:`):

    rag_faithfulness:
      area: specialised                # instruction | format | preference | agent | specialised | reasoning
      source: rag                      # a generator of data_builders/general.py, "module:function",
                                       # or a dataset file/dir in the column contract (+ `columns:` map)
      params: {facts: 3}               # the generator's keyword arguments
      rewards: [{name: rag}]           # routed-reward entries: name, weight, params
      share: 1.0                       # relative weight in the training mix
      think_share: 0.5                 # prompts asked with /think, the rest with /no_think

Generated items are split by seed namespace ("train" / "eval"); a dataset's rows by a hash of the
prompt (one in ten held out). Training items whose prompt equals a held-out one are dropped.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rewards
from data_builders import general
from data_builders.agent import ENVIRONMENTS, run_episodes
from data_builders.sources import load
from posttrain.core.chat import SAMPLING
from posttrain.core.config import ConfigError, from_dict, load_yaml
from posttrain.core.stats import roc_auc, standard_error
from rewards.routed import load_table

log = logging.getLogger("posttrain.tasks")

AREAS = ("instruction", "format", "preference", "agent", "specialised", "reasoning")
SPLITS = ("train", "eval")


@dataclass
class TaskKind:
    area: str
    source: str
    rewards: list[Any]
    params: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)  # dataset sources: their column -> contract column
    share: float = 1.0
    think_share: float = 0.5
    # rule rewards scored next to `rewards` at evaluation only, to measure a model-based reward (a
    # judge, a reward model) against them: the share of items where both pass or both fail
    check: list[Any] = field(default_factory=list)
    environment: str | None = None  # tools that run during rollouts (data_builders/agent.py ENVIRONMENTS)

    def __post_init__(self):
        if self.environment is not None and self.environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {', '.join(ENVIRONMENTS)}, got {self.environment!r}")
        if self.area not in AREAS:
            raise ValueError(f"area must be one of {', '.join(AREAS)}, got {self.area!r}")
        if self.share < 0 or not 0.0 <= self.think_share <= 1.0:
            raise ValueError(f"share must be >= 0 and think_share within [0, 1], got {self.share}, {self.think_share}")
        self.rewards = load_table({"kind": self.rewards})["kind"]  # validated entries {name, weight, params}
        self.check = load_table({"kind": self.check})["kind"] if self.check else []


def load_tasks(spec: str | Path | dict[str, Any]) -> dict[str, TaskKind]:
    """Task kinds from a YAML file (its `tasks:` mapping; `defaults:` inheritance works) or a mapping."""
    where = str(spec) if isinstance(spec, (str, Path)) else "tasks"
    data = load_yaml(spec) if isinstance(spec, (str, Path)) else spec
    table = data.get("tasks") if isinstance(data, dict) and "tasks" in data else data
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where}: `tasks` must be a non-empty mapping name -> task kind")
    kinds = {}
    for name, body in table.items():
        if body is None:  # `name: null` drops a kind a `defaults:` file defined
            continue
        try:
            kinds[str(name)] = from_dict(TaskKind, body, f"tasks.{name}")
        except ValueError as err:
            raise ConfigError(f"{where}: tasks.{name}: {err}") from None
    if not kinds:
        raise ConfigError(f"{where}: every task kind is null: nothing to train or score")
    return kinds


def _generator(source: str):
    if source in general.GENERATORS:
        return general.GENERATORS[source]
    if ":" in source:
        module, _, attr = source.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"source {source!r}: {err}") from None
    return None


def _prompt_key(row: dict[str, Any]) -> str:
    return json.dumps([m.get("content") for m in row["prompt"]], ensure_ascii=False)


def items(name: str, kind: TaskKind, n: int, seed: int = 0, split: str = "train",
          mode: str | None = None) -> list[dict[str, Any]]:
    """`n` rows of a kind (fewer if its dataset holds fewer), with `task` set and a mode flag
    (`mode`, else drawn by `think_share`) appended unless the source set the flags (`mode` column).
    The first k of n rows are the k rows: a larger held-out set contains a smaller one."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng, flags = random.Random(f"task:{name}:{split}:{seed}"), random.Random(f"flags:{name}:{split}:{seed}")
    make = _generator(kind.source)
    if make is not None:
        try:
            rows = [make(rng, **kind.params) for _ in range(n)]
        except TypeError as err:
            raise ConfigError(f"tasks.{name}.params: {err}") from None
    else:
        if not Path(kind.source).exists():
            raise ConfigError(f"tasks.{name}.source: {kind.source!r} is neither a generator "
                              f"({', '.join(general.GENERATORS)}, or module:function) nor an existing dataset")
        rows = [dict(r) for r in load(kind.source, columns=kind.columns or None)]
        held = [int(hashlib.sha256(_prompt_key(r).encode()).hexdigest(), 16) % 10 == 0 for r in rows]
        rows = [r for r, h in zip(rows, held, strict=True) if h == (split == "eval")][:n]
    out = []
    for row in rows:
        draw = "think" if flags.random() < kind.think_share else "no_think"  # drawn for every row: stable prefixes
        out.append({**(row if row.get("mode") else general.flagged(row, mode or draw)), "task": name,
                    **({"environment": kind.environment} if kind.environment else {})})
    return out


def eval_items(kinds: dict[str, TaskKind], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Every kind's `n` held-out items in both modes: what `evaluate_tasks` asks, never to be trained on."""
    return [r for name, kind in kinds.items() for mode in ("think", "no_think")
            for r in items(name, kind, n, seed, split="eval", mode=mode)] if n else []


def build_mix(kinds: dict[str, TaskKind], n: int, seed: int = 0, held_out: list[dict] | None = None) -> list[dict]:
    """`n` training rows split over the kinds by share (largest remainders), shuffled, every row
    with the same columns (missing ones are empty strings), none equal to a `held_out` prompt."""
    total = sum(k.share for k in kinds.values())
    if total <= 0:
        raise ConfigError("tasks: every share is 0")
    exact = {name: n * k.share / total for name, k in kinds.items()}
    counts = {name: int(v) for name, v in exact.items()}
    for name in sorted(exact, key=lambda m: counts[m] - exact[m])[:n - sum(counts.values())]:
        counts[name] += 1
    seen = {_prompt_key(r) for r in held_out or []}
    rows = [r for name, c in counts.items() if c for r in items(name, kinds[name], c, seed)
            if _prompt_key(r) not in seen]
    random.Random(f"mix:{seed}").shuffle(rows)
    if any(k.environment for k in kinds.values()):  # GRPO routes every row of the batch to an environment
        rows = [{**r, "environment": r.get("environment") or "none"} for r in rows]
    return uniform(rows)


def uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with one set of columns (Arrow needs it): absent ones become empty strings."""
    keys = sorted({k for r in rows for k in r})
    return [{k: r.get(k, "") for k in keys} for r in rows]


def routing_table(kinds: dict[str, TaskKind], resolve=None, which: str = "rewards",
                  engines=None) -> dict[str, list[dict]]:
    """The `routed` reward's table: each kind's task name -> its reward entries (`which="check"`: its
    `check` entries). A reward param `model: "@ID"` (a judge, a reward model) names the model of the
    run's stage ID, found by `resolve` (posttrain.core.rundir.resolve_model_ref bound to the run); a
    reward that generates (a judge) takes its engine from `engines`, the run's pool."""
    def entry(e: dict[str, Any], name: str) -> dict[str, Any]:
        params = dict(e["params"])
        if engines is not None and rewards.accepts(e["name"], "engines"):
            params["engines"] = engines
        model = params.get("model")
        if isinstance(model, str) and model.startswith("@"):
            if resolve is None:
                raise ConfigError(f"tasks.{name}: {e['name']} model {model!r} needs a pipeline run directory; "
                                  "give a model path instead")
            params["model"] = resolve(model)
        return {**e, "params": params}
    return {name: [entry(e, name) for e in getattr(kind, which)] for name, kind in kinds.items()
            if getattr(kind, which)}


def evaluate_tasks(engine, kinds: dict[str, TaskKind], n: int = 16, seed: int = 0,
                   modes: tuple[str, ...] = ("think", "no_think"), max_new_tokens: int = 256,
                   resolve=None, engines=None) -> dict[str, Any]:
    """Each kind's mean reward on its held-out items, asked in every mode by flag (a kind whose
    source sets its own flags is asked once, as `flagged`); one sample per item at the mode's
    sampling settings, scored by the kind's own rewards, and by its `check` rules if it has any
    (`agreement`: the share of items where reward and rules both pass, >= 0.5, or both fail; `auc`: the
    ROC AUC of the reward's score against the rules' verdict, 0.5 for a grader that cannot tell))."""
    reward = rewards.get("routed", table=routing_table(kinds, resolve, engines=engines))
    checks = routing_table(kinds, resolve, "check", engines=engines)
    check = rewards.get("routed", table=checks) if checks else None
    jobs = []  # (kind name, mode key, rows)
    for name, kind in kinds.items():
        by_mode = {m: items(name, kind, n, seed, split="eval", mode=m) for m in ("think", "no_think")}
        own_flags = [_prompt_key(r) for r in by_mode["think"]] == [_prompt_key(r) for r in by_mode["no_think"]]
        for key, rows in ([("flagged", by_mode["think"])] if own_flags else [(m, by_mode[m]) for m in modes]):
            if rows:
                jobs.append((name, key, rows))
            else:
                log.warning("tasks: %s has no held-out items; not evaluated", name)
    done = _generate_all(engine, kinds, jobs, max_new_tokens, seed)
    out: dict[str, Any] = {name: {} for name in kinds}
    for (name, key, rows), (texts, lengths, envs) in zip(jobs, done, strict=True):
        table = uniform(rows)
        columns = {k: [r[k] for r in table] for k in table[0]}
        if envs is not None:
            columns["environments"] = envs
        scores = reward(texts, **columns)
        valid = [float(s) for s in scores if s is not None]
        out[name][key] = {"score": sum(valid) / len(valid) if valid else None,
                          "score_se": standard_error(valid), "n_items": len(rows), "scored": len(valid),
                          "area": kinds[name].area, "per_item": scores,
                          "mean_length": sum(lengths) / max(len(lengths), 1)}
        log.info("tasks: %s %s: %s over %d items", name, key, out[name][key]["score"], len(valid))
        if check is not None and name in checks:
            ruled = check(texts, **columns)
            pairs = [(s, c >= 0.5) for s, c in zip(scores, ruled, strict=True) if None not in (s, c)]
            both = [(s >= 0.5, c) for s, c in pairs]
            out[name][key].update(agreement=sum(a == b for a, b in both) / len(both) if both else None,
                                  rule_pass=sum(c for _, c in both) / len(both) if both else None,
                                  auc=roc_auc(*zip(*pairs, strict=True)) if pairs else None)
    return out


def _generate_all(engine, kinds: dict[str, TaskKind], jobs: list, max_new_tokens: int, seed: int) -> list:
    """(texts, token counts, environments or None) for each job, one sample per item at its mode's
    sampling settings. The items of every kind without tools that sample alike go to the engine as
    one batch (on CPU a batch of 2 decodes nearly as slowly as one of 16); agent items run as episodes."""
    def sampling(key: str) -> str:  # a `flagged` kind samples as think mode
        return "no_think" if key == "no_think" else "think"
    done: list = [None] * len(jobs)
    for i, (name, key, rows) in enumerate(jobs):
        if kinds[name].environment:
            gen = dict(mode=None, max_new_tokens=max_new_tokens, seed=seed, **SAMPLING[sampling(key)])
            done[i] = _episodes(engine, kinds[name].environment, rows, gen)
    for setting in ("think", "no_think"):
        batch = [i for i, (_, key, _) in enumerate(jobs) if done[i] is None and sampling(key) == setting]
        if not batch:
            continue
        outs = iter(engine.generate([r["prompt"] for i in batch for r in jobs[i][2]], n=1, progress=True,
                                    mode=None, max_new_tokens=max_new_tokens, seed=seed, **SAMPLING[setting]))
        for i in batch:
            got = [next(outs)[0] for _ in jobs[i][2]]
            done[i] = ([c.text for c in got], [len(c.token_ids) for c in got], None)
    return done


def _episodes(engine, environment: str, rows: list[dict], gen: dict) -> tuple[list, list[int], list]:
    """Agent items: each run as an episode whose tool calls execute (data_builders/agent.py)."""
    envs = [ENVIRONMENTS[environment]() for _ in rows]
    for env, row in zip(envs, rows, strict=True):
        env.reset(**row)
    done = run_episodes(engine, [r["prompt"] for r in rows], envs, **gen)
    return [c for c, _ in done], [n for _, n in done], envs
