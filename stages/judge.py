"""A generative judge for stage 4's reference-answer kinds (Qwen3 report §4.4, "model-based reward
with reference answer").

The report has Qwen2.5-72B-Instruct score each response against a reference answer. A model of the
default size cannot grade zero-shot: asked the yes/no rubric (rewards/judge.py), it says Yes to
nearly every answer (measured on the demo's stage-3 model, judged_qa: ROC AUC 0.43 in think mode and
0.72 in no-think mode against the rule checks, 32 answers each, s.e. ~0.1). This
stage trains one, as a generative verifier: SFT of the input model to answer `Yes` or `No` to that
rubric, on verdicts the pipeline builds from rule-checked task kinds (`build_verdicts`: an item's
question, its reference, a right or wrong candidate answer, and the kind's check rules' verdict), none
of them on a question the evaluation asks. Held-out verdicts give its accuracy and the ROC AUC of its
P(Yes) against the rules. Stage 4 then names it:
`rewards: [{name: judge, params: {model: "@judge", verdict: yes_no}}]`; any local model dir or served
model can still be the judge instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_builders.pairs import PairsConfig, build_verdicts
from data_builders.tasks import eval_items, load_tasks
from posttrain.core.chat import without_flag
from posttrain.core.context import StageContext
from posttrain.core.rundir import is_main_process, write_json
from posttrain.core.stats import roc_auc
from posttrain.core.training import TrainOptions, sft

TRAINERS = {"train": "SFTConfig"}
REPORT_FILES = ("judge_data.json",)


@dataclass
class Config:
    verdicts: PairsConfig  # task kinds with `check` rules (default: all of them in `tasks`) and how many verdicts
    held_out: int = 16  # per kind and mode: the evaluation's task items (= eval.tasks.n), never trained on
    heldout_fraction: float = 0.15  # verdicts kept aside to measure the judge
    max_length: int = 512
    # 80 steps at 1e-4: held-out AUC 0.80 / 0.87 on those answers (40 steps at 5e-5: 0.75 / 0.71)
    train: TrainOptions = field(default_factory=lambda: TrainOptions(max_steps=80, learning_rate=1e-4))

    def __post_init__(self):
        if not 0.0 < self.heldout_fraction < 1.0 or self.held_out < 0:
            raise ValueError(f"heldout_fraction must be within (0, 1) and held_out >= 0, got "
                             f"{self.heldout_fraction}, {self.held_out}")


def build(ctx: StageContext, cfg: Config):
    """The verdict conversations, without any question of the evaluation's task items or suites."""
    from datasets import Dataset
    kinds = load_tasks(cfg.verdicts.tasks)
    asked = {without_flag(r["prompt"][-1]["content"]) for r in eval_items(kinds, cfg.held_out, ctx.seed)}
    verdicts, stats = build_verdicts(cfg.verdicts, ctx.seed, asked | {without_flag(t) for t in ctx.held_out})
    write_json(ctx.dir / "judge_data.json", {"verdicts": len(verdicts), **stats})
    return Dataset.from_list(verdicts)


def measure(ctx: StageContext, held) -> dict:
    """The trained judge on held-out verdicts: accuracy of P(Yes) >= 0.5 and ROC AUC of P(Yes) against
    the rules' labels, P(Yes) read as the judge reward reads it (one forward pass, no-think mode)."""
    engine = ctx.engines.get(str(ctx.model_dir))
    probs = engine.option_probs([m[:1] for m in held["messages"]], ["Yes", "No"], mode="no_think")
    scored = [(p[0], y) for p, y in zip(probs, held["label"], strict=True) if p is not None]
    return {"heldout_verdicts": len(held), "heldout_accuracy": sum((p >= 0.5) == y for p, y in scored) / len(scored),
            "heldout_auc": roc_auc(*zip(*scored, strict=True)),
            "heldout_yes_rate": sum(p >= 0.5 for p, _ in scored) / len(scored)}


def run(ctx: StageContext, cfg: Config) -> dict:
    data = ctx.dataset("train", lambda: build(ctx, cfg))
    split = data.train_test_split(test_size=cfg.heldout_fraction, seed=ctx.seed)
    metrics = sft(ctx, split["train"].select_columns(["messages"]), cfg.train,
                  where=f"stages.{ctx.stage_id}.config.train", max_length=cfg.max_length)
    if is_main_process():
        metrics.update(measure(ctx, split["test"]))
        write_json(ctx.dir / "judge.json", metrics)
        ctx.write_metrics(metrics)
    return metrics
