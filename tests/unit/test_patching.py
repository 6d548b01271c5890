"""Activation patching (sublens.patching) on tiny random models of every family.

The strong check: two models that share embeddings, final norm and LM head but differ in every
layer; patching all attention and MLP outputs of A into B makes B's residual stream A's, so B
returns A's logits bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from sublens.arch import adapter_for
from sublens.hooks import capture
from sublens.patching import (
    PatchingError,
    gap_fractions,
    layer_label,
    logit_difference,
    patch,
    patch_names,
    patching_sweep,
)
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(family: str) -> tuple[nn.Module, nn.Module]:
    """A and B: different layers, the same embeddings, final norm and LM head."""
    a, b = tiny_model(family, seed=0), tiny_model(family, seed=1)
    ad, bd = adapter_for(a), adapter_for(b)
    with torch.no_grad():
        for get in (lambda x: x.embed(), lambda x: x.pos_embed(), lambda x: x.norm_final(), lambda x: x.lm_head()):
            source, target = get(ad), get(bd)
            if source is None:
                continue
            for (name, p), (_, q) in zip(source.named_parameters(), target.named_parameters(), strict=True):
                q.copy_(p, non_blocking=False)
                assert torch.equal(p, q), name
    return a, b


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits  # type: ignore[no-any-return]


def _all_outputs(model: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    adapter = adapter_for(model)
    names = patch_names("mlp", range(adapter.n_layers)) + patch_names("attention", range(adapter.n_layers))
    with torch.no_grad(), capture(model, adapter, names) as cache:
        model(input_ids=ids)
    return dict(cache)


def test_patching_every_output_of_a_into_b_reproduces_a(family: str, input_ids: torch.Tensor) -> None:
    a, b = _pair(family)
    want_a, want_b = _logits(a, input_ids), _logits(b, input_ids)
    assert not torch.allclose(want_a, want_b)  # the layers really differ
    outputs = _all_outputs(a, input_ids)
    with patch(b, adapter_for(b), outputs) as applied:
        got = _logits(b, input_ids)
    assert torch.equal(got, want_a)
    assert set(applied.values()) == {1}
    # only the MLPs, or only attention: neither model
    for component in ("mlp", "attention"):
        some = {n: v for n, v in outputs.items() if n in patch_names(component, range(adapter_for(b).n_layers))}
        with patch(b, adapter_for(b), some):
            partial = _logits(b, input_ids)
        assert not torch.allclose(partial, want_a) and not torch.allclose(partial, want_b)


def test_patching_nothing_leaves_the_model_unchanged(family: str, input_ids: torch.Tensor) -> None:
    _, b = _pair(family)
    want = _logits(b, input_ids)
    with patch(b, adapter_for(b), {}) as applied:
        assert torch.equal(_logits(b, input_ids), want)
    assert applied == {}
    # patching B's own outputs into B is no change either
    with patch(b, adapter_for(b), _all_outputs(b, input_ids)):
        assert torch.equal(_logits(b, input_ids), want)


def test_patching_is_undone_on_exit_and_on_exception(family: str, input_ids: torch.Tensor) -> None:
    a, b = _pair(family)
    adapter = adapter_for(b)
    want = _logits(b, input_ids)
    outputs = _all_outputs(a, input_ids)
    with patch(b, adapter, outputs):
        assert not torch.equal(_logits(b, input_ids), want)
    assert torch.equal(_logits(b, input_ids), want)
    with pytest.raises(RuntimeError, match="boom"), patch(b, adapter, outputs):
        raise RuntimeError("boom")
    assert torch.equal(_logits(b, input_ids), want)
    for layer in range(adapter.n_layers):
        assert not adapter.mlp_out_site(layer)._forward_hooks
        assert not adapter.attn_out_site(layer)._forward_hooks


def test_bad_patches_are_refused(input_ids: torch.Tensor) -> None:
    a, b = _pair("llama")
    adapter = adapter_for(b)
    with pytest.raises(PatchingError, match="hook_attn_out and"):
        with patch(b, adapter, {"blocks.0.hook_resid_post": torch.zeros(1)}):
            pass
    with pytest.raises(PatchingError, match="layer 7 does not exist"):
        with patch(b, adapter, {"blocks.7.hook_mlp_out": torch.zeros(1)}):
            pass
    with pytest.raises(PatchingError, match="another model"):
        with patch(a, adapter, {}):
            pass
    outputs = _all_outputs(a, input_ids[:1])
    with pytest.raises(PatchingError, match="same prompt"), patch(b, adapter, outputs):
        _logits(b, input_ids)  # batch 2 against a batch-1 patch
    assert not any(adapter.mlp_out_site(layer)._forward_hooks for layer in range(adapter.n_layers))
    with pytest.raises(PatchingError, match="Unknown component"):
        patch_names("head", [0])
    assert layer_label((0, 3), 3) == "all" and layer_label((1, 3), 3) == "L1-2"


@contextmanager
def _weights(working: nn.Module, states: dict[str, dict[str, torch.Tensor]], source: str) -> Iterator[None]:
    working.load_state_dict(states[source])
    try:
        yield
    finally:
        working.load_state_dict(states["base"])


def test_sweep_matches_direct_runs(family: str) -> None:
    base, biased = tiny_model(family, seed=0), tiny_model(family, seed=1)
    working = tiny_model(family, seed=0)
    states = {
        "base": {k: v.clone() for k, v in base.state_dict().items()},
        "biased": {k: v.clone() for k, v in biased.state_dict().items()},
    }
    adapter = adapter_for(working)
    n = adapter.n_layers
    prompts = [[3, 5, 7, 9], [11, 2, 4], [8, 8, 1, 6, 2]]
    target, foil = 10, 20
    ranges = [(0, 1), (1, n), (0, n)]
    sweep = patching_sweep(working, adapter, prompts, target, foil, ranges, lambda s: _weights(working, states, s))
    assert sweep["labels"] == ["L0-0", f"L1-{n - 1}", "all"]
    assert sweep["forward_passes"] == 2 * 3 + 2 * 2 * 3 * 3
    for q, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        ld_base = logit_difference(_logits(base, ids), target, foil)
        ld_biased = logit_difference(_logits(biased, ids), target, foil)
        assert sweep["base"][q] == pytest.approx(ld_base, abs=1e-5)
        assert sweep["biased"][q] == pytest.approx(ld_biased, abs=1e-5)
        # biased MLP outputs of layers 1.. into the base run, by hand
        donor = _all_outputs(biased, ids)
        values = {k: donor[k] for k in patch_names("mlp", range(1, n))}
        with patch(base, adapter_for(base), values):
            want = logit_difference(_logits(base, ids), target, foil)
        assert sweep["patched"]["into_base"]["mlp"][f"L1-{n - 1}"][q] == pytest.approx(want, abs=1e-5)
        donor = _all_outputs(base, ids)
        values = {k: donor[k] for k in patch_names("attention", range(0, 1))}
        with patch(biased, adapter_for(biased), values):
            want = logit_difference(_logits(biased, ids), target, foil)
        assert sweep["patched"]["into_biased"]["attention"]["L0-0"][q] == pytest.approx(want, abs=1e-5)
    for name, tensor in working.state_dict().items():  # the working model is base again
        assert torch.equal(tensor, states["base"][name])


def test_gap_fractions_by_hand() -> None:
    base, biased = [0.0, 1.0, -1.0, 0.5, 0.0], [2.0, 3.0, 1.0, 3.5, 2.5]  # gaps 2, 2, 2, 3, 2.5: mean 2.3
    into_base = [1.0, 2.0, 0.0, 1.5, 1.0]  # restored 1, 1, 1, 1, 1 (/ 2.3)
    into_biased = [1.0, 1.0, 0.0, 2.0, 2.5]  # removed 1, 2, 1, 1.5, 0 (/ 2.3)
    sweep = {
        "ranges": [[0, 2]],
        "labels": ["all"],
        "base": base,
        "biased": biased,
        "patched": {"into_base": {"mlp": {"all": into_base}}, "into_biased": {"mlp": {"all": into_biased}}},
    }
    out = gap_fractions(sweep)
    assert out["gap"]["mean"] == pytest.approx(2.3) and out["gap_usable"]
    restored, removed = out["cells"]
    assert restored["measures"] == "restored" and removed["measures"] == "removed"
    # every question restores 1/2.3 exactly: no spread, so no interval (never a zero-width one)
    assert restored["fraction"] == pytest.approx(1 / 2.3)
    assert restored["ci_low"] is None and restored["p_value"] is None and restored["p_holm"] is None
    values = np.array([1, 2, 1, 1.5, 0]) / 2.3
    half = stats.t.ppf(0.975, 4) * values.std(ddof=1) / np.sqrt(5)
    assert removed["fraction"] == pytest.approx(5.5 / 5 / 2.3)
    assert removed["ci_low"] == pytest.approx(values.mean() - half)
    assert removed["ci_high"] == pytest.approx(values.mean() + half)
    assert removed["p_value"] == pytest.approx(stats.ttest_1samp(values, 0).pvalue)
    assert removed["p_holm"] == pytest.approx(removed["p_value"])  # the only p-value in the family
    assert removed["per_question"] == pytest.approx(values.tolist())
    flat = gap_fractions({**sweep, "biased": base})
    assert not flat["gap_usable"] and all(c["fraction"] is None for c in flat["cells"])
