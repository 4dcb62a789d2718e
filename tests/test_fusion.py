"""Stage 3: the fusion mix (flags, last flag wins, empty blocks, mix ratio), the loss mask, the stage."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from transformers import AutoTokenizer

from data_builders import direct
from data_builders.flags import script
from data_builders.fusion import FusionData, build
from data_builders.fusion_answers import reasoning_queries
from posttrain.core.chat import EMPTY_THINK, resolve_mode
from posttrain.core.context import StageContext
from rewards.instruction import meets, parse_constraints


def flags_so_far(plan, upto):
    """The flag messages a model has seen when it answers turn `upto` of a plan."""
    seen = [{"role": "system", "content": plan["system"]}] if plan["system"] else []
    for turn in plan["turns"][:upto + 1]:
        if turn["where"] == "user":
            seen.append({"role": "user", "content": f"q {turn['flag']}"})
    return seen


def test_script_last_flag_wins_and_shares():
    cfg = FusionData(think_share=0.6, no_flag_share=0.3, system_flag_share=0.2, multi_turn_share=0.4)
    plans = script(cfg, 2000, random.Random(0))
    turns = [t for p in plans for t in p["turns"]]
    for plan in plans:
        for i, turn in enumerate(plan["turns"]):
            assert turn["mode"] == resolve_mode(flags_so_far(plan, i))
    assert abs(sum(t["mode"] == "think" for t in turns) / len(turns) - 0.6) < 0.03
    assert abs(sum(p["system"] is not None for p in plans) / len(plans) - 0.2) < 0.03
    assert abs(sum(len(p["turns"]) > 1 for p in plans) / len(plans) - 0.4) < 0.03
    assert {len(p["turns"]) for p in plans} == {1, 2, 3}
    # an opening turn without a system flag goes flag-less when it thinks, with probability no_flag_share
    opening = [p["turns"][0] for p in plans if p["system"] is None]
    assert abs(sum(t["where"] is None for t in opening) / len(opening) - 0.6 * 0.3) < 0.03
    # thinking with no flag at all (the default), and a no-flag turn that inherits /no_think
    assert any(t["default"] and t["mode"] == "think" for t in turns)
    assert any(t["where"] is None and t["mode"] == "no_think" for t in turns)
    # a later user flag overrides an earlier one (system or user)
    assert any(p["system"] == "/no_think" and any(t["mode"] == "think" for t in p["turns"][1:]) for p in plans)
    assert any(p["turns"][0]["mode"] != p["turns"][1]["mode"] for p in plans if len(p["turns"]) > 1)


def test_script_carry_share_sets_the_mode_turns_back():
    # without carry_share the draws are those of mixes made before it (recipe_vllm.yaml's stage 3 in r30)
    plans = script(FusionData(no_flag_share=0.5), 800, random.Random(3))
    turns = [t for p in plans for t in p["turns"]]
    assert Counter(t["where"] for t in turns) == {"user": 825, "system": 254, None: 321}
    cfg = FusionData(multi_turn_share=1.0, carry_share=1.0, max_turns=3)
    plans = script(cfg, 400, random.Random(1))
    assert all(len(p["turns"]) == 3 for p in plans)
    distance = Counter()
    for plan in plans:
        first, second, third = plan["turns"]
        assert first["where"] in ("user", "system") and third["where"] is None
        for i, turn in enumerate(plan["turns"]):
            assert turn["mode"] == resolve_mode(flags_so_far(plan, i)) and not turn["default"]
        distance[(third["mode"], 1 if second["where"] else 2)] += 1
    # the last turn's mode comes from one or two turns back, in both modes, about evenly
    assert set(distance) == {(m, d) for m in ("think", "no_think") for d in (1, 2)}
    assert min(distance.values()) > 60
    with pytest.raises(ValueError, match="carry_share"):
        FusionData(carry_share=1.5)


def test_direct_kinds_meet_their_own_constraints():
    for kind in direct.KINDS:
        for row in direct.generate(kind, 100, seed=4):
            for c in parse_constraints(row["constraints"]):
                assert meets(row["response"], c), (row["prompt"], row["response"], c)
    assert direct.generate("qa", 5, seed=1) == direct.generate("qa", 5, seed=1)
    with pytest.raises(ValueError, match="unknown direct-answer kind"):
        direct.generate("poetry", 1)


def test_direct_answers_to_reasoning_items_are_short_and_right():
    from data_builders import synthetic
    from rewards.grading import grade
    rows = [*synthetic.generate("arithmetic", 20, seed=3, steps=2), *synthetic.generate("linear", 20, seed=3),
            *synthetic.generate("countdown", 5, seed=3)]
    texts = [direct.direct_answer(r) for r in rows]
    assert grade(rows, texts) == [1.0] * len(rows)
    assert all(len(t) < len(r["reasoning"]) / 2 for t, r in zip(texts[:40], rows, strict=False))
    row = {"task": "math", "answer": "-8", "reasoning": "Subtract 12 from both sides: -6x = 60 - (12) = 48.\n"
           "Divide both sides by -6: x = 48 / -6 = -8.\nCheck: substituting x = -8 makes both sides equal."}
    assert direct.direct_answer(row) == "-6x = 60 - (12) = 48, x = 48 / -6 = -8. \\boxed{-8}"


@pytest.mark.parametrize("bad,error", [({"think_share": 1.5}, "think_share"), ({"kinds": {"poetry": 1.0}}, "unknown"),
                                       ({"max_turns": 0}, "max_turns")])
def test_fusion_config_checks(bad, error):
    with pytest.raises(ValueError, match=error):
        FusionData(**bad)


@pytest.fixture(scope="module")
def mix(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("fusion")
    ctx = StageContext(stage_id="fusion", dir=tmp / "run" / "03_fusion", input_model=str(tiny_model),
                       run_dir=tmp / "run")
    cfg = FusionData(examples=120, think_share=0.5, multi_turn_share=0.3, system_flag_share=0.25,
                     responder="trace", families={"arithmetic": 30, "linear": 30},
                     kinds={"reasoning": 0.5, "instruction": 0.2, "qa": 0.15, "rewrite": 0.15})  # one reply per turn
    return ctx, cfg, build(ctx, cfg)


def test_mix_invariants(mix, tiny_model):
    ctx, cfg, ds = mix
    tok = AutoTokenizer.from_pretrained(tiny_model)
    think_turns = 0
    for row in ds:
        messages, modes = row["messages"], row["modes"]
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        assert len(answers) == len(modes) == len(row["kinds"])
        for i, mode in zip(answers, modes, strict=True):
            assert resolve_mode(messages[:i]) == mode  # every turn follows the last flag so far
            turn = messages[i]
            rendered = tok.apply_chat_template(messages[:i + 1], tokenize=False)
            tail = rendered[rendered.rindex("<|im_start|>assistant\n"):]
            if mode == "no_think":
                assert turn["reasoning_content"] == "" and tail.startswith("<|im_start|>assistant\n" + EMPTY_THINK)
            else:
                think_turns += 1
                assert turn["reasoning_content"].strip() and f"<think>\n{turn['reasoning_content']}" in tail
    stats = json.loads((ctx.dir / "fusion_data.json").read_text())
    assert stats["turns"] == sum(len(m) for m in ds["modes"]) == sum(stats["per_kind_mode"].values())
    assert stats["think_share"] == pytest.approx(think_turns / stats["turns"]) and 0.35 < stats["think_share"] < 0.65
    assert {k.split("/")[0] for k in stats["per_kind_mode"]} == set(cfg.kinds)
    assert {k.split("/")[1] for k in stats["per_kind_mode"]} == {"think", "no_think"}
    assert stats["flags"]["system"] > 0 and stats["flags"]["none"] > 0 and stats["flags"]["user"] > 0
    assert stats["thinking_by_default"] > 0 and stats["turns_histogram"]["1"] < stats["conversations"]
    assert set(stats["thinking"]["rejections"]) == {"truncated", "wrong_answer", "repetition", "guesswork",
                                                   "inconsistent_summary", "language_mixing", "eval_overlap"}
    assert any(m[0]["role"] == "system" for m in ds["messages"])


def _question(message: dict) -> str:
    return message["content"].removesuffix(" /think").removesuffix(" /no_think")


def test_flag_twins_are_minimal_pairs(tmp_path, tiny_model):
    """With `flag_twins`, each flagged conversation is followed by its twin: the same questions with every
    flag turned over, each turn answered in its new mode from the same item; the originals are the mix
    without twins, and a flag-less conversation (thinking by default) gets none."""
    def mix(flag_twins):
        ctx = StageContext(stage_id="fusion", dir=tmp_path / str(flag_twins) / "03_fusion",
                           input_model=str(tiny_model), run_dir=tmp_path / str(flag_twins))
        cfg = FusionData(examples=60, think_share=0.5, multi_turn_share=0.5, responder="trace",
                         families={"arithmetic": 20, "linear": 20}, flag_twins=flag_twins,
                         kinds={"reasoning": 0.5, "instruction": 0.3, "qa": 0.2})
        return list(build(ctx, cfg)), json.loads((ctx.dir / "fusion_data.json").read_text())
    plain, _ = mix(False)
    twinned, stats = mix(True)
    originals, i, flipped_turns = [], 0, 0
    while i < len(twinned):
        row = twinned[i]
        originals.append(row)
        msgs = row["messages"]
        if not any(m["content"].endswith(("/think", "/no_think")) for m in msgs if m["role"] in ("system", "user")):
            i += 1  # no flag: thinking by default, no twin
            continue
        twin = twinned[i + 1]["messages"]
        pairs = list(zip(msgs, twin, strict=True))
        for a, b in pairs:
            assert a["role"] == b["role"]
            if a["role"] == "user":
                assert _question(a) == _question(b) and (a["content"] == b["content"]) == (_question(a) == a["content"])
            if a["role"] == "system":
                assert {a["content"], b["content"]} == {"/think", "/no_think"}
        for k, (a, b) in enumerate(pairs):
            if a["role"] == "assistant":
                assert resolve_mode(twin[:k]) == ("think" if b["reasoning_content"] else "no_think")
                assert a["content"] == b["content"]  # the same item's answer, in its mode's form
                flipped_turns += bool(a["reasoning_content"]) != bool(b["reasoning_content"])
        i += 2
    assert originals == plain and flipped_turns > 20
    assert stats["conversations"] == len(twinned) == len(plain) + stats["flag_twins"]["conversations"]
    twin_turns = sum(len(r["modes"]) for r in twinned) - sum(len(r["modes"]) for r in plain)
    assert stats["flag_twins"]["same_item"] == twin_turns and stats["flag_twins"]["other_item"] == 0


@pytest.mark.parametrize("think_answer", ["sampled", "solution"])
def test_what_follows_the_think_block(tmp_path, tiny_model, think_answer):
    from data_builders import synthetic
    ctx = StageContext(stage_id="fusion", dir=tmp_path / "run" / "03_fusion", input_model=str(tiny_model),
                       run_dir=tmp_path / "run")
    cfg = FusionData(examples=30, kinds={"reasoning": 1.0}, think_share=1.0, responder="trace",
                     families={"linear": 10}, think_answer=think_answer)
    rows = {r["prompt"][-1]["content"]: r for r in synthetic.generate("linear", 10, seed=cfg.queries_seed)}
    for conv in build(ctx, cfg)["messages"]:
        user, turn = conv[-2], conv[-1]
        row = rows[user["content"].removesuffix(" /think")]
        assert turn["reasoning_content"] == row["reasoning"]
        assert turn["content"] == (row["response"] if think_answer == "sampled" else direct.direct_answer(row))


def test_direct_families_widen_the_non_thinking_side(tmp_path, tiny_model):
    ctx = StageContext(stage_id="fusion", dir=tmp_path / "run" / "03_fusion", input_model=str(tiny_model),
                       run_dir=tmp_path / "run")
    from data_builders.synthetic import generate
    from posttrain.evaluate import EvalConfig, SuiteConfig, held_out
    cfg = FusionData(examples=40, kinds={"reasoning": 1.0}, think_share=0.0, responder="trace",
                     families={"linear": 3}, direct_families={"arithmetic": 30})
    # the eval suite is 5 of the extra items
    ctx.held_out = held_out(EvalConfig(suites={"a": SuiteConfig(family="arithmetic", n=5, seed=cfg.seed)}))
    prompts = {m["content"].removesuffix(" /no_think") for conv in build(ctx, cfg)["messages"] for m in conv
               if m["role"] == "user"}
    assert sum("Solve for x" in p for p in prompts) <= 3 and len(prompts) > 20  # mostly the extra items
    asked = {r["prompt"][-1]["content"] for r in generate("arithmetic", 5, seed=cfg.seed)}
    assert not prompts & asked  # eval items never reach the training mix
    stats = json.loads((ctx.dir / "fusion_data.json").read_text())
    assert stats["direct_families"]["near_duplicate_of_eval"] >= 5


@pytest.mark.parametrize("direct_thinking", [False, True])
def test_direct_thinking_widens_the_thinking_side_with_solver_traces(tmp_path, tiny_model, direct_thinking):
    """With `direct_thinking`, the extra items are asked in think mode too, their solver trace as the think
    block; without it the thinking side has only the (3) stage-1 queries."""
    ctx = StageContext(stage_id="fusion", dir=tmp_path / "run" / "03_fusion", input_model=str(tiny_model),
                       run_dir=tmp_path / "run")
    from data_builders.synthetic import generate
    cfg = FusionData(examples=40, kinds={"reasoning": 1.0}, think_share=1.0, responder="trace", max_turns=1,
                     families={"linear": 3}, direct_families={"arithmetic": 30}, direct_thinking=direct_thinking)
    traces = {r["prompt"][-1]["content"]: r["reasoning"] for r in generate("arithmetic", 30, seed=cfg.seed)}
    convs = build(ctx, cfg)["messages"]
    asked = {c[-2]["content"].removesuffix(" /think"): c[-1]["reasoning_content"] for c in convs}
    extra = {p: r for p, r in asked.items() if p in traces}
    assert len(asked) > 20 if direct_thinking else len(asked) == 3
    assert all(r == traces[p] for p, r in extra.items()) and bool(extra) == direct_thinking


def test_thinking_queries_come_from_stage_1_data(tmp_path):
    from datasets import Dataset
    run = tmp_path / "run"
    rows = [{"messages": [{"role": "user", "content": f"Solve for x: x + {i} = {i + 2}."},
                          {"role": "assistant", "content": "\\boxed{2}", "reasoning_content": "x = 2"}],
             "answer": "2", "tests": "", "task": "math", "domain": "linear"} for i in range(3)]
    Dataset.from_list(rows).save_to_disk(str(run / "01_cold_start" / "data" / "train"))
    ctx = StageContext(stage_id="fusion", dir=run / "03_fusion", input_model="unused", run_dir=run)
    queries, source = reasoning_queries(ctx, FusionData())
    assert source.endswith("01_cold_start/data/train") and len(queries) == 3
    assert queries[1]["prompt"] == [rows[1]["messages"][0]] and queries[1]["answer"] == "2"
    queries, source = reasoning_queries(ctx, FusionData(queries_from="nothing", families={"linear": 4}))
    assert "synthetic" in source and len(queries) == 4


def test_rejection_sampling_sets_aside_and_fails_clearly(tmp_path, tiny_model):
    ctx = StageContext(stage_id="fusion", dir=tmp_path / "run" / "03_fusion", input_model=str(tiny_model),
                       run_dir=tmp_path / "run")
    cfg = FusionData(examples=10, families={"arithmetic": 4}, n_responses=2, max_new_tokens=6)
    with pytest.raises(RuntimeError, match="no think response survived for kind 'reasoning'"):
        build(ctx, cfg)  # a random model answers nothing right
    stats = json.loads((ctx.dir / "fusion_data.json").read_text())
    thinking = stats["thinking"]
    assert thinking["kept"] == 0 and thinking["set_aside_pass_at_n_zero"] == 4
    assert sum(thinking["rejections"].values()) == 8


@pytest.mark.parametrize("history", ["inference", "training_template"])
def test_loss_mask_covers_the_empty_block_and_the_thinking(mix, tiny_model, tmp_path, history):
    """What the stage's own trainer trains on: the labels its data collator gives each assistant
    turn, empty think block included, and nothing of the prompts."""
    from posttrain.core.training import sft_trainer
    from stages.fusion import Config, training_data
    _, _, ds = mix
    idx = next(i for i, r in enumerate(ds) if len(r["modes"]) > 1 and set(r["modes"]) == {"think", "no_think"})
    conv = ds[idx]
    cfg = Config(history=history, max_length=2048)
    ctx = StageContext(stage_id="fusion", dir=tmp_path / "fusion", input_model=str(tiny_model))
    trainer = sft_trainer(ctx, training_data(ds, cfg.history), cfg.train, "stages.fusion.config.train",
                          max_length=cfg.max_length)
    tok, trained = trainer.processing_class, trainer.train_dataset
    if history == "training_template":  # one example per conversation
        rows = [idx]
    else:  # one example per assistant turn
        first = sum(len(m) for m in ds["modes"][:idx])
        rows = list(range(first, first + len(conv["modes"])))
    batch = trainer.data_collator([trained[i] for i in rows])  # what a training step gets
    labelled = "".join(tok.decode([t for t in labels.tolist() if t != -100]) for labels in batch["labels"])
    for turn in (m for m in conv["messages"] if m["role"] == "assistant"):
        block = EMPTY_THINK if not turn["reasoning_content"] else f"<think>\n{turn['reasoning_content']}\n</think>\n\n"
        assert block + turn["content"] + "<|im_end|>" in labelled
    users = [m["content"] for m in conv["messages"] if m["role"] == "user"]
    assert not any(u in labelled for u in users)  # prompts are never trained on
    assert "<|im_start|>assistant" not in labelled and "<|im_start|>user" not in labelled
    if history == "inference":  # the last turn's context shows earlier turns as inference does
        context = tok.decode(trained[rows[-1]]["input_ids"])
        for turn in [m for m in conv["messages"] if m["role"] == "assistant"][:-1]:
            assert turn["content"] in context
            assert not turn["reasoning_content"] or turn["reasoning_content"] not in context


def test_fusion_stage_in_a_pipeline_with_think_follow_and_budget_curve(tmp_path, tiny_model, run_one_stage):
    path = tmp_path / "hybrid.yaml"
    path.write_text(f"""
name: hybrid
model: {tiny_model}
output_dir: {tmp_path / 'run'}
eval:
  suites: {{lin: {{family: linear, n: 2, seed: 10001}}}}
  samples: 1
  pass_k: [1]
  max_new_tokens: 6
  think_follow: {{n: 3, max_new_tokens: 6, held_out: 2}}
budget_curve: {{budgets: [2], samples: 1}}
stages:
  - stage: fusion
    config:
      data: {{examples: 24, responder: trace, families: {{arithmetic: 8, linear: 8}}}}
      max_length: 512
      train: {{max_steps: 2, batch_size: 4}}
""")
    run_dir, stage, metrics = run_one_stage(path)
    assert metrics["global_step"] == 2
    assert (stage.model_dir / "config.json").is_file() and (stage.dir / "fusion_data.json").is_file()
    evals = [json.loads(p.read_text()) for p in (run_dir / "base_eval.json", stage.dir / "eval.json")]
    assert all(0.0 <= e["think_follow"]["score"] <= 1.0 and e["think_follow"]["turns"] >= 3 for e in evals)
    curve = json.loads((run_dir / "budget_curve.json").read_text())
    assert curve["stage"] == "fusion" and [p["budget"] for p in curve["points"]] == [2, None]
    report = (run_dir / "report.md").read_text()
    assert "## ThinkFollow" in report and "## Thinking budget (fusion)" in report
    assert "plots/budget_curve.png" in report and (run_dir / "plots" / "budget_curve.png").is_file()
    score = f"{evals[1]['think_follow']['score']:.3f}"
    assert any(line.startswith(f"| fusion | {score} |") and "vs base" in line for line in report.splitlines())
    held = [e["think_follow"]["held_out"] for e in evals]  # the held-out suite, scored and paired too
    assert [h["turns"] for h in held] == [6, 6] and held[0]["items_sha"] == held[1]["items_sha"]
    score = f"{held[1]['score']:.3f}"
    assert "ThinkFollow (held-out)" in report
    assert sum(line.startswith(f"| fusion | {score} |") and "vs base" in line for line in report.splitlines()) >= 1


@pytest.mark.parametrize("bad,error", [("budget_curve: {budgets: [8], stage: nope}", "budget_curve.stage: 'nope'"),
                                       ("budget_curve: {budgets: [0]}", "budgets must be positive")])
def test_budget_curve_config_errors(tmp_path, tiny_model, bad, error):
    from posttrain import pipeline
    from posttrain.core.config import ConfigError
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\nmodel: {tiny_model}\neval: {{suites: {{a: {{family: linear, n: 2}}}}}}\n{bad}\n"
                    "stages: [{stage: fusion}]\n")
    with pytest.raises(ConfigError, match=error):
        pipeline.load(path)


def test_think_follow_items_never_reach_the_fusion_mix(tmp_path, tiny_model):
    """hybrid.yaml's fusion data shares no user turn with the ThinkFollow suite the pipeline scores it on:
    the direct kinds draw from small pools (65 QA questions), so without the exclusion a 400-conversation
    mix held a third of the suite's prompts."""
    from dataclasses import replace

    from posttrain import pipeline
    from tests.conftest import REPO
    cfg, planned = pipeline.load(REPO / "pipelines" / "hybrid.yaml", output_dir=str(tmp_path / "run"),
                                 overrides=[f"model={tiny_model}"])
    stage = next(p for p in planned if p.spec.stage == "fusion")
    from posttrain.thinkfollow import ThinkFollowConfig
    follow = ThinkFollowConfig(**cfg.eval["think_follow"])
    asked = {t["prompt"] for p in follow.plans() + follow.held_out_plans() for t in p["turns"]}
    assert follow.held_out and len(follow.held_out_plans()) == follow.held_out
    data = build(stage.ctx, replace(stage.config.data, examples=400, responder="trace", queries_from="none",
                                    direct_families={}))
    users = {m["content"].removesuffix(" /no_think").removesuffix(" /think") for conv in data["messages"]
             for m in conv if m["role"] == "user"}
    assert len(asked) > 40 and len(users) > 200 and not users & asked
    dropped = json.loads((stage.ctx.dir / "fusion_data.json").read_text())["dropped_as_held_out"]
    assert dropped["qa"] > 0  # there were some to drop


@pytest.mark.parametrize("mode", ["think", "no_think"])
def test_shop_episodes_are_worked_by_the_tools_themselves(mode):
    """A stage-3 tool episode: the price lookups and the total run on the row's ShopEnv, so each result
    is the store's own, and the boxed answer is the row's total; only thinking turns say why."""
    from data_builders.agent import shop_episode
    rng = random.Random(0)
    for _ in range(20):
        row, messages = shop_episode(rng, mode)
        store = json.loads(row["store"])
        roles = [m["role"] for m in messages]
        assert roles == ["assistant", "tool", "tool", "assistant", "tool", "assistant"]
        keys = [json.loads(c["function"]["arguments"])["key"] for c in messages[0]["tool_calls"]]
        assert [m["content"] for m in messages[1:3]] == [str(store[k]) for k in keys]
        expression = json.loads(messages[3]["tool_calls"][0]["function"]["arguments"])["expression"]
        assert messages[4]["content"] == row["answer"] == str(eval(expression))  # noqa: S307 - digits, + and *
        assert messages[-1]["content"] == f"The total is \\boxed{{{row['answer']}}}."
        reasons = [m["reasoning_content"] for m in messages if m["role"] == "assistant"]
        assert all(reasons) if mode == "think" else not any(reasons)


@pytest.mark.parametrize("history", ["inference", "training_template"])
def test_tool_use_turns_render_as_qwen3_and_train_on_calls_not_results(tmp_path, tiny_model, history):
    """Fusion conversations with a tool-use turn: the tools listed in the system message as the Qwen3
    template lists them, calls in `<tool_call>` JSON, results as `<tool_response>`; the loss mask covers
    each call and the final answer, never a tool result."""
    from posttrain.core.chat import CHAT_TEMPLATE
    from posttrain.core.training import sft_trainer
    from stages.fusion import Config, training_data
    ctx = StageContext(stage_id="fusion", dir=tmp_path / "run" / "03_fusion", input_model=str(tiny_model),
                       run_dir=tmp_path / "run")
    ds = build(ctx, FusionData(examples=24, kinds={"shop": 0.5, "instruction": 0.5}, multi_turn_share=0.5))
    stats = json.loads((ctx.dir / "fusion_data.json").read_text())
    assert stats["per_kind_mode"]["shop/think"] > 0 and stats["per_kind_mode"]["shop/no_think"] > 0
    idx = next(i for i, r in enumerate(ds) if "shop" in r["kinds"] and len(r["kinds"]) > 1)
    conv = [{k: v for k, v in m.items() if v is not None} for m in ds[idx]["messages"]]
    assert conv[0]["role"] == "system" and '"name": "kv_get"' in conv[0]["content"] and "<tools>" in conv[0]["content"]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rendered = tok.apply_chat_template(conv, tokenize=False, chat_template=CHAT_TEMPLATE)
    assert '<tool_call>\n{"name": "kv_get", "arguments": {"key": "price:' in rendered
    assert '<tool_call>\n{"name": "calculate", "arguments": {"expression": "' in rendered
    results = [m["content"] for m in conv if m["role"] == "tool"]
    assert "<|im_start|>user\n<tool_response>\n" + results[0] + "\n</tool_response>\n<tool_response>\n" in rendered

    trainer = sft_trainer(ctx, training_data(ds, history), Config().train, "stages.fusion.config.train",
                          max_length=2048)
    trained = trainer.train_dataset
    first = sum(len(m) for m in ds["messages"][:idx] for m in m if m["role"] == "assistant")
    n_turns = sum(m["role"] == "assistant" for m in conv)
    rows = [idx] if history == "training_template" else list(range(first, first + n_turns))
    batch = trainer.data_collator([trained[i] for i in rows])
    labelled = "".join(trainer.processing_class.decode([t for t in labels.tolist() if t != -100])
                       for labels in batch["labels"])
    calls = [c for m in conv if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    for call in calls:
        fn = call["function"]
        assert f'<tool_call>\n{{"name": "{fn["name"]}", "arguments": {fn["arguments"]}}}\n</tool_call>' in labelled
    assert "\\boxed{" in labelled and "The total is" in labelled  # the final answer
    assert "<tool_response>" not in labelled and "<|im_start|>user" not in labelled  # never a tool result


def test_single_tool_call_turns_list_their_tools_and_score_full_marks(tmp_path, tiny_model):
    """`tool_call` turns (stage 4's tool_call_format requests): the system message lists their tools (and
    the shop's when the conversation has a shop turn too), the reply is one `<tool_call>` valid for its
    schema with the values the request gave, with a think block only in think mode."""
    from data_builders.general import TOOLS
    from posttrain.core.chat import CHAT_TEMPLATE, split_think
    from rewards.tool_call import ToolCallReward
    ctx = StageContext(stage_id="fusion", dir=tmp_path / "run" / "03_fusion", input_model=str(tiny_model),
                       run_dir=tmp_path / "run")
    ds = build(ctx, FusionData(examples=40, kinds={"tool_call": 0.5, "shop": 0.2, "qa": 0.3}, multi_turn_share=0.6))
    stats = json.loads((ctx.dir / "fusion_data.json").read_text())
    assert stats["per_kind_mode"]["tool_call/think"] > 0 and stats["per_kind_mode"]["tool_call/no_think"] > 0
    tok, check, seen = AutoTokenizer.from_pretrained(tiny_model), ToolCallReward(), set()
    for row in ds:
        conv = [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]
        system = conv[0]["content"] if conv[0]["role"] == "system" else ""
        assert ('"name": "get_weather"' in system) == ("tool_call" in row["kinds"])
        assert ('"name": "kv_get"' in system) == ("shop" in row["kinds"])
        turns = [(m["content"], conv[i + 1]) for i, m in enumerate(conv) if m["role"] == "user"]  # first replies
        for kind, mode, (asked, reply) in zip(row["kinds"], row["modes"], turns, strict=True):
            if kind != "tool_call":
                continue
            text = tok.apply_chat_template([conv[0], {"role": "user", "content": "x"}, reply], tokenize=False,
                                           chat_template=CHAT_TEMPLATE).split("<|im_start|>assistant\n")[-1]
            reasoning, answer = split_think(text.removesuffix("<|im_end|>\n"))
            assert answer.startswith("<tool_call>\n{") and bool(reasoning.strip()) == (mode == "think")
            call = json.loads(answer.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
            assert check.score(answer, {"tools": json.dumps(TOOLS), "answer": ""}) == 0.5  # valid for its schema
            assert all(str(v) in asked for v in call["arguments"].values())  # the values the request gave
            seen.add(call["name"])
    assert seen == {t["function"]["name"] for t in TOOLS}
