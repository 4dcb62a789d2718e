"""Stages 1, 2 and distillation run a few steps on CPU with tiny models and write loadable models."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain import pipeline
from posttrain.core.models import make_tiny_model
from posttrain.report.effects import effects
from tests.conftest import REPO, checkpoint_digest


def run_pipeline(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    cfg, planned = pipeline.load(path)
    return pipeline.run(cfg, planned), planned


def test_cold_start_builds_filtered_long_cot_data_and_trains(tmp_path, tiny_model):
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: cs
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: cold_start
            config:
              data: {{families: {{arithmetic: 10, linear: 10}}, no_cot_k: 1, validation_fraction: 0.2}}
              max_length: 256
              train: {{max_steps: 2, batch_size: 4}}
        """)
    stage = planned[0].ctx
    from datasets import load_from_disk
    data = load_from_disk(str(stage.data_dir / "train"))
    assert len(data) == 16 and len(load_from_disk(str(stage.data_dir / "validation"))) == 4
    turn = data[0]["messages"][-1]
    assert turn["role"] == "assistant" and turn["reasoning_content"] and "\\boxed{" in turn["content"]
    report = json.loads((stage.dir / "cold_start_data.json").read_text())
    assert set(report["response_rejections"]) == {"wrong_answer", "repetition", "guesswork",
                                                  "inconsistent_summary", "language_mixing", "eval_overlap"}
    assert {"unverifiable", "near_duplicate_of_eval", "solved_without_cot"} <= set(report["query_filters"])
    AutoModelForCausalLM.from_pretrained(stage.model_dir)
    assert json.loads((stage.dir / "COMPLETE").read_text())["metrics"]["global_step"] == 2


def test_reasoning_rl_runs_grpo_and_moves_the_weights(tmp_path, tiny_model, caplog):
    """GRPO on a reward with variance (completion length: a random model scores 0 on every math item,
    so every advantage would be 0 and nothing would train): the rewards are logged per step and
    the saved policy differs from the input model. The wide band keeps every query (selection is
    tested on its own in test_eval.py)."""
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: rl
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: reasoning_rl
            config:
              queries: {{families: {{arithmetic: 4, countdown: 2}}, k: 2, band: [-1.0, 2.0], max_new_tokens: 8}}
              rewards: {{math: [{{name: "tests.conftest:longer"}}], countdown: [{{name: "tests.conftest:longer"}}]}}
              num_generations: 4
              max_completion_length: 12
              train: {{max_steps: 2, batch_size: 4, learning_rate: 1.0e-3}}
        """)
    stage = planned[0].ctx
    selection = json.loads((stage.dir / "selection.json").read_text())
    assert selection["candidates"] == 6 and selection["kept"] == 6
    from posttrain.report.collect import scalars
    with caplog.at_level(logging.INFO):
        logged = scalars(stage.tb_dir)
    assert not [r for r in caplog.records if r.name.startswith("tensorboard")]  # no line per events file read
    assert len(logged["train/reward_std"]) == 2 and all(v > 0 for _, v in logged["train/reward_std"])
    routed = [f"train/routed/{task}/tests.conftest:longer" for task in ("math", "countdown")]
    assert sum(len(logged.get(tag, [])) for tag in routed) == 2  # one prompt per step, routed by its task
    assert checkpoint_digest(stage.model_dir) != checkpoint_digest(tiny_model)
    assert json.loads((stage.dir / "COMPLETE").read_text())["metrics"]["global_step"] == 2


def test_distill_builds_student_and_runs_both_phases(tmp_path, chat_jsonl):
    teacher = make_tiny_model(tmp_path / "teacher", layers=4)
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: ds
        model: {teacher}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: distill
            config:
              student: layers=2,mlp=32
              calibration: {chat_jsonl}
              prompts: {{families: {{arithmetic: 6}}}}
              off_policy: {{max_new_tokens: 8, filter_by_reward: false, min_examples: 12,
                           traces: {{families: {{arithmetic: 3}}}}, train: {{max_steps: 2, batch_size: 4}}}}
              on_policy: {{max_completion_length: 8, train: {{max_steps: 2, batch_size: 2}}}}
        """)
    stage = planned[0].ctx
    student = AutoModelForCausalLM.from_pretrained(stage.model_dir)
    assert student.config.num_hidden_layers == 2 and student.config.intermediate_size == 32
    s_tok, t_tok = AutoTokenizer.from_pretrained(stage.model_dir), AutoTokenizer.from_pretrained(teacher)
    assert s_tok.get_vocab() == t_tok.get_vocab() and s_tok.chat_template == t_tok.chat_template
    from datasets import load_from_disk
    off = load_from_disk(str(stage.dir / "off_policy" / "data" / "train"))
    assert sorted(set(off["mode"])) == ["no_think", "think"]
    assert all(m[0]["content"].endswith("/no_think" if mode == "no_think" else "/think")
               for m, mode in zip(off["messages"], off["mode"], strict=True))
    # the solver traces join the teacher's 12 answers: think mode, the worked solution in the think block
    traces = [m for m, source in zip(off["messages"], off["source"], strict=True) if source == "trace"]
    assert off["source"].count("teacher") == 12 and len(traces) == 3
    from data_builders.synthetic import generate
    expected = generate("arithmetic", 3, seed=6)
    for m, row in zip(traces, expected, strict=True):
        assert m[0]["content"].endswith("/think") and m[1]["reasoning_content"] == row["reasoning"]
        assert m[1]["content"].endswith(f"\\boxed{{{row['answer']}}}.")
    answers = [m for m, source in zip(off["messages"], off["source"], strict=True) if source == "teacher"]
    # the width cut is ranked on the teacher's answers (not the bare prompts, nor the traces), and on
    # the `calibration` conversations
    from stages.sft import load_messages
    from stages.student import calibration, importance
    init = AutoModelForCausalLM.from_pretrained(stage.dir / "student_init")
    gates = AutoModelForCausalLM.from_pretrained(teacher).model.layers

    def kept_by(conversations):
        ranked = importance(AutoModelForCausalLM.from_pretrained(teacher), calibration(t_tok, conversations),
                            mlp=True)[1]
        return [ranked[i].topk(32).indices.sort().values for i in (0, 3)]  # `even` keeps layers 0 and 3
    kept = kept_by(answers + list(load_messages(str(chat_jsonl))["messages"]))
    assert any(not torch.equal(a, b) for a, b in zip(kept, kept_by(answers), strict=True))
    for layer, source, rows in zip(init.model.layers, (gates[0], gates[3]), kept, strict=True):
        assert torch.equal(layer.mlp.gate_proj.weight, source.mlp.gate_proj.weight[rows])
    on = load_from_disk(str(stage.dir / "on_policy" / "data" / "prompts"))
    assert sorted(set(on["mode"])) == ["no_think", "think"]
    for phase in ("off_policy", "on_policy"):
        assert (stage.dir / phase / "COMPLETE").is_file()


@pytest.mark.parametrize("config,error,left", [
    # a teacher that does not know the prompts (a random model: every answer wrong) is an error naming
    # the count and the key, not 40 epochs of SFT on a handful of examples
    ("{student: layers=1, prompts: {families: {arithmetic: 6}}, off_policy: {max_new_tokens: 8, min_examples: 4}}",
     r"kept 0 of 12 answers .* off_policy.min_examples=4", "COMPLETE"),
    # a bad student spec fails before the teacher generates anything
    ('{student: "layers=1,mlp=999", prompts: {families: {arithmetic: 6}}}',
     r"'layers=1,mlp=999': mlp must be in", "data"),
    # so does calibration data that is not there
    ('{student: "layers=1,mlp=8", calibration: "@fusion", prompts: {families: {arithmetic: 6}}}',
     r"@fusion names no finished stage", "data"),
    ('{student: "layers=1,mlp=8", calibration: nowhere.jsonl, prompts: {families: {arithmetic: 6}}}',
     r"config.calibration: nowhere.jsonl: no training data at nowhere.jsonl", "data"),
    # and a trace family that does not exist
    ("{student: layers=1, prompts: {families: {arithmetic: 6}}, off_policy: {traces: {families: {sums: 4}}}}",
     r"config.off_policy.traces.families: unknown \['sums'\] \(known: arithmetic, ", "data"),
])
def test_distill_stops_with_a_clear_error(tmp_path, tiny_model, config, error, left):
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        run_pipeline(tmp_path, f"""
            name: ds
            model: {tiny_model}
            output_dir: {tmp_path / 'run'}
            stages:
              - stage: distill
                config: {config}
            """)
    assert not list((tmp_path / "run").glob(f"01_distill/**/{left}"))


def _stage_dir(run_dir, name: str, kind: str, finished_at: float | None) -> None:
    """A stage dir with a model, finished (COMPLETE) or not, listed in the run's pipeline.yaml."""
    from posttrain.core.rundir import write_json
    (run_dir / name / "model").mkdir(parents=True, exist_ok=True)
    (run_dir / name / "model" / "config.json").write_text("{}")
    if finished_at is not None:
        write_json(run_dir / name / "COMPLETE", {"finished_at": finished_at})
    stages = (run_dir / "pipeline.yaml").read_text() if (run_dir / "pipeline.yaml").is_file() else "stages:\n"
    if f"id: {name[3:]}}}" not in stages:
        (run_dir / "pipeline.yaml").write_text(stages + f"- {{stage: {kind}, id: {name[3:]}}}\n")


def test_distill_default_teacher_is_the_newest_runs_most_advanced_model(tmp_path, capsys):
    from posttrain.cli import main
    from posttrain.core.rundir import find_teacher
    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="no finished reasoning_rl, fusion or general_rl stage"):
        find_teacher(runs)
    _stage_dir(runs / "old", "02_reasoning_rl", "reasoning_rl", 100.0)
    _stage_dir(runs / "old", "03_fusion", "fusion", 200.0)
    _stage_dir(runs / "new", "01_cold_start", "cold_start", 250.0)
    _stage_dir(runs / "new", "02_rl", "reasoning_rl", 300.0)
    _stage_dir(runs / "new", "03_fusion", "fusion", None)  # started, not finished
    assert find_teacher(runs)[0] == str(runs / "new" / "02_rl" / "model")
    _stage_dir(runs / "new", "03_fusion", "fusion", 400.0)
    assert find_teacher(runs)[0] == str(runs / "new" / "03_fusion" / "model")
    assert main(["distill", "--runs-dir", str(runs), "--dry-run", "--output-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert f"teacher: {runs / 'new' / '03_fusion' / 'model'} (stage fusion of {runs / 'new'}" in out
    assert "pipeline distill-new-fusion" in out


@pytest.mark.parametrize("spec,error", [("layers=99", "layers must be in"), ("depth=2", "unknown or missing"),
                                        ("scratch:layers=1,hidden=7", "multiple of"),
                                        ("layers=2,pick=middle", "pick must be one of even, first, ends"),
                                        ("layers=2,mlp=999", r"mlp must be in 1\.\.128"),
                                        ("layers=2,mlp=8", "need calibration sequences"),
                                        ("layers=2,heads=2", "need calibration sequences"),
                                        ("layers=2,heads=3", "multiple of the 2 key/value heads"),
                                        ("scratch:layers=1,mlp=8", "unknown or missing keys"),
                                        ("layers=2,refit=1", "only with mlp=M"),
                                        ("layers=2,mlp=8,refit=3", "refit is 0, 1 or 2")])
def test_bad_student_specs(tmp_path, tiny_model, spec, error):
    from stages.student import build_student
    with pytest.raises(ValueError, match=error):
        build_student(tiny_model, spec, tmp_path / "s")


def test_distill_calibrates_every_pruned_student(tmp_path, tiny_model):
    """The stage ranks a heads-only (`heads=H`, no `mlp=`) student's heads on the teacher's answers too."""
    from types import SimpleNamespace

    from stages.distill import make_student
    talk = [[{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"{i + 1}."}]
            for i in range(4)]
    built = make_student(SimpleNamespace(dir=tmp_path), str(tiny_model), "layers=2,heads=2", talk, [])
    assert json.loads((Path(built) / "config.json").read_text())["num_attention_heads"] == 2


def _kl_to_teacher(student_dir, batch, expected):
    """The student at STUDENT_DIR and its KL to the teacher's log-probs EXPECTED on BATCH."""
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    with torch.inference_mode():
        logps = torch.log_softmax(student(batch).logits, -1)
    return student, torch.nn.functional.kl_div(logps, expected, log_target=True, reduction="batchmean").item()


def test_width_pruned_student_keeps_the_neurons_that_matter(tmp_path, tiny_model, monkeypatch):
    """`mlp=M` keeps each layer's M most active MLP neurons (on the calibration sequences): keeping
    all of them is the teacher exactly; in a teacher whose neurons 40..55 fire 8x harder, those are
    the ones kept, and they stay closer to the teacher than the M least active would."""
    from posttrain.core import models
    from posttrain.core.models import load_tokenizer
    from stages import student as students
    from stages.student import build_student, calibration
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model)
    loud = torch.arange(40, 56)
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.mlp.up_proj.weight[loud] *= 8
    tok = load_tokenizer(tiny_model)
    tiny_model = models.save(teacher, tok, tmp_path / "teacher")
    conversations = [[{"role": "user", "content": f"What is {i} + {i * 7}?"},
                      {"role": "assistant", "content": f"{i} + {i * 7} = {i * 8}."}] for i in range(12)]
    ids = calibration(tok, conversations)
    assert len(ids) == 12 and ids[0][-2] == tok.convert_tokens_to_ids("<|im_end|>")
    batch = torch.tensor([ids[0]])
    with torch.inference_mode():
        expected = torch.log_softmax(teacher(batch).logits, -1)

    def divergence(spec, name):
        return _kl_to_teacher(build_student(tiny_model, spec, tmp_path / name, ids), batch, expected)

    whole, none = divergence("layers=2,mlp=128", "all")
    assert none < 1e-6
    top, kept = divergence("layers=2,mlp=16", "top")
    assert top.config.intermediate_size == 16 and models.num_params(top) < models.num_params(whole)
    for student_layer, layer in zip(top.model.layers, teacher.model.layers, strict=True):
        assert torch.equal(student_layer.mlp.up_proj.weight, layer.mlp.up_proj.weight[loud])
        assert torch.equal(student_layer.mlp.down_proj.weight, layer.mlp.down_proj.weight[:, loud])
    importance = students.importance

    def reversed_neurons(model, seqs, heads=False, mlp=False):
        head_scores, mlp_scores = importance(model, seqs, heads=heads, mlp=mlp)
        return head_scores, [-s for s in mlp_scores]
    monkeypatch.setattr(students, "importance", reversed_neurons)
    _, dropped = divergence("layers=2,mlp=16", "bottom")
    print("KL to the teacher, 16 of 128 neurons kept: most active", kept, "least active", dropped)
    assert 0 < kept < dropped / 2


def test_heads_and_neurons_are_ranked_in_one_pass(tiny_model):
    """A `heads=H,mlp=M` student's heads and neurons are ranked in one pass over the calibration
    sequences, with the scores each ranking gives alone."""
    from posttrain.core.models import load_tokenizer
    from stages.student import calibration, importance
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = calibration(load_tokenizer(tiny_model), [[{"role": "user", "content": f"Add {i} and {i}."},
                                                    {"role": "assistant", "content": f"{2 * i}."}] for i in range(5)])
    passes = []
    teacher.model.register_forward_pre_hook(lambda module, args: passes.append(1))
    heads, neurons = importance(teacher, ids, heads=True, mlp=True)
    assert len(passes) == len(ids) == 5
    separate = importance(teacher, ids, heads=True)[0], importance(teacher, ids, mlp=True)[1]
    for both, alone in zip((heads, neurons), separate, strict=True):
        assert len(both) == teacher.config.num_hidden_layers
        assert all(torch.allclose(b, a) and (b > 0).all() for b, a in zip(both, alone, strict=True))
    assert importance(teacher, ids, mlp=True)[0] is None and importance(teacher, ids, heads=True)[1] is None


def test_head_pruned_student_keeps_the_heads_that_write_most_in_each_group(tmp_path, tiny_model):
    """`heads=H` keeps each layer's H attention heads that write the most to the residual stream, as
    many per key/value head: keeping all is the teacher exactly; in a teacher whose heads 1 and 2 (one
    in each of its two key/value groups) write 8x louder, those are kept, with their q_proj rows and
    o_proj columns, and they stay closer to the teacher than the quiet ones would."""
    from posttrain.core import models
    from posttrain.core.models import load_tokenizer
    from stages.student import build_student, calibration, keep_heads
    assert keep_heads(torch.tensor([0.1, 0.9, 0.8, 0.2, 0.5, 0.4]), n_kv=2, n=4).tolist() == [1, 2, 4, 5]
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = teacher.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    d = config.head_dim
    loud = torch.cat([torch.arange(h * d, (h + 1) * d) for h in (1, 2)])
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.self_attn.o_proj.weight[:, loud] *= 8
    tok = load_tokenizer(tiny_model)
    tiny_model = models.save(teacher, tok, tmp_path / "teacher")
    conversations = [[{"role": "user", "content": f"What is {i} + {i * 7}?"},
                      {"role": "assistant", "content": f"{i} + {i * 7} = {i * 8}."}] for i in range(12)]
    ids = calibration(tok, conversations)
    batch = torch.tensor([ids[0]])
    with torch.inference_mode():
        expected = torch.log_softmax(teacher(batch).logits, -1)
    whole, none = _kl_to_teacher(build_student(tiny_model, "layers=2,heads=4", tmp_path / "all", ids), batch, expected)
    assert none < 1e-6
    half, kept = _kl_to_teacher(build_student(tiny_model, "layers=2,heads=2", tmp_path / "half", ids), batch, expected)
    assert half.config.num_attention_heads == 2 and half.config.head_dim == d
    assert models.num_params(half) == models.num_params(whole) - 2 * 2 * d * config.hidden_size * 2  # q rows, o cols
    for student_layer, layer in zip(half.model.layers, teacher.model.layers, strict=True):
        assert torch.equal(student_layer.self_attn.q_proj.weight, layer.self_attn.q_proj.weight[loud])
        assert torch.equal(student_layer.self_attn.o_proj.weight, layer.self_attn.o_proj.weight[:, loud])
        assert torch.equal(student_layer.self_attn.k_proj.weight, layer.self_attn.k_proj.weight)
    quiet = build_student(tiny_model, "layers=2,heads=2", tmp_path / "quiet", ids)
    quiet_model = AutoModelForCausalLM.from_pretrained(quiet)
    quiet_idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in (0, 3)])
    with torch.no_grad():  # the same student shape with the quiet heads instead
        for student_layer, layer in zip(quiet_model.model.layers, teacher.model.layers, strict=True):
            student_layer.self_attn.q_proj.weight.copy_(layer.self_attn.q_proj.weight[quiet_idx])
            student_layer.self_attn.o_proj.weight.copy_(layer.self_attn.o_proj.weight[:, quiet_idx])
        logps = torch.log_softmax(quiet_model(batch).logits, -1)
    dropped = torch.nn.functional.kl_div(logps, expected, log_target=True, reduction="batchmean").item()
    print("KL to the teacher, 2 of 4 heads kept: loudest", kept, "quiet", dropped)
    assert 0 < kept < dropped


def test_refit_width_pruned_student_stays_closer_to_the_teacher(tmp_path, tiny_model):
    """`refit=1` refits each kept down_proj to the whole MLP's output: the pruned MLP's output error on
    the calibration tokens is below plain pruning's (least squares over those same columns), and the
    student's KL to the teacher on a held-out sequence falls too."""
    from posttrain.core.models import load_tokenizer
    from stages.student import build_student, calibration, importance, refit_down
    tok = load_tokenizer(tiny_model)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model)
    talk = [[{"role": "user", "content": f"What is {i} + {i * 7}?"},
             {"role": "assistant", "content": f"{i} + {i * 7} = {i * 8}."}] for i in range(40)]
    ids, held_out = calibration(tok, talk[:32]), calibration(tok, talk[32:])
    neurons = [s.topk(16).indices.sort().values for s in importance(teacher, ids, mlp=True)[1]]
    refit = refit_down(teacher, ids, neurons)
    mlp, kept = teacher.model.layers[0].mlp, neurons[0]
    inputs = []
    hook = mlp.down_proj.register_forward_hook(lambda _m, i, o: inputs.append((i[0][0], o[0])))
    with torch.inference_mode():
        for seq in ids:
            teacher(torch.tensor([seq]))
    hook.remove()
    acts, target = torch.cat([a for a, _ in inputs]), torch.cat([o for _, o in inputs])
    plain_err = (acts[:, kept] @ mlp.down_proj.weight[:, kept].T - target).pow(2).mean()
    refit_err = (acts[:, kept] @ refit[0].T - target).pow(2).mean()
    print("layer 0 MLP output MSE, 16 of 128 neurons: plain", plain_err.item(), "refit", refit_err.item())
    assert refit[0].shape == (mlp.down_proj.out_features, 16) and refit_err < 0.75 * plain_err

    batch = torch.tensor([held_out[0]])
    with torch.inference_mode():
        expected = torch.log_softmax(teacher(batch).logits, -1)

    def divergence(spec, name):
        return _kl_to_teacher(build_student(tiny_model, spec, tmp_path / name, ids), batch, expected)[1]
    plain, fitted = divergence("layers=2,mlp=16", "plain"), divergence("layers=2,mlp=16,refit=1", "refit")
    print("held-out KL to the teacher: plain", plain, "refit", fitted)
    assert fitted < plain


def test_sequential_refit_follows_the_teachers_stream(tmp_path, tiny_model):
    """`refit=2` fits each down_proj, layer after layer, on the student's own inputs to the teacher's
    residual stream. With every neuron kept it reproduces the teacher (so the layer-by-layer stepping is
    the model's forward); width-pruned, the student's last hidden state on the calibration
    tokens and its KL to the teacher on a held-out sequence are both below `refit=1`'s."""
    from posttrain.core.models import load_tokenizer
    from stages.student import build_student, calibration
    tok = load_tokenizer(tiny_model)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model)
    talk = [[{"role": "user", "content": f"What is {i} + {i * 7}?"},
             {"role": "assistant", "content": f"{i} + {i * 7} = {i * 8}."}] for i in range(40)]
    ids, held_out = calibration(tok, talk[:32]), calibration(tok, talk[32:])
    width = teacher.config.intermediate_size
    whole = AutoModelForCausalLM.from_pretrained(build_student(tiny_model, f"layers=2,mlp={width},refit=2",
                                                               tmp_path / "whole", ids))

    def stream_error(model):  # mean squared error of the last hidden state on the calibration tokens
        with torch.inference_mode():
            return sum((model.model(torch.tensor([seq])).last_hidden_state
                        - teacher.model(torch.tensor([seq])).last_hidden_state).pow(2).mean().item() for seq in ids)
    with torch.inference_mode():
        scale = sum(teacher.model(torch.tensor([seq])).last_hidden_state.pow(2).mean().item() for seq in ids)
    print("every neuron kept: stream error", stream_error(whole), "of the stream's", scale)
    assert stream_error(whole) < 1e-4 * scale
    batch = torch.tensor([held_out[0]])
    with torch.inference_mode():
        expected = torch.log_softmax(teacher(batch).logits, -1)
    found = {}
    for refit in (1, 2):
        student, kl = _kl_to_teacher(build_student(tiny_model, f"layers=2,mlp=16,refit={refit}",
                                                   tmp_path / f"refit{refit}", ids), batch, expected)
        found[refit] = stream_error(student), kl
    print("calibration stream error, held-out KL: refit=1", found[1], "refit=2", found[2])
    assert found[2][0] < found[1][0] and found[2][1] < found[1][1]


@pytest.mark.parametrize("lora", ["null", "{r: 8, alpha: 16, dropout: 0.0}"], ids=["full", "lora"])
def test_reward_model_stage_ranks_heldout_pairs(tmp_path, tiny_model, lora):
    """The reward-model stage builds its trainer like every stage (so LoRA works, and is merged on save:
    the model dir is a plain sequence classifier) and ranks held-out pairs."""
    rows = []
    for i in range(40):
        rows.append({"prompt": [{"role": "user", "content": f"Question {i}?"}],
                     "chosen": [{"role": "assistant", "content": f"A clear, correct answer number {i}."}],
                     "rejected": [{"role": "assistant", "content": "zzz qqq xxx zzz qqq xxx"}]})
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: rm
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: reward_model
            eval: false
            config: {{data: {data}, heldout_fraction: 0.25,
                      train: {{max_steps: 15, batch_size: 8, learning_rate: 1.0e-3, lora: {lora}}}}}
        """)
    metrics = json.loads((planned[0].ctx.dir / "reward_model.json").read_text())
    print("held-out ranking accuracy", metrics["heldout_accuracy"])
    assert metrics["pairs"] == 30 and metrics["heldout_accuracy"] > 0.6
    model_dir = planned[0].ctx.model_dir
    assert not list(model_dir.glob("adapter_*"))
    from transformers import AutoModelForSequenceClassification
    assert AutoModelForSequenceClassification.from_pretrained(model_dir).config.num_labels == 1


def test_judge_stage_trains_a_yes_no_verifier_and_measures_it_on_held_out_verdicts(tmp_path, tiny_model):
    """The judge stage: SFT on the verdicts it builds (Yes/No after the empty think block, as the judge
    reward reads P(Yes) in no-think mode), then accuracy and ROC AUC of P(Yes) on held-out verdicts,
    which report.json's effect line shows."""
    from posttrain.core.generation import TransformersEngine
    from posttrain.core.stats import roc_auc
    from tests.conftest import REPO
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: j
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        stages:
          - stage: judge
            eval: false
            config:
              verdicts: {{tasks: {REPO / 'pipelines' / 'tasks_recipe.yaml'}, kinds: [judged_qa], n: 40}}
              held_out: 4
              heldout_fraction: 0.25
              train: {{max_steps: 6, batch_size: 8, learning_rate: 1.0e-3}}
        """)
    ctx = planned[0].ctx
    data = json.loads((ctx.dir / "judge_data.json").read_text())
    metrics = json.loads((ctx.dir / "judge.json").read_text())
    assert data["judged_qa/yes"] == data["judged_qa/no"] and data["verdicts"] == 2 * data["judged_qa/yes"]
    from datasets import load_from_disk
    verdicts = load_from_disk(str(ctx.data_dir / "train"))
    held = verdicts.train_test_split(test_size=0.25, seed=ctx.seed)["test"]
    assert metrics["heldout_verdicts"] == len(held) > 0
    probs = TransformersEngine.load(str(ctx.model_dir)).option_probs([m[:1] for m in held["messages"]],
                                                                    ["Yes", "No"], mode="no_think")
    assert metrics["heldout_auc"] == pytest.approx(roc_auc([p[0] for p in probs], held["label"]))
    assert metrics["heldout_accuracy"] == pytest.approx(
        sum((p[0] >= 0.5) == y for p, y in zip(probs, held["label"], strict=True)) / len(held))
    report = json.loads((run_dir / "report.json").read_text())
    assert effects(report) == [f"judge: held-out verdict accuracy {metrics['heldout_accuracy']:.3f}, "
                               f"ROC AUC {metrics['heldout_auc']:.3f}"]


def test_on_policy_distillation_scores_the_students_exact_tokens_up_to_end_of_turn(tmp_path):
    """The on-policy defects to rule out: the student must sample each mode as the evaluation does
    (a no-think prompt prefilled with the empty think block: left to the flag, a stage-2 teacher
    pulled no-think answers into long thinking), teacher and student must score the same ids, and a
    sample that ends early must carry its end-of-turn token into the loss, with nothing after it."""
    from posttrain.core.context import StageContext
    from posttrain.core.generation import GenerationEngine
    from posttrain.core.models import load_tokenizer
    from posttrain.core.training import TrainOptions
    from stages.distill import Config, OnPolicy, Prompts, on_policy_prompts, on_policy_trainer
    from stages.student import build_student
    teacher = make_tiny_model(tmp_path / "teacher", layers=2)
    student = build_student(teacher, "layers=1", tmp_path / "student")
    tok = load_tokenizer(student)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    ctx = StageContext(stage_id="distill", dir=tmp_path / "stage", input_model=str(student))
    prompts = on_policy_prompts(ctx, Config(prompts=Prompts(families={"arithmetic": 6})))
    assert sorted(set(prompts["mode"])) == ["no_think", "think"]
    # A strong bias on end-of-turn makes random-model samples end at varied lengths before the cap.
    cfg = OnPolicy(max_completion_length=12, train=TrainOptions(
        max_steps=1, batch_size=6, trainer={"generation_kwargs": {"sequence_bias": [[[eot], 10.0]]}}))
    trainer = on_policy_trainer(ctx, str(teacher), cfg, prompts)
    assert eot in trainer.eos_token_ids
    seen = {"student": [], "teacher": []}  # the student's calls: sampling first, then the loss forward
    for name, model in (("student", trainer.model), ("teacher", trainer.teacher_model)):
        model.model.register_forward_hook(
            lambda module, args, kwargs, out, name=name: seen[name].append(kwargs["input_ids"].clone()),
            with_kwargs=True)
    batches = []
    compute = trainer._compute_loss
    trainer._compute_loss = lambda student, inputs, n: batches.append(inputs) or compute(student, inputs, n)
    trainer.train()
    n = len(batches)  # the step's micro-batches (`micro_batch_size`), each scored by both models
    assert n == len(seen["teacher"]) >= 1
    assert all(torch.equal(s, t) for s, t in zip(seen["student"][-n:], seen["teacher"], strict=True))
    engine = GenerationEngine(tok)
    rendered = {tuple(engine.render(m, mode)): mode for m, mode in zip(prompts["messages"], prompts["mode"],
                                                                         strict=True)}
    ends, ended = {"think": "<|im_start|>assistant\n", "no_think": "<|im_start|>assistant\n<think>\n\n</think>\n\n"}, 0
    rows = [row for inputs in batches for row in zip(
        inputs["completion_ids"].tolist(), inputs["completion_mask"].tolist(), inputs["prompt_ids"].tolist(),
        inputs["prompt_mask"].tolist(), strict=True)]
    assert len(rows) == 6
    for row, row_mask, prompt, prompt_mask in rows:
        prompt = tuple(t for t, m in zip(prompt, prompt_mask, strict=True) if m)
        assert prompt in rendered and tok.decode(prompt).endswith(ends[rendered[prompt]])
        length = sum(row_mask)
        assert row_mask == [1] * length + [0] * (len(row_mask) - length)
        if eot in row[:length]:
            ended += 1
            assert row.index(eot) == length - 1  # the end-of-turn token is the last one in the loss
    assert ended and any(sum(row_mask) < 12 for _, row_mask, _, _ in rows)


def test_compared_stages_get_accuracy_against_cpu_seconds_curves(tmp_path, tiny_model):
    """Table 21's shape: each compared branch is scored at evenly spaced points of its training, each
    point with the CPU seconds spent to reach it; report.md carries the table and the plot."""
    run_dir, planned = run_pipeline(tmp_path, f"""
        name: t21
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        compare: [rl, distill]
        compare_points: 3
        eval: {{suites: {{lin: {{family: linear, n: 2}}}}, modes: [think, no_think], samples: 2, pass_k: [1, 2],
                max_new_tokens: 8}}
        stages:
          - stage: reasoning_rl
            id: rl
            eval: false
            config:
              queries: {{families: {{arithmetic: 4}}, k: 2, band: [-1.0, 2.0], max_new_tokens: 8}}
              num_generations: 2
              max_completion_length: 8
              train: {{max_steps: 3, batch_size: 4}}
          - stage: distill
            model: "@base"
            config:
              student: "@rl"
              prompts: {{families: {{arithmetic: 4}}}}
              off_policy: {{enabled: false}}
              on_policy: {{max_completion_length: 8, train: {{max_steps: 3, batch_size: 2}}}}
        """)
    for p in planned:
        curve = json.loads((p.ctx.dir / "curve" / "curve.json").read_text())
        assert [c["step"] for c in curve] == [1, 2, 3] and curve[-1]["model"] == str(p.ctx.model_dir)
        cpu = [c["cpu_time_s"] for c in curve]
        assert cpu == sorted(cpu) and cpu[0] > 0
        assert all(c["suites"]["lin"]["think"]["samples"] == 2 for c in curve)
        assert not any(Path(c["model"]).exists() for c in curve[:-1])  # snapshot weights removed once scored
    report = (run_dir / "report.md").read_text()
    assert "| lin pass@1 | lin pass@k | lin no-think | lin length | lin truncated |" in report
    assert "| rl | 2 | " in report and "| distill | 3 | " in report
    assert (run_dir / "plots" / "compute_curve.png").is_file() and "plots/compute_curve.png" in report
    assert "- rl: not evaluated (`eval: false` for this stage)" in report
    # every accuracy in report.md's evaluation table is report.json's, row by row
    data = json.loads((run_dir / "report.json").read_text())
    models = {"base": data["base"]["eval"], **{s["id"]: s["eval"] for s in data["stages"] if s["eval"]}}
    table = report.split("## Evaluation")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    checked = 0
    for model, suite, mode, acc, *_ in rows[1:]:
        r = models[model]["suites"][suite][mode]
        assert acc == f"{r['accuracy']:.3f} ± {r['accuracy_se']:.3f}"
        checked += 1
    assert checked == 4  # base and distill, in both modes


@pytest.mark.slow
def test_demo_on_a_tiny_model_reports_every_stage_with_its_data_and_plots(tmp_path, tiny_model):
    """pipelines/demo.yaml, every stage kind, shrunk to a tiny model: report.md has each stage's data
    counts and training curves, and every plot it names exists."""
    run_dir, planned = run_pipeline(tmp_path, f"""
        defaults: {REPO / 'pipelines' / 'demo.yaml'}
        model: {tiny_model}
        output_dir: {tmp_path / 'run'}
        eval:
          suites: {{arithmetic: {{n: 2}}, linear: {{n: 2}}, arithmetic_128: {{n: 2}}, linear_128: {{n: 2}}}}
          max_new_tokens: 6
          think_follow: {{n: 2, max_new_tokens: 6}}
          tasks: {{n: 1, max_new_tokens: 6}}
        budget_curve: {{budgets: [2]}}
        stages:
          - id: cold_start
            config: {{data: {{families: {{arithmetic: 6, linear: 6}}}}, train: {{max_steps: 1, batch_size: 2}}}}
          - id: reasoning_rl
            config: {{queries: {{families: {{arithmetic: 4, linear: 4}}, band: [-1.0, 2.0], max_new_tokens: 6}},
                      num_generations: 2, max_completion_length: 6, train: {{max_steps: 1, batch_size: 4}}}}
          - id: fusion
            config: {{data: {{examples: 12, direct_families: {{arithmetic: 4, linear: 4}}}},
                      train: {{max_steps: 1, batch_size: 2}}}}
          - id: reward_model
            config: {{pairs: {{n: 10}}, train: {{max_steps: 1, batch_size: 2}}}}
          - id: general_rl
            config: {{examples: 12, held_out: 1, max_completion_length: 6, train: {{max_steps: 1, batch_size: 4}}}}
          - id: distill
            config: {{student: "layers=1,heads=2,mlp=16,refit=2", prompts: {{families: {{arithmetic: 4, linear: 4}}}},
                      off_policy: {{max_new_tokens: 6, filter_by_reward: false, min_examples: 1,
                                    traces: {{families: {{arithmetic: 2, linear: 2}}}},
                                    train: {{max_steps: 1, batch_size: 2}}}},
                      on_policy: {{max_completion_length: 6, train: {{max_steps: 1, batch_size: 2}}}}}}
        """)
    # the demo's student: heads and MLP pruned, calibrated on the teacher's answers and its fusion data (`@fusion`)
    student = json.loads((run_dir / "06_distill" / "student_init" / "config.json").read_text())
    assert (student["intermediate_size"], student["num_attention_heads"]) == (16, 2)
    report = (run_dir / "report.md").read_text()
    # report.md opens with each stage's effect in one line, computed from report.json (as the terminal prints)
    lines = effects(json.loads((run_dir / "report.json").read_text()))
    assert [line.split(":")[0] for line in lines] == [p.ctx.stage_id for p in planned]
    assert report.splitlines()[2:2 + len(lines)] == [f"- {line}" for line in lines]
    assert "think accuracy arithmetic" in lines[0] and "ThinkFollow" in lines[2] and "training reward" in lines[4]
    data = report.split("## Data")[1].split("\n## ")[0]
    for sid, name in [("cold_start", "cold_start_data.json"), ("reasoning_rl", "selection.json"),
                      ("fusion", "fusion_data.json"), ("reward_model", "pairs.json"),
                      ("general_rl", "general_rl_data.json"), ("distill", "off_policy/metrics.json")]:
        assert f"- **{sid}** (`{name}`): " in data, sid
    assert "response_rejections (wrong_answer 0" in data and "histogram (0.00 " in data
    for name in ("cold_start", "reasoning_rl", "fusion", "reward_model", "general_rl", "distill_off_policy",
                 "distill_on_policy"):  # a multi-phase stage: curves per phase
        assert f"plots/{name}_training.png" in report, name
    assert "plots/general_rl_rewards.png" in report and "plots/reasoning_rl_query_pass_rates.png" in report
    plots = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert plots and all((run_dir / p).is_file() for p in plots)
    evals = {p.ctx.stage_id: json.loads((p.ctx.dir / "eval.json").read_text()) for p in planned if p.spec.eval}
    assert "think_follow" in evals["fusion"] and "think_follow" not in evals["distill"]  # eval.think_follow.models
    assert "tasks" in evals["general_rl"] and "tasks" not in evals["cold_start"]
    # eval.mode_models: the suites in no-think mode for the fused model only; the task kinds in both modes
    assert [set(evals[m]["suites"]["arithmetic"]) for m in ("cold_start", "fusion")] == [
        {"think"}, {"think", "no_think"}]
    # suites.NAME.models: the teacher and the student on the larger suites, the student on those only
    assert set(evals["distill"]["suites"]) == {"arithmetic_128", "linear_128"} < set(evals["general_rl"]["suites"])
    assert json.loads((run_dir / "06_distill" / "off_policy" / "metrics.json").read_text())["off_policy_traces"] == 4
    assert {"think", "no_think"} <= {m for r in evals["general_rl"]["tasks"]["scores"].values() for m in r}


def test_grpo_with_fewer_prompts_than_one_step_stops_with_a_clear_error(tmp_path, tiny_model):
    """TRL runs zero steps on a dataset shorter than one batch and calls the stage done; the demo's first
    draft did that with 1 learnable query."""
    with pytest.raises(ValueError, match=r"rl: 1 training prompt\(s\), fewer than the 2 that one GRPO step"):
        run_pipeline(tmp_path, f"""
            name: few
            model: {tiny_model}
            output_dir: {tmp_path / 'run'}
            stages:
              - stage: reasoning_rl
                id: rl
                config:
                  queries: {{families: {{arithmetic: 1}}, k: 2, band: [-1.0, 2.0], max_new_tokens: 4}}
                  num_generations: 2
                  max_completion_length: 4
                  train: {{max_steps: 2, batch_size: 4}}
            """)
    assert not (tmp_path / "run" / "01_rl" / "COMPLETE").exists()


def test_grpo_is_configured_as_the_stage_config_says(tmp_path, tiny_model):
    """The GRPO trainer the RL stages build: loss, KL, clipping, entropy control, off-policy reuse and the
    rollouts' sampling from the stage config; by default DAPO with clip-higher, no KL, and the report's
    thinking-mode sampling (T 0.6, top-p 0.95, top-k 20)."""
    from datasets import Dataset

    from posttrain.core.config import from_dict
    from posttrain.core.context import StageContext
    from posttrain.core.training import grpo_trainer
    from stages.reasoning_rl import Config, reward_function
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"q{i}"}], "task": "math", "answer": "1"}
                              for i in range(8)])
    ctx = StageContext(stage_id="rl", dir=tmp_path / "rl", input_model=str(tiny_model))
    queries = {"families": {"arithmetic": 2}}
    default = from_dict(Config, {"queries": queries}, "rl")
    trainer = grpo_trainer(ctx, default, data, [reward_function(default)], "rl.train")
    assert (trainer.loss_type, trainer.beta, trainer.epsilon_low, trainer.epsilon_high) == ("dapo", 0.0, 0.2, 0.28)
    assert (trainer.temperature, trainer.top_p, trainer.top_k) == (0.6, 0.95, 20)
    assert (trainer.generation_config.temperature, trainer.generation_config.top_p,
            trainer.generation_config.top_k) == (0.6, 0.95, 20)
    assert trainer.entropy_coef == 0.0 and trainer.num_iterations == 1 and trainer.ref_model is None
    chosen = from_dict(Config, {
        "queries": queries, "loss_type": "dr_grpo", "beta": 0.04, "epsilon_high": 0.3, "num_iterations": 2,
        "num_generations": 2, "temperature": 1.0, "top_p": 0.9, "top_k": 5, "entropy_coef": 0.01,
        "use_adaptive_entropy": True, "entropy_target": 0.5,
        "train": {"batch_size": 4, "learning_rate": 3.0e-6, "trainer": {"epsilon": 0.1}}}, "rl")
    trainer = grpo_trainer(ctx, chosen, data, [reward_function(chosen)], "rl.train")
    assert (trainer.loss_type, trainer.beta, trainer.epsilon_low, trainer.epsilon_high) == ("dr_grpo", 0.04, 0.1, 0.3)
    assert (trainer.num_iterations, trainer.num_generations, trainer.args.learning_rate) == (2, 2, 3e-6)
    assert (trainer.generation_config.temperature, trainer.generation_config.top_p,
            trainer.generation_config.top_k) == (1.0, 0.9, 5)
    assert (trainer.entropy_coef, trainer.args.use_adaptive_entropy, trainer.args.entropy_target) == (0.01, True, 0.5)
    assert trainer.ref_model is not None  # beta > 0 keeps the reference model for the KL term


def test_on_policy_teacher_runs_in_the_runs_precision(tmp_path, tiny_model):
    """The teacher only scores: its weights take the trainer's precision (bf16 where bf16 matmuls are
    native), while the student's stay float32 under autocast."""
    from posttrain.core.context import StageContext
    from posttrain.core.models import fast_bf16
    from posttrain.core.training import TrainOptions
    from stages.distill import Config, OnPolicy, Prompts, on_policy_prompts, on_policy_trainer
    ctx = StageContext(stage_id="distill", dir=tmp_path / "stage", input_model=str(tiny_model))
    prompts = on_policy_prompts(ctx, Config(prompts=Prompts(families={"arithmetic": 2})))
    trainer = on_policy_trainer(ctx, str(tiny_model), OnPolicy(train=TrainOptions(max_steps=1, batch_size=2)), prompts)
    assert trainer.args.bf16 == fast_bf16()
    assert trainer.teacher_model.dtype == (torch.bfloat16 if fast_bf16() else torch.float32)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_on_policy_distillation_minimises_the_divergence_it_names(tmp_path, divergence):
    """The loss of the stage's DistillationTrainer on a fixed batch is the named divergence of the
    student's next-token distribution from the teacher's, averaged over completion tokens: reverse KL
    is KL(student || teacher) (mode-seeking, the report's choice), forward KL is KL(teacher || student)."""
    from posttrain.core.context import StageContext
    from posttrain.core.training import TrainOptions
    from stages.distill import Config, OnPolicy, Prompts, on_policy_prompts, on_policy_trainer
    teacher = make_tiny_model(tmp_path / "teacher", layers=2, seed=1)
    student = make_tiny_model(tmp_path / "student", layers=1, seed=2)
    ctx = StageContext(stage_id="distill", dir=tmp_path / "stage", input_model=str(student))
    prompts = on_policy_prompts(ctx, Config(prompts=Prompts(families={"arithmetic": 2})))
    cfg = OnPolicy(divergence=divergence, max_completion_length=6,  # float32 (the teacher too): an exact check
                   train=TrainOptions(max_steps=1, batch_size=2, trainer={"bf16": False}))
    trainer = on_policy_trainer(ctx, str(teacher), cfg, prompts)
    assert trainer.teacher_model.dtype == torch.float32
    with torch.no_grad():  # peaked, unlike distributions (random tiny models are near uniform: all KLs ~equal)
        for model, scale in ((trainer.model, 10.0), (trainer.teacher_model, 40.0)):
            model.get_output_embeddings().weight.mul_(scale)
    g = torch.Generator().manual_seed(0)
    prompt, completion = torch.randint(0, 49152, (2, 5), generator=g), torch.randint(0, 49152, (2, 4), generator=g)
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": completion_mask}
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, inputs, None)[0]
        ids = torch.cat([prompt, completion], 1)
        s, t = (torch.log_softmax(m(ids).logits[:, 4:-1].float(), -1) for m in (trainer.model, trainer.teacher_model))
    kl = {"reverse_kl": (s.exp() * (s - t)).sum(-1), "forward_kl": (t.exp() * (t - s)).sum(-1)}
    mixture = torch.logsumexp(torch.stack([s, t]) + torch.tensor(0.5).log(), 0)
    kl["jsd"] = 0.5 * (s.exp() * (s - mixture)).sum(-1) + 0.5 * (t.exp() * (t - mixture)).sum(-1)
    expected = {k: (v * completion_mask).sum() / completion_mask.sum() for k, v in kl.items()}
    print({k: round(v.item(), 4) for k, v in expected.items()}, "loss", loss.item())
    assert loss.item() == pytest.approx(expected[divergence].item(), rel=1e-4)
    assert all(abs(v.item() - loss.item()) > 0.1 * loss.item() for k, v in expected.items() if k != divergence)


def test_lora_trains_adapters_and_saves_a_merged_model_that_reloads(tmp_path, tiny_model, chat_jsonl):
    """SFT with LoRA: only the adapters train; the saved model is a plain model dir (merged, no
    adapter files) whose outputs are the adapted model's, and the base weights LoRA leaves alone
    (the embeddings) are unchanged."""
    from posttrain.core.context import StageContext
    from posttrain.core.training import LoraOptions, TrainOptions, finish, sft_trainer, train
    from stages.sft import load_messages
    ctx = StageContext(stage_id="lora", dir=tmp_path / "lora", input_model=str(tiny_model))
    options = TrainOptions(max_steps=3, batch_size=4, learning_rate=1e-2, lora=LoraOptions(r=4, alpha=8, dropout=0.0),
                           trainer={"bf16": False})  # float32: accelerate's autocast would round `adapted` below
    trainer = sft_trainer(ctx, load_messages(str(chat_jsonl)), options, "train", max_length=64)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    train(ctx, trainer)
    assert trainer.state.global_step == 3
    ids = torch.tensor([trainer.processing_class.encode("What is 3 + 3? The answer is 6.")])
    with torch.no_grad():
        adapted = trainer.model.eval()(ids).logits
    finish(ctx, trainer, trainer.processing_class)
    assert not list(ctx.model_dir.glob("adapter_*")) and (ctx.model_dir / "model.safetensors").is_file()
    saved, base = (AutoModelForCausalLM.from_pretrained(p) for p in (ctx.model_dir, tiny_model))
    with torch.no_grad():
        assert torch.allclose(saved(ids).logits, adapted, atol=1e-4)
        assert not torch.allclose(base(ids).logits, adapted, atol=1e-3)
    assert torch.equal(saved.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not torch.equal(saved.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)


def test_judge_and_reward_model_score_their_rows_inside_a_grpo_step(tmp_path, tiny_model, monkeypatch):
    """One GRPO step over a batch mixing a judged kind and a preference kind: the routed reward sends
    each row to its kind's model-based reward (the judge sees the reference), their scores are those
    the same rewards give on their own, and each kind's mean is logged."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    import rewards
    from posttrain.core.context import StageContext
    from posttrain.core.models import load_tokenizer
    from posttrain.core.training import GRPOOptions, TrainOptions, grpo_trainer
    from rewards.judge import JudgeReward
    from rewards.preference import PreferenceReward
    rm_dir, tok = tmp_path / "rm", load_tokenizer(tiny_model)
    head = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)  # a random head: varied
    head.config.pad_token_id = tok.pad_token_id
    head.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    seen = []
    for cls in (JudgeReward, PreferenceReward):
        def spy(self, completions, _call=cls.__call__, **columns):
            scores = _call(self, completions, **columns)
            kept = {k: v for k, v in columns.items() if k in ("task", "reference", "prompts")}  # TRL's `prompts`
            seen.append((self.name, list(completions), kept, scores))
            return scores
        monkeypatch.setattr(cls, "__call__", spy)
    table = {"graded": [{"name": "judge", "params": {"model": str(tiny_model), "verdict": "yes_no"}}],
             "liked": [{"name": "preference", "params": {"model": str(rm_dir)}}]}
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "task": task,
             "reference": str(2 * i) if task == "graded" else ""} for i, task in enumerate(["graded", "liked"] * 2)]
    ctx = StageContext(stage_id="rl", dir=tmp_path / "rl", input_model=str(tiny_model))
    options = GRPOOptions(num_generations=2, max_completion_length=6,
                          train=TrainOptions(max_steps=1, batch_size=8, learning_rate=1e-4))
    trainer = grpo_trainer(ctx, options, Dataset.from_list(rows), [rewards.get("routed", table=table)], "train")
    trainer.train()
    in_step, logged = list(seen), trainer.state.log_history[0]
    assert [name for name, *_ in in_step] == ["judge", "preference"]
    for name, completions, columns, scores in in_step:
        task = "graded" if name == "judge" else "liked"
        assert len(completions) == 4 and columns["task"] == [task] * 4  # its kind's 2 prompts x 2 rollouts
        assert {p[-1]["content"] for p in columns["prompts"]} == {r["prompt"][0]["content"] for r in rows
                                                                  if r["task"] == task}
        if name == "judge":
            assert sorted(set(columns["reference"])) == ["0", "4"]
            assert all(0.0 < s < 1.0 for s in scores)  # P(Yes) of a random model: strictly graded
        fresh = rewards.get(name, **table[task][0]["params"])
        assert fresh(completions, **columns) == pytest.approx(scores, abs=1e-5)
        assert len(set(scores)) > 1
        assert logged[f"routed/{task}/{name}"] == pytest.approx(sum(scores) / 4, abs=1e-5)
