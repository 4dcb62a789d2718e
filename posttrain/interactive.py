"""`posttrain chat` and `posttrain generate`: try a model by hand, or from a script.

Modes are the Qwen3 ones. In chat, `/think` and `/no_think` are typed as part of a message and the
model obeys the last one (the soft switch); the history is kept as the Qwen3 template keeps it
(earlier turns' reasoning is dropped when the next prompt is rendered). `generate --mode` is the
hard switch: `no_think` pre-fills the empty think block, `think` leaves the model to think.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from posttrain.core.chat import SAMPLING, resolve_mode, split_think
from posttrain.core.generation import EnginePool

HELP = ("Type a message; add /think or /no_think to choose the mode (the last flag wins). "
        "Commands: /reset (new conversation), /exit (or Ctrl-D).")


def reply(engine, messages: list[dict[str, Any]], write: Callable[[str], Any], **kwargs: Any) -> str:
    """Stream the assistant's reply to `write` and return its whole text."""
    pieces = []
    for piece in engine.stream(messages, **kwargs):
        pieces.append(piece)
        write(piece)
    return "".join(pieces)


def remember(messages: list[dict[str, Any]], text: str) -> None:
    """Append a reply to the history as the template expects it (reasoning apart from the answer)."""
    reasoning, answer = split_think(text)
    messages.append({"role": "assistant", "content": answer if reasoning is not None else text,
                     "reasoning_content": reasoning})


def chat_loop(engine, read: Callable[[str], str] = input, out: TextIO = sys.stdout, system: str | None = None,
              **kwargs: Any) -> list[dict[str, Any]]:
    """The interactive loop; returns the conversation when the user leaves."""
    def write(text: str) -> None:
        out.write(text)
        out.flush()
    head = [{"role": "system", "content": system}] if system else []
    messages = list(head)
    write(HELP + "\n")
    while True:
        try:
            line = read("\n> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return messages
        if line in ("/exit", "/quit"):
            return messages
        if line == "/reset":
            messages = list(head)
            write("(new conversation)\n")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        remember(messages, reply(engine, messages, write, **kwargs))
        write("\n")


def _engine(args):
    return EnginePool(args.backend).get(args.model, batch_size=1)


def _options(args) -> dict[str, Any]:
    if args.thinking_budget is not None and args.thinking_budget < 1:
        raise ValueError(f"--thinking-budget must be at least 1 token, got {args.thinking_budget}")
    return {"max_new_tokens": args.max_new_tokens, "thinking_budget": args.thinking_budget, "seed": args.seed}


def chat_main(args) -> None:
    chat_loop(_engine(args), system=args.system, **_options(args))


def generate_main(args) -> None:
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    engine = _engine(args)
    if args.json:
        [[c]] = engine.generate([messages], mode=args.mode, **SAMPLING[args.mode or resolve_mode(messages)],
                                **_options(args))
        print(json.dumps({"text": c.text, "reasoning": c.reasoning, "answer": c.answer, "tokens": len(c.token_ids),
                          "finish_reason": c.finish_reason, "budget_hit": c.budget_hit}, indent=2))
    else:
        reply(engine, messages, lambda t: (sys.stdout.write(t), sys.stdout.flush()), mode=args.mode,
              **_options(args))
        print()


def add_parsers(sub) -> None:
    def common(p):
        p.add_argument("--model", required=True, help="an HF model dir, or `default`")
        p.add_argument("--thinking-budget", type=int, help="stop thinking after N tokens, then answer")
        p.add_argument("--max-new-tokens", type=int, default=512)
        p.add_argument("--system", help="a system message (it may carry a flag)")
        p.add_argument("--seed", type=int)
        p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])

    p = sub.add_parser("chat", help="chat with a model in the terminal (/think, /no_think per turn)")
    common(p)
    p.set_defaults(func=chat_main)
    p = sub.add_parser("generate", help="one reply to one prompt, printed (scriptable)")
    common(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--mode", choices=["think", "no_think"],
                   help="hard switch (no_think pre-fills the empty think block); default: the prompt's flags")
    p.add_argument("--json", action="store_true", help="print text, reasoning, answer, tokens, finish reason")
    p.set_defaults(func=generate_main)
