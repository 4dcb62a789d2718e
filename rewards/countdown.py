"""`countdown`: does the boxed expression reach the target with the given numbers?

`answer` is `{"target": int, "numbers": [int, ...]}` (or that as JSON), as the synthetic
`countdown` family writes it. The last `\\boxed{...}` of the answer part must be an arithmetic
expression over + - * / (and parentheses) using each given number at most once, equal to the target.
"""

from __future__ import annotations

import ast
import json
import operator
from collections import Counter
from fractions import Fraction

from posttrain.core.chat import THINK_CLOSE, split_think
from rewards.base import Reward, Row, log
from rewards.math_answer import last_boxed

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, used), _eval(node.right, used))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    raise ValueError("only integers, + - * / and parentheses are allowed")


def verify_countdown(expression: str, numbers: list[int], target: int) -> bool:
    """True if `expression` uses only the given numbers (each at most once) and equals `target`."""
    expression = expression.replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/")
    expression = expression.replace("{", "(").replace("}", ")").split("=")[0]
    if len(expression) > 200:
        return False
    used: list[int] = []
    try:
        value = _eval(ast.parse(expression.strip(), mode="eval").body, used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return False
    return not (Counter(used) - Counter(numbers)) and value == target


class CountdownReward(Reward):
    name = "countdown"
    on_error = 0.0

    def score(self, text: str, row: Row) -> float | None:
        spec = row.get("answer")
        if spec is None or spec == "":
            return None
        try:
            spec = json.loads(spec) if isinstance(spec, str) else spec
            numbers, target = [int(n) for n in spec["numbers"]], int(spec["target"])
        except (ValueError, TypeError, KeyError) as err:
            log.warning("countdown: bad answer spec %.80r (%s); sample skipped (None)", spec, err)
            return None
        reasoning, answer = split_think(text)
        if reasoning is not None and THINK_CLOSE not in text:
            return 0.0
        expression = last_boxed(answer)
        return float(expression is not None and verify_countdown(expression, numbers, target))
