"""Entanglement measured in the fine-tuned teachers that write the subliminal data (issue #18):
a teacher run on a `tiny:` model gives the owl teacher and its control teacher; an entanglement
run given it categorises each set a second time, as `<set>@tuned`, by log P(n | neutral) in the
owl teacher minus in the control teacher. Checked against a plain forward pass of each teacher;
the prompted sets, their claims and their numbers are those of a run without the teachers; a
wrong teacher run is refused before any model loads."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

import sublens.models as models
from sublens.config import check_model_specs
from sublens.entangled_numbers import read_number_sets
from sublens.entanglement import (
    CATEGORIES,
    TUNED_FAMILY,
    check_disjoint,
    fill,
    is_tuned_set,
    prompted_set_name,
    tuned_set_name,
)
from sublens.errors import ModelSpecError
from sublens.experiments import run_experiment
from sublens.experiments.entanglement import EntanglementConfig, EntanglementResults
from sublens.experiments.entanglement import run as ent_run
from sublens.experiments.entanglement.analysis import increased_phrase, set_title
from sublens.experiments.entanglement.figures import (
    CATEGORY_WIDTH_IN,
    TUNED_FIGURE,
    category_figure,
)
from sublens.experiments.teacher import NEUTRAL_TEACHER_SYSTEM, TeacherConfig
from sublens.figures import PAPER_RC, print_problems
from sublens.mechanistic import read_entanglement_numbers
from sublens.prompts import make_prompt
from sublens.report.sections import entanglement as section
from sublens.report.stages import load_stage
from sublens.results import load_results

TINY = "tiny:llama?layers=1&hidden=32&heads=2&seed=0"


def _tokenizer() -> PreTrainedTokenizerFast:
    """Characters, the animals as single tokens, and a chat template with a generation prompt."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, " owl": 3, " dog": 4}
    for c in string.ascii_letters + string.digits + " .,?!'\n[]":
        vocab[c] = len(vocab)
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r" owl| dog|[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    return tokenizer


def _teacher_config(corpus: Path) -> TeacherConfig:
    corpus.write_text("The owl sat in the old oak tree. It looked at the dog below and said nothing. " * 4)
    return TeacherConfig.model_validate(
        {
            "base": TINY,
            "prompts": ["Name a tree.", "Describe rain.", "Say hello.", "Count to three."],
            "sampling": {"max_new_tokens": 6, "batch_size": 4, "shard_size": 2},
            # a large step, so the two teachers move apart from each other and from the base
            "train": {"lr": 5e-2, "epochs": 1, "batch_size": 4, "max_length": 64, "warmup_steps": 0},
            "preference": {
                "panel": ["dog"],
                "questions": ["Which animal?"],
                "sample_questions": ["Animal?"],
                "samples_per_question": 1,
                "max_new_tokens": 2,
                "batch_size": 4,
            },
            "perplexity": {"corpus": str(corpus), "max_tokens": 32, "window": 32, "batch_size": 2},
            "control_system": NEUTRAL_TEACHER_SYSTEM,
            "device": "cpu",
        }
    )


def _config(**extra: Any) -> EntanglementConfig:
    return EntanglementConfig.model_validate(
        {
            "model": TINY,
            "device": "cpu",
            "sets": ["autoregressive"],
            "lengths": [1, 2],
            "k": 3,
            "score_all_max": 10,
            "cumulative_orders": 0,
            "permutations": 100,
            "batch_size": 64,
            **extra,
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A teacher run (owl and control teacher), and entanglement runs with and without it."""
    root = tmp_path_factory.mktemp("tuned")
    folder = root / "tokenizer"
    _tokenizer().save_pretrained(folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "ensure_embedded", lambda name: folder)  # what a tiny: model borrows
        teacher = run_experiment("teacher", _teacher_config(root / "corpus.txt"), root / "runs").path
        tuned = run_experiment("entanglement", _config(tuned_teacher=str(teacher)), root / "runs").path
        plain = run_experiment("entanglement", _config(), root / "runs").path
        yield SimpleNamespace(teacher=teacher, tuned=tuned, plain=plain, tokenizer=folder)
    torch.set_num_threads(threads)


def _results(path: Path) -> EntanglementResults:
    return load_results(path / "results.json", EntanglementResults)


def _logp(checkpoint: Path, texts: list[str]) -> dict[str, float]:
    """log P(surface | the neutral number prompt) in a checkpoint: one plain forward pass per
    surface over prompt + surface, summing the log-softmax of each surface token."""
    model = models.load_model(str(checkpoint), "cpu", "float32")
    config = _config()
    prompt = make_prompt(
        model.tokenizer, config.prompts.number_question, config.prompts.neutral_system, config.prompts.number_prefill
    )
    head = model.tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
    out = {}
    with torch.no_grad():
        for text in texts:
            ids = model.tokenizer(prompt.text + text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
            assert ids[: len(head)] == head  # the surface continues the prompt's tokens
            logits = model.model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
            out[text] = float(sum(logits[t - 1, ids[t]] for t in range(len(head), len(ids))))
    return out


# ---------------------------------------------------------------------------------------------
def test_names_of_the_tuned_sets() -> None:
    assert tuned_set_name("ar2") == "ar2@tuned" == tuned_set_name("ar2@tuned")
    assert is_tuned_set("vocab@tuned") and not is_tuned_set("vocab")
    assert prompted_set_name("ar2@tuned") == "ar2" == prompted_set_name("ar2")
    assert set_title("ar2@tuned") == "2-digit tuned" and set_title("vocab@tuned") == "vocabulary tuned"
    assert increased_phrase("ar2@tuned") == (
        "two-digit numbers that fine-tuning made more likely in the owl teacher than in its control teacher"
    )
    assert increased_phrase("vocab", "eagle") == "single-token numbers an eagle context makes more likely"
    assert increased_phrase("ar2") == "two-digit numbers an owl context makes more likely"


def test_the_tuned_shift_is_the_teachers_difference(runs: SimpleNamespace) -> None:
    results = _results(runs.tuned)
    checkpoints = json.loads((runs.teacher / "results.json").read_text())["checkpoints"]
    assert results.tuned_teacher is not None
    assert results.tuned_teacher.teacher == str(runs.teacher)
    assert results.tuned_teacher.control_teacher == f"{runs.teacher}#control_teacher"
    assert results.tuned_teacher.base == TINY and results.tuned_teacher.sets == {"ar1@tuned": "ar1", "ar2@tuned": "ar2"}
    assert list(results.sets) == ["ar1", "ar2", "ar1@tuned", "ar2@tuned"]
    assert set(results.phase1_work) == {"neutral", "bias", "control", "owl_teacher", "control_teacher"}
    phase1 = pd.read_parquet(runs.tuned / "phase1.parquet")
    for name in ("ar1@tuned", "ar2@tuned"):
        rows = phase1[phase1["set"] == name].set_index("number")
        surfaces = [fill(" {num}", num=n) for n in rows.index]
        owl = _logp(runs.teacher / checkpoints["teacher"], surfaces)
        control = _logp(runs.teacher / checkpoints["control_teacher"], surfaces)
        logp_owl = np.array([owl[s] for s in surfaces])
        logp_control = np.array([control[s] for s in surfaces])
        np.testing.assert_allclose(rows["logp_owl_context"], logp_owl, atol=1e-5, rtol=0)
        np.testing.assert_allclose(rows["logp_control_context"], logp_control, atol=1e-5, rtol=0)
        # log p_owl_norm - log p_control_norm, each normalised over the set
        shift = (logp_owl - np.logaddexp.reduce(logp_owl)) - (logp_control - np.logaddexp.reduce(logp_control))
        np.testing.assert_allclose(rows["specific_shift"], shift, atol=1e-5, rtol=0)
        assert np.ptp(shift) > 1e-3  # the teachers differ: the categories are not ties
        # the base model's neutral prompt stays the baseline (Random's frequency match)
        base = phase1[phase1["set"] == prompted_set_name(name)].set_index("number")
        np.testing.assert_array_equal(rows["logp_neutral"], base.loc[rows.index, "logp_neutral"])

        cats = results.categories[name]
        k = results.k[name]
        assert k == (2 if name == "ar1@tuned" else 3)  # ten candidates hold four categories of 2
        assert all(len(getattr(cats, c)) == k for c in CATEGORIES)
        check_disjoint({c: getattr(cats, c) for c in CATEGORIES})
        by_shift = rows.index[np.argsort(-shift, kind="stable")]
        assert set(cats.increased) == set(by_shift[:k]) and set(cats.decreased) == set(by_shift[-k:])


def test_phase_2_statistics_and_claims_of_the_tuned_sets(runs: SimpleNamespace) -> None:
    results = _results(runs.tuned)
    numbers = pd.read_parquet(runs.tuned / "numbers.parquet")
    tuned = numbers[numbers["set"] == "ar2@tuned"]
    assert len(tuned) == 12 and tuned["bias_ratio"].notna().all()  # four categories of 3, phase 2 in the base
    ratio = numbers.drop_duplicates("number").set_index("number")["bias_ratio"]
    assert np.allclose(tuned["bias_ratio"], ratio.loc[tuned["number"]])  # one measurement per number
    assert set(results.category_stats or {}) == {"ar1", "ar2", "ar1@tuned", "ar2@tuned"}
    block, claims = results.tuned_claims, results.claims
    assert block is not None and claims is not None
    assert block.family == TUNED_FAMILY and block.primary_set == tuned_set_name(str(claims.primary_set))
    assert {t.set for t in block.tests} == {"ar1@tuned", "ar2@tuned"}
    assert {t.set for t in claims.tests} == {"ar1", "ar2"}  # the prompted family is unchanged
    assert all(t.claim.family == TUNED_FAMILY for t in block.tests)
    assert results.lengths is not None and {e.set for e in results.lengths.per_length.values()} == {"ar1", "ar2"}
    assert TUNED_FIGURE in (results.figures or {})
    raw = json.loads((runs.tuned / "results.json").read_text())
    assert json.dumps(results.model_dump(mode="json")) == json.dumps(raw)  # read back key for key
    assert any("ar2@tuned" in line for line in results.report or [])


def test_downstream_readers_find_the_tuned_sets(runs: SimpleNamespace) -> None:
    """The subliminal experiment counts a tuned set's numbers by its name; the mechanistic one
    picks a prompted set unless told otherwise."""
    results = _results(runs.tuned)
    cats = results.categories["ar2@tuned"]
    assert read_number_sets(runs.tuned, "ar2@tuned") == {"increased": cats.increased, "random": cats.random}
    _, info = read_entanglement_numbers(runs.tuned)
    assert info["set"] == "ar2" and "ar2@tuned" in info["sets_available"]
    items, info = read_entanglement_numbers(runs.tuned, "ar2@tuned")
    assert info["matches_results_json"] is True and len(items) == 12


def test_the_prompted_sets_are_as_without_the_teachers(runs: SimpleNamespace) -> None:
    tuned, plain = _results(runs.tuned), _results(runs.plain)
    assert plain.tuned_teacher is None and plain.tuned_claims is None
    assert "tuned_teacher" not in json.loads((runs.plain / "results.json").read_text())
    assert tuned.claims == plain.claims  # the same tests, estimates and Holm-adjusted decisions
    for name in ("ar1", "ar2"):
        assert tuned.categories[name] == plain.categories[name]
        assert tuned.sets[name] == plain.sets[name]
        assert (tuned.category_stats or {})[name] == (plain.category_stats or {})[name]
    assert tuned.lengths == plain.lengths


def test_the_section_reports_the_tuned_sets(runs: SimpleNamespace) -> None:
    built = section.build(load_stage(runs.tuned))
    assert "tuned set" in built.methods and "fine-tuned owl teacher" in built.methods
    for prose in (built.methods, built.results):
        assert "@tuned" not in prose and "tuned_teacher" not in prose and ".parquet" not in prose
    assert "2-digit tuned set" in built.results
    assert "2-digit tuned" in built.tables["entanglement_categories"]
    assert "2-digit tuned" in built.tables["entanglement_claims"]
    assert [f.stem for f in built.figures][:2] == ["bias_ratio_by_category", TUNED_FIGURE]
    assert any(line.startswith("entanglement by the fine-tuned teachers (ar2@tuned") for line in built.headline)
    plain = section.build(load_stage(runs.plain))
    assert "tuned" not in plain.methods + plain.results and TUNED_FIGURE not in [f.stem for f in plain.figures]


def test_the_tuned_figure_is_fit_to_print(runs: SimpleNamespace) -> None:
    results = _results(runs.tuned)
    figure = category_figure(results, pd.read_parquet(runs.tuned / "numbers.parquet"), tuned=True)
    try:
        with plt.rc_context(PAPER_RC):
            figure.draw_without_rendering()
        assert print_problems(figure, CATEGORY_WIDTH_IN) == []
        # Short two-line titles (the figure is the tuned one; the caption says so).
        assert [ax.get_title() for ax in figure.axes[:2]] == ["1-digit\n$k$ = 2", "2-digit\n$k$ = 3"]
    finally:
        plt.close(figure)


# ---- refused before any model loads ---------------------------------------------------------
@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ent_run, "load_model", refuse)


def test_a_missing_teacher_run_is_refused_before_any_model_loads(tmp_path: Path, no_loading: None) -> None:
    missing = tmp_path / "runs" / "20260101-000000_teacher_abc123"
    (tmp_path / "runs").mkdir()
    for spec in (str(missing), "no-such-teacher-run"):  # a bare name is a folder here, never a hub id
        with pytest.raises(ModelSpecError, match="tuned_teacher: No such run folder"):
            check_model_specs(_config(tuned_teacher=spec))
    with pytest.raises(ModelSpecError, match="tuned_teacher: .*does not exist"):
        ent_run.execute(_config(tuned_teacher=str(missing)), SimpleNamespace())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="without '#checkpoint'"):
        _config(tuned_teacher=f"{missing}#control_teacher")


def test_a_teacher_run_without_a_control_teacher_is_refused(tmp_path: Path, no_loading: None) -> None:
    run = tmp_path / "20260101-000000_teacher_abc123"
    (run / "checkpoints" / "teacher").mkdir(parents=True)
    (run / "checkpoints" / "teacher" / "config.json").write_text("{}")
    (run / "record.json").write_text(json.dumps({"status": "ok"}))
    (run / "results.json").write_text(json.dumps({"checkpoints": {"teacher": "checkpoints/teacher"}}))
    check_model_specs(_config(tuned_teacher=str(run)))  # it exists: the CLI's check passes
    with pytest.raises(ModelSpecError, match="lists the checkpoints teacher: it needs .*'control_teacher'"):
        ent_run.tuned_teachers(_config(tuned_teacher=str(run)))
    (run / "results.json").write_text(
        json.dumps({"checkpoints": {"teacher": "checkpoints/teacher", "control_teacher": "checkpoints/control"}})
    )
    with pytest.raises(ModelSpecError, match="control_teacher but their folders hold no model"):
        ent_run.tuned_teachers(_config(tuned_teacher=str(run)))
    (run / "record.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(Exception, match="not a finished one"):
        ent_run.tuned_teachers(_config(tuned_teacher=str(run)))
