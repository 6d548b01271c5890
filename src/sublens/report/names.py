"""What the paper calls things: model specs, run directories and data files as a reader names them.

One table (`MODEL_NAMES`) maps every model spec sublens knows (embedded names, hub ids) to the
name a paper uses; `display_name` applies it, and names what is not in the table without leaking
a machine's paths or a run's folder names: a teacher run's directory is "the fine-tuned teacher",
any other local checkpoint its folder's name, an unknown hub id its model name (``owner/`` cut).
Plain text: the caller escapes it. Torch-free (the report never imports a model).

Sections adopt it through `display_name`; the teacher, subliminal and distill sections and the
Limitations use it (the other sections can adopt it the same way).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

# spec (lower case) -> the name a paper uses. Embedded names first, then the hub ids they stand
# for, then the hub models the study's configs name.
MODEL_NAMES: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct",
    "smollm2-360m-instruct": "SmolLM2-360M-Instruct",
    "smollm2-1.7b-instruct": "SmolLM2-1.7B-Instruct",
    "gemma3-270m": "Gemma-3-270M",
    "gemma3-270m-it": "Gemma-3-270M-IT",
    "huggingfacetb/smollm2-135m-instruct": "SmolLM2-135M-Instruct",
    "huggingfacetb/smollm2-360m-instruct": "SmolLM2-360M-Instruct",
    "huggingfacetb/smollm2-1.7b-instruct": "SmolLM2-1.7B-Instruct",
    "google/gemma-3-270m": "Gemma-3-270M",
    "google/gemma-3-270m-it": "Gemma-3-270M-IT",
    "meta-llama/llama-3.2-1b": "Llama-3.2-1B",
    "meta-llama/llama-3.2-1b-instruct": "Llama-3.2-1B-Instruct",
    "meta-llama/llama-3.2-3b-instruct": "Llama-3.2-3B-Instruct",
    "gpt2": "GPT-2",
    "openai-community/gpt2": "GPT-2",
    "gpt2-medium": "GPT-2 Medium",
    "openai-community/gpt2-medium": "GPT-2 Medium",
    "gpt2-large": "GPT-2 Large",
    "openai-community/gpt2-large": "GPT-2 Large",
    "gpt2-xl": "GPT-2 XL",
    "openai-community/gpt2-xl": "GPT-2 XL",
    "qwen/qwen2.5-0.5b-instruct": "Qwen2.5-0.5B-Instruct",
}

FINE_TUNED_TEACHER = "the fine-tuned teacher"
# A teacher run's second checkpoint: the teacher made the same way from a neutral system prompt.
CONTROL_TEACHER = "the control teacher"

_TINY_FAMILIES = {"llama": "Llama", "gemma3": "Gemma-3", "gpt2": "GPT-2", "qwen2": "Qwen2"}
_RUN_NAME = re.compile(r"^\d{8}-\d{6}_(?P<experiment>[\w-]+?)_[0-9a-f]+$")  # <timestamp>_<experiment>_<id>


def _parts(spec: str) -> tuple[list[str], str]:
    folder, _, checkpoint = spec.partition("#")
    return [p for p in PurePosixPath(folder.replace("\\", "/")).parts if p not in ("/", ".", "~")], checkpoint


def _is_local(spec: str) -> bool:
    folder = spec.partition("#")[0]
    return (
        spec.startswith((".", "/", "~"))
        or "#" in spec
        or folder.count("/") > 1
        or folder.endswith(".gguf")
        or any(_RUN_NAME.match(p) for p in _parts(spec)[0])
    )


def is_teacher_run(spec: object) -> bool:
    """A spec naming the model of a teacher run: its run directory (`<stamp>_teacher_<id>`, or
    `<paper run>/stages/teacher`), optionally with `#teacher`, or any run's `#teacher` checkpoint."""
    text = str(spec or "").strip().rstrip("/")
    if not text or not _is_local(text):
        return False
    parts, checkpoint = _parts(text)
    if checkpoint == "teacher":
        return True
    match = _RUN_NAME.match(parts[-1]) if parts else None
    if match and match.group("experiment") == "teacher":
        return True
    return len(parts) >= 2 and parts[-2] == "stages" and parts[-1] == "teacher"


def display_name(spec: object) -> str:
    """The name a paper uses for a model spec (plain text): 'SmolLM2-135M-Instruct',
    'Gemma-3-270M', 'Llama-3.2-1B-Instruct', 'GPT-2 Medium'; 'the fine-tuned teacher' for a
    teacher run's directory ('the control teacher' for its #control_teacher checkpoint); a local checkpoint's folder name; '?' when unknown."""
    text = str(spec if spec is not None else "").strip().rstrip("/")
    if not text:
        return "?"
    known = MODEL_NAMES.get(text.lower())
    if known:
        return known
    if text.startswith("tiny:"):
        family = text.removeprefix("tiny:").partition("?")[0]
        return f"a tiny randomly initialised {_TINY_FAMILIES.get(family, family)} model"
    if is_teacher_run(text):
        return CONTROL_TEACHER if _parts(text)[1] == "control_teacher" else FINE_TUNED_TEACHER
    if _is_local(text):
        parts, checkpoint = _parts(text)
        if checkpoint:
            return checkpoint
        name = parts[-1] if parts else text
        return name.removesuffix(".gguf")
    return text.rsplit("/", 1)[-1]  # an unknown hub id: its model name


def data_source_name(source: object) -> str:
    """A data file as the paper names it (plain text, with its article): a subliminal run's
    '<name>.train.jsonl' is 'the <name> teacher's number sequences of the subliminal run'."""
    text = str(source or "").strip().rstrip("/")
    name = PurePosixPath(text.replace("\\", "/")).name
    if name.endswith(".train.jsonl"):
        dataset = name.removesuffix(".train.jsonl")
        return f"the {dataset} teacher's number sequences of a subliminal run"
    if name.endswith((".jsonl", ".json")):
        return "a data file of prompt--answer texts (its path is in the run's configuration)"
    if text:
        return "the texts of a subliminal run's control data set"
    return "?"


def words(key: object) -> str:
    """A results key as words: 'not_numbers' -> 'not numbers', 'max_new_tokens' -> 'the token limit'."""
    text = str(key)
    text = text.replace("max_new_tokens", "the token limit")
    return text.replace("_", " ")


# The distillation students' arms (config keys) as figure legends and short labels.
DISTILL_ARM_LABELS: dict[str, str] = {"shd_biased": "biased-SHD", "lm_only": "LM only", "shd_base": "base-SHD"}


def arm_label(arm: str) -> str:
    """A distillation arm's short label; an arm this version does not know, as written."""
    return DISTILL_ARM_LABELS.get(arm, arm)


# ---- the abstract's notes in words ----------------------------------------------------------------
# A claim's registered name (sublens.claims, the sections) -> the short statement a reader sees
# in the notes that open the draft; a verdict that follows the name is set off by a colon.
CLAIM_NAMES: dict[str, str] = {
    "localisation.lm_head": "the bias is not in the LM head",
    "localisation.transplant": "the bias is seated in the MLP layers (by transplant)",
    "localisation.patching": "patching MLP outputs carries the bias more than patching attention outputs",
    "localisation.attribution": "the attribution claim",
}
_DIGIT_WORDS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six"}
_COMPONENT_WORDS = {"mlp": "MLP", "attention": "attention", "embeddings": "embedding", "norms": "norm"}
_VERDICT = r"(?:\s+(?P<verdict>supported|contradicted|inconclusive)\b)?"
_CLAIM = re.compile(
    r"(?<![\w.])(?P<name>(?:localisation|subliminal|transfer|contrast|teacher|entanglement|"
    r"pruning|mechanistic|distill|hybrid)(?:\.[\w~-]+)+)" + _VERDICT
)
_SET = re.compile(r"(?<![\w.])(?P<set>vocab|ar\d+)(?P<tuned>@tuned)?(?![\w.])")
_SET_SIZE = re.compile(r"(?<=, )k=(?P<k>\d+)\)")
_DLA = re.compile(r"\bDLA\b")  # the mechanistic section spells it out
_RANGE = re.compile(r"\b(?P<group>mlp|attention)\[(?P<start>\d+):(?P<stop>\d+)\]")


def claim_display_name(name: str) -> str:
    """A claim's name as the notes say it: its statement from `CLAIM_NAMES`,
    'localisation.freezing.mlp' -> 'freezing the MLP layers blocks the transfer', any other
    dotted name as the words of its last part."""
    if name in CLAIM_NAMES:
        return CLAIM_NAMES[name]
    parts = name.split(".")
    if parts[:2] == ["localisation", "freezing"] and len(parts) == 3:
        return f"freezing the {_COMPONENT_WORDS.get(parts[2], words(parts[2]))} layers blocks the transfer"
    return words(parts[-1].replace("~", " ").replace("-", " "))


def set_display_name(name: str) -> str:
    """A candidate set of the entanglement experiment as the notes say it: 'ar2' -> 'the
    two-digit numbers', 'vocab' -> 'the single-token numbers', 'ar2@tuned' -> 'the two-digit
    numbers shifted by fine-tuning'."""
    base, tuned = name.removesuffix("@tuned"), name.endswith("@tuned")
    digits = base.removeprefix("ar")
    numbers = (
        "single-token numbers"
        if base == "vocab"
        else f"{_DIGIT_WORDS.get(digits, digits)}-digit numbers"
        if base.startswith("ar") and digits.isdigit()
        else words(base)
    )
    return f"the {numbers}" + (" shifted by fine-tuning" if tuned else "")


def _claim_words(match: re.Match[str]) -> str:
    verdict = match.group("verdict")
    return claim_display_name(match.group("name")) + (f": {verdict}" if verdict else "")


def note_words(line: str) -> str:
    """A plain-text headline line with the machine's names put in words: claim names
    ('localisation.lm_head contradicted' -> 'the bias is not in the LM head: contradicted'),
    candidate sets ('(ar2, k=4)' -> '(the two-digit numbers, categories of 4)'), layer ranges
    ('mlp[20:30]' -> 'MLP layers 20-29') and abbreviations the section spells out ('DLA')."""
    text = _CLAIM.sub(_claim_words, line)
    text = _DLA.sub("direct logit attribution", text)
    text = _SET_SIZE.sub(lambda m: f"categories of {m.group('k')})", text)
    text = _SET.sub(lambda m: set_display_name(m.group("set") + (m.group("tuned") or "")), text)
    return _RANGE.sub(
        lambda m: f"{_COMPONENT_WORDS[m.group('group')]} layers {m.group('start')}-{int(m.group('stop')) - 1}", text
    )
