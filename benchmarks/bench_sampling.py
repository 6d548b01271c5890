"""Teacher-data generation on the embedded SmolLM2 against its batched-forward bound.

Format-constrained sampling at temperature 1 under the owl system prompt, prompts ordered as the
experiment shards them. Counts every forward pass (prefill and decode) and the rows in it, then
measures, in the same run, how fast this machine runs a full batch: prefill tokens/s on
[batch, padded length] and decode tokens/s of one step at [batch, 1] with a cache of that length.
The bound is the time those two would need for the same tokens with every batch full:

    bound = prefill tokens / prefill speed + new tokens / full-batch decode speed

With the prompts' common head shared (the default; --no-prefix to compare), prefill counts the
head once. Prints wall time, new tokens/s, decode occupancy (mean rows per decode step / batch size), the
bound and wall / bound.

Run:  PYTHONPATH=src python benchmarks/bench_sampling.py [--prompts 120] [--batch-size 64] [--pad-multiple 32]
      [--answers FILE]   (the samples' token ids, to compare two versions of the sampler)
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pad-multiple", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-prefix", action="store_true", help="do not share the prompts' common head")
    parser.add_argument("--answers", help="also write every sample's token ids to this JSON file (to compare samplers)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from sublens.models import load_model
    from sublens.number_data import make_number_prompts
    from sublens.prompts import encode_prompt, make_prompt
    from sublens.scoring import (
        _forward,
        default_stop_token_ids,
        padded_length,
        sample_text,
        shared_prefix,
    )
    from sublens.settings import OWL_TEACHER_SYSTEM
    from sublens.subliminal import NumberFormat, shard_order

    lm = load_model("smollm2-135m-instruct", device="cpu")
    prompts = make_number_prompts(args.prompts, seed=0)
    texts = [make_prompt(lm.tokenizer, p.text, OWL_TEACHER_SYSTEM) for p in prompts]
    texts = [texts[i] for i in shard_order(lm.tokenizer, texts)]
    stops = default_stop_token_ids(lm)
    encoded = [encode_prompt(lm.tokenizer, t) for t in texts]
    head = [] if args.no_prefix else shared_prefix(encoded)
    grammar = NumberFormat(lm.tokenizer, stops)
    calls: list[tuple[int, int]] = []  # (rows, tokens per row) of every forward pass
    inner = lm.model.forward

    def counted(*a: Any, **kw: Any) -> Any:
        ids = kw["input_ids"]
        calls.append((int(ids.shape[0]), int(ids.shape[1])))
        return inner(*a, **kw)

    lm.model.forward = counted  # type: ignore[method-assign]
    started = time.perf_counter()
    samples = sample_text(
        lm,
        texts,
        n=1,
        temperature=1.0,
        top_k=None,
        top_p=None,
        max_new_tokens=64,
        seed=0,
        stop_token_ids=stops,
        allowed_token_ids=grammar,
        batch_size=args.batch_size,
        pad_multiple=args.pad_multiple,
        prefix=head,
    )
    wall = time.perf_counter() - started
    lm.model.forward = inner  # type: ignore[method-assign]
    if args.answers:
        with open(args.answers, "w") as f:
            json.dump([list(s.token_ids) for s in samples], f)
    prefill_tokens = sum(r * t for r, t in calls if t > 1)
    decode = [r for r, t in calls if t == 1]
    new_tokens = sum(len(s.token_ids) + (s.finish_reason == "stop") for s in samples)

    width = max(padded_length(len(e) - len(head), args.pad_multiple) for e in encoded)
    batch = args.batch_size
    ids = torch.randint(0, 1000, (batch, width))
    with torch.inference_mode():
        start = time.perf_counter()
        _, cache = _forward(lm.model, ids)
        prefill_speed = batch * width / (time.perf_counter() - start)
        step = torch.randint(0, 1000, (batch, 1))
        lm.model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
        start = time.perf_counter()
        for _ in range(5):
            lm.model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
        decode_speed = 5 * batch / (time.perf_counter() - start)
    bound = prefill_tokens / prefill_speed + new_tokens / decode_speed
    print(
        json.dumps(
            {
                "prompts": args.prompts,
                "shared_prefix_tokens": len(head),
                "batch_size": batch,
                "pad_multiple": args.pad_multiple,
                "threads": args.threads,
                "wall_seconds": round(wall, 1),
                "new_tokens": new_tokens,
                "new_tokens_per_second": round(new_tokens / wall, 1),
                "prefill_tokens": prefill_tokens,
                "decode_steps": len(decode),
                "decode_occupancy": round(sum(decode) / (len(decode) * batch), 3) if decode else None,
                "full_batch_prefill_tokens_per_second": round(prefill_speed),
                "full_batch_decode_tokens_per_second": round(decode_speed),
                "bound_seconds": round(bound, 1),
                "bound_over_wall": round(bound / wall, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
