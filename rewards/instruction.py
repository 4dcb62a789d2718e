"""`instruction`: IFEval-style verifiable constraints on the answer (the text after `</think>`).

The `constraints` column holds one constraint, a list of them, `{"constraints": [...]}`, or any of
these as a JSON string. Each constraint is a dict with a `type`; counts take `min` and/or `max`
(inclusive), or `count` for an exact number:

    {"type": "word_count", "min": 10, "max": 50}        words (runs of letters/digits)
    {"type": "sentence_count", "max": 3}                sentences (ended by . ! ? and CJK stops)
    {"type": "paragraph_count", "count": 2}             blocks separated by blank lines or ***
    {"type": "bullet_count", "min": 3}                  lines starting with "* ", "- " or "• "
    {"type": "include_keywords", "keywords": ["a"]}     each keyword appears (whole word, any case)
    {"type": "exclude_keywords", "keywords": ["b"]}     none appears
    {"type": "json"}                                    the whole answer (optionally one ```json
                                                        fence) parses as JSON
    {"type": "language", "language": "fr"}              detected language (rewards.language)
    {"type": "case", "case": "lower"}                   all letters lower (or "upper") case
    {"type": "starts_with", "phrase": "Dear"}           case-insensitive, ignoring outer whitespace
    {"type": "ends_with", "phrase": "Any questions?"}

Reward: the fraction of constraints met (`strict=True`: 1.0 only if all are); an empty answer
scores 0.0 (it would meet "at most N words" and "exclude" for free). None, with the reason logged,
when `constraints` is missing, malformed, or names an unknown type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from posttrain.core.chat import split_think
from rewards.base import Reward, Row, log
from rewards.language import SCRIPTS_OF, detect_language

_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？]+")
_BULLET = re.compile(r"^\s*(?:[*•]|-(?!-))\s+\S", re.M)
_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n|^\s*\*\*\*\s*$", re.M)


def _between(value: int, c: dict[str, Any]) -> bool:
    low = c.get("min", c.get("count"))
    high = c.get("max", c.get("count"))
    if low is None and high is None:
        raise ValueError(f"{c['type']}: needs min, max or count")
    return (low is None or value >= int(low)) and (high is None or value <= int(high))


def _keywords(c: dict[str, Any]) -> list[str]:
    words = c.get("keywords", c.get("keyword"))
    words = [words] if isinstance(words, str) else words
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"{c['type']}: `keywords` must be a non-empty list of strings")
    return words


def _has(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.I) is not None


def _is_json(text: str) -> bool:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*\n?(.*?)\n?```", body, re.S | re.I)
    try:
        json.loads(fenced.group(1) if fenced else body)
        return True
    except ValueError:
        return False


def _case(text: str, c: dict[str, Any]) -> bool:
    case = c.get("case")
    if case not in ("lower", "upper"):
        raise ValueError(f"case: `case` must be 'lower' or 'upper', got {case!r}")
    return any(ch.isalpha() for ch in text) and text == (text.lower() if case == "lower" else text.upper())


def _language(text: str, c: dict[str, Any]) -> bool:
    if c.get("language") not in SCRIPTS_OF:
        raise ValueError(f"language: unknown language {c.get('language')!r} (known: {', '.join(SCRIPTS_OF)})")
    return detect_language(text) == c["language"]


def _phrase(c: dict[str, Any]) -> str:
    if not isinstance(c.get("phrase"), str) or not c["phrase"].strip():
        raise ValueError(f"{c['type']}: `phrase` must be a non-empty string")
    return c["phrase"].strip().lower()


CHECKS: dict[str, Callable[[str, dict[str, Any]], bool]] = {
    "word_count": lambda t, c: _between(len(re.findall(r"\w+", t)), c),
    "sentence_count": lambda t, c: _between(len([s for s in _SENTENCE_END.split(t) if s.strip()]), c),
    "paragraph_count": lambda t, c: _between(len([p for p in _PARAGRAPH_SPLIT.split(t) if p.strip()]), c),
    "bullet_count": lambda t, c: _between(len(_BULLET.findall(t)), c),
    "include_keywords": lambda t, c: all(_has(t, w) for w in _keywords(c)),
    "exclude_keywords": lambda t, c: not any(_has(t, w) for w in _keywords(c)),
    "json": lambda t, c: _is_json(t),
    "language": _language,
    "case": _case,
    "starts_with": lambda t, c: t.strip().lower().startswith(_phrase(c)),
    "ends_with": lambda t, c: t.strip().lower().endswith(_phrase(c)),
}


def parse_constraints(spec: Any) -> list[dict[str, Any]]:
    """The constraint list of a `constraints` value (see the module docstring); ValueError if malformed."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    if isinstance(spec, dict) and "type" not in spec and isinstance(spec.get("constraints"), list):
        spec = spec["constraints"]
    spec = [spec] if isinstance(spec, dict) else spec
    if not isinstance(spec, list) or not spec or not all(isinstance(c, dict) for c in spec):
        raise ValueError(f"constraints must be a dict or a non-empty list of dicts, got {str(spec)[:80]}")
    spec = [{k: v for k, v in c.items() if v is not None} for c in spec]  # Arrow structs fill gaps with None
    for c in spec:
        if c.get("type") not in CHECKS:
            raise ValueError(f"unknown constraint type {c.get('type')!r} (known: {', '.join(CHECKS)})")
    return spec


class InstructionReward(Reward):
    """Params: `strict` (all-or-nothing, default False)."""

    name = "instruction"
    on_error = None

    def __init__(self, strict: bool = False) -> None:
        super().__init__()
        self.strict = bool(strict)

    def score(self, text: str, row: Row) -> float | None:
        spec = row.get("constraints")
        if spec is None or spec == "" or spec == []:
            return None
        try:
            constraints = parse_constraints(spec)
            answer = split_think(text)[1]
            met = [bool(CHECKS[c["type"]](answer, c)) and bool(answer.strip()) for c in constraints]
        except (ValueError, TypeError, KeyError) as err:
            log.warning("instruction: bad constraints (%s); sample skipped (None)", err)
            return None
        if self.strict:
            return float(all(met))
        return sum(met) / len(met)
