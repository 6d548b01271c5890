"""The SHD loss: the student's attention probabilities, captured with their graph while the
training loop runs (`ShdLoss.attached`), cut per example out of the (padded or packed)
batch and compared with the teacher's `Targets` by `shd.shd_kl` per distilled layer
(`layer_losses`), in the configured KL direction; `ShdLoss` averages over layers and is the
``extra_loss`` of `sublens.training.train`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from sublens.arch import Adapter
from sublens.distill.examples import AlignedExample
from sublens.distill.teacher import PATTERN, ShdTeacher, Targets, pad_stack
from sublens.errors import ConfigError, SublensError
from sublens.hooks import ActivationCache, capture, hook_names
from sublens.settings import DEFAULT_KL_DIRECTION
from sublens.shd import check_direction, shd_kl
from sublens.training_data import Batch, Segment


# ---- student side and the loss -------------------------------------------------------------
def _direction(direction: str) -> str:
    try:
        return check_direction(direction)
    except SublensError as exc:
        raise ConfigError(str(exc)) from exc


def student_maps(pattern: torch.Tensor, segments: Sequence[Segment], n: int) -> torch.Tensor:
    """Each example's own map cut out of a batch's pattern [rows, m, T, T] -> [E, m, n, n]
    (one block per segment: padded and packed batches alike)."""
    blocks = [
        pattern[seg.row, :, seg.start : seg.start + seg.length, seg.start : seg.start + seg.length] for seg in segments
    ]
    return pad_stack(blocks, n)


def layer_losses(
    targets: Targets,
    patterns: dict[int, torch.Tensor],
    segments: Sequence[Segment],
    temperature: float,
    direction: str = DEFAULT_KL_DIRECTION,
) -> dict[int, tuple[torch.Tensor, int]]:
    """layer -> (KL in `direction` (`shd.shd_kl`) averaged over valid rows and heads, number of
    valid rows)."""
    n = max(targets.lengths)
    out = {}
    for s, target in targets.maps.items():
        student = student_maps(patterns[s], segments, n).float()
        valid = targets.valid[s].to(student.device)
        out[s] = (shd_kl(target.to(student.device), student, valid, temperature, direction), int(valid.sum()))
    return out


class ShdLoss:
    """The SHD term for `sublens.training.train(..., extra_loss=loss)`:

        with loss.attached(student_model, student_adapter):
            train(student_model, tokenizer, [ex.example() for ex in examples], config, out,
                  extra_loss=loss)

    `examples` are the aligned examples in the order given to `train` (batch segments index
    them). The loss of a batch is the mean over distilled layers of the KL (in `direction`:
    ``student_teacher`` = KL(student ‖ squeezed teacher), ``teacher_student`` = KL(teacher ‖
    student)) averaged over valid rows and heads.
    """

    def __init__(
        self,
        teacher: ShdTeacher,
        examples: Sequence[AlignedExample],
        temperature: float = 1.0,
        direction: str = DEFAULT_KL_DIRECTION,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"SHD temperature must be positive, got {temperature}.")
        self.teacher = teacher
        self.examples = list(examples)
        self.temperature = temperature
        self.direction = _direction(direction)
        self._cache: ActivationCache | None = None

    @property
    def names(self) -> list[str]:
        return hook_names([PATTERN], self.teacher.layers)

    @contextmanager
    def attached(self, model: nn.Module, adapter: Adapter) -> Iterator[ShdLoss]:
        """Capture the student's attention probabilities with their graph (eager attention)
        for the body of the block."""
        if adapter.n_heads != self.teacher.m:
            raise SublensError(f"This loss was built for a student with {self.teacher.m} heads, not {adapter.n_heads}.")
        with capture(model, adapter, self.names, detach=False) as cache:
            self._cache = cache
            try:
                yield self
            finally:
                self._cache = None

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self._cache is None:
            raise SublensError(
                "ShdLoss needs the student's attention: call it inside `with loss.attached(model, adapter):`."
            )
        examples = [self.examples[seg.example] for seg in batch.segments]
        for seg, ex in zip(batch.segments, examples, strict=True):
            if seg.length != ex.n_student:
                raise SublensError(
                    f"Batch example #{seg.example} has {seg.length} tokens but its aligned text has "
                    f"{ex.n_student}: pass train() the examples in the order of the ShdLoss examples."
                )
        # Taken before the teacher runs (a teacher that is the student model would overwrite them).
        patterns = {s: self._cache[f"blocks.{s}.{PATTERN}"] for s in self.teacher.layers}
        targets = self.teacher.targets(examples)
        losses = layer_losses(targets, patterns, batch.segments, self.temperature, self.direction)
        loss = torch.stack([kl for kl, _ in losses.values()]).mean()
        metrics = {"shd": float(loss.detach())}
        alphas = [a for s in targets.alphas for a in targets.alphas[s]]
        if alphas:
            metrics["alpha_mean"] = float(torch.cat([a.flatten() for a in alphas]).mean())
        for s, (kl, _) in losses.items():
            metrics[f"kl_L{s}"] = float(kl.detach())
        return loss, metrics
