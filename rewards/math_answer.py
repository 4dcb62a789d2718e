"""`math`: is the final answer equal to the gold `answer`? (math-verify, with a hard time limit)

Only the text after `</think>` is graded; an unterminated think block has no answer (0.0).
The final answer is the last `\\boxed{...}`, else the last "The (final) answer is X" /
"Answer: X", else a short one-line answer; a longer answer without any of these is left to
math-verify's anchored extraction. Returns 1.0 / 0.0, and None when `answer` is missing or
does not parse.

Parsing and verifying run in one long-lived worker process (`_math_worker.py`) that uses
math-verify's own `parsing_timeout` / `timeout_seconds` (signal based, so they need the main
thread of a process: they have it there). Signals cannot interrupt a long C-level computation
(e.g. a big-integer power) and do not work off the main thread, so the caller also enforces a hard
wall-clock limit per sample: on overrun the worker is killed, the sample scores 0.0, and a fresh
worker is started right away (it imports in the background).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from posttrain.core.chat import THINK_CLOSE, split_think
from rewards.base import Reward, Row, log

WORKER = Path(__file__).with_name("_math_worker.py")
# "The (final) answer is X" / "Answer: X", X up to the end of its sentence or line
_ANSWER_PHRASE = re.compile(r"\banswer\s*(?:is|:)\s*:?\s*(.+?)\s*(?:$|\.(?=\s|$))", re.I | re.M)


def last_boxed(text: str) -> str | None:
    """Contents of the last `\\boxed{...}` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def extract_final(answer: str) -> tuple[str, bool] | None:
    """(text for math-verify, anchored?) for the final answer of `answer`, or None if empty."""
    answer = answer.strip()
    if not answer:
        return None
    boxed = last_boxed(answer)
    if boxed is not None:
        return f"$\\boxed{{{boxed}}}$", False
    phrases = _ANSWER_PHRASE.findall(answer[-2000:])
    if phrases:
        final = phrases[-1].rstrip(".").strip().strip("$").strip()
        return f"${final}$", False
    if "\n" not in answer and len(answer) <= 60:
        return (answer if "$" in answer else f"${answer}$"), False
    return answer, True


class _Worker:
    """One math-verify process per Python process, shared by every `math` reward."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.buf = b""

    def _spawn(self, memory_mb: int) -> None:
        env = {**os.environ, "POSTTRAIN_SYS_PATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-I", str(WORKER), str(memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        self.ready, self.buf = False, b""

    def _kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                stream.close()
        self.proc = None

    def _readline(self, deadline: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"math worker exited (code {self.proc.poll()})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def grade(self, request: dict, hard_limit: float, memory_mb: int) -> dict:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._kill()
                self._spawn(memory_mb)
            try:
                if not self.ready:
                    hello = self._readline(time.monotonic() + 120)
                    if hello is None:
                        raise RuntimeError("math worker did not start within 120 s")
                    if not hello.get("ready"):
                        raise RuntimeError(f"math worker: {hello.get('error')}")
                    self.ready = True
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
                reply = self._readline(time.monotonic() + hard_limit)
            except (OSError, RuntimeError, ValueError):
                self._kill()
                raise
            if reply is None:  # overran: kill it, start the next one now so it warms up meanwhile
                self._kill()
                self._spawn(memory_mb)
                log.warning("math: sample exceeded the %gs limit (pred %.60r); worker restarted, scored 0.0",
                            hard_limit, request["pred"])
                return {"score": 0.0}
            return reply


_WORKER = _Worker()


class MathReward(Reward):
    """Params: `timeout` (hard seconds per sample, default 5), `memory_mb` (worker address-space
    cap, default 4096)."""

    name = "math"
    on_error = 0.0

    def __init__(self, timeout: float = 5.0, memory_mb: int = 4096) -> None:
        super().__init__()
        if timeout <= 0:
            raise ValueError(f"math: timeout must be > 0, got {timeout}")
        self.timeout, self.memory_mb = float(timeout), int(memory_mb)

    def score(self, text: str, row: Row) -> float | None:
        gold = row.get("answer", row.get("solution"))
        if gold is None or not str(gold).strip():
            return None
        reasoning, answer = split_think(text)
        if reasoning is not None and THINK_CLOSE not in text:
            return 0.0  # unterminated think block: no answer
        final = extract_final(answer)
        if final is None:
            return 0.0
        pred, anchored = final
        # math-verify's own limit per step (parse, verify) sits inside the hard limit
        request = {"gold": str(gold), "pred": pred, "anchored": anchored, "limit": max(1, int(self.timeout / 3))}
        reply = _WORKER.grade(request, self.timeout, self.memory_mb)
        if reply.get("error"):
            log.debug("math: %s (gold %r)", reply["error"], str(gold)[:80])
        if reply.get("score") is None:
            log.warning("math: gold answer %r does not parse; sample skipped (None)", str(gold)[:80])
        return reply.get("score")
