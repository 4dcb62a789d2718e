"""Tasks answered directly: the non-thinking side of stage 3 (report §4.3), with no download.

Each generator returns a row in the column contract whose `constraints` the `instruction` reward
checks, a direct `response` written by a solver, and a short `reasoning` (the solver's plan) for
the turns where the same task is asked in thinking mode: a kind appears in both modes, so the flag,
not the topic, is what decides the mode.

| kind        | what                                                                       |
|-------------|----------------------------------------------------------------------------|
| instruction | a sentence or list on a topic under 1-2 checkable constraints (IFEval-style) |
| qa          | short factual questions: capitals, opposites, next weekday/month, letters |
| rewrite     | upper/lower-case, reverse the words, sort numbers, JSON from fields       |

`direct_answer(row)` is the short answer to a reasoning-family item (arithmetic, linear): one
equation per solver step and the boxed result, no think content.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

from rewards.instruction import meets

TOPICS = {
    "the sea": ["The sea is wide and deep.", "Waves roll onto the sand.", "Fish swim under the blue water.",
                "Ships sail across the sea.", "The sea smells of salt."],
    "a garden": ["A garden is full of flowers.", "Bees visit the roses.", "Tomatoes grow in the sun.",
                 "The grass is green and soft.", "Birds sing near the pond."],
    "the city": ["The city never sleeps.", "Buses fill the busy streets.", "Tall towers touch the clouds.",
                 "People walk to work.", "Lights shine at night."],
    "winter": ["Winter brings cold days.", "Snow covers the hills.", "We wear warm coats.",
               "The lake turns to ice.", "Nights are long in winter."],
    "a library": ["A library is quiet.", "Books fill every shelf.", "Readers sit at long tables.",
                  "You can borrow books for free.", "The librarian helps visitors."],
    "music": ["Music makes people happy.", "A drum keeps the beat.", "The piano has black and white keys.",
              "Songs tell stories.", "Friends sing together."],
    "the moon": ["The moon lights the night.", "It circles the Earth.", "Its face changes every week.",
                 "People walked on the moon.", "The moon pulls the tides."],
    "breakfast": ["Breakfast starts the day.", "Eggs and bread are simple food.", "Some people drink tea.",
                  "Fruit is a fresh choice.", "A warm meal gives energy."],
}
KEYWORDS = ["bright", "calm", "small", "happy", "green", "quiet", "old", "new"]
OPENERS = ["Sure", "Here it is", "Of course"]
CLOSERS = ["That is all.", "Hope this helps.", "The end."]
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Egypt": "Cairo",
            "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens",
            "Germany": "Berlin", "Poland": "Warsaw", "Chile": "Santiago", "Cuba": "Havana", "Ireland": "Dublin",
            "Portugal": "Lisbon", "Austria": "Vienna", "Thailand": "Bangkok", "Russia": "Moscow", "China": "Beijing"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "happy": "sad", "light": "dark",
             "open": "closed", "early": "late", "full": "empty", "old": "young", "wet": "dry", "high": "low",
             "hard": "soft", "loud": "quiet", "strong": "weak", "rich": "poor"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WORDS = ["apple", "river", "garden", "pencil", "window", "planet", "orange", "castle", "rabbit", "ticket"]


def _row(prompt: str, response: str, plan: str, constraints: list[dict], kind: str) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": prompt}], "answer": "", "tests": "", "task": "instruction",
            "domain": kind, "constraints": json.dumps(constraints), "reasoning": plan, "response": response}


def _exact(text: str) -> list[dict]:
    """Constraints that hold only for `text` (case-insensitive, outer whitespace ignored)."""
    return [{"type": "starts_with", "phrase": text}, {"type": "ends_with", "phrase": text}]


# ---------------------------------------------------------------------------------------------
# instruction following: a topic, one or two constraints, a response built to meet them

def _constraint(rng: random.Random, kind: str, topic: str) -> tuple[str, dict, Callable[[list[str]], list[str]]]:
    """(instruction text, constraint, how it reshapes the response's list of sentences)."""
    bank = TOPICS[topic]
    if kind == "lower":
        return ("Your entire response should be in English, and in all lowercase letters.",
                {"type": "change_case:english_lowercase"}, lambda s: [x.lower() for x in s])
    if kind == "upper":
        return ("Your entire response should be in English, and in all capital letters.",
                {"type": "change_case:english_capital"}, lambda s: [x.upper() for x in s])
    if kind == "keyword":
        word = rng.choice(KEYWORDS)
        return (f"Include the word '{word}'.", {"type": "include_keywords", "keywords": [word]},
                lambda s: s + [f"It feels {word}."])
    if kind == "avoid":
        word = rng.choice(sorted({w for w in re.findall(r"[a-z]+", " ".join(bank).lower()) if len(w) > 3}))
        clean = [x for x in bank if not re.search(rf"\b{word}\b", x, re.I)]
        return (f"Do not use the word '{word}'.", {"type": "exclude_keywords", "keywords": [word]},
                lambda s: [x for x in s if x in clean] or clean[:1])
    if kind == "start":
        phrase = rng.choice(OPENERS)
        return (f"Start your answer with '{phrase}'.", {"type": "starts_with", "phrase": phrase},
                lambda s: [f"{phrase}."] + s)
    if kind == "end":
        phrase = rng.choice(CLOSERS)
        return (f"End your answer with '{phrase}'", {"type": "ends_with", "phrase": phrase}, lambda s: s + [phrase])
    if kind == "words":
        n = rng.randint(6, 12)
        return (f"Use at most {n} words.", {"type": "word_count", "max": n},
                lambda s: [" ".join(" ".join(s).split()[:n]).rstrip(",.") + "."])
    if kind == "sentences":
        n = rng.randint(1, 3)
        return (f"Write exactly {n} sentence{'s' * (n > 1)}.", {"type": "sentence_count", "count": n},
                lambda s: (s + [x for x in bank if x not in s])[:n])
    if kind == "bullets":
        n = rng.randint(2, 4)
        return (f"Use exactly {n} bullet points starting with '- '.", {"type": "bullet_count", "count": n},
                lambda s: ["\n".join(f"- {x}" for x in (s + [x for x in bank if x not in s])[:n])])
    return ("Answer with a JSON object with keys 'topic' and 'text'.", {"type": "json"},
            lambda s: [json.dumps({"topic": topic, "text": " ".join(s)})])


SOLO = ["bullets", "json"]  # these shape the whole answer: never combined
# combinable constraints, in the order their shaping is applied
COMBINABLE = ["avoid", "sentences", "keyword", "words", "start", "end", "lower", "upper"]


def instruction(rng: random.Random) -> dict[str, Any]:
    """Draws constraints until the solver's response meets them all (checked by the reward's rules)."""
    for _ in range(50):
        topic = rng.choice(sorted(TOPICS))
        kinds = [rng.choice(SOLO)] if rng.random() < 0.25 else sorted(
            rng.sample(COMBINABLE, rng.choice([1, 2])), key=COMBINABLE.index)
        parts = [_constraint(rng, k, topic) for k in kinds]
        text = rng.sample(TOPICS[topic], 2)
        for _, _, shape in parts:
            text = shape(text)
        response = " ".join(text)
        if all(meets(response, c) for _, c, _ in parts):
            break
    else:  # pragma: no cover - the solver meets single constraints by construction
        raise RuntimeError("instruction: no satisfiable constraint draw in 50 tries")
    rules = " ".join(p[0] for p in parts)
    plan = f"The user wants a short text about {topic}. Rules: {rules} I will write it and check each rule."
    return _row(f"Write about {topic}. {rules}", response, plan, [p[1] for p in parts], "instruction")


# ---------------------------------------------------------------------------------------------
# short QA

def qa(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["capital", "opposite", "day", "month", "letters"])
    if kind == "capital":
        country = rng.choice(sorted(CAPITALS))
        q, a = f"What is the capital of {country}?", CAPITALS[country]
        plan, say = f"{country}'s capital city is {a}.", f"The capital of {country} is {a}."
    elif kind == "opposite":
        word = rng.choice(sorted(OPPOSITES))
        q, a = f"What is the opposite of '{word}'?", OPPOSITES[word]
        plan, say = f"The word '{word}' is the opposite of '{a}'.", f"The opposite of '{word}' is '{a}'."
    elif kind == "day":
        i = rng.randrange(7)
        q, a = f"Which day comes after {DAYS[i]}?", DAYS[(i + 1) % 7]
        plan, say = f"The week goes {DAYS[i]}, then {a}.", f"{a} comes after {DAYS[i]}."
    elif kind == "month":
        i = rng.randrange(12)
        q, a = f"Which month comes after {MONTHS[i]}?", MONTHS[(i + 1) % 12]
        plan, say = f"The year goes {MONTHS[i]}, then {a}.", f"{a} comes after {MONTHS[i]}."
    else:
        word = rng.choice(WORDS)
        a = str(len(word))
        q = f"How many letters are in the word '{word}'?"
        plan, say = f"Spelling it out: {'-'.join(word)}, that is {a} letters.", f"The word '{word}' has {a} letters."
    return _row(q, say, plan, [{"type": "include_keywords", "keywords": [a]}], "qa")


# ---------------------------------------------------------------------------------------------
# rewriting and formatting

def rewrite(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["upper", "lower", "reverse", "sort", "json"])
    if kind in ("upper", "lower", "reverse"):
        sentence = rng.choice(TOPICS[rng.choice(sorted(TOPICS))]).rstrip(".")
        if kind == "reverse":
            out = " ".join(sentence.split()[::-1])
            q, plan = f"Reverse the order of the words: {sentence}", "I list the words from last to first."
            checks = _exact(out)
        else:
            out = sentence.upper() if kind == "upper" else sentence.lower()
            q = f"Rewrite in {'capital' if kind == 'upper' else 'lowercase'} letters: {sentence}"
            plan = f"I change every letter to {'upper' if kind == 'upper' else 'lower'} case."
            checks = _exact(out) + [{"type": "case", "case": kind}]
    elif kind == "sort":
        nums = rng.sample(range(1, 60), rng.randint(3, 5))
        out = ", ".join(map(str, sorted(nums)))
        q, plan = f"Sort from smallest to largest: {', '.join(map(str, nums))}", "I order the numbers by size."
        checks = _exact(out)
    else:
        name, age, city = rng.choice(["Ava", "Ben", "Chen", "Dara", "Eli"]), rng.randint(8, 70), rng.choice(
            sorted(CAPITALS.values()))
        out = json.dumps({"name": name, "age": age, "city": city})
        q = f"Give a JSON object with keys name, age and city for: {name}, {age} years old, lives in {city}."
        plan, checks = "I put the three fields in one JSON object.", [{"type": "json"}, *_exact(out)]
    return _row(q, out, plan, checks, "rewrite")


KINDS: dict[str, Callable[[random.Random], dict[str, Any]]] = {"instruction": instruction, "qa": qa,
                                                               "rewrite": rewrite}


def generate(kind: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` items of a direct kind; the same seed gives the same items."""
    if kind not in KINDS:
        raise ValueError(f"unknown direct-answer kind {kind!r} (known: {', '.join(KINDS)})")
    rng = random.Random(f"direct:{kind}:{seed}")
    return [KINDS[kind](rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# short answers to the reasoning families

_EQUATION = re.compile(r"-?[\dx(][\dx() +\-*/]*( = -?[\dx(][\dx() +\-*/]*)+")


def direct_answer(row: dict[str, Any]) -> str:
    """The non-thinking answer to a synthetic reasoning item: the equation of each step of the
    solver's trace without its words (`16 + 20 = 36, 36 - 21 = 15.`, `-6x = 60 - (12) = 48, x = 48 /
    -6 = -8.`), then the boxed result. Other tasks (countdown, code) answer with the solver's final
    response; rows without a trace, with the boxed answer alone."""
    if row.get("task") not in (None, "math") and row.get("response"):
        return row["response"]
    steps = []
    for line in (row.get("reasoning") or "").splitlines():
        tail = re.split(r"[:;]", line.rstrip("."))[-1].strip()
        if _EQUATION.fullmatch(tail):
            steps.append(tail)
    work = ", ".join(steps) + ". " if steps else ""
    return f"{work}\\boxed{{{row.get('answer')}}}"
