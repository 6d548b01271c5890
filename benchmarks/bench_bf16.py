"""What bf16 autocast buys and costs on this CPU: float32 against bf16 in the same run.

On the embedded SmolLM2-135M-Instruct, one thread, every figure timed on this process's CPU
clock (on a shared machine, one thread's CPU time is close to what the work would take alone):

  matmul     torch.mm of 1,024 x 576 by 576 x 1,536 (an MLP projection's shape at a batch of
             1,024 tokens): GFLOP/s in float32 and in bfloat16 (the hardware bound of each)
  forward    a [8, 128] forward pass (logits at every position): tokens/s under float32 and
             under torch.autocast(bfloat16); and what precision costs a score: the largest and
             the median |log P(token)| difference over the tokens float32 gives P > 1e-3 at
             each position, and the share of positions whose most likely token is the same
  train      `sublens.training.train` steps (full fine-tuning, AdamW, bucketed chat examples of
             number sequences): real tokens/s with mixed_precision "no" and "bf16" (float32
             master weights and optimizer state in both), and the loss after the timed steps
  sample     `sublens.scoring.sample_text` of number answers under the owl system prompt at
             temperature 1 (format-constrained, as the teacher data is made): new tokens/s under
             float32 and under autocast, and the share of answers identical to float32's

Only CPUs with native bf16 (avx512_bf16 or AMX) are worth measuring: elsewhere PyTorch emulates
bf16 matmuls and they run several times slower than float32 (benchmarks/README.md).

Run:  PYTHONPATH=src python benchmarks/bench_bf16.py [--steps 6] [--prompts 48]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from bench_training import examples


def cpu_seconds(work: Any, repeats: int = 1) -> float:
    """The fastest of `repeats` runs of work(), in this process's CPU seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def autocast(on: bool) -> AbstractContextManager[Any]:
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if on else nullcontext()


def matmul_gflops(dtype: Any) -> float:
    import torch

    a, b = torch.randn(1024, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    torch.mm(a, b)
    seconds = cpu_seconds(lambda: torch.mm(a, b), repeats=8)
    return 2 * 1024 * 576 * 1536 / seconds / 1e9


def forward(lm: Any) -> dict[str, float]:
    import torch

    ids = torch.randint(0, lm.tokenizer.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))
    logp: dict[bool, torch.Tensor] = {}
    speed: dict[bool, float] = {}
    with torch.inference_mode():
        for bf16 in (False, True):
            with autocast(bf16):

                def run(bf16: bool = bf16) -> None:
                    logp[bf16] = torch.log_softmax(lm.model(input_ids=ids).logits.float(), dim=-1)

                run()  # warm-up
                speed[bf16] = ids.numel() / cpu_seconds(run, repeats=3)
    likely = logp[False] > math.log(1e-3)  # the tokens a score or a sample can turn on
    return {
        "fp32_tok_s": speed[False],
        "bf16_tok_s": speed[True],
        "bf16_over_fp32": speed[True] / speed[False],
        "max_abs_logp_difference_p_over_1e-3": float((logp[True] - logp[False])[likely].abs().max()),
        "median_abs_logp_difference_p_over_1e-3": float((logp[True] - logp[False])[likely].abs().median()),
        "same_argmax": float((logp[True].argmax(-1) == logp[False].argmax(-1)).float().mean()),
    }


def train_steps(precision: str, steps: int) -> dict[str, float]:
    from sublens.models import load_model
    from sublens.training import TrainConfig, train

    lm = load_model("smollm2-135m-instruct", device="cpu")  # fresh weights for each precision
    config = TrainConfig.model_validate(
        {
            "lr": 1e-5,
            "max_steps": steps + 1,
            "batch_size": 8,
            "layout": "bucket",
            "max_length": 256,
            "mixed_precision": precision,
            "save_model": False,
            "checkpoint_every": 0,
        }
    )
    marks = [time.process_time()]
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            lm.model,
            lm.tokenizer,
            examples(lm.tokenizer, 8 * (steps + 1)),
            config,
            Path(tmp),
            progress=False,
            callback=lambda entry: marks.append(time.process_time()),
        )
    timed = result.history[1:]  # the first step warms up allocators and kernels
    return {
        "tok_s": sum(h["tokens"] for h in timed) / (marks[-1] - marks[1]),
        "last_loss": timed[-1]["lm_loss"],
        "precision": result.precision,
    }


def sampling(lm: Any, n_prompts: int) -> dict[str, float]:
    from sublens.number_data import make_number_prompts
    from sublens.prompts import make_prompt
    from sublens.scoring import default_stop_token_ids, sample_text
    from sublens.settings import OWL_TEACHER_SYSTEM
    from sublens.subliminal import NumberFormat

    texts = [make_prompt(lm.tokenizer, p.text, OWL_TEACHER_SYSTEM) for p in make_number_prompts(n_prompts, seed=0)]
    stops = default_stop_token_ids(lm)
    grammar = NumberFormat(lm.tokenizer, stops)
    answers: dict[bool, list[Any]] = {}
    speed: dict[bool, float] = {}
    for bf16 in (False, True):

        def run(bf16: bool = bf16) -> None:
            with autocast(bf16):
                answers[bf16] = sample_text(
                    lm,
                    texts,
                    n=1,
                    temperature=1.0,
                    top_k=None,
                    top_p=None,
                    max_new_tokens=48,
                    seed=0,
                    stop_token_ids=stops,
                    allowed_token_ids=grammar,
                    batch_size=32,
                )

        seconds = cpu_seconds(run)
        speed[bf16] = sum(len(s.token_ids) for s in answers[bf16]) / seconds
    same = sum(a.text == b.text for a, b in zip(answers[False], answers[True], strict=True))
    return {
        "fp32_new_tok_s": speed[False],
        "bf16_new_tok_s": speed[True],
        "bf16_over_fp32": speed[True] / speed[False],
        "identical_answers": same / len(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per precision")
    parser.add_argument("--prompts", type=int, default=48, help="prompts sampled per precision")
    args = parser.parse_args()

    import torch

    from sublens.models import load_model
    from sublens.models.device import cpu_has_native_bf16

    torch.set_num_threads(1)
    lm = load_model("smollm2-135m-instruct", device="cpu")
    fp32_train = train_steps("no", args.steps)
    bf16_train = train_steps("bf16", args.steps)
    report = {
        "native_bf16": cpu_has_native_bf16(),
        "load_avg": os.getloadavg()[0],
        "matmul_gflops": {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)},
        "forward": forward(lm),
        "train": {
            "fp32": fp32_train,
            "bf16": bf16_train,
            "bf16_over_fp32": bf16_train["tok_s"] / fp32_train["tok_s"],
        },
        "sample": sampling(lm, args.prompts),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
