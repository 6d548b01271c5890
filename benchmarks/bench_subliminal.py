"""Number-data generation of the subliminal experiment on the embedded SmolLM2: free sampling
against format-constrained sampling (`sublens.subliminal.NumberFormat`), at temperature 1 with
no top-k / top-p, under the owl system prompt.

For each arm: answers, answer tokens, wall seconds, answer tokens/s, keep rate of the strict
filter, rejection reasons, mean allowed mass (first token, per token) and the time spent
computing allowed-token sets (the grammar's share of the wall time).

Run:  PYTHONPATH=src SUBLENS_CACHE=... python benchmarks/bench_subliminal.py [--prompts 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from sublens.models import load_model
    from sublens.number_data import make_number_prompts
    from sublens.prompts import make_prompt
    from sublens.scoring import default_stop_token_ids, sample_text
    from sublens.settings import OWL_TEACHER_SYSTEM
    from sublens.subliminal import NumberFormat, filter_record, shard_order

    lm = load_model("smollm2-135m-instruct", device="cpu")
    prompts = make_number_prompts(args.prompts, seed=0)
    texts = [make_prompt(lm.tokenizer, p.text, OWL_TEACHER_SYSTEM) for p in prompts]
    order = shard_order(lm.tokenizer, texts)  # as the experiment batches them
    texts = [texts[i] for i in order]
    stops = default_stop_token_ids(lm)
    started = time.perf_counter()
    grammar = NumberFormat(lm.tokenizer, stops)
    build_seconds = time.perf_counter() - started

    class Timed:
        def __init__(self, inner: NumberFormat) -> None:
            self.inner, self.seconds = inner, 0.0

        def __call__(self, generated: Sequence[int]) -> Any:
            t = time.perf_counter()
            out = self.inner(generated)
            self.seconds += time.perf_counter() - t
            return out

    rows = []
    for arm, allowed in (("free", None), ("constrained", Timed(grammar))):
        t = time.perf_counter()
        samples = sample_text(
            lm,
            texts,
            n=1,
            temperature=1.0,
            top_k=None,
            top_p=None,
            max_new_tokens=args.max_new_tokens,
            seed=0,
            stop_token_ids=stops,
            allowed_token_ids=allowed,
            batch_size=args.batch_size,
        )
        wall = time.perf_counter() - t
        verdicts = [filter_record({"answer": s.text, "finish_reason": s.finish_reason}) for s in samples]
        tokens = sum(len(s.token_ids) for s in samples)
        masses = [s.allowed_mass for s in samples if s.allowed_mass]
        rows.append(
            {
                "arm": arm,
                "answers": len(samples),
                "answer_tokens": tokens,
                "seconds": round(wall, 1),
                "tokens_per_second": round(tokens / wall, 1),
                "keep_rate": sum(v["kept"] for v in verdicts) / len(verdicts),
                "reasons": dict(Counter(v["reason"] for v in verdicts)),
                "allowed_mass_first": round(sum(m[0] for m in masses) / len(masses), 3) if masses else None,
                "allowed_mass_per_token": round(sum(sum(m) / len(m) for m in masses) / len(masses), 3)
                if masses
                else None,
                "grammar_seconds": round(allowed.seconds, 2) if isinstance(allowed, Timed) else None,
            }
        )
    print(
        json.dumps(
            {
                "threads": args.threads,
                "prompts": args.prompts,
                "grammar_build_seconds": round(build_seconds, 2),
                "allowed_tokens": len(grammar.pieces),
                "arms": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
