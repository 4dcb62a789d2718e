"""Built-in verifiable task families: no download, deterministic per seed, with solver traces.

Each row follows the column contract (`prompt`, `answer`, `tests`, `task`, `domain`) and carries a
step-by-step `reasoning` trace and a final `response`, which the cold-start builder turns into a
long-CoT example (`<think>\\n{reasoning}\\n</think>\\n\\n{response}`).

| family       | task      | knobs                          |
|--------------|-----------|--------------------------------|
| arithmetic   | math      | steps (2), max_value (20)      |
| linear       | math      | max_coef (9), max_solution (10), two_sided (False) |
| countdown    | countdown | numbers (3), max_value (10)    |
| python       | code      | (none: 12 templates, random arguments) |
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

BOX = "Put the final answer in \\boxed{}."
NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Mo", "Nia"]
ITEMS = ["apples", "marbles", "stickers", "coins", "books", "shells", "pencils", "cards"]


def _row(prompt: str, answer: Any, reasoning: str, response: str, task: str, domain: str,
         tests: str = "") -> dict[str, Any]:
    answer = answer if isinstance(answer, str) else json.dumps(answer)
    return {"prompt": [{"role": "user", "content": prompt}], "answer": answer, "tests": tests,
            "task": task, "domain": domain, "reasoning": reasoning, "response": response}


def arithmetic(rng: random.Random, steps: int = 2, max_value: int = 20) -> dict[str, Any]:
    """A multi-step word problem: a starting amount changed by `steps` operations."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, max_value)
    story, trace = [f"{name} has {value} {item}."], [f"{name} starts with {value} {item}."]
    for _ in range(steps):
        kind = rng.choice(["buy", "give", "groups"] if value > 1 else ["buy", "groups"])
        if kind == "buy":
            n = rng.randint(1, max_value)
            story.append(f"Then {name} gets {n} more.")
            trace.append(f"Getting {n} more: {value} + {n} = {value + n}.")
            value += n
        elif kind == "give":
            n = rng.randint(1, value - 1)
            story.append(f"Then {name} gives away {n}.")
            trace.append(f"Giving away {n}: {value} - {n} = {value - n}.")
            value -= n
        else:
            k, n = rng.randint(2, 4), rng.randint(1, 5)
            story.append(f"Then {k} friends each give {name} {n} {item}.")
            trace.append(f"{k} friends give {n} each, which is {k} * {n} = {k * n}; "
                         f"{value} + {k * n} = {value + k * n}.")
            value += k * n
    story.append(f"How many {item} does {name} have now? {BOX}")
    trace.append(f"So {name} has {value} {item}.")
    return _row(" ".join(story), value, "\n".join(trace), f"The answer is \\boxed{{{value}}}.", "math", "arithmetic")


def linear(rng: random.Random, max_coef: int = 9, max_solution: int = 10, two_sided: bool = False) -> dict[str, Any]:
    """A linear equation with an integer solution, solved by isolating x."""
    x = rng.randint(-max_solution, max_solution)
    a = rng.choice([c for c in range(-max_coef, max_coef + 1) if c not in (0, 1, -1)] or [2])
    b = rng.choice([v for v in range(-20, 21) if v])
    if two_sided:
        c = rng.choice([k for k in range(-max_coef, max_coef + 1) if k not in (0, a)])
        d = a * x + b - c * x
        eq = f"{_lin(a, b)} = {_lin(c, d)}"
        trace = [f"Move the x terms to the left: {_lin(a - c, 0)} = {d} - ({b}) = {d - b}."]
        a, rhs = a - c, d - b
    else:
        rhs = a * x + b
        eq = f"{_lin(a, b)} = {rhs}"
        trace = [f"Subtract {b} from both sides: {a}x = {rhs} - ({b}) = {rhs - b}."]
        rhs -= b
    trace.append(f"Divide both sides by {a}: x = {rhs} / {a} = {x}.")
    trace.append(f"Check: substituting x = {x} makes both sides equal.")
    return _row(f"Solve for x: {eq}. {BOX}", x, "\n".join(trace), f"The answer is \\boxed{{{x}}}.", "math", "linear")


def _lin(a: int, b: int) -> str:
    x = "x" if a == 1 else f"{a}x"
    return x if b == 0 else f"{x} {'+' if b > 0 else '-'} {abs(b)}"


def countdown(rng: random.Random, numbers: int = 3, max_value: int = 10) -> dict[str, Any]:
    """Reach a target with + - * over the given numbers (each at most once); a solution exists."""
    nums = [rng.randint(1, max_value) for _ in range(numbers)]
    order = nums[:]
    rng.shuffle(order)
    expr, value, trace = str(order[0]), order[0], []
    for n in order[1:]:
        op = rng.choice(["+", "*", "-"] if value - n >= 0 else ["+", "*"])
        new = {"+": value + n, "-": value - n, "*": value * n}[op]
        trace.append(f"{value} {op} {n} = {new}")
        expr, value = f"({expr} {op} {n})", new
    expr = expr[1:-1] if expr.startswith("(") else expr
    prompt = (f"Using the numbers {nums}, each at most once, and the operations + - * /, write an expression "
              f"that equals {value}. Put the expression in \\boxed{{}}.")
    reasoning = "Try combining the numbers step by step:\n" + "\n".join(trace) + f"\nThat reaches {value}."
    return _row(prompt, {"target": value, "numbers": nums}, reasoning, f"The expression is \\boxed{{{expr}}}.",
                "countdown", "countdown")


# name, signature, description, reference source, argument generator
PY_TASKS: list[tuple[str, str, str, str, Callable[[random.Random], tuple]]] = [
    ("sum_digits", "n", "returns the sum of the decimal digits of a non-negative integer n",
     "return sum(int(c) for c in str(n))", lambda r: (r.randint(0, 99999),)),
    ("reverse_words", "s", "returns the words of the string s in reverse order, joined by single spaces",
     "return ' '.join(s.split()[::-1])", lambda r: (" ".join(r.sample(ITEMS, 3)),)),
    ("count_vowels", "s", "returns how many vowels (a, e, i, o, u, lowercase) the string s contains",
     "return sum(c in 'aeiou' for c in s)", lambda r: (r.choice(ITEMS) + r.choice(NAMES).lower(),)),
    ("fib", "n", "returns the n-th Fibonacci number, with fib(0) = 0 and fib(1) = 1",
     "a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a", lambda r: (r.randint(0, 25),)),
    ("is_palindrome", "s", "returns True if the string s reads the same forwards and backwards",
     "return s == s[::-1]", lambda r: (r.choice(["level", "noon", "abc", "racecar", "python", "abba"]),)),
    ("max_of", "xs", "returns the largest number in the non-empty list xs",
     "return max(xs)", lambda r: ([r.randint(-50, 50) for _ in range(r.randint(1, 6))],)),
    ("square_evens", "xs", "returns the squares of the even numbers of the list xs, in order",
     "return [x * x for x in xs if x % 2 == 0]", lambda r: ([r.randint(0, 12) for _ in range(5)],)),
    ("factorial", "n", "returns n! for a non-negative integer n",
     "out = 1\n    for i in range(2, n + 1):\n        out *= i\n    return out", lambda r: (r.randint(0, 10),)),
    ("gcd", "a, b", "returns the greatest common divisor of two positive integers a and b",
     "while b:\n        a, b = b, a % b\n    return a", lambda r: (r.randint(1, 99), r.randint(1, 99))),
    ("count_char", "s, c", "returns how many times the character c occurs in the string s",
     "return s.count(c)", lambda r: ("mississippi", r.choice("misp"))),
    ("clamp", "x, lo, hi", "returns x limited to the range [lo, hi]",
     "return max(lo, min(hi, x))", lambda r: (r.randint(-20, 20), -5, 5)),
    ("dedupe", "xs", "returns the list xs without duplicates, keeping the first occurrence order",
     "seen = []\n    for x in xs:\n        if x not in seen:\n            seen.append(x)\n    return seen",
     lambda r: ([r.randint(0, 4) for _ in range(6)],)),
]


def python(rng: random.Random) -> dict[str, Any]:
    """A small function task; `tests` holds asserts computed from the reference implementation."""
    name, sig, desc, body, args = rng.choice(PY_TASKS)
    source = f"def {name}({sig}):\n    {body}\n"
    scope: dict[str, Any] = {}
    exec(compile(source, f"<reference {name}>", "exec"), scope)  # the project's own reference code
    cases = []
    for _ in range(4):
        a = args(rng)
        cases.append(f"assert {name}({', '.join(map(repr, a))}) == {scope[name](*a)!r}")
    prompt = f"Write a Python function `{name}({sig})` that {desc}. Answer with one ```python code block."
    reasoning = f"I need `{name}({sig})`, which {desc}.\nA direct implementation:\n{source}"
    return _row(prompt, "", reasoning, f"```python\n{source}```", "code", "python", tests="\n".join(cases))


FAMILIES: dict[str, Callable[..., dict[str, Any]]] = {
    "arithmetic": arithmetic, "linear": linear, "countdown": countdown, "python": python}


def generate(family: str, n: int, seed: int = 0, **knobs: Any):
    """`n` items of a family as a `datasets.Dataset`; the same seed gives the same items."""
    from datasets import Dataset
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic family {family!r} (known: {', '.join(FAMILIES)})")
    rng = random.Random(f"{family}:{seed}")
    return Dataset.from_list([FAMILIES[family](rng, **knobs) for _ in range(n)])


def generate_mix(counts: dict[str, int], seed: int = 0, knobs: dict[str, dict] | None = None):
    from datasets import concatenate_datasets
    return concatenate_datasets([generate(f, n, seed, **(knobs or {}).get(f, {})) for f, n in counts.items()])
