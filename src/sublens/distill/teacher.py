"""The teacher view of SHD: `ShdTeacher` runs the teacher (no gradient, eager attention) over
a right-padded batch of aligned examples, captures each mapped layer's attention
probabilities and values, squeezes them per sample to the student's m heads, projects them
onto the student's tokens, restricts them to each student layer's attention window and
renormalises; the result is the `Targets` the loss and the fit compare the student with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sublens.arch import Adapter
from sublens.distill.examples import AlignedExample
from sublens.distill.layers import attention_window, student_layers, window_mask
from sublens.errors import ConfigError, SublensError
from sublens.hooks import capture, hook_names
from sublens.shd import (
    EPS,
    FALLBACKS,
    Squeezed,
    head_values,
    layer_map,
    merge_schedule,
    project_attention,
    squeeze_heads,
)

PATTERN = "attn.hook_pattern"


# ---- teacher side --------------------------------------------------------------------------
@dataclass
class Targets:
    """Squeezed, projected teacher maps for E examples, per distilled student layer."""

    maps: dict[int, torch.Tensor]  # layer -> [E, m, n, n] (rows stochastic where valid)
    valid: dict[int, torch.Tensor]  # layer -> [E, n] bool (rows that count in the loss)
    alphas: dict[int, list[torch.Tensor]]  # layer -> one [E, pairs] tensor per merge phase
    lengths: list[int]  # student tokens per example
    raw: dict[int, Any] = field(default_factory=dict)  # layer -> details when asked (figures)


def pad_stack(maps: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """[m, n_i, n_i] maps -> [E, m, n, n], zero padded on the right and bottom."""
    return torch.stack([F.pad(x, (0, n - x.shape[-1], 0, n - x.shape[-2])) for x in maps])


class ShdTeacher:
    """The teacher side of SHD for one (teacher, student) pair: which teacher layer feeds each
    distilled student layer, and `targets(examples)`."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        student: Adapter,
        layers: Sequence[int] | None = None,
        fallback: str = "error",
        pad_id: int = 0,
    ) -> None:
        if fallback not in FALLBACKS:
            raise ConfigError(f"Unknown SHD fallback {fallback!r}; choose one of {', '.join(FALLBACKS)}.")
        self.model = model
        self.adapter = adapter
        self.k = adapter.n_heads
        self.m = student.n_heads
        if fallback == "error" or self.m <= self.k:
            try:
                self.schedule = merge_schedule(self.k, self.m)
            except SublensError as exc:  # the student has more heads than the teacher
                raise SublensError(f"{exc} (In `sublens run distill`: --set shd.fallback=repeat.)") from exc
        else:
            self.schedule = []
        self.fallback = fallback
        self.pad_id = pad_id
        self.layers = student_layers(student, layers)
        full_map = layer_map(student.n_layers, adapter.n_layers)
        self.teacher_layer = {s: full_map[s] for s in self.layers}
        self.windows = {s: attention_window(student, s) for s in self.layers}

    def describe(self) -> dict[str, Any]:
        return {
            "teacher_heads": self.k,
            "student_heads": self.m,
            "merge_schedule": self.schedule,
            "fallback": self.fallback if self.m > self.k else None,
            "layer_map": {str(s): t for s, t in self.teacher_layer.items()},
            "student_windows": {str(s): w for s, w in self.windows.items() if w},
        }

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(
        self, examples: Sequence[AlignedExample]
    ) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """One teacher pass over a right-padded batch: (teacher layer -> (A [E, k, N, N],
        v [E, N, kv, d_head])), real-token mask [E, N])."""
        n = max(ex.n_teacher for ex in examples)
        ids = torch.full((len(examples), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        for e, ex in enumerate(examples):
            ids[e, : ex.n_teacher] = torch.tensor(ex.teacher_ids)
            mask[e, : ex.n_teacher] = 1
        device = self.device
        ids, mask = ids.to(device), mask.to(device)
        wanted = sorted(set(self.teacher_layer.values()))
        names = hook_names([PATTERN, "attn.hook_v"], wanted)
        was_training = self.model.training
        self.model.eval()
        try:
            with capture(self.model, self.adapter, names) as cache:
                self.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        finally:
            self.model.train(was_training)
        out = {t: (cache[f"blocks.{t}.{PATTERN}"], cache[f"blocks.{t}.attn.hook_v"]) for t in wanted}
        return out, mask.bool()

    def squeeze(self, layer: int, A: torch.Tensor, v: torch.Tensor, real: torch.Tensor) -> Squeezed:
        """Squeeze one teacher layer's maps to m heads per sample. Padded queries and keys are
        zeroed first (A rows and X rows), so they take no part in α."""
        A = A.float() * real[:, None, :, None] * real[:, None, None, :]  # [E, k, N, N]
        X = head_values(v.float(), self.adapter.W_O(layer).float(), self.k)  # [E, k, N, d_model]
        X = X * real[:, None, :, None]
        return squeeze_heads(A, X, self.m, self.fallback)

    @torch.no_grad()
    def targets(self, examples: Sequence[AlignedExample], keep_raw: bool = False) -> Targets:
        """Squeeze each mapped teacher layer to m heads (per sample), project onto the
        student's tokens, restrict to each student layer's window and renormalise.
        Layer by layer, so only one layer's X [E, k, N, d_model] is in memory at a time."""
        per_layer, real = self.forward(examples)
        device = self.device
        matrices = [tuple(x.to(device=device, dtype=torch.float32) for x in ex.matrices()) for ex in examples]
        lengths = [ex.n_student for ex in examples]
        n = max(lengths)
        targets = Targets({}, {}, {}, lengths)
        for t, (A, v) in per_layer.items():
            squeezed = self.squeeze(t, A, v, real)
            projected = [
                project_attention(squeezed.maps[e, :, : ex.n_teacher, : ex.n_teacher], Q, K)
                for e, (ex, (Q, K)) in enumerate(zip(examples, matrices, strict=True))
            ]
            for s in (s for s in self.layers if self.teacher_layer[s] == t):
                maps, valid = [], []
                for P, ok in projected:
                    P = P * window_mask(P.shape[-1], self.windows[s], P.device)
                    mass = P.sum(-1, keepdim=True)  # [m, n_s, 1]
                    ok = ok & (mass.squeeze(-1) > EPS).all(dim=0)
                    maps.append(P / mass.clamp_min(EPS))
                    valid.append(F.pad(ok, (0, n - ok.shape[0])))
                targets.maps[s] = pad_stack(maps, n)
                targets.valid[s] = torch.stack(valid)
                targets.alphas[s] = squeezed.alphas
                if keep_raw:
                    targets.raw[s] = {"teacher": A.float(), "squeezed": squeezed.maps}
        targets.maps = dict(sorted(targets.maps.items()))
        return targets
