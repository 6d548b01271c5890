"""Alignment across tokenizers: each model tokenizes the same text its own way, and every
teacher token gets its character span *in the student's text*. The student reads the plain
text; the teacher reads it plainly (after an optional context paragraph) or inside its chat
template (`TeacherView`), and tokens of the template or context are mapped to `OUTSIDE`.
`align_record` combines both into an `AlignedExample`; the student's prompt/answer split
says which tokens the LM loss covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sublens.distill.examples import OUTSIDE, AlignedExample, Span, TextRecord
from sublens.errors import ConfigError, SublensError
from sublens.prompts import COMPLETION_SEPARATOR, chat_prompt
from sublens.settings import TeacherView
from sublens.shd import token_spans


def encode_spans(tokenizer: Any, text: str, add_special_tokens: bool = True) -> tuple[list[int], list[Span]]:
    """Token ids of `text` and each token's character span (special tokens: empty span)."""
    if add_special_tokens:
        return token_spans(tokenizer, text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = set(getattr(tokenizer, "all_special_ids", []))
    ids = [int(i) for i in encoded["input_ids"]]
    spans = [
        (0, 0) if i in special else (int(a), int(b)) for i, (a, b) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, spans


def _answer_split(spans: Sequence[Span], answer_start: int, where: str) -> int:
    """Number of tokens before the first answer token (at least 1: the first token of a text
    has no context to be predicted from)."""
    if answer_start == 0:
        first_real = next((i for i, (a, b) in enumerate(spans) if b > a), None)
        if first_real is None or first_real + 1 >= len(spans):
            raise ConfigError(f"{where}: the text has fewer than two tokens; give a longer text.")
        return first_real + 1
    for i, (a, b) in enumerate(spans):
        if b > a and a >= answer_start:
            return i
    raise ConfigError(f"{where}: the answer tokenizes to no tokens of its own; give a non-empty answer.")


def _map_spans(spans: Sequence[Span], segments: Sequence[tuple[int, int, int]]) -> list[Span]:
    """Teacher spans (teacher string) -> student-text spans through (start, end, target)
    segments: characters [start, end) of the teacher string are characters [target, ...) of
    the student's text. Zero-width spans (specials) stay; others outside every segment get
    `OUTSIDE`; a span crossing a segment edge keeps its part inside."""
    out: list[Span] = []
    for a, b in spans:
        if a == b:
            out.append((0, 0))
            continue
        for start, end, target in segments:
            lo, hi = max(a, start), min(b, end)
            if hi > lo:
                out.append((lo - start + target, hi - start + target))
                break
        else:
            out.append(OUTSIDE)
    return out


def teacher_encoding(
    tokenizer: Any, record: TextRecord, view: TeacherView, where: str = "text"
) -> tuple[list[int], list[Span], str]:
    """Teacher ids, their spans in the student's text, and the teacher's full input string."""
    if view.format == "plain":
        context = view.system + COMPLETION_SEPARATOR if view.system else ""
        full = context + record.text
        ids, spans = encode_spans(tokenizer, full, add_special_tokens=True)
        return ids, _map_spans(spans, [(len(context), len(full), 0)]), full
    if view.format != "chat":
        raise ConfigError(f"Unknown teacher format {view.format!r}; use plain or chat.")
    if not record.prompt:
        raise ConfigError(
            f"{where}: a chat-format teacher needs prompt/answer records (the prompt is the user "
            "turn, the answer the assistant turn); this one is a plain text. Use "
            "teacher format: plain, or give records with prompt and answer fields."
        )
    rendered = chat_prompt(tokenizer, record.prompt, view.system).text
    at = rendered.rfind(record.prompt)
    if at < 0:
        raise SublensError(
            f"{where}: the teacher's chat template changed the prompt text (e.g. stripped it), so "
            "its tokens cannot be matched to the student's. Use teacher format: plain."
        )
    full = rendered + record.answer
    ids, spans = encode_spans(tokenizer, full, add_special_tokens=False)
    segments = [(at, at + len(record.prompt), 0), (len(rendered), len(full), record.answer_start)]
    return ids, _map_spans(spans, segments), full


def student_encoding(tokenizer: Any, record: TextRecord, where: str = "text") -> tuple[list[int], list[Span], int]:
    """Student ids of the plain text (its own special tokens, e.g. Gemma's <bos>), their
    spans, and the number of prompt tokens (the LM loss covers the rest)."""
    ids, spans = token_spans(tokenizer, record.text)
    return ids, spans, _answer_split(spans, record.answer_start, where)


def align_record(
    record: TextRecord,
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    view: TeacherView,
    where: str = "text",
) -> AlignedExample:
    """Tokenize one text for both models and record where each token's characters are."""
    s_ids, s_spans, n_prompt = student_encoding(student_tokenizer, record, where)
    t_ids, t_spans, _ = teacher_encoding(teacher_tokenizer, record, view, where)
    return AlignedExample(tuple(s_ids), tuple(s_spans), n_prompt, tuple(t_ids), tuple(t_spans))
