"""One module per experiment turns its run directory into paper content.

Each module `sublens.report.sections.<stage>` defines `build(run: StageRun) -> Section`:
LaTeX methods and results paragraphs (worded by the data: where a claim is not supported,
the text says what was measured), booktabs tables, which of the run's figures go in, and a
few plain-text headline lines for the terminal summary. The bundle (sublens.report.bundle)
assembles them into main.tex; nothing here loads a model.

Conventions shared by every section:
- tables: {stem: float}; the float's label is `tab:<stem>`; written to tables/<stem>.tex.
- figures: stems of `run.figures()`; copied to figures/<stage>-<stem>.pdf, label
  `fig:<stage>-<stem>` (use `figure_label(stage, stem)`).
- citations: only keys of sublens/report/references.bib (see CITATION_KEYS).
- model names: `sublens.report.names.display_name(spec)` (SmolLM2-135M-Instruct, not the spec
  smollm2-135m-instruct; never a run's path); counts through `latex.counted` / `noun_for`;
  no config keys, file names or Python values (None, True) in the prose.
- a shared definition goes in `Section.measurement` (printed once by the bundle).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sublens.report.stages import STAGE_ORDER, StageRun

CITATION_KEYS = (
    "cloud2025subliminal",  # Subliminal learning (arXiv 2507.14805)
    "zur2025owl",  # token entanglement in subliminal learning ("It's owl in the numbers")
    "bing2025shd",  # squeezing-heads distillation (arXiv 2502.07436)
    "hinton2015distilling",  # knowledge distillation
    "snell2022context",  # context distillation
    "nanda2022transformerlens",
    "elhage2021mathematical",  # residual stream, direct logit attribution
    "michel2019sixteen",  # head pruning
    "voita2019analyzing",  # head pruning
    "geva2021transformer",  # MLPs as key-value memories
    "meng2022locating",  # factual associations in MLPs
    "allal2025smollm2",
    "gemmateam2025gemma3",
    "grattafiori2024llama3",
    "radford2019language",  # GPT-2
    "hu2022lora",
    "efron1994bootstrap",
    "wilson1927probable",
    "holm1979simple",
    "fisher1922interpretation",
    "cramer1946mathematical",
    "vig2020investigating",  # activation patching (causal mediation)
    "schrodi2026understanding",  # divergence tokens (arXiv 2509.23886)
    "freedman1983nonstochastic",  # Freedman-Lane permutation test (partial correlations)
    "welch1947generalization",  # Welch's t-test (between-category claims)
)


@dataclass(frozen=True)
class Figure:
    stem: str  # a key of run.figures()
    caption: str  # LaTeX
    wide: bool = False  # figure* across both columns


@dataclass(frozen=True)
class Section:
    title: str
    methods: str  # LaTeX paragraph(s)
    results: str  # LaTeX paragraph(s), numbers filled in
    tables: dict[str, str] = field(default_factory=dict)  # stem -> table float (label tab:<stem>)
    figures: list[Figure] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)  # plain text, one screen in total
    # A definition several sections share (e.g. how preference is measured: P(owl), the panel
    # share with its formula, the answer rate): the bundle prints it after the methods of the
    # first section that has it and, in each later section with the same text, a reference to
    # that section instead, so the paper defines each measurement once.
    measurement: str = ""


def figure_label(stage: str, stem: str) -> str:
    return f"fig:{stage}-{stem}"


def builder(stage: str) -> Callable[[StageRun], Section] | None:
    """The section builder of an experiment, or None when the paper has no section for it."""
    if stage not in STAGE_ORDER:
        return None
    module = importlib.import_module(f"{__name__}.{stage}")
    build: Callable[[StageRun], Section] = module.build
    return build
