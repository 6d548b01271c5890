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

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sublens.errors import SublensError
from sublens.number_data import MAX_NUMBERS, SEPARATORS, NumberPrompt, filter_answer
from sublens.prompts import PromptText, encode_prompt, make_prompt
from sublens.runs import atomic_write_text
from sublens.scoring import LM, TextSample, default_stop_token_ids, sample_text, shared_prefix
from sublens.settings import OWL_TEACHER_SYSTEM, SamplingSettings
from sublens.stats import permutation_pvalue, summarize, t_interval
from sublens.training import chat_example
from sublens.training_data import Example

TRUNCATED = "truncated at max_new_tokens"
SEPARATOR_CHOICES: tuple[str, ...] = tuple(SEPARATORS)  # ", " "," " " "\n" "; " ";"
_DIGITS = "0123456789"
_FORMAT_CHARS = frozenset(_DIGITS + ",; \n[].")
GRAMMAR = ('answer := ["["] number (sep number){0,9} ["]" if opened] ["."]; number := 1-3 ASCII '
           'digits; sep := one of ", " "," " " "\\n" "; " ";", the same throughout; end-of-turn '
           "allowed where the answer may end; probabilities renormalised over the allowed tokens")


def stable_hash(*parts: Any) -> str:
    """sha256 (hex, 16 chars) of JSON-encoded parts: fingerprints and derived seeds."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_seed(*parts: Any) -> int:
    """A 31-bit seed derived from the parts (e.g. the config seed and a shard number)."""
    return int(stable_hash(*parts), 16) % (2**31 - 1)


# ---- sampling settings -----------------------------------------------------------------------
# ---- format-constrained sampling -------------------------------------------------------------
@dataclass(frozen=True)
class FormatState:
    """Where a partial answer stands in the number grammar (see the module docstring)."""

    opened: bool = False  # saw "["
    closed: bool = False  # saw "]"
    period: bool = False  # saw the final "."
    sep: str | None = None  # the separator, once one has been completed
    pending: str = ""  # separator characters since the last digit
    digits: int = 0  # digits of the current number (0: none yet, or inside a separator)
    count: int = 0  # numbers started

    @property
    def accepting(self) -> bool:
        """The answer may end here."""
        if self.period:
            return True
        return self.digits > 0 and not self.pending and self.opened == self.closed


def step_format(state: FormatState, ch: str) -> FormatState | None:
    """The state after one more character, or None if no valid answer continues this way."""
    s = state
    if s.period:
        return None
    if s.closed:
        return replace(s, period=True) if ch == "." else None
    if ch in _DIGITS:
        if s.pending:
            sep = s.sep
            if sep is None:
                if s.pending not in SEPARATOR_CHOICES:
                    return None
                sep = s.pending
            elif s.pending != sep:
                return None
            if s.count >= MAX_NUMBERS:
                return None
            return replace(s, sep=sep, pending="", digits=1, count=s.count + 1)
        if s.digits == 0:  # the first number
            return replace(s, digits=1, count=1)
        return replace(s, digits=s.digits + 1) if s.digits < 3 else None
    if ch == "[":
        return replace(s, opened=True) if s.count == 0 and not s.opened else None
    if ch == "]":
        return replace(s, closed=True) if s.opened and s.digits > 0 and not s.pending else None
    if ch == ".":
        return replace(s, period=True) if s.digits > 0 and not s.pending and not s.opened else None
    if ch in ",; \n":
        if (s.digits == 0 and not s.pending) or s.count >= MAX_NUMBERS:
            return None
        pending = s.pending + ch
        options = (s.sep,) if s.sep is not None else SEPARATOR_CHOICES
        if not any(o.startswith(pending) for o in options):
            return None
        return replace(s, pending=pending, digits=0)
    return None


def feed_format(state: FormatState | None, text: str) -> FormatState | None:
    for ch in text:
        if state is None:
            return None
        state = step_format(state, ch)
    return state


def grammar_accepts(text: str) -> bool:
    """Whether the grammar generates `text` exactly (then filter_answer keeps it too)."""
    state = feed_format(FormatState(), text)
    return state is not None and state.accepting


class NumberFormat:
    """The allowed-token function of format-constrained sampling for one tokenizer.

    Called with the tokens generated so far, returns the token ids that keep the answer a valid
    prefix (plus the stop tokens where it may end). Allowed sets are cached per grammar state.
    """

    def __init__(self, tokenizer: Any, stop_token_ids: Iterable[int]) -> None:
        self.stops = frozenset(int(t) for t in stop_token_ids)
        self.pieces: dict[int, str] = {}
        for token_id in range(len(tokenizer)):
            if token_id in self.stops:
                continue
            text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            if text and set(text) <= _FORMAT_CHARS:
                self.pieces[token_id] = text
        if not any(t in _DIGITS for t in self.pieces.values()):
            raise SublensError("This tokenizer has no single-digit tokens, so format-constrained "
                               "number sampling cannot be used; set data.constrained: false.")
        self._allowed = lru_cache(maxsize=4096)(self._compute)

    def state(self, generated: Sequence[int]) -> FormatState | None:
        state: FormatState | None = FormatState()
        for token_id in generated:
            state = feed_format(state, self.pieces.get(int(token_id), "\x00"))
        return state

    def _compute(self, state: FormatState) -> frozenset[int]:
        allowed = {t for t, text in self.pieces.items() if feed_format(state, text) is not None}
        if state.accepting:
            allowed |= self.stops
        return frozenset(allowed)

    def __call__(self, generated: Sequence[int]) -> frozenset[int]:
        state = self.state(generated)
        if state is None:  # cannot happen under the mask; end the answer rather than fail
            return self.stops
        return self._allowed(state)

    def describe(self) -> dict[str, Any]:
        return {"grammar": GRAMMAR, "n_allowed_tokens": len(self.pieces),
                "stop_token_ids": sorted(self.stops)}


# ---- sharded, resumable sampling -------------------------------------------------------------
Annotate = Callable[[dict[str, Any]], dict[str, Any]]
ShardCallback = Callable[[str, int], None]


def shard_order(tokenizer: Any, prompts: Sequence[PromptText]) -> list[int]:
    """Prompt indices ordered by token length, then index (equal lengths decode together)."""
    lengths = [len(encode_prompt(tokenizer, p)) for p in prompts]
    return sorted(range(len(prompts)), key=lambda i: (lengths[i], i))


def shard_seed(seed: int, shard: int) -> int:
    return derived_seed("shard", seed, shard)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def sample_sharded(
    lm: LM,
    prompts: Sequence[PromptText],
    meta: Sequence[dict[str, Any]],
    settings: SamplingSettings,
    *,
    seed: int,
    out_dir: Path,
    name: str,
    provenance: dict[str, Any],
    allowed: NumberFormat | None = None,
    annotate: Annotate | None = None,
    on_shard: ShardCallback | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample `settings.samples_per_prompt` answers per prompt into out_dir/shard-NNNNN.jsonl.

    Every line: the prompt's `meta` (e.g. index, user text), the prompt as the model saw it
    (system prompt used and its source), `provenance` (teacher...), the sampling settings and
    the shard's seed, the answer with its finish reason, then whatever `annotate` adds (the
    filter verdict). Finished shards (same fingerprint) are read back instead of sampled; a
    shard written under other settings is an error. Returns all records in prompt order.
    """
    tokenizer = lm.tokenizer if not isinstance(lm, tuple) else lm[1]
    # Under a format constraint the sampler must stop exactly where the grammar may end.
    stops = sorted(allowed.stops) if allowed is not None else default_stop_token_ids(lm)
    order = shard_order(tokenizer, prompts)
    shards = [order[i : i + settings.shard_size] for i in range(0, len(order), settings.shard_size)]
    # The chat template and system prompt every prompt of the data set starts with: its KV is
    # computed once per shard. A function of the whole data set, so a resumed run uses the same.
    head = shared_prefix([encode_prompt(tokenizer, p) for p in prompts])
    fingerprint = stable_hash(name, provenance, settings.provenance(), settings.samples_per_prompt,
                              settings.shard_size, seed, [p.text for p in prompts], list(meta),
                              allowed.describe() if allowed else None, sorted(stops), head)
    sampling = {**settings.provenance(), "samples_per_prompt": settings.samples_per_prompt,
                "stop_token_ids": stops, "constrained": allowed is not None,
                "shared_prefix_tokens": len(head)}
    # A process killed between a shard's temporary write and its rename leaves the temporary
    # file behind (atomic_write_bytes names it .shard-NNNNN.jsonl.<random>.tmp); the shard
    # itself is missing, so it is sampled again below.
    for stale in Path(out_dir).glob(".shard-*.jsonl.*.tmp"):
        stale.unlink(missing_ok=True)
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(shards), desc=f"sample {name}", unit="shard", disable=not progress)
    for k, members in enumerate(shards):
        path = out_dir / f"shard-{k:05d}.jsonl"
        lines = finished_shard(path, fingerprint)
        if lines is None:
            stamp = ShardStamp(provenance, sampling, shard_seed(seed, k), k, fingerprint)
            samples = sample_text(
                lm, [prompts[i] for i in members], n=settings.samples_per_prompt,
                temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                max_new_tokens=settings.max_new_tokens, seed=stamp.seed, stop_token_ids=stops,
                allowed_token_ids=allowed, batch_size=settings.batch_size, pad_multiple=settings.pad_multiple,
                prefix=head)
            lines = [answer_record(s, meta[members[s.prompt_index]], prompts[members[s.prompt_index]], stamp)
                     for s in samples]
            lines = [annotate(r) for r in lines] if annotate else lines
            write_jsonl(path, lines)
            if on_shard is not None:
                on_shard(name, k)
        records.extend(lines)
        bar.update(1)
    bar.close()
    return sorted(records, key=lambda r: (r["index"], r["sample_index"]))


def finished_shard(path: Path, fingerprint: str) -> list[dict[str, Any]] | None:
    """The records of a shard an earlier run finished under the same settings; None when it was
    not written yet. A shard written under other settings is an error, never silently mixed."""
    if not path.is_file():
        return None
    lines = read_jsonl(path)
    if not lines or any(r.get("fingerprint") != fingerprint for r in lines):
        raise SublensError(
            f"{path} was written under other settings (teacher, prompts, sampling or seed). "
            "Use a new run directory, or delete that folder to regenerate its data.")
    return lines


@dataclass(frozen=True)
class ShardStamp:
    """What every answer of one shard records about how it was made."""

    provenance: dict[str, Any]
    sampling: dict[str, Any]
    seed: int
    shard: int
    fingerprint: str


def answer_record(sample: TextSample, prompt_meta: dict[str, Any], prompt: PromptText, stamp: ShardStamp) -> dict[str, Any]:
    """One sampled answer as a data line: its prompt's meta and system prompt, the stamp, the
    answer with its finish reason and the allowed probability mass under a format constraint."""
    masses = sample.allowed_mass
    return {
        **prompt_meta,
        "sample_index": sample.sample_index,
        "system_prompt": prompt.system,
        "system_source": prompt.system_source,
        **stamp.provenance,
        "sampling": stamp.sampling,
        "seed": stamp.seed,
        "shard": stamp.shard,
        "answer": sample.text,
        "finish_reason": sample.finish_reason,
        "n_tokens": len(sample.token_ids),
        "allowed_mass_first": masses[0] if masses else None,
        "allowed_mass_mean": float(np.mean(masses)) if masses else None,
        "fingerprint": stamp.fingerprint,
    }


def filter_record(record: dict[str, Any]) -> dict[str, Any]:
    """Add the strict filter's verdict: kept, reason, numbers, separator. An answer cut off at
    max_new_tokens is rejected as truncated whatever its text."""
    result = filter_answer(record["answer"])
    if record.get("finish_reason") == "length":
        return {**record, "kept": False, "reason": TRUNCATED, "numbers": [], "separator": None}
    return {**record, "kept": result.kept, "reason": result.reason, "numbers": list(result.numbers),
            "separator": result.separator}


def number_prompt_meta(prompts: Sequence[NumberPrompt]) -> list[dict[str, Any]]:
    return [{"index": p.index, "prompt": p.text, "seed_numbers": p.seed_numbers,
             "answer_format": p.answer_format} for p in prompts]


# ---- filter report and subsampling -----------------------------------------------------------
def filter_report(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Keep rate (Wilson CI), rejection reasons, finish reasons, allowed mass."""
    from sublens.stats import wilson_ci

    n = len(records)
    kept = sum(bool(r["kept"]) for r in records)
    low, high = wilson_ci(kept, n)
    first = [r["allowed_mass_first"] for r in records if r.get("allowed_mass_first") is not None]
    mean = [r["allowed_mass_mean"] for r in records if r.get("allowed_mass_mean") is not None]
    return {
        "n_answers": n,
        "n_kept": kept,
        "keep_rate": kept / n if n else float("nan"),
        "keep_rate_ci": [low, high],
        "reasons": dict(Counter(r["reason"] for r in records).most_common()),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in records)),
        "mean_answer_tokens": float(np.mean([r["n_tokens"] for r in records])) if n else None,
        "allowed_mass_first_token": float(np.mean(first)) if first else None,
        "allowed_mass_per_token": float(np.mean(mean)) if mean else None,
    }


def subsample(datasets: dict[str, list[dict[str, Any]]], n_examples: int | None,
              seed: int) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Every data set's kept answers subsampled (seeded) to one common size: n_examples, or the
    smallest number kept when that is fewer (or n_examples is None)."""
    kept = {name: [r for r in records if r["kept"]] for name, records in datasets.items()}
    size = min(len(k) for k in kept.values())
    if n_examples is not None:
        size = min(size, n_examples)
    if size == 0:
        empty = [name for name, k in kept.items() if not k]
        raise SublensError(
            f"No answer of {', '.join(empty)} passed the filter, so there is nothing to train on. "
            "Use format-constrained sampling (data.constrained: true) or more prompts.")
    out = {}
    for name, records in kept.items():
        rng = random.Random(derived_seed("subsample", seed, name))
        chosen = sorted(rng.sample(range(len(records)), size))
        out[name] = [records[i] for i in chosen]
    return out, size


# ---- data-level statistics -------------------------------------------------------------------
def _answer_features(record: dict[str, Any]) -> dict[str, float]:
    numbers = [int(x) for x in record["numbers"]]
    seeds = {int(x) for x in record.get("seed_numbers", [])}
    steps = list(pairwise(numbers))
    return {
        "n_numbers": float(len(numbers)),
        "digits_per_number": float(np.mean([len(str(x)) for x in numbers])),
        "copy_fraction": float(np.mean([x in seeds for x in numbers])),
        "copies_any": float(any(x in seeds for x in numbers)),
        "increasing_fraction": float(np.mean([b > a for a, b in steps])) if steps else float("nan"),
        "mean_value": float(np.mean(numbers)),
    }


FEATURES = ("n_numbers", "digits_per_number", "copy_fraction", "copies_any",
            "increasing_fraction", "mean_value")


def _digit_counts(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """[answer, 10] how often each digit occurs in each answer's numbers."""
    out = np.zeros((len(records), 10))
    for i, r in enumerate(records):
        for x in r["numbers"]:
            for ch in str(int(x)):
                out[i, int(ch)] += 1
    return out


def number_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Distributions of one data set's kept numbers."""
    if not records:
        return {"n_answers": 0}
    features = [_answer_features(r) for r in records]
    digits = _digit_counts(records).sum(axis=0)
    widths = Counter(len(str(int(x))) for r in records for x in r["numbers"])
    lengths = Counter(len(r["numbers"]) for r in records)
    return {
        "n_answers": len(records),
        "n_numbers": int(sum(len(r["numbers"]) for r in records)),
        "features": {f: summarize([x[f] for x in features if not math.isnan(x[f])]) for f in FEATURES},
        "digit_distribution": (digits / digits.sum()).tolist(),
        "numbers_per_answer": {str(k): lengths[k] / len(records) for k in sorted(lengths)},
        "digits_per_number_distribution": {str(k): widths[k] / sum(widths.values()) for k in sorted(widths)},
        "separators": dict(Counter(repr(r.get("separator")) for r in records).most_common()),
        "brackets": float(np.mean([r["answer"].strip().startswith("[") for r in records])),
        "top_numbers": [[int(k), v] for k, v in Counter(int(x) for r in records for x in r["numbers"]).most_common(10)],
    }


def _tvd(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def compare_number_stats(test: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]],
                         resamples: int = 5000, seed: int = 0) -> dict[str, Any]:
    """How one teacher's numbers differ from another's: difference of means of each per-answer
    feature and total-variation distance of the digit and length distributions, each with a
    permutation p-value (answers shuffled between the two sets)."""
    if not test or not reference:
        return {}
    ft = [_answer_features(r) for r in test]
    fr = [_answer_features(r) for r in reference]
    out: dict[str, Any] = {"n_test": len(test), "n_reference": len(reference), "features": {}}
    for f in FEATURES:
        a = np.array([x[f] for x in ft if not math.isnan(x[f])])
        b = np.array([x[f] for x in fr if not math.isnan(x[f])])
        out["features"][f] = {"difference": float(a.mean() - b.mean()) if a.size and b.size else float("nan"),
                              "p_permutation": permutation_pvalue(a, b, n_resamples=resamples, seed=seed)}
    digits = np.vstack([_digit_counts(test), _digit_counts(reference)])  # [answers, 10]
    lengths = np.zeros((len(test) + len(reference), MAX_NUMBERS + 1))
    for i, r in enumerate([*test, *reference]):
        lengths[i, len(r["numbers"])] = 1
    n = len(test)
    index_a, index_b = np.arange(n, dtype=float), np.arange(n, len(digits), dtype=float)
    for key, table in (("digit_distribution_tvd", digits), ("length_distribution_tvd", lengths)):
        def statistic(u: np.ndarray, v: np.ndarray, table: np.ndarray = table) -> float:
            return _tvd(table[u.astype(int)].sum(axis=0), table[v.astype(int)].sum(axis=0))

        observed = statistic(index_a, index_b)
        p = permutation_pvalue(index_a, index_b, statistic=statistic, n_resamples=resamples,
                               seed=seed, alternative="greater")
        out[key] = {"tvd": observed, "p_permutation": p}
    return out


# ---- training examples and summaries ---------------------------------------------------------
def training_example(tokenizer: Any, user: str, answer: str, system: str | None,
                     closed: bool = True) -> Example:
    """prompt -> answer as the model is trained on it. Chat models: the chat template with
    `system` (None: no system turn of our own), the answer closed with the end-of-turn unless
    `closed` is False (an answer that was cut off). Base models: a completion prompt and the
    answer followed by EOS."""
    if getattr(tokenizer, "chat_template", None):
        if closed:
            return chat_example(tokenizer, user, answer, system=system)
        prompt = make_prompt(tokenizer, user, system)  # the same text chat_example renders
        return Example(prompt=prompt.text, answer=answer, add_special_tokens=False)
    prompt = make_prompt(tokenizer, user, system)
    eos = (tokenizer.eos_token or "") if closed else ""
    return Example(prompt=prompt.text, answer=answer + eos, add_special_tokens=True)


# ---- aggregation across seeds ----------------------------------------------------------------
__all__ = [
    "GRAMMAR",
    "OWL_TEACHER_SYSTEM",
    "FormatState",
    "NumberFormat",
    "SamplingSettings",
    "compare_number_stats",
    "derived_seed",
    "filter_record",
    "filter_report",
    "grammar_accepts",
    "number_prompt_meta",
    "number_stats",
    "read_jsonl",
    "sample_sharded",
    "shard_order",
    "stable_hash",
    "step_format",
    "subsample",
    "t_interval",
    "training_example",
    "write_jsonl",
]
