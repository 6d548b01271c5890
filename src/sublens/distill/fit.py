"""The fit of a student to the teacher maps, without training: a `FitSet` holds held-out texts
with their teacher targets, computed once, and `measure_fit` measures the KL between a
student's maps and the squeezed teacher's in each fit set's direction (that of its
training loss), per layer and averaged, at the training temperature and at 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sublens.arch import Adapter
from sublens.distill.examples import AlignedExample
from sublens.distill.loss import _direction, layer_losses
from sublens.distill.teacher import PATTERN, ShdTeacher, Targets
from sublens.errors import SublensError
from sublens.hooks import capture, hook_names
from sublens.settings import DEFAULT_KL_DIRECTION
from sublens.training_data import Batch


# ---- fit of a student to the teacher maps (no training) -------------------------------------
@dataclass
class FitSet:
    """Held-out texts with their teacher targets, computed once and reused for every student
    state (before / after training)."""

    batches: list[tuple[Batch, Targets]]
    teacher: ShdTeacher
    temperature: float
    direction: str = DEFAULT_KL_DIRECTION  # of the KL, as in the training loss

    @classmethod
    def build(
        cls,
        teacher: ShdTeacher,
        examples: Sequence[AlignedExample],
        batch_size: int,
        temperature: float,
        pad_id: int = 0,
        direction: str = DEFAULT_KL_DIRECTION,
    ) -> FitSet:
        from sublens.training_data import collate, tokenize_examples

        data = tokenize_examples([ex.example() for ex in examples], None, max(ex.n_student for ex in examples))
        batches = []
        for start in range(0, len(examples), batch_size):
            rows = [[i] for i in range(start, min(start + batch_size, len(examples)))]
            batch = collate(data, rows, pad_id, packed=False)
            batches.append((batch, teacher.targets([examples[r[0]] for r in rows])))
        return cls(batches, teacher, temperature, _direction(direction))

    def alphas(self) -> dict[int, list[torch.Tensor]]:
        """layer -> per phase, all examples' α ([n_examples, pairs])."""
        out: dict[int, list[torch.Tensor]] = {}
        for _, targets in self.batches:
            for s, phases in targets.alphas.items():
                if s not in out:
                    out[s] = [a.cpu() for a in phases]
                else:
                    out[s] = [torch.cat([old, a.cpu()]) for old, a in zip(out[s], phases, strict=True)]
        return out

    def measure(
        self, model: nn.Module, adapter: Adapter, temperatures: Sequence[float] | None = None
    ) -> dict[str, Any]:
        return measure_fit(model, adapter, {"fit": self}, temperatures)["fit"]


@torch.no_grad()
def measure_fit(
    model: nn.Module, adapter: Adapter, fitsets: Mapping[str, FitSet], temperatures: Sequence[float] | None = None
) -> dict[str, dict[str, Any]]:
    """The KL between the student's maps and the squeezed teacher's, in each fit set's direction
    (that of its training loss; recorded as ``kl_direction``), per layer and averaged over layers
    (each layer: over the valid rows and heads of every example) for each fit set, at its
    training temperature and at 1 (or the given temperatures). Fit sets of the same texts share
    the student's forward."""
    sets = list(fitsets.items())
    first = sets[0][1]
    for name, fs in sets[1:]:
        if len(fs.batches) != len(first.batches) or any(
            not torch.equal(a.input_ids, b.input_ids) for (a, _), (b, _) in zip(fs.batches, first.batches, strict=True)
        ):
            raise SublensError(f"Fit set {name!r} holds other texts than {sets[0][0]!r}; measure them separately.")
    layers = sorted({s for _, fs in sets for s in fs.teacher.layers})
    temps = {name: sorted({fs.temperature, 1.0} if temperatures is None else set(temperatures)) for name, fs in sets}
    sums: dict[tuple[str, float, int], float] = {}
    rows: dict[tuple[str, int], int] = {}
    names = hook_names([PATTERN], layers)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with capture(model, adapter, names) as cache:
            for i, (batch, _) in enumerate(first.batches):
                b = batch.to(device)
                model(**b.model_inputs(), use_cache=False, logits_to_keep=1)
                patterns = {s: cache[f"blocks.{s}.{PATTERN}"] for s in layers}
                for name, fs in sets:
                    targets = fs.batches[i][1]
                    for T in temps[name]:
                        for s, (kl, n) in layer_losses(targets, patterns, b.segments, T, fs.direction).items():
                            sums[(name, T, s)] = sums.get((name, T, s), 0.0) + float(kl) * n
                            if temps[name][0] == T:
                                rows[(name, s)] = rows.get((name, s), 0) + n
    finally:
        model.train(was_training)
    out: dict[str, dict[str, Any]] = {}
    for name, fs in sets:
        result: dict[str, Any] = {
            "layers": fs.teacher.layers,
            "kl_direction": fs.direction,
            "rows": {str(s): rows[(name, s)] for s in fs.teacher.layers},
        }
        for T in temps[name]:
            per_layer = {str(s): sums[(name, T, s)] / max(rows[(name, s)], 1) for s in fs.teacher.layers}
            result[f"T={T:g}"] = {"mean": sum(per_layer.values()) / len(per_layer), "per_layer": per_layer}
        out[name] = result
    return out
