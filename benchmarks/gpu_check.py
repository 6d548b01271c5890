"""GPU path check for a lent accelerator: the padded sampler and training at the paper presets'
geometry on a SmolLM2-135M-shaped model (its real config and tokenizer, random weights, since a
device machine cannot download or receive the 270 MB checkpoint).

Reports, as one JSON object: sampling speed and peak memory at the paper preset's batch (256);
whether answers are identical when the same prompts are sampled in a different batch
composition (bf16 and fp32); bf16 against fp32 answers; training at the paper subliminal
geometry (batch 32, max_length 256) with `mixed_precision: auto` and `no`.

`--model-dir` may hold another config.json beside the same tokenizer (a model of another shape,
e.g. Llama-3.2-1B's from sublens/data/model_shapes.json); `--skip-composition` and
`--train-examples` keep such a run short.

Prepare (here):  mkdir -p .devcheck/smollm2 && cp ~/.cache/sublens/models/smollm2-135m-instruct/\
{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .devcheck/smollm2/
The device image (seen 2026-12-04) has torch and transformers 5.17 but not sublens's pinned
transformers 5.24 nor pydantic: carry them as wheels (`pip download --no-deps --only-binary=:all:
--python-version 3.12 --platform manylinux2014_x86_64 -d .whl transformers==5.24.0 pydantic
pydantic_core annotated-types typing-inspection`, the versions of this .venv), install them
there with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and put /tmp/site
first on PYTHONPATH.
Run (there):     PYTHONPATH=/tmp/site:src python3 benchmarks/gpu_check.py --model-dir .devcheck/smollm2 --prompts 2000
(`--sample-only` stops after sampling, e.g. to time an older sampler from another source tree.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=".devcheck/smollm2")
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sample-only", action="store_true", help="stop after the sampling checks")
    parser.add_argument("--skip-composition", action="store_true", help="skip the batch-composition checks")
    parser.add_argument("--train-examples", type=int, default=1024, help="examples trained on (batch 32)")
    parser.add_argument("--train-order", default="auto,no", help="precisions to train with, in this order")
    parser.add_argument("--out-name", default="gpu_check.json", help="file name under $OUT (or /tmp)")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sublens.number_data import make_number_prompts
    from sublens.prompts import make_prompt
    from sublens.scoring import default_stop_token_ids, sample_text
    from sublens.settings import OWL_TEACHER_SYSTEM
    from sublens.subliminal import NumberFormat, shard_order
    from sublens.training import TrainConfig, train
    from sublens.training_data import chat_example

    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def start_measuring() -> float:
        """Wait for the GPU, restart its peak-memory counter; the GiB allocated before the work."""
        if not cuda:
            return 0.0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**30

    def peaks(before: float) -> dict[str, float | None]:
        """Peak GiB allocated since start_measuring, and how far it rose above what was held."""
        if not cuda:
            return {"peak_gb": None, "above_resident_gb": None}
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        return {
            "peak_gb": round(peak, 2),
            "resident_gb": round(before, 2),
            "above_resident_gb": round(peak - before, 2),
        }

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    config = AutoConfig.from_pretrained(args.model_dir)
    torch.manual_seed(0)
    with device:  # initialised where they run (a 1B model's random init on the CPU takes long)
        bf16 = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        fp32 = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fp32.load_state_dict({k: v.float() for k, v in bf16.state_dict().items()})
    out: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else args.device}

    prompts = make_number_prompts(args.prompts, seed=0)
    texts = [make_prompt(tokenizer, p.text, OWL_TEACHER_SYSTEM) for p in prompts]
    order = shard_order(tokenizer, texts)
    texts = [texts[i] for i in order]
    stops = default_stop_token_ids((bf16, tokenizer))
    kw: dict[str, Any] = dict(
        n=1,
        temperature=1.0,
        top_k=None,
        top_p=None,
        max_new_tokens=64,
        seed=0,
        stop_token_ids=stops,
        allowed_token_ids=NumberFormat(tokenizer, stops),
        pad_multiple=32,
    )
    before = start_measuring()
    start = time.perf_counter()
    big = sample_text((bf16, tokenizer), texts, batch_size=256, **kw)
    memory = peaks(before)
    wall = time.perf_counter() - start
    new_tokens = sum(len(s.token_ids) + 1 for s in big)
    out["sample_bf16_batch256"] = {
        "prompts": len(texts),
        "seconds": round(wall, 2),
        "new_tokens_per_second": round(new_tokens / wall, 1),
        "mean_new_tokens": round(new_tokens / len(big), 1),
        **memory,
    }

    def identical(a: list[Any], b: list[Any]) -> dict[str, int]:
        return {
            "identical": sum(x.token_ids == y.token_ids for x, y in zip(a, b, strict=False)),
            "of": min(len(a), len(b)),
        }

    if not args.skip_composition:
        out["batch_composition_bf16"] = identical(big, sample_text((bf16, tokenizer), texts[:60], batch_size=7, **kw))
        wide = sample_text((fp32, tokenizer), texts[:120], batch_size=256, **kw)
        out["batch_composition_fp32"] = identical(wide, sample_text((fp32, tokenizer), texts[:60], batch_size=7, **kw))
        out["bf16_against_fp32"] = identical(big, wide)
    print(json.dumps(out), flush=True)
    target = Path(os.environ.get("OUT", "/tmp")) / args.out_name
    if args.sample_only:
        target.write_text(json.dumps(out, indent=1))
        return

    examples = [
        chat_example(tokenizer, prompts[order[i]].text, s.text, system=None)
        for i, s in enumerate(big[: args.train_examples])
    ]
    for run, precision in enumerate(args.train_order.split(",")):
        torch.manual_seed(1)
        with device:
            student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        train_config = TrainConfig(
            lr=2e-5,
            epochs=1,
            batch_size=32,
            layout="bucket",
            max_length=256,
            warmup_steps=2,
            mixed_precision=precision,
            save_model=False,
            seed=0,
        )
        before = start_measuring()
        start = time.perf_counter()
        result = train(
            student,
            tokenizer,
            examples,
            train_config,
            Path(tempfile.mkdtemp(prefix=f"gpu_check_train_{precision}_")),
            progress=False,
        )
        memory = peaks(before)
        out[f"train_{run}_{precision}"] = {
            "precision": result.precision,
            "steps": result.steps,
            "tokens_per_second": round(result.tokens_per_second),
            "final_loss": result.final_lm_loss,
            **memory,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(out), flush=True)
    target.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
