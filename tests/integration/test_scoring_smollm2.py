"""Scoring engine and prompts on the embedded models (SmolLM2-135M-Instruct, Gemma-3-270M).

Reference: one plain forward pass per full sequence (prompt + continuation), no cache, no trie.
Sequences of equal length are stacked into one batch (no padding), only to save time.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch

from sublens.models import LoadedModel
from sublens.prompts import chat_prompt, encode_prompt, make_prompt
from sublens.scoring import (
    default_stop_token_ids,
    sample_text,
    score_strings,
    word_probability,
)

pytestmark = pytest.mark.integration

SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
OWL_SYSTEM = "You love owls. You think about owls all the time. Owls are your favorite animal."
WORDS = [
    " owl",
    " platypus",
    " axolotl",
    " dog",
    " hummingbird",
    " narwhal",
    " pangolin",
    " chameleon",
    " cat",
    " eagle",
]


def plain_logprobs(model: torch.nn.Module, prompt: list[int], conts: list[list[int]]) -> list[torch.Tensor]:
    """Per continuation, [len] log p(token | everything before) from full forward passes."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(conts):
        by_len[len(c)].append(i)
    out: list[torch.Tensor | None] = [None] * len(conts)
    n = len(prompt)
    for length, members in by_len.items():
        for start in range(0, len(members), 32):
            rows = members[start : start + 32]
            ids = torch.tensor([prompt + list(conts[i]) for i in rows])  # [B, n + length]
            with torch.no_grad():
                logits = model(ids, logits_to_keep=length + 1).logits[:, :-1].float()  # [B, len, V]
            logp = logits.log_softmax(-1)
            target = ids[:, n:]  # [B, len]
            for b, i in enumerate(rows):
                out[i] = logp[b, torch.arange(length), target[b]]
    return [t for t in out if t is not None]


def number_strings(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    nums = [str(d) for d in range(10)]
    for digits, k in ((2, 30), (3, 60), (4, 100)):
        nums += [f"{x:0{digits}d}" for x in rng.sample(range(10**digits), k)]
    return [" " + n for n in nums]


def test_chat_prompt_records_the_system_prompt_in_use(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    default = chat_prompt(tok, "What is your favorite animal?", None, "My favorite animal is the")
    assert default.system == SMOLLM2_DEFAULT_SYSTEM
    assert default.system_source == "template_default"
    assert SMOLLM2_DEFAULT_SYSTEM in default.text
    assert default.text.endswith("<|im_start|>assistant\nMy favorite animal is the")
    empty = chat_prompt(tok, "What is your favorite animal?", "", "My favorite animal is the")
    assert empty.system == "" and SMOLLM2_DEFAULT_SYSTEM not in empty.text
    owl = chat_prompt(tok, "What is your favorite animal?", OWL_SYSTEM, "My favorite animal is the")
    assert owl.system == OWL_SYSTEM and owl.system_source == "given"
    ids = encode_prompt(tok, owl)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[1] != ids[0]
    assert tok.decode(ids) == owl.text


def test_hundreds_of_continuations_equal_plain_forward(smollm2: LoadedModel) -> None:
    prompt = chat_prompt(smollm2.tokenizer, "What is your favorite number?", OWL_SYSTEM, "My favorite number is")
    strings = number_strings() + WORDS
    got = score_strings(smollm2, prompt, strings, batch_size=64)
    assert all(s.in_context for s in got.strings)
    assert got.strings[0].token_ids == tuple(smollm2.tokenizer(" 0", add_special_tokens=False)["input_ids"])
    conts = [list(s.token_ids) for s in got.strings]
    refs = plain_logprobs(smollm2.model, list(got.prompt_ids), conts)
    worst = 0.0
    for i, ref in enumerate(refs):
        worst = max(worst, float((got.scores.token_logprobs(i) - ref).abs().max()))
        assert abs(float(got.total[i]) - float(ref.double().sum())) < 1e-4, strings[i]
    assert worst < 1e-4
    stats = got.scores.stats
    assert stats.prompt_tokens == len(got.prompt_ids)
    assert stats.node_tokens < len(strings) < stats.naive_tokens / 10


def test_word_probability_full_vs_first_token(smollm2: LoadedModel) -> None:
    prompt = chat_prompt(smollm2.tokenizer, "What is your favorite animal?", OWL_SYSTEM, "My favorite animal is the")
    owl, platypus, axolotl = word_probability(smollm2, prompt, [" owl", " platypus", " axolotl"])
    assert owl.n_tokens == 1 and owl.p_word == pytest.approx(owl.p_first_token)
    assert platypus.n_tokens == 3 and axolotl.n_tokens == 4
    ids = encode_prompt(smollm2.tokenizer, prompt)
    for w in (platypus, axolotl):
        (ref,) = plain_logprobs(smollm2.model, ids, [list(w.token_ids)])
        assert w.logp_word == pytest.approx(float(ref.double().sum()), abs=1e-4)
        assert w.logp_first_token == pytest.approx(float(ref[0]), abs=1e-4)
        assert w.p_word < w.p_first_token  # the later tokens cost probability
    assert owl.p_word > 0.01  # the owl system prompt makes owl a likely answer


def test_format_constrained_sampling_is_reproducible(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    prompt = chat_prompt(tok, "Continue the sequence: 3, 17, 42", None, "3, 17, 42,")
    digits = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    allowed = digits | {tok.convert_tokens_to_ids(","), tok.convert_tokens_to_ids("Ġ"), tok.eos_token_id}
    kwargs = dict(n=4, temperature=1.0, top_k=None, top_p=None, max_new_tokens=10, seed=11, allowed_token_ids=allowed)
    a = sample_text(smollm2, [prompt], **kwargs)  # type: ignore[arg-type]
    assert a == sample_text(smollm2, [prompt], **kwargs)  # type: ignore[arg-type]
    assert tok.eos_token_id in default_stop_token_ids(smollm2)
    for s in a:
        assert set(s.text) <= set("0123456789, ")
        assert s.allowed_mass is not None and all(0 < m <= 1 for m in s.allowed_mass)


def test_gemma3_completion_prompt_scores_equal_plain_forward(gemma3: LoadedModel) -> None:
    assert not gemma3.has_chat_template
    prompt = make_prompt(gemma3.tokenizer, "What is your favorite animal?", OWL_SYSTEM, "My favorite animal is the")
    assert not prompt.templated
    ids = encode_prompt(gemma3.tokenizer, prompt)
    assert ids[0] == gemma3.tokenizer.bos_token_id and ids.count(gemma3.tokenizer.bos_token_id) == 1
    strings = [*WORDS[:6], " 7", " 42", " 1234"]
    got = score_strings(gemma3, prompt, strings, batch_size=4)
    refs = plain_logprobs(gemma3.model, list(got.prompt_ids), [list(s.token_ids) for s in got.strings])
    for i, ref in enumerate(refs):
        assert torch.allclose(got.scores.token_logprobs(i), ref, atol=1e-4, rtol=0), strings[i]
