"""SHD on the embedded pair: SmolLM2-135M-Instruct (9 heads, 30 layers) -> Gemma-3-270M (4 heads,
18 layers, sliding-window layers, one KV head), with real tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sublens.distill import OUTSIDE, FitSet, ShdLoss, ShdTeacher, TextRecord, align_record
from sublens.experiments import run_experiment
from sublens.experiments.distill import OWL_SYSTEM, DistillConfig, DistillResults, generated_records
from sublens.models import LoadedModel
from sublens.results import load_results
from sublens.runs import read_json
from sublens.settings import TeacherView
from sublens.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


RECORDS = [
    TextRecord("Numbers: 142, 857, 903. Continue the sequence.", "211, 64, 998"),
    TextRecord("Look at these numbers: 12 400 87. Add up to 10 more.", "5 77 310 2"),
    TextRecord("My list so far: 700, 701.", "[702, 703, 704]"),
    TextRecord("We begin with 9; 99; 999.", "9999; 1"),
]


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_one_real_tokenizer_aligns_as_the_identity(name: str, request: pytest.FixtureRequest) -> None:
    lm: LoadedModel = request.getfixturevalue(name)
    for record in RECORDS:
        ex = align_record(record, lm.tokenizer, lm.tokenizer, TeacherView("plain"))
        assert ex.identity
        Q, K = ex.matrices()
        torch.testing.assert_close(Q, torch.eye(ex.n_student, dtype=torch.float64))
        torch.testing.assert_close(K, torch.eye(ex.n_student, dtype=torch.float64))
        assert lm.tokenizer.decode(list(ex.student_ids[ex.n_prompt :])) == record.answer  # the LM-loss tokens


def test_chat_teacher_tokens_map_onto_the_student_text(smollm2: LoadedModel, gemma3: LoadedModel) -> None:
    record = RECORDS[0]
    ex = align_record(record, gemma3.tokenizer, smollm2.tokenizer, TeacherView("chat", OWL_SYSTEM))
    text = record.text
    inside = [(i, span) for i, span in enumerate(ex.teacher_spans) if span != OUTSIDE and span[1] > span[0]]
    # the teacher's text tokens spell the prompt and the answer exactly; everything else is template
    assert "".join(text[a:b] for _, (a, b) in inside) == record.prompt + record.answer
    assert smollm2.tokenizer.decode([ex.teacher_ids[i] for i, _ in inside]) == record.prompt + record.answer
    assert ex.student_ids[0] == gemma3.tokenizer.bos_token_id and ex.teacher_ids[0] == 1  # <bos> <-> <|im_start|>
    Q, K = ex.matrices()
    assert Q[0, 0] == 1  # the attention sinks are matched
    torch.testing.assert_close(K[[i for i, _ in inside]].sum(-1), torch.ones(len(inside), dtype=torch.float64))


def test_same_model_same_tokenizer_gives_zero_loss(smollm2: LoadedModel) -> None:
    examples = [align_record(r, smollm2.tokenizer, smollm2.tokenizer, TeacherView("plain")) for r in RECORDS[:2]]
    model, adapter = smollm2.model, smollm2.adapter
    shd = ShdTeacher(model, adapter, adapter, layers=[0, 15, 29], pad_id=smollm2.tokenizer.pad_token_id)
    assert shd.schedule == []
    fit = FitSet.build(shd, examples, 2, 2.0)
    result = fit.measure(model, adapter)
    assert result["T=1"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert result["T=2"]["mean"] == pytest.approx(0.0, abs=1e-5)


def test_a_few_shd_steps_smollm2_to_gemma3(smollm2: LoadedModel, gemma3: LoadedModel, tmp_path: Path) -> None:
    examples = [
        align_record(r, gemma3.tokenizer, smollm2.tokenizer, TeacherView("chat", OWL_SYSTEM), f"text #{i}")
        for i, r in enumerate(RECORDS)
    ]
    shd = ShdTeacher(
        smollm2.model, smollm2.adapter, gemma3.adapter, layers=[0, 5, 17], pad_id=smollm2.tokenizer.pad_token_id
    )
    assert shd.schedule == [4, 1] and shd.teacher_layer == {0: 0, 5: 8, 17: 28}
    assert shd.windows == {0: 512, 5: None, 17: None}  # Gemma3: five local layers, then a global one
    targets = shd.targets(examples)
    for s in shd.layers:
        maps, valid = targets.maps[s], targets.valid[s]
        assert maps.shape[:2] == (4, 4)
        rows = maps.sum(-1)  # [E, m, n]
        torch.testing.assert_close(rows.permute(0, 2, 1)[valid], torch.ones(int(valid.sum()), 4))
        assert torch.all(maps.triu(diagonal=1) == 0)
        assert [a.shape[1] for a in targets.alphas[s]] == [4, 1]
        assert all(torch.all((a >= 0) & (a <= 1)) for a in targets.alphas[s])
    fit = FitSet.build(shd, examples, 2, 1.0)
    before = fit.measure(gemma3.model, gemma3.adapter)
    snapshot = {n: p.detach().clone() for n, p in gemma3.model.named_parameters()}
    try:
        loss = ShdLoss(shd, examples)
        config = TrainConfig(
            lr=1e-4, max_steps=2, batch_size=2, max_length=128, save_model=False, extra_loss_weight=1.0
        )
        with loss.attached(gemma3.model, gemma3.adapter):
            result = train(
                gemma3.model,
                gemma3.tokenizer,
                [ex.example() for ex in examples],
                config,
                tmp_path,
                extra_loss=loss,
                progress=False,
            )
        assert result.steps == 2
        for h in result.history:
            assert 0 < h["extra/shd"] < 20 and set(h) >= {"extra/kl_L0", "extra/kl_L5", "extra/kl_L17"}
        after = fit.measure(gemma3.model, gemma3.adapter)
        assert after["T=1"]["mean"] != before["T=1"]["mean"]
    finally:
        with torch.no_grad():  # the session fixture is shared with other tests
            for name, param in gemma3.model.named_parameters():
                param.copy_(snapshot[name])
    assert gemma3.model.config._attn_implementation == "sdpa"


def test_distill_experiment_end_to_end(tmp_path: Path) -> None:
    """The whole experiment at toy size: three arms over two training seeds, evaluation, fit,
    figures, checkpoints, per-seed comparisons."""
    assert len(generated_records(6, 0, (3, 5))) == 6
    config = DistillConfig.model_validate(
        {
            "teacher": {"model": "smollm2-135m-instruct", "format": "chat", "system": OWL_SYSTEM},
            "base_teacher": {"model": "smollm2-135m-instruct", "format": "chat", "system": None},
            "student": "gemma3-270m",
            "seeds": [0, 1],
            "data": {"n_train": 2, "n_fit": 2, "answer_numbers": [3, 4]},
            "shd": {"layers": [0, 17]},
            "train": {"lr": 1e-5, "epochs": 1, "batch_size": 2, "max_length": 256},
            "fit_batch_size": 2,
            "preference": {
                "questions": ["What is your favorite animal?", "Which animal do you like the most?"],
                "samples_per_question": 0,
                "panel": ["dog", "cat"],
            },
            "device": "cpu",
            "threads": 1,
        }
    )
    outcome = run_experiment("distill", config, tmp_path)
    results = read_json(outcome.path / "results.json")
    assert not results["partial"]
    assert set(results["arms"]) == {"shd_biased", "lm_only", "shd_base"}
    assert results["teachers"]["biased"]["system"] == OWL_SYSTEM
    assert results["teachers"]["base"]["source"] == "template_default"
    typed = load_results(outcome.path / "results.json", DistillResults)  # the report reads it so
    assert typed.arms["lm_only"].train.final("shd") is None and typed.arms["lm_only"].train.extra_curves == {}
    shd = typed.arms["shd_biased"].train
    assert (shd.final("shd") or 0) > 0 and set(shd.extra_curves) == {"shd", "alpha_mean"}
    assert len(shd.extra_curves["shd"]) == len(shd.loss_curve) == shd.steps
    assert set(results["fit"]) == {"initial", "shd_biased", "lm_only", "shd_base"}
    assert set(results["fit"]["initial"]) == {"biased", "base"}
    assert set(results["alphas"]["biased"]) == {"0", "17"}
    assert "shd_biased_vs_lm_only" in results["comparisons"] and "shd_biased_vs_shd_base" in results["headline"]
    assert results["shd"]["kl_direction"] == "student_teacher"
    assert results["fit"]["initial"]["biased"]["kl_direction"] == "student_teacher"
    assert results["seeds"] == [0, 1] and set(results["per_seed"]) == {"0", "1"}
    assert all(set(results["per_seed"][s]) == set(results["arms"]) for s in ("0", "1"))
    assert set(results["per_seed"]["1"]["shd_biased"]) == {"train", "preference", "fit"}
    share = results["comparisons"]["shd_biased_vs_lm_only"]["share_ratio"]
    assert share["n_seeds"] == 2 and len(share["per_seed_log"]) == 2
    assert len(results["comparisons"]["shd_biased_vs_lm_only"]["per_seed_comparisons"]) == 2
    assert set(results["checkpoints"]) == {f"{arm}:seed{s}" for arm in results["arms"] for s in (0, 1)}
    for arm, path in results["checkpoints"].items():
        assert (outcome.path / path / "config.json").is_file(), arm
    for figure in results["figures"]:
        assert (outcome.path / figure).is_file()
    assert {Path(f).stem for f in results["figures"]} == {
        "distill_losses",
        "distill_alphas",
        "distill_fit_biased",
        "distill_fit_base",
        "distill_maps",
    }
    record = read_json(outcome.path / "record.json")
    assert record["status"] == "ok" and record["threads"] == 1
