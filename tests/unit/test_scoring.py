"""Scoring engine and prompts on tiny random models (all families) and a tiny BPE tokenizer.

The reference for every log-probability is one plain forward pass over prompt + continuation
(log_softmax, gather), with no cache, no trie and no batching.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from sublens.errors import SublensError
from sublens.prompts import (
    PromptError,
    chat_prompt,
    completion_prompt,
    encode_prompt,
    make_prompt,
    template_default_system,
)
from sublens.scoring import (
    ContinuationScores,
    ScoringError,
    _forward,
    _inverse_cdf,
    _left_padded,
    padded_length,
    sample,
    sample_text,
    score_continuations,
    score_many,
    score_strings,
    shared_prefix,
    tokenize_continuations,
    word_probability,
    word_probability_many,
)
from tiny import VOCAB, tiny_model

TOL = 1e-4


def reference_logprobs(model: torch.nn.Module, prompt: list[int], cont: list[int]) -> torch.Tensor:
    """[len(cont)] log p(cont_t | prompt, cont_<t) from one full forward pass."""
    ids = torch.tensor([prompt + list(cont)])
    with torch.no_grad():
        logp = model(ids).logits[0].float().log_softmax(-1)  # [L + T, V]
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(cont) - 1)
    return logp[pos, torch.tensor(cont)]


def random_ids(n: int, seed: int, high: int = VOCAB) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (n,), generator=g).tolist()


def mixed_continuations(seed: int = 0) -> list[list[int]]:
    """Mixed lengths (1-5), shared prefixes (small alphabet), a duplicate, prefix-of-another."""
    g = torch.Generator().manual_seed(seed)
    conts = [torch.randint(0, 4, (int(torch.randint(1, 6, (), generator=g)),), generator=g).tolist() for _ in range(30)]
    return [*conts, [5], [5, 6], [5, 6, 7], [5, 6, 7], [VOCAB - 1]]


def reference_table(model: torch.nn.Module, prompt: list[int], conts: list[list[int]]) -> list[torch.Tensor]:
    return [reference_logprobs(model, prompt, c) for c in conts]


def assert_matches_reference(
    model: torch.nn.Module,
    prompt: list[int],
    conts: list[list[int]],
    scores: ContinuationScores,
    refs: list[torch.Tensor] | None = None,
) -> None:
    refs = reference_table(model, prompt, conts) if refs is None else refs
    assert scores.logprobs.shape == (len(conts), max(len(c) for c in conts))
    for i, (cont, ref) in enumerate(zip(conts, refs, strict=True)):
        got = scores.token_logprobs(i)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=TOL, rtol=0), (i, cont, got, ref)
        assert abs(float(scores.total[i]) - float(ref.double().sum())) < TOL
        assert torch.isnan(scores.logprobs[i, len(cont) :]).all()  # padding of the result is NaN


# ---------------------------------------------------------------------------------------------
# token-level scoring


def test_trie_matches_full_forward(model: torch.nn.Module) -> None:
    prompt = random_ids(9, seed=1)
    conts = mixed_continuations()
    refs = reference_table(model, prompt, conts)
    for batch_size in (1, 3, 64):  # 1 and 3 leave ragged last batches at every level
        scores = score_continuations(model, prompt, conts, batch_size=batch_size)
        assert_matches_reference(model, prompt, conts, scores, refs)


def test_same_numbers_as_scoring_each_alone(model: torch.nn.Module) -> None:
    prompt = random_ids(7, seed=2)
    conts = mixed_continuations(seed=3)[-12:]
    together = score_continuations(model, prompt, conts, batch_size=4)
    for i, cont in enumerate(conts):
        alone = score_continuations(model, torch.tensor(prompt), [cont])
        assert torch.allclose(alone.token_logprobs(0), together.token_logprobs(i), atol=1e-5, rtol=0)


def test_many_prompts_of_different_lengths(model: torch.nn.Module) -> None:
    """Prompts of three lengths (two share one), batched: equal to the plain forward pass."""
    prompts = [random_ids(9, 4), random_ids(5, 5), random_ids(9, 6), random_ids(12, 7)]
    conts = [mixed_continuations(s)[: 6 + 2 * s] for s in range(4)]
    refs = [reference_table(model, p, c) for p, c in zip(prompts, conts, strict=True)]
    for batch_size in (2, 64):
        results = score_many(model, list(zip(prompts, conts, strict=True)), batch_size=batch_size)
        assert len(results) == 4
        for prompt, cs, ref, scores in zip(prompts, conts, refs, results, strict=True):
            assert_matches_reference(model, prompt, cs, scores, ref)


def test_prompt_longer_than_sliding_window() -> None:
    """Gemma3's tiny config has a window of 4: a 20-token context crosses it several times."""
    model = tiny_model("gemma3")
    prompt = random_ids(16, seed=8)
    conts = mixed_continuations(seed=9)
    assert_matches_reference(model, prompt, conts, score_continuations(model, prompt, conts, 5))


def test_sdpa_attention_matches_too() -> None:
    model = tiny_model("llama", attn_implementation="sdpa")
    prompt, conts = random_ids(8, 10), mixed_continuations(seed=11)
    assert_matches_reference(model, prompt, conts, score_continuations(model, prompt, conts, 3))


def test_work_is_one_token_per_inner_prefix() -> None:
    model = tiny_model("llama")
    conts = [[1], [1, 2], [1, 2, 3], [1, 2, 4], [1, 5], [6]]
    scores = score_continuations(model, random_ids(5, 12), conts)
    # Prefixes with something after them: [1], [1, 2] (the prompt itself is run separately).
    assert scores.stats.node_tokens == 2
    assert scores.stats.prompt_tokens == 5
    assert scores.stats.naive_tokens == sum(5 + len(c) for c in conts)


def test_train_mode_is_restored_and_ignored() -> None:
    model = tiny_model("gpt2")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    model.train()
    prompt, conts = random_ids(6, 13), [[1, 2], [3]]
    first = score_continuations(model, prompt, conts)
    second = score_continuations(model, prompt, conts)
    assert model.training
    assert torch.equal(first.total, second.total)  # dropout was off while scoring


@pytest.mark.parametrize(
    ("prompt", "conts", "match"),
    [
        ([1, 2], [], "empty"),
        ([1, 2], [[1], []], "no tokens"),
        ([], [[1]], "prompt has no tokens"),
        ([1, 2], [[VOCAB]], "outside the vocabulary"),
        ([1, 2], [[-1]], "outside the vocabulary"),
        (list(range(90)) + list(range(38)), [[1]], "context of 128"),
        (list(range(90)), [[1] * 39], "context of 128"),
    ],
)
def test_scoring_errors_say_what_to_fix(prompt: list[int], conts: list[list[int]], match: str) -> None:
    model = tiny_model("llama")
    with pytest.raises(ScoringError, match=match) as info:
        score_continuations(model, prompt, conts)
    assert isinstance(info.value, SublensError)


def test_score_many_errors() -> None:
    model = tiny_model("qwen2")
    with pytest.raises(ScoringError, match="No prompts"):
        score_many(model, [])
    with pytest.raises(ScoringError, match="batch_size"):
        score_continuations(model, [1], [[1]], batch_size=0)
    with pytest.raises(ScoringError, match="1-D"):
        score_continuations(model, torch.ones(2, 2, dtype=torch.long), [[1]])


# ---------------------------------------------------------------------------------------------
# sampling


def sample_kwargs(**overrides):  # type: ignore[no-untyped-def]
    kwargs = dict(n=3, temperature=1.0, top_k=None, top_p=None, max_new_tokens=6, seed=7, stop_token_ids=[3])
    kwargs.update(overrides)
    return kwargs


def test_sampling_is_deterministic_for_a_seed(model: torch.nn.Module) -> None:
    prompts = [random_ids(6, 20), random_ids(4, 21), random_ids(6, 22)]
    a = sample(model, prompts, **sample_kwargs())
    b = sample(model, prompts, **sample_kwargs())
    assert a == b
    assert [(s.prompt_index, s.sample_index) for s in a] == [(i, j) for i in range(3) for j in range(3)]
    # Batching does not change a sample: each (prompt, sample) has its own generator.
    assert sample(model, prompts, **sample_kwargs(), batch_size=1) == a
    assert sample(model, prompts[:1], **sample_kwargs()) == a[:3]
    other = sample(model, prompts, **sample_kwargs(seed=8))
    assert [s.token_ids for s in other] != [s.token_ids for s in a]


def test_left_padded_prompts_give_the_unpadded_distribution(model: torch.nn.Module) -> None:
    # Prompts of lengths 3..20 share a batch under left padding; each row's next-token
    # distribution, and the one after a decoded token, match a plain unpadded forward pass.
    prompts = [random_ids(n, 40 + n) for n in (3, 9, 20)]
    got = sample(model, prompts, **sample_kwargs(n=1, temperature=0.0, max_new_tokens=2, stop_token_ids=[]))
    for prompt, s in zip(prompts, got, strict=True):
        assert list(s.token_ids) == greedy_reference(model, prompt, 2)
    tokens, attention, positions = _left_padded(prompts, 32, torch.device("cpu"))
    with torch.no_grad():
        logp, _ = _forward(model.eval(), tokens, attention, positions)
        for row, prompt in enumerate(prompts):
            plain = model(torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)
            assert torch.allclose(logp[row], plain, atol=1e-5)


def test_a_shared_prefix_is_computed_once_and_changes_no_result(model: torch.nn.Module) -> None:
    # Three prompts share a 7-token head, one does not; with the head's KV computed once the
    # greedy continuations equal plain recomputation, and sampled rows do not depend on the
    # other prompts in the call.
    head = random_ids(7, 50)
    prompts = [head + random_ids(n, 51 + n) for n in (1, 4, 12)] + [random_ids(6, 60)]
    assert shared_prefix(prompts[:3]) == head and shared_prefix([head, head]) == head[:-1]
    greedy = sample(
        model, prompts, **sample_kwargs(n=1, temperature=0.0, max_new_tokens=3, stop_token_ids=[]), prefix=head
    )
    for prompt, s in zip(prompts, greedy, strict=True):
        assert list(s.token_ids) == greedy_reference(model, prompt, 3)
    together = sample(model, prompts, **sample_kwargs(), prefix=head)
    assert sample(model, prompts[:2], **sample_kwargs(), prefix=head) == together[:6]
    assert sample(model, prompts, **sample_kwargs(), prefix=head, batch_size=1) == together


def test_padding_depends_on_the_prompt_alone() -> None:
    assert [padded_length(n, 32) for n in (0, 1, 31, 32, 33, 63, 64)] == [32, 32, 32, 64, 64, 64, 96]
    assert [padded_length(n, 1) for n in (1, 7)] == [2, 8]  # always at least one pad
    with pytest.raises(ScoringError, match="pad_multiple"):
        sample(tiny_model("llama"), [random_ids(5, 28)], **sample_kwargs(), pad_multiple=0)


def test_sampled_frequencies_follow_the_renormalised_distribution() -> None:
    # 4,000 first tokens under a 5-token mask: a chi-square goodness-of-fit test against the
    # model's probabilities renormalised over the mask (fixed seed; p > 0.001 fails 1 in 1,000
    # times under a correct sampler, and this seed is fixed).
    from scipy.stats import chisquare

    model = tiny_model("qwen2")
    prompt = random_ids(6, 29)
    allowed = [4, 9, 17, 33, 60]
    with torch.no_grad():
        probs = model(torch.tensor([prompt])).logits[0, -1].softmax(-1)[allowed]
    expected = probs.double() / probs.double().sum()
    got = sample(
        model,
        [prompt],
        **sample_kwargs(n=4000, max_new_tokens=1, stop_token_ids=[], allowed_token_ids=set(allowed)),
        batch_size=500,
    )
    counts = torch.tensor([sum(s.token_ids[0] == t for s in got) for t in allowed], dtype=torch.float64)
    assert chisquare(counts.numpy(), (expected * 4000).numpy()).pvalue > 1e-3
    for s in got:  # the recorded mass on the allowed set is the model's, at temperature 1
        assert s.allowed_mass is not None
        assert s.allowed_mass[0] == pytest.approx(float(probs.sum()), rel=1e-4)


def test_inverse_cdf_never_draws_a_token_without_mass() -> None:
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0, 0.0], [0.2, 0.0, 0.8, 0.0, 0.0, 0.0]])
    for u, want in ((0.0, [1, 0]), (0.19, [1, 0]), (0.49, [1, 2]), (0.5, [3, 2]), (1 - 1e-16, [3, 2])):
        got = _inverse_cdf(probs, torch.full((2,), u, dtype=torch.float64))
        assert got.tolist() == want


def test_a_masked_draw_equals_the_full_vocabulary_computation_in_float64() -> None:
    # _choose works on the columns some row may take; the reference renormalises the
    # temperature-scaled distribution over each row's own mask across the whole vocabulary,
    # in float64, and takes the first token whose cumulative mass passes u.
    from sublens.scoring.draws import _choose

    gen = torch.Generator().manual_seed(5)
    rows, vocab, temperature = 32, 500, 0.7
    logp = torch.log_softmax(3 * torch.randn(rows, vocab, generator=gen), dim=-1)
    mask = torch.rand(rows, vocab, generator=gen) < 0.05
    mask[:, 7] = True  # every row allows at least one token
    uniforms = torch.rand(rows, generator=gen, dtype=torch.float64)
    chosen, mass = _choose(logp, temperature, None, None, mask, uniforms)
    scaled = (logp.double() / temperature).softmax(dim=-1)
    allowed = scaled * mask
    assert mass is not None
    assert torch.allclose(mass.double(), allowed.sum(dim=-1), rtol=1e-5)
    cdf = (allowed / allowed.sum(dim=-1, keepdim=True)).cumsum(dim=-1)
    want = (cdf > uniforms.unsqueeze(-1)).int().argmax(dim=-1)
    assert chosen.tolist() == want.tolist()
    assert all(mask[r, t] for r, t in enumerate(chosen.tolist()))
    greedy, _ = _choose(logp, 0.0, None, None, mask, uniforms)
    assert greedy.tolist() == logp.masked_fill(~mask, float("-inf")).argmax(dim=-1).tolist()


def greedy_reference(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_sampling_with_kv_cache_equals_recomputation(model: torch.nn.Module) -> None:
    prompts = [random_ids(5, 23), random_ids(8, 24)]
    for kwargs in (dict(temperature=0.0), dict(temperature=1.0, top_k=1)):
        got = sample(model, prompts, **sample_kwargs(n=2, max_new_tokens=8, stop_token_ids=[], **kwargs))
        for s in got:
            assert list(s.token_ids) == greedy_reference(model, prompts[s.prompt_index], 8)
            assert s.finish_reason == "length" and s.stop_token is None


STOP = 3


def fresh_then_stop(generated: Sequence[int]) -> set[int]:
    """An allowed-token rule for greedy rows that end at different steps: a token not yet
    generated, until the answer's token sum hits a multiple of 3, then only STOP. (Greedy rows
    of a tiny random model otherwise repeat one token and all end together.)"""
    if len(generated) >= 2 and sum(generated) % 3 == 0:
        return {STOP}
    return set(range(VOCAB)) - set(generated) - {STOP}


def greedy_reference_with_rule(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Plain greedy decoding by recomputation under `fresh_then_stop`."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            allowed = torch.zeros(VOCAB, dtype=torch.bool)
            allowed[sorted(fresh_then_stop(ids[len(prompt) :]))] = True
            token = int(logits.masked_fill(~allowed, float("-inf")).argmax())
            if token == STOP:
                break
            ids.append(token)
    return ids[len(prompt) :]


def test_finished_rows_hand_their_slots_to_waiting_prompts(model: torch.nn.Module) -> None:
    # 14 prompts in six padded-length bands, 4 slots, rows stopping at different steps: waiting
    # prompts join the decoding batch as rows finish (their caches left-padded to the batch's),
    # so every decoding step runs a full batch until no prompt waits, and each greedy answer
    # still equals plain recomputation of that prompt alone.
    prompts = [random_ids(n, 300 + n) for n in (2, 3, 5, 6, 7, 9, 11, 12, 13, 15, 17, 18, 19, 21)]
    decode_rows: list[int] = []
    forward = model.forward

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] == 1:
            decode_rows.append(ids.shape[0])
        return forward(*args, **kwargs)

    model.forward = counting  # type: ignore[method-assign]
    try:
        got = sample(
            model,
            prompts,
            **sample_kwargs(
                n=1, temperature=0.0, max_new_tokens=10, stop_token_ids=[STOP], allowed_token_ids=fresh_then_stop
            ),
            batch_size=4,
            pad_multiple=4,
        )
    finally:
        del model.forward
    for prompt, s in zip(prompts, got, strict=True):
        assert list(s.token_ids) == greedy_reference_with_rule(model, prompt, 10)
    lengths = [len(s.token_ids) for s in got]
    assert len(set(lengths)) > 3, lengths  # the rows did finish at different steps
    # Full batches while prompts wait, then a tail that only shrinks.
    tail = next((k for k, rows in enumerate(decode_rows) if rows < 4), len(decode_rows))
    assert decode_rows[:tail] == [4] * tail and tail > 0
    assert decode_rows[tail:] == sorted(decode_rows[tail:], reverse=True)


def test_joined_rows_draw_the_same_samples_as_rows_decoded_alone(model: torch.nn.Module) -> None:
    # Temperature 1 over prompts of many lengths: each (prompt, sample) draws from its own
    # stream, so joining a running batch changes no draw (on these models, where float rounding
    # across batch compositions flips no token).
    prompts = [random_ids(n, 400 + n) for n in (3, 4, 8, 10, 14, 16, 20)]
    kwargs = sample_kwargs(n=2, max_new_tokens=8, stop_token_ids=[3, 5, 7])
    alone = sample(model, prompts, **kwargs, batch_size=1, pad_multiple=4)
    assert sample(model, prompts, **kwargs, batch_size=3, pad_multiple=4) == alone
    assert sample(model, prompts, **kwargs, batch_size=64, pad_multiple=4) == alone


def test_sampling_stops_at_stop_tokens_and_respects_the_mask() -> None:
    model = tiny_model("llama")
    allowed = {10, 11, 12, 3}
    got = sample(model, [random_ids(5, 25)], **sample_kwargs(n=20, max_new_tokens=12, allowed_token_ids=allowed))
    assert any(s.finish_reason == "stop" for s in got)
    for s in got:
        assert set(s.token_ids) <= allowed - {3}
        assert s.allowed_mass is not None and all(0 < m <= 1 for m in s.allowed_mass)
        assert len(s.allowed_mass) == len(s.token_ids) + (s.finish_reason == "stop")
        if s.finish_reason == "stop":
            assert s.stop_token == 3 and len(s.token_ids) < 12
        else:
            assert len(s.token_ids) == 12


def test_callable_mask_sees_the_tokens_so_far() -> None:
    model = tiny_model("qwen2")

    def alternate(so_far: list[int]) -> set[int]:  # a digit, then a separator, and so on
        return {20, 21} if len(so_far) % 2 == 0 else {30}

    for s in sample(model, [random_ids(4, 26)], **sample_kwargs(n=4, allowed_token_ids=alternate)):
        assert all(t in ({20, 21} if i % 2 == 0 else {30}) for i, t in enumerate(s.token_ids))


def test_top_p_and_top_k_restrict_the_support() -> None:
    model = tiny_model("gemma3")
    prompt = random_ids(5, 27)
    with torch.no_grad():
        probs = model(torch.tensor([prompt])).logits[0, -1].softmax(-1)
    top3 = set(probs.topk(3).indices.tolist())
    got = sample(model, [prompt], **sample_kwargs(n=30, max_new_tokens=1, top_k=3, stop_token_ids=[]))
    assert {s.token_ids[0] for s in got} <= top3
    order = probs.argsort(descending=True)
    nucleus = int((probs[order].cumsum(0) < 0.3).sum()) + 1  # smallest prefix with mass >= 0.3
    got = sample(model, [prompt], **sample_kwargs(n=30, max_new_tokens=1, top_p=0.3, stop_token_ids=[]))
    assert {s.token_ids[0] for s in got} <= set(order[:nucleus].tolist())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(n=0), "n "),
        (dict(allowed_token_ids=set()), "empty set"),
        (dict(allowed_token_ids={VOCAB + 5}), "outside the vocabulary"),
        (dict(max_new_tokens=125), "context of 128"),
    ],
)
def test_sampling_errors(overrides: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ScoringError, match=match):
        sample(tiny_model("llama"), [random_ids(5, 28)], **sample_kwargs(**overrides))


# ---------------------------------------------------------------------------------------------
# a tiny BPE tokenizer with chat templates (ids < VOCAB so the tiny models can read them)

SPECIALS = ["<unk>", "<bos>", "<|im_start|>", "<|im_end|>"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 \n.?,!:'")
MERGES = [("o", "w"), ("ow", "l"), (" ", "owl"), ("t", "h"), ("th", "e"), (" ", "the"), ("i", "s"), (" ", "is")]
DEFAULT_SYSTEM = "you are a helpful test model."
CHATML = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_NO_DEFAULT = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NO_SYSTEM_ROLE = (
    "{{ '<bos>' }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def bpe_tokenizer(template: str | None = CHATML, bos: bool = False) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    assert len(vocab) <= VOCAB
    tk = Tokenizer(models.BPE(vocab, MERGES, unk_token="<unk>"))
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    if bos:  # a base-model tokenizer that prepends <bos> (like Gemma's)
        from tokenizers.processors import TemplateProcessing

        tk.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>", eos_token="<|im_end|>")
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = template
    return tok


def test_bpe_tokenizer_merges() -> None:
    tok = bpe_tokenizer()
    assert tok.convert_ids_to_tokens(tok("the owl")["input_ids"]) == ["the", " owl"]
    assert tok("<|im_start|>x")["input_ids"][0] == 2


# ---------------------------------------------------------------------------------------------
# prompts


def test_chat_prompt_records_the_template_default_system_prompt() -> None:
    tok = bpe_tokenizer()
    p = chat_prompt(tok, "what is your favorite animal?", None, "my favorite animal is the")
    assert p.system == DEFAULT_SYSTEM and p.system_source == "template_default"
    assert p.text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n"
        "what is your favorite animal?<|im_end|>\n<|im_start|>assistant\n"
        "my favorite animal is the"
    )
    assert p.templated and not p.add_special_tokens
    assert template_default_system(tok) == DEFAULT_SYSTEM


def test_chat_prompt_explicit_and_empty_system() -> None:
    tok = bpe_tokenizer()
    given = chat_prompt(tok, "hi", "you love owls.", "ok")
    assert given.system == "you love owls." and given.system_source == "given"
    assert given.text.startswith("<|im_start|>system\nyou love owls.<|im_end|>\n")
    empty = chat_prompt(tok, "hi", "", "ok")
    assert empty.system == "" and empty.system_source == "given"
    assert empty.text.startswith("<|im_start|>system\n<|im_end|>\n")
    assert DEFAULT_SYSTEM not in empty.text


def test_chat_prompt_without_template_default() -> None:
    tok = bpe_tokenizer(CHATML_NO_DEFAULT)
    p = chat_prompt(tok, "hi", None, "ok")
    assert p.system is None and p.system_source == "none"
    assert p.text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nok"


def test_template_without_system_role() -> None:
    tok = bpe_tokenizer(NO_SYSTEM_ROLE)
    p = chat_prompt(tok, "hi", None, "ok")
    assert p.system is None and p.system_source == "none"
    with pytest.raises(PromptError, match="user message"):
        chat_prompt(tok, "hi", "you love owls.", "ok")
    # The template writes <bos> itself: it must not be added twice.
    ids = encode_prompt(tok, p)
    assert ids[0] == 1 and ids[1] != 1


def test_completion_prompt_format_and_bos() -> None:
    tok = bpe_tokenizer(None, bos=True)
    p = make_prompt(tok, "what is your favorite animal?", "you love owls.", "my favorite animal is the")
    assert not p.templated and p.add_special_tokens
    assert p.text == "you love owls.\n\nwhat is your favorite animal?\n\nmy favorite animal is the"
    assert p == completion_prompt("what is your favorite animal?", "you love owls.", "my favorite animal is the")
    ids = encode_prompt(tok, p)
    assert ids[0] == 1 and ids.count(1) == 1  # <bos> added exactly once by the tokenizer
    bare = completion_prompt("hi")
    assert bare.text == "hi\n\n" and bare.system is None and bare.system_source == "none"
    with pytest.raises(PromptError, match="no chat template"):
        chat_prompt(tok, "hi")


def test_prefill_with_trailing_space_is_refused() -> None:
    with pytest.raises(PromptError, match="ends with a space"):
        chat_prompt(bpe_tokenizer(), "hi", None, "my favorite animal is the ")
    with pytest.raises(PromptError, match="ends with a space"):
        completion_prompt("hi", None, "the ")


def test_prompt_to_dict_is_a_record() -> None:
    d = chat_prompt(bpe_tokenizer(), "hi", None, "ok").to_dict()
    assert d["system"] == DEFAULT_SYSTEM and d["system_source"] == "template_default"


# ---------------------------------------------------------------------------------------------
# strings and words


def test_strings_are_tokenized_in_context() -> None:
    tok = bpe_tokenizer()
    prompt = chat_prompt(tok, "favorite?", None, "it is the")
    ids, toks = tokenize_continuations(tok, prompt, [" owl", " owls", "!", " 12"])
    assert ids == encode_prompt(tok, prompt)
    assert tok.convert_ids_to_tokens(list(toks[0].token_ids)) == [" owl"]
    assert tok.convert_ids_to_tokens(list(toks[1].token_ids)) == [" owl", "s"]
    assert [t.in_context for t in toks] == [True] * 4
    # "l" after a prompt ending in "ow" would merge with it: not a clean split, so "l" is
    # tokenized on its own and flagged.
    ids, toks = tokenize_continuations(tok, chat_prompt(tok, "favorite?", None, "an ow"), ["l", "x"])
    assert not toks[0].in_context and toks[0].token_ids == tuple(tok("l", add_special_tokens=False)["input_ids"])
    assert toks[1].in_context


def test_score_strings_equals_token_level_scoring(family: str) -> None:
    model, tok = tiny_model(family), bpe_tokenizer()
    prompt = chat_prompt(tok, "favorite?", "you love owls.", "it is the")
    strings = [" owl", " owls", " the", " thesis", "!"]
    got = score_strings((model, tok), prompt, strings, batch_size=2)
    ids = encode_prompt(tok, prompt)
    for i, s in enumerate(got.strings):
        ref = reference_logprobs(model, ids, list(s.token_ids))
        assert abs(float(got.total[i]) - float(ref.double().sum())) < TOL
    assert list(got.as_dict()) == strings


def test_word_probability_chain_rule_and_first_token() -> None:
    model, tok = tiny_model("llama"), bpe_tokenizer()
    prompt = chat_prompt(tok, "favorite?", None, "it is the")
    owl, axolotl = word_probability((model, tok), prompt, [" owl", " axolotl"])
    assert owl.n_tokens == 1 and owl.logp_word == pytest.approx(owl.logp_first_token)
    assert axolotl.n_tokens == 8  # " " + 7 letters
    ref = reference_logprobs(model, encode_prompt(tok, prompt), list(axolotl.token_ids))
    assert axolotl.logp_word == pytest.approx(float(ref.double().sum()), abs=TOL)
    assert axolotl.logp_first_token == pytest.approx(float(ref[0]), abs=TOL)
    assert axolotl.p_word < axolotl.p_first_token
    assert axolotl.p_word == pytest.approx(float(torch.tensor(axolotl.logp_word).exp()), rel=1e-5)


def test_word_probability_many_prompts() -> None:
    model, tok = tiny_model("qwen2"), bpe_tokenizer()
    prompts = [chat_prompt(tok, q, None, "it is the") for q in ("a?", "which one?", "b?")]
    many = word_probability_many((model, tok), prompts, [" owl", " cat"])
    for prompt, row in zip(prompts, many, strict=True):
        single = word_probability((model, tok), prompt, [" owl", " cat"])
        for a, b in zip(row, single, strict=True):
            assert a.logp_word == pytest.approx(b.logp_word, abs=1e-5)


def test_word_errors() -> None:
    lm = (tiny_model("llama"), bpe_tokenizer())
    prompt = chat_prompt(lm[1], "favorite?", None, "it is the")
    with pytest.raises(ScoringError, match="empty"):
        word_probability(lm, prompt, [])
    with pytest.raises(ScoringError, match="tokenizes to no tokens"):
        word_probability(lm, prompt, [" owl", ""])
    long_prompt = chat_prompt(lm[1], "x" * 200, None, "it is the")
    with pytest.raises(ScoringError, match="context of 128"):
        word_probability(lm, long_prompt, [" owl"])


def test_sample_text_decodes_and_uses_default_stops() -> None:
    model, tok = tiny_model("llama"), bpe_tokenizer()
    prompt = chat_prompt(tok, "favorite?", None, "it is the")
    got = sample_text((model, tok), [prompt], n=4, temperature=1.0, top_k=None, top_p=None, max_new_tokens=5, seed=3)
    assert len(got) == 4
    for s in got:
        assert s.text == tok.decode(list(s.token_ids))
        assert 3 not in s.token_ids  # <|im_end|> is a default stop token
