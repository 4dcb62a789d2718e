"""The hybrid tax: one fused model (stage 3, `keep: all`) against a split pair trained from the same
stage-2 model on the same fusion data, a thinking model (`keep: think`) and an instruct model
(`keep: no_think`), as `pipelines/split.yaml` builds them. Think mode compares the fused model with
the thinking model, no-think mode with the instruct model, item by item."""

from __future__ import annotations

from typing import Any

from posttrain.core.stats import paired_difference

ROLES = {"all": "fused", "think": "thinking", "no_think": "instruct"}


def roles(report: dict[str, Any]) -> dict[str, dict]:
    """The fused, thinking and instruct stages of a run (the last of each), by their `keep`."""
    found = {}
    for s in report["stages"]:
        if s["stage"] == "fusion" and s.get("eval"):
            keep = ((s.get("data") or {}).get("fusion_turns.json") or {}).get("keep", "all")
            found[ROLES[keep]] = s
    return found


def hybrid_tax(report: dict[str, Any]) -> list[str]:
    """report.md's comparison table (empty unless the run has all three models)."""
    found = roles(report)
    if len(found) < 3:
        return []
    fused, split = found["fused"], {"think": found["thinking"], "no_think": found["instruct"]}
    lines = ["", "## Fused or split (the hybrid tax)", "",
             f"`{fused['id']}` (one model, both modes) against `{found['thinking']['id']}` (thinking turns only, "
             f"asked in think mode) and `{found['instruct']['id']}` (non-thinking turns only, no-think mode), all "
             "from the same model and fusion data. Leaky: answers that reflect or reason step by step "
             "(`posttrain.evaluate.leakage`).", "",
             "| suite | mode | fused | split | fused - split (paired ± s.e.) | length fused / split | "
             "leaky fused / split |", "|---|---|---:|---:|---:|---:|---:|"]
    for suite, modes in fused["eval"]["suites"].items():
        for mode, f in modes.items():
            o = ((split[mode]["eval"].get("suites") or {}).get(suite) or {}).get(mode)
            if not o:
                continue
            try:
                d = paired_difference(o, f)
                change = f"{100 * d['diff']:+.1f} ± {100 * d['se']:.1f}"
            except ValueError:
                change = "not the same items"
            leak = [(r.get("leakage") or {}).get("leaky") for r in (f, o)]
            lines.append(f"| {suite} | {mode} | {f['accuracy']:.3f} | {o['accuracy']:.3f} | {change} | "
                         f"{f['mean_length']:.0f} / {o['mean_length']:.0f} | "
                         + " / ".join("" if x is None else f"{x:.2f}" for x in leak) + " |")
    own = [f"{suite} {m['no_think']['mean_length'] / m['think']['mean_length']:.2f}x"
           for suite, m in fused["eval"]["suites"].items() if {"think", "no_think"} <= set(m)
           and m["think"]["mean_length"]]
    tf = (fused["eval"].get("think_follow") or {}).get("score")
    cpu = {k: s.get("cpu_time_s") for k, s in found.items()}
    seen = {k: ((s.get("data") or {}).get("fusion_turns.json") or {}).get("examples_seen", "n/a")
            for k, s in found.items()}
    lines += ["", f"Fused model: ThinkFollow {tf if tf is None else f'{tf:.3f}'}; no-think length against its own "
              f"think length {', '.join(own) or 'n/a'}. To serve: 1 model fused, 2 split. Training CPU seconds: fused "
              f"{cpu['fused']}, split {cpu['thinking']} + {cpu['instruct']}; examples seen: fused {seen['fused']}, "
              f"split {seen['thinking']} + {seen['instruct']}."]
    return lines
