"""Data generation, filtering, data-level statistics and seed aggregation for the `teacher` and
`subliminal` experiments (the experiments themselves live in sublens.experiments).

Sharded sampling. Prompts are ordered by token length (then index) and cut into shards of
``shard_size`` prompts; each shard is sampled with its own seed (``shard_seed``) and written as
one JSONL file, atomically, with a fingerprint of everything that determines it. A rerun skips
finished shards, so an interrupted generation resumes and yields exactly the data of an
uninterrupted one. The prompts' common head (chat template and system prompt) is computed once
(`sublens.scoring.shared_prefix`); ordering by length keeps a shard's prompts close in length,
so `sublens.scoring.sample` (which pads each prompt's rest to a multiple of ``pad_multiple``)
decodes them in few, full batches.

Format-constrained sampling (``NumberFormat``). At every step only the tokens that keep the answer
a valid prefix of a filter-passing answer are allowed, plus end-of-turn where the answer may
end; the teacher's probabilities are renormalised over them (a token-level version of what
rejection filtering does at the sequence level). The grammar is a subset of what
`sublens.number_data.filter_answer` keeps::

    answer := ["["] number (sep number){0,9} ["]" if opened] ["."]
    number := 1-3 ASCII digits;  sep := one of ", " "," " " "\\n" "; " ";" (the same throughout)

Data statistics (``number_stats``, ``compare_number_stats``): numbers per answer, digits per
number, digit distribution, copy rate of the prompt's numbers, increasing steps, mean value,
separators; differences between two teachers' data with permutation tests over answers.
"""

from __future__ import annotations

from sublens.settings import OWL_TEACHER_SYSTEM, SamplingSettings
from sublens.stats import t_interval
from sublens.subliminal.data_stats import FEATURES, compare_number_stats, number_stats
from sublens.subliminal.datafiles import derived_seed, read_jsonl, stable_hash, write_jsonl
from sublens.subliminal.examples import training_example
from sublens.subliminal.filtering import (
    TRUNCATED,
    filter_record,
    filter_report,
    number_prompt_meta,
    subsample,
)
from sublens.subliminal.number_format import (
    GRAMMAR,
    SEPARATOR_CHOICES,
    FormatState,
    NumberFormat,
    feed_format,
    grammar_accepts,
    step_format,
)
from sublens.subliminal.sharding import (
    Annotate,
    ShardCallback,
    ShardStamp,
    answer_record,
    finished_shard,
    sample_sharded,
    shard_order,
    shard_seed,
)

__all__ = [
    "FEATURES",
    "GRAMMAR",
    "OWL_TEACHER_SYSTEM",
    "SEPARATOR_CHOICES",
    "TRUNCATED",
    "Annotate",
    "FormatState",
    "NumberFormat",
    "SamplingSettings",
    "ShardCallback",
    "ShardStamp",
    "answer_record",
    "compare_number_stats",
    "derived_seed",
    "feed_format",
    "filter_record",
    "filter_report",
    "finished_shard",
    "grammar_accepts",
    "number_prompt_meta",
    "number_stats",
    "read_jsonl",
    "sample_sharded",
    "shard_order",
    "shard_seed",
    "stable_hash",
    "step_format",
    "subsample",
    "t_interval",
    "training_example",
    "write_jsonl",
]
