"""SHD as a training loss, on tiny random models (token ids, identity alignment) and a toy
word tokenizer (texts, chat framing): targets, the loss, its gradients, errors, data."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from sublens.arch import adapter_for
from sublens.config import load_config
from sublens.distill import (
    OUTSIDE,
    AlignedExample,
    FitSet,
    ShdLoss,
    ShdTeacher,
    TextRecord,
    align_record,
    aligned_from_ids,
    head_groups,
    layer_losses,
    measure_fit,
    window_mask,
)
from sublens.errors import ConfigError, SublensError
from sublens.experiments.distill import (
    DistillConfig,
    across_seeds,
    alpha_summary,
    comparisons,
    format_answer,
    generated_records,
    load_records,
    newest_teacher_run,
    read_records,
    subliminal_control,
)
from sublens.settings import TeacherView
from sublens.shd import project_attention, squeeze_heads
from sublens.training import TrainConfig, train
from sublens.training_data import collate, tokenize_examples
from tiny import VOCAB, tiny_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "distill"


pytestmark = pytest.mark.usefixtures("one_thread")


def id_examples(lengths: list[int], seed: int = 0) -> list[AlignedExample]:
    g = torch.Generator().manual_seed(seed)
    return [
        aligned_from_ids(torch.randint(2, VOCAB, (n,), generator=g).tolist(), n_prompt=max(1, n // 2)) for n in lengths
    ]


def batch_of(examples: list[AlignedExample], packed: bool = False) -> Any:
    data = tokenize_examples([ex.example() for ex in examples], None, 64)
    rows = [list(range(len(examples)))] if packed else [[i] for i in range(len(examples))]
    return collate(data, rows, 0, packed)


def shd_loss(
    teacher_family: str, student_family: str, examples: list[AlignedExample], **kw: Any
) -> tuple[Any, Any, ShdLoss]:
    teacher, student = tiny_model(teacher_family, seed=1), tiny_model(student_family, seed=2)
    shd = ShdTeacher(teacher, adapter_for(teacher), adapter_for(student), **kw)
    return teacher, student, ShdLoss(shd, examples)


def run_loss(loss: ShdLoss, model: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    with loss.attached(model, adapter_for(model)):
        model(**batch.model_inputs(), use_cache=False)
        return loss(model, batch)


# ---- a toy word tokenizer (offsets, specials, a chat template) ------------------------------
class WordTokenizer:
    """Words and single spaces/newlines as tokens; optional <s> (BOS, id 1); a ChatML-like
    template whose markers are special tokens."""

    SPECIALS: ClassVar[dict[str, int]] = {"<s>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    chat_template = "toy"

    def __init__(self, bos: bool) -> None:
        self.bos = bos
        self.all_special_ids = list(self.SPECIALS.values())
        self.vocab: dict[str, int] = {}

    def _id(self, piece: str) -> int:
        if piece in self.SPECIALS:
            return self.SPECIALS[piece]
        return self.vocab.setdefault(piece, 10 + len(self.vocab))

    def __call__(
        self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False
    ) -> dict[str, Any]:
        ids, offsets = [], []
        if add_special_tokens and self.bos:
            ids.append(1)
            offsets.append((0, 0))
        pattern = "|".join(re.escape(s) for s in self.SPECIALS) + r"|[^\s<]+|\s|<"
        for match in re.finditer(pattern, text):
            ids.append(self._id(match.group()))
            offsets.append(match.span())
        return {"input_ids": ids, "offset_mapping": offsets}

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = False
    ) -> str:
        if messages[0]["role"] != "system":
            messages = [{"role": "system", "content": "Default helper."}, *messages]
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


RECORD = TextRecord("Numbers: 142, 857, 903. Continue.", "211, 64, 998")


# ---- alignment inside the pipeline ---------------------------------------------------------
@pytest.mark.parametrize("bos", [True, False])
def test_one_tokenizer_aligns_as_the_identity(bos: bool) -> None:
    tok = WordTokenizer(bos)
    ex = align_record(RECORD, tok, tok, TeacherView("plain"))
    assert ex.identity
    Q, K = ex.matrices()
    torch.testing.assert_close(Q, torch.eye(ex.n_student, dtype=torch.float64))
    torch.testing.assert_close(K, torch.eye(ex.n_student, dtype=torch.float64))
    # the LM loss covers exactly the answer's tokens
    answer_ids = tok(RECORD.answer, add_special_tokens=False)["input_ids"]
    assert list(ex.example().answer) == answer_ids
    # token ids given directly are aligned as the identity too
    assert aligned_from_ids([5, 6, 7], 1).identity


@pytest.mark.parametrize(
    "view", [TeacherView("plain", "You love owls."), TeacherView("chat", "You love owls."), TeacherView("chat", None)]
)
def test_teacher_only_tokens_overlap_nothing_and_text_tokens_map_back(view: TeacherView) -> None:
    tok = WordTokenizer(bos=False)
    ex = align_record(RECORD, tok, tok, view)
    inside = [i for i, span in enumerate(ex.teacher_spans) if span != OUTSIDE and span[1] > span[0]]
    assert len(inside) < ex.n_teacher  # context / template tokens are there...
    # ...the chat framing replaces the student's "\n\n" between prompt and answer...
    separator = range(len(RECORD.prompt), RECORD.answer_start)
    mask = [j for j, (a, b) in enumerate(ex.student_spans) if b > a and not (view.format == "chat" and a in separator)]
    assert [ex.teacher_ids[i] for i in inside] == [ex.student_ids[j] for j in mask]
    assert [ex.teacher_spans[i] for i in inside] == [ex.student_spans[j] for j in mask]
    # ...and the projection is the teacher map on the text tokens, renormalised
    n_t = ex.n_teacher
    causal = torch.ones(n_t, n_t, dtype=torch.bool).tril()
    A = torch.softmax(torch.randn(2, n_t, n_t, dtype=torch.float64).masked_fill(~causal, float("-inf")), -1)
    Q, K = ex.matrices()
    P, valid = project_attention(A, Q, K)
    idx = torch.tensor(inside)
    sub = A[:, idx][:, :, idx]
    torch.testing.assert_close(P[:, mask][:, :, mask], sub / sub.sum(-1, keepdim=True))
    assert valid.tolist() == [j in mask for j in range(ex.n_student)]


def test_chat_teacher_needs_prompt_and_answer() -> None:
    tok = WordTokenizer(bos=False)
    with pytest.raises(ConfigError, match="chat-format teacher needs prompt/answer"):
        align_record(TextRecord("", "just a text"), tok, tok, TeacherView("chat"), "text #3")
    plain = align_record(TextRecord("", "just a text"), tok, tok, TeacherView("plain"))
    assert plain.n_prompt == 1  # the loss covers everything after the first token


# ---- targets ---------------------------------------------------------------------------------
def test_head_groups_follow_the_merge_schedule() -> None:
    assert head_groups(9, 4) == [[0, 1, 2, 3], [4, 5], [6, 7], [8]]
    assert head_groups(6, 4) == [[0, 1], [2, 3], [4], [5]]
    assert head_groups(4, 6, "repeat") == [[0], [1], [2], [3], [0], [1]]


def test_window_mask() -> None:
    assert torch.equal(window_mask(4, None), torch.ones(4, 4, dtype=torch.bool).tril())
    w = window_mask(5, 2)
    assert w[4].tolist() == [False, False, False, True, True]


def teacher_maps_and_values(model: Any, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent computation: attentions from output_attentions, X from v_proj and o_proj."""
    adapter = adapter_for(model)
    values: dict[str, torch.Tensor] = {}
    handle = adapter.v(layer).register_forward_hook(lambda _m, _i, out: values.update(v=out))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True, use_cache=False)
    finally:
        handle.remove()
    A = out.attentions[layer].float()
    v = values["v"].unflatten(-1, (adapter.n_kv_heads, adapter.d_head))  # [b, N, kv, d]
    W = adapter.W_O(layer)  # [head, d_head, d_model]
    X = torch.stack([v[:, :, adapter.kv_group(h)] @ W[h] for h in range(adapter.n_heads)], dim=1)
    return A, X.float()


def test_targets_are_the_squeezed_teacher_maps_and_ignore_padding() -> None:
    examples = id_examples([7, 5, 9])
    teacher, student = tiny_model("llama", seed=1), tiny_model("qwen2", seed=2)  # 6 heads -> 4, 3 -> 2 layers
    shd = ShdTeacher(teacher, adapter_for(teacher), adapter_for(student))
    assert shd.teacher_layer == {0: 0, 1: 1}
    together = shd.targets(examples)
    for e, ex in enumerate(examples):
        alone = shd.targets([ex])
        ids = torch.tensor([ex.teacher_ids])
        for s, t in shd.teacher_layer.items():
            A, X = teacher_maps_and_values(teacher, ids, t)
            expected = squeeze_heads(A, X, 4).maps[0]
            n = ex.n_student
            torch.testing.assert_close(alone.maps[s][0], expected, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(together.maps[s][e, :, :n, :n], expected, atol=1e-5, rtol=1e-4)
            assert together.valid[s][e, :n].all() and not together.valid[s][e, n:].any()


def test_sliding_window_layers_get_windowed_targets() -> None:
    examples = id_examples([9])
    teacher, student = tiny_model("llama", seed=1), tiny_model("gemma3", seed=2)  # gemma3: window 4 on L0, L1
    shd = ShdTeacher(teacher, adapter_for(teacher), adapter_for(student))
    assert shd.windows == {0: 4, 1: 4, 2: None}
    targets = shd.targets(examples)
    for s in (0, 1):
        assert torch.all(targets.maps[s][0].masked_fill(window_mask(9, 4), 0) == 0)
        torch.testing.assert_close(targets.maps[s][0].sum(-1), torch.ones(4, 9))
    assert (targets.maps[2][0].masked_fill(window_mask(9, 4), 0) > 0).any()


# ---- the loss ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "qwen2"])
@pytest.mark.parametrize("packed", [False, True])
def test_loss_is_zero_when_the_student_reproduces_the_squeezed_map(family: str, packed: bool) -> None:
    """Teacher == student (m == k, one tokenization): the squeezed map is the teacher's map,
    which the student reproduces exactly, in padded and packed batches alike."""
    examples = id_examples([7, 4, 9])
    model = tiny_model(family, seed=3)
    shd = ShdTeacher(model, adapter_for(model), adapter_for(model))
    assert shd.schedule == []
    for temperature in (1.0, 2.0):
        loss = ShdLoss(shd, examples, temperature)
        value, metrics = run_loss(loss, model, batch_of(examples, packed))
        assert value.item() == pytest.approx(0.0, abs=1e-6)
        assert set(metrics) >= {"shd", *(f"kl_L{s}" for s in shd.layers)}
    # another student does not reproduce it
    other = tiny_model(family, seed=4)
    value, _ = run_loss(
        ShdLoss(ShdTeacher(model, adapter_for(model), adapter_for(other)), examples), other, batch_of(examples, packed)
    )
    assert value.item() > 1e-5  # random tiny models attend almost uniformly: small, but not zero


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def test_gradients_reach_query_and_key_weights_only_through_the_shd_term() -> None:
    """SHD on student layer 1 only: its gradient reaches q/k (and q/k norms) of layer 1 and
    everything below, never v/o/MLP of layer 1 or anything above; LM + β·SHD = LM + β·(SHD)."""
    examples = id_examples([8, 6])
    _, student, loss = shd_loss("llama", "gemma3", examples, layers=[1])
    batch = batch_of(examples)
    beta = 0.7

    def backward(lm: bool, shd: float) -> dict[str, torch.Tensor]:
        student.zero_grad(set_to_none=True)
        with loss.attached(student, adapter_for(student)):
            out = student(**batch.model_inputs(), use_cache=False)
            total = out.logits.float().log_softmax(-1)[..., 5].mean() if lm else out.logits.sum() * 0
            if shd:
                total = total + shd * loss(student, batch)[0]
            total.backward()
        return grads(student)

    only_shd, only_lm, both = backward(False, 1.0), backward(True, 0.0), backward(True, beta)
    for name in only_shd:
        torch.testing.assert_close(both[name], only_lm[name] + beta * only_shd[name], atol=1e-6, rtol=1e-4)
    touched = {n for n, g in only_shd.items() if g.abs().sum() > 0}
    layer1 = "model.layers.1."
    assert {f"{layer1}self_attn.q_proj.weight", f"{layer1}self_attn.k_proj.weight"} <= touched
    assert not any(
        n.startswith(layer1 + part)
        for n in touched
        for part in (
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp",
            "post_attention",
            "pre_feedforward",
            "post_feedforward",
        )
    )
    assert not any(n.startswith("model.layers.2.") or n.startswith("model.norm") for n in touched)
    assert any(n.startswith("model.layers.0.mlp") for n in touched)  # through the residual stream
    # the LM loss alone moves v/o of layer 1 (so the check above is not vacuous)
    assert only_lm[f"{layer1}self_attn.v_proj.weight"].abs().sum() > 0


def test_more_student_heads_is_an_error_or_the_repeat_fallback() -> None:
    examples = id_examples([6])
    teacher, student = tiny_model("gemma3", seed=1), tiny_model("llama", seed=2)  # 4 heads -> 6
    with pytest.raises(SublensError, match="more heads .* shd.fallback=repeat"):
        ShdTeacher(teacher, adapter_for(teacher), adapter_for(student))
    shd = ShdTeacher(teacher, adapter_for(teacher), adapter_for(student), fallback="repeat")
    targets = shd.targets(examples)
    maps = targets.maps[0][0]
    assert maps.shape == (6, 6, 6)
    torch.testing.assert_close(maps[4], maps[0])
    torch.testing.assert_close(maps[5], maps[1])
    value, _ = run_loss(ShdLoss(shd, examples), student, batch_of(examples))
    assert torch.isfinite(value)


def test_loss_needs_the_student_attached_and_matching_examples() -> None:
    examples = id_examples([5, 6])
    _, student, loss = shd_loss("llama", "qwen2", examples)
    batch = batch_of(examples)
    with pytest.raises(SublensError, match="attached"):
        loss(student, batch)
    wrong = ShdLoss(loss.teacher, list(reversed(examples)))
    with pytest.raises(SublensError, match="in the order"):
        run_loss(wrong, student, batch)


def test_training_with_shd_lowers_the_fit_to_the_teacher(tmp_path: Path) -> None:
    examples = id_examples([6, 8, 7, 9, 5, 8, 6, 7])
    teacher, student, loss = shd_loss("llama", "qwen2", examples)
    with torch.no_grad():  # sharp teacher maps (random tiny models attend almost uniformly)
        for layer in range(3):
            weight = adapter_for(teacher).q(layer).weight
            assert isinstance(weight, torch.Tensor)
            weight.mul_(10)
    fit = FitSet.build(loss.teacher, examples[:4], 2, 1.0)
    before = fit.measure(student, adapter_for(student))["T=1"]["mean"]
    config = TrainConfig(
        lr=3e-3,
        max_steps=12,
        batch_size=4,
        layout="pack",
        max_length=32,
        save_model=False,
        extra_loss_weight=10.0,
        dropout=False,
    )
    with loss.attached(student, adapter_for(student)):
        result = train(
            student, None, [ex.example() for ex in examples], config, tmp_path, extra_loss=loss, progress=False
        )
    assert all(h["extra/shd"] > 0 and "extra/alpha_mean" in h for h in result.history)
    after = fit.measure(student, adapter_for(student))
    assert after["T=1"]["mean"] < 0.8 * before
    assert set(after["T=1"]["per_layer"]) == {"0", "1"} and after["rows"] == {"0": 30, "1": 30}
    # several fit sets of the same texts share one student forward
    both = measure_fit(student, adapter_for(student), {"a": fit, "b": fit})
    assert both["a"]["T=1"]["mean"] == pytest.approx(after["T=1"]["mean"])
    alphas = fit.alphas()
    assert set(alphas) == {0, 1} and alphas[0][0].shape == (4, 2)
    summary = alpha_summary(alphas[0])
    assert summary.n == 8 and summary.quantiles is not None and len(summary.per_phase_mean or []) == 1
    assert summary.mean == pytest.approx(float(alphas[0][0].double().mean()))
    # the student's hooks are gone after training
    assert student.config._attn_implementation == "eager"  # tiny models are built eager
    assert not any(m._forward_hooks for m in student.modules())


def test_layer_losses_weigh_rows() -> None:
    examples = id_examples([6, 3])
    model = tiny_model("qwen2", seed=3)
    shd = ShdTeacher(model, adapter_for(model), adapter_for(model), layers=[1])
    targets = shd.targets(examples)
    patterns = {1: targets.maps[1].clone()}  # pattern rows = the targets, batch of two padded rows
    batch = batch_of(examples)
    losses = layer_losses(targets, patterns, batch.segments, 1.0)
    assert losses[1][1] == 9 and losses[1][0].item() == pytest.approx(0.0, abs=1e-6)


# ---- data and config -------------------------------------------------------------------------
def test_read_records_formats_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [
        {"prompt": "Numbers: 1, 2.", "answer": "3, 4", "kept": True},
        {"text": "Plain text here."},
        {"prompt": "x", "answer": "5", "kept": False},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    records = read_records(path)
    assert records == [TextRecord("Numbers: 1, 2.", "3, 4"), TextRecord("", "Plain text here.")]
    for bad, message in (
        ("{not json", "line 2 is not valid JSON"),
        ('{"prompt": "a"}', "line 2: 'answer' must be"),
        ('{"answer": 3, "prompt": "a"}', "line 2: 'answer' must be a string"),
        ('{"other": 1}', 'line 2: give a "text" field'),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"text": "  "}', "line 2: the answer"),
    ):
        path.write_text(json.dumps(lines[0]) + "\n" + bad + "\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            read_records(path)


def test_subliminal_run_directory_gives_its_control_set(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "control.train.jsonl").write_text(json.dumps({"prompt": "p", "answer": "1"}) + "\n")
    (run / "results.json").write_text(
        json.dumps({"data": {"datasets": {"control": {"train_file": "data/control.train.jsonl"}}}})
    )
    assert subliminal_control(run) == run / "data" / "control.train.jsonl"
    with pytest.raises(ConfigError, match="no control data set"):
        subliminal_control(tmp_path)


def test_generated_records_are_seeded_number_texts() -> None:
    a, b = generated_records(20, 3, (3, 10)), generated_records(20, 3, (3, 10))
    assert a == b and a != generated_records(20, 4, (3, 10))
    assert all(re.fullmatch(r"\[?[\d,;\s]+\]?", r.answer) for r in a)
    assert format_answer([1, 22], "brackets") == "[1, 22]" and format_answer([1, 22], "newline") == "1\n22"
    train_set, fit_set, info = load_records(DistillConfig().data.model_copy(update={"n_train": 15, "n_fit": 5}), 0)
    assert len(train_set) == 15 and len(fit_set) == 5 and not set(train_set) & set(fit_set)
    assert info["source"] == "generated"


def test_too_few_records_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "three.jsonl"
    path.write_text("".join(json.dumps({"text": f"text number {i}"}) + "\n" for i in range(3)))
    settings = DistillConfig().data.model_copy(update={"source": str(path), "n_train": 2, "n_fit": 2})
    with pytest.raises(ConfigError, match="has 3 records; n_train \\+ n_fit = 4"):
        load_records(settings, 0)
    train_set, fit_set, _ = load_records(settings.model_copy(update={"n_fit": 1}), 0)
    assert len(train_set) == 2 and len(fit_set) == 1


def test_presets_and_config_checks() -> None:
    for name in ("quick", "paper"):
        config = load_config(DistillConfig, CONFIGS / f"{name}.yaml")
        assert config.arms == ["shd_biased", "lm_only", "shd_base"]
        assert config.shd.kl_direction == "student_teacher"
    assert load_config(DistillConfig, CONFIGS / "quick.yaml").training_seeds == [0]
    assert load_config(DistillConfig, CONFIGS / "paper.yaml").training_seeds == [0, 1, 2]
    assert DistillConfig().shd.kl_direction == "student_teacher" and DistillConfig(seed=4).training_seeds == [4]
    assert (
        load_config(DistillConfig, overrides=["shd.kl_direction=teacher_student"]).shd.kl_direction == "teacher_student"
    )
    with pytest.raises(ConfigError, match="kl_direction"):
        load_config(DistillConfig, overrides=["shd.kl_direction=sideways"])
    with pytest.raises(ConfigError, match="seeds"):
        load_config(DistillConfig, overrides=["seeds=[1, 1]"])
    with pytest.raises(ConfigError, match="margin"):
        load_config(DistillConfig, overrides=["claims.margin=0.9"])
    with pytest.raises(ConfigError, match="shd.beta"):
        load_config(DistillConfig, overrides=["train.extra_loss_weight=3"])
    with pytest.raises(ConfigError, match="top-level seed.*--set seed=N --set train.seed=N"):
        load_config(DistillConfig, overrides=["train.seed=3"])
    assert load_config(DistillConfig, overrides=["seed=3", "train.seed=3"]).train.seed == 3  # a saved config, reseeded
    with pytest.raises(ConfigError, match="arms"):
        load_config(DistillConfig, overrides=["arms=[lm_only, lm_only]"])


def test_default_biased_teacher_is_the_newest_finished_teacher_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No finished `teacher` run"):
        newest_teacher_run(tmp_path)
    for stamp, status in (("20260101-000000", "ok"), ("20260102-000000", "ok"), ("20260103-000000", "failed")):
        run = tmp_path / f"{stamp}_teacher_abc"
        run.mkdir()
        (run / "record.json").write_text(json.dumps({"status": status}))
        (run / "results.json").write_text(json.dumps({"checkpoints": {"teacher": "checkpoints/teacher"}}))
    assert newest_teacher_run(tmp_path) == str(tmp_path / "20260102-000000_teacher_abc")


# ---- comparisons across seeds -----------------------------------------------------------------
def _preference(share: list[float], p_word: list[float], count: int = 0) -> dict[str, Any]:
    answers = ["owl"] * count + ["cat"] * (20 - count)  # 5 questions x 4 samples, the owls first
    return {
        "probability": {"trait": "owl", "per_question": {"share": share, "p_word": [[p] for p in p_word]}},
        "sampled": {
            "trait_rate": {"count": count, "rate": count / 20},
            "n_answers": 20,
            "n_questions": 5,
            "samples_per_question": 4,
            "answers": answers,
        },
    }


def test_comparisons_pair_the_arms_seed_by_seed_and_keep_per_seed_log_ratios() -> None:
    base_share = [0.10, 0.20, 0.15, 0.12, 0.30]
    factors = {0: 1.5, 1: 1.2, 2: 1.35}  # shd_biased over lm_only per seed, the same on every question
    students = {
        seed: {
            "shd_biased": _preference([f * x for x in base_share], [0.02] * 5, 3),
            "lm_only": _preference(base_share, [0.01] * 5, 1),
        }
        for seed, f in factors.items()
    }
    out = comparisons(students, _preference(base_share, [0.01] * 5))
    assert set(out) == {"shd_biased_vs_lm_only", "shd_biased_vs_initial", "lm_only_vs_initial"}
    transfer = out["shd_biased_vs_lm_only"]
    share = transfer.share_ratio
    assert share.per_seed_log == pytest.approx([math.log(f) for f in factors.values()])
    assert share.n_seeds == 3 and share.ci is not None and "3 seeds" in share.ci
    assert share.ratio == pytest.approx(math.exp(sum(math.log(f) for f in factors.values()) / 3))
    assert share.ci_low is not None and share.ci_high is not None and share.ci_low < share.ratio < share.ci_high
    assert transfer.p_trait_ratio.per_seed_log == pytest.approx([math.log(2)] * 3)
    assert transfer.rate_difference is not None and transfer.rate_difference.per_seed == pytest.approx([0.1] * 3)
    assert out["lm_only_vs_initial"].share_ratio.per_seed_log == pytest.approx([0.0] * 3)
    assert transfer.seeds == [0, 1, 2] and transfer.per_seed_comparisons is not None
    # one seed: the question-level interval of that run, labelled as such
    one = across_seeds([transfer.per_seed_comparisons[0]], [0])
    assert one.share_ratio.per_seed_log == pytest.approx([math.log(1.5)])
    assert one.share_ratio.ci is not None and "1 seed: question variation only" in one.share_ratio.ci
    assert one.rate_difference is not None and one.rate_difference.n_seeds == 1
    # its p pairs the questions: one question differs (3 of 4 owls against 1 of 4), so every sign
    # pattern reaches the observed mean and p = 1 (pooled, Fisher's test would read 3/20 vs 1/20)
    assert one.rate_difference.p_questions == pytest.approx(1.0) and one.rate_difference.n_questions == 5
    # a seed on which an arm was not trained is left out of that pair only
    students[3] = {"lm_only": _preference(base_share, [0.01] * 5, 1)}
    again = comparisons(students, _preference(base_share, [0.01] * 5))
    assert again["shd_biased_vs_lm_only"].seeds == [0, 1, 2] and again["lm_only_vs_initial"].seeds == [0, 1, 2, 3]


def test_loss_and_fit_follow_the_kl_direction() -> None:
    examples = id_examples([5, 7])
    teacher, student = tiny_model("llama", seed=3), tiny_model("llama", seed=4)
    shd = ShdTeacher(teacher, adapter_for(teacher), adapter_for(student), layers=[1])
    targets = shd.targets(examples)
    batch = batch_of(examples)
    patterns = {1: targets.maps[1].clone().flip(-1).tril()}  # some other causal maps
    patterns[1] = patterns[1] / patterns[1].sum(-1, keepdim=True).clamp_min(1e-12)
    values = {
        d: layer_losses(targets, patterns, batch.segments, 1.0, d)[1][0].item()
        for d in ("student_teacher", "teacher_student")
    }
    assert values["student_teacher"] > 0 and values["teacher_student"] > 0
    assert values["student_teacher"] != pytest.approx(values["teacher_student"])
    for direction in ("student_teacher", "teacher_student"):
        fit = FitSet.build(shd, examples, 2, 1.0, direction=direction)
        measured = fit.measure(student, adapter_for(student))
        assert measured["kl_direction"] == direction and measured["T=1"]["mean"] > 0
        assert ShdLoss(shd, examples, 1.0, direction).direction == direction
    with pytest.raises(ConfigError, match="KL direction"):
        ShdLoss(shd, examples, 1.0, "sideways")
