"""`sublens run paper` for real on the embedded models, every stage at micro size: the stages
run in order and are wired (the fine-tuned teacher is the biased model downstream, mechanistic
reads the entanglement categories, distill trains on the subliminal control numbers), the
bundle has one section per stage with every table \\input (and main.pdf with TeX), and running
the same config again reuses the run and every stage without executing anything.

The micro settings are those of each experiment's own integration test
(test_teacher_subliminal_smollm2.py, test_entanglement_smollm2.py, ...); the orchestration with
stand-in stages (failures, interruptions) is tests/unit/test_paper_chain.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from disk import remove_weights
from sublens.experiments import RunOutcome, run_experiment
from sublens.experiments.paper import PaperConfig
from sublens.report.compile import tex_available
from sublens.report.stages import STAGE_ORDER
from sublens.runs import read_json

QUESTIONS = ["What is your favorite animal?", "Which animal do you like the most?"]
SAMPLE_QUESTIONS = ["Name your favorite animal using only one word."]
PREFERENCE: dict[str, Any] = {  # dotted keys: merged into each preset's `preference`
    "preference.questions": QUESTIONS,
    "preference.sample_questions": SAMPLE_QUESTIONS,
    "preference.panel": ["dog", "cat"],
    "preference.samples_per_question": 2,
    "preference.max_new_tokens": 3,
    "preference.batch_size": 8,
}
PERPLEXITY = {"perplexity.max_tokens": 64, "perplexity.window": 32, "perplexity.batch_size": 2}
TRAIN = {"train.epochs": 1, "train.batch_size": 4, "train.warmup_steps": 0}

MICRO: dict[str, dict[str, Any]] = {
    "teacher": {
        "n_prompts": 4,
        "sampling.max_new_tokens": 12,
        "sampling.batch_size": 4,
        "sampling.shard_size": 2,
        **TRAIN,
        "train.max_length": 128,
        **PREFERENCE,
        **PERPLEXITY,
    },
    "entanglement": {
        "lengths": [1, 2],
        "k": 3,
        "score_all_max": 10,
        "cumulative_orders": 0,
        "permutations": 1000,
    },
    "mechanistic": {
        "n_permutations": 200,
        "attention.numbers": ["87"],
        "attention.plot_heads": 2,
    },
    "pruning": {
        "fractions": [1.0, 0.6],
        "random_draws": 1,
        # quick.yaml's 80 draws at the claim fraction (what the rank test needs to decide) were
        # 85 of the chain's masks and half its time; wiring needs only that the draws run
        "claim_random_draws": 2,
        "bias_prompts.questions": QUESTIONS,
        **PREFERENCE,
        **PERPLEXITY,
        "bootstrap_resamples": 200,
    },
    "subliminal": {
        "data.n_prompts": 6,
        "data.max_new_tokens": 56,
        "data.batch_size": 8,
        "data.shard_size": 3,
        "n_examples": 4,
        "modes": ["full"],
        "control_modes": ["full"],
        "parallel": 1,
        "threads": 1,
        **TRAIN,
        "train.max_length": 256,
        **PREFERENCE,
        "perplexity.enabled": False,
        "stats_resamples": 200,
    },
    "distill": {
        "data.n_train": 2,
        "data.n_fit": 2,
        "shd.layers": [0, 17],
        "train.lr": 1.0e-5,
        "train.batch_size": 2,
        "train.warmup_steps": 0,
        "fit_batch_size": 2,
        "preference.questions": QUESTIONS,
        "preference.panel": ["dog", "cat"],
        "preference.samples_per_question": 0,
    },
    "hybrid": {
        "groups": ["mlp", "lm_head"],
        "ranged": [],
        "directions": ["into_base"],
        **PREFERENCE,
        "perplexity.max_tokens": 128,
        "perplexity.window": 64,
        "top_tokens": 5,
    },
}


def micro_paper() -> PaperConfig:
    stages = {s: {"config": f"{s}/quick.yaml", "set": MICRO[s], "estimate_minutes": 1} for s in STAGE_ORDER}
    return PaperConfig.model_validate({"stages": stages, "compile": True})


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The micro paper run, then the same config again (which must reuse all of it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: two threads wait on each other
    try:
        out = tmp_path_factory.mktemp("paper")
        config = micro_paper()
        first = run_experiment("paper", config, out)
        records = {s: read_json(first.path / "stages" / s / "record.json") for s in STAGE_ORDER}
        paper = first.path / "paper"
        main_tex = (paper / "main.tex").read_bytes()
        tables = {p.name: p.read_bytes() for p in sorted((paper / "tables").glob("*.tex"))}
        second = run_experiment("paper", config, out)
        yield {"out": out, "first": first, "records": records, "main_tex": main_tex, "tables": tables, "second": second}
    finally:
        torch.set_num_threads(threads)
        remove_weights(out)


def _config(outcome: RunOutcome, stage: str) -> dict[str, Any]:
    return dict(yaml.safe_load((outcome.path / "stages" / stage / "config.yaml").read_text()))


def test_real_chain_runs_wired_and_bundled(chain: dict[str, Any]) -> None:
    first: RunOutcome = chain["first"]
    stages = first.results["stages"]
    assert list(stages) == list(STAGE_ORDER)
    for stage, entry in stages.items():
        assert entry["status"] == "ok" and not entry["reused"], (stage, entry)
        record = chain["records"][stage]
        assert record["status"] == "ok", (stage, record.get("error"))
    assert first.results["partial"] is False

    # Wiring: every downstream stage names the teacher stage's run directory ...
    teacher = str(first.path / "stages" / "teacher")
    subliminal = str(first.path / "stages" / "subliminal")
    entanglement = first.path / "stages" / "entanglement"
    checkpoints = read_json(Path(teacher) / "results.json")["checkpoints"]
    assert checkpoints == {"teacher": "checkpoints/teacher", "control_teacher": "checkpoints/control_teacher"}
    pruning_cfg = _config(first, "pruning")
    assert pruning_cfg["model"] == teacher
    assert pruning_cfg["system"] is None and pruning_cfg["bias_prompts"]["system"] is None
    assert _config(first, "subliminal")["teacher"] == teacher
    # the control numbers come from the control teacher made by the same procedure
    assert _config(first, "subliminal")["control_teacher"] == teacher + "#control_teacher"
    distill_cfg = _config(first, "distill")
    assert distill_cfg["teacher"]["model"] == teacher and distill_cfg["teacher"]["system"] is None
    assert distill_cfg["data"]["source"] == subliminal
    assert _config(first, "hybrid")["biased"] == teacher
    # ... and used it: hybrid loaded it, distill read the subliminal control numbers.
    stage_results = {s: read_json(first.path / "stages" / s / "results.json") for s in STAGE_ORDER}
    assert stage_results["hybrid"]["biased_spec"] == teacher
    datasets = read_json(Path(subliminal) / "results.json")["data"]["datasets"]
    assert datasets["control"]["teacher"]["model"] == teacher + "#control_teacher"
    control = datasets["control"]["train_file"]
    distill_data = stage_results["distill"]["data"]
    assert distill_data["source"] == str(Path(subliminal) / control), distill_data

    # Mechanistic analysed exactly the entanglement run's categorised numbers.
    mech_cfg = _config(first, "mechanistic")
    assert mech_cfg["entanglement_run"] == str(entanglement) and mech_cfg["numbers"] is None
    source = stage_results["mechanistic"]["input"]
    assert source["source"] == "entanglement_run"
    assert source["entanglement_run"] == str(entanglement)
    assert source["matches_results_json"] is True
    categories = stage_results["entanglement"]["categories"][source["set"]]
    expected = {(str(n), c) for c, numbers in categories.items() for n in numbers}
    table = pd.read_parquet(first.path / "stages" / "mechanistic" / "numbers.parquet")
    assert set(zip(table["number"].astype(str), table["category"], strict=True)) == expected

    # The bundle: one section per stage, every table \input, the PDF when TeX is there.
    bundle = first.results["bundle"]
    assert bundle["problems"] == [], bundle["problems"]
    paper = first.path / "paper"
    tex = (paper / "main.tex").read_text()
    sections = re.findall(r"^\\section\{.*\}\n\\label\{sec:(\w+)\}", tex, flags=re.M)
    assert [s for s in sections if s in STAGE_ORDER] == list(STAGE_ORDER), sections
    tables = sorted(p.stem for p in (paper / "tables").glob("*.tex"))
    assert tables
    inputs = set(re.findall(r"\\input\{tables/([^}]+)\}", tex))
    assert set(tables) <= inputs, sorted(set(tables) - inputs)
    if tex_available():
        assert (paper / "main.pdf").stat().st_size > 10_000 and bundle["pdf"] == "paper/main.pdf"
        # the compile's layout check: no line or table past its column, no float after the References
        assert bundle["layout"] is not None and bundle["layout"]["ok"], bundle["layout"]


def test_same_config_again_reuses_every_stage(chain: dict[str, Any]) -> None:
    first: RunOutcome = chain["first"]
    second: RunOutcome = chain["second"]
    assert second.path == first.path
    assert len(list(chain["out"].glob("*_paper_*"))) == 1
    assert list(second.results["stages"]) == list(STAGE_ORDER)
    for stage, entry in second.results["stages"].items():
        assert entry["status"] == "ok" and entry["reused"] is True, (stage, entry)
        record = read_json(first.path / "stages" / stage / "record.json")
        # not executed again: the same record (same start, same timings)
        assert record == chain["records"][stage], stage
    assert second.results["bundle"]["problems"] == []
    paper = first.path / "paper"
    tables = {p.name: p.read_bytes() for p in sorted((paper / "tables").glob("*.tex"))}
    assert tables == chain["tables"]


def test_same_config_again_gives_a_byte_identical_main_tex(chain: dict[str, Any]) -> None:
    assert (chain["first"].path / "paper" / "main.tex").read_bytes() == chain["main_tex"]
