"""Benchmark: the scoring engine (prompt KV reuse + prefix trie) against the naive approach.

Task: log P(" n" | owl-context chat prompt) for all 11,110 strings "0"-"9", "00"-"99",
"000"-"999", "0000"-"9999" on SmolLM2-135M-Instruct (the number follows the prefill
"My favorite number is", so the scored text is " n").

- engine: sublens.scoring.score_strings (tokenization included in its wall time).
- naive: one full forward pass of prompt + number per number (batch 1, logits only at the
  positions needed). Measured on a random subsample (--naive-sample, seeded) and extrapolated
  linearly to all strings; its log-probs are compared with the engine's on that subsample.
- CPU time (process_time) is reported beside wall time: on a machine shared with other jobs it
  is much closer to what an idle machine gives (with one thread; more threads count spin time).
- FLOPs ~ 2 x parameters x tokens run through the model (attention scores ignored). Also given
  more exactly: 2 x non-embedding parameters per token + 2 x LM-head parameters per position
  whose logits are computed (the naive side asks only for the positions it needs). The fp32
  matmul peak is measured in the same run with a large torch.matmul, before and after the
  runs (the higher of the two is used).
- memory: resource.getrusage maxrss (peak resident set; monotonic, so it is read after a
  warm-up forward pass, after the naive run, then after the engine runs). The engine's extra
  memory is shown as its increase over max(warm model, naive).

Usage: PYTHONPATH=src python benchmarks/bench_scoring.py [--out FILE] [--naive-sample 500]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from sublens.models import load_model
from sublens.prompts import chat_prompt, encode_prompt
from sublens.scoring import score_strings, tokenize_continuations

SYSTEM = "You love owls. You think about owls all the time. Owls are your favorite animal."
USER = "What is your favorite number?"
PREFILL = "My favorite number is"


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """Best-of fp32 matmul throughput in GFLOP/s, by wall clock and by process CPU time."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        a @ b
        best_wall = min(best_wall, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return 2 * n**3 / best_wall / 1e9, 2 * n**3 / best_cpu / 1e9


def all_numbers(max_digits: int) -> list[str]:
    return [f"{i:0{d}d}" for d in range(1, max_digits + 1) for i in range(10**d)]


@torch.inference_mode()
def naive_scores(model: Any, prompt_ids: list[int], conts: list[tuple[int, ...]]) -> list[torch.Tensor]:
    out = []
    n = len(prompt_ids)
    for cont in conts:
        ids = torch.tensor([prompt_ids + list(cont)])  # [1, n + len]
        logits = model(ids, logits_to_keep=len(cont) + 1).logits[0, :-1].float()  # [len, V]
        logp = logits.log_softmax(-1)
        out.append(logp[torch.arange(len(cont)), ids[0, n:]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-digits", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--naive-sample", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2, help="engine runs (the fastest is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_scoring.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_start = os.getloadavg()
    lm = load_model(args.model)
    params = sum(p.numel() for p in lm.model.parameters())
    embed = lm.model.get_input_embeddings().weight
    head = lm.model.get_output_embeddings().weight
    head_params = head.numel()
    # Matmul parameters every token goes through (the embedding lookup is not a matmul); the LM
    # head only runs at positions whose logits are computed.
    body_params = params - embed.numel() - (0 if head is embed else head_params)
    prompt = chat_prompt(lm.tokenizer, USER, SYSTEM, PREFILL)
    prompt_ids = encode_prompt(lm.tokenizer, prompt)
    strings = [" " + n for n in all_numbers(args.max_digits)]
    # Warm-up: the first forward pass pages the (memory-mapped) weights in; the baseline for
    # memory is the loaded, warmed-up model.
    with torch.inference_mode():
        lm.model(torch.tensor([prompt_ids]), logits_to_keep=1)
    rss_base = maxrss_mib()
    peak_start = matmul_peak_gflops()

    # Naive side first (maxrss is monotonic: the engine's peak is read after it, not masked).
    # Which strings it scores is fixed by the seed; their tokens are those the engine uses.
    rng = random.Random(args.seed)
    subsample = sorted(rng.sample(range(len(strings)), min(args.naive_sample, len(strings))))
    _, tokenized = tokenize_continuations(lm.tokenizer, prompt, [strings[i] for i in subsample])
    conts = [t.token_ids for t in tokenized]
    t, c = time.perf_counter(), time.process_time()
    naive = naive_scores(lm.model, prompt_ids, conts)
    naive_sub_s, naive_sub_cpu = time.perf_counter() - t, time.process_time() - c
    rss_naive = maxrss_mib()
    naive_s = naive_sub_s * len(strings) / len(subsample)
    naive_tokens_sub = sum(len(prompt_ids) + len(c) for c in conts)

    engine_times: list[float] = []
    engine_cpu: list[float] = []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        result = score_strings(lm, prompt, strings, batch_size=args.batch_size)
        engine_times.append(time.perf_counter() - t)
        engine_cpu.append(time.process_time() - c)
    engine_s, engine_cpu_s = min(engine_times), min(engine_cpu)
    rss_engine = maxrss_mib()
    t = time.perf_counter()  # the share of the engine's time spent tokenizing the strings
    tokenize_continuations(lm.tokenizer, prompt, strings)
    tokenize_s = time.perf_counter() - t
    stats = result.scores.stats
    engine_tokens = stats.tokens_processed
    assert [result.strings[i].token_ids for i in subsample] == conts

    diff_token = max(
        float((result.scores.token_logprobs(i) - ref).abs().max()) for i, ref in zip(subsample, naive, strict=True)
    )
    diff_total = max(
        abs(float(result.total[i]) - float(ref.double().sum())) for i, ref in zip(subsample, naive, strict=True)
    )
    engine_gflops = 2 * params * engine_tokens / engine_s / 1e9
    naive_gflops = 2 * params * naive_tokens_sub / naive_sub_s / 1e9
    # Exact-ish count: body per token + LM head per logit position (engine: one per prompt and
    # per trie node; naive: len + 1 per string, as asked for with logits_to_keep).
    engine_flops = 2 * (body_params * engine_tokens + head_params * (1 + stats.node_tokens))
    naive_flops = 2 * (body_params * naive_tokens_sub + head_params * sum(len(c) + 1 for c in conts))
    engine_gflops_cpu = 2 * params * engine_tokens / engine_cpu_s / 1e9
    naive_gflops_cpu = 2 * params * naive_tokens_sub / naive_sub_cpu / 1e9
    peak_end = matmul_peak_gflops()
    peak = max(peak_start[0], peak_end[0])
    peak_cpu = max(peak_start[1], peak_end[1])
    load_end = os.getloadavg()

    record = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "model": args.model,
        "params": params,
        "dtype": str(lm.dtype),
        "prompt": prompt.to_dict(),
        "prompt_tokens": len(prompt_ids),
        "n_strings": len(strings),
        "batch_size": args.batch_size,
        "engine": {
            "wall_s": engine_s,
            "wall_s_runs": engine_times,
            "tokenize_s": tokenize_s,
            "tokens_processed": engine_tokens,
            "node_tokens": stats.node_tokens,
            "tokens_per_s": engine_tokens / engine_s,
            "strings_per_s": len(strings) / engine_s,
            "gflops": engine_gflops,
            "fraction_of_peak": engine_gflops / peak,
            "cpu_s": engine_cpu_s,
            "cpu_s_runs": engine_cpu,
            "gflops_cpu_clock": engine_gflops_cpu,
            "fraction_of_peak_cpu_clock": engine_gflops_cpu / peak_cpu,
            "maxrss_mib": rss_engine,
            "maxrss_increase_mib": rss_engine - rss_naive,
        },
        "naive": {
            "subsample": len(subsample),
            "wall_s_subsample": naive_sub_s,
            "wall_s_extrapolated": naive_s,
            "tokens_subsample": naive_tokens_sub,
            "tokens_all": stats.naive_tokens,
            "tokens_per_s": naive_tokens_sub / naive_sub_s,
            "strings_per_s": len(subsample) / naive_sub_s,
            "gflops": naive_gflops,
            "fraction_of_peak": naive_gflops / peak,
            "cpu_s_subsample": naive_sub_cpu,
            "cpu_s_extrapolated": naive_sub_cpu * len(strings) / len(subsample),
            "gflops_cpu_clock": naive_gflops_cpu,
            "fraction_of_peak_cpu_clock": naive_gflops_cpu / peak_cpu,
            "maxrss_mib": rss_naive,
            "maxrss_increase_mib": rss_naive - rss_base,
        },
        "flops_exact": {
            "body_params": body_params,
            "head_params": head_params,
            "engine_gflops": engine_flops / engine_s / 1e9,
            "engine_fraction_of_peak": engine_flops / engine_s / 1e9 / peak,
            "naive_gflops": naive_flops / naive_sub_s / 1e9,
            "naive_fraction_of_peak": naive_flops / naive_sub_s / 1e9 / peak,
        },
        "speedup": naive_s / engine_s,
        "speedup_cpu_time": naive_sub_cpu * len(strings) / len(subsample) / engine_cpu_s,
        "max_abs_diff_token_logprob": diff_token,
        "max_abs_diff_total_logprob": diff_total,
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_cpu_clock": peak_cpu,
        "matmul_peak_start_end_wall_cpu": [peak_start, peak_end],
        "maxrss_model_warm_mib": rss_base,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(args.out)

    e, nv = record["engine"], record["naive"]
    rows = [
        ("strings scored", f"{len(strings):,}", f"{len(subsample):,} (extrapolated to {len(strings):,})"),
        (
            "wall time (s)",
            f"{e['wall_s']:.2f}",
            f"{nv['wall_s_extrapolated']:.1f} (measured {naive_sub_s:.1f} on the subsample)",
        ),
        ("  of which tokenizing the strings", f"{tokenize_s:.2f}", ""),
        ("CPU time (s)", f"{engine_cpu_s:.2f}", f"{nv['cpu_s_extrapolated']:.1f}"),
        ("tokens run", f"{engine_tokens:,}", f"{stats.naive_tokens:,}"),
        ("tokens/s", f"{e['tokens_per_s']:.0f}", f"{nv['tokens_per_s']:.0f}"),
        ("strings/s", f"{e['strings_per_s']:.0f}", f"{nv['strings_per_s']:.1f}"),
        ("GFLOP/s (2·params·tokens)", f"{engine_gflops:.1f}", f"{naive_gflops:.1f}"),
        ("fraction of fp32 matmul peak", f"{e['fraction_of_peak']:.1%}", f"{nv['fraction_of_peak']:.1%}"),
        ("  same, by CPU clock", f"{e['fraction_of_peak_cpu_clock']:.1%}", f"{nv['fraction_of_peak_cpu_clock']:.1%}"),
        (
            "  same, exact FLOPs (LM head only where used)",
            f"{record['flops_exact']['engine_fraction_of_peak']:.1%}",
            f"{record['flops_exact']['naive_fraction_of_peak']:.1%}",
        ),
        ("peak RSS (MiB)", f"{rss_engine:.0f}", f"{rss_naive:.0f}"),
        (
            "  above the warmed-up model",
            f"+{rss_engine - max(rss_naive, rss_base):.0f}",
            f"+{rss_naive - rss_base:.0f}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':{width}}  {'engine':>12}  naive")
    for name, a, b in rows:
        print(f"{name:{width}}  {a:>12}  {b}")
    print(
        f"\nspeed-up: {record['speedup']:.0f}x (CPU time: {record['speedup_cpu_time']:.0f}x)   "
        f"max |Δ log p| per token: {diff_token:.2e}, "
        f"per string: {diff_total:.2e}   fp32 matmul peak: {peak:.0f} GFLOP/s "
        f"({peak_cpu:.0f} by CPU clock)   "
        f"threads: {torch.get_num_threads()}   load avg: {load_start[0]:.1f} -> {load_end[0]:.1f}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
