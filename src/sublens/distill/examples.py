"""The texts SHD distils on and their two tokenizations: a `TextRecord` is one training text
(prompt, answer) as the student reads it; an `AlignedExample` is that text as both models
tokenize it, every token with its character span in the student's text (`OUTSIDE` for
teacher-only tokens such as template and context tokens), from which the projection
matrices of `sublens.shd.alignment_matrices` and the training loop's `Example` follow.
`aligned_from_ids` builds the identity alignment of pre-tokenized ids (tiny models, shared
tokenizers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sublens.errors import ConfigError
from sublens.prompts import COMPLETION_SEPARATOR
from sublens.shd import alignment_matrices
from sublens.training_data import Example

Span = tuple[int, int]
OUTSIDE: Span = (-2, -1)  # a teacher token with no characters in the student's text


# ---- texts and aligned examples ------------------------------------------------------------
@dataclass(frozen=True)
class TextRecord:
    """One training text: ``prompt`` (may be empty: then the whole text is in the LM loss)
    and ``answer``."""

    prompt: str
    answer: str

    @property
    def text(self) -> str:
        """What the student reads (and the teacher reads, maybe framed by its template)."""
        return self.prompt + COMPLETION_SEPARATOR + self.answer if self.prompt else self.answer

    @property
    def answer_start(self) -> int:
        """First character of the answer in `text`."""
        return len(self.prompt) + len(COMPLETION_SEPARATOR) if self.prompt else 0


@dataclass(frozen=True)
class AlignedExample:
    """One text as both models tokenize it. Spans are character ranges of the *student's*
    text; zero-width spans are special tokens (BOS), `OUTSIDE` marks teacher-only tokens."""

    student_ids: tuple[int, ...]
    student_spans: tuple[Span, ...]
    n_prompt: int  # student tokens before the answer (no LM loss on them)
    teacher_ids: tuple[int, ...]
    teacher_spans: tuple[Span, ...]

    @property
    def n_student(self) -> int:
        return len(self.student_ids)

    @property
    def n_teacher(self) -> int:
        return len(self.teacher_ids)

    @property
    def identity(self) -> bool:
        """Same tokens, same spans: the projection is the identity."""
        return self.student_ids == self.teacher_ids and self.student_spans == self.teacher_spans

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q [N_s, N_t], K [N_t, N_s]) of `shd.alignment_matrices`."""
        return alignment_matrices(self.student_spans, self.teacher_spans)

    def example(self) -> Example:
        """The training loop's example: the student's own token ids, split at the answer."""
        ids = list(self.student_ids)
        return Example(prompt=ids[: self.n_prompt], answer=ids[self.n_prompt :])


def aligned_from_ids(ids: Sequence[int], n_prompt: int, teacher_ids: Sequence[int] | None = None) -> AlignedExample:
    """An example given as token ids, read by both models with one tokenization (identity
    alignment): for tiny models without a tokenizer, and for same-tokenizer pairs."""
    teacher = list(ids) if teacher_ids is None else list(teacher_ids)
    if len(teacher) != len(ids):
        raise ConfigError("Identity alignment needs as many teacher as student tokens.")
    spans = tuple((i, i + 1) for i in range(len(ids)))
    return AlignedExample(tuple(int(i) for i in ids), spans, n_prompt, tuple(int(i) for i in teacher), spans)
