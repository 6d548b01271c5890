"""`tiny:` model specs: a randomly initialised model of a supported family with a chosen head
geometry and a real tokenizer borrowed from an embedded model, for rehearsing a configuration
(e.g. the paper's 32-query / 8-KV-head geometry) on a CPU in seconds.

Grammar: ``tiny:FAMILY`` or ``tiny:FAMILY?KEY=VALUE&KEY=VALUE...`` with FAMILY one of llama,
gemma3, gpt2, qwen2 and the keys (each at most once; defaults in brackets):

- ``layers`` [2], ``hidden`` [64], ``heads`` [4]: depth, model width, query heads per layer
  (``heads`` must divide ``hidden``);
- ``kv_heads`` [= heads]: key/value heads (grouped-query attention; must divide ``heads``;
  GPT-2 has none: only ``kv_heads=heads``);
- ``head_dim`` [hidden / heads]: another head width (Gemma-3's are wider than hidden / heads);
  not for GPT-2, whose head width is always hidden / heads;
- ``mlp`` [4 * hidden]: MLP width; ``context`` [1024]: longest sequence (positions);
- ``tied`` [the family's small models: true for all four]: embeddings tied to the LM head
  (``true``/``false``, ``1``/``0``, ``yes``/``no``);
- ``tokenizer`` [``gemma3-270m`` for gemma3, ``smollm2-135m-instruct`` otherwise]: the embedded
  model whose tokenizer is borrowed; the vocabulary is ``len(tokenizer)``;
- ``chat`` [true, except gpt2: false]: keep the tokenizer's chat template (GPT-2, a base model,
  has none; Gemma-3-270M's tokenizer has none to keep);
- ``seed`` [0]: the weights are a function of the spec alone (same spec, same weights, on
  any device: they are drawn on the CPU in float32 without touching the global RNG).

Example: ``tiny:llama?layers=2&hidden=64&heads=32&kv_heads=8&seed=0`` is a two-layer model with
Llama-3.2-1B's head geometry (32 query heads sharing 8 key/value heads, tied embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from sublens.errors import ModelSpecError

PREFIX = "tiny:"
FAMILIES = ("llama", "gemma3", "gpt2", "qwen2")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_INT_KEYS = ("layers", "hidden", "heads", "kv_heads", "head_dim", "mlp", "context", "seed")
_BOOL_KEYS = ("tied", "chat")
KEYS = (*_INT_KEYS, *_BOOL_KEYS, "tokenizer")
GRAMMAR = (
    "tiny:FAMILY[?KEY=VALUE&...] with FAMILY one of "
    + ", ".join(FAMILIES)
    + " and KEY one of "
    + ", ".join(KEYS)
    + " (e.g. tiny:llama?layers=2&hidden=64&heads=32&kv_heads=8&seed=0)"
)


def is_tiny(spec: str) -> bool:
    return spec.startswith(PREFIX)


@dataclass(frozen=True)
class TinySpec:
    """A parsed `tiny:` spec with every default filled in (see the module docstring)."""

    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    context: int
    tied: bool
    tokenizer: str
    chat: bool
    seed: int

    def canonical(self) -> str:
        """The spec with every key spelt out (two specs are the same model iff these match)."""
        keys = "&".join(f"{f.name}={_text(getattr(self, f.name))}" for f in fields(self) if f.name != "family")
        return f"{PREFIX}{self.family}?{keys}"


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fail(spec: str, problem: str) -> ModelSpecError:
    return ModelSpecError(f"Bad tiny model spec {spec!r}: {problem}. A tiny spec is {GRAMMAR}.")


def parse_tiny(spec: str) -> TinySpec:
    """The spec's family and geometry, or a ModelSpecError saying what is wrong with it."""
    from sublens.models.embedded import EMBEDDED

    if not is_tiny(spec):
        raise _fail(spec, f"it does not start with {PREFIX!r}")
    family, _, query = spec.removeprefix(PREFIX).partition("?")
    if family not in FAMILIES:
        raise _fail(spec, f"unknown family {family!r} (families: {', '.join(FAMILIES)})")
    given: dict[str, str] = {}
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise _fail(spec, f"{item!r} is not KEY=VALUE")
        if key not in KEYS:
            raise _fail(spec, f"unknown key {key!r} (keys: {', '.join(KEYS)})")
        if key in given:
            raise _fail(spec, f"key {key!r} given twice")
        given[key] = value
    ints: dict[str, int] = {}
    for key in _INT_KEYS:
        if key in given:
            text = given[key]
            if not text.isdigit() or (int(text) < 1 and key != "seed"):
                minimum = "a whole number >= 0" if key == "seed" else "a positive whole number"
                raise _fail(spec, f"{key}={text!r} is not {minimum}")
            ints[key] = int(text)
    bools: dict[str, bool] = {}
    for key in _BOOL_KEYS:
        if key in given:
            if given[key].lower() not in _BOOLEANS:
                raise _fail(spec, f"{key}={given[key]!r} is not true or false")
            bools[key] = _BOOLEANS[given[key].lower()]
    hidden, heads = ints.get("hidden", 64), ints.get("heads", 4)
    kv_heads = ints.get("kv_heads", heads)
    if family == "gpt2" and kv_heads != heads:
        raise _fail(spec, f"gpt2 has no grouped-query attention: kv_heads must equal heads ({heads})")
    if family == "gpt2" and "head_dim" in ints:
        raise _fail(spec, "gpt2's head width is always hidden / heads: drop head_dim")
    if heads % kv_heads:
        raise _fail(spec, f"kv_heads={kv_heads} does not divide heads={heads}")
    if hidden % heads:  # transformers requires it of every family, even with its own head_dim
        raise _fail(spec, f"heads={heads} does not divide hidden={hidden}")
    tokenizer = given.get("tokenizer", "gemma3-270m" if family == "gemma3" else "smollm2-135m-instruct")
    if tokenizer not in EMBEDDED:
        raise _fail(spec, f"tokenizer={tokenizer!r} is not an embedded model ({', '.join(EMBEDDED)})")
    return TinySpec(
        family=family,
        layers=ints.get("layers", 2),
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=ints.get("head_dim", hidden // heads),
        mlp=ints.get("mlp", 4 * hidden),
        context=ints.get("context", 1024),
        tied=bools.get("tied", True),
        tokenizer=tokenizer,
        chat=bools.get("chat", family != "gpt2"),
        seed=ints.get("seed", 0),
    )


def tiny_config(tiny: TinySpec, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The transformers config: the spec's geometry, vocabulary = len(tokenizer), the tokenizer's
    special token ids."""
    ids: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "tie_word_embeddings": tiny.tied,
    }
    if tiny.family == "gpt2":
        return GPT2Config(
            n_embd=tiny.hidden,
            n_layer=tiny.layers,
            n_head=tiny.heads,
            n_inner=tiny.mlp,
            n_positions=tiny.context,
            **ids,
        )
    common: dict[str, Any] = {
        "hidden_size": tiny.hidden,
        "intermediate_size": tiny.mlp,
        "num_hidden_layers": tiny.layers,
        "num_attention_heads": tiny.heads,
        "num_key_value_heads": tiny.kv_heads,
        "head_dim": tiny.head_dim,
        "max_position_embeddings": tiny.context,
        **ids,
    }
    if tiny.family == "llama":
        return LlamaConfig(**common)
    if tiny.family == "qwen2":
        return Qwen2Config(**common)
    # Gemma-3's pattern: every sixth layer attends globally, the others in a 512-token window;
    # the last layer is global too, so that a model of a few layers has both kinds.
    layer_types = [
        "full_attention" if (i + 1) % 6 == 0 or i == tiny.layers - 1 else "sliding_attention"
        for i in range(tiny.layers)
    ]
    return Gemma3TextConfig(**common, layer_types=layer_types, sliding_window=512, query_pre_attn_scalar=tiny.head_dim)


def build_tiny(tiny: TinySpec, tokenizer: PreTrainedTokenizerBase, attn_implementation: str = "sdpa") -> Any:
    """The randomly initialised model (float32, CPU, eval mode), a function of the spec alone."""
    config = tiny_config(tiny, tokenizer)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(tiny.seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


def borrow_tokenizer(tiny: TinySpec) -> PreTrainedTokenizerBase:
    """The embedded model's tokenizer from the sublens cache (converted there once if needed),
    without its chat template when the spec says chat=false."""
    from transformers import AutoTokenizer

    from sublens.models import ensure_embedded

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_embedded(tiny.tokenizer)))
    if not tiny.chat:
        tokenizer.chat_template = None
    return tokenizer
