"""hybrid: activation patching (`sublens.patching`): the patched layer ranges, the preference
prompts with their two contrast tokens (`patching_ranges`, `patching_prompts`,
`patching_inputs`), and the sweep of MLP and attention outputs in both directions with the
fraction of the logit-difference gap restored or removed (`measure_patching`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sublens.errors import ConfigError
from sublens.experiments.hybrid.config import HybridConfig
from sublens.experiments.hybrid.plan import layer_ranges
from sublens.experiments.hybrid.results import Patching, PatchTokens, Source
from sublens.hybrid import HybridSpec, Transplanter
from sublens.models import LoadedModel
from sublens.patching import gap_fractions, patching_sweep
from sublens.preference import shipped_questions
from sublens.prompts import encode_prompt, make_prompt
from sublens.scoring import tokenize_continuations


# ---- activation patching -----------------------------------------------------------------------
class PatchInputs(NamedTuple):
    ranges: list[tuple[int, int]]
    prompts: list[list[int]]
    tokens: PatchTokens


def patching_ranges(config: HybridConfig, n_layers: int) -> list[tuple[int, int]]:
    """The patched layer ranges: patching.layer_ranges, else the transplant's; plus the whole depth."""
    if config.patching.layer_ranges is None:
        ranges = layer_ranges(config, n_layers)
    else:
        ranges = [(int(a), int(b)) for a, b in config.patching.layer_ranges]
        for start, end in ranges:
            if end > n_layers:
                raise ConfigError(f"patching.layer_ranges: [{start}, {end}) goes past the model's {n_layers} layers.")
    ranges = list(dict.fromkeys(ranges))
    if (0, n_layers) not in ranges:
        ranges.append((0, n_layers))
    return ranges


def patching_prompts(lm: LoadedModel, config: HybridConfig) -> tuple[list[list[int]], PatchTokens]:
    """Token ids of the preference questions with the answer prefilled, and the two contrast
    tokens (the first tokens of ' trait' and ' foil' after the prefill, the same for every question)."""
    settings = config.preference
    questions = settings.questions or shipped_questions("preference_questions")
    prompts = [make_prompt(lm.tokenizer, q, config.system, settings.prefill) for q in questions]
    words = [f" {settings.trait.strip()}", f" {config.patching.foil}"]
    firsts = set()
    for prompt in prompts:
        _, toks = tokenize_continuations(lm.tokenizer, prompt, words)
        for word, tok in zip(words, toks, strict=True):
            if len(tok.token_ids) != 1:  # a first token alone would stand for other words too
                raise ConfigError(
                    f"{word!r} is {len(tok.token_ids)} tokens after the prefill; the patched logit difference "
                    "compares one token per word. Choose one-token words (preference.trait, patching.foil) "
                    "or set patching.enabled=false."
                )
        firsts.add((toks[0].token_ids[0], toks[1].token_ids[0]))
    if len(firsts) != 1:
        raise ConfigError(
            f"The first tokens of {words} after the prefill differ between questions ({sorted(firsts)}); "
            "use a prefill that ends a word (e.g. 'My favorite animal is the')."
        )
    target, foil = next(iter(firsts))
    if target == foil:
        raise ConfigError(f"{words[0]!r} and {words[1]!r} start with the same token; choose another patching.foil.")
    tokens = PatchTokens(
        target=(settings.trait.strip(), target, str(lm.tokenizer.decode([target]))),
        foil=(config.patching.foil, foil, str(lm.tokenizer.decode([foil]))),
    )
    return [encode_prompt(lm.tokenizer, p) for p in prompts], tokens


def patching_inputs(lm: LoadedModel, config: HybridConfig, n_layers: int) -> PatchInputs | None:
    """The patched ranges, prompts and contrast tokens; None when patching is off."""
    if not config.patching.enabled:
        return None
    prompts, tokens = patching_prompts(lm, config)
    return PatchInputs(patching_ranges(config, n_layers), prompts, tokens)


def measure_patching(
    lm: LoadedModel,
    config: HybridConfig,
    bench: Transplanter,
    ranges: list[tuple[int, int]],
    prompts: list[list[int]],
    tokens: PatchTokens,
) -> Patching:
    """Activation patching of MLP and attention outputs per layer range, both directions
    (sublens.patching), with the fraction of the logit-difference gap restored / removed."""

    def use(source: str) -> Any:
        start: Source = "biased" if source == "biased" else "base"
        return bench.hybrid(HybridSpec(start, start, (), f"the {start} model"))

    target, foil = tokens.target, tokens.foil
    sweep = patching_sweep(
        lm.model, lm.adapter, prompts, target[1], foil[1], ranges, use, directions=list(config.directions)
    )
    return Patching.model_validate(
        {
            "metric": (
                f"logit difference {target[2]!r} - {foil[2]!r} (first tokens of ' {target[0]}' and "
                f"' {foil[0]}') at the prefilled answer position"
            ),
            "tokens": tokens,
            "n_questions": len(prompts),
            "ranges": sweep["ranges"],
            "labels": sweep["labels"],
            "components": sweep["components"],
            "directions": sweep["directions"],
            "logit_difference": {"base": sweep["base"], "biased": sweep["biased"], "patched": sweep["patched"]},
            **gap_fractions(sweep),
            "sites": "the adapter's attn_out_site / mlp_out_site outputs (hook_attn_out / hook_mlp_out), "
            "every position, each question run alone",
            "forward_passes": sweep["forward_passes"],
            "seconds": sweep["seconds"],
            "seconds_per_question": sweep["seconds_per_question"],
        }
    )
