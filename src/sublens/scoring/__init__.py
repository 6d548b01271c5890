"""Batched log-probabilities of continuations, with prompt KV reuse and prefix sharing, and
batched sampling with a KV cache.

Scoring (token level): each prompt runs once; its KV cache is shared by all its
continuations. Continuations are put in a prefix tree (trie) per prompt, so a shared prefix
(" 1" in " 12", " 123", ...) is computed once: the work is one token per distinct prefix that
has a continuation after it (leaves need no forward pass: their log-probability comes from
their parent's distribution). Trie nodes are run level by level, ``batch_size`` nodes at a
time; the nodes of one level all have the same context length (prompt + depth), and prompts
are grouped by length, so no batch is ever padded and padding cannot change a result.

    log P(c | prompt) = sum_t log p(c_t | prompt, c_<t)   (chain rule, in float64)

String level: ``score_strings`` tokenizes each string *as it appears after the prompt* (prompt
text + string, tokenized together, then split after the prompt's tokens). When the split is
not clean (the prompt's last token would merge with the string's start), the string is
tokenized on its own and flagged ``in_context=False``.

Word probability: P(word) over all its tokens (chain rule) and the first-token probability,
as two separately named fields. Neither is substituted for the other.

Sampling: explicit temperature / top_k / top_p / max_new_tokens / seed (no library defaults),
stop tokens, an optional allowed-token mask per step (format-constrained sampling), one
random stream per (prompt, sample) so a row's draws do not depend on batching. Prompts of
different lengths decode together: each prompt is left-padded to its own length rounded up
past the next multiple of ``pad_multiple`` (at least one pad, so every row always carries an
attention mask), with position ids that skip the pads; finished rows' slots go to waiting
prompts. The other rows touch a row's probabilities only through float rounding.

Modules: `core` (shared types, model helpers, request checks), `forest` (the token-level
engine), `tokens` (token-level API), `strings` (strings and words), `draws` (one step's token
choice), `decode` (one batch's decoding), `sampling` (the sampling API).
"""

from sublens.scoring.core import (
    END_OF_TURN_TOKENS,
    KV,
    LM,
    AllowedTokens,
    LMLike,
    ScoringError,
    TokenIds,
    _forward,
    max_positions,
)
from sublens.scoring.decode import Sample, _left_padded
from sublens.scoring.draws import _inverse_cdf
from sublens.scoring.sampling import (
    TextSample,
    default_stop_token_ids,
    padded_length,
    sample,
    sample_text,
    shared_prefix,
)
from sublens.scoring.strings import (
    StringScores,
    TokenizedString,
    WordProbability,
    score_strings,
    score_strings_many,
    tokenize_continuations,
    word_probability,
    word_probability_many,
)
from sublens.scoring.tokens import (
    ContinuationScores,
    ScoringStats,
    score_continuations,
    score_many,
)
from sublens.settings import SAMPLER

__all__ = [
    "END_OF_TURN_TOKENS",
    "KV",
    "LM",
    "SAMPLER",
    "AllowedTokens",
    "ContinuationScores",
    "LMLike",
    "Sample",
    "ScoringError",
    "ScoringStats",
    "StringScores",
    "TextSample",
    "TokenIds",
    "TokenizedString",
    "WordProbability",
    "_forward",
    "_inverse_cdf",
    "_left_padded",
    "default_stop_token_ids",
    "max_positions",
    "padded_length",
    "sample",
    "sample_text",
    "score_continuations",
    "score_many",
    "score_strings",
    "score_strings_many",
    "shared_prefix",
    "tokenize_continuations",
    "word_probability",
    "word_probability_many",
]
