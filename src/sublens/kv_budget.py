"""How many rows the scorer and the sampler run together: their `batch_size`, lowered where the
key/value buffers of that many rows would pass a memory budget.

The KV cache, not the weights, is what grows with the batch: rows x context x (2 x layers x
kv_heads x head_dim) numbers. A fixed batch that is harmless on a 135M model at 60 tokens holds
gigabytes on a 7B model at 500. The budget is a config value (`scoring_memory_mb` of every
experiment, set around a run by `run_experiment`), never read from the machine's free memory,
so the batches a run uses (and with them its float rounding) depend on the config alone.
Torch-free, so a config can set it before torch is imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

DEFAULT_SCORING_MEMORY_MB = 2048.0
_budget_mb: ContextVar[float] = ContextVar("scoring_memory_mb", default=DEFAULT_SCORING_MEMORY_MB)

# The buffers one row holds at once, in context lengths: the prompt's own KV (kept for the
# whole group) and the level or decoding buffer it is copied into.
_COPIES_PER_ROW = 2


@contextmanager
def scoring_memory(mb: float) -> Iterator[None]:
    """Within the block, scoring and sampling keep their key/value buffers under `mb` MiB."""
    if mb <= 0:
        raise ValueError(f"scoring_memory_mb must be positive, got {mb}.")
    token = _budget_mb.set(float(mb))
    try:
        yield
    finally:
        _budget_mb.reset(token)


def kv_bytes_per_position(model: Any) -> int:
    """Bytes of keys and values one token position holds, over all layers (at the weights' dtype;
    an autocast run stores fewer, so the estimate errs on the safe side)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config  # multimodal wrappers (Gemma 3 4B+)
    layers = _first_int(config, "num_hidden_layers", "n_layer")
    heads = _first_int(config, "num_attention_heads", "n_head")
    kv_heads = _first_int(config, "num_key_value_heads") or heads
    head_dim = _first_int(config, "head_dim") or _first_int(config, "hidden_size", "n_embd") // max(heads, 1)
    itemsize = next(model.parameters()).element_size()
    return 2 * layers * kv_heads * head_dim * itemsize


def rows_within_budget(model: Any, batch_size: int, context: int) -> int:
    """`batch_size`, or fewer rows (at least one) where each row's `context` positions of key/value
    buffers would take the batch past the budget in force."""
    return rows_fitting(batch_size, context, kv_bytes_per_position(model), _budget_mb.get())


def rows_fitting(batch_size: int, context: int, bytes_per_position: int, budget_mb: float) -> int:
    """The rule itself (also used by `sublens plan` for models it has not loaded)."""
    per_row = _COPIES_PER_ROW * max(context, 1) * bytes_per_position
    fitting = int(budget_mb * 2**20 // per_row) if per_row else batch_size
    return max(1, min(batch_size, fitting))


def _first_int(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0
