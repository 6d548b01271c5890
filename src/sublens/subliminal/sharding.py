"""Sharded, resumable sampling of a teacher's answers: prompts ordered by token length
(``shard_order``) and cut into shards, each sampled with its own seed (``shard_seed``) and written
as one JSONL file stamped with a fingerprint (``sample_sharded``); a finished shard is read back
instead of sampled again (``finished_shard``), and every answer becomes a data line with its
prompt's meta and its shard's stamp (``ShardStamp``, ``answer_record``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sublens.errors import SublensError
from sublens.prompts import PromptText, encode_prompt
from sublens.scoring import LM, TextSample, default_stop_token_ids, sample_text, shared_prefix
from sublens.settings import SamplingSettings
from sublens.subliminal.datafiles import derived_seed, read_jsonl, stable_hash, write_jsonl
from sublens.subliminal.number_format import NumberFormat

# ---- sharded, resumable sampling -------------------------------------------------------------
Annotate = Callable[[dict[str, Any]], dict[str, Any]]
ShardCallback = Callable[[str, int], None]


def shard_order(tokenizer: Any, prompts: Sequence[PromptText]) -> list[int]:
    """Prompt indices ordered by token length, then index (equal lengths decode together)."""
    lengths = [len(encode_prompt(tokenizer, p)) for p in prompts]
    return sorted(range(len(prompts)), key=lambda i: (lengths[i], i))


def shard_seed(seed: int, shard: int) -> int:
    return derived_seed("shard", seed, shard)


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
    fingerprint = stable_hash(
        name,
        provenance,
        settings.provenance(),
        settings.samples_per_prompt,
        settings.shard_size,
        seed,
        [p.text for p in prompts],
        list(meta),
        allowed.describe() if allowed else None,
        sorted(stops),
        head,
    )
    sampling = {
        **settings.provenance(),
        "samples_per_prompt": settings.samples_per_prompt,
        "stop_token_ids": stops,
        "constrained": allowed is not None,
        "shared_prefix_tokens": len(head),
    }
    _remove_torn_writes(Path(out_dir))
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(shards), desc=f"sample {name}", unit="shard", disable=not progress)
    for k, members in enumerate(shards):
        path = out_dir / f"shard-{k:05d}.jsonl"
        lines = finished_shard(path, fingerprint)
        if lines is None:
            stamp = ShardStamp(provenance, sampling, shard_seed(seed, k), k, fingerprint)
            lines = _sample_shard(
                lm, prompts, meta, members, settings, stamp=stamp, stops=stops, allowed=allowed, prefix=head
            )
            lines = [annotate(r) for r in lines] if annotate else lines
            write_jsonl(path, lines)
            if on_shard is not None:
                on_shard(name, k)
        records.extend(lines)
        bar.update(1)
    bar.close()
    return sorted(records, key=lambda r: (r["index"], r["sample_index"]))


def _remove_torn_writes(out_dir: Path) -> None:
    """Delete the temporary files of shards whose write never finished. A process killed
    between a shard's temporary write and its rename leaves the temporary file behind
    (atomic_write_bytes names it .shard-NNNNN.jsonl.<random>.tmp); the shard itself is
    missing, so it is sampled again."""
    for stale in out_dir.glob(".shard-*.jsonl.*.tmp"):
        stale.unlink(missing_ok=True)


def _sample_shard(
    lm: LM,
    prompts: Sequence[PromptText],
    meta: Sequence[dict[str, Any]],
    members: list[int],
    settings: SamplingSettings,
    *,
    stamp: ShardStamp,
    stops: list[int],
    allowed: NumberFormat | None,
    prefix: list[int],
) -> list[dict[str, Any]]:
    """Sample one shard's prompts (`members`: indices into prompts and meta) with the shard's
    seed, and turn every answer into its data line (before `annotate`)."""
    samples = sample_text(
        lm,
        [prompts[i] for i in members],
        n=settings.samples_per_prompt,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=stamp.seed,
        stop_token_ids=stops,
        allowed_token_ids=allowed,
        batch_size=settings.batch_size,
        pad_multiple=settings.pad_multiple,
        prefix=prefix,
    )
    return [answer_record(s, meta[members[s.prompt_index]], prompts[members[s.prompt_index]], stamp) for s in samples]


def finished_shard(path: Path, fingerprint: str) -> list[dict[str, Any]] | None:
    """The records of a shard an earlier run finished under the same settings; None when it was
    not written yet. A shard written under other settings is an error, never silently mixed."""
    if not path.is_file():
        return None
    lines = read_jsonl(path)
    if not lines or any(r.get("fingerprint") != fingerprint for r in lines):
        raise SublensError(
            f"{path} was written under other settings (teacher, prompts, sampling or seed). "
            "Use a new run directory, or delete that folder to regenerate its data."
        )
    return lines


@dataclass(frozen=True)
class ShardStamp:
    """What every answer of one shard records about how it was made."""

    provenance: dict[str, Any]
    sampling: dict[str, Any]
    seed: int
    shard: int
    fingerprint: str


def answer_record(
    sample: TextSample, prompt_meta: dict[str, Any], prompt: PromptText, stamp: ShardStamp
) -> dict[str, Any]:
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
