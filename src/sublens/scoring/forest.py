"""The token-level scoring engine: prompt KV reuse and a prefix forest.

Each prompt runs once; its KV cache is shared by all its continuations. Continuations are put
in a prefix tree (trie) per prompt, so a shared prefix (" 1" in " 12", " 123", ...) is computed
once: the work is one token per distinct prefix that has a continuation after it (leaves need
no forward pass: their log-probability comes from their parent's distribution). Trie nodes are
run level by level, ``batch_size`` nodes at a time; the nodes of one level all have the same
context length (prompt + depth), and prompts are grouped by length, so no batch is ever padded
and padding cannot change a result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from sublens.scoring.core import (
    KV,
    _device,
    _forward,
    _kv,
)

# ---------------------------------------------------------------------------------------------
# the prefix forest


@dataclass
class _Forest:
    """Tries over the continuations of G prompts of equal length, stored level by level.

    Level d holds the distinct (d+1)-token prefixes: tokens[d][i] is node i's last token,
    parents[d][i] its parent at level d-1 (for d = 0: the prompt slot 0..G-1).
    """

    tokens: list[list[int]]
    parents: list[list[int]]
    paths: list[list[list[int]]]  # [prompt slot][continuation] -> node index per level
    owners: list[list[int]]  # [level][node] -> prompt slot

    @classmethod
    def build(cls, continuations: list[list[tuple[int, ...]]]) -> _Forest:
        tokens: list[list[int]] = []
        parents: list[list[int]] = []
        owners: list[list[int]] = []
        index: list[dict[tuple[int, int], int]] = []
        paths: list[list[list[int]]] = []
        for slot, conts in enumerate(continuations):
            slot_paths = []
            for cont in conts:
                parent, path = slot, []
                for d, tok in enumerate(cont):
                    if d == len(index):
                        index.append({})
                        tokens.append([])
                        parents.append([])
                        owners.append([])
                    node = index[d].get((parent, tok))
                    if node is None:
                        node = index[d][(parent, tok)] = len(tokens[d])
                        tokens[d].append(tok)
                        parents[d].append(parent)
                        owners[d].append(slot)
                    path.append(node)
                    parent = node
                slot_paths.append(path)
            paths.append(slot_paths)
        return cls(tokens, parents, paths, owners)

    @property
    def depth(self) -> int:
        return len(self.tokens)

    def internal(self, d: int) -> list[int]:
        """Nodes of level d that have children (the only ones that need a forward pass)."""
        return sorted(set(self.parents[d + 1])) if d + 1 < self.depth else []


def _gather_children(
    logp: torch.Tensor,  # [B, V] distributions after the batch's parents
    batch_parents: torch.Tensor,  # [B] parent ids (level d-1 node or prompt slot)
    n_parents: int,
    child_parent: torch.Tensor,  # [N] parent of every node of level d
    child_token: torch.Tensor,  # [N]
    out: torch.Tensor,  # [N] log-probs of level d, filled where the parent is in the batch
) -> None:
    row_of = torch.full((n_parents,), -1, dtype=torch.long)
    row_of[batch_parents] = torch.arange(len(batch_parents))
    rows = row_of[child_parent]  # [N]
    hit = rows >= 0
    out[hit] = logp[rows[hit].to(logp.device), child_token[hit].to(logp.device)].cpu()


class _BufferLayer(DynamicLayer):
    """A full-attention cache layer over preallocated buffers [B, kv_heads, P + T, d_head] whose
    first P positions are filled: update() writes the next T in place instead of concatenating,
    so a batch's context is copied once (and a shared prompt part can be reused across batches).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        super().__init__()
        self._kbuf, self._vbuf, self._filled = keys, values, filled
        self.keys, self.values = keys[:, :, :filled], values[:, :, :filled]
        self.device = keys.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._filled + key_states.shape[-2]
        assert end <= self._kbuf.shape[-2], "buffer cache overflow"
        self._kbuf[:, :, self._filled : end] = key_states
        self._vbuf[:, :, self._filled : end] = value_states
        self._filled = end
        self.keys, self.values = self._kbuf[:, :, :end], self._vbuf[:, :, :end]
        return self.keys, self.values


def _buffer_cache(buffers: KV, filled: int) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [_BufferLayer(k, v, filled) for k, v in buffers]
    return cache


def _run_prompts(
    model: Any, prompts: torch.Tensor, batch_size: int, on_logp: Callable[[torch.Tensor, torch.Tensor], None]
) -> KV:
    """prompts [G, L] -> per layer KV [G, kv_heads, L, d_head]; on_logp(rows [b], logp [b, V])
    receives the distribution after each prompt."""
    device = _device(model)
    chunks: list[KV] = []
    for start in range(0, prompts.shape[0], batch_size):
        rows = torch.arange(start, min(start + batch_size, prompts.shape[0]))
        logp, cache = _forward(model, prompts[rows].to(device))
        on_logp(rows, logp)
        chunks.append(_kv(cache))
    if len(chunks) == 1:
        return chunks[0]
    return [(torch.cat([c[i][0] for c in chunks]), torch.cat([c[i][1] for c in chunks])) for i in range(len(chunks[0]))]


def _run_forest(model: Any, prompts: torch.Tensor, forest: _Forest, batch_size: int) -> list[torch.Tensor]:
    """prompts [G, L] -> per level, [N_d] float32 log-prob of each node's token given its prefix."""
    device = _device(model)
    n_slots, prompt_len = prompts.shape
    child_parent = [torch.tensor(p, dtype=torch.long) for p in forest.parents]
    child_token = [torch.tensor(t, dtype=torch.long) for t in forest.tokens]
    logp_levels = [torch.full((len(t),), float("nan")) for t in forest.tokens]

    def first_tokens(rows: torch.Tensor, logp: torch.Tensor) -> None:
        _gather_children(logp, rows, n_slots, child_parent[0], child_token[0], logp_levels[0])

    prompt_kv = _run_prompts(model, prompts, batch_size, first_tokens)

    # KV of the internal nodes of each level, per layer [n_internal_d, kv_heads, d_head].
    level_kv: list[KV] = []
    kv_row: list[torch.Tensor] = []  # per level: node -> row in level_kv[d] (-1: not stored)
    for d in range(forest.depth - 1):
        nodes = forest.internal(d)
        rows_of = torch.full((len(forest.tokens[d]),), -1, dtype=torch.long)
        rows_of[nodes] = torch.arange(len(nodes))
        kv_row.append(rows_of)
        keep_kv = bool(forest.internal(d + 1))  # deeper nodes need these as context
        buffers = _level_buffers(prompt_kv, min(batch_size, len(nodes)), prompt_len, d)
        stored: list[KV] = []
        for start in range(0, len(nodes), batch_size):
            batch = torch.tensor(nodes[start : start + batch_size], dtype=torch.long)  # [B]
            slots, ancestors = _lineage(child_parent, batch, d)
            ancestor_rows = [kv_row[j][anc].to(device) for j, anc in enumerate(ancestors)]
            view = _batch_context(buffers, prompt_kv, level_kv, slots.to(device), ancestor_rows, prompt_len)
            logp, node_kv = _run_nodes(model, view, prompt_len + d, child_token[d][batch], keep_kv)
            _gather_children(
                logp,
                batch,
                len(forest.tokens[d]),
                child_parent[d + 1],
                child_token[d + 1],
                logp_levels[d + 1],
            )
            if node_kv is not None:
                stored.append(node_kv)
        level_kv.append(_stacked(stored))
        del buffers
    return logp_levels


def _level_buffers(prompt_kv: KV, width: int, prompt_len: int, d: int) -> KV:
    """Per layer [width, kv_heads, L + d + 1, d_head] buffers for the batches of level d: the
    context of a level-d node is the prompt (L) + its d ancestors, + 1 slot for the node itself."""
    n_slots = prompt_kv[0][0].shape[0]
    buffers: KV = [
        (
            pk.new_empty(width, pk.shape[1], prompt_len + d + 1, pk.shape[3]),
            pv.new_empty(width, pv.shape[1], prompt_len + d + 1, pv.shape[3]),
        )
        for pk, pv in prompt_kv
    ]
    if n_slots == 1:  # one prompt: its part of the buffers is filled once for the level
        for (bk, bv), (pk, pv) in zip(buffers, prompt_kv, strict=True):
            bk[:, :, :prompt_len] = pk
            bv[:, :, :prompt_len] = pv
    return buffers


def _lineage(child_parent: list[torch.Tensor], batch: torch.Tensor, d: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(prompt slot [B], ancestors at levels 0 .. d-1, each [B]) of the level-d nodes `batch`."""
    chain = [batch]  # the batch's ancestors at levels d-1 .. 0, then prompt slots
    for j in range(d, 0, -1):
        chain.append(child_parent[j][chain[-1]])
    slots = child_parent[0][chain[-1]]  # [B]
    return slots, chain[1:][::-1]


def _batch_context(
    buffers: KV,
    prompt_kv: KV,
    level_kv: list[KV],
    slots: torch.Tensor,  # [B] prompt slot of each node
    ancestor_rows: list[torch.Tensor],  # per level 0 .. d-1: [B] row in level_kv of the ancestor
    prompt_len: int,
) -> KV:
    """The first B rows of the level's buffers with each node's context copied in: its prompt's
    KV (unless one prompt filled it for the level already), then its ancestors' KV."""
    b = len(slots)
    n_slots = prompt_kv[0][0].shape[0]
    view: KV = []
    for layer, ((bk, bv), (pk, pv)) in enumerate(zip(buffers, prompt_kv, strict=True)):
        bk, bv = bk[:b], bv[:b]
        if n_slots > 1:
            bk[:, :, :prompt_len] = pk.index_select(0, slots)
            bv[:, :, :prompt_len] = pv.index_select(0, slots)
        for j, r in enumerate(ancestor_rows):
            lk, lv = level_kv[j][layer]
            bk[:, :, prompt_len + j] = lk.index_select(0, r)
            bv[:, :, prompt_len + j] = lv.index_select(0, r)
        view.append((bk, bv))
    return view


def _run_nodes(
    model: Any, view: KV, filled: int, tokens: torch.Tensor, keep_kv: bool
) -> tuple[torch.Tensor, KV | None]:
    """One forward step of a batch of nodes over their context `view` (`filled` positions):
    (log-probs [B, V] after each node, the nodes' own K/V when `keep_kv`, else None)."""
    cache = _buffer_cache(view, filled)
    ids = tokens.unsqueeze(1).to(_device(model))  # [B, 1]
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]
    node_kv = None
    if keep_kv:  # the node's own K/V, just written at position L + d
        node_kv = [(k[:, :, -1].clone(), v[:, :, -1].clone()) for k, v in view]
    del cache, out
    return logp, node_kv


def _stacked(stored: list[KV]) -> KV:
    """A level's per-batch node KV, concatenated per layer (empty when none was kept)."""
    return (
        [(torch.cat([s[i][0] for s in stored]), torch.cat([s[i][1] for s in stored])) for i in range(len(stored[0]))]
        if stored
        else []
    )
