"""Batched forward passes of the mechanistic analysis: sequences grouped by length into batches
that are never padded (``grouped_batches``), and one pass over all of them that captures the
named activations and the logits at the final position (``final_position_pass``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from sublens.arch import Adapter
from sublens.hooks import capture
from sublens.mechanistic.errors import MechanisticError

# ---------------------------------------------------------------------------------------------
# batched forward passes


def grouped_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by sequence length, then cut into batches: no batch is ever padded."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, length in enumerate(lengths):
        by_length[length].append(index)
    return [
        indices[start : start + batch_size]
        for length in sorted(by_length)
        for indices in [by_length[length]]
        for start in range(0, len(indices), batch_size)
    ]


BatchFn = Callable[[list[int], dict[str, torch.Tensor], torch.Tensor], None]


def final_position_pass(
    model: nn.Module,
    adapter: Adapter,
    sequences: Sequence[Sequence[int]],
    names: Sequence[str],
    on_batch: BatchFn,
    batch_size: int = 16,
    desc: str = "forward",
    progress: bool = True,
) -> None:
    """Run every sequence, capturing `names` at the final position, in unpadded batches.

    ``on_batch(indices, acts, logits)`` gets the indices into `sequences`, each activation at
    the last position ([b, ...]) and the last position's logits [b, vocab].
    """
    if any("hook_pattern" in name for name in names):
        raise MechanisticError("Attention patterns are not final-position activations; capture them directly.")
    device = next(model.parameters()).device
    batches = grouped_batches([len(s) for s in sequences], batch_size)
    with capture(model, adapter, names) as cache, torch.no_grad():
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            ids = torch.tensor([list(sequences[i]) for i in batch], device=device)
            logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
            on_batch(batch, {name: cache[name][:, -1] for name in names}, logits)
