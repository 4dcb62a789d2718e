"""Agent ability with real environment feedback (report §4.4): multi-turn tool use whose tools run.

An environment follows TRL's `environment_factory` contract: its public methods are the tools
(typed, Google-style docstrings, so `transformers.utils.get_json_schema` and the Qwen3 template
can list them), `reset(**row)` starts an episode from a dataset row. `GRPOTrainer` executes the
calls during rollouts; `run_episodes` does the same for evaluation with any generation engine.

`shop`: a small in-memory key-value store of prices and a calculator. The question needs the
prices (kv_get), a computation (calculate) and the boxed total; the `tool_use` reward checks the
answer and the share of calls that ran without error.
"""

from __future__ import annotations

import ast
import json
import operator
import random
from typing import Any

from transformers.utils import get_json_schema

from posttrain.core.chat import parse_assistant, tools_system_message

FRUITS = ["apple", "pear", "plum", "melon", "lemon", "peach", "mango", "kiwi"]
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg}


def _arith(node: ast.AST) -> float:
    """Numbers and + - * / only: the calculator never evaluates anything else."""
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.left), _arith(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.operand))
    raise ValueError("only numbers and + - * / are allowed")


class ShopEnv:
    """Prices in a key-value store, and a calculator. Counts calls and failed calls."""

    def reset(self, **row: Any) -> None:
        self.store = dict(json.loads(row.get("store") or "{}"))
        self.calls = self.failures = 0

    def _count(self, ok: bool) -> None:
        self.calls += 1
        self.failures += not ok

    def kv_get(self, key: str) -> str:
        """Read a value from the store.

        Args:
            key: The key to read, e.g. "price:apple".

        Returns:
            The stored value.
        """
        self._count(key in self.store)
        if key not in self.store:
            raise KeyError(f"no key {key!r}; keys: {', '.join(sorted(self.store))}")
        return str(self.store[key])

    def kv_set(self, key: str, value: str) -> str:
        """Write a value to the store.

        Args:
            key: The key to write.
            value: The value to store.

        Returns:
            "ok" once stored.
        """
        self._count(True)
        self.store[key] = value
        return "ok"

    def calculate(self, expression: str) -> str:
        """Evaluate an arithmetic expression with + - * / and parentheses.

        Args:
            expression: The expression, e.g. "3 * 4 + 2 * 7".

        Returns:
            The result.
        """
        try:
            value = _arith(ast.parse(str(expression), mode="eval"))
        except (SyntaxError, ValueError, ZeroDivisionError, TypeError):
            self._count(False)
            raise
        self._count(True)
        return str(int(value) if float(value).is_integer() else round(value, 6))


class NoTools:
    """The environment of rows that use no tools (a batch that mixes kinds needs one for each row)."""

    def reset(self, **row: Any) -> None:
        return None


ENVIRONMENTS = {"shop": ShopEnv, "none": NoTools}


def _purchase(rng: random.Random, items: int) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    fruits = rng.sample(FRUITS, 4)
    prices = {f"price:{f}": rng.randint(2, 9) for f in fruits}
    bought = [(f, rng.randint(2, 5)) for f in rng.sample(fruits, items)]
    total = sum(n * prices[f"price:{f}"] for f, n in bought)
    ask = " and ".join(f"{n} {f}s" for f, n in bought)
    prompt = (f"Prices are kept in the store under keys like 'price:apple'. How much do {ask} cost in total? "
              "Look the prices up with the tools, compute the total with the calculator, and put the final "
              "answer in \\boxed{}.")
    calls = [f'{{"name": "kv_get", "arguments": {{"key": "price:{f}"}}}}' for f, _ in bought]
    return {"prompt": [{"role": "user", "content": prompt}], "answer": str(total), "store": json.dumps(prices),
            "domain": "agent", "response": "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)}, bought


def shop(rng: random.Random, items: int = 2) -> dict[str, Any]:
    """A purchase whose total needs the stored prices: `answer` is the total, `store` the prices."""
    return _purchase(rng, items)[0]


def function_call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def stored(message: dict[str, Any]) -> dict[str, Any]:
    """MESSAGE with its calls' arguments as JSON strings (the Qwen3 templates write a string as is): a
    datasets column of calls to different tools would otherwise unify their argument dicts, with nulls."""
    calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
             for c in message.get("tool_calls") or []]
    return {**message, "tool_calls": calls} if calls else message


def shop_episode(rng: random.Random, mode: str, items: int = 2) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """A shop row and a worked episode for it in MODE, as stage-3 data: an assistant turn that looks
    the prices up (kv_get), their results, one that totals them (calculate), its result, and the
    boxed answer; thinking turns say why in their think block. The calls run on the row's ShopEnv,
    so every result is the tool's own; None when a call fails (the answer is checked by the caller)."""
    row, bought = _purchase(rng, items)
    env, known = ShopEnv(), {t["function"]["name"] for t in tool_schemas(ShopEnv)}
    env.reset(**row)
    think = mode == "think"
    names = " and ".join(f for f, _ in bought)

    def turn(reasoning: str, content: str = "", calls: tuple = ()) -> dict[str, Any]:
        return {"role": "assistant", "content": content, "reasoning_content": reasoning if think else "",
                **({"tool_calls": list(calls)} if calls else {})}
    lookups = [function_call("kv_get", key=f"price:{f}") for f, _ in bought]
    messages = [turn(f"I need the prices of {names} from the store first.", calls=lookups)]
    messages += [_run_call(env, c, known) for c in lookups]
    prices = [m["content"] for m in messages[1:]]
    expression = " + ".join(f"{n} * {p}" for (_, n), p in zip(bought, prices, strict=True))
    messages.append(turn(", ".join(f"{f} costs {p}" for (f, _), p in zip(bought, prices, strict=True))
                         + f"; the total is {expression}.", calls=[function_call("calculate", expression=expression)]))
    messages.append(_run_call(env, messages[-1]["tool_calls"][0], known))
    messages.append(turn(f"The calculator gives {messages[-1]['content']}.",
                         f"The total is \\boxed{{{messages[-1]['content']}}}."))
    failed = any(m["role"] == "tool" and m["content"].startswith("error:") for m in messages)
    return row, None if failed else [stored(m) for m in messages]


def tool_schemas(env_cls: type) -> list[dict[str, Any]]:
    """The tools an environment exposes, as TRL lists them (its public methods but reset/get_reward)."""
    return [get_json_schema(getattr(env_cls, name)) for name in sorted(vars(env_cls))
            if callable(getattr(env_cls, name)) and not name.startswith("_") and name not in ("reset", "get_reward")]


def run_episodes(engine, prompts: list[list[dict[str, Any]]], envs: list, max_turns: int = 4,
                 **gen: Any) -> list[tuple[list[dict[str, Any]], int]]:
    """Generate, run the tool calls on each episode's env, feed the results back, until a turn makes
    no call (episodes still calling are generated together, one batch per turn). Per episode: the
    completion as messages (assistant turns with `tool_calls`, tool results), as GRPO sees it, and
    the number of tokens the model generated."""
    schemas = [tool_schemas(type(env)) for env in envs]
    heads = [[tools_system_message(tools), *prompt] for prompt, tools in zip(prompts, schemas, strict=True)]
    completions: list[list[dict[str, Any]]] = [[] for _ in prompts]
    generated = [0] * len(prompts)
    active = list(range(len(prompts)))
    for _ in range(max_turns):
        if not active:
            break
        outs = engine.generate([heads[i] + completions[i] for i in active], n=1, **gen)
        still = []
        for i, out in zip(active, outs, strict=True):
            generated[i] += len(out[0].token_ids)
            try:
                turn = parse_assistant(out[0].text)
            except ValueError:
                turn = {"role": "assistant", "content": out[0].text}
            completions[i].append({**turn, "content": turn.get("content") or ""})
            if turn.get("tool_calls"):
                known = {t["function"]["name"] for t in schemas[i]}
                completions[i] += [_run_call(envs[i], call, known) for call in turn["tool_calls"]]
                still.append(i)
        active = still
    return list(zip(completions, generated, strict=True))


def _run_call(env, call: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """One call of a `known` tool on `env`; an error is returned to the model as the result, as TRL's loop does."""
    fn = call.get("function", call)
    try:
        if fn.get("name") not in known:
            raise ValueError(f"no tool {fn.get('name')!r}")
        result = str(getattr(env, fn["name"])(**(fn.get("arguments") or {})))
    except Exception as err:  # noqa: BLE001 - the model sees the error
        result = f"error: {err}"
    return {"role": "tool", "name": fn.get("name"), "content": result}
