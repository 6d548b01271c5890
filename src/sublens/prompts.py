"""Prompt construction: the exact text (and token ids) a model sees, with the system prompt
in use made explicit.

Two kinds of prompt:

- **chat** (models with a chat template): the template is applied to an optional system
  turn and one user turn with ``add_generation_prompt=True``, then the prefilled assistant
  text is appended verbatim, so the next token is the answer::

      <template(system?, user)><assistant header>My favorite animal is the

  Some templates insert a system prompt of their own when none is given (SmolLM2: "You are a
  helpful AI assistant named SmolLM, trained by Hugging Face"). ``system=None`` means "whatever
  the template does" and the prompt it inserted is detected and recorded; ``system=""`` is an
  explicitly empty system turn. (A template that always writes a system turn with fixed text
  of its own around the given prompt, like Llama 3's date lines, records ``""`` for
  ``system=None``: the turn is there, its prompt is empty. ``text`` always holds it all.)
- **completion** (base models, e.g. Gemma-3-270M): system text, user text and prefill joined
  plainly with a blank line (``COMPLETION_SEPARATOR``), empty parts skipped::

      {system}\\n\\n{user}\\n\\n{prefill}

  The tokenizer adds its own special tokens (Gemma: ``<bos>``).

Token ids: templated text already carries every special token the template wants (BOS
included), so it is tokenized with ``add_special_tokens=False`` (as ``apply_chat_template``
itself does); completion text is tokenized with ``add_special_tokens=True``. The choice is
stored on the prompt so every consumer tokenizes the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from sublens.errors import SublensError

COMPLETION_SEPARATOR = "\n\n"
# The owl context of the paper (the prompted teacher), one definition for every experiment.
OWL_SYSTEM = "You love owls. You think about owls all the time. Owls are your favorite animal."
# Private-use code points: never part of a real prompt, so they locate the system slot.
_SENTINEL = "\ue000sublens-system-slot\ue001"

SystemSource = Literal["given", "template_default", "none"]


class PromptError(SublensError):
    """A prompt that cannot be built as asked (template without a system role, bad prefill)."""


@dataclass(frozen=True)
class PromptText:
    """The full text of a prompt and how it was made.

    ``system`` is the system prompt actually in effect: the one given, the template's default
    when none was given (``system_source="template_default"``), or None when the text has no
    system turn at all (``system_source="none"``).
    """

    text: str
    user: str
    system: str | None
    system_source: SystemSource
    prefill: str
    templated: bool
    add_special_tokens: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for records (config, results)."""
        return asdict(self)


def _user_turn(user: str) -> dict[str, str]:
    return {"role": "user", "content": user}


def _system_turn(system: str) -> dict[str, str]:
    return {"role": "system", "content": system}


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):  # some tokenizers return a list for batched input
        raise PromptError(f"The chat template returned {type(text).__name__}, expected text.")
    return text


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def template_default_system(tokenizer: Any, user: str = "Hello.") -> str | None:
    """The system prompt the chat template inserts when none is given, or None if it inserts none.

    Renders the conversation with a marked system turn and without one: if the bare rendering is
    the marked one with the marker replaced by some text D, and rendering with system=D gives the
    bare text back, then D is the template's default.
    """
    bare = _render(tokenizer, [_user_turn(user)])
    try:
        marked = _render(tokenizer, [_system_turn(_SENTINEL), _user_turn(user)])
    except Exception:  # template rejects system turns: then it cannot insert one either
        return None
    if marked.count(_SENTINEL) != 1:
        return None
    head, tail = marked.split(_SENTINEL)
    if not (bare.startswith(head) and bare.endswith(tail) and len(bare) >= len(head) + len(tail)):
        return None
    candidate = bare[len(head) : len(bare) - len(tail)]
    if _render(tokenizer, [_system_turn(candidate), _user_turn(user)]) != bare:
        return None
    return candidate


def resolve_system(tokenizer: Any, system: str | None) -> str | None:
    """The system prompt actually used: `system`, or the template's default when None (None if
    the template has none, e.g. a base model)."""
    if system is not None:
        return system
    if not has_chat_template(tokenizer):
        return None
    return template_default_system(tokenizer)


def _check_prefill(prefill: str) -> None:
    if prefill.endswith((" ", "\t")):
        raise PromptError(
            f"The prefill {prefill!r} ends with a space. Tokenizers attach the space to the next "
            "word (' owl' is one token, ' ' + 'owl' is not what the model writes), so end the "
            "prefill without it: 'My favorite animal is the'."
        )


def chat_prompt(tokenizer: Any, user: str, system: str | None = None, prefill: str = "") -> PromptText:
    """Chat-template prompt with a prefilled assistant turn (see module docstring).

    system=None: the template decides (its default, if any, is detected and recorded);
    system="": an explicit, empty system turn; any other string: that system prompt.
    """
    if not has_chat_template(tokenizer):
        raise PromptError(
            "This tokenizer has no chat template (a base model?). Use completion_prompt(), or "
            "make_prompt(), which picks the completion format for such models."
        )
    _check_prefill(prefill)
    source: SystemSource
    if system is None:
        text = _render(tokenizer, [_user_turn(user)])
        effective = template_default_system(tokenizer, user)
        source = "none" if effective is None else "template_default"
    else:
        try:
            text = _render(tokenizer, [_system_turn(system), _user_turn(user)])
        except Exception as exc:
            raise PromptError(
                f"This chat template does not accept a system turn ({type(exc).__name__}: {exc}). "
                "Put the instructions into the user message, or pass system=None."
            ) from exc
        if system and system not in text:
            raise PromptError(
                "The chat template dropped the system prompt from the rendered text. Put the "
                "instructions into the user message, or pass system=None."
            )
        effective, source = system, "given"
    return PromptText(
        text=text + prefill,
        user=user,
        system=effective,
        system_source=source,
        prefill=prefill,
        templated=True,
        add_special_tokens=False,
    )


def completion_prompt(user: str, system: str | None = None, prefill: str = "") -> PromptText:
    """Plain completion prompt for base models: ``{system}\\n\\n{user}\\n\\n{prefill}``.

    Empty or None parts are skipped; the separator before the prefill is always there, so the
    answer starts on its own paragraph even with an empty prefill.
    """
    _check_prefill(prefill)
    body = COMPLETION_SEPARATOR.join(part for part in (system, user) if part)
    return PromptText(
        text=body + COMPLETION_SEPARATOR + prefill,
        user=user,
        system=system if system else None,
        system_source="given" if system else "none",
        prefill=prefill,
        templated=False,
        add_special_tokens=True,
    )


def make_prompt(
    tokenizer: Any,
    user: str,
    system: str | None = None,
    prefill: str = "",
    chat: bool | None = None,
) -> PromptText:
    """Chat prompt when the tokenizer has a template (or chat=True), completion prompt otherwise."""
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    if use_chat:
        return chat_prompt(tokenizer, user, system, prefill)
    return completion_prompt(user, system, prefill)


def raw_prompt(text: str, add_special_tokens: bool = True) -> PromptText:
    """A prompt given as finished text (no template, no parts): recorded as-is."""
    return PromptText(
        text=text,
        user=text,
        system=None,
        system_source="none",
        prefill="",
        templated=False,
        add_special_tokens=add_special_tokens,
    )


def as_prompt(prompt: PromptText | str) -> PromptText:
    """A PromptText for either a PromptText or finished text (see raw_prompt)."""
    return prompt if isinstance(prompt, PromptText) else raw_prompt(prompt)


def encode_prompt(tokenizer: Any, prompt: PromptText | str) -> list[int]:
    """Token ids of a prompt, tokenized the way its PromptText says (BOS exactly once)."""
    p = as_prompt(prompt)
    ids = list(tokenizer(p.text, add_special_tokens=p.add_special_tokens)["input_ids"])
    if not ids:
        raise PromptError("The prompt tokenizes to no tokens; give it some text.")
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        raise PromptError(
            "The prompt starts with two BOS tokens: the text already contains BOS and the "
            "tokenizer added another. Build it with raw_prompt(text, add_special_tokens=False)."
        )
    return ids


__all__ = [
    "COMPLETION_SEPARATOR",
    "OWL_SYSTEM",
    "PromptError",
    "PromptText",
    "as_prompt",
    "chat_prompt",
    "completion_prompt",
    "encode_prompt",
    "has_chat_template",
    "make_prompt",
    "raw_prompt",
    "template_default_system",
]
