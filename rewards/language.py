"""`language`: is the response in one language (no CJK inside an English answer, and so on)?

Light heuristics, no model: letters are counted per Unicode script (latin, cjk, kana, hangul,
cyrillic, greek, arabic, hebrew, devanagari, thai), and Latin-script languages are told apart
by common stopwords (en, fr, de, es, it, pt). Code blocks, inline code and `$...$` math are
ignored. The target language is the `language` param, else the one detected in the last user
message; with neither, the response's own dominant script. Reward 1.0 when the share of letters
outside the target's scripts is at most `threshold` (default 0.05), else 0.0.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from posttrain.core.chat import split_think
from rewards.base import Reward, Row, prompt_of

# language -> the scripts its text is written in
SCRIPTS_OF = {"en": {"latin"}, "fr": {"latin"}, "de": {"latin"}, "es": {"latin"}, "it": {"latin"},
              "pt": {"latin"}, "zh": {"cjk"}, "ja": {"cjk", "kana"}, "ko": {"hangul", "cjk"},
              "ru": {"cyrillic"}, "uk": {"cyrillic"}, "el": {"greek"}, "ar": {"arabic"}, "he": {"hebrew"},
              "hi": {"devanagari"}, "th": {"thai"}}
_SCRIPT_LANG = {"cyrillic": "ru", "greek": "el", "arabic": "ar", "hebrew": "he", "devanagari": "hi",
                "thai": "th", "hangul": "ko"}
STOPWORDS = {
    "en": "the and is are of to in that it with for was this you not be have on as",
    "fr": "le la les et est des une un du que qui dans pour pas sur avec au ce sont",
    "de": "der die das und ist nicht ein eine zu den mit von sich auf für dem des auch",
    "es": "el la los las y es de que en un una por con para del se no al",
    "it": "il lo la gli le e è di che un una per con non del della sono si",
    "pt": "o a os as e é de que em um uma para com não do da são se",
}
_STOP = {lang: set(words.split()) for lang, words in STOPWORDS.items()}
_IGNORED = re.compile(r"```.*?(```|$)|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$", re.S)
_WORD = re.compile(r"[^\W\d_]+")


def script_of(ch: str) -> str | None:
    o = ord(ch)
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FA1F or 0xF900 <= o <= 0xFAFF:
        return "cjk"
    if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF:
        return "kana"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF:
        return "hangul"
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "").split(" ")[0].lower()
    return name if name in ("latin", "cyrillic", "greek", "arabic", "hebrew", "devanagari", "thai") else "other"


def script_counts(text: str) -> Counter:
    return Counter(s for s in map(script_of, _IGNORED.sub(" ", text)) if s)


def detect_language(text: str) -> str | None:
    """A best-guess language code for `text`, or None when it has no letters."""
    counts = script_counts(text)
    if not counts:
        return None
    script = counts.most_common(1)[0][0]
    if script in ("cjk", "kana"):
        return "ja" if counts["kana"] > 0.05 * (counts["cjk"] + counts["kana"]) else "zh"
    if script != "latin":
        return _SCRIPT_LANG.get(script)
    words = Counter(w.lower() for w in _WORD.findall(_IGNORED.sub(" ", text)))
    hits = {lang: sum(words[w] for w in stop) for lang, stop in _STOP.items()}
    best = max(hits, key=hits.get)
    return best if hits[best] > 0 else "en"


def foreign_share(text: str, language: str | None) -> float:
    """The share of letters outside `language`'s scripts (or outside the dominant script)."""
    counts = script_counts(text)
    total = sum(counts.values())
    if not total:
        return 0.0
    allowed = SCRIPTS_OF.get(language or "") or {counts.most_common(1)[0][0]}
    return 1.0 - sum(counts[s] for s in allowed) / total


class LanguageReward(Reward):
    """Params: `language` (target code; default: the last user message's), `threshold` (0.05),
    `answer_only` (grade only the text after `</think>`; default False: reasoning too)."""

    name = "language"
    on_error = 0.0

    def __init__(self, language: str | None = None, threshold: float = 0.05, answer_only: bool = False) -> None:
        super().__init__()
        if language is not None and language not in SCRIPTS_OF:
            raise ValueError(f"language: unknown language {language!r} (known: {', '.join(SCRIPTS_OF)})")
        self.language, self.threshold, self.answer_only = language, float(threshold), answer_only

    def score(self, text: str, row: Row) -> float:
        reasoning, answer = split_think(text)
        graded = answer if self.answer_only else f"{reasoning or ''}\n{answer}"
        if not script_counts(graded):
            return 0.0  # nothing written
        target = self.language or row.get("language")
        if target is None:
            users = [m.get("content") for m in prompt_of(row) if m.get("role") == "user"]
            target = detect_language(users[-1]) if users and isinstance(users[-1], str) else None
        return float(foreign_share(graded, target) <= self.threshold)
