"""`judge`: an LLM scores the response against the sample's `reference` answer (0-10 -> [0, 1]).

The judge is a generation engine (`engine=`, anything with posttrain.core.generation's `generate`) or a
model directory (`model=`, loaded lazily from `engines`, the run's EnginePool, or a pool of its own
on `backend`). It sees the
fixed rubric `RUBRIC` filled with the question (last user message), the reference and the
response (its answer part: the text after `</think>`). Scores are parsed from `Score: 7`, `7/10`,
`**8**`, `[[6]]` or `{"score": 7}`; an unparsable verdict is None (logged).

`verdict: yes_no` asks instead whether the response is correct (`RUBRIC_YES_NO`) and scores
P(Yes) / (P(Yes) + P(No)) from the judge's next-token distribution (engine `option_probs`): no
sampling, no parsing, one forward pass, and a graded score even from a small judge that cannot
follow the output format of the 0-10 rubric. Verdicts are cached
by sha256 of the judge prompt (which holds the response), in memory and optionally in a JSONL file
(`cache_path`), so repeated samples cost nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from typing import Any

from posttrain.core.chat import split_think
from posttrain.core.generation import EnginePool
from rewards.base import Reward, Row, log, prompt_of

_GRADER = "You are a strict grader. Compare the RESPONSE to the REFERENCE answer for the QUESTION.\n"
_SHOWN = "\n\nQUESTION:\n{question}\n\nREFERENCE:\n{reference}\n\nRESPONSE:\n{response}\n\n"

RUBRIC = _GRADER + """Judge correctness and completeness against the reference first, then clarity. Ignore style
differences that do not change the meaning. A response that contradicts the reference, or
answers a different question, scores low even if it is well written.""" + _SHOWN + """\
Give a score from 0 (wrong or irrelevant) to 10 (fully correct and complete, as good as the
reference). Reply with one short sentence of justification, then a last line exactly like:
Score: <integer 0-10>"""

RUBRIC_YES_NO = (_GRADER + "A response is correct when it agrees with the reference and answers the question; "
                 "style does not matter." + _SHOWN + "Is the RESPONSE correct? Answer Yes or No.")

_PATTERNS = [
    re.compile(r'"score"\s*:\s*"?(\d+(?:\.\d+)?)'),
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"score\s*(?:is|=|:)?\s*\**\s*(\d+(?:\.\d+)?)", re.I),
    re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b"),
    re.compile(r"\*\*\s*(\d+(?:\.\d+)?)\s*\*\*"),
    re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$", re.M),
]


def parse_score(verdict: str, scale: float = 10.0) -> float | None:
    """The judge's score in [0, scale] from its verdict text, or None. The last match of the first
    pattern that matches wins (judges tend to restate the score at the end)."""
    for pattern in _PATTERNS:
        found = [float(m) for m in pattern.findall(verdict)]
        found = [v for v in found if 0 <= v <= scale]
        if found:
            return found[-1]
    return None


def judge_prompt(rubric: str, text: str, row: Row) -> str | None:
    """RUBRIC filled with the row's question (its last user message), its `reference` and the answer
    part of TEXT; None without a reference."""
    reference = row.get("reference")
    if reference is None or not str(reference).strip():
        return None
    users = [m.get("content") for m in prompt_of(row) if m.get("role") == "user"]
    question = users[-1] if users and isinstance(users[-1], str) else "(not given)"
    answer = split_think(text)[1].strip() or "(empty response)"
    return rubric.format(question=question, reference=str(reference), response=answer)


class JudgeReward(Reward):
    """Params: `engine` or `model` (+ `backend`, default the pool's or transformers; in a pipeline the
    routing table passes `engines`, the run's pool), `cache_path`, `verdict`
    ('score': a generated 0-10 score; 'yes_no': P(Yes)), `max_new_tokens` (256), `temperature`
    (0: greedy), `mode` ('no_think'), `rubric` (default RUBRIC or RUBRIC_YES_NO), `scale` (10)."""

    name = "judge"
    on_error = None

    def __init__(self, engine: Any = None, model: str | None = None, backend: str | None = None,
                 engines: EnginePool | None = None,
                 cache_path: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
                 mode: str = "no_think", rubric: str | None = None, scale: float = 10.0, seed: int | None = 0,
                 verdict: str = "score") -> None:
        super().__init__()
        if (engine is None) == (model is None):
            raise ValueError("judge: pass exactly one of `engine` or `model`")
        if verdict not in ("score", "yes_no"):
            raise ValueError(f"judge: verdict must be 'score' or 'yes_no', got {verdict!r}")
        self.engine, self.model, self.backend, self.verdict, self.mode = engine, model, backend, verdict, mode
        self.engines = engines
        self.gen_kwargs = dict(n=1, mode=mode, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        self.rubric = rubric or (RUBRIC_YES_NO if verdict == "yes_no" else RUBRIC)
        self.scale, self.cache_path = float(scale), cache_path
        self.cache: dict[str, str] = {}
        self._lock = threading.Lock()
        if cache_path and os.path.exists(cache_path):
            with open(cache_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        self.cache[entry["key"]] = entry["verdict"]
                    except (ValueError, KeyError, TypeError):
                        continue

    def _engine(self):
        if self.model and (self.engine is None or getattr(self.engine, "llm", True) is None):  # or its pool closed it
            self.engine = (self.engines or EnginePool(self.backend or "transformers")).get(self.model,
                                                                                         backend=self.backend)
        return self.engine

    def judge_prompt(self, text: str, row: Row) -> str | None:
        return judge_prompt(self.rubric, text, row)

    def score_batch(self, texts: list[str], rows: list[Row]) -> list[float | None]:
        prompts = [self.judge_prompt(t, r) for t, r in zip(texts, rows, strict=True)]
        keys = [hashlib.sha256(p.encode()).hexdigest() if p else None for p in prompts]
        todo = {k: p for k, p in zip(keys, prompts, strict=True) if k and k not in self.cache}
        if todo:
            chats = [[{"role": "user", "content": p}] for p in todo.values()]
            if self.verdict == "yes_no":  # cached as text too: "P(Yes)=0.8123"
                probs = self._engine().option_probs(chats, ["Yes", "No"], mode=self.mode)
                verdicts = {k: "P(Yes)=unknown" if p is None else f"P(Yes)={p[0]:.4f}"
                            for k, p in zip(todo, probs, strict=True)}
            else:
                outs = self._engine().generate(chats, **self.gen_kwargs)
                verdicts = {k: (getattr(o[0], "answer", None) or getattr(o[0], "text", "") if o else "")
                            for k, o in zip(todo, outs, strict=True)}
            self._remember(verdicts)
        scores = []
        for key in keys:
            if key is None:
                scores.append(None)
                continue
            score = self._score(self.cache[key])
            if score is None:
                log.warning("judge: unparsable verdict %.120r; sample scored None", self.cache[key])
            scores.append(score)
        return scores

    def _score(self, verdict: str) -> float | None:
        """A (cached) verdict as a score in [0, 1], or None."""
        if self.verdict == "yes_no":
            found = re.fullmatch(r"P\(Yes\)=([0-9.]+)", verdict)
            return float(found.group(1)) if found else None
        score = parse_score(verdict, self.scale)
        return None if score is None else score / self.scale

    def _remember(self, verdicts: dict[str, str]) -> None:
        with self._lock:
            self.cache.update(verdicts)
            if self.cache_path:
                os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
                with open(self.cache_path, "a", encoding="utf-8") as f:
                    for key, verdict in verdicts.items():
                        f.write(json.dumps({"key": key, "verdict": verdict}) + "\n")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock")
        state["engines"] = None  # open engines do not travel; the judge starts its own
        if self.model is not None:
            state["engine"] = None  # rebuilt lazily from the model path
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
