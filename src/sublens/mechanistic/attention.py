"""Attention to a span of the prompt: the tokens whose characters overlap a span of the text
(``token_span``) and the attention mass from one query position to them, per layer and head
(``attention_to``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# ---------------------------------------------------------------------------------------------
# attention


def token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose character span overlaps [start, end) (special tokens, whose
    span is empty, never do)."""
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]


def attention_to(patterns: torch.Tensor, span: Sequence[int], query: int = -1) -> torch.Tensor:
    """Attention mass from position `query` to the key positions `span`, per layer and head:
    patterns [L, H, q, k] -> [L, H]."""
    return patterns[:, :, query][:, :, list(span)].sum(dim=-1)
