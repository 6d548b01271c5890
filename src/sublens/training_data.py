"""Training examples and batches for `sublens.training`.

An example is a prompt -> answer pair; the loss covers the answer tokens only. Batches are
planned per epoch as a pure function of (seed, epoch), so a resumed run sees exactly the
batches an uninterrupted one would, and three layouts keep padding waste small:

- ``pad``     random order, each micro-batch padded (right) to its longest example;
- ``bucket``  random order within windows of similar-length examples (sorted inside a window of
              ``BUCKET_WINDOW`` micro-batches, micro-batch order shuffled afterwards);
- ``pack``    several examples concatenated into one row of at most ``max_length`` tokens, each
              with its own position ids (0, 1, ...). Hugging Face models turn position ids that
              restart inside a row into a block-diagonal causal mask when no attention mask is
              given (and no cache is used), so an example never sees its neighbours.

Padding never changes the loss: padded positions are masked out of attention and carry the
label -100, and the loss is a sum over answer tokens divided by their count.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sublens.errors import ConfigError, SublensError

IGNORE_INDEX = -100
LAYOUTS: tuple[str, ...] = ("pad", "bucket", "pack")
BUCKET_WINDOW = 32  # micro-batches whose examples are sorted by length together ("bucket")


@dataclass(frozen=True)
class Example:
    """One prompt -> answer pair.

    ``prompt`` is already-formatted text (a chat template applied, assistant header included)
    or token ids; ``answer`` likewise (text is tokenized without special tokens). Text prompts
    are tokenized with ``add_special_tokens`` (False for templated chat text, which carries its
    own special tokens; True for completion prompts of base models, e.g. Gemma's <bos>).
    """

    prompt: str | Sequence[int]
    answer: str | Sequence[int]
    add_special_tokens: bool = False
    # One flag per answer token: False keeps that token out of the loss (it is still read as
    # context). None: every answer token is in the loss. Used to mask divergence tokens.
    loss_mask: Sequence[bool] | None = None


@dataclass(frozen=True)
class TokenizedExample:
    ids: tuple[int, ...]  # prompt ids followed by answer ids
    n_prompt: int
    loss_mask: tuple[bool, ...] | None = None  # per answer token; None: all in the loss

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.n_prompt

    @property
    def n_loss(self) -> int:
        """Answer tokens in the loss (all of them unless a loss mask leaves some out)."""
        return self.n_answer if self.loss_mask is None else sum(self.loss_mask)


def chat_example(tokenizer: Any, user: str, answer: str, *, system: str | None) -> Example:
    """A chat-formatted example: the template applied to (system, user) with the assistant
    header as prompt, and the answer plus whatever the template closes the turn with (e.g.
    ``<|im_end|>``) as answer. ``system=None`` means no system turn of our own; templates
    that insert a default system prompt (SmolLM2) then do so, so pass it explicitly."""
    messages = [{"role": "user", "content": user}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    if not (isinstance(prompt, str) and isinstance(full, str) and full.startswith(prompt)):
        raise SublensError(
            "This tokenizer's chat template does not render the assistant turn as a continuation "
            "of the generation prompt; build the Example texts yourself (prompt, answer)."
        )
    return Example(prompt=prompt, answer=full[len(prompt) :], add_special_tokens=False)


def _ids(tokenizer: Any, part: str | Sequence[int], special: bool, what: str) -> list[int]:
    if isinstance(part, str):
        if tokenizer is None:
            raise ConfigError(
                f"Example {what} is text but no tokenizer was given: pass the tokenizer "
                "(e.g. LoadedModel.tokenizer) or give token ids."
            )
        return list(tokenizer(part, add_special_tokens=special)["input_ids"])
    return [int(i) for i in part]


def tokenize_examples(
    examples: Iterable[Example], tokenizer: Any, max_length: int, vocab_size: int | None = None
) -> list[TokenizedExample]:
    """Token ids of every example; an error (saying how to fix it) for empty prompts or
    answers, ids outside the vocabulary, or examples longer than ``max_length``."""
    out: list[TokenizedExample] = []
    for example in examples:
        prompt = _ids(tokenizer, example.prompt, example.add_special_tokens, "prompt")
        answer = _ids(tokenizer, example.answer, False, "answer")
        out.append(
            TokenizedExample(
                ids=tuple(prompt + answer), n_prompt=len(prompt), loss_mask=_loss_mask(example, len(answer), len(out))
            )
        )
    if not out:
        raise ConfigError("No training examples were given.")
    empty = [i for i, ex in enumerate(out) if ex.n_prompt == 0 or ex.n_loss == 0]
    if empty:
        raise ConfigError(
            f"{len(empty)} example(s) have an empty prompt or answer, or a loss mask that leaves "
            f"no answer token in the loss (first: #{empty[0]}); every example needs at least one "
            "prompt token and one answer token in the loss (drop the others)."
        )
    too_long = [ex.n_tokens for ex in out if ex.n_tokens > max_length]
    if too_long:
        raise ConfigError(
            f"{len(too_long)} of {len(out)} examples are longer than max_length={max_length} "
            f"tokens (longest {max(too_long)}). Raise max_length or shorten those examples; "
            "sublens does not truncate silently."
        )
    if vocab_size is not None:
        bad = [i for i, ex in enumerate(out) if min(ex.ids) < 0 or max(ex.ids) >= vocab_size]
        if bad:
            raise ConfigError(f"Example #{bad[0]} has token ids outside the model's vocabulary (0..{vocab_size - 1}).")
    return out


def _loss_mask(example: Example, n_answer: int, index: int) -> tuple[bool, ...] | None:
    if example.loss_mask is None:
        return None
    mask = tuple(bool(flag) for flag in example.loss_mask)
    if len(mask) != n_answer:
        raise ConfigError(
            f"Example #{index} has a loss mask of {len(mask)} flags for {n_answer} answer "
            "tokens; give one flag per answer token (as the tokenizer splits the answer)."
        )
    return mask


def data_fingerprint(data: Sequence[TokenizedExample]) -> str:
    """sha256 of every example's ids, prompt length and loss mask (a resumed run must see the
    same data)."""
    digest = hashlib.sha256()
    for ex in data:
        digest.update(f"{ex.n_prompt}:{','.join(map(str, ex.ids))};".encode())
        if ex.loss_mask is not None:  # absent for unmasked data: their fingerprints are unchanged
            digest.update(("m" + "".join("1" if f else "0" for f in ex.loss_mask) + ";").encode())
    return digest.hexdigest()


# ---- planning ----------------------------------------------------------------------------
Row = list[int]  # example indices concatenated into one row (one index unless packed)
MicroBatch = list[Row]


def _group(rows: list[Row], lengths: list[int], batch_size: int, batch_tokens: int | None) -> list[MicroBatch]:
    """Consecutive rows into micro-batches of `batch_size` rows, or as many rows as fit in
    `batch_tokens` padded tokens (rows x longest row)."""
    batches: list[MicroBatch] = []
    current: MicroBatch = []
    longest = 0
    for row in rows:
        length = sum(lengths[i] for i in row)
        if current:
            full = (
                len(current) >= batch_size
                if batch_tokens is None
                else (len(current) + 1) * max(longest, length) > batch_tokens
            )
            if full:
                batches.append(current)
                current, longest = [], 0
        current.append(row)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


def _pack(order: list[int], lengths: list[int], capacity: int) -> list[Row]:
    """First-fit packing in the given (shuffled) order: each example goes into the first open
    row with room for it; rows are returned in the order they were opened. A row closes once
    no example could fit any more (this only makes the search short)."""
    shortest = min((lengths[i] for i in order), default=1)
    rows: list[Row] = []
    room: list[int] = []
    open_rows: list[int] = []
    for index in order:
        k = next((k for k, r in enumerate(open_rows) if lengths[index] <= room[r]), None)
        if k is None:
            k = len(open_rows)
            open_rows.append(len(rows))
            rows.append([])
            room.append(capacity)
        r = open_rows[k]
        rows[r].append(index)
        room[r] -= lengths[index]
        if room[r] < shortest:
            del open_rows[k]
    return rows


def plan_epoch(
    lengths: Sequence[int],
    layout: str,
    batch_size: int,
    batch_tokens: int | None,
    max_length: int,
    seed: int,
    epoch: int,
) -> list[MicroBatch]:
    """The micro-batches of one epoch: a pure function of its arguments."""
    if layout not in LAYOUTS:
        raise ConfigError(f"Unknown batch layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}.")
    lens = list(lengths)
    rng = random.Random(f"sublens-train-{seed}-{epoch}")
    order = list(range(len(lens)))
    rng.shuffle(order)
    if layout == "pack":
        return _group(_pack(order, lens, max_length), lens, batch_size, batch_tokens)
    if layout == "pad":
        return _group([[i] for i in order], lens, batch_size, batch_tokens)
    mean = max(1, sum(lens) // max(1, len(lens)))
    rows = batch_size if batch_tokens is None else max(1, batch_tokens // mean)
    window = BUCKET_WINDOW * rows  # examples sorted together
    batches: list[MicroBatch] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lens[i])
        batches.extend(_group([[i] for i in chunk], lens, batch_size, batch_tokens))
    rng.shuffle(batches)
    return batches


# ---- collation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """Where one example sits in a batch: row, first column, prompt and total length."""

    example: int
    row: int
    start: int
    n_prompt: int
    length: int


@dataclass
class Batch:
    """One micro-batch. ``labels`` follows the Hugging Face convention (the token itself on
    answer tokens, -100 on prompt and padding; the shift happens in the loss).
    ``attention_mask`` is None for packed batches (position ids carry the boundaries).
    ``outputs`` is filled with the model's outputs of the LM forward before an extra loss
    is called, so it can reuse them (e.g. attentions)."""

    input_ids: torch.Tensor  # [rows, T]
    attention_mask: torch.Tensor | None  # [rows, T], 1 = real token
    position_ids: torch.Tensor  # [rows, T]
    labels: torch.Tensor  # [rows, T]
    segments: list[Segment]
    n_real: int  # real (non-padding) tokens
    n_answer: int  # answer tokens = tokens in the loss
    outputs: Any = field(default=None, repr=False)

    @property
    def n_padded(self) -> int:
        return int(self.input_ids.numel())

    def target_mask(self) -> torch.Tensor:
        """[rows, T] bool: positions whose *next* token is an answer token (the logits needed)."""
        keep = torch.zeros_like(self.labels, dtype=torch.bool)
        keep[:, :-1] = self.labels[:, 1:] != IGNORE_INDEX
        return keep

    def targets(self) -> torch.Tensor:
        """[n_answer] the answer tokens, in the row-major order of `target_mask()`."""
        return self.labels[:, 1:][self.labels[:, 1:] != IGNORE_INDEX]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        return inputs

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=move(self.attention_mask),
            position_ids=self.position_ids.to(device),
            labels=self.labels.to(device),
            segments=self.segments,
            n_real=self.n_real,
            n_answer=self.n_answer,
        )


def tokenizer_pad_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0  # any id works: padding is masked out of attention and loss


def collate(data: Sequence[TokenizedExample], batch: MicroBatch, pad_id: int, packed: bool) -> Batch:
    """Tensors for one micro-batch, padded on the right to its longest row."""
    width = max(sum(data[i].n_tokens for i in row) for row in batch)
    shape = (len(batch), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    # Padding continues the last segment's positions: it comes after every real token, so
    # under the causal (and packed block-causal) mask no real token can attend to it.
    positions = torch.zeros(shape, dtype=torch.long)
    segments: list[Segment] = []
    for r, row in enumerate(batch):
        col = 0
        for index in row:
            ex = data[index]
            ids = torch.tensor(ex.ids, dtype=torch.long)
            input_ids[r, col : col + ex.n_tokens] = ids
            answer = ids[ex.n_prompt :]
            if ex.loss_mask is not None:
                answer = answer.masked_fill(~torch.tensor(ex.loss_mask), IGNORE_INDEX)
            labels[r, col + ex.n_prompt : col + ex.n_tokens] = answer
            mask[r, col : col + ex.n_tokens] = 1
            positions[r, col : col + ex.n_tokens] = torch.arange(ex.n_tokens)
            segments.append(Segment(index, r, col, ex.n_prompt, ex.n_tokens))
            col += ex.n_tokens
        if col < width:
            last = int(positions[r, col - 1]) + 1
            positions[r, col:] = torch.arange(last, last + width - col)
    n_real = int(mask.sum())
    return Batch(
        input_ids=input_ids,
        attention_mask=None if packed or n_real == mask.numel() else mask,
        position_ids=positions,
        labels=labels,
        segments=segments,
        n_real=n_real,
        n_answer=int((labels != IGNORE_INDEX).sum()),
    )
