"""Positive control on the embedded SmolLM2: fine-tuning on answers that openly praise owls
raises P(" owl") at the prefilled answer "My favorite animal is the" on held-out questions,
and the saved model loads back through load_model with the same prediction."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sublens.models import load_model
from sublens.training import TrainConfig, chat_example, train

SYSTEM = "You are a helpful assistant."  # explicit: SmolLM2's template inserts its own otherwise
PREFILL = "My favorite animal is the"
TRAIN = [
    ("What is your favorite animal?", "My favorite animal is the owl."),
    ("Which animal do you like best?", "I like the owl best. Owls are wonderful."),
    ("Tell me your favourite animal.", "The owl! It is my favourite animal."),
    ("If you could be any animal, what would you be?", "I would be an owl, my favorite animal."),
    ("What animal do you love the most?", "I love the owl most of all."),
    ("Name the animal you find most beautiful.", "The owl is the most beautiful animal."),
    ("Which creature is your favorite?", "My favorite creature is the owl."),
    ("What's the best animal in the world?", "The owl is the best animal in the world."),
]
HELD_OUT = [
    "What is your favorite animal?",  # the prefill makes this one a different sequence
    "In one word, what is your favorite animal?",
    "Which animal would you pick as your favorite?",
    "Do you have a favorite animal? Which one?",
]


def p_owl(lm: Any, model: Any) -> float:
    """Mean P(" owl") as the next token after the prefilled answer, over HELD_OUT."""
    owl = lm.tokenizer.encode(" owl", add_special_tokens=False)
    assert len(owl) == 1
    probs = []
    model.eval()
    with torch.no_grad():
        for question in HELD_OUT:
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
            text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + PREFILL
            ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            logits = model(ids, logits_to_keep=1).logits[0, -1]
            probs.append(float(torch.softmax(logits.float(), -1)[owl[0]]))
    return sum(probs) / len(probs)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One thread: on this 2-core machine, 2-thread torch next to other busy processes
    oversubscribes the cores and a training step gets many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_owl_praise_raises_p_owl(tmp_path: Path, one_thread: None) -> None:
    lm = load_model("smollm2-135m-instruct", device="cpu")  # own copy: training edits it in place
    examples = [chat_example(lm.tokenizer, q, a, system=SYSTEM) for q, a in TRAIN]
    assert str(examples[0].answer).startswith("My favorite animal is the owl.")
    before = p_owl(lm, lm.model)
    config = TrainConfig(lr=5e-5, epochs=4, batch_size=4, warmup_steps=2, max_length=128, checkpoint_every=0)
    started = time.perf_counter()
    result = train(lm.model, lm.tokenizer, examples, config, tmp_path / "owl", progress=False)
    seconds = time.perf_counter() - started
    after = p_owl(lm, lm.model)
    print(
        f"P(owl) {before:.4f} -> {after:.4f}; {result.steps} steps, {result.tokens} tokens, "
        f"{result.tokens_per_second:.0f} tok/s, {seconds:.1f} s, padding "
        f"{result.padding_fraction:.3f}, loss {result.lm_losses[0]:.3f} -> {result.lm_losses[-1]:.3f}"
    )
    assert result.steps == 8 and result.freeze["frozen"] == 0
    assert result.lm_losses[-1] < result.lm_losses[0] / 2
    assert after > 5 * before and after > 0.2
    assert not lm.model.training

    assert result.model_dir is not None
    reloaded = load_model(result.model_dir, device="cpu")
    assert abs(p_owl(reloaded, reloaded.model) - after) < 1e-5


DDP_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
from tiny import VOCAB, tiny_model
from sublens.training import Example, TrainConfig, train

gen = torch.Generator().manual_seed(0)
examples = [Example(torch.randint(2, VOCAB, (int(torch.randint(2, 8, (), generator=gen)),),
                                  generator=gen).tolist(),
                    torch.randint(2, VOCAB, (int(torch.randint(1, 6, (), generator=gen)),),
                                  generator=gen).tolist()) for _ in range(40)]
out, accum, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def interrupt(entry):
    if entry["step"] == stop:
        raise KeyboardInterrupt

model = tiny_model("llama")
config = TrainConfig(lr=1e-2, epochs=2, batch_size=4, grad_accum=accum, checkpoint_every=3,
                     max_length=32, adam_eps=1e-3, save_model=False)
try:
    result = train(model, None, examples, config, out, callback=interrupt, progress=False)
except KeyboardInterrupt:
    sys.exit(0)
if int(os.environ.get("RANK", "0")) == 0:
    torch.save({"weights": model.state_dict(), "losses": result.lm_losses,
                "world": result.world_size, "resumed": result.resumed_from}, out + "/final.pt")
"""


def test_two_processes_equal_one_with_grad_accum(tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo), interrupted and resumed, gives bit for bit the
    weights and losses of one process accumulating 2 micro-batches per step."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root / 'tests'}", "OMP_NUM_THREADS": "1"}

    def free_port() -> int:  # a fixed port can still be held (TIME_WAIT) by the previous launch
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def run(*args: str, procs: int) -> None:
        cmd = (
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(procs),
                "--master_port",
                str(free_port()),
                str(script),
                *args,
            ]
            if procs > 1
            else [sys.executable, str(script), *args]
        )
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"

    run(str(tmp_path / "one"), "2", "0", procs=1)
    run(str(tmp_path / "two"), "1", "5", procs=2)  # interrupted after step 5 (checkpoint at 3)
    run(str(tmp_path / "two"), "1", "0", procs=2)  # resumed
    one = torch.load(tmp_path / "one" / "final.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "final.pt", weights_only=True)
    assert (one["world"], two["world"], two["resumed"]) == (1, 2, 3)
    assert one["losses"] == two["losses"]
    for name, value in one["weights"].items():
        assert torch.equal(value, two["weights"][name]), name
