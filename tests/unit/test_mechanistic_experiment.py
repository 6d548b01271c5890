"""The mechanistic experiment end to end on a tiny random Llama with a character tokenizer:
results.json carries the contrastive scores, the partial correlation given the total, and the
family's raw and Holm-adjusted p-values; the paper section renders the run."""

from __future__ import annotations

import copy
import dataclasses
import json
import string
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import sublens.experiments.mechanistic.run as experiment
from sublens.arch import adapter_for
from sublens.config import load_config
from sublens.experiments import run_experiment
from sublens.experiments.mechanistic import MechanisticConfig, MechanisticError, word_token
from sublens.experiments.mechanistic.results import MechanisticResults
from sublens.models import LoadedModel
from sublens.report.sections import mechanistic as section
from sublens.report.stages import load_stage
from sublens.results import ResultsError, load_results
from sublens.runs import read_json
from tiny import VOCAB, tiny_model

NUMBERS = {
    "12": "increased",
    "47": "increased",
    "83": "increased",
    "20": "decreased",
    "35": "decreased",
    "61": "decreased",
    "19": "unchanged",
    "56": "unchanged",
    "74": "unchanged",
    "28": "random",
    "90": "random",
    "33": "random",
}


def _tokenizer() -> PreTrainedTokenizerFast:
    """Characters, plus " owl" and " dog" as single tokens (so their first tokens differ)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, " owl": 3, " dog": 4}
    for c in string.ascii_letters + string.digits + " .?[]\n'":
        vocab[c] = len(vocab)
    assert len(vocab) <= VOCAB
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r" owl| dog|[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    return tok


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model("llama")
    lm = LoadedModel(
        model=model,
        tokenizer=_tokenizer(),
        adapter=adapter_for(model),
        spec="tiny-llama",
        source="folder",
        path="-",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    patch = pytest.MonkeyPatch()
    patch.setattr(experiment, "load_model", lambda *args: lm)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        numbers = ", ".join(f"{{number: '{n}', category: {c}}}" for n, c in NUMBERS.items())
        config = load_config(
            MechanisticConfig,
            None,
            [
                f"numbers=[{numbers}]",
                "model=tiny-llama",
                "n_permutations=200",
                "attention.numbers=['12']",
                "attention.plot_heads=1",
                "rho_of_interest=0.4",
            ],
        )
        outcome = run_experiment("mechanistic", config, tmp_path_factory.mktemp("runs"))
    finally:
        torch.set_num_threads(threads)
        patch.undo()
    return outcome.path


def test_results_record_the_contrastive_scores_and_the_partial_correlation(run_dir: Path) -> None:
    results = read_json(run_dir / "results.json")
    assert results["partial"] is False and results["component_score"] == "contrastive"
    assert "contrastive" in results["definitions"]["head_score"]
    table = pd.read_parquet(run_dir / "numbers.parquet")
    with safe_open(str(run_dir / "mechanistic.safetensors"), "pt") as f:
        heads = f.get_tensor("head_score_contrastive")  # [N, L, H]
        mlp = f.get_tensor("mlp_score_contrastive")  # [N, L]
    for i, row in table.iterrows():
        layer = int(row["spike_layer"])
        best = int(heads[i, layer].argmax())
        assert row["top_head"] == f"L{layer}H{best}"
        assert row["head_score"] == pytest.approx(float(heads[i, layer, best]))
        assert row["mlp_score"] == pytest.approx(float(mlp[i, layer]))
    cons = results["consistency"]
    assert cons["power"] == 0.8 and cons["rho_of_interest"] == 0.4
    partial = cons["attribution"]
    assert partial["given"] == "logit_diff" and partial["mlp"]["n"] == len(NUMBERS)
    assert sum(partial["variance_share"].values()) == pytest.approx(1.0, abs=1e-3)  # float32
    decisions = {d["name"]: d for d in results["claims"]["decisions"]}
    assert set(decisions) == {
        "localisation.attribution",
        "mechanistic.category.spike_layer",
        "mechanistic.category.top_head",
        "mechanistic.category.dla_top_head",
    }
    attribution = decisions["localisation.attribution"]
    assert attribution["p"] == partial["mlp"]["p_permutation"]
    raw = [d["p"] for d in decisions.values() if d["p"] is not None]
    holm = [d["p_holm"] for d in decisions.values() if d["p"] is not None]
    assert all(h >= p for p, h in zip(raw, holm, strict=True))  # side by side, adjusted >= raw
    assert attribution["p_holm"] == pytest.approx(
        min(1.0, max((len(raw) - rank) * p for rank, p in enumerate(sorted(raw)) if p <= attribution["p"]))
    )
    assert attribution["verdict"] in {"supported", "contradicted", "equivalent", "inconclusive"}
    assert any(
        line.startswith("MLP direct logit attribution tracks the in-context bias: ") for line in results["verdict"]
    )
    # the partial correlation recomputed from the recorded table by hand
    from scipy import stats

    ranks = {k: stats.rankdata(table[k]) for k in ("dla_mlp", "bias_ratio", "logit_diff")}
    design = np.column_stack([np.ones(len(table)), ranks["logit_diff"]])
    resid = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (ranks["dla_mlp"], ranks["bias_ratio"])]
    assert partial["mlp"]["rho"] == pytest.approx(np.corrcoef(*resid)[0, 1], abs=1e-9)


def test_the_section_renders_the_run(run_dir: Path) -> None:
    built = section.build(load_stage(run_dir))
    assert "logit difference on the number statement" in built.methods
    assert "Given the total logit difference, the partial correlation" in built.results
    assert "seated" not in built.results
    assert built.headline[1].startswith("mechanistic: localisation.attribution")
    assert "mechanistic_tests" in built.tables


def test_a_word_of_several_tokens_is_refused_with_its_pieces() -> None:
    lm = SimpleNamespace(tokenizer=_tokenizer())
    assert word_token(lm, "owl").single_token  # type: ignore[arg-type]
    with pytest.raises(MechanisticError, match="' cat' is 4 tokens"):
        word_token(lm, "cat")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the typed results

RECORDED = Path(__file__).resolve().parents[1] / "data" / "runs" / "mechanistic"  # predates claims


def test_the_written_results_read_back_as_written(run_dir: Path) -> None:
    data = read_json(run_dir / "results.json")
    results = load_results(run_dir / "results.json", MechanisticResults)
    assert data["schema_version"] == 1 and results.partial is False
    assert results.model_dump(mode="json") == data  # same keys (none added as null), same values


def test_the_recorded_run_loads_and_is_written_back_unchanged() -> None:
    data = read_json(RECORDED / "results.json")
    recorded = load_results(data, MechanisticResults)  # written before schema versions
    assert recorded.schema_version == 1 and recorded.component_score is None and recorded.claims is None
    assert recorded.consistency is not None and recorded.consistency.attribution is None
    assert recorded.numbers is not None and recorded.numbers[0].top_head == "L24H6"
    written = recorded.model_dump(mode="json")
    assert written == {"schema_version": 1, **data}
    again = load_results(json.loads(json.dumps(written)), MechanisticResults)
    assert again.model_dump_json() == recorded.model_dump_json()


def test_results_of_another_version_or_shape_are_refused() -> None:
    data = read_json(RECORDED / "results.json")
    with pytest.raises(ResultsError, match="schema version 2; this sublens reads version 1 of MechanisticResults"):
        load_results({**data, "schema_version": 2}, MechanisticResults)
    broken = copy.deepcopy(data)
    del broken["numbers"][3]["spike_layer"]
    with pytest.raises(ResultsError, match=r"does not match MechanisticResults .*numbers\.3\.spike_layer"):
        load_results(broken, MechanisticResults)
    # a finished run whose results do not read is an error, never a silently empty section
    run = load_stage(RECORDED)
    with pytest.raises(ResultsError):
        section.build(dataclasses.replace(run, results={**data, "schema_version": 2}))
