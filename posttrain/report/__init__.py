"""The human report at the end of a pipeline: report.json, report.md and PNG plots
(`collect`: what goes in; `tables`: the text; `plots`: the figures)."""

from __future__ import annotations

import logging
from pathlib import Path

from posttrain.core.rundir import write_json
from posttrain.report.collect import collect, notes
from posttrain.report.plots import plot_budget_curve, plots
from posttrain.report.tables import comparison, markdown, summary

__all__ = ["plot_budget_curve", "summary", "write_report"]
log = logging.getLogger("posttrain.report")


def write_report(run_dir: Path, cfg, planned, sections: list[str] | None = None) -> Path:
    report = collect(run_dir, planned)
    report["pipeline"] = cfg.name
    report["notes"] = notes(report, planned)
    report["sections"] = list(sections or [])
    if getattr(cfg, "compare", None):
        report["sections"].append(comparison(report, cfg.compare))
    write_json(run_dir / "report.json", report)
    try:
        made = plots(run_dir, report, planned, getattr(cfg, "compare", None))
    except Exception as err:  # a plot must never cost the run its report
        log.warning("plots skipped: %s", err)
        made = []
    (run_dir / "report.md").write_text(markdown(report, made, f"posttrain report: {cfg.name}"))
    log.info("report: %s", run_dir / "report.md")
    return run_dir / "report.md"
