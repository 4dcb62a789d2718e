"""Cold-start filters (report §4.1) and learnability (§4.2), each a named, tested function.

Query filters drop what cannot be verified and what overlaps evaluation. The six response rules
reject a sampled response if it (1) has a wrong final answer, (2) repeats itself substantially,
(3) guesses without adequate reasoning, (4) concludes differently in its thinking and its summary,
(5) mixes languages or shifts style inappropriately, (6) is too similar to a validation/eval item.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from posttrain.core.chat import split_think
from rewards.grading import grade
from rewards.rules import last_boxed

# ---------------------------------------------------------------------------------------------
# query filters

_MULTI_PART = re.compile(r"(\(\s*[a-d]\s*\)|(?:^|\n)\s*[1-9][.)]\s+\S)", re.I)
_OPEN_ENDED = re.compile(r"\b(write|compose|draft)\b.{0,40}\b(essay|story|poem|letter|article|blog)\b"
                         r"|\b(what do you think|your opinion|discuss)\b", re.I)


def unverifiable(row: dict[str, Any]) -> bool:
    """No gold answer or tests, several sub-questions, or open-ended text generation."""
    text = row["prompt"][-1]["content"] if isinstance(row["prompt"], list) else str(row["prompt"])
    if not (row.get("answer") or row.get("tests")):
        return True
    return len(_MULTI_PART.findall(text)) >= 2 or text.count("?") >= 3 or bool(_OPEN_ENDED.search(text))


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


class NearDuplicateIndex:
    """Word-3-gram Jaccard similarity against reference texts (eval and validation items)."""

    def __init__(self, texts: list[str], threshold: float = 0.8):
        self.threshold = threshold
        self.refs = [_shingles(t) for t in texts]
        self.by_gram: dict[tuple[str, ...], list[int]] = {}
        for i, grams in enumerate(self.refs):
            for g in grams:
                self.by_gram.setdefault(g, []).append(i)

    def max_similarity(self, text: str) -> float:
        grams = _shingles(text)
        shared = Counter(i for g in grams for i in self.by_gram.get(g, ()))
        return max((c / len(grams | self.refs[i]) for i, c in shared.items()), default=0.0)

    def is_near_duplicate(self, text: str) -> bool:
        return self.max_similarity(text) >= self.threshold


# ---------------------------------------------------------------------------------------------
# the six response rules: (response, row, ctx) -> True to reject

def wrong_answer(response: str, row: dict[str, Any], ctx: dict[str, Any]) -> bool:
    """(1) the final answer is wrong, by the task's rule reward."""
    return ctx.get("grade", grade)([row], [response])[0] < 1.0


def repetition(response: str, row: dict[str, Any], ctx: dict[str, Any], n: int = 4, max_ratio: float = 0.3) -> bool:
    """(2) substantial repetition: many repeated word 4-grams, or one line said three times or more."""
    words = response.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if grams and 1 - len(set(grams)) / len(grams) > max_ratio:
        return True
    lines = [ln.strip() for ln in response.splitlines() if len(ln.strip()) > 10]
    return any(c >= 3 for c in Counter(lines).values())


_GUESS = re.compile(r"\b(i guess|just guess|probably|maybe it'?s|let'?s just say|i'?m not sure"
                    r"|random(ly)? pick)\b", re.I)


def guesswork(response: str, row: dict[str, Any], ctx: dict[str, Any], min_words: int = 8) -> bool:
    """(3) an answer without adequate reasoning: a thin think block, or guessing language."""
    reasoning = split_think(response)[0] or ""
    return len(reasoning.split()) < min_words or bool(_GUESS.search(reasoning))


_CONCLUDES = re.compile(r"\b(?:answer is|answer:|therefore|thus|so)\b([^\n.]*)", re.I)
_ASSIGNS = re.compile(r"\b[a-zA-Z]\s*=\s*(-?\d+(?:\.\d+)?)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _conclusion(text: str, final: bool = False) -> str | None:
    """What a text concludes: its last \\boxed{}, else the number of its last 'so / therefore /
    answer is' sentence, else its last `x = N`; the final summary may also just end on a number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for sentence in reversed(_CONCLUDES.findall(text)):
        numbers = _NUMBER.findall(sentence)
        if numbers:
            return numbers[-1]
    assigned = _ASSIGNS.findall(text)
    if assigned:
        return assigned[-1]
    numbers = _NUMBER.findall(text) if final else []
    return numbers[-1] if numbers else None


def inconsistent_summary(response: str, row: dict[str, Any], ctx: dict[str, Any]) -> bool:
    """(4) the thinking concludes one result and the final summary states another."""
    reasoning, answer = split_think(response)
    if not reasoning or row.get("task") == "code":
        return False
    thought, said = _conclusion(reasoning), _conclusion(answer, final=True)
    return thought is not None and said is not None and thought != said and thought not in said


_SCRIPTS = {"latin": r"[A-Za-z]", "cjk": r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]",
            "cyrillic": r"[\u0400-\u04ff]", "arabic": r"[\u0600-\u06ff]"}


def script_of(text: str) -> str | None:
    counts = {name: len(re.findall(p, text)) for name, p in _SCRIPTS.items()}
    return max(counts, key=counts.get) if any(counts.values()) else None


def language_mixing(response: str, row: dict[str, Any], ctx: dict[str, Any], max_foreign: float = 0.05) -> bool:
    """(5) the response is not in the prompt's script, or mixes in another script beyond a trace."""
    prompt = row["prompt"][-1]["content"] if isinstance(row["prompt"], list) else str(row["prompt"])
    main = script_of(prompt) or "latin"
    letters = {name: len(re.findall(p, response)) for name, p in _SCRIPTS.items()}
    total = sum(letters.values())
    return bool(total) and (total - letters[main]) / total > max_foreign


def eval_overlap(response: str, row: dict[str, Any], ctx: dict[str, Any]) -> bool:
    """(6) the response is too similar to a validation or eval item."""
    index = ctx.get("eval_index")
    return index is not None and index.is_near_duplicate(response)


RESPONSE_FILTERS: dict[str, Callable[..., bool]] = {
    "wrong_answer": wrong_answer, "repetition": repetition, "guesswork": guesswork,
    "inconsistent_summary": inconsistent_summary, "language_mixing": language_mixing,
    "eval_overlap": eval_overlap}


def apply_response_filters(responses: list[str], row: dict[str, Any], ctx: dict[str, Any]):
    """(kept responses, rejections per rule); a response counts against the first rule it breaks."""
    rules = ctx.get("rules") or list(RESPONSE_FILTERS)
    unknown = set(rules) - set(RESPONSE_FILTERS)
    if unknown:
        raise ValueError(f"rules: unknown response filter(s) {sorted(unknown)} (known: {', '.join(RESPONSE_FILTERS)})")
    kept, counts = [], {r: 0 for r in rules}
    for response in responses:
        broken = next((r for r in rules if RESPONSE_FILTERS[r](response, row, ctx)), None)
        if broken:
            counts[broken] += 1
        else:
            kept.append(response)
    return kept, counts


# ---------------------------------------------------------------------------------------------
# learnability (stage 2)

def learnable(pass_rates: list[float], low: float = 0.0, high: float = 1.0) -> list[int]:
    """Indices whose pass rate lies strictly inside (low, high)."""
    return [i for i, r in enumerate(pass_rates) if low < r < high]


def pass_rate_histogram(pass_rates: list[float], bins: int) -> dict[str, int]:
    edges = [i / (bins - 1) for i in range(bins)] if bins > 1 else [0.0]
    hist = Counter(min(edges, key=lambda e: abs(e - r)) for r in pass_rates)
    return {f"{e:.2f}": hist.get(e, 0) for e in edges}
