"""Students for strong-to-weak distillation (report §4.5), built from the teacher they learn from.

A spec keeps N of the teacher's layers (`layers=N[,pick=even|first|ends]`), optionally only the H
attention heads of each that write the most to the residual stream (`heads=H`, the same number in
every key/value group) and the M MLP neurons most active on the teacher's answers (`mlp=M`: width pruning as Minitron
does it; `refit=1` then refits each kept `down_proj` by least squares to the whole MLP's output, so
the pruned layer reproduces what it can of the teacher's; `refit=2` refits them layer after layer on
the student's own inputs to the teacher's residual stream, so each also corrects the layers before
it), or builds a smaller random model of the same architecture (`scratch:layers=N[,hidden=H]`).
The student always shares the teacher's tokenizer and chat format.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from posttrain.core.chat import TRAINING_CHAT_TEMPLATE
from posttrain.core.models import num_params, params_on_disk, resolve_model, save

# which N of the teacher's T layers a `layers=N` student keeps
PICKS = {
    "even": lambda n, t: [round(i * (t - 1) / max(1, n - 1)) for i in range(n)],
    "first": lambda n, t: [*range(n - 1), t - 1] if n > 1 else [t - 1],
    "ends": lambda n, t: [*range((n + 1) // 2), *range(t - n // 2, t)],
}


def calibration(tokenizer, conversations, n: int = 128) -> list[list[int]]:
    """Token ids of up to N conversations spread over CONVERSATIONS, rendered as SFT trains on them
    (the sequences `importance` ranks heads and neurons on)."""
    conversations = list(conversations)
    return [tokenizer.apply_chat_template(m, chat_template=TRAINING_CHAT_TEMPLATE, return_dict=True,
                                          add_generation_prompt=m[-1]["role"] != "assistant")["input_ids"]
            for m in conversations[::max(1, len(conversations) // n)][:n]]


def _watch(model: PreTrainedModel, calibration: list[list[int]], watchers) -> None:
    """Run the calibration sequences through MODEL once; for each `(module, record)` of WATCHERS, call
    `record(layer index, input, output)` of every layer's `module(layer)` (one sequence's tokens x features)."""
    def hook(record, i):
        return lambda _module, inputs, output: record(i, inputs[0][0].detach(), output[0].detach())
    hooks = [module(layer).register_forward_hook(hook(record, i))
             for module, record in watchers for i, layer in enumerate(model.model.layers)]
    try:
        with torch.inference_mode():
            for ids in calibration:  # the decoder alone: the vocabulary projection is not needed
                model.model(torch.tensor([ids], device=model.device))
    finally:
        for h in hooks:
            h.remove()


def importance(model: PreTrainedModel, calibration: list[list[int]], heads: bool = False, mlp: bool = False):
    """In one pass over the calibration sequences, each layer's attention heads ranked by what they write
    (`heads`) and its MLP neurons ranked as Minitron ranks them (`mlp`): (head scores, neuron scores), None
    for what is not asked. A head's score is the mean L2 norm of its output through its columns of `o_proj`
    (its share of the attention's update to the residual stream); a neuron's, its mean absolute activation
    (the input of `down_proj`); both over every token of the calibration sequences."""
    config, layers = model.config, model.model.layers
    head_sums = [torch.zeros(config.num_attention_heads) for _ in layers]
    mlp_sums = [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers]

    def record_heads(i, inputs, _output):
        per_head = inputs.float().view(len(inputs), config.num_attention_heads, -1)  # tokens x heads x head_dim
        o_proj = layers[i].self_attn.o_proj.weight.float().view(-1, *per_head.shape[1:])  # hidden x heads x head_dim
        head_sums[i].add_(torch.einsum("thd,ohd->tho", per_head, o_proj).norm(dim=-1).sum(0).cpu())

    def record_mlp(i, inputs, _output):
        mlp_sums[i].add_(inputs.abs().float().sum(0).cpu())
    _watch(model, calibration, [w for w, asked in (((lambda layer: layer.self_attn.o_proj, record_heads), heads),
                                                   ((lambda layer: layer.mlp.down_proj, record_mlp), mlp)) if asked])
    tokens = sum(len(ids) for ids in calibration)
    return tuple([s / tokens for s in sums] if asked else None for sums, asked in ((head_sums, heads), (mlp_sums, mlp)))


def keep_heads(scores: torch.Tensor, n_kv: int, n: int) -> torch.Tensor:
    """The N query heads to keep of SCORES (one per head, grouped by key/value head as grouped-query
    attention shares them): the same number, N / N_KV, of the most important in every group, so each
    kept head keeps its key/value head."""
    groups = scores.view(n_kv, -1)
    top = groups.topk(n // n_kv, dim=1).indices.sort(dim=1).values
    return (top + torch.arange(n_kv)[:, None] * groups.shape[1]).flatten()


def refit_down(model: PreTrainedModel, calibration: list[list[int]], neurons: list[torch.Tensor],
               ridge: float = 1e-3) -> list[torch.Tensor]:
    """Each layer's `down_proj` over its kept NEURONS, fit by ridge least squares to the whole MLP's
    output on every calibration token (the teacher's own inputs to the layer): the columns that best
    stand in for the dropped neurons, not only the kept neurons' own."""
    layers = model.model.layers
    grams = [torch.zeros(len(k), len(k), dtype=torch.float64) for k in neurons]
    cross = [torch.zeros(len(k), layer.mlp.down_proj.out_features, dtype=torch.float64)
             for k, layer in zip(neurons, layers, strict=True)]

    def record(i, inputs, output):
        kept = inputs[:, neurons[i]].double().cpu()
        grams[i].add_(kept.T @ kept)
        cross[i].add_(kept.T @ output.double().cpu())
    _watch(model, calibration, [(lambda layer: layer.mlp.down_proj, record)])
    return [_ridge(gram, xy, ridge) for gram, xy in zip(grams, cross, strict=True)]


def _ridge(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """The weight W (out x in) minimising |X W^T - Y|^2 + damping |W|^2, from X^T X and X^T Y; the damping
    is RIDGE times the mean diagonal of X^T X."""
    damped = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(damped, cross).T.float()


def refit_sequential(teacher: PreTrainedModel, student: PreTrainedModel, keep: list[int],
                     calibration: list[list[int]], ridge: float = 1e-3) -> None:
    """Refit the width-pruned STUDENT's `down_proj`s in place, layer after layer, on its own inputs: each
    is fit by ridge least squares so that the layer's output matches the teacher's residual stream
    after teacher layer KEEP[i] on the calibration tokens, with the layers before it already refit.
    Where `refit_down` fits each MLP alone to the teacher's inputs, this also corrects the error the
    pruned layers before it left in the stream (sequential calibration, as GPTQ and SparseGPT do it).
    Both models are stepped layer by layer, a sequence at a time (one unpadded causal sequence needs
    no attention mask)."""
    seen = {}  # one sequence's post-attention stream and kept activations at the layer being fit

    def watch(key):
        return lambda _module, inputs, _output: seen.__setitem__(key, inputs[0][0].double())

    def start(model, ids):
        h = model.model.embed_tokens(torch.tensor([ids]))
        return h, model.model.rotary_emb(h, torch.arange(len(ids))[None])
    with torch.inference_mode():
        ours = [start(student, ids) for ids in calibration]
        theirs = [start(teacher, ids) for ids in calibration]
        done = -1
        for i, layer in enumerate(student.model.layers):
            for j in range(done + 1, keep[i] + 1):  # the teacher's stream after its layer keep[i]
                theirs = [(teacher.model.layers[j](h, position_embeddings=pe), pe) for h, pe in theirs]
            done = keep[i]
            down = layer.mlp.down_proj
            gram = torch.zeros(down.in_features, down.in_features, dtype=torch.float64)
            cross = torch.zeros(down.in_features, down.out_features, dtype=torch.float64)
            hooks = [layer.post_attention_layernorm.register_forward_hook(watch("stream")),
                     down.register_forward_hook(watch("acts"))]
            kept = []  # per sequence: the stream after attention, and the kept neurons' activations
            try:
                for (h, pe), (target, _) in zip(ours, theirs, strict=True):
                    layer(h, position_embeddings=pe)
                    kept.append((seen["stream"], seen["acts"]))
                    gram.add_(seen["acts"].T @ seen["acts"])
                    cross.add_(seen["acts"].T @ (target[0].double() - seen["stream"]))
            finally:
                for hook in hooks:
                    hook.remove()
            down.weight.copy_(_ridge(gram, cross, ridge))
            # the layer's output with the refit down_proj, without running it again
            ours = [((stream + acts @ down.weight.double().T).float()[None], pe)
                    for (stream, acts), (_, pe) in zip(kept, ours, strict=True)]


def student_spec(teacher_dir: str | os.PathLike, spec: str):
    """A `layers=N[,pick=P][,heads=H][,mlp=M[,refit=1|2]]` or `scratch:layers=N[,hidden=H]` SPEC, parsed and checked
    against the teacher's config: (scratch, pick, options, the teacher's config)."""
    scratch = spec.startswith("scratch:")
    try:
        opts = dict(part.split("=") for part in spec.removeprefix("scratch:").split(","))
        pick = opts.pop("pick", "even")
        opts = {k: int(v) for k, v in opts.items()}
    except ValueError:
        raise ValueError(f"student spec {spec!r}: expected a model dir, 'layers=N[,pick=even|first|ends]"
                         "[,heads=H][,mlp=M[,refit=1|2]]' or 'scratch:layers=N[,hidden=H]'") from None
    if pick not in PICKS or scratch and pick != "even":
        raise ValueError(f"student spec {spec!r}: pick must be one of {', '.join(PICKS)} (and only with layers=N)")
    unknown = set(opts) - ({"layers", "hidden"} if scratch else {"layers", "mlp", "refit", "heads"})
    if unknown or "layers" not in opts:
        raise ValueError(f"student spec {spec!r}: unknown or missing keys {sorted(unknown) or ['layers']}")
    config = AutoConfig.from_pretrained(teacher_dir)
    n_teacher, width = config.num_hidden_layers, config.intermediate_size
    if not 0 < opts["layers"] <= n_teacher:
        raise ValueError(f"student spec {spec!r}: layers must be in 1..{n_teacher}")
    if not 0 < opts.get("mlp", width) <= width:
        raise ValueError(f"student spec {spec!r}: mlp must be in 1..{width} (the teacher's MLP width)")
    if opts.get("refit", 0) not in (0, 1, 2) or opts.get("refit") and "mlp" not in opts:
        raise ValueError(f"student spec {spec!r}: refit is 0, 1 or 2, and only with mlp=M")
    heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    if not 0 < opts.get("heads", heads) <= heads or opts.get("heads", heads) % n_kv:
        raise ValueError(f"student spec {spec!r}: heads must be a multiple of the {n_kv} key/value heads, "
                         f"at most the teacher's {heads}")
    if scratch and opts.get("hidden", config.num_attention_heads) % config.num_attention_heads:
        raise ValueError(f"student spec {spec!r}: hidden must be a multiple of the {config.num_attention_heads} heads")
    return scratch, pick, opts, config


def build_student(teacher: str | os.PathLike, spec: str, output_dir: str | os.PathLike,
                  calibration: list[list[int]] | None = None) -> Path:
    """A student for `teacher` from SPEC, sharing its tokenizer and chat format.

    SPEC is an existing model dir (used as is, after a vocabulary check), `layers=N[,pick=P][,heads=H]
    [,mlp=M]` (N of the teacher's layers, initialised from its weights; P says which: `even` (evenly
    spaced, the default), `first` (the first N-1 and the last, as in deep-layer pruning) or `ends`
    (the first and last N/2); `heads=H` keeps each layer's H attention heads that write the most to
    the residual stream on `calibration`, as many per key/value head; `mlp=M` keeps, in each layer,
    the M MLP neurons most active on `calibration` (token id sequences, e.g. the teacher's own
    answers): width pruning as in Minitron; `refit=1` also refits each kept `down_proj` to the whole
    MLP's output on them, `refit=2` to the teacher's residual stream, layer after layer on the
    student's own inputs), or
    `scratch:layers=N` with optional `,hidden=H` (a smaller configuration of the same architecture,
    random init).
    """
    teacher_dir = resolve_model(teacher)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    if (Path(spec) / "config.json").is_file():
        student_tok = AutoTokenizer.from_pretrained(spec)
        if student_tok.get_vocab() != tok.get_vocab():
            raise ValueError(f"student {spec}: its vocabulary differs from the teacher's; distillation "
                             "needs a shared tokenizer")
        return Path(spec)
    scratch, pick, opts, config = student_spec(teacher_dir, spec)
    if ("mlp" in opts or "heads" in opts) and not calibration:
        raise ValueError(f"student spec {spec!r}: mlp=M and heads=H rank neurons and heads by their activations "
                         "and need calibration sequences")
    n_teacher, config.num_hidden_layers = config.num_hidden_layers, opts["layers"]
    if scratch:
        if "hidden" in opts:
            config.hidden_size, config.head_dim = opts["hidden"], opts["hidden"] // config.num_attention_heads
            config.intermediate_size = opts["hidden"] * 8 // 3
        student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        teacher_model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
        keep = PICKS[pick](opts["layers"], n_teacher)
        neurons = down = heads = None
        if "heads" in opts or "mlp" in opts:
            head_scores, mlp_scores = importance(teacher_model, calibration, heads="heads" in opts, mlp="mlp" in opts)
        if "heads" in opts:  # each kept head: its rows of q_proj, its columns of o_proj
            d = config.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            heads = [(keep_heads(s, config.num_key_value_heads, opts["heads"])[:, None] * d + torch.arange(d)).flatten()
                     for s in head_scores]
            config.num_attention_heads = opts["heads"]
        if "mlp" in opts:
            config.intermediate_size = opts["mlp"]
            neurons = [s.topk(opts["mlp"]).indices.sort().values for s in mlp_scores]
            if opts.get("refit") == 1:
                down = refit_down(teacher_model, calibration, neurons)
        student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = {}
        for name, tensor in teacher_model.state_dict().items():
            if ".layers." in name:
                prefix, rest = name.split(".layers.", 1)
                index, tail = rest.split(".", 1)
                if int(index) not in keep:
                    continue
                if neurons is not None and tail.startswith("mlp."):  # gate/up rows, down columns
                    tensor = tensor[:, neurons[int(index)]] if "down_proj" in tail else tensor[neurons[int(index)]]
                    if down is not None and tail == "mlp.down_proj.weight":
                        tensor = down[int(index)]
                if heads is not None and tail.startswith(("self_attn.q_proj.", "self_attn.o_proj.weight")):
                    tensor = tensor[:, heads[int(index)]] if "o_proj" in tail else tensor[heads[int(index)]]
                name = f"{prefix}.layers.{keep.index(int(index))}.{tail}"
            state[name] = tensor
        student.load_state_dict(state)
        if opts.get("refit") == 2:
            refit_sequential(teacher_model, student, keep, calibration)
    print(f"student {spec}: {num_params(student) / 1e6:.1f}M parameters "
          f"(teacher {params_on_disk(teacher_dir) / 1e6:.1f}M)", flush=True)
    return save(student, tok, output_dir)
