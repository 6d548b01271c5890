"""Squeezing-heads distillation: the closed form, the schedule, alignment and the loss."""

from __future__ import annotations

import math

import pytest
import torch

from sublens.errors import SublensError
from sublens.settings import DEFAULT_KL_DIRECTION, KL_DIRECTIONS
from sublens.shd import (
    alignment_matrices,
    layer_map,
    merge_schedule,
    project_attention,
    shd_kl,
    squeeze_alpha,
    squeeze_heads,
)


def _maps(b: int, h: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, n, n, generator=g, dtype=torch.float64) * 2
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def test_alpha_is_the_least_squares_optimum() -> None:
    g = torch.Generator().manual_seed(3)
    A = _maps(5, 2, 6, seed=1)
    X = torch.randn(5, 2, 6, 4, generator=g, dtype=torch.float64)
    X[1, 1] *= 10  # spread the optimum over [0, 1] and beyond (clamped)
    alpha = squeeze_alpha(A[:, 0], A[:, 1], X[:, 0], X[:, 1])
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for i in range(5):
        target = A[i, 0] @ X[i, 0] + A[i, 1] @ X[i, 1]
        merged = grid[:, None, None] * A[i, 0] + (1 - grid[:, None, None]) * A[i, 1]
        error = ((merged @ (X[i, 0] + X[i, 1]) - target) ** 2).sum(dim=(-2, -1))
        assert alpha[i].item() == pytest.approx(grid[error.argmin()].item(), abs=1e-4)


def test_identical_heads_squeeze_to_that_head() -> None:
    A = _maps(2, 1, 5).expand(2, 4, 5, 5).clone()
    X = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    out = squeeze_heads(A, X, 1)
    torch.testing.assert_close(out.maps[:, 0], A[:, 0])
    assert all(torch.all(a == 0.5) for a in out.alphas)  # D = 0: every α fits, ½ by convention


@pytest.mark.parametrize(
    ("k", "m", "phases"), [(9, 4, [4, 1]), (32, 16, [16]), (25, 12, [12, 1]), (16, 6, [8, 2]), (4, 4, []), (9, 5, [4])]
)
def test_head_count_schedule(k: int, m: int, phases: list[int]) -> None:
    assert merge_schedule(k, m) == phases
    out = squeeze_heads(_maps(1, k, 4), torch.randn(1, k, 4, 2, dtype=torch.float64), m)
    assert out.maps.shape == (1, m, 4, 4) and len(out.alphas) == len(phases)


def test_merging_keeps_rows_stochastic_and_causal() -> None:
    A = _maps(3, 9, 7)
    out = squeeze_heads(A, torch.randn(3, 9, 7, 5, dtype=torch.float64), 4)
    torch.testing.assert_close(out.maps.sum(-1), torch.ones(3, 4, 7, dtype=torch.float64))
    assert torch.all(out.maps.triu(diagonal=1) == 0) and torch.all(out.maps >= 0)
    # the first merged head of phase 2 carries X of teacher heads 0-3
    X = torch.arange(9, dtype=torch.float64).reshape(1, 9, 1, 1).expand(1, 9, 7, 5)
    assert squeeze_heads(A[:1], X, 4).values[0, 0, 0, 0].item() == 0 + 1 + 2 + 3


def test_more_student_heads_is_an_error_or_the_documented_fallback() -> None:
    A, X = _maps(1, 3, 4), torch.randn(1, 3, 4, 2, dtype=torch.float64)
    with pytest.raises(SublensError, match="more heads .* shd.fallback=repeat"):
        squeeze_heads(A, X, 4)
    out = squeeze_heads(A, X, 4, fallback="repeat")
    torch.testing.assert_close(out.maps[:, 3], A[:, 0])


def test_layer_map() -> None:
    assert layer_map(18, 30) == [s * 30 // 18 for s in range(18)]
    assert layer_map(4, 4) == [0, 1, 2, 3]


def test_alignment_is_the_identity_for_one_tokenizer() -> None:
    spans = [(0, 0), (0, 2), (2, 5), (5, 6)]  # BOS then three tokens
    Q, K = alignment_matrices(spans, spans)
    torch.testing.assert_close(Q, torch.eye(4, dtype=torch.float64))
    A = _maps(2, 3, 4)
    P, valid = project_attention(A, Q, K)
    torch.testing.assert_close(P, A)
    assert valid.all()


def test_alignment_keeps_rows_stochastic_and_causal_across_tokenizations() -> None:
    teacher = [(0, 2), (2, 3), (3, 7), (7, 8), (8, 12)]
    student = [(0, 3), (3, 5), (5, 8), (8, 10), (10, 12)]
    Q, K = alignment_matrices(student, teacher)
    torch.testing.assert_close(K.sum(-1), torch.ones(5, dtype=torch.float64))  # key mass kept
    P, valid = project_attention(_maps(1, 2, 5), Q, K)
    torch.testing.assert_close(P.sum(-1), torch.ones(1, 2, 5, dtype=torch.float64))
    assert torch.all(P.triu(diagonal=1) == 0) and valid.all()


def test_loss_is_zero_at_the_target_and_has_gradients_otherwise() -> None:
    teacher = _maps(2, 4, 6)
    valid = torch.ones(2, 6, dtype=torch.bool)
    assert shd_kl(teacher, teacher.clone(), valid, temperature=2.0).item() == pytest.approx(0.0, abs=1e-9)
    logits = torch.zeros(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    student = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    loss = shd_kl(teacher, student, valid)
    loss.backward()
    assert loss.item() > 0 and logits.grad is not None and logits.grad.abs().sum() > 0
    # invalid rows (padding) do not count
    masked = valid.clone()
    masked[:, 3:] = False
    manual = shd_kl(teacher[:, :, :3, :3], student.detach()[:, :, :3, :3], valid[:, :3])
    assert shd_kl(teacher, student.detach(), masked).item() == pytest.approx(manual.item())


# ---- the KL direction -----------------------------------------------------------------------------
def _two_token_maps(rows: list[list[float]]) -> torch.Tensor:
    """[1, 1, 2, 2] causal maps: row 0 attends to key 0 only, row 1 as given."""
    return torch.tensor([[[[1.0, 0.0], rows[1]]]], dtype=torch.float64)


@pytest.mark.parametrize("direction", KL_DIRECTIONS)
def test_kl_direction_against_a_hand_computation(direction: str) -> None:
    teacher = _two_token_maps([[1.0, 0.0], [0.25, 0.75]])
    student = _two_token_maps([[1.0, 0.0], [0.5, 0.5]])
    t, s = (0.25, 0.75), (0.5, 0.5)
    by_hand = {
        "student_teacher": s[0] * math.log(s[0] / t[0]) + s[1] * math.log(s[1] / t[1]),  # KL(S || T)
        "teacher_student": t[0] * math.log(t[0] / s[0]) + t[1] * math.log(t[1] / s[1]),  # KL(T || S)
    }[direction]
    assert by_hand == pytest.approx(
        {"student_teacher": 0.5 * math.log(4 / 3), "teacher_student": 0.75 * math.log(1.5) - 0.25 * math.log(2)}[
            direction
        ]
    )
    only_row_1 = torch.tensor([[False, True]])
    assert shd_kl(teacher, student, only_row_1, direction=direction).item() == pytest.approx(by_hand)
    # both rows valid: row 0 (one key, KL 0) halves the average
    both = torch.ones(1, 2, dtype=torch.bool)
    assert shd_kl(teacher, student, both, direction=direction).item() == pytest.approx(by_hand / 2)
    # temperature 2 softens both maps first: softmax(log P / 2) = sqrt(P) renormalised
    t2 = [math.sqrt(x) / sum(math.sqrt(y) for y in t) for x in t]
    s2 = [0.5, 0.5]
    p, q = (s2, t2) if direction == "student_teacher" else (t2, s2)
    softened = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    assert shd_kl(teacher, student, only_row_1, 2.0, direction).item() == pytest.approx(softened)


def test_the_two_directions_differ_and_the_default_is_the_papers() -> None:
    assert DEFAULT_KL_DIRECTION == "student_teacher"  # KL(student || squeezed teacher), as in SHD
    teacher = _two_token_maps([[1.0, 0.0], [0.25, 0.75]])
    student = _two_token_maps([[1.0, 0.0], [0.5, 0.5]])
    valid = torch.tensor([[False, True]])
    assert shd_kl(teacher, student, valid).item() == pytest.approx(0.5 * math.log(4 / 3))
    forward = shd_kl(teacher, student, valid, direction="teacher_student").item()
    assert forward != pytest.approx(shd_kl(teacher, student, valid).item())
    # zero-forcing: student mass where the teacher's map has none costs far more in KL(S || T)
    empty_key = _two_token_maps([[1.0, 0.0], [0.0, 1.0]])
    reverse = shd_kl(empty_key, student, valid, direction="student_teacher").item()
    assert reverse > 10 * shd_kl(empty_key, student, valid, direction="teacher_student").item()
    assert reverse == pytest.approx(0.5 * math.log(0.5 / 1e-12) + 0.5 * math.log(0.5), rel=1e-6)


def test_kl_gradient_flows_to_the_student_only_in_both_directions() -> None:
    teacher = _maps(1, 2, 4).requires_grad_(True)
    logits = torch.zeros(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    for direction in KL_DIRECTIONS:
        student = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
        shd_kl(teacher, student, torch.ones(1, 4, dtype=torch.bool), direction=direction).backward()
        assert teacher.grad is None and logits.grad is not None and logits.grad.abs().sum() > 0
        logits.grad = None


def test_unknown_kl_direction_is_an_error() -> None:
    maps = _maps(1, 1, 3)
    with pytest.raises(SublensError, match="student_teacher, teacher_student"):
        shd_kl(maps, maps, torch.ones(1, 3, dtype=torch.bool), direction="sideways")
