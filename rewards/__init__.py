"""Reward functions with TRL's signature, looked up by name.

    reward = rewards.get("math", timeout=5)
    reward(completions, answer=[...], prompt=[...])  # -> list[float | None]

Every reward is a callable object `f(completions, **columns) -> list[float | None]` with a
`__name__` (TRL logs it as `rewards/<name>`), usable directly in GRPOTrainer's `reward_funcs`.
`completions` are strings or TRL's conversational form; columns arrive as lists aligned with them.
`None` means "not applicable to this sample". A failure on one sample is logged on the
`posttrain.rewards` logger and scored (0.0 or None, per reward); it never raises into training.

`get` also takes `"package.module:attr"` or `"package.module.attr"`: a reward function is used as
is (bound to `params` if any), a class or factory is called with `params`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from rewards.base import Reward, log

__all__ = ["REGISTRY", "Reward", "accepts", "get", "log"]

# name -> "module:attribute" (imported on first use, so `math` does not import torch)
REGISTRY: dict[str, str] = {
    "math": "rewards.math_answer:MathReward",
    "code": "rewards.code_exec:CodeReward",
    "think_format": "rewards.formats:ThinkFormatReward",
    "think_follow": "rewards.formats:ThinkFollowReward",
    "instruction": "rewards.instruction:InstructionReward",
    "length": "rewards.shaping:LengthReward",
    "repetition": "rewards.shaping:RepetitionReward",
    "language": "rewards.language:LanguageReward",
    "judge": "rewards.judge:JudgeReward",
    "preference": "rewards.preference:PreferenceReward",
    "routed": "rewards.routed:RoutedReward",
    "countdown": "rewards.countdown:CountdownReward",
    "rag": "rewards.rag:RagReward",
    "tool_call": "rewards.tool_call:ToolCallReward",
    "tool_use": "rewards.tool_use:ToolUseReward",
}


def get(name: str, **params: Any) -> Callable[..., list]:
    """The reward called `name` (a registered name or an import path), built with `params`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")
    target = REGISTRY.get(name)
    if target is None:
        if ":" not in name and "." not in name:
            raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(REGISTRY)} "
                             "(or an import path 'package.module:function')")
        target = name
    obj = _import(target)
    if inspect.isclass(obj):
        return _named(obj(**params), name)
    if not callable(obj):
        raise ValueError(f"reward {name!r}: {target} is not callable")
    if _is_reward_function(obj):
        fn = functools.partial(obj, **params) if params else obj
        return _named(fn, getattr(obj, "__name__", name))
    return _named(obj(**params), name)  # a factory


def accepts(name: str, param: str) -> bool:
    """Whether the reward called `name` takes the parameter `param` (e.g. the run's `engines`)."""
    obj = _import(REGISTRY.get(name, name))
    try:
        return param in inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
    except (TypeError, ValueError):
        return False


def _import(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import reward {target!r}: {err}; known rewards: {', '.join(REGISTRY)}") from None


def _is_reward_function(fn: Callable) -> bool:
    """A reward function takes `completions` (a factory does not)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return "completions" in params


def _named(fn: Any, name: str) -> Any:
    if not callable(fn):
        raise ValueError(f"reward {name!r}: the factory returned {type(fn).__name__}, not a callable")
    if not getattr(fn, "__name__", None):
        try:
            fn.__name__ = name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        except (AttributeError, TypeError):
            inner, fn = fn, (lambda completions, **kw: inner(completions, **kw))
            fn.__name__ = name
    return fn
