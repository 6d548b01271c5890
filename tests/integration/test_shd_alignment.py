"""Cross-tokenizer alignment on real text: SmolLM2 (teacher) onto Gemma3 (student) tokens."""

from __future__ import annotations

import torch

from sublens.models import LoadedModel
from sublens.shd import alignment_matrices, project_attention, token_spans

TEXT = "Continue the sequence: 142, 857, 903. Answer: 211, 64, 998, 12."


def test_alignment_between_smollm2_and_gemma3(smollm2: LoadedModel, gemma3: LoadedModel) -> None:
    t_ids, t_spans = token_spans(smollm2.tokenizer, TEXT)
    s_ids, s_spans = token_spans(gemma3.tokenizer, TEXT)
    assert len(t_ids) != len(s_ids)  # different tokenizations of the same text
    for ids, spans, tok in ((t_ids, t_spans, smollm2.tokenizer), (s_ids, s_spans, gemma3.tokenizer)):
        assert "".join(TEXT[a:b] for a, b in spans) == TEXT
        assert len(ids) == len(spans) and tok.decode(ids, skip_special_tokens=True) == TEXT
    Q, K = alignment_matrices(s_spans, t_spans)
    n_t = len(t_ids)
    causal = torch.ones(n_t, n_t, dtype=torch.bool).tril()
    A = torch.softmax(torch.randn(2, 3, n_t, n_t, dtype=torch.float64).masked_fill(~causal, float("-inf")), -1)
    P, valid = project_attention(A, Q, K)
    assert P.shape == (2, 3, len(s_ids), len(s_ids))
    assert not valid[0]  # Gemma's <bos> has no characters and SmolLM2 has no BOS to match it
    assert valid[1:].all()
    torch.testing.assert_close(P[..., valid, :].sum(-1), torch.ones(2, 3, int(valid.sum()), dtype=torch.float64))
    assert torch.all(P.triu(diagonal=1) == 0)
