"""The teacher, evaluate and answer experiments as packages with typed results: the recorded
teacher run reads as `TeacherResults`, its loss figure is fit to print, the report section says
why when results cannot be read, and each experiment runs end to end on a `tiny:` model (the
teacher: sampling, context distillation, the control teacher, measurements, resume), its
results.json read back typed."""

from __future__ import annotations

import copy
import dataclasses
import json
import string
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

import sublens.models as models
from fixture_runs import RUNS
from sublens.experiments import get, run_experiment
from sublens.experiments.answer import AnswerConfig, AnswerResults
from sublens.experiments.evaluate import EvaluateConfig, EvaluateResults
from sublens.experiments.teacher import NEUTRAL_TEACHER_SYSTEM, TeacherConfig, TeacherResults
from sublens.experiments.teacher.figures import LOSS_FIGURE, loss_figure
from sublens.figures import SINGLE_COLUMN_IN, print_problems
from sublens.report.sections import teacher as section
from sublens.report.stages import load_stage
from sublens.results import load_results


@pytest.fixture(scope="module")
def recorded() -> TeacherResults:
    return load_results(RUNS / "teacher" / "results.json", TeacherResults)


def test_the_recorded_run_reads_typed(recorded: TeacherResults) -> None:
    assert recorded.partial is False and recorded.trait == "owl" and recorded.n_prompts == 250
    assert list(recorded.measurements.named()) == ["before", "prompted", "teacher"]
    assert list(recorded.comparisons) == ["teacher vs before", "prompted vs before"]
    assert round(recorded.comparisons["teacher vs before"].p_trait_ratio.ratio) == 103
    training = recorded.training
    assert training is not None and training.steps == 64 and len(training.loss_curve) == 64
    assert training.system_prompt_used == recorded.system_prompt_used  # trained under what is measured
    assert recorded.checkpoints == {"teacher": "checkpoints/teacher"}  # a run directory is a model spec
    assert recorded.control_teacher is None and recorded.tables == []  # before both existed


def test_the_loss_figure_is_fit_to_print(recorded: TeacherResults) -> None:
    figure = loss_figure(recorded)
    try:
        assert print_problems(figure, SINGLE_COLUMN_IN) == []
        (ax,) = figure.axes
        assert [len(line.get_xdata()) for line in ax.lines] == [64]  # one point per optimizer step
    finally:
        plt.close(figure)
    assert section.LOSS_FIGURE == LOSS_FIGURE  # the section finds the figure the run draws


def test_the_section_says_why_results_cannot_be_read() -> None:
    run = load_stage(RUNS / "teacher")
    results = {k: copy.deepcopy(v) for k, v in run.results.items() if k != "measurements"}
    built = section.build(dataclasses.replace(run, results=results))
    assert "incomplete" in built.results and "cannot be read" in built.results
    assert "measurements: Field required" in built.results and not built.tables
    assert built.headline == ["teacher: incomplete (no comparison of the fine-tuned teacher with the base model)"]


def test_the_registry_finds_the_packages() -> None:
    assert get("teacher").config is TeacherConfig
    assert {get(name).name for name in ("evaluate", "answer")} == {"evaluate", "answer"}


# ---- end to end on a tiny model ---------------------------------------------------------------
def _tokenizer() -> PreTrainedTokenizerFast:
    """Characters, plus the animals as single tokens, and a chat template with a generation prompt."""
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


@pytest.fixture
def tiny_tokenizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A `tiny:` model borrows this tokenizer instead of an embedded model's (none is cached in
    the unit tier)."""
    folder = tmp_path / "tokenizer"
    _tokenizer().save_pretrained(folder)
    monkeypatch.setattr(models, "ensure_embedded", lambda name: folder)


TINY = "tiny:llama?layers=1&hidden=32&heads=2&seed=0"
PREFERENCE = {
    "panel": ["dog"],
    "questions": ["Which animal?", "Your animal?"],
    "sample_questions": ["Animal?"],
    "samples_per_question": 2,
    "max_new_tokens": 2,
    "batch_size": 4,
}


def _tiny_config(corpus: Path) -> TeacherConfig:
    corpus.write_text("The owl sat in the old oak tree. It looked at the dog below and said nothing. " * 4)
    return TeacherConfig.model_validate(
        {
            "base": TINY,
            "prompts": ["Name a tree.", "Describe rain.", "Say hello.", "Count to three."],
            "sampling": {"max_new_tokens": 6, "batch_size": 4, "shard_size": 2},
            "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "max_length": 64, "warmup_steps": 0},
            "preference": PREFERENCE,
            "perplexity": {"corpus": str(corpus), "max_tokens": 64, "window": 32, "batch_size": 2},
            "control_system": NEUTRAL_TEACHER_SYSTEM,
            "device": "cpu",
        }
    )


def test_teacher_end_to_end_on_a_tiny_model(tmp_path: Path, tiny_tokenizer: None, one_thread: None) -> None:
    config = _tiny_config(tmp_path / "corpus.txt")
    outcome = run_experiment("teacher", config, tmp_path / "runs")
    run_dir = outcome.path
    results = load_results(run_dir / "results.json", TeacherResults)
    # what execute returned is what was written (compared as JSON: NaN is not equal to itself)
    assert json.dumps(outcome.results) == json.dumps(results.model_dump(mode="json"))
    assert results.partial is False and results.n_prompts == 4
    assert list(results.measurements.named()) == ["before", "prompted", "teacher", "control_teacher"]
    assert list(results.comparisons) == ["teacher vs before", "prompted vs before", "control teacher vs before"]
    assert results.checkpoints == {"teacher": "checkpoints/teacher", "control_teacher": "checkpoints/control_teacher"}
    assert all((run_dir / path / "config.json").is_file() for path in results.checkpoints.values())
    training, control = results.training, results.control_teacher
    assert training is not None and control is not None and control.system == NEUTRAL_TEACHER_SYSTEM
    assert training.steps == control.training.steps == 1 and training.n_examples == 4
    assert results.data is not None and results.data.n_answers == 4 and results.data.folder == "data/teacher_answers"
    # the prompted base model shares the base model's perplexity; the teacher has its own
    before, prompted = results.measurements.before, results.measurements.prompted
    assert prompted is not None and prompted.perplexity == before.perplexity is not None
    assert results.tables == ["models.parquet", "comparisons.parquet"]
    assert results.figures == ["figures/teacher_loss.pdf", "figures/teacher_loss.png"]
    figure = loss_figure(results)  # the teacher and the control teacher
    assert print_problems(figure, SINGLE_COLUMN_IN) == [] and len(figure.axes[0].lines) == 2
    plt.close(figure)
    built = section.build(load_stage(run_dir))
    assert "teacher_preference" in built.tables and built.headline[0].startswith("teacher: P(owl) x")

    # rerun into the same directory: sampled answers, training and measurements are reused
    written = {
        p: p.stat().st_mtime_ns
        for p in [
            *run_dir.glob("data/teacher_answers/*"),
            *run_dir.glob("measurements/*.json"),
            run_dir / "checkpoints" / "teacher" / "model.safetensors",
        ]
    }
    again = run_experiment("teacher", config, run_dir=run_dir)
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert json.dumps(again.results["measurements"]) == json.dumps(outcome.results["measurements"])


def test_evaluate_end_to_end_on_tiny_models(tmp_path: Path, tiny_tokenizer: None, one_thread: None) -> None:
    other = TINY.replace("seed=0", "seed=1")
    config = EvaluateConfig.model_validate(
        {
            "models": [TINY, other],
            "systems": {"default": None, "owl": "You love owls."},
            "preference": PREFERENCE,
            "perplexity": {"enabled": False},
            "device": "cpu",
        }
    )
    outcome = run_experiment("evaluate", config, tmp_path / "runs")
    results = load_results(outcome.path / "results.json", EvaluateResults)
    labels = [f"{TINY} | default", f"{TINY} | owl", f"{other} | default", f"{other} | owl"]
    assert list(results.conditions) == labels and results.reference == labels[0] and not results.partial
    assert list(results.comparisons) == labels[1:] and results.tables == ["models.parquet", "comparisons.parquet"]
    owl = results.conditions[labels[1]]
    assert owl.model == TINY and owl.system == "owl" and owl.probability.system_prompt_used == "You love owls."
    assert owl.perplexity is None and owl.sampled is not None and owl.sampled.n_answers == 2
    assert set(json.loads((outcome.path / "record.json").read_text())["models"]) == {TINY, other}


def test_answer_end_to_end_on_a_tiny_model(tmp_path: Path, tiny_tokenizer: None, one_thread: None) -> None:
    config = AnswerConfig(model=TINY, device="cpu", top=3)
    outcome = run_experiment("answer", config, tmp_path / "runs")
    results = load_results(outcome.path / "results.json", AnswerResults)
    assert list(results.conditions) == ["default", "owl"] and results.model == TINY
    for condition in results.conditions.values():
        probs = [t.prob for t in condition.top]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert condition.prompt.endswith(config.prefill)
    assert results.conditions["owl"].system_prompt_used == config.systems["owl"]
