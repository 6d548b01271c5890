"""Perplexity on general-domain text: is an edited or fine-tuned model still a language model?"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from sublens.errors import SublensError
from sublens.settings import PerplexitySettings


def token_windows(tokenizer: Any, text: str, max_tokens: int, window: int) -> torch.Tensor:
    """The first `max_tokens` tokens of `text` cut into non-overlapping windows [n, window].

    Each window starts with BOS when the tokenizer has one (Gemma needs it), so every window
    is scored as a fresh document.
    """
    if window < 2:
        raise SublensError("The perplexity window must hold at least 2 tokens.")
    bos = getattr(tokenizer, "bos_token_id", None)
    body = window - 1 if bos is not None else window
    # ~4 characters per token: tokenize a prefix a little longer than needed, not the whole corpus.
    ids = tokenizer(text[: max_tokens * 8], add_special_tokens=False)["input_ids"][:max_tokens]
    n = len(ids) // body
    if n == 0:
        raise SublensError(
            f"The perplexity text has {len(ids)} tokens, fewer than one window of {body}: "
            "give a longer text or a smaller ppl_window."
        )
    chunks = torch.tensor(ids[: n * body]).view(n, body)
    if bos is not None:
        chunks = torch.cat([torch.full((n, 1), bos), chunks], dim=1)
    return chunks


@torch.inference_mode()
def perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    max_tokens: int = 8192,
    window: int = 512,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """exp(mean next-token NLL) over every predicted token of the windows."""
    windows = token_windows(tokenizer, text, max_tokens, window)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    batches = range(0, len(windows), batch_size)
    for start in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)  # [b, window]
        logits = model(batch).logits.float()  # [b, window, vocab]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
    mean = total_nll / total_tokens
    return {"perplexity": math.exp(mean), "mean_nll": mean, "tokens": total_tokens, "windows": len(windows)}


def measure_perplexity(lm: Any, settings: PerplexitySettings, text: str) -> dict[str, Any] | None:
    """Perplexity of a LoadedModel (or anything with .model and .tokenizer) on `text`, if enabled."""
    if not settings.enabled:
        return None
    return perplexity(lm.model, lm.tokenizer, text, settings.max_tokens, settings.window, settings.batch_size)
