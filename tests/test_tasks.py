"""Stage 4's task registry: kinds from YAML, the training mix, routing, and the held-out evaluation."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

import rewards
from data_builders.tasks import build_mix, evaluate_tasks, items, load_tasks, routing_table, uniform
from posttrain.core.chat import EMPTY_THINK, SAMPLING, last_flag
from posttrain.core.config import ConfigError
from posttrain.core.generation import Completion

TASKS = Path(__file__).resolve().parents[1] / "pipelines" / "tasks.yaml"


def solver_text(row):
    """The solver's response, in the mode the row asks for."""
    think = "<think>\nLet me work it out.\n</think>\n\n" if row["mode"] == "think" else EMPTY_THINK
    return think + row["response"]


def score(kinds, rows, texts):
    reward = rewards.get("routed", table=routing_table(kinds))
    rows = uniform(rows)
    return reward(texts, **{k: [r[k] for r in rows] for k in rows[0]})


def mode_scores(kinds, rows):
    """The scores of the solver's answers in the asked mode, and in the other mode."""
    other = [{**r, "mode": "think" if r["mode"] == "no_think" else "no_think"} for r in rows]
    return score(kinds, rows, [solver_text(r) for r in rows]), score(kinds, rows, [solver_text(r) for r in other])


def test_builtin_kinds_cover_the_areas_and_their_solvers_score_full_marks():
    kinds = load_tasks(TASKS)
    assert len(kinds) >= 12
    assert {k.area for k in kinds.values()} >= {"instruction", "format", "specialised", "reasoning"}
    rows = build_mix(kinds, 140, seed=1)
    assert set(Counter(r["task"] for r in rows)) == set(kinds)
    assert {r["environment"] for r in rows} == {"shop", "none"}  # every row names its environment
    scored = score(kinds, rows, [solver_text(r) for r in rows])
    assert all(s == (None if r["environment"] == "shop" else 1.0) for r, s in zip(rows, scored, strict=True))
    # the router sends each row to its own kind's rewards: an empty answer fails every kind
    empty = score(kinds, rows, [("<think>\nhm\n</think>\n\n" if r["mode"] == "think" else EMPTY_THINK) for r in rows])
    assert all(s is None or s < 1.0 for s in empty)
    assert {r["task"] for r, s in zip(rows, empty, strict=True) if s == 0.0} >= {"rag_faithfulness", "arithmetic"}


def test_a_larger_item_set_contains_a_smaller_one():
    kinds = load_tasks(TASKS)
    for name, kind in kinds.items():
        assert items(name, kind, 12, 5, "eval") == items(name, kind, 30, 5, "eval")[:12]


def test_mix_follows_shares_flags_and_keeps_held_out_items_out():
    kinds = load_tasks({"tasks": {
        "a": {"area": "reasoning", "source": "reasoning", "rewards": ["math"], "share": 3, "think_share": 0.0},
        "b": {"area": "specialised", "source": "tool_call", "rewards": ["tool_call"], "think_share": 1.0}}})
    held = items("b", kinds["b"], 40, seed=0, split="eval")
    rows = build_mix(kinds, 80, seed=0, held_out=held)
    counts = Counter(r["task"] for r in rows)
    assert counts["a"] == 60 and 0 < counts["b"] <= 20  # tool requests repeat: equal ones are dropped
    assert {json.dumps(r["prompt"]) for r in rows}.isdisjoint({json.dumps(r["prompt"]) for r in held})
    assert all(last_flag(r["prompt"]) == ("no_think" if r["task"] == "a" else "think") for r in rows)
    assert all(r["prompt"][0]["role"] == "system" and "<tools>" in r["prompt"][0]["content"]
               for r in rows if r["task"] == "b")
    assert rows == build_mix(kinds, 80, seed=0, held_out=held)  # deterministic


def test_flag_dialogue_turns_follow_the_last_flag():
    kinds = load_tasks(TASKS)
    rows = items("think_follow", kinds["think_follow"], 60, seed=3)
    assert any(len([m for m in r["prompt"] if m["role"] == "user"]) > 1 for r in rows)
    assert any(r["prompt"][0]["role"] == "system" for r in rows)
    for r in rows:
        assert r["mode"] == (last_flag(r["prompt"]) or "think")
        assert r["prompt"][-1]["role"] == "user"
    ok, flipped = mode_scores(kinds, rows)
    assert ok == [1.0] * len(rows) and all(s < 1.0 for s in flipped)


def test_flag_dialogue_carry_share_sets_the_mode_turns_back():
    kind = load_tasks(TASKS)["think_follow"]
    plain = items("think_follow", kind, 40, seed=5)
    assert plain == items("think_follow", replace(kind, params={"carry_share": 0.0}), 40, seed=5)  # same draws
    carry = replace(kind, params={"carry_share": 1.0})
    rows = items("think_follow", carry, 60, seed=5)
    multi = [r for r in rows if sum(m["role"] == "user" for m in r["prompt"]) > 1]
    assert len(multi) > 25 and all(sum(m["role"] == "user" for m in r["prompt"]) == 3 for r in multi)
    assert {r["mode"] for r in multi} == {"think", "no_think"}
    for r in multi:  # the last turn carries no flag: the mode is the one set on an earlier turn
        assert last_flag(r["prompt"][-1:]) is None and r["mode"] == (last_flag(r["prompt"]) or "think")
    ok, flipped = mode_scores({"think_follow": carry}, rows)
    assert ok == [1.0] * len(rows) and all(s < 1.0 for s in flipped)


def test_a_kind_added_by_yaml_with_a_dataset_file(tmp_path):
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"question": f"Capital number {i}? Put the answer in \\boxed{{}}.",
                                        "gold": str(i)}) + "\n" for i in range(200)))
    spec = tmp_path / "tasks.yaml"
    spec.write_text(f"defaults: {TASKS}\ntasks:\n  capitals:\n    area: specialised\n    source: {data}\n"
                    "    columns: {question: prompt, gold: answer}\n    rewards: [math]\n")
    kinds = load_tasks(spec)
    assert "capitals" in kinds and "rag_faithfulness" in kinds  # inherits the built-in kinds
    train, held = items("capitals", kinds["capitals"], 500, 0), items("capitals", kinds["capitals"], 500, 0, "eval")
    assert len(train) + len(held) == 200 and 5 < len(held) < 40
    assert {r["answer"] for r in train}.isdisjoint({r["answer"] for r in held})
    assert score(kinds, train[:4], [f"\\boxed{{{r['answer']}}}" for r in train[:4]]) == [1.0] * 4


@pytest.mark.parametrize("body,error", [
    ({"area": "nope", "source": "rag", "rewards": ["rag"]}, "area must be one of"),
    ({"area": "specialised", "source": "no/such/file.jsonl", "rewards": ["rag"]}, "tasks.x.source"),
    ({"area": "specialised", "source": "rag", "params": {"fact": 3}, "rewards": ["rag"]}, "tasks.x.params"),
    ({"area": "specialised", "source": "rag", "rewards": []}, "non-empty list of rewards"),
    ({"area": "specialised", "source": "rag"}, "rewards"),
])
def test_bad_kinds_are_named(body, error):
    with pytest.raises(ConfigError, match=error):
        kinds = load_tasks({"tasks": {"x": body}})
        items("x", kinds["x"], 2)


def test_rag_reward_penalises_unsupported_answers():
    rag = rewards.get("rag")
    row = {"answer": "teal", "context_values": json.dumps(["teal", "42", "Oakridge"])}
    texts = ["Ava's favourite colour is teal.", "It is teal or 42.", "That is not in the context.", "Red."]
    assert rag(texts, **{k: [v] * 4 for k, v in row.items()}) == [1.0, 0.0, 0.0, 0.0]
    row = {"answer": "not in the context", "context_values": json.dumps(["teal", "42"])}
    texts = ["That is not in the context.", "It is not in the context, maybe 42.", "teal"]
    assert rag(texts, **{k: [v] * 3 for k, v in row.items()}) == [1.0, 0.0, 0.0]


def test_tool_call_reward_checks_format_schema_and_values():
    from data_builders.general import TOOLS
    reward = rewards.get("tool_call")
    want = {"name": "set_alarm", "arguments": {"hour": 7, "minute": 30}}

    def call(obj):
        return f"{EMPTY_THINK}<tool_call>\n{json.dumps(obj) if not isinstance(obj, str) else obj}\n</tool_call>"
    texts = [call(want), call({"name": "set_alarm", "arguments": {"hour": 8, "minute": 0}}),
             call({"name": "set_alarm", "arguments": {"hour": "7", "minute": 30}}),  # wrong type
             call({"name": "set_alarm", "arguments": {"hour": 7}}),  # missing required
             call({"name": "launch", "arguments": {}}), call('{"name": "set_alarm", "arguments": {'),
             "Alarm set for 7:30.", call(want) + call(want)]
    n = len(texts)
    got = reward(texts, tools=[json.dumps(TOOLS)] * n, answer=[json.dumps(want)] * n)
    assert got == [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert reward([call(want)], tools=[""], answer=[""]) == [None]


def test_evaluate_tasks_scores_every_kind_in_both_modes():
    kinds = load_tasks(TASKS)
    kinds = {k: kinds[k] for k in ("if_case", "rag_faithfulness", "think_follow")}
    answers = {}
    for name, kind in kinds.items():
        for mode in ("think", "no_think"):
            for r in items(name, kind, 6, seed=0, split="eval", mode=mode):
                answers[json.dumps(r["prompt"])] = solver_text(r) if name != "rag_faithfulness" else "Red."

    calls = []

    class Oracle:
        def generate(self, prompts, n=1, mode=None, **kw):
            assert mode is None  # the flags decide
            calls.append((kw["temperature"], len(prompts)))
            return [[Completion(answers[json.dumps(p)], [1, 2, 3])] for p in prompts]
    res = evaluate_tasks(Oracle(), kinds, n=6)
    # one call per sampling setting: every kind's think-mode items (a flagged kind samples as think) together
    assert calls == [(SAMPLING["think"]["temperature"], 18), (SAMPLING["no_think"]["temperature"], 12)]
    assert set(res["if_case"]) == {"think", "no_think"} and set(res["think_follow"]) == {"flagged"}
    assert res["if_case"]["think"]["score"] == 1.0 and res["think_follow"]["flagged"]["score"] == 1.0
    assert res["rag_faithfulness"]["no_think"]["score"] == 0.0 and res["rag_faithfulness"]["think"]["n_items"] == 6


def test_general_rl_trains_a_mixed_batch_and_reports_each_kind(tmp_path, tiny_model):
    """The pipeline trains a reward model on pairs it builds, then GRPO over a batch mixing kinds
    (one added by YAML alone, from a dataset file; one rewarded by that reward model) for a few steps
    on CPU; the eval scores every kind before and after (the preference kind once its model exists)."""
    from posttrain import pipeline
    data = tmp_path / "echo.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w} {i} times.", "constraints": json.dumps(
        [{"type": "include_keywords", "keywords": [w]}])}) + "\n" for i in range(40) for w in ["red", "blue"]))
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(f"""tasks:
  echo: {{area: instruction, source: {data}, rewards: [instruction]}}
  rag_faithfulness: {{area: specialised, source: rag, rewards: [rag]}}
  think_follow: {{area: format, source: flag_dialogue, params: {{max_turns: 2}}, rewards: [think_follow]}}
  liked: {{area: preference, source: instruction, rewards: [{{name: preference, params: {{model: "@rm"}}}}],
          check: [instruction]}}
  shop: {{area: agent, source: shop, environment: shop, rewards: [tool_use]}}
""")
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""
name: recipe
model: {tiny_model}
output_dir: {tmp_path / 'run'}
eval:
  suites: {{lin: {{family: linear, n: 2, seed: 10001}}}}
  samples: 1
  pass_k: [1]
  max_new_tokens: 4
  tasks: {{spec: {tasks}, n: 2, max_new_tokens: 6}}
stages:
  - {{stage: reward_model, id: rm, eval: false,
     config: {{pairs: {{tasks: {TASKS}, kinds: [if_case, arithmetic], n: 12}}, train: {{max_steps: 2}}}}}}
  - stage: general_rl
    model: "@base"
    config:
      tasks: {tasks}
      examples: 12
      held_out: 2
      num_generations: 2
      max_completion_length: 8
      train: {{max_steps: 2, batch_size: 4}}
""")
    cfg, planned = pipeline.load(path)
    run_dir = pipeline.run(cfg, planned)
    rm, stage = planned[0].ctx, planned[1].ctx
    assert json.loads((rm.dir / "pairs.json").read_text())["pairs"] == 12
    assert json.loads((stage.dir / "COMPLETE").read_text())["metrics"]["global_step"] == 2
    built = json.loads((stage.dir / "general_rl_data.json").read_text())
    assert set(built["per_kind"]) == {"echo", "rag_faithfulness", "think_follow", "liked", "shop"}
    # the base model's eval came before its reward model existed: the kind is scored at the run's end
    before = json.loads((run_dir / "base_eval.json").read_text())["tasks"]
    assert not before["skipped"] and set(before["scores"]["liked"]) == {"think", "no_think"}
    after = json.loads((stage.dir / "eval.json").read_text())["tasks"]["scores"]
    assert set(after) == {"echo", "rag_faithfulness", "think_follow", "liked", "shop"}
    assert set(after["echo"]) == {"think", "no_think"} and set(after["think_follow"]) == {"flagged"}
    assert all(0.0 <= r["score"] <= 1.0 for k in ("echo", "rag_faithfulness") for r in after[k].values())
    assert after["liked"]["think"]["agreement"] is not None
    from posttrain.report.collect import scalars
    logged = scalars(stage.dir / "tb")
    assert any(k.endswith("routed/echo/instruction") for k in logged), sorted(logged)[:20]
    report = (run_dir / "report.md").read_text()
    assert "## Task kinds" in report and "| echo | instruction | no_think |" in report
    assert "Agreement of model-based rewards" in report and "Reward model held-out pair accuracy" in report
    assert "general_rl - base (paired ± s.e.)" in report
    liked = [line for line in report.splitlines() if line.startswith("| liked | preference | think |")]
    assert len(liked) == 1 and liked[0].count("±") == 3, liked  # both models' scores and the paired change


def test_preference_pairs_are_checked_by_the_kinds_rules():
    from data_builders.pairs import PairsConfig, build_pairs
    kinds = load_tasks(TASKS)
    pairs, stats = build_pairs(PairsConfig(tasks=str(TASKS), n=48), seed=0)
    assert len(pairs) >= 30 and not any(kinds[p["task"]].area == "format" for p in pairs)
    assert stats.get("if_json/no_failing_answer")  # every JSON answer is JSON: no pair, said so
    rows = {json.dumps(r["prompt"]): r for name in kinds for r in items(name, kinds[name], 40, 0)}
    texts = [p[side][0]["content"] for p in pairs for side in ("chosen", "rejected")]
    scored = score(kinds, [rows[json.dumps(p["prompt"])] for p in pairs for _ in (0, 1)], texts)
    assert all(c == 1.0 and r < 1.0 for c, r in zip(scored[::2], scored[1::2], strict=True))
    with pytest.raises(ConfigError, match="not a kind"):
        build_pairs(PairsConfig(tasks=str(TASKS), kinds=["nope"]), 0)


def test_judge_verdicts_are_the_rules_verdicts_balanced_and_never_an_eval_question():
    """The judge stage's training data (data_builders/pairs.build_verdicts): each conversation is the
    yes/no rubric on a question, its reference and a candidate answer, answered Yes exactly when the
    kind's check rules pass the candidate; as many Yes as No; no question of the evaluation's items."""
    import re

    from data_builders.pairs import PairsConfig, build_verdicts
    from posttrain.core.chat import without_flag
    from rewards.judge import RUBRIC_YES_NO
    tasks = TASKS.parent / "tasks_recipe.yaml"
    kinds = load_tasks(tasks)
    asked = {without_flag(r["prompt"][-1]["content"]) for mode in ("think", "no_think")
             for r in items("judged_qa", kinds["judged_qa"], 16, 0, "eval", mode=mode)}
    verdicts, stats = build_verdicts(PairsConfig(tasks=str(tasks), kinds=["judged_qa"], n=80), 0, asked)
    assert 60 <= len(verdicts) <= 84 and stats["judged_qa/dropped_as_eval"] > 0
    assert sum(v["label"] for v in verdicts) * 2 == len(verdicts)
    head = RUBRIC_YES_NO.split("{question}")[0]
    shown = re.compile(r"QUESTION:\n(.*)\n\nREFERENCE:\n(.*)\n\nRESPONSE:\n(.*)\n\nIs the RESPONSE", re.S)
    check = rewards.get("instruction")
    rows = {without_flag(r["prompt"][-1]["content"]): r for r in items("judged_qa", kinds["judged_qa"], 400, 0)}
    for v in verdicts:
        user, answer = v["messages"]
        assert user["content"].startswith(head) and answer == {"role": "assistant", "content": "Yes" if v["label"]
                                                              else "No", "reasoning_content": ""}
        question, reference, response = shown.search(user["content"]).groups()
        assert without_flag(question) not in asked and reference == rows[without_flag(question)]["reference"]
        passed = check([response], constraints=[rows[without_flag(question)]["constraints"]])[0] == 1.0
        assert passed == v["label"]
    with pytest.raises(ConfigError, match="with check rules"):
        build_verdicts(PairsConfig(tasks=str(tasks), kinds=["if_counts"]), 0)


def scripted_judge(completions, model, reference, **_):
    """A stand-in judge: right when the reference is in the answer, but it also passes any answer
    with '!' in it (so it disagrees with the rules there)."""
    assert Path(model).is_dir()  # `@judge` was resolved to the run's model
    return [float(ref.lower() in text.lower() or "!" in text) for text, ref in zip(completions, reference, strict=True)]


def test_judged_kind_reports_agreement_and_waits_for_its_model(tiny_model):
    spec = {"tasks": {"judged": {"area": "specialised", "source": "open_answer", "params": {"kind": "qa"},
                                 "rewards": [{"name": "test_tasks:scripted_judge", "params": {"model": "@judge"}}],
                                 "check": ["instruction"]}}}
    kinds = load_tasks(spec)
    rows = items("judged", kinds["judged"], 8, 0, "eval", mode="no_think")
    assert all(r["reference"] for r in rows)
    answers = {json.dumps(r["prompt"]): EMPTY_THINK + (r["response"] if i % 2 else "No idea!")
               for i, r in enumerate(rows)}

    class Oracle:
        def generate(self, prompts, **kw):
            return [[Completion(answers.get(json.dumps(p), "No idea"), [1])] for p in prompts]
    res = evaluate_tasks(Oracle(), kinds, n=8, modes=("no_think",), resolve=lambda ref: str(tiny_model))
    r = res["judged"]["no_think"]
    assert r["score"] == 1.0 and r["rule_pass"] == 0.5 and r["agreement"] == 0.5
    assert r["auc"] == 0.5  # a judge that says yes to everything cannot tell right from wrong
    with pytest.raises(ConfigError, match="needs a pipeline run directory"):
        routing_table(kinds)


def flaky(completions, **_):
    """A reward that breaks on some batches."""
    if any("7" in str(c) for c in completions) or len(completions) > 1:
        raise RuntimeError("flaky reward broke")
    return [0.5] * len(completions)


@pytest.mark.slow
def test_tool_task_runs_real_tool_calls_inside_a_grpo_step(tmp_path, tiny_model, run_one_stage, monkeypatch, caplog):
    """GRPO's rollouts call the shop's tools for real: the model (scripted here, as a random tiny
    model never writes a call) asks kv_get for a price, TRL runs it on the row's store, and the
    price comes back in the next turn's prompt; the tool_use reward scores the valid call. A kind
    whose reward raises is logged and scored None, and training goes on."""
    import re

    from trl import GRPOTrainer
    seen = []

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for ids in prompt_ids:
            text = self.processing_class.decode(ids)
            seen.append(text)
            fruit = re.search(r"How much do \d+ (\w+)s", text)
            if "<tool_response>" in text:
                reply = "The price is " + re.findall(r"<tool_response>\n(\d+)", text)[-1] + ".<|im_end|>"
            elif fruit:
                reply = ('<think>\n\n</think>\n\n<tool_call>\n{"name": "kv_get", "arguments": {"key": "price:'
                         + fruit.group(1) + '"}}\n</tool_call><|im_end|>')
            else:
                reply = "ok<|im_end|>"
            out.append(self.processing_class.encode(reply, add_special_tokens=False))
        return out, None
    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", scripted)
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("tasks:\n  shop: {area: agent, source: shop, environment: shop, rewards: [tool_use]}\n"
                     "  rag: {area: specialised, source: rag, rewards: ['test_tasks:flaky']}\n")
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nmodel: {tiny_model}\noutput_dir: {tmp_path / 'run'}\nstages:\n  - stage: general_rl\n"
                    f"    config: {{tasks: {tasks}, examples: 8, held_out: 0, num_generations: 2, "
                    "max_completion_length: 96, train: {max_steps: 2, batch_size: 8}}\n")
    _, stage, metrics = run_one_stage(path)
    assert metrics["global_step"] == 2  # every row of the 8 was rolled out
    assert any("flaky failed on a batch of" in r.getMessage() and "of task 'rag'" in r.getMessage()
               for r in caplog.records)
    rows = {r["prompt"][-1]["content"]: json.loads(r["store"]) for r in stage.dataset("train", None) if r["store"]}
    answered = [t for t in seen if "<tool_response>" in t]
    assert answered, "no tool call was executed"
    for text in answered:
        store = next(s for q, s in rows.items() if q in text)
        fruit = re.search(r"How much do \d+ (\w+)s", text).group(1)
        assert f"<tool_response>\n{store['price:' + fruit]}\n</tool_response>" in text  # the real stored price
    from posttrain.report.collect import scalars
    logged = {k: v for k, v in scalars(stage.dir / "tb").items() if k.endswith("routed/shop/tool_use")}
    assert logged and all(abs(value - 0.3) < 1e-6 for series in logged.values() for _, value in series)


def test_agent_episodes_run_the_tools_and_are_rewarded():
    import random
    import re

    from data_builders.agent import ShopEnv, run_episodes, shop
    rows = [shop(random.Random(i)) for i in range(3)]
    envs = [ShopEnv() for _ in rows]
    for env, row in zip(envs, rows, strict=True):
        env.reset(**row)

    def call(name, arguments):
        return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"

    class Scripted:
        """Episode 0 looks both prices up and computes; 1 calls a missing key, then answers wrong; 2 never calls."""
        def generate(self, prompts, n=1, **kw):
            outs = []
            for p in prompts:
                row = rows[next(i for i, r in enumerate(rows) if r["prompt"][-1]["content"] == p[1]["content"])]
                done = [m for m in p if m["role"] == "tool"]
                if row is rows[0] and len(done) == 0:
                    asked = re.findall(r"(\d+) (\w+)s", row["prompt"][-1]["content"])
                    text = "".join(call("kv_get", {"key": f"price:{f}"}) for _, f in asked)
                elif row is rows[0] and len(done) == 2:
                    asked = re.findall(r"(\d+) (\w+)s", row["prompt"][-1]["content"])
                    expr = " + ".join(f"{n} * {t['content']}" for (n, _), t in zip(asked, done, strict=True))
                    text = call("calculate", {"expression": expr})
                elif row is rows[0]:
                    text = f"The total is \\boxed{{{done[-1]['content']}}}."
                elif row is rows[1] and not done:
                    text = call("kv_get", {"key": "price:rock"})
                else:
                    text = "It is \\boxed{1}."
                outs.append([Completion(text, [1, 2])])
            return outs
    done = run_episodes(Scripted(), [r["prompt"] for r in rows], envs)
    assert [env.calls for env in envs] == [3, 1, 0] and [env.failures for env in envs] == [0, 1, 0]
    assert done[1][0][1]["role"] == "tool" and done[1][0][1]["content"].startswith("error: ")
    reward = rewards.get("tool_use")
    scores = reward([c for c, _ in done], answer=[r["answer"] for r in rows], environments=envs)
    assert scores == [1.0, 0.0, 0.0]  # right total with valid calls; a failed call and a wrong answer; no call


def test_model_refs_name_finished_stages_only(tmp_path):
    from posttrain.core.rundir import MARKER, resolve_model_ref
    (tmp_path / "04_rm" / "model").mkdir(parents=True)  # an interrupted stage: a model dir, no marker
    with pytest.raises(FileNotFoundError, match="@rm names no finished stage"):
        resolve_model_ref("@rm", tmp_path, "eval")
    (tmp_path / "04_rm" / MARKER).write_text("{}")
    assert resolve_model_ref("@rm", tmp_path, "eval") == str(tmp_path / "04_rm" / "model")
    assert resolve_model_ref("some/path", None, "eval") == "some/path"


def test_a_null_kind_drops_an_inherited_one(tmp_path):
    spec = tmp_path / "tasks.yaml"
    spec.write_text(f"defaults: {TASKS}\ntasks:\n  shop_agent: null\n  if_json: null\n")
    kinds = load_tasks(spec)
    assert "shop_agent" not in kinds and "if_json" not in kinds and "if_counts" in kinds
    with pytest.raises(ConfigError, match="every task kind is null"):
        load_tasks({"tasks": {"x": None}})


def test_general_rl_prompts_leave_out_the_think_follow_suite(tmp_path):
    """recipe.yaml's stage-4 prompts share no user turn with the ThinkFollow suite it is scored on
    (stage 4's flag dialogues and direct kinds draw from the same small pools as the suite)."""
    from dataclasses import replace

    from data_builders.flags import suite
    from posttrain import pipeline
    from posttrain.thinkfollow import ThinkFollowConfig
    from stages.general_rl import build
    from tests.conftest import REPO
    cfg, planned = pipeline.load(REPO / "pipelines" / "recipe.yaml", output_dir=str(tmp_path / "run"))
    stage = next(p for p in planned if p.spec.stage == "general_rl")
    follow = ThinkFollowConfig(**cfg.eval["think_follow"])
    asked = {t["prompt"] for p in suite(follow.kinds, follow.n, follow.seed, follow.max_turns) for t in p["turns"]}
    rows = build(stage.ctx, replace(stage.config, examples=800))
    users = {m["content"].removesuffix(" /no_think").removesuffix(" /think") for r in rows for m in r["prompt"]
             if m["role"] == "user"}
    assert len(users) > 400 and not users & asked
    assert json.loads((stage.ctx.dir / "general_rl_data.json").read_text())["dropped_as_eval"] > 0
