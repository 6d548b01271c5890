"""Layers, windows and head groups of a (teacher, student) pair: which student layers are
distilled, each one's attention window (Gemma3's sliding-window layers; `window_mask` is the
causal mask within it), and which teacher heads the k → m merge schedule puts into each
student head (`head_groups`, in `squeeze_heads`' order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sublens.arch import Adapter
from sublens.errors import ConfigError
from sublens.shd import merge_schedule


# ---- layers and windows --------------------------------------------------------------------
def student_layers(adapter: Adapter, layers: Sequence[int] | None) -> list[int]:
    """The distilled student layers (all when None), checked and sorted."""
    chosen = list(range(adapter.n_layers)) if layers is None else sorted(set(int(x) for x in layers))
    if not chosen:
        raise ConfigError("shd.layers is empty: give at least one student layer (or null for all).")
    bad = [x for x in chosen if not 0 <= x < adapter.n_layers]
    if bad:
        raise ConfigError(f"shd.layers {bad} do not exist: the student has layers 0..{adapter.n_layers - 1}.")
    return chosen


def attention_window(adapter: Adapter, layer: int) -> int | None:
    """Sliding-window size of a layer's attention (Gemma3 local layers), None for global."""
    window = getattr(adapter.attn(layer), "sliding_window", None)
    return int(window) if window else None


def window_mask(n: int, window: int | None, device: torch.device | None = None) -> torch.Tensor:
    """[n, n] bool: keys a query may attend to (causal, and within `window` when given:
    key > query − window, as transformers' sliding-window overlay)."""
    idx = torch.arange(n, device=device)
    allowed = idx[None, :] <= idx[:, None]
    if window is not None:
        allowed &= idx[None, :] > idx[:, None] - window
    return allowed


def head_groups(k: int, m: int, fallback: str = "error") -> list[list[int]]:
    """The teacher heads merged into each of the m student heads (`squeeze_heads`' order)."""
    if m > k and fallback == "repeat":
        return [[j % k] for j in range(m)]
    groups = [[h] for h in range(k)]
    for pairs in merge_schedule(k, m):
        merged = [groups[2 * i] + groups[2 * i + 1] for i in range(pairs)]
        groups = merged + groups[2 * pairs :]
    return groups
