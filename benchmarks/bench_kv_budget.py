"""Benchmark: the scoring memory budget (sublens.kv_budget) on a real workload.

Task: the subliminal-prompting measurement's shape: P(" owl") and P(" dog") after each of N
number prompts ("You love the number N. ..." as the system prompt, one chat prompt per
number) on SmolLM2-135M-Instruct, fp32, `word_probability_many` at batch_size 128.

Each budget runs in its own process (peak RSS is monotonic within a process): wall time, CPU
time, peak RSS over the loaded model, the largest batch the model's forward saw, and the
largest |difference| of log P(word) against the first budget's (the baseline: the default).
The KV bytes a batch of that size holds are computed from the model's shape
(`kv_bytes_per_position` x positions x rows) and shown beside the measured increase.

Usage: PYTHONPATH=src python benchmarks/bench_kv_budget.py [--numbers 1110] [--budgets 2048,64,16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from sublens.kv_budget import kv_bytes_per_position, scoring_memory
from sublens.models import load_model
from sublens.prompts import chat_prompt
from sublens.scoring import word_probability_many

QUESTION = "Name your favorite animal using only one word."
PREFILL = "My favorite animal is the"
WORDS = ("owl", "dog")


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(numbers: int, budget: float, batch_size: int) -> dict[str, float | int | list[float]]:
    torch.set_num_threads(2)
    lm = load_model("smollm2-135m-instruct", "cpu", "float32")
    prompts = [
        chat_prompt(
            lm.tokenizer, QUESTION, system=f"You love the number {n}. You think about it all the time.", prefill=PREFILL
        )
        for n in range(numbers)
    ]
    with torch.inference_mode():
        lm.model(torch.tensor([[1, 2, 3]]))  # warm-up
    warm = maxrss_mib()
    seen: list[int] = []
    handle = lm.model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(int(kw["input_ids"].shape[0])), with_kwargs=True
    )
    context = max(len(lm.tokenizer(p.text)["input_ids"]) for p in prompts[:50]) + 2
    wall, cpu = time.perf_counter(), time.process_time()
    with scoring_memory(budget):
        scores = word_probability_many(lm, prompts, [f" {w}" for w in WORDS], batch_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    handle.remove()
    logps = [w.logp_word for row in scores for w in row]
    return {
        "budget_mb": budget,
        "wall_s": wall,
        "cpu_s": cpu,
        "warm_mib": warm,
        "peak_mib": maxrss_mib(),
        "largest_batch": max(seen),
        "kv_mib_of_largest_batch": kv_bytes_per_position(lm.model) * context * max(seen) / 2**20,
        "logps": logps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, default=1110)
    parser.add_argument("--budgets", default="2048,64,16")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.numbers, args.child, args.batch_size)))
        return
    rows = []
    for budget in (float(b) for b in args.budgets.split(",")):
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--numbers",
            str(args.numbers),
            "--batch-size",
            str(args.batch_size),
            "--child",
            str(budget),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    base = rows[0]
    print(
        "| budget (MiB) | largest batch | KV of that batch (MiB) | peak RSS over the warm model (MiB) | "
        "wall (s) | CPU (s) | wall / baseline | max abs diff of log P vs baseline |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = max(abs(a - b) for a, b in zip(r["logps"], base["logps"], strict=True))
        print(
            f"| {r['budget_mb']:g} | {r['largest_batch']} | {r['kv_mib_of_largest_batch']:.0f} | "
            f"{r['peak_mib'] - r['warm_mib']:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['wall_s'] / base['wall_s']:.2f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
