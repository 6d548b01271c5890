"""The fine-tuning loop on tiny random models of every family: freezing, answer-only loss,
padding/packing invariance, checkpoint resume, determinism, LoRA, extra loss, bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sublens.arch import adapter_for
from sublens.config import load_config
from sublens.errors import ConfigError, SublensError
from sublens.training import (
    FREEZE_MODES,
    Example,
    LoraConfig,
    TrainConfig,
    answer_loss,
    checkpoint_dirs,
    freezing,
    frozen_parameters,
    lora_attached,
    train,
)
from sublens.training_data import collate, plan_epoch, tokenize_examples
from tiny import FAMILIES, VOCAB, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def make_examples(n: int = 24, seed: int = 0) -> list[Example]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        n_prompt = int(torch.randint(2, 9, (), generator=gen))
        n_answer = int(torch.randint(1, 6, (), generator=gen))
        out.append(
            Example(
                prompt=torch.randint(2, VOCAB, (n_prompt,), generator=gen).tolist(),
                answer=torch.randint(2, VOCAB, (n_answer,), generator=gen).tolist(),
            )
        )
    return out


def cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(lr=1e-2, epochs=1, batch_size=4, max_length=32, save_model=False)
    base.update(kw)
    return TrainConfig.model_validate(base)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- freezing ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", FREEZE_MODES)
def test_freezing_really_freezes(family: str, mode: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    frozen_names = set(frozen_parameters(adapter, mode))
    before = snapshot(model)
    result = train(
        model, None, make_examples(), cfg(freeze=mode, checkpoint_every=6, epochs=2), tmp_path, progress=False
    )
    after = snapshot(model)
    assert result.steps == 12
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (name in frozen_names), f"{mode}: {name} {'un' if same else ''}changed"
    # requires_grad restored
    assert all(p.requires_grad for p in model.parameters())
    # the optimizer held exactly the trainable tensors
    report = result.freeze
    optim = torch.load(checkpoint_dirs(tmp_path)[-1] / "optimizer.pt", weights_only=True)
    n_opt = sum(len(g["params"]) for g in optim["param_groups"])
    assert n_opt == report["trainable_tensors"]
    assert sum(s["exp_avg"].numel() for s in optim["state"].values()) == report["trainable"]
    n_frozen = sum(p.numel() for p in frozen_parameters(adapter, mode).values())
    assert report["frozen"] == n_frozen
    assert report["total"] == sum(p.numel() for p in model.parameters())
    if mode != "full":
        assert n_frozen > 0


@pytest.mark.parametrize("mode", ["freeze-attention", "freeze-mlp"])
def test_frozen_weight_gradients_are_skipped(family: str, mode: str) -> None:
    model = tiny_model(family)
    data = tokenize_examples(make_examples(4), None, 32)
    batch = collate(data, [[0], [1], [2], [3]], 0, packed=False)
    with freezing(model, mode) as report:
        answer_loss(model, batch).backward()
        frozen = frozen_parameters(adapter_for(model), mode)
        assert report.frozen == sum(p.numel() for p in frozen.values())
        for name, param in model.named_parameters():
            assert (param.grad is None) == (name in frozen), name


@pytest.mark.parametrize("mode", FREEZE_MODES)
def test_frozen_embeddings_are_frozen_in_every_mode(family: str, mode: str) -> None:
    """embeddings="frozen" holds the token embeddings and the LM head fixed on top of the mode,
    so two freeze modes differ only in the component they freeze."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    data = tokenize_examples(make_examples(4), None, 32)
    batch = collate(data, [[0], [1], [2], [3]], 0, packed=False)
    with freezing(model, mode, embeddings="frozen") as report:
        answer_loss(model, batch).backward()
        assert adapter.embed().weight.grad is None and adapter.lm_head().weight.grad is None
        component = frozen_parameters(adapter, mode)
        tables = {
            id(adapter.embed().weight): adapter.embed().weight,
            id(adapter.lm_head().weight): adapter.lm_head().weight,
        }  # one tensor when tied
        expected = sum(p.numel() for p in component.values()) + sum(p.numel() for p in tables.values())
        assert report.frozen == expected
        for name, param in model.named_parameters():
            if name not in component and param is not adapter.embed().weight and param is not adapter.lm_head().weight:
                assert param.grad is not None, name


def test_freezing_restores_flags_on_exception() -> None:
    model = tiny_model("llama")
    next(model.parameters()).requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError), freezing(model, "freeze-mlp"):
        raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == flags


def test_tied_embeddings_are_reported() -> None:
    with freezing(tiny_model("llama"), "full") as report:
        assert report.tied_embeddings and "share one tensor" in report.notes[0]
    with freezing(tiny_model("qwen2"), "full") as report:
        assert not report.tied_embeddings


# ---- loss ----------------------------------------------------------------------------------
def hand_loss(model: torch.nn.Module, examples: list[Example]) -> torch.Tensor:
    """Mean NLL of the answer tokens, each example run alone with full logits."""
    nll = []
    for ex in examples:
        ids = torch.tensor([*ex.prompt, *ex.answer])[None]
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)  # [T, V]
        n_prompt = len(ex.prompt)
        for t in range(n_prompt, ids.shape[1]):
            nll.append(-logp[t - 1, ids[0, t]])
    return torch.stack(nll).mean()


def test_loss_is_masked_to_answer_tokens(family: str) -> None:
    model = tiny_model(family)
    examples = make_examples(6)
    data = tokenize_examples(examples, None, 32)
    expected = hand_loss(model, examples)
    for packed in (False, True):
        rows = [[0, 1, 2], [3, 4], [5]] if packed else [[i] for i in range(6)]
        batch = collate(data, rows, pad_id=0, packed=packed)
        assert batch.n_answer == sum(len(e.answer) for e in examples)
        torch.testing.assert_close(answer_loss(model, batch), expected, atol=1e-5, rtol=1e-5)
    # changing an answer token changes the loss: it really reads the answer tokens
    other = [Example(e.prompt, [*e.answer[:-1], (int(e.answer[-1]) + 1) % VOCAB]) for e in examples]
    batch = collate(tokenize_examples(other, None, 32), [[i] for i in range(6)], 0, packed=False)
    assert not torch.allclose(answer_loss(model, batch), expected)


def test_padding_id_and_amount_do_not_change_the_loss(family: str) -> None:
    model = tiny_model(family)
    data = tokenize_examples(make_examples(5), None, 32)
    rows = [[i] for i in range(5)]
    losses = [answer_loss(model, collate(data, rows, pad_id=p, packed=False)) for p in (0, 7, 96)]
    alone = torch.stack([answer_loss(model, collate(data, [r], 0, packed=False)) for r in rows])
    weights = torch.tensor([data[i].n_answer for i in range(5)], dtype=torch.float)
    pooled = (alone * weights).sum() / weights.sum()
    for loss in losses:
        torch.testing.assert_close(loss, pooled, atol=1e-5, rtol=1e-5)


def test_layouts_give_the_same_step(family: str, tmp_path: Path) -> None:
    """One optimizer step over all the data: pad, bucket and pack agree on loss and weights."""
    examples = make_examples(12)
    results = {}
    for layout in ("pad", "bucket", "pack"):
        model = tiny_model(family)
        res = train(
            model,
            None,
            examples,
            cfg(layout=layout, batch_size=2, grad_accum=100, dropout=False, adam_eps=1e-3),
            tmp_path / layout,
            progress=False,
        )
        assert res.steps == 1
        results[layout] = (res.history[0]["lm_loss"], snapshot(model), res.padding_fraction)
    loss0, weights0, _ = results["pad"]
    for layout in ("bucket", "pack"):
        loss, weights, _ = results[layout]
        assert loss == pytest.approx(loss0, abs=1e-5)
        for name in weights0:
            torch.testing.assert_close(weights[name], weights0[name], atol=1e-5, rtol=1e-4)


# ---- planning ------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["pad", "bucket", "pack"])
def test_plan_covers_each_example_once(layout: str) -> None:
    lengths = [int(x) for x in torch.randint(3, 30, (200,), generator=torch.Generator().manual_seed(0))]
    plan = plan_epoch(lengths, layout, batch_size=4, batch_tokens=None, max_length=64, seed=1, epoch=0)
    seen = sorted(i for mb in plan for row in mb for i in row)
    assert seen == list(range(200))
    assert plan == plan_epoch(lengths, layout, 4, None, 64, seed=1, epoch=0)
    assert plan != plan_epoch(lengths, layout, 4, None, 64, seed=1, epoch=1)
    for mb in plan:
        assert len(mb) <= 4
        assert all(sum(lengths[i] for i in row) <= 64 for row in mb)
    waste = {
        name: sum(
            len(mb) * max(sum(lengths[i] for i in row) for row in mb)
            for mb in plan_epoch(lengths, name, 8, None, 64, seed=1, epoch=0)
        )
        / sum(lengths)
        - 1
        for name in ("pad", layout)
    }
    if layout != "pad":
        assert waste[layout] < waste["pad"] / 3, waste
    budget = plan_epoch(lengths, layout, 4, batch_tokens=120, max_length=64, seed=1, epoch=0)
    for mb in budget:
        widths = [sum(lengths[i] for i in row) for row in mb]
        assert len(mb) == 1 or len(mb) * max(widths) <= 120


# ---- checkpoints, resume, determinism ------------------------------------------------------
class Interrupt(Exception):
    pass


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_equals_uninterrupted(family: str, tmp_path: Path) -> None:
    examples = make_examples(20)
    config = cfg(epochs=3, checkpoint_every=4, warmup_steps=2, schedule="cosine")  # 15 steps
    ref_model = tiny_model(family)
    ref = train(ref_model, None, examples, config, tmp_path / "ref", progress=False)

    def stop_at_10(entry: dict[str, object]) -> None:
        if entry["step"] == 10:
            raise Interrupt

    model = tiny_model(family)
    with pytest.raises(Interrupt):
        train(model, None, examples, config, tmp_path / "run", callback=stop_at_10, progress=False)
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step-0000008"]
    assert ".lora_A." not in str(list(dict(model.named_parameters()))) and all(
        p.requires_grad for p in model.parameters()
    )
    fresh = tiny_model(family)  # a new process would start from the base model again
    res = train(fresh, None, examples, config, tmp_path / "run", progress=False)
    assert res.resumed_from == 8 and res.steps == ref.steps == 15
    assert res.lm_losses == ref.lm_losses
    assert [h["lr"] for h in res.history] == [h["lr"] for h in ref.history]
    ref_weights = snapshot(ref_model)
    for name, value in snapshot(fresh).items():
        assert torch.equal(value, ref_weights[name]), name


def test_finished_run_is_not_retrained(tmp_path: Path) -> None:
    examples = make_examples(8)
    model = tiny_model("llama")
    first = train(model, None, examples, cfg(save_model=True), tmp_path, progress=False)
    assert first.model_dir is not None and (Path(first.model_dir) / "config.json").is_file()
    again = tiny_model("llama")
    second = train(again, None, examples, cfg(save_model=True), tmp_path, progress=False)
    assert second.history == first.history
    for name, value in snapshot(again).items():
        assert torch.equal(value, dict(model.named_parameters())[name]), name


def test_resume_refuses_a_different_run(tmp_path: Path) -> None:
    examples = make_examples(8)
    train(tiny_model("llama"), None, examples, cfg(checkpoint_every=1), tmp_path, progress=False)
    with pytest.raises(SublensError, match="lr"):
        train(tiny_model("llama"), None, examples, cfg(checkpoint_every=1, lr=0.5), tmp_path, progress=False)
    with pytest.raises(SublensError, match="data differ"):
        train(tiny_model("llama"), None, make_examples(8, seed=3), cfg(checkpoint_every=1), tmp_path, progress=False)


def test_same_seed_same_weights(tmp_path: Path) -> None:
    examples = make_examples(16)
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        model = tiny_model("gpt2")  # GPT-2 has dropout: the seed must fix it too
        res = train(model, None, examples, cfg(seed=seed, epochs=2), tmp_path / str(i), progress=False)
        runs.append((res.lm_losses, snapshot(model)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][n], runs[1][1][n]) for n in runs[0][1])
    assert runs[0][0] != runs[2][0]


# ---- LoRA ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_merge_matches_adapters(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    names_before = set(snapshot(model))
    ids = torch.randint(0, VOCAB, (2, 6))
    with lora_attached(model, adapter, "full", LoraConfig(rank=2), seed=0) as lora:
        with torch.no_grad():
            for name, param in lora.named_parameters():
                if ".lora_B." in name:
                    param.normal_()  # B starts at zero; make the adapters do something
            hooked = model(ids).logits
        lora.merge()
    assert set(snapshot(model)) == names_before  # the adapters are gone, the base layers back
    torch.testing.assert_close(model(ids).logits, hooked, atol=1e-4, rtol=1e-4)


def test_lora_trains_only_adapters_of_unfrozen_components(tmp_path: Path) -> None:
    model = tiny_model("llama")
    adapter = adapter_for(model)
    mlp = set(dict(adapter.mlp_parameters()))
    before = snapshot(model)
    examples = make_examples()
    data = tokenize_examples(examples, None, 32)
    everything = collate(data, [[i] for i in range(len(data))], 0, packed=False)
    with torch.no_grad():
        loss_before = float(answer_loss(model, everything))
    res = train(
        model,
        None,
        examples,
        cfg(freeze="freeze-attention", epochs=3, lora=LoraConfig(rank=2, targets=("up_proj", "down_proj"))),
        tmp_path,
        progress=False,
    )
    assert res.freeze["trainable"] == 3 * 2 * 2 * (48 + 96)  # layers x modules x rank x (in+out)
    model.eval()
    with torch.no_grad():
        assert float(answer_loss(model, everything)) < loss_before
    after = snapshot(model)
    assert set(after) == set(before)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {n for n in mlp if n.endswith(("up_proj.weight", "down_proj.weight"))}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_resume_equals_uninterrupted(family: str, tmp_path: Path) -> None:
    """peft's adapters are re-created from the seed and their saved state loaded: an interrupted
    LoRA run resumes to the same losses and the same merged weights."""
    examples = make_examples(20)
    config = cfg(epochs=3, checkpoint_every=4, lr=1e-2, lora=LoraConfig(rank=2))  # 15 steps
    ref_model = tiny_model(family)
    ref = train(ref_model, None, examples, config, tmp_path / "ref", progress=False)

    def stop_at_10(entry: dict[str, object]) -> None:
        if entry["step"] == 10:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_model(family), None, examples, config, tmp_path / "run", callback=stop_at_10, progress=False)
    fresh = tiny_model(family)
    res = train(fresh, None, examples, config, tmp_path / "run", progress=False)
    assert res.resumed_from == 8 and res.lm_losses == ref.lm_losses
    after, expected = snapshot(fresh), snapshot(ref_model)
    assert set(after) == set(expected) and all(torch.equal(after[n], expected[n]) for n in after)


def test_lora_adapters_are_saved_alone_and_load_with_peft(tmp_path: Path) -> None:
    from peft import PeftModel

    examples = make_examples(12)
    trained = tiny_model("llama")
    train(
        trained,
        None,
        examples,
        cfg(epochs=2, lr=1e-2, save_model=True, lora=LoraConfig(rank=4, alpha=8)),
        tmp_path,
        progress=False,
    )
    adapter = tmp_path / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = PeftModel.from_pretrained(tiny_model("llama"), str(adapter))  # the base model + the adapters
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(tiny_model("llama")(ids).logits, trained(ids).logits, atol=1e-3)


def test_lora_unknown_target_names_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gate_proj"):
        train(
            tiny_model("llama"),
            None,
            make_examples(4),
            cfg(lora=LoraConfig(targets=("nope",))),
            tmp_path,
            progress=False,
        )


# ---- extra loss ----------------------------------------------------------------------------
def test_extra_loss_is_added_with_its_weight(tmp_path: Path) -> None:
    examples = make_examples(8)
    calls = []

    def extra(model: torch.nn.Module, batch: object) -> tuple[torch.Tensor, dict[str, float]]:
        calls.append(batch)
        head = model.get_output_embeddings().weight  # type: ignore[operator]
        loss = head.pow(2).mean()
        return loss, {"norm": float(loss.detach())}

    weights = {}
    for weight in (0.0, 1.0):
        model = tiny_model("qwen2")
        res = train(
            model,
            None,
            examples,
            cfg(extra_loss_weight=weight, dropout=False),
            tmp_path / str(weight),
            extra_loss=extra,
            progress=False,
        )
        weights[weight] = snapshot(model)
        assert all(h["extra_loss"] is not None and "extra/norm" in h for h in res.history)
    plain = tiny_model("qwen2")
    train(plain, None, examples, cfg(dropout=False), tmp_path / "plain", progress=False)
    assert all(torch.equal(weights[0.0][n], p) for n, p in snapshot(plain).items())
    assert not torch.equal(weights[1.0]["lm_head.weight"], weights[0.0]["lm_head.weight"])
    assert calls and getattr(calls[0], "outputs", None) is not None


# ---- bad configs ---------------------------------------------------------------------------
def test_bad_configs_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="freeze-attention"):
        load_config(TrainConfig, overrides=["freeze=attention"])
    with pytest.raises(ConfigError, match="Valid keys"):
        load_config(TrainConfig, overrides=["learning_rate=0.1"])
    assert load_config(TrainConfig, overrides=["lora.rank=4"]).lora == LoraConfig(rank=4)
    with pytest.raises(ConfigError, match="valid: full | freeze-attention | freeze-mlp | layers.N"):
        with freezing(tiny_model("llama"), "attention"):
            pass
    with pytest.raises(ConfigError, match="max_length"):
        train(tiny_model("llama"), None, [Example([1] * 20, [2] * 20)], cfg(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="tokenizer"):
        train(tiny_model("llama"), None, [Example("hi", "there")], cfg(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="empty"):
        train(tiny_model("llama"), None, [Example([1, 2], [])], cfg(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="vocabulary"):
        train(tiny_model("llama"), None, [Example([1, 2], [VOCAB])], cfg(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="positions"):
        train(tiny_model("llama"), None, make_examples(2), cfg(max_length=4096), tmp_path, progress=False)


def test_bf16_mixed_precision_runs_and_leaves_forward_unpatched(tmp_path: Path) -> None:
    model = tiny_model("gemma3")
    forward = model.forward
    train(model, None, make_examples(8), cfg(), tmp_path / "fp32", progress=False)
    res = train(model, None, make_examples(8), cfg(mixed_precision="bf16"), tmp_path / "bf16", progress=False)
    assert all(torch.isfinite(torch.tensor(res.lm_losses)))
    assert model.forward == forward and "_original_forward" not in model.__dict__
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_auto_precision_follows_the_hardware(tmp_path: Path) -> None:
    from sublens.models.device import cpu_has_native_bf16, resolve_mixed_precision

    amd = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert not cpu_has_native_bf16(amd) and cpu_has_native_bf16(sapphire)
    cpu = torch.device("cpu")
    assert resolve_mixed_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "no")
    assert resolve_mixed_precision("no", cpu) == "no" and resolve_mixed_precision("bf16", cpu) == "bf16"
    # The precision in effect is recorded with the result.
    res = train(tiny_model("llama"), None, make_examples(4), cfg(mixed_precision="auto"), tmp_path / "auto")
    assert res.precision == resolve_mixed_precision("auto", cpu)


def test_sgd_step_is_the_plain_gradient_step(tmp_path: Path) -> None:
    # One SGD step without momentum, clipping or schedule moves every parameter by -lr * grad,
    # the gradient computed here independently with autograd on the same batch.
    examples = make_examples(4)
    model, reference = tiny_model("llama"), tiny_model("llama")
    data = tokenize_examples(examples, None, 32)
    batch = collate(data, [[i] for i in range(len(data))], 0, packed=False)
    reference.train()
    answer_loss(reference, batch).backward()
    expected = {n: p.detach() - 0.1 * p.grad for n, p in reference.named_parameters() if p.grad is not None}
    config = cfg(
        optimizer="sgd",
        sgd_momentum=0.0,
        lr=0.1,
        max_steps=1,
        batch_size=4,
        max_grad_norm=None,
        schedule="constant",
        layout="pad",
    )
    train(model, None, examples, config, tmp_path, progress=False)
    after = dict(model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(after[name].detach(), value, rtol=1e-4, atol=1e-6)


def test_sgd_with_momentum_trains(tmp_path: Path) -> None:
    model = tiny_model("qwen2")
    examples = make_examples()
    data = tokenize_examples(examples, None, 32)
    everything = collate(data, [[i] for i in range(len(data))], 0, packed=False)
    with torch.no_grad():
        before = float(answer_loss(model.eval(), everything))
    train(model, None, examples, cfg(optimizer="sgd", lr=0.5, epochs=3), tmp_path, progress=False)
    with torch.no_grad():
        assert float(answer_loss(model.eval(), everything)) < before
