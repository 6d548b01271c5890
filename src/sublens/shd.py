"""Squeezing-heads distillation (SHD; Bing, Li, Liang, arXiv 2502.07436), the research core.

Teacher head i of a layer has an attention map A_i [N, N] and X_i = V_i W_O_i [N, d_model]
(its values through its own slice of the output projection; with grouped-query attention
V_i is the value of head i's KV group). Two heads a, b are squeezed into one map

    Ã = α A_a + (1 − α) A_b,   α = argmin ‖A_a X_a + A_b X_b − Ã (X_a + X_b)‖_F

With D = A_a − A_b, M = D X_a, N = D (X_a + X_b) the residual is M − α N, so
α* = ⟨M, N⟩_F / ‖N‖²_F, clamped to [0, 1] (½ when ‖N‖ ≈ 0, where every α fits equally).
α is computed from teacher quantities only, without gradient, per sample and layer.

k teacher heads become m student heads by merging adjacent pairs phase by phase, merging
only as many pairs as needed to land exactly on m (9 → 5 → 4, 32 → 16, 25 → 13 → 12); a
merged head carries X_a + X_b into the next phase.

Tokenizers differ across families, so teacher maps are projected onto the student's tokens
through character-span overlap (`project_attention`).

The loss compares the student's map S with the squeezed, projected teacher map T row by row
(`shd_kl`), in one of two directions (config ``shd.kl_direction``):

- ``student_teacher`` (the default): KL(S ‖ T) = Σ_j S_j log(S_j / T_j), the formulation of
  the SHD paper (KL of the student's map from the squeezed teacher's). It is zero-forcing: a
  student key the teacher's map gives (almost) no mass costs S_j · log(S_j / 1e-12), so the
  student is pushed off keys the projected teacher map leaves empty;
- ``teacher_student``: KL(T ‖ S) = Σ_j T_j log(T_j / S_j), the forward KL of attention-map
  distillation (mass-covering: the student must cover every key the teacher attends to, and
  is free where the teacher puts nothing). Runs recorded before the option existed used this
  direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sublens.errors import SublensError
from sublens.settings import DEFAULT_KL_DIRECTION, KL_DIRECTIONS, KlDirection

EPS = 1e-12
FALLBACKS = ("error", "repeat")


def merge_schedule(k: int, m: int) -> list[int]:
    """Number of adjacent pairs merged in each phase to go from k to exactly m heads."""
    if m < 1 or k < 1:
        raise SublensError(f"Head counts must be positive (teacher {k}, student {m}).")
    if m > k:
        raise SublensError(
            f"The student has more heads ({m}) than the teacher ({k}): SHD can only squeeze heads. "
            "Use a teacher with at least as many heads, or pass --set shd.fallback=repeat (student head j "
            "is matched to teacher head j mod k, unsqueezed)."
        )
    phases = []
    while k > m:
        pairs = min(k // 2, k - m)
        phases.append(pairs)
        k -= pairs
    return phases


def squeeze_alpha(A_a: torch.Tensor, A_b: torch.Tensor, X_a: torch.Tensor, X_b: torch.Tensor) -> torch.Tensor:
    """Closed-form α per map: A_* [..., N, N], X_* [..., N, d] -> α [...] in [0, 1]."""
    D = A_a - A_b
    M = D @ X_a  # [..., N, d]
    N = D @ (X_a + X_b)
    num = (M * N).sum(dim=(-2, -1))  # ⟨M, N⟩_F
    den = (N * N).sum(dim=(-2, -1))  # ‖N‖²_F
    scale = ((X_a + X_b) ** 2).sum(dim=(-2, -1)) + EPS
    degenerate = den <= 1e-10 * scale  # ‖N‖ ≈ 0 relative to the values' size
    alpha = torch.where(degenerate, torch.full_like(num, 0.5), num / den.clamp_min(EPS))
    return alpha.clamp(0.0, 1.0)


@dataclass
class Squeezed:
    maps: torch.Tensor  # [b, m, N, N] squeezed attention maps (rows stochastic, causal)
    values: torch.Tensor  # [b, m, N, d] carried X (sums of merged heads' X)
    alphas: list[torch.Tensor]  # one [b, pairs] tensor per phase


@torch.no_grad()
def squeeze_heads(A: torch.Tensor, X: torch.Tensor, m: int, fallback: str = "error") -> Squeezed:
    """Squeeze teacher maps A [b, k, N, N] with X [b, k, N, d] down to m heads."""
    if fallback not in FALLBACKS:
        raise SublensError(f"Unknown SHD fallback {fallback!r}; choose one of {', '.join(FALLBACKS)}.")
    k = A.shape[1]
    if m > k and fallback == "repeat":
        index = torch.arange(m) % k
        return Squeezed(A[:, index], X[:, index], [])
    alphas = []
    for pairs in merge_schedule(k, m):
        first, second = slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2)  # adjacent pairs (0,1), (2,3)...
        alpha = squeeze_alpha(A[:, first], A[:, second], X[:, first], X[:, second])  # [b, pairs]
        a = alpha[..., None, None]
        merged_A = a * A[:, first] + (1 - a) * A[:, second]
        merged_X = X[:, first] + X[:, second]
        A = torch.cat([merged_A, A[:, 2 * pairs :]], dim=1)
        X = torch.cat([merged_X, X[:, 2 * pairs :]], dim=1)
        alphas.append(alpha)
    return Squeezed(A, X, alphas)


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer s -> teacher layer ⌊s · L_T / L_S⌋."""
    return [s * teacher_layers // student_layers for s in range(student_layers)]


def head_values(v: torch.Tensor, W_O: torch.Tensor, n_heads: int) -> torch.Tensor:
    """X_i = V_{group(i)} W_O_i: v [b, N, kv, d_head], W_O [H, d_head, d_model] -> [b, H, N, d_model]."""
    groups = torch.arange(n_heads) // (n_heads // v.shape[2])
    return torch.einsum("bnhd,hdm->bhnm", v[:, :, groups], W_O.to(v.dtype))


# ---- cross-tokenizer alignment -------------------------------------------------------------


def span_overlap(student: Sequence[tuple[int, int]], teacher: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Characters shared by each (student token, teacher token) pair: [N_s, N_t]."""
    s = torch.tensor(student, dtype=torch.float64).reshape(-1, 2)
    t = torch.tensor(teacher, dtype=torch.float64).reshape(-1, 2)
    start = torch.maximum(s[:, None, 0], t[None, :, 0])
    end = torch.minimum(s[:, None, 1], t[None, :, 1])
    return (end - start).clamp_min(0.0)


def alignment_matrices(
    student: Sequence[tuple[int, int]], teacher: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q [N_s, N_t] averages teacher query rows into student rows; K [N_t, N_s] splits each
    teacher key's mass over the student tokens that share its characters (mass kept).

    Tokens without characters (BOS and other specials) overlap nothing; special tokens at the
    same index on both sides (e.g. both start with BOS) are matched to each other.
    """
    overlap = span_overlap(student, teacher)
    for i, (s_span, t_span) in enumerate(zip(student, teacher, strict=False)):
        if s_span[0] == s_span[1] and t_span[0] == t_span[1]:
            overlap[i, i] = 1.0  # zero-width specials at the same place: BOS <-> BOS
        else:
            break
    Q = overlap / overlap.sum(dim=1, keepdim=True).clamp_min(EPS)
    K = overlap.T / overlap.T.sum(dim=1, keepdim=True).clamp_min(EPS)
    return Q, K


def project_attention(A: torch.Tensor, Q: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher maps A [..., N_t, N_t] -> student positions [..., N_s, N_s], and a row-valid mask [N_s].

    Queries averaged (Q), keys summed (K), causality kept (keys after the query dropped),
    rows renormalised. A row is valid when it received mass.
    """
    Q, K = Q.to(A.dtype), K.to(A.dtype)
    P = Q @ A @ K  # [..., N_s, N_s]
    n = P.shape[-1]
    P = P * torch.ones(n, n, dtype=P.dtype, device=P.device).tril()
    mass = P.sum(-1, keepdim=True)
    valid = (Q.sum(-1) > 0) & (mass.reshape(-1, n) > EPS).all(dim=0)
    return P / mass.clamp_min(EPS), valid


# ---- loss -------------------------------------------------------------------------------


def soften(P: torch.Tensor, temperature: float, causal: torch.Tensor) -> torch.Tensor:
    """Temperature-softened attention map: softmax(log P / T) over the causal keys."""
    logits = torch.log(P.clamp_min(EPS)) / temperature
    logits = logits.masked_fill(~causal, float("-inf"))
    return torch.softmax(logits, dim=-1)


def check_direction(direction: str) -> KlDirection:
    """`direction` if it is one of KL_DIRECTIONS, else an error naming them."""
    for known in KL_DIRECTIONS:
        if direction == known:
            return known
    raise SublensError(f"Unknown SHD KL direction {direction!r}; choose one of {', '.join(KL_DIRECTIONS)}.")


def shd_kl(
    teacher: torch.Tensor,
    student: torch.Tensor,
    row_valid: torch.Tensor,
    temperature: float = 1.0,
    direction: str = DEFAULT_KL_DIRECTION,
) -> torch.Tensor:
    """KL per row over the causal keys, averaged over valid rows and heads: KL(student ‖
    teacher) for ``student_teacher`` (the default), KL(teacher ‖ student) for
    ``teacher_student`` (module docstring). Both maps are softened at `temperature`; the
    teacher's carries no gradient.

    teacher, student: [b, m, N, N] probability maps; row_valid: [b, N] (non-pad query rows
    that carry teacher mass). Returns a scalar.
    """
    direction = check_direction(direction)
    n = teacher.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=teacher.device).tril()
    t = soften(teacher.detach(), temperature, causal)
    s = soften(student, temperature, causal)
    log_t, log_s = torch.log(t.clamp_min(EPS)), torch.log(s.clamp_min(EPS))
    terms = s * (log_s - log_t) if direction == "student_teacher" else t * (log_t - log_s)
    kl = terms.masked_fill(~causal, 0.0).sum(-1)
    weights = row_valid[:, None, :].to(kl.dtype).expand_as(kl)  # [b, m, N]
    return (kl * weights).sum() / weights.sum().clamp_min(1.0)


def token_spans(tokenizer: object, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` (with the tokenizer's own special tokens) and each token's
    character span; special tokens get an empty span."""
    encoded = tokenizer(text, return_offsets_mapping=True)  # type: ignore[operator]
    ids = list(encoded["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", []))
    spans = [
        (0, 0) if i in special else (int(a), int(b)) for i, (a, b) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, spans
