"""`tiny:` model specs (sublens.models.tiny): the grammar and its errors, the geometry asked for,
determinism, and loading through load_model like any other spec.

The unit tier runs without the sublens cache, so the borrowed tokenizer is a small word-level
stand-in built here; the real tokenizers (SmolLM2's, Gemma's) are used by
tests/integration/test_paper_geometry.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

import sublens.models as models
from sublens.arch import adapter_for
from sublens.config import check_model_specs
from sublens.errors import ModelSpecError
from sublens.models.tiny import FAMILIES, TinySpec, borrow_tokenizer, build_tiny, parse_tiny

WORDS = ["<unk>", "<s>", "</s>", "my", "favorite", "animal", "is", "the", "owl", "dog", "1", "2", "3"]
CHAT = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def stub_tokenizer() -> PreTrainedTokenizerBase:
    """A word-level tokenizer of 13 tokens with special tokens and a chat template."""
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = CHAT
    return tokenizer


@pytest.fixture
def borrowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The embedded models' folders replaced by one holding the stand-in tokenizer; returns the
    embedded names asked for."""
    folder = tmp_path / "tokenizer"
    stub_tokenizer().save_pretrained(folder)
    asked: list[str] = []

    def fake_ensure(name: str) -> Path:
        asked.append(name)
        return folder

    monkeypatch.setattr(models, "ensure_embedded", fake_ensure)
    return asked


# ---- grammar -------------------------------------------------------------------------------
def test_defaults_and_canonical_form() -> None:
    spec = parse_tiny("tiny:llama")
    assert spec == TinySpec(
        family="llama",
        layers=2,
        hidden=64,
        heads=4,
        kv_heads=4,
        head_dim=16,
        mlp=256,
        context=1024,
        tied=True,
        tokenizer="smollm2-135m-instruct",
        chat=True,
        seed=0,
    )
    assert parse_tiny(spec.canonical()) == spec
    assert parse_tiny("tiny:gemma3").tokenizer == "gemma3-270m"
    gpt2 = parse_tiny("tiny:gpt2?heads=16")
    assert gpt2.chat is False and gpt2.kv_heads == 16 and gpt2.head_dim == 4  # a base model: no chat template
    paper = parse_tiny("tiny:llama?layers=2&heads=32&kv_heads=8&hidden=64&seed=3&tied=false&chat=no")
    assert (paper.layers, paper.heads, paper.kv_heads, paper.head_dim, paper.seed) == (2, 32, 8, 2, 3)
    assert paper.tied is False and paper.chat is False
    assert parse_tiny("tiny:qwen2?heads=4&hidden=64&head_dim=8").head_dim == 8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tiny:mistral", r"unknown family 'mistral' \(families: llama, gemma3, gpt2, qwen2\)"),
        ("tiny:", "unknown family ''"),
        ("tiny:llama?depth=2", r"unknown key 'depth' \(keys: layers, hidden, heads, kv_heads"),
        ("tiny:llama?layers", "'layers' is not KEY=VALUE"),
        ("tiny:llama?layers=", "'layers=' is not KEY=VALUE"),
        ("tiny:llama?layers=2&layers=3", "key 'layers' given twice"),
        ("tiny:llama?layers=two", "layers='two' is not a positive whole number"),
        ("tiny:llama?heads=0", "heads='0' is not a positive whole number"),
        ("tiny:llama?seed=-1", "seed='-1' is not a whole number >= 0"),
        ("tiny:llama?tied=maybe", "tied='maybe' is not true or false"),
        ("tiny:llama?hidden=64&heads=6", "heads=6 does not divide hidden=64"),
        ("tiny:llama?hidden=64&heads=6&head_dim=8", "heads=6 does not divide hidden=64"),
        ("tiny:llama?heads=32&kv_heads=6", "kv_heads=6 does not divide heads=32"),
        ("tiny:gpt2?heads=4&kv_heads=2", "gpt2 has no grouped-query attention"),
        ("tiny:gpt2?head_dim=8", "gpt2's head width is always hidden / heads"),
        ("tiny:llama?tokenizer=gpt2", "tokenizer='gpt2' is not an embedded model"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ModelSpecError, match=message) as info:
        parse_tiny(spec)
    assert "A tiny spec is tiny:FAMILY[?KEY=VALUE&...]" in str(info.value)  # and what would work
    with pytest.raises(ModelSpecError, match=message):
        models.check_spec(spec)  # as a config's model spec is checked, before anything loads
    with pytest.raises(ModelSpecError, match=message):
        models.resolve(spec)


def test_specs_resolve_without_loading() -> None:
    spec = "tiny:llama?heads=32&kv_heads=8"
    assert models.check_spec(spec) == spec
    assert not models.looks_like_path(spec)
    assert models.resolve(spec) == ("tiny", parse_tiny(spec).canonical())
    with pytest.raises(ModelSpecError, match="tiny:llama"):  # an unknown spec points at them
        models.resolve("no-such-model")


def test_config_spec_check_names_the_key() -> None:
    from sublens.experiments.answer import AnswerConfig

    check_model_specs(AnswerConfig(model="tiny:llama?heads=32&kv_heads=8"))
    with pytest.raises(ModelSpecError, match=r"^model: .*kv_heads=3 does not divide heads=32"):
        check_model_specs(AnswerConfig(model="tiny:llama?heads=32&kv_heads=3"))


# ---- geometry and determinism ----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_geometry_is_what_the_spec_asks(family: str) -> None:
    kv = 4 if family == "gpt2" else 2
    tokenizer = stub_tokenizer()
    for tied in (True, False):
        spec = parse_tiny(f"tiny:{family}?layers=3&hidden=32&heads=4&kv_heads={kv}&tied={str(tied).lower()}")
        model = build_tiny(spec, tokenizer)
        described = adapter_for(model).describe()
        assert (described["n_layers"], described["n_heads"], described["n_kv_heads"]) == (3, 4, kv)
        assert (described["d_model"], described["d_head"], described["tied_embeddings"]) == (32, 8, tied)
        embed = model.get_input_embeddings().weight
        assert embed.shape == (len(tokenizer), 32)  # the vocabulary is the tokenizer's
        assert (embed.data_ptr() == model.get_output_embeddings().weight.data_ptr()) is tied
        assert model.config.eos_token_id == tokenizer.eos_token_id
        assert not model.training and embed.dtype == torch.float32


def test_paper_geometry_with_explicit_head_width() -> None:
    model = build_tiny(parse_tiny("tiny:gemma3?layers=2&hidden=64&heads=32&kv_heads=8&head_dim=8"), stub_tokenizer())
    described = adapter_for(model).describe()
    assert (described["n_heads"], described["n_kv_heads"], described["d_head"]) == (32, 8, 8)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (32 * 8, 64)
    assert model.config.layer_types == ["sliding_attention", "full_attention"]  # the last layer is global


def test_same_spec_same_weights_and_the_global_rng_is_untouched() -> None:
    tokenizer = stub_tokenizer()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = build_tiny(parse_tiny("tiny:llama?heads=8&kv_heads=2&seed=5"), tokenizer).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)  # a different global state changes nothing
    again = build_tiny(parse_tiny("tiny:llama?heads=8&kv_heads=2&seed=5"), tokenizer).state_dict()
    other = build_tiny(parse_tiny("tiny:llama?heads=8&kv_heads=2&seed=6"), tokenizer).state_dict()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(
        first["model.layers.0.self_attn.q_proj.weight"], other["model.layers.0.self_attn.q_proj.weight"]
    )


# ---- loading -------------------------------------------------------------------------------
def test_load_model_builds_it_with_the_borrowed_tokenizer(borrowed: list[str], tmp_path: Path) -> None:
    spec = "tiny:llama?layers=2&hidden=64&heads=32&kv_heads=8&seed=0"
    lm = models.load_model(spec, device="cpu")
    assert borrowed == ["smollm2-135m-instruct"]
    assert lm.source == "tiny" and lm.spec == spec and lm.path == parse_tiny(spec).canonical()
    described = lm.describe()
    assert (described["n_heads"], described["n_kv_heads"], described["n_layers"]) == (32, 8, 2)
    assert described["tied_embeddings"] is True and described["chat_template"] is True
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert lm.model.config.vocab_size == len(lm.tokenizer) == len(WORDS)
    ids = lm.tokenizer("my favorite animal is the owl", return_tensors="pt").input_ids
    assert lm.model(ids).logits.shape == (1, ids.shape[1], len(WORDS))
    # Saved (as a run saves a fine-tuned copy), it loads back as a checkpoint folder.
    lm.model.save_pretrained(tmp_path / "saved")
    lm.tokenizer.save_pretrained(tmp_path / "saved")
    again = models.load_model(str(tmp_path / "saved"), device="cpu")
    assert again.source == "folder" and again.describe()["n_kv_heads"] == 8
    assert all(
        torch.equal(a, b)
        for a, b in zip(lm.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    )


def test_gpt2_drops_the_chat_template_and_bf16_is_honoured(borrowed: list[str]) -> None:
    lm = models.load_model("tiny:gpt2?layers=3&hidden=64&heads=16", device="cpu", dtype="bf16")
    assert lm.has_chat_template is False and lm.dtype == torch.bfloat16
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.describe()["n_heads"] == 16 and lm.describe()["tied_embeddings"] is True
    kept = borrow_tokenizer(parse_tiny("tiny:gpt2?chat=true"))
    assert kept.chat_template == CHAT
