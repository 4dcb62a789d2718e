"""The math-verify worker process behind the `math` reward (run as a script, not imported).

Protocol: after importing, it prints `{"ready": true}`; then for each JSON request line
`{"gold": str, "pred": str, "anchored": bool, "limit": int}` it prints one JSON reply
`{"score": float | null, "error": str?}` (`null` when the gold answer does not parse).
math-verify's own signal timeouts work here (this is the process's main thread); the parent
kills and replaces the whole process when a sample still overruns its hard limit.
"""

import json
import logging
import os
import resource
import sys


def main() -> None:
    memory_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if memory_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    sys.setrecursionlimit(10_000)
    logging.disable(logging.WARNING)  # math-verify logs whole (possibly huge) inputs on timeouts
    # `-I` keeps the working directory off sys.path; the parent's import path comes in explicitly.
    sys.path[:0] = [p for p in os.environ.get("POSTTRAIN_SYS_PATH", "").split(os.pathsep) if p]
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except ImportError as err:
        print(json.dumps({"ready": False, "error": f"cannot import math_verify: {err}"}), flush=True)
        return

    loose = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    anchored = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
                ExprExtractionConfig(try_extract_without_anchor=False)]

    def grade(req: dict) -> dict:
        limit = max(1, int(req.get("limit", 2)))
        gold = req["gold"].strip()
        gold_parsed = []
        for candidate in (gold, f"${gold}$", f"\\boxed{{{gold}}}"):
            gold_parsed = parse(candidate, parsing_timeout=limit)
            if gold_parsed:
                break
        if not gold_parsed:
            return {"score": None, "error": "gold answer does not parse"}
        pred = parse(req["pred"], extraction_config=anchored if req.get("anchored") else loose,
                     parsing_timeout=limit)
        if not pred:
            return {"score": 0.0, "error": "no parsable answer"}
        return {"score": float(verify(gold_parsed, pred, timeout_seconds=limit))}

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = grade(json.loads(line))
        except BaseException as err:  # noqa: BLE001 - RecursionError, MemoryError, timeouts: a wrong answer
            reply = {"score": 0.0, "error": f"{type(err).__name__}: {str(err)[:200]}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
