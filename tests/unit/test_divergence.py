"""Divergence tokens and loss masks on tiny random models: the flags against a one-sequence,
one-position-at-a-time recomputation, the format restriction, the summary, and a loss mask that
takes exactly the masked tokens out of the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_scoring import bpe_tokenizer
from test_training import cfg, make_examples, snapshot

from sublens.divergence import Teacher, divergence_flags, divergence_summary
from sublens.errors import ConfigError
from sublens.prompts import encode_prompt, make_prompt
from sublens.training import answer_loss, train
from sublens.training_data import Example, collate, tokenize_examples
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["12, 34, 56", "7, 8", "the owl is 9"]
ANSWERS = ["71, 2", "3, 45, 6!", "8"]


def _teachers() -> tuple[Teacher, Teacher, object]:
    tok = bpe_tokenizer()
    biased = Teacher(tiny_model("qwen2", seed=0).eval(), tok, "you love owls.")
    unbiased = Teacher(tiny_model("qwen2", seed=1).eval(), tok, None)
    return biased, unbiased, tok


def _pick_alone(teacher: Teacher, prompt: str, prefix: list[int], allowed: set[int] | None) -> int:
    ids = encode_prompt(teacher.tokenizer, make_prompt(teacher.tokenizer, prompt, teacher.system)) + prefix
    with torch.no_grad():
        logits = teacher.model(torch.tensor([ids])).logits[0, -1]
    if allowed is not None:
        logits = torch.where(
            torch.isin(torch.arange(len(logits)), torch.tensor(sorted(allowed))), logits, torch.tensor(float("-inf"))
        )
    return int(logits.argmax())


@pytest.mark.parametrize("restricted", [False, True])
def test_flags_match_a_recomputation_position_by_position(restricted: bool) -> None:
    biased, unbiased, tok = _teachers()
    answers = [tok(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]
    digits = {tok.convert_tokens_to_ids(c) for c in "0123456789"}
    allowed = (lambda prefix: frozenset(digits)) if restricted else None
    flags = divergence_flags(biased, unbiased, PROMPTS, answers, tok, allowed=allowed, batch_size=2)
    expected = [
        [
            _pick_alone(biased, p, a[:k], digits if restricted else None)
            != _pick_alone(unbiased, p, a[:k], digits if restricted else None)
            for k in range(len(a))
        ]
        for p, a in zip(PROMPTS, answers, strict=True)
    ]
    assert flags == expected
    assert any(any(f) for f in flags)  # two random models do disagree somewhere


def test_the_same_teacher_twice_never_diverges() -> None:
    biased, _, tok = _teachers()
    answers = [tok(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]
    flags = divergence_flags(biased, biased, PROMPTS, answers, tok)
    assert [len(f) for f in flags] == [len(a) for a in answers] and not any(any(f) for f in flags)


def test_summary_counts() -> None:
    summary = divergence_summary([[True, False, False, False], [False, True]], bins=2)
    assert (summary["n_tokens"], summary["n_divergent"], summary["examples_with_any"]) == (6, 2, 2)
    assert summary["rate"] == pytest.approx(2 / 6)
    assert summary["rate_by_position"] == [pytest.approx(1 / 3), pytest.approx(1 / 3)]


# ---- loss masks ----------------------------------------------------------------------------------
def test_a_loss_mask_leaves_exactly_the_masked_tokens_out() -> None:
    model = tiny_model("qwen2").eval()
    plain = make_examples(6, seed=3)
    masks = [[k % 2 == 0 for k in range(len(ex.answer))] for ex in plain]
    masked = [Example(ex.prompt, ex.answer, loss_mask=m) for ex, m in zip(plain, masks, strict=True)]
    data = tokenize_examples(masked, None, 32)
    batch = collate(data, [[i] for i in range(len(data))], 0, packed=False)
    with torch.no_grad():
        loss = float(answer_loss(model, batch))
        losses = []
        for ex, mask in zip(plain, masks, strict=True):
            ids = torch.tensor([list(ex.prompt) + list(ex.answer)])
            logits = model(ids).logits[0]
            for k, keep in enumerate(mask):
                if keep:
                    position = len(ex.prompt) + k
                    losses.append(float(F.cross_entropy(logits[position - 1], ids[0, position])))
    assert loss == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_an_all_true_mask_trains_exactly_like_no_mask(tmp_path: Path) -> None:
    examples = make_examples(12)
    full = [Example(ex.prompt, ex.answer, loss_mask=[True] * len(ex.answer)) for ex in examples]
    a, b = tiny_model("llama"), tiny_model("llama")
    train(a, None, examples, cfg(), tmp_path / "a", progress=False)
    train(b, None, full, cfg(), tmp_path / "b", progress=False)
    after_a, after_b = snapshot(a), snapshot(b)
    assert all(torch.equal(after_a[n], after_b[n]) for n in after_a)


def test_bad_masks_are_refused() -> None:
    with pytest.raises(ConfigError, match="one flag per answer token"):
        tokenize_examples([Example([5, 6], [7, 8], loss_mask=[True])], None, 32)
    with pytest.raises(ConfigError, match="no answer token in the loss"):
        tokenize_examples([Example([5, 6], [7, 8], loss_mask=[False, False])], None, 32)
