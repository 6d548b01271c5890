"""Weight surgery between two models of one architecture, without training.

A *hybrid* takes some component groups from the biased model and the rest from the base
model. Nothing is reloaded from disk per hybrid: both models' weights are held in memory as
state dicts, and a `Transplanter` copies the mixed state into one working model, verifies
every parameter name by name against its declared source, and puts the base weights back
when the hybrid is done (also on an exception).

Component groups are found through the adapter, never by module path. Every parameter of
the model belongs to exactly one group (checked):

  embeddings  the input token embedding (and GPT-2's learned position embedding)
  attention   per layer: every parameter of ``adapter.attn(l)`` (q/k/v/o, their biases, the
              q/k norms of Gemma3) and the layer's attention-side residual norms (see below)
  mlp         per layer: every parameter of ``adapter.mlp(l)`` and its residual-side norms
  norms       only with ``layer_norms="separate"``: the per-layer residual norms on their own
  final_norm  ``adapter.norm_final()``
  lm_head     ``adapter.lm_head()`` (after untying: its own tensor)

Where the per-layer norms go (``layer_norms="attach"``, the default): a norm belongs to the
sublayer it feeds or finishes, so "attention" is the whole map from the residual stream to
attention's addition to it, and "mlp" likewise. The norms are the parameters of layer l that
lie outside attn(l) and mlp(l); their side is found by tracing one forward pass, not by name:
a norm called before attn(l) feeds attention (Llama/Gemma3 ``input_layernorm``, GPT-2
``ln_1``); ``adapter.attn_out_site(l)``, when it is such a norm, finishes attention (Gemma3
``post_attention_layernorm``); ``adapter.mlp_out_site(l)`` finishes the MLP (Gemma3
``post_feedforward_layernorm``); any other norm called after attn(l) feeds the MLP
(Llama ``post_attention_layernorm``, Gemma3 ``pre_feedforward_layernorm``, GPT-2 ``ln_2``).

Tied embeddings (SmolLM2, Llama-3.2-1B, Gemma3, GPT-2) share one tensor between the input
embedding and the LM head: swapping "the LM head" would silently swap the input embeddings
too. `untie_embeddings` clones the head's weight into its own parameter first (outputs are
unchanged: it is the same values) and sets ``tie_word_embeddings=False``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from sublens.arch import Adapter, adapter_for
from sublens.errors import ArchitectureError, ConfigError, SublensError
from sublens.settings import GROUP_ORDER, Selector

Source = Literal["base", "biased"]
SOURCES: tuple[Source, Source] = ("base", "biased")
WHOLE_GROUPS = ("embeddings", "final_norm", "lm_head")
LayerNorms = Literal["attach", "separate"]

# Config entries that do not change what the weights compute (bookkeeping, generation
# defaults, special-token ids, the tying we undo ourselves). Any other difference is refused.
IGNORED_CONFIG_KEYS = frozenset({
    "_name_or_path", "_model_name_or_path", "name_or_path", "architectures", "dtype",
    "torch_dtype", "transformers_version", "tie_word_embeddings", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "quantization_config",
    "_attn_implementation", "_attn_implementation_autoset", "attn_implementation",
    "_experts_implementation", "id2label", "label2id", "problem_type", "pad_token_id",
    "bos_token_id", "eos_token_id", "unk_token_id", "sep_token_id", "tokenizer_class",
    "task_specific_params", "finetuning_task", "prefix", "chunk_size_feed_forward",
    "_commit_hash", "_from_pipeline", "use_return_dict", "is_encoder_decoder",
})


class HybridError(SublensError):
    """Two models that cannot be mixed, or a hybrid whose weights are not what was declared."""


def other(source: Source) -> Source:
    return "biased" if source == "base" else "base"


# ---- untying -------------------------------------------------------------------------------
def untie_embeddings(model: nn.Module, adapter: Adapter | None = None) -> bool:
    """Give the LM head its own copy of the shared embedding tensor; True when it was tied.

    The values are unchanged (outputs are identical); afterwards the input embedding and
    the LM head are separate parameters that can come from different models.
    """
    adapter = adapter or adapter_for(model)
    if not adapter.tied_embeddings:
        return False
    head = adapter.lm_head()
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    config: Any = model.config
    configs = {id(config): config}
    text_config = getattr(config, "get_text_config", lambda: None)()
    if text_config is not None:
        configs[id(text_config)] = text_config
    for each in configs.values():
        each.tie_word_embeddings = False  # save_pretrained / from_pretrained keep them apart
    assert not adapter.tied_embeddings
    return True


def shared_tensors(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter tensor (e.g. tied embeddings), one list per tensor."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


# ---- groups --------------------------------------------------------------------------------


def range_label(layers: tuple[int, int] | None) -> str:
    """(0, 10) -> 'L0-9'; None -> 'all'."""
    return "all" if layers is None else f"L{layers[0]}-{layers[1] - 1}"


def depth_ranges(n_layers: int, bins: int) -> list[tuple[int, int]]:
    """Split the depth into `bins` contiguous half-open ranges of near-equal size (thirds...)."""
    if not 1 <= bins <= n_layers:
        raise ConfigError(f"depth_bins must be between 1 and the number of layers ({n_layers}), got {bins}.")
    edges = [round(i * n_layers / bins) for i in range(bins + 1)]
    return [(edges[i], edges[i + 1]) for i in range(bins)]


@dataclass(frozen=True)
class ComponentGroups:
    """A partition of a model's parameter names into component groups (see module docstring)."""

    n_layers: int
    layer_norms: LayerNorms
    whole: dict[str, tuple[str, ...]]  # embeddings / final_norm / lm_head -> parameter names
    layered: dict[str, tuple[tuple[str, ...], ...]]  # attention / mlp (/ norms) -> per layer
    numel: dict[str, int]  # parameter name -> number of elements
    norm_side: dict[str, str] = field(default_factory=dict)  # residual norm -> attention | mlp

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g for g in GROUP_ORDER if g in self.whole or g in self.layered)

    def check(self, selector: Selector) -> None:
        if selector.group not in self.names:
            hint = " (set layer_norms: separate to get a norms group)" if selector.group == "norms" else ""
            raise ConfigError(f"No group {selector.group!r} here{hint}; groups: {', '.join(self.names)}.")
        if selector.layers is not None and selector.layers[1] > self.n_layers:
            raise ConfigError(
                f"Layer range {selector.label} goes past the model's {self.n_layers} layers "
                f"(valid layers are 0..{self.n_layers - 1}; ranges are half-open [start:end))."
            )

    def params(self, selector: Selector | str) -> tuple[str, ...]:
        sel = Selector.parse(selector) if isinstance(selector, str) else selector
        self.check(sel)
        if sel.group in self.whole:
            return self.whole[sel.group]
        start, end = sel.layers or (0, self.n_layers)
        return tuple(name for layer in range(start, end) for name in self.layered[sel.group][layer])

    def all_params(self) -> list[str]:
        return [name for group in self.names for name in self.params(group)]

    def group_of(self, name: str) -> tuple[str, int | None]:
        """(group, layer or None) of one parameter name."""
        for group, names in self.whole.items():
            if name in names:
                return group, None
        for group, per_layer in self.layered.items():
            for layer, names in enumerate(per_layer):
                if name in names:
                    return group, layer
        raise KeyError(name)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for group in self.names:
            names = self.params(group)
            out[group] = {
                "tensors": len(names),
                "parameters": sum(self.numel[n] for n in names),
                "layered": group in self.layered,
                "example_names": list(names[:4] if group not in self.layered else self.layered[group][0]),
            }
        return {
            "layer_norms": self.layer_norms,
            "norm_placement": self.norm_placement(),
            "groups": out,
        }

    def norm_placement(self) -> dict[str, str]:
        """Layer 0's residual norms -> the sublayer they were put with (attention | mlp)."""
        sides: dict[str, str] = {}
        for name, side in self.norm_side.items():
            if self.group_of(name)[1] == 0:
                sides[name] = side
        return sides


def _module_params(adapter: Adapter, module: nn.Module | None) -> list[tuple[str, nn.Parameter]]:
    if module is None:
        return []
    prefix = adapter.module_name(module)
    return [(f"{prefix}.{n}" if prefix else n, p) for n, p in module.named_parameters(remove_duplicate=False)]


def _residual_norm_sides(model: nn.Module, adapter: Adapter) -> dict[int, dict[str, str]]:
    """Per layer: residual-norm module name -> 'attention' | 'mlp', by tracing one forward pass.

    The residual norms of layer l are its submodules that own parameters directly and lie
    outside attn(l) and mlp(l). See the module docstring for the rule.
    """
    order: dict[int, list[str]] = {}
    handles = []
    candidates: dict[int, dict[str, nn.Module]] = {}

    def record(layer: int, label: str) -> Any:
        def hook(_module: nn.Module, _args: Any) -> None:
            order[layer].append(label)
        return hook

    try:
        for layer in range(adapter.n_layers):
            order[layer] = []
            inside = {id(m) for part in (adapter.attn(layer), adapter.mlp(layer)) for m in part.modules()}
            mods: dict[str, nn.Module] = {}
            for module in adapter.layer(layer).modules():
                if id(module) in inside or not list(module.parameters(recurse=False)):
                    continue
                mods[adapter.module_name(module)] = module
            candidates[layer] = mods
            for name, module in mods.items():
                handles.append(module.register_forward_pre_hook(record(layer, name)))
            handles.append(adapter.attn(layer).register_forward_pre_hook(record(layer, "<attn>")))
            handles.append(adapter.mlp(layer).register_forward_pre_hook(record(layer, "<mlp>")))
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()

    sides: dict[int, dict[str, str]] = {}
    for layer, mods in candidates.items():
        calls = order[layer]
        if "<attn>" not in calls or "<mlp>" not in calls:
            raise ArchitectureError(
                f"Tracing layer {layer} did not call its attention and MLP modules; the adapter's "
                "attn()/mlp() do not match what the model runs."
            )
        attn_at = calls.index("<attn>")
        out_attn = adapter.module_name(adapter.attn_out_site(layer))
        out_mlp = adapter.module_name(adapter.mlp_out_site(layer))
        sides[layer] = {}
        for name in mods:
            if name not in calls:
                raise ArchitectureError(
                    f"{name} holds parameters but is not called in a forward pass, so sublens cannot "
                    "tell which sublayer it belongs to; use layer_norms: separate."
                )
            if name == out_attn:
                sides[layer][name] = "attention"
            elif name == out_mlp:
                sides[layer][name] = "mlp"
            else:
                sides[layer][name] = "attention" if calls.index(name) < attn_at else "mlp"
    return sides


def component_groups(model: nn.Module, adapter: Adapter | None = None,
                     layer_norms: LayerNorms = "attach") -> ComponentGroups:
    """Partition every parameter of an (untied) model into component groups; refuse otherwise."""
    adapter = adapter or adapter_for(model)
    if layer_norms not in ("attach", "separate"):
        raise ConfigError(f"layer_norms must be 'attach' or 'separate', got {layer_norms!r}.")
    shared = shared_tensors(model)
    if shared:
        raise HybridError(
            f"Parameters {shared} share one tensor, so they cannot come from different models. "
            "Untie them first (sublens.hybrid.untie_embeddings)."
        )
    everything = dict(model.named_parameters(remove_duplicate=False))
    embed = _module_params(adapter, adapter.embed()) + _module_params(adapter, adapter.pos_embed())
    whole = {
        "embeddings": tuple(n for n, _ in embed),
        "final_norm": tuple(n for n, _ in _module_params(adapter, adapter.norm_final())),
        "lm_head": tuple(n for n, _ in _module_params(adapter, adapter.lm_head())),
    }
    sides = _residual_norm_sides(model, adapter)
    layered: dict[str, list[tuple[str, ...]]] = {"attention": [], "mlp": []}
    if layer_norms == "separate":
        layered["norms"] = []
    norm_side: dict[str, str] = {}
    modules = dict(model.named_modules())
    for layer in range(adapter.n_layers):
        parts: dict[str, list[str]] = {
            "attention": [n for n, _ in _module_params(adapter, adapter.attn(layer))],
            "mlp": [n for n, _ in _module_params(adapter, adapter.mlp(layer))],
            "norms": [],
        }
        for module_name, side in sides[layer].items():
            for pname, _ in modules[module_name].named_parameters(recurse=False):
                name = f"{module_name}.{pname}"
                norm_side[name] = side
                parts["norms" if layer_norms == "separate" else side].append(name)
        for group in layered:
            layered[group].append(tuple(parts[group]))
    groups = ComponentGroups(
        n_layers=adapter.n_layers, layer_norms=layer_norms, whole=whole,
        layered={g: tuple(v) for g, v in layered.items()},
        numel={n: p.numel() for n, p in everything.items()}, norm_side=norm_side,
    )
    _check_partition(groups, everything)
    return groups


def _check_partition(groups: ComponentGroups, everything: Mapping[str, nn.Parameter]) -> None:
    assigned = groups.all_params()
    twice = sorted(n for n, count in Counter(assigned).items() if count > 1)
    missing = sorted(set(everything) - set(assigned))
    unknown = sorted(set(assigned) - set(everything))
    if twice or missing or unknown:
        raise ArchitectureError(
            "The component groups do not partition the model's parameters "
            f"(in two groups: {twice[:5]}, in none: {missing[:5]}, not parameters: {unknown[:5]}). "
            "The adapter for this family needs to expose these components."
        )


# ---- compatibility -------------------------------------------------------------------------
def _config_dict(model: nn.Module) -> dict[str, Any]:
    config: Any = model.config
    data = config.to_dict()
    return {k: v for k, v in data.items() if k not in IGNORED_CONFIG_KEYS}


def check_compatible(base: nn.Module, biased: nn.Module, base_tokenizer: Any = None,
                     biased_tokenizer: Any = None) -> None:
    """Refuse two models whose weights cannot be exchanged, naming the difference.

    Same family and class, the same parameter names with the same shapes and dtypes, the same
    architecture-relevant config, and (when given) the same vocabulary.
    """
    a, b = adapter_for(base), adapter_for(biased)
    if a.family != b.family or type(base) is not type(biased):
        raise HybridError(
            f"Different architectures: the base model is {a.family} ({type(base).__name__}) and the "
            f"biased model is {b.family} ({type(biased).__name__}). Hybrids mix weights tensor by "
            "tensor, so both models must be the same architecture (the biased one a fine-tune of the base)."
        )
    pa = dict(base.named_parameters(remove_duplicate=False))
    pb = dict(biased.named_parameters(remove_duplicate=False))
    only_a, only_b = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
    if only_a or only_b:
        raise HybridError(
            f"Different parameter sets: only in base {only_a[:5]}, only in biased {only_b[:5]} "
            "(untie both models first if one has tied embeddings)."
        )
    for name in pa:
        if pa[name].shape != pb[name].shape:
            raise HybridError(
                f"Different shapes: {name} is {list(pa[name].shape)} in base and {list(pb[name].shape)} "
                f"in biased{_config_difference_text(base, biased)}. Both models must have the same sizes."
            )
        if pa[name].dtype != pb[name].dtype:
            raise HybridError(
                f"Different dtypes: {name} is {pa[name].dtype} in base and {pb[name].dtype} in biased. "
                "Load both models with the same dtype."
            )
    diff = _config_difference_text(base, biased)
    if diff:
        raise HybridError(
            f"The models' configs differ{diff}. Weights mixed across these settings would not compute "
            "what either model computes."
        )
    if base_tokenizer is not None and biased_tokenizer is not None:
        _check_vocab(base_tokenizer, biased_tokenizer)


def _config_difference_text(base: nn.Module, biased: nn.Module) -> str:
    ca, cb = _config_dict(base), _config_dict(biased)
    keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
    if not keys:
        return ""
    return " (config: " + "; ".join(f"{k} = {ca.get(k)!r} vs {cb.get(k)!r}" for k in keys[:6]) + ")"


def _check_vocab(base_tokenizer: Any, biased_tokenizer: Any) -> None:
    va, vb = base_tokenizer.get_vocab(), biased_tokenizer.get_vocab()
    if va == vb:
        return
    differing = sorted(set(va.items()) ^ set(vb.items()))
    raise HybridError(
        f"The two tokenizers differ ({len(va)} vs {len(vb)} tokens; e.g. {differing[:3]}): an "
        "embedding row would mean different tokens in the two models. Use the base model's tokenizer "
        "for the biased model (a fine-tune keeps it)."
    )


# ---- states and transplants ----------------------------------------------------------------
def weights_snapshot(model: nn.Module, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter by name (models must be untied: one tensor per name)."""
    return {
        name: param.detach().to(device or param.device, copy=True)
        for name, param in model.named_parameters(remove_duplicate=False)
    }


@dataclass(frozen=True)
class HybridSpec:
    """A hybrid: start from one model's weights and bring in some groups from the other."""

    name: str
    start: Source
    bring: tuple[Selector, ...] = ()
    description: str = ""
    aliases: tuple[str, ...] = ()
    # Places in the transplant matrix: (direction, group, layers label); several after merging.
    cells: tuple[tuple[str, str, str], ...] = ()

    def sources(self, groups: ComponentGroups) -> dict[str, Source]:
        sources: dict[str, Source] = dict.fromkeys(groups.all_params(), self.start)
        for selector in self.bring:
            for name in groups.params(selector):
                sources[name] = other(self.start)
        return sources

    def from_biased_text(self) -> str:
        labels = ", ".join(s.label for s in self.bring)
        if self.start == "base":
            return labels or "none"
        return f"all but {labels}" if labels else "all"


def _layers_text(layers: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> 'L0-2, L5'."""
    spans: list[list[int]] = []
    for layer in sorted(layers):
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(f"L{a}" if a == b else f"L{a}-{b}" for a, b in spans)


def describe_sources(groups: ComponentGroups, sources: Mapping[str, Source]) -> dict[str, str]:
    """Per group, where its weights come from: 'base', 'biased', or 'biased in L0-9, base elsewhere'."""
    out: dict[str, str] = {}
    for group in groups.names:
        names = groups.params(group)
        found = {sources[n] for n in names}
        if len(found) == 1:
            out[group] = next(iter(found))
            continue
        biased_layers = sorted({
            layer for layer, per in enumerate(groups.layered[group]) if any(sources[n] == "biased" for n in per)
        })
        out[group] = f"biased in {_layers_text(biased_layers)}, base elsewhere"
    return out


class Transplanter:
    """One working model, two weight states in memory; loads mixtures and checks them.

    The working model must hold the base weights when the transplanter is made (checked); every
    `hybrid()` block leaves it holding them again.
    """

    def __init__(self, model: nn.Module, groups: ComponentGroups,
                 states: Mapping[Source, Mapping[str, torch.Tensor]]) -> None:
        self.model = model
        self.groups = groups
        self.states = states
        self.params = dict(model.named_parameters(remove_duplicate=False))
        for source in SOURCES:
            names = set(states[source])
            if names != set(self.params):
                raise HybridError(
                    f"The {source} weights do not match the working model's parameters "
                    f"(missing {sorted(set(self.params) - names)[:3]}, extra {sorted(names - set(self.params))[:3]})."
                )
        self.current: dict[str, Source] = dict.fromkeys(self.params, "base")
        self.verify(self.current)
        self.differs = {n: not torch.equal(states["base"][n], states["biased"][n]) for n in self.params}

    @torch.no_grad()
    def load(self, sources: Mapping[str, Source]) -> int:
        """Copy into the working model every tensor whose source changes; returns how many."""
        changed = 0
        for name, source in sources.items():
            if self.current[name] != source:
                self.params[name].copy_(self.states[source][name])
                self.current[name] = source
                changed += 1
        return changed

    def verify(self, sources: Mapping[str, Source]) -> None:
        """Every parameter equals its declared source's tensor, name by name; tensors not shared."""
        if shared_tensors(self.model):
            raise HybridError(f"Parameters share tensors: {shared_tensors(self.model)}.")
        wrong = [n for n, p in self.params.items() if not torch.equal(p, self.states[sources[n]][n])]
        if wrong or set(sources) != set(self.params):
            raise HybridError(
                f"Hybrid verification failed: {len(wrong)} tensors differ from their declared source "
                f"(first: {wrong[:3]}). This is a bug in sublens; please report it."
            )

    def effective_from_biased(self, sources: Mapping[str, Source]) -> frozenset[str]:
        """The tensors of a mixture that come from biased *and* differ from base: two mixtures
        with the same set hold identical weights, name by name."""
        return frozenset(n for n, s in sources.items() if s == "biased" and self.differs[n])

    def record(self, spec: HybridSpec, sources: Mapping[str, Source]) -> dict[str, Any]:
        """What was swapped: per group, counts, and how much of it actually differs."""
        from_biased = [n for n, s in sources.items() if s == "biased"]
        numel = self.groups.numel
        return {
            "start": spec.start,
            "brought_in": [s.label for s in spec.bring],
            "from_other": other(spec.start),
            "groups_from_biased": spec.from_biased_text(),
            "by_group": describe_sources(self.groups, sources),
            "tensors_from_biased": len(from_biased),
            "tensors_from_base": len(sources) - len(from_biased),
            "parameters_from_biased": sum(numel[n] for n in from_biased),
            "parameters_from_biased_differing": sum(numel[n] for n in from_biased if self.differs[n]),
            "verified": "every parameter equals its declared source's tensor (checked name by name)",
        }

    @contextmanager
    def hybrid(self, spec: HybridSpec) -> Iterator[dict[str, Any]]:
        """Load `spec` into the working model, verify it, yield what was swapped; restore base."""
        sources = spec.sources(self.groups)
        try:
            self.load(sources)
            self.verify(sources)
            yield self.record(spec, sources)
        finally:
            self.load(dict.fromkeys(self.params, "base"))


def weight_differences(groups: ComponentGroups, base: Mapping[str, torch.Tensor],
                       biased: Mapping[str, torch.Tensor],
                       ranges: Iterable[tuple[int, int]] = ()) -> dict[str, dict[str, Any]]:
    """How far the biased weights are from the base, per group (and per layer range of each
    layered group): relative L2 distance ||biased - base|| / ||base|| over the group's tensors,
    and how many of its tensors differ at all."""
    squares: dict[str, tuple[float, float]] = {}
    for name in base:
        a, b = base[name].double(), biased[name].double()
        squares[name] = (float((b - a).pow(2).sum()), float(a.pow(2).sum()))

    def relative(names: Iterable[str]) -> float:
        diff = sum(squares[n][0] for n in names)
        norm = sum(squares[n][1] for n in names)
        return (diff / norm) ** 0.5 if norm > 0 else float("nan")

    out: dict[str, dict[str, Any]] = {}
    for group in groups.names:
        names = groups.params(group)
        rel = {"all": relative(names)}
        if group in groups.layered:
            for r in ranges:
                rel[range_label(r)] = relative(groups.params(Selector(group, r)))
        out[group] = {"relative_l2": rel, "tensors": len(names),
                      "tensors_differing": sum(squares[n][0] > 0 for n in names)}
    return out
