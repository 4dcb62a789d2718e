"""`instruction`: IFEval's verifiable instructions, checked on the answer (the text after `</think>`).

The verdicts are IFEval's own: the checkers come from `if-verifiable` (a copy of the official
`instructions.py`), imported without its data loader or its IFBench half, so nothing downloads. The
`constraints` column holds one constraint, a list of them, `{"constraints": [...]}`, or any of these
as a JSON string. A constraint is a dict with a `type`, in one of two forms:

- an IFEval instruction id with its kwargs, as in IFEval's data:
  `{"type": "keywords:existence", "keywords": ["river"]}`;
- a short form, mapped to IFEval's instruction and kwargs where IFEval has one (counts take `min`
  and/or `max`, inclusive, or `count` for an exact number):

    {"type": "word_count", "min": 10, "max": 50}     length_constraints:number_words (at least 10,
                                                     less than 51): runs of letters/digits
    {"type": "paragraph_count", "count": 2}          length_constraints:number_paragraphs: blocks
                                                     separated by the markdown divider ***
    {"type": "bullet_count", "count": 3}             detectable_format:number_bullet_lists: lines
                                                     starting with "*" (not "**") or "-"
    {"type": "include_keywords", "keywords": ["a"]}  keywords:existence: anywhere, any case, also
                                                     inside a longer word ("art" in "party")
    {"type": "exclude_keywords", "keywords": ["b"]}  keywords:forbidden_words: as a whole word
    {"type": "json"}                                 detectable_format:json_format (``` fences allowed)
    {"type": "language", "language": "fr"}          language:response_language (langdetect), for
                                                     IFEval's languages; others (zh) rewards.language
    {"type": "ends_with", "phrase": "Any questions?"} startend:end_checker: outer quotes ignored

The project's own code, where IFEval has no such instruction or its checker needs a download (NLTK's
`punkt` data): `case` (`{"type": "case", "case": "lower"}`: every cased letter lower, or upper;
IFEval's change_case:english_lowercase / english_capital also ask for English), `sentence_count`
and IFEval's `length_constraints:number_sentences` (sentences end with . ! ? or a CJK stop),
`change_case:capital_word_frequency` (words = runs of letters/digits, not NLTK's tokens),
`starts_with` (case-insensitive, outer whitespace ignored), and `min`/`max` on paragraph and bullet
counts (IFEval counts them exactly; the same separators and markers here).
langdetect is seeded, so a verdict does not change from one call to the next.

Reward: the share of constraints met (IFEval's instruction level); `strict=True`: 1.0 only if all are
(prompt level). `loose=True` scores as IFEval's loose mode: a constraint is met if the answer, or the
answer without its first and/or last line or without `*`, meets it. An empty answer scores 0.0 (it
would meet "less than N words" for free). None, with the reason logged, when `constraints` is
missing, malformed, or names an unknown type.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from typing import Any

import langdetect
from if_verifiable.common import get_loose_transformations
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
from if_verifiable.ifeval.instructions_util import LANGUAGE_CODES

from posttrain.core.chat import split_think
from rewards.base import Reward, Row, log
from rewards.language import SCRIPTS_OF, detect_language

langdetect.DetectorFactory.seed = 0  # langdetect samples; seeded, the same text always gets the same verdict

_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？]+")
_BULLET = re.compile(r"^\s*\*[^*].*$|^\s*-.*$", re.M)  # IFEval's bullet markers
_PARAGRAPH_SPLIT = re.compile(r"\s?\*\*\*\s?")  # IFEval's paragraph divider


def _between(value: int, c: dict[str, Any]) -> bool:
    low, high = c.get("min", c.get("count")), c.get("max", c.get("count"))
    if low is None and high is None:
        raise ValueError(f"{c['type']}: needs min, max or count")
    return (low is None or value >= int(low)) and (high is None or value <= int(high))


def _relation(value: int, n: Any, relation: Any, what: str) -> bool:
    """IFEval's count relations: `less than` N or `at least` N."""
    if relation not in ("less than", "at least") or n is None:
        raise ValueError(f"{what}: needs relation ('less than' or 'at least') and a count")
    return value < int(n) if relation == "less than" else value >= int(n)


def _sentences(text: str) -> int:
    return len([s for s in _SENTENCE_END.split(text) if s.strip()])


def _paragraphs(text: str) -> int | None:
    """IFEval's paragraph count: blocks between *** dividers; None if one inside is empty (IFEval fails it)."""
    parts = _PARAGRAPH_SPLIT.split(text)
    if any(not p.strip() for p in parts[1:-1]):
        return None
    return sum(bool(p.strip()) for p in parts)


def _case(text: str, c: dict[str, Any]) -> bool:
    if c.get("case") not in ("lower", "upper"):
        raise ValueError(f"case: `case` must be 'lower' or 'upper', got {c.get('case')!r}")
    return text.islower() if c["case"] == "lower" else text.isupper()


def _starts_with(text: str, c: dict[str, Any]) -> bool:
    phrase = c.get("phrase")
    if not isinstance(phrase, str) or not phrase.strip():
        raise ValueError("starts_with: `phrase` must be a non-empty string")
    return text.strip().lower().startswith(phrase.strip().lower())


def _language(text: str, c: dict[str, Any]) -> bool:
    if c.get("language") not in SCRIPTS_OF:
        raise ValueError(f"language: unknown language {c.get('language')!r} "
                         f"(IFEval's: {', '.join(LANGUAGE_CODES)}; or {', '.join(SCRIPTS_OF)})")
    return detect_language(text) == c["language"]


# The project's own checks (see the module docstring for why each is not IFEval's)
OWN: dict[str, Callable[[str, dict[str, Any]], bool]] = {
    "sentence_count": lambda t, c: _between(_sentences(t), c),
    "paragraph_count": lambda t, c: (n := _paragraphs(t)) is not None and _between(n, c),
    "bullet_count": lambda t, c: _between(len(_BULLET.findall(t)), c),
    "starts_with": _starts_with,
    "case": _case,
    "language": _language,
    "length_constraints:number_sentences": lambda t, c: _relation(
        _sentences(t), c.get("num_sentences"), c.get("relation"), c["type"]),
    "change_case:capital_word_frequency": lambda t, c: _relation(
        sum(w.isupper() for w in re.findall(r"\w+", t)), c.get("capital_frequency"), c.get("capital_relation"),
        c["type"]),
}


def _words(c: dict[str, Any]) -> list[str]:
    words = c.get("keywords", c.get("keyword"))
    words = [words] if isinstance(words, str) else words
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"{c['type']}: `keywords` must be a non-empty list of strings")
    return words


def _phrase(c: dict[str, Any]) -> str:
    if not isinstance(c.get("phrase"), str) or not c["phrase"].strip():
        raise ValueError(f"{c['type']}: `phrase` must be a non-empty string")
    return c["phrase"]


def _word_count(c: dict[str, Any]) -> list[tuple[str, dict]]:
    low, high = c.get("min", c.get("count")), c.get("max", c.get("count"))
    if low is None and high is None:
        raise ValueError("word_count: needs min, max or count")
    out = [] if low is None else [("length_constraints:number_words", {"relation": "at least", "num_words": int(low)})]
    if high is not None:
        out.append(("length_constraints:number_words", {"relation": "less than", "num_words": int(high) + 1}))
    return out


# short form -> IFEval instructions (id, kwargs), all of which must hold; None: the project's own check
TO_IFEVAL: dict[str, Callable[[dict[str, Any]], list[tuple[str, dict]] | None]] = {
    "word_count": _word_count,
    "paragraph_count": lambda c: [("length_constraints:number_paragraphs", {"num_paragraphs": int(c["count"])})]
    if "count" in c else None,
    "bullet_count": lambda c: [("detectable_format:number_bullet_lists", {"num_bullets": int(c["count"])})]
    if "count" in c else None,
    "include_keywords": lambda c: [("keywords:existence", {"keywords": _words(c)})],
    "exclude_keywords": lambda c: [("keywords:forbidden_words", {"forbidden_words": _words(c)})],
    "json": lambda c: [("detectable_format:json_format", {})],
    "language": lambda c: [("language:response_language", {"language": c["language"]})]
    if c.get("language") in LANGUAGE_CODES else None,
    "ends_with": lambda c: [("startend:end_checker", {"end_phrase": _phrase(c)})],
    "sentence_count": lambda c: None,
    "starts_with": lambda c: None,
    "case": lambda c: None,
}


def ifeval_checker(instruction_id: str, kwargs: dict[str, Any], prompt: str = ""):
    """IFEval's checker for an instruction, built from its kwargs. Every kwarg IFEval's checker takes
    must be given: it would otherwise draw a random one."""
    cls = INSTRUCTION_DICT[instruction_id]
    needed = [p for p in inspect.signature(cls.build_description).parameters if p not in ("self", "prompt")]
    missing = [p for p in needed if kwargs.get(p) is None]
    if missing:
        raise ValueError(f"{instruction_id}: needs {', '.join(missing)}")
    unknown = set(kwargs) - set(needed)
    if unknown:
        raise ValueError(f"{instruction_id}: unknown kwargs {sorted(unknown)} (takes: {', '.join(needed) or 'none'})")
    checker = cls(instruction_id)
    checker.build_description(**kwargs)
    if "prompt" in (checker.get_instruction_args() or {}):
        checker.build_description(prompt=prompt)
    return checker


def checks(c: dict[str, Any], prompt: str = "") -> list[Callable[[str], bool]]:
    """The tests one constraint makes of a text (all must pass); ValueError if it is malformed."""
    kind = c.get("type")
    mapped = TO_IFEVAL[kind](c) if kind in TO_IFEVAL else None
    if mapped is not None:
        return [ifeval_checker(i, kw, prompt).check_following for i, kw in mapped]
    if kind in OWN:
        OWN[kind]("", c)  # malformed constraints fail now, not on the first answer
        return [lambda t: bool(OWN[kind](t, c))]
    if kind in INSTRUCTION_DICT:
        return [ifeval_checker(kind, {k: v for k, v in c.items() if k != "type"}, prompt).check_following]
    raise ValueError(f"unknown constraint type {kind!r} (short forms: {', '.join(sorted(TO_IFEVAL))}; "
                     "or an IFEval instruction id)")


def meets(text: str, c: dict[str, Any], loose: bool = False, prompt: str = "") -> bool:
    """IFEval's verdict (strict, or `loose`) for one constraint on an answer; empty answers fail."""
    variants = get_loose_transformations(text) if loose else [text]
    tests = checks(c, prompt)
    return any(v.strip() and all(test(v) for test in tests) for v in variants)


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
        checks(c)
    return spec


class InstructionReward(Reward):
    """Params: `strict` (prompt level: all-or-nothing, default False), `loose` (IFEval's loose mode)."""

    name = "instruction"
    on_error = None

    def __init__(self, strict: bool = False, loose: bool = False) -> None:
        super().__init__()
        self.strict, self.loose = bool(strict), bool(loose)

    def score(self, text: str, row: Row) -> float | None:
        spec = row.get("constraints")
        if spec is None or spec == "" or spec == []:
            return None
        try:
            constraints = parse_constraints(spec)
            answer = split_think(text)[1]
            met = [meets(answer, c, self.loose) for c in constraints]
        except (ValueError, TypeError, KeyError) as err:
            log.warning("instruction: bad constraints (%s); sample skipped (None)", err)
            return None
        if self.strict:
            return float(all(met))
        return sum(met) / len(met)
