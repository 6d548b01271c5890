"""The draft of the recorded runs as a reviewer reads its opening notes and its numbers (#19):
the notes name claims and candidate sets in words, and each quantity printed in more than one
place has one value everywhere (or the other is named as a re-measurement in its stage)."""

from __future__ import annotations

import re

import pytest

from fixture_runs import RUNS
from sublens.report.bundle import build_bundle, load_runs
from sublens.report.names import claim_display_name, note_words, set_display_name

Draft = tuple[str, dict[str, str]]

DOTTED_CLAIM = re.compile(r"(?<![\w.])[a-z]+(?:\.[a-z_~-]+)+")  # localisation.lm_head, not 0.43
SET_CODE = re.compile(r"(?<![\w.])(?:ar\d+|vocab)(?:@\w+)?(?![\w.])")  # ar2, vocab, ar2@tuned
CELL = re.compile(r"\\begin\{tabular\}\[t\]\{@\{\}r@\{\}\}(.*?)\\\\ \{(\[.*?\])\}\\end\{tabular\}")


@pytest.fixture(scope="module")
def draft(tmp_path_factory: pytest.TempPathFactory) -> Draft:
    """main.tex of the recorded runs and its tables (by stem), without LaTeX."""
    stages, meta = load_runs(RUNS)
    bundle = build_bundle(stages, tmp_path_factory.mktemp("quantities") / "paper", compile=False, meta=meta)
    tables = {p.stem: p.read_text() for p in sorted((bundle.folder / "tables").glob("*.tex"))}
    return bundle.main_tex.read_text(), tables


def _notes(main: str) -> list[str]:
    front = main[main.index(r"\begin{abstract}") : main.index(r"\end{abstract}")]
    return [line.removeprefix(r"\item ") for line in front.splitlines() if line.startswith(r"\item ")]


def _section(main: str, stage: str) -> str:
    start = main.index(rf"\label{{sec:{stage}}}")
    return main[start : main.index(r"\section", start)]


def _row(table: str, label: str) -> list[str]:
    """A table row's cells, a value with its CI under it as 'value [low, high]'."""
    line = next(line for line in table.splitlines() if line.startswith(f"{label} & "))
    cells = line.removesuffix(r" \\").split(" & ")
    return [CELL.sub(r"\1 \2", cell).strip() for cell in cells]


# ---- the notes in words ---------------------------------------------------------------------------


def test_the_notes_name_claims_and_sets_in_words(draft: Draft) -> None:
    main, _ = draft
    notes = _notes(main)
    assert len(notes) >= 10
    text = "\n".join(notes)
    assert not DOTTED_CLAIM.findall(text), DOTTED_CLAIM.findall(text)
    assert not SET_CODE.findall(text), SET_CODE.findall(text)
    assert "mlp[" not in text and "k=" not in text and "DLA" not in text
    # what they say instead: the claims' statements, the sets and the layer range in words
    assert "the bias is not in the LM head: contradicted" in text
    assert "the bias is seated in the MLP layers (by transplant): supported" in text
    assert "patching MLP outputs carries the bias more than patching attention outputs: inconclusive" in text
    assert "mechanistic: the attribution claim (MLP direct logit attribution tracks the in-context bias" in text
    assert "entanglement (the two-digit numbers, categories of 4): entangled numbers no better" in text
    assert "the single-token numbers inconclusive, the one-digit numbers inconclusive" in text
    assert "MLP layers 20--29 0.33" in text  # a number range takes an en dash in LaTeX


def test_note_words() -> None:
    assert note_words("hybrid: localisation.lm_head contradicted (×3.19 [3.01, 3.38], Holm p = 1.59e-13)") == (
        "hybrid: the bias is not in the LM head: contradicted (×3.19 [3.01, 3.38], Holm p = 1.59e-13)"
    )
    assert note_words("entanglement by the fine-tuned teachers (ar2@tuned, k=4): x1.2 vs 0.43") == (
        "entanglement by the fine-tuned teachers (the two-digit numbers shifted by fine-tuning, "
        "categories of 4): x1.2 vs 0.43"
    )
    assert note_words("subliminal: localisation.freezing.mlp supported") == (
        "subliminal: freezing the MLP layers blocks the transfer: supported"
    )
    assert note_words("hybrid: attention[0:10] 0.21, p = 0.05") == "hybrid: attention layers 0-9 0.21, p = 0.05"
    # numbers, file-like words and already worded lines are left alone
    for line in (
        "pruning: 0.43 / 0.5, x1.37 [1.30, 1.45]",
        "distill: biased-SHD student share x1.37",
        "teacher: P(owl) x103; prefers owls: supported",
    ):
        assert note_words(line) == line
    assert claim_display_name("localisation.some_new_claim") == "some new claim"
    assert (
        set_display_name("vocab") == "the single-token numbers" and set_display_name("ar3") == "the three-digit numbers"
    )


# ---- one value per quantity -----------------------------------------------------------------------


def test_the_teachers_ratios_have_one_value(draft: Draft) -> None:
    """The teacher's P(owl) and share ratios over the base model: its table, its section's
    prose and the notes print the same numbers."""
    main, tables = draft
    teacher = _row(tables["teacher_preference"], "fine-tuned teacher")
    p_ratio, share_ratio = teacher[4], teacher[5]
    assert p_ratio == r"$\times$103 [84, 125]" and share_ratio == r"$\times$13.8 [11.4, 16.9]"
    prose = _section(main, "teacher")
    assert f"P(owl) is {p_ratio} and owl's panel share {share_ratio} the base model's" in prose
    note = next(n for n in _notes(main) if n.startswith("teacher:"))
    assert f"P(owl) {p_ratio}, share {share_ratio} vs base (fine-tuned, without the owl prompt" in note
    # the one other ratio printed is the owl prompt's own effect, as its table row has it
    prompted = _row(tables["teacher_preference"], "base + owl prompt")
    assert f"under the owl system prompt itself P(owl) is {prompted[4]} and the share {prompted[5]}" in prose
    for text in (prose, note):
        assert set(re.findall(r"P\(owl\) \$\\times\$([\d.]+)", text)) <= {"103", "127"}
        assert set(re.findall(r"share \$\\times\$([\d.]+)", text)) <= {"13.8", "33.8"}


def test_the_perplexities_have_one_value(draft: Draft) -> None:
    main, tables = draft
    base = _row(tables["teacher_preference"], "base model")[6]
    teacher = _row(tables["teacher_preference"], "fine-tuned teacher")[6]
    assert (base, teacher) == ("27.21", "28.11")
    assert f"Perplexity rose from {base} to {teacher} (+" in _section(main, "teacher")


def test_the_base_model_and_the_prompted_teacher_have_one_value(draft: Draft) -> None:
    """The subliminal stage's table prints the base model and the prompted teacher again: the
    same numbers as the teacher stage's table (P(owl), share, answer rate, with their CIs)."""
    _, tables = draft
    teacher, subliminal = tables["teacher_preference"], tables["freeze_modes"]
    assert _row(subliminal, "base model")[1:4] == _row(teacher, "base model")[1:4]
    assert _row(subliminal, "teacher (prompted)")[1:4] == _row(teacher, "base + owl prompt")[1:4]
    assert _row(teacher, "base model")[1] == "0.12 [0.09, 0.15]"


def test_the_students_ratios_in_the_notes_are_the_tables(draft: Draft) -> None:
    main, tables = draft
    notes = _notes(main)
    full = _row(tables["freeze_modes"], "owl, full fine-tuning")[4]
    assert f"full owl student share {full} vs matched control" in next(n for n in notes if n.startswith("subliminal:"))
    shd = _row(tables["shd_transfer"], "LM only")[4]
    assert f"biased-SHD student share {shd} vs LM-only" in next(n for n in notes if n.startswith("distill:"))


# Other stages measure the base model again (in a paper run also the fine-tuned teacher, the
# pruned and the hybrids' biased model), on other text lengths and questions: where the value
# differs from the teacher section's, it must be named as that stage's re-measurement. In the
# recorded runs pruning's model is the base model (prompted with a shorter owl prompt), so its
# unpruned perplexity is the base model's: 28.8 on 256 tokens against 27.21 on 1,020; the
# hybrids' reference is 24.4 on 512 tokens. The captions (report/sections/pruning/floats.py,
# `_unpruned_caption`, and report/sections/hybrid/floats.py, the matrix caption's "reference
# perplexity") name them as re-measurements.
REMEASURED = {
    "hybrid base perplexity": ("hybrid_matrix", r"reference perplexity[^:]*: base (\d+(?:\.\d+)?)", "27.21"),
    "pruning unpruned perplexity": (
        "pruning_sweep",
        r"[Uu]npruned (?:[\w-]+ ){0,2}perplexity (\d+(?:\.\d+)?)",
        "27.21",
    ),
    "pruning unpruned P(owl)": ("pruning_sweep", r"[Uu]npruned (?:[\w-]+ ){0,2}P\(owl\) = (\d+(?:\.\d+)?)", "13.99"),
}


@pytest.mark.parametrize("what", sorted(REMEASURED))
def test_a_re_measurement_is_named_as_such(draft: Draft, what: str) -> None:
    _, tables = draft
    stem, pattern, first = REMEASURED[what]
    caption = tables[stem][tables[stem].index(r"\caption") :]
    match = re.search(pattern, caption)
    assert match is not None, (what, caption)  # the caption still prints the quantity
    near = caption[max(0, match.start() - 120) : match.end() + 120]
    assert match.group(1) == first or "re-measured" in near.lower(), (
        f"{what}: {match.group(1)} against {first} in the teacher section, not named as a re-measurement"
    )
