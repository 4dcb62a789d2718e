"""Prompt generators for stage 4's task kinds (report §4.4) that need no download.

Each generator is `fn(rng, **params) -> row` in the column contract; `data_builders/tasks.py`
names them in task kinds and sets `task`. The rows carry what their rewards check (`constraints`,
`answer`, `reference`, `context`, `tools`) and, where a solver can write one, a `response`.

| generator     | area        | what                                                                   |
|---------------|-------------|------------------------------------------------------------------------|
| instruction   | instruction | a text on a topic under constraints drawn from the given families      |
| flag_dialogue | format      | 1-3 turns with `/think` / `/no_think` flags; the last turn is answered |
| rag           | specialised | answer from a given context, or say it is not in the context           |
| tool_call     | specialised | one call of a tool given by its JSON schema, Qwen3's `<tool_call>` form |
| language      | specialised | a question in French, Spanish or German, to be answered in it          |
| open_answer   | any         | a short QA/rewrite item with a `reference` answer, for the judge       |
| shop          | agent       | prices in a key-value store + a calculator, run as tools (agent.py)    |
| reasoning     | reasoning   | a stage-2 family item (arithmetic, linear, ...)                        |
"""

from __future__ import annotations

import json
import random
from typing import Any

from data_builders import agent, direct, flags, synthetic
from posttrain.core.chat import tools_system_message, with_flag
from rewards.instruction import meets
from rewards.rag import REFUSAL as NOT_IN_CONTEXT


def _row(prompt: list[dict[str, Any]], **columns: Any) -> dict[str, Any]:
    return {"prompt": prompt, "answer": "", "tests": "", "domain": "", **columns}


def instruction(rng: random.Random, families: list[str] | None = None, count: int = 1) -> dict[str, Any]:
    """`count` constraints from `families` (direct.py's constraint kinds); `bullets` and `json` shape
    the whole answer, so they are never combined with each other."""
    families = families or direct.COMBINABLE
    unknown = set(families) - set(direct.SOLO) - set(direct.COMBINABLE)
    if unknown:
        raise ValueError(f"instruction: unknown constraint families {sorted(unknown)} "
                         f"(known: {', '.join(direct.SOLO + direct.COMBINABLE)})")
    for _ in range(50):
        topic = rng.choice(sorted(direct.TOPICS))
        kinds = rng.sample(families, min(count, len(families)))
        if sum(k in direct.SOLO for k in kinds) > 1 or {"lower", "upper"} <= set(kinds):
            continue
        kinds.sort(key=lambda k: (k not in direct.SOLO, direct.COMBINABLE.index(k) if k in direct.COMBINABLE else 0))
        parts = [direct._constraint(rng, k, topic) for k in kinds]
        text = rng.sample(direct.TOPICS[topic], 2)
        for _, _, shape in parts:
            text = shape(text)
        response = " ".join(text)
        if all(meets(response, c) for _, c, _ in parts):
            rules = " ".join(p[0] for p in parts)
            return _row([{"role": "user", "content": f"Write about {topic}. {rules}"}], response=response,
                        constraints=json.dumps([p[1] for p in parts]), domain="instruction")
    raise ValueError(f"instruction: no satisfiable draw of {count} constraints from {families}")


def flag_dialogue(rng: random.Random, max_turns: int = 3, kinds: dict[str, float] | None = None,
                  carry_share: float = 0.0) -> dict[str, Any]:
    """A conversation whose earlier turns are answered (thinking turns keep only their answer, as
    the template keeps history) and whose last user turn awaits a reply in the mode of the last flag.
    `carry_share` of the multi-turn ones flag only their opening turn or two (`flags.FlagMix`), so the
    reply's mode was set one or two turns back."""
    mix = flags.FlagMix(kinds=kinds or {"instruction": 1, "qa": 1, "rewrite": 1}, max_turns=max_turns,
                        multi_turn_share=0.7, system_flag_share=0.3, no_flag_share=0.3, carry_share=carry_share)
    plan = flags.script(mix, 1, rng)[0]
    messages = [{"role": "system", "content": plan["system"]}] if plan["system"] else []
    for i, turn in enumerate(plan["turns"]):
        item = direct.KINDS[turn["kind"]](rng)
        messages.append({"role": "user", "content": flags.user_text(item["prompt"][-1]["content"], turn)})
        if i < len(plan["turns"]) - 1:
            messages.append({"role": "assistant", "content": item["response"]})
    return _row(messages, response=item["response"], constraints=item["constraints"], mode=turn["mode"],
                domain="format")


# ---------------------------------------------------------------------------------------------
# RAG faithfulness: made-up facts, so only the context can answer

PEOPLE = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
FACTS = {"locker number": lambda r: str(r.randint(10, 99)), "favourite colour": lambda r: r.choice(
    ["teal", "amber", "violet", "crimson", "olive", "navy"]), "home town": lambda r: r.choice(
    ["Brookfield", "Linton", "Marsh End", "Oakridge", "Pellham", "Westcombe"]),
    "pet's name": lambda r: r.choice(["Biscuit", "Pepper", "Juniper", "Mango", "Sprout", "Ziggy"])}


def rag(rng: random.Random, facts: int = 3, unanswerable_share: float = 0.3) -> dict[str, Any]:
    """A context of made-up facts and a question about one of them, or (with `unanswerable_share`)
    about a fact it does not hold. `answer` is the fact or NOT_IN_CONTEXT; `context_values` lists
    every value the context names, so an answer citing the wrong one is caught."""
    pairs = rng.sample([(p, f) for p in PEOPLE for f in FACTS], facts + 1)
    values = {pair: FACTS[pair[1]](rng) for pair in pairs}
    shown = pairs[:facts]
    context = " ".join(f"{p}'s {f} is {values[(p, f)]}." for p, f in shown)
    asked = pairs[-1] if rng.random() < unanswerable_share else rng.choice(shown)
    answer = values[asked] if asked in shown else NOT_IN_CONTEXT
    question = f"What is {asked[0]}'s {asked[1]}?"
    prompt = (f"Answer only from the context. If the context does not say, reply '{NOT_IN_CONTEXT}'.\n\n"
              f"Context: {context}\n\nQuestion: {question}")
    response = f"{asked[0]}'s {asked[1]} is {answer}." if answer != NOT_IN_CONTEXT else \
        f"That is {NOT_IN_CONTEXT}."
    return _row([{"role": "user", "content": prompt}], answer=answer, response=response, domain="rag",
                context_values=json.dumps(sorted({values[p] for p in shown} | {values[pairs[-1]]})))


# ---------------------------------------------------------------------------------------------
# tool-call format against a JSON schema (Qwen3's <tool_call>{"name": ..., "arguments": ...}</tool_call>)

def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


CURRENCIES = ["USD", "EUR", "JPY"]
TOOLS = [
    _tool("get_weather", "Current weather in a city.",
          {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
          ["city", "unit"]),
    _tool("set_alarm", "Set an alarm.", {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                                         "minute": {"type": "integer", "minimum": 0, "maximum": 59},
                                         "label": {"type": "string"}}, ["hour", "minute"]),
    _tool("convert_currency", "Convert an amount between currencies.",
          {"amount": {"type": "number"}, "source": {"type": "string", "enum": CURRENCIES},
           "target": {"type": "string", "enum": CURRENCIES}}, ["amount", "source", "target"]),
]


def tool_call(rng: random.Random) -> dict[str, Any]:
    """A request that one of TOOLS answers, the tools listed in the system message as the Qwen3
    template lists them; `answer` is the expected call as JSON, `tools` the schemas."""
    tool = rng.choice(TOOLS)["function"]
    if tool["name"] == "get_weather":
        city, unit = rng.choice(sorted(direct.CAPITALS.values())), rng.choice(["celsius", "fahrenheit"])
        ask, args = f"What's the weather in {city}? Give it in {unit}.", {"city": city, "unit": unit}
    elif tool["name"] == "set_alarm":
        hour, minute = rng.randint(5, 11), rng.choice([0, 15, 30, 45])
        ask, args = f"Wake me at {hour}:{minute:02d}.", {"hour": hour, "minute": minute}
    else:
        amount, (src, dst) = rng.randint(5, 500), rng.sample(CURRENCIES, 2)
        ask, args = f"How much is {amount} {src} in {dst}?", {"amount": amount, "source": src, "target": dst}
    call = {"name": tool["name"], "arguments": args}
    return _row([tools_system_message(TOOLS), {"role": "user", "content": ask}], answer=json.dumps(call),
                tools=json.dumps(TOOLS),
                response=f"<tool_call>\n{json.dumps(call)}\n</tool_call>", domain="tool_call")


# ---------------------------------------------------------------------------------------------
# language consistency: answer in the language asked

QUESTIONS = {
    # answers long enough for langdetect (IFEval's language check) to tell the language every time
    "fr": ("Quelle est la capitale de {country} ? Réponds en une phrase.",
           "La capitale de ce pays est {city}, une ville très connue que beaucoup de gens visitent chaque année."),
    "es": ("¿Cuál es la capital de {country}? Responde con una frase.",
           "La capital de este país es {city}, una ciudad muy conocida que mucha gente visita cada año."),
    "de": ("Was ist die Hauptstadt von {country}? Antworte mit einem Satz.",
           "Die Hauptstadt dieses Landes ist {city}, eine sehr bekannte Stadt, die jedes Jahr viele Menschen "
           "besuchen."),
}


def language(rng: random.Random, languages: list[str] | None = None) -> dict[str, Any]:
    lang = rng.choice(languages or sorted(QUESTIONS))
    if lang not in QUESTIONS:
        raise ValueError(f"language: no questions in {lang!r} (have: {', '.join(QUESTIONS)})")
    country = rng.choice(sorted(direct.CAPITALS))
    ask, say = QUESTIONS[lang]
    city = direct.CAPITALS[country]
    return _row([{"role": "user", "content": ask.format(country=country)}], language=lang, domain="language",
                response=say.format(city=city), constraints=json.dumps(
                    [{"type": "include_keywords", "keywords": [city]}, {"type": "language", "language": lang}]))


def open_answer(rng: random.Random, kind: str = "qa") -> dict[str, Any]:
    """A direct-answer item (direct.py: qa, rewrite, instruction) whose solver answer is the
    `reference` a judge compares against; its rule check (`constraints`) stays for measuring the judge."""
    if kind not in direct.KINDS:
        raise ValueError(f"open_answer: unknown kind {kind!r} (known: {', '.join(direct.KINDS)})")
    row = direct.KINDS[kind](rng)
    return {**{k: v for k, v in row.items() if k not in ("reasoning", "task")}, "reference": row["response"]}


def reasoning(rng: random.Random, family: str = "arithmetic", **knobs: Any) -> dict[str, Any]:
    if family not in synthetic.FAMILIES:
        raise ValueError(f"reasoning: unknown family {family!r} (known: {', '.join(synthetic.FAMILIES)})")
    row = synthetic.FAMILIES[family](rng, **knobs)
    return {k: v for k, v in row.items() if k != "reasoning"}


def shop(rng: random.Random, items: int = 2) -> dict[str, Any]:
    return agent.shop(rng, items)


GENERATORS = {"instruction": instruction, "flag_dialogue": flag_dialogue, "rag": rag, "tool_call": tool_call,
              "language": language, "open_answer": open_answer, "reasoning": reasoning, "shop": shop}


def flagged(row: dict[str, Any], mode: str, where: str = "user") -> dict[str, Any]:
    """The row asked in `mode`: its flag appended to the last user (or the system) message."""
    return {**row, "prompt": with_flag(row["prompt"], mode, where), "mode": mode}
