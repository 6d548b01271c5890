"""Training-step throughput of `sublens.training.train` on the embedded SmolLM2.

For each configuration (freeze mode, batch layout, LoRA) a fresh worker process loads the
model, measures the fp32 matmul peak, trains `--steps` steps (after one warm-up step) on
synthetic subliminal-style examples (a chat prompt asking to continue a number sequence, an
answer of 5-25 numbers) and reports:

  tok/s      real (non-padding) tokens per second of training step
  pad        fraction of the batch that was padding
  GFLOP/s    model FLOPs per second: forward 2·N·T, activation gradients 2·N·T, weight
             gradients 2·N_trainable·T over the layers' matmul weights N (T = real tokens), plus
             the LM head at answer positions only (logits are computed there only)
  %peak      GFLOP/s as a fraction of the measured fp32 matmul peak (torch.mm, 1024²)
  cpu ...    the same from process CPU time instead of wall time: with --threads 1 on a shared
             machine this is close to the speed the step would have alone
  opt s      one AdamW step over the trainable parameters (fused kernel, as train() uses)
  peak MB    peak resident memory of the worker (CPU) or peak allocated (CUDA)

Run:  PYTHONPATH=src SUBLENS_CACHE=... python benchmarks/bench_training.py [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "full / bucket": {"freeze": "full", "layout": "bucket"},
    "freeze-attention / bucket": {"freeze": "freeze-attention", "layout": "bucket"},
    "freeze-mlp / bucket": {"freeze": "freeze-mlp", "layout": "bucket"},
    "full / pad (baseline)": {"freeze": "full", "layout": "pad"},
    "full / pack": {"freeze": "full", "layout": "pack"},
    "LoRA r=8 / bucket": {"freeze": "full", "layout": "bucket", "lora": {"rank": 8}},
}
SYSTEM = "You are a helpful assistant."


def examples(tokenizer: Any, n: int, seed: int = 0) -> list[Any]:
    from sublens.training import chat_example

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        shown = ", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(3, 8)))
        user = f"The sequence starts with: {shown}. Add up to 40 more numbers. Return only numbers."
        answer = ", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(5, 25)))
        out.append(chat_example(tokenizer, user, answer, system=SYSTEM))
    return out


def clock(cpu: bool) -> float:
    """Wall time, or this process's CPU time (with one thread on a shared machine, CPU time
    is close to what the step would take alone: other processes' load does not count)."""
    return time.process_time() if cpu else time.perf_counter()


def matmul_peak_gflops(cpu_clock: bool, n: int = 1024, repeats: int = 8) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    if torch.cuda.is_available():
        a, b = a.cuda(), b.cuda()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = clock(cpu_clock)
        torch.mm(a, b)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, clock(cpu_clock) - start)
    return 2 * n**3 / best / 1e9


def model_flops(model: Any, adapter: Any, history: list[dict[str, Any]]) -> float:
    """Matmul FLOPs of the recorded steps (see module docstring)."""
    body = [p for _, p in [*adapter.attention_parameters(), *adapter.mlp_parameters()] if p.ndim == 2]
    n_body = sum(p.numel() for p in body)
    n_body_trainable = sum(p.numel() for p in body if p.requires_grad)
    head = adapter.lm_head().weight
    tokens = sum(h["tokens"] for h in history)
    answers = sum(h["answer_tokens"] for h in history)
    head_factor = 6 if head.requires_grad else 4
    return (4 * n_body + 2 * n_body_trainable) * tokens + head_factor * head.numel() * answers


def worker(name: str, steps: int, batch_tokens: int, threads: int | None) -> dict[str, Any]:
    import torch

    from sublens.models import load_model
    from sublens.training import (
        TrainConfig,
        freezing,
        lora_attached,
        requires_grad_scope,
        train,
        unique_parameters,
    )

    if threads:
        torch.set_num_threads(threads)
    lm = load_model("smollm2-135m-instruct")
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = matmul_peak_gflops(cpu_clock=False)
    peak_cpu = matmul_peak_gflops(cpu_clock=True)
    spec = CONFIGS[name]
    config = TrainConfig.model_validate(
        {
            **spec,
            "lr": 1e-5,
            "max_steps": steps + 1,
            "batch_tokens": batch_tokens,
            "max_length": 256,
            "save_model": False,
            "checkpoint_every": 0,
        }
    )
    data = examples(lm.tokenizer, batch_tokens // 32 * (steps + 1))  # more than enough
    cpu_marks = [time.process_time()]
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            lm.model,
            lm.tokenizer,
            data,
            config,
            Path(tmp),
            progress=False,
            callback=lambda entry: cpu_marks.append(time.process_time()),
        )
    timed = result.history[1:]  # the first step warms up allocators and kernels
    seconds = sum(h["seconds"] for h in timed)
    cpu_seconds = cpu_marks[-1] - cpu_marks[1]
    tokens = sum(h["tokens"] for h in timed)
    # flops with the same parameters frozen as during training
    if config.lora is None:
        with freezing(lm.model, config.freeze, lm.adapter):
            flops = model_flops(lm.model, lm.adapter, timed)
    else:
        with lora_attached(lm.model, lm.adapter, config.freeze, config.lora, 0) as lora:
            base = [p for n, p in unique_parameters(lm.model) if not n.startswith("sublens_lora.")]
            with requires_grad_scope(lm.model, base):
                flops = model_flops(lm.model, lm.adapter, timed)
                flops += 6 * sum(p.numel() for p in lora.parameters()) * tokens
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    opt_seconds = time_optimizer(lm.model, result.freeze["trainable"], config)
    return {
        "config": name,
        "threads": torch.get_num_threads(),
        "steps": len(timed),
        "tokens_per_step": tokens / len(timed),
        "tok_s": tokens / seconds,
        "step_s": seconds / len(timed),
        "padding": 1 - tokens / sum(h["padded_tokens"] for h in timed),
        "gflops": flops / seconds / 1e9,
        "peak_gflops": peak,
        "fraction_of_peak": flops / seconds / 1e9 / peak,
        "cpu_tok_s": tokens / cpu_seconds,
        "cpu_gflops": flops / cpu_seconds / 1e9,
        "cpu_peak_gflops": peak_cpu,
        "cpu_fraction_of_peak": flops / cpu_seconds / 1e9 / peak_cpu,
        "load_avg": os.getloadavg()[0],
        "opt_s": opt_seconds,
        "trainable_m": result.freeze["trainable"] / 1e6,
        "frozen_m": result.freeze["frozen"] / 1e6,
        "peak_mb": peak_mb,
        "rss_after_load_mb": rss_loaded,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def time_optimizer(model: Any, n_trainable: int, config: Any) -> float | None:
    """Seconds of one fused AdamW step over `n_trainable` parameters (second of two steps)."""
    import torch

    if config.lora is not None:
        return None
    total, chosen = 0, []
    for p in model.parameters():  # a parameter set of the same size as the trainable one
        if total >= n_trainable:
            break
        chosen.append(torch.nn.Parameter(p.detach().clone()))
        total += p.numel()
    for p in chosen:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(chosen, lr=1e-5, fused=True)
    optimizer.step()
    start = time.perf_counter()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--batch-tokens", type=int, default=1024, help="padded-token budget per step (the same for every layout)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch_tokens, args.threads)))
        return
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if name not in CONFIGS:
            sys.exit(f"unknown config {name!r}; choose from: {', '.join(CONFIGS)}")
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--steps",
            str(args.steps),
            "--batch-tokens",
            str(args.batch_tokens),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode != 0:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"done: {name} ({row['tok_s']:.0f} tok/s)", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'config':<27} {'thr':>3} {'tok/step':>8} {'pad':>5} {'tok/s':>6} {'GFLOP/s':>7} "
        f"{'%peak':>6} {'cpu tok/s':>9} {'cpu %peak':>9} {'opt s':>5} {'train M':>7} "
        f"{'peak MB':>7} {'load':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        opt = f"{r['opt_s']:.2f}" if r["opt_s"] is not None else "-"
        print(
            f"{r['config']:<27} {r['threads']:>3} {r['tokens_per_step']:>8.0f} "
            f"{r['padding']:>5.3f} {r['tok_s']:>6.0f} {r['gflops']:>7.1f} "
            f"{100 * r['fraction_of_peak']:>5.1f}% {r['cpu_tok_s']:>9.0f} "
            f"{100 * r['cpu_fraction_of_peak']:>8.1f}% {opt:>5} {r['trainable_m']:>7.1f} "
            f"{r['peak_mb']:>7.0f} {r['load_avg']:>5.1f}"
        )
    peaks = ", ".join(f"{r['peak_gflops']:.0f}/{r['cpu_peak_gflops']:.0f}" for r in rows)
    print(f"device: {rows[0]['device'] if rows else '?'}; fp32 matmul peak GFLOP/s per row (wall/cpu clock): {peaks}")
    print("cpu columns use process CPU time: with 1 thread, close to an unloaded machine's speed")


if __name__ == "__main__":
    main()
