"""The draft as a program committee reads it, for the entanglement, mechanistic, pruning and
hybrid sections (test_presentation.py holds the same checks for the other sections, and the
checks themselves): no config keys, identifiers, file names or paths in the prose; models and
candidate sets by the names a paper uses; plurals through `latex.counted`; no sentence said twice;
one number per quantity; what every figure shows said in its caption."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from test_presentation import machine_words, prose

from fixture_runs import RUNS
from sublens.report.bundle import build_bundle, load_runs
from sublens.report.sections import Section, builder
from sublens.report.stages import load_stage

STAGES = ("entanglement", "mechanistic", "pruning", "hybrid")


def _build(stage: str) -> Section:
    make = builder(stage)
    assert make is not None
    return make(load_stage(RUNS / stage))


def _everything(section: Section) -> str:
    return "\n".join(
        [
            section.title,
            section.methods,
            section.results,
            section.measurement,
            *section.tables.values(),
            *(f.caption for f in section.figures),
        ]
    )


def _sentences(tex: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=\.)\s+(?=[A-Z])", prose(tex)) if len(s.strip()) > 30]


@pytest.mark.parametrize("stage", STAGES)
def test_no_config_keys_identifiers_or_paths(stage: str) -> None:
    section = _build(stage)
    text = _everything(section)
    assert not machine_words(text), machine_words(text)
    # nothing in typewriter type either: claim names, set keys and model specs are named in words
    assert not re.findall(r"\\texttt\{", section.methods + section.results), stage
    assert not re.search(r"\w\(s\)", text), "a plural written as (s): use latex.counted"
    assert not re.search(r"\bsublens\.\w+", prose(text)), "a module name in the prose"


@pytest.mark.parametrize("stage", STAGES)
def test_no_sentence_is_said_twice(stage: str) -> None:
    section = _build(stage)
    repeated = [s for s, n in Counter(_sentences(section.methods + "\n" + section.results)).items() if n > 1]
    assert not repeated, repeated


def test_the_entanglement_section_folds_what_every_category_shares() -> None:
    section = _build("entanglement")
    text = section.results
    # four categories of 4 numbers: why there is no interval is said once, not after each ratio
    assert "4 numbers each, too few for a CI" in text
    assert text.count("too few") == 2  # the categories once, the template words once
    # a run without the control-animal context: the reason no claim is decided, once
    assert text.count("not owl-specific") == 1 and "For that reason no claim is decided" in text
    assert "In the 2-digit set" in text and "ar2" not in text
    assert "SmolLM2-135M-Instruct" in section.methods and "(1 order)" not in section.methods


def test_the_mechanistic_section_gives_each_test_once() -> None:
    text = _build("mechanistic").results
    assert text.count(r"$\chi^2$ = 11.4") == 1  # spike layer and its top head: one table, one test
    assert "(20/20)" not in text and "L23H5 for every number in every category" in text
    assert "The claim that MLP direct logit attribution" in text


def test_the_pruning_section_states_each_number_once() -> None:
    section = _build("pruning")
    text, table = section.results, section.tables["pruning_sweep"]
    # the perplexity ratio at 60% kept: as the table prints it, not with another precision
    assert "entropy $1077\\times$" in text and "1077$^\\dagger$" in table and "1077.2" not in text
    # both claims stop on the missing pruned-base control: the reason and the remedy, once each
    assert text.count("the pruned-base control was not measured") == 1
    assert text.count("To settle") == 1 and "config key" not in text
    # the degradation bound is defined in the methods, not again in the results
    assert "counts as degraded" in section.methods and "is degraded when" not in text


def test_the_hybrid_section_names_components_in_words() -> None:
    section = _build("hybrid")
    text = _everything(section)
    for key in ("final_norm", r"final\_norm", "lm_head", r"lm\_head", "mlp[", "patching.enabled", "localisation."):
        assert key not in text, key
    assert "activation patching was not run" in section.results
    assert section.results.count("activation patching") == 2  # the reason, then the remedy
    # the biased model's shift: one number, in the text (the table caption no longer repeats it)
    assert section.results.count("40.87 [32.06, 49.40]") == 1
    assert "40.87" not in section.tables["hybrid_matrix"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_figure_caption_says_what_its_marks_mean(stage: str) -> None:
    captions = {f.stem: f.caption for f in _build(stage).figures}
    assert captions
    needed = {
        "bias_ratio_by_category": ["open marker", "grey dots", "dashed line"],
        "bias_ratio_by_length": ["black", "open marker", "dashed line"],
        "pruning_retention": ["Bands", "triangle", "Dotted line"],
        "pruning_entropy_heatmap": ["cross marks"],
        "hybrid_heatmap": ["colour from 0", "light grey", "log grey scale"],
        "similarity_by_layer": ["One colour per category", "bands 95"],
        "attention_to_tokens": ["own colour scale"],
    }
    for stem, caption in captions.items():
        for words in needed[stem]:
            assert words in caption, (stem, words)


@pytest.fixture(scope="module")
def draft(tmp_path_factory: pytest.TempPathFactory) -> str:
    stages, meta = load_runs(RUNS)
    return build_bundle(
        stages, tmp_path_factory.mktemp("draft") / "paper", compile=False, meta=meta
    ).main_tex.read_text()


def test_the_four_sections_of_the_draft_read_as_prose(draft: str) -> None:
    for stage in STAGES:
        start = draft.index(rf"\label{{sec:{stage}}}")
        text = draft[start : draft.index(r"\section", start)]
        assert not machine_words(text), (stage, machine_words(text))
