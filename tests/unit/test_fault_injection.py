"""Fault injection with a real SIGKILL: sharded sampling, then checkpointed training, on tiny
random models in a separate process that is killed (kill -9: no exception, no `finally`, no
atexit) at seeded pseudo-random points over and over, and resumed each time. The resumed run
must end with the same bytes as an uninterrupted one (shards, checkpoint, final weights,
results up to wall-clock times) and no leftover temporary file.

Timing is deterministic: the driver below prints a marker line at every point of interest
(shard start / sampled / written, step start / end, checkpoint start / end, each file written
into a checkpoint's temporary folder, before and after every rename, before every file an
rmtree deletes) and waits for the test's "go"; the test SIGKILLs it at the marker it chose
instead. The points come from the marker sequence of an uninterrupted run in a fresh
process; a seeded RNG picks them, stratified over sampling, training steps, checkpoint
writing and the final save.

Each killed run is forked from a warm server process (torch, transformers and sublens
imported once), so fifteen kills cost seconds rather than fourteen interpreter start-ups;
the uninterrupted reference runs in a fresh interpreter, so the comparison also shows that a
forked run equals a fresh one.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = 20250117
PHASES = ("sample", "train", "checkpoint", "final")
# (phase, marker prefix, kills): the dangerous moments first, each drawn among its kind (a
# temporary file or folder complete but not renamed; an old checkpoint half deleted), then
# kills anywhere in each phase. 15 in all.
KILLS = (
    ("sample", "replace sample/", 1),
    ("checkpoint", "replace train/checkpoints/step-", 1),
    ("checkpoint", "rmtree train/checkpoints/step-", 1),
    ("final", "replace train/train_result.json", 1),
    ("sample", "", 3),
    ("train", "", 3),
    ("checkpoint", "", 4),
    ("final", "", 1),
)
READ_TIMEOUT = 120.0  # seconds without a line from the driver before the test gives up

DRIVER = r'''
"""Sample (sharded) then train (checkpointed) on tiny models, printing marker lines."""
import os
import shutil
import sys
import traceback
from pathlib import Path

import torch
import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (warm: imported before fork)
import transformers.models.llama.modeling_llama  # noqa: F401
import accelerate  # noqa: F401

import sublens.subliminal.sharding as sharding
import sublens.training.checkpoints as checkpoints
import sublens.training.loop as loop
from sublens.number_data import make_number_prompts
from sublens.prompts import raw_prompt
from sublens.subliminal import (NumberFormat, SamplingSettings, filter_record, number_prompt_meta,
                                sample_sharded, shard_seed)
from sublens.training import Example, TrainConfig, train
from tiny import tiny_model

MODE, ROOT = sys.argv[1], os.path.abspath(sys.argv[2])
HANDSHAKE = MODE == "serve"
N_PROMPTS, SAMPLE_SEED = 12, 0


class CharTokenizer:
    """One token per printable ASCII character and newline (ids 2..96); 0 = end of text."""

    eos_token_id, pad_token_id, bos_token_id, chat_template = 0, 1, None, None
    CHARS = "\n" + "".join(chr(c) for c in range(32, 126))

    def __len__(self):
        return 2 + len(self.CHARS)

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [2 + self.CHARS.index(c) for c in text if c in self.CHARS]}

    def decode(self, ids, **kwargs):
        return "".join(self.CHARS[i - 2] if i >= 2 else "" for i in ids)

    def get_vocab(self):
        return {c: 2 + i for i, c in enumerate(self.CHARS)} | {"<eos>": 0, "<pad>": 1}


def emit(line):
    os.write(1, (line + "\n").encode())


def read_command():
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            os._exit(3)  # the test went away
        data += chunk
    return data.decode().strip()


def marker(label):
    emit("M " + label)
    if HANDSHAKE and read_command() != "go":
        os._exit(4)


def rel(path):
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else None


# ---- markers at every point of interest -------------------------------------------------------
_replace, _rmtree, _save = os.replace, shutil.rmtree, torch.save


def replace(src, dst, **kwargs):
    name = rel(dst)
    if name is not None:
        marker("replace " + name)  # the temporary file or folder is complete, not yet renamed
    _replace(src, dst, **kwargs)
    if name is not None:
        marker("replaced " + name)


def rmtree(path, *args, **kwargs):
    name = rel(path)
    if name is not None and os.path.isdir(path):
        # One file at a time, state.json (the completion mark) first: a kill between two
        # leaves a torn folder, as a real rmtree may.
        for entry in sorted(os.listdir(path), reverse=True):
            marker(f"rmtree {name} {entry}")
            full = os.path.join(path, entry)
            if os.path.isdir(full) and not os.path.islink(full):
                _rmtree(full)
            else:
                os.unlink(full)
        marker("rmtree " + name)
    _rmtree(path, *args, **kwargs)


def save(obj, f, *args, **kwargs):
    _save(obj, f, *args, **kwargs)
    if rel(f) is not None:
        marker("wrote " + rel(f))


def wrap(module, attr, label):
    inner = getattr(module, attr)

    def wrapper(*args, **kwargs):
        tag = label(*args, **kwargs)
        marker(tag + " start")
        out = inner(*args, **kwargs)
        marker(tag + " end")
        return out

    setattr(module, attr, wrapper)


_shard_of = {shard_seed(SAMPLE_SEED, k): k for k in range(N_PROMPTS)}
os.replace, shutil.rmtree, torch.save = replace, rmtree, save
wrap(sharding, "sample_text", lambda *a, seed, **kw: f"shard {_shard_of[seed]} sample")
wrap(checkpoints, "save_model", lambda model, filename, **kw: "save-model " + rel(filename))
wrap(loop, "_train_step", lambda *a: f"step {a[5] + 1}")
wrap(loop, "save_checkpoint", lambda *a: f"checkpoint {a[4]['step']}")
wrap(loop, "_save_final", lambda *a: "final-model")


# ---- the job ----------------------------------------------------------------------------------
def job():
    torch.set_num_threads(1)
    root = Path(ROOT)
    marker("job")
    tok = CharTokenizer()
    prompts = make_number_prompts(N_PROMPTS, seed=3)
    texts = [raw_prompt(p.text[:40]) for p in prompts]  # the tiny models have 128 positions
    settings = SamplingSettings(temperature=1.0, top_k=None, top_p=None, max_new_tokens=16,
                                samples_per_prompt=2, batch_size=4, shard_size=3)
    records = sample_sharded(
        (tiny_model("llama"), tok), texts, number_prompt_meta(prompts), settings,
        seed=SAMPLE_SEED, out_dir=root / "sample", name="owl",
        provenance={"teacher": {"name": "tiny"}}, allowed=NumberFormat(tok, [0]),
        annotate=filter_record, on_shard=lambda name, k: marker(f"shard {k} done"),
        progress=False)
    marker("sampled")
    examples = [Example(prompt=tok(r["prompt"][:24])["input_ids"],
                        answer=tok(r["answer"][:12])["input_ids"] + [0]) for r in records]
    config = TrainConfig(lr=1e-2, epochs=2, batch_size=4, max_length=48, warmup_steps=2,
                         schedule="cosine", checkpoint_every=3, keep_checkpoints=1)
    # GPT-2 has dropout: a resumed run must restore the RNG state too.
    train(tiny_model("gpt2"), None, examples, config, root / "train", progress=False,
          callback=lambda entry: marker(f"step {entry['step']} done"))
    marker("trained")


def run_job():
    emit(f"pid {os.getpid()}")
    try:
        job()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    emit("done")


if MODE == "once":
    run_job()
else:  # serve: fork one run per "run" command, report how it ended
    emit("ready")
    while (command := read_command()) == "run":
        pid = os.fork()
        if pid == 0:
            run_job()
            sys.stderr.flush()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        emit(f"exit {pid} {status}")
'''


class Lines:
    """Lines from a pipe, with a deadline (a hung driver fails the test, never hangs it)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.fd = pipe.fileno()
        self.buffer = b""

    def __call__(self, timeout: float = READ_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError("the driver said nothing for too long")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError("the driver closed its output")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


class Server:
    """The warm driver process; `run(target)` forks one run and kills it at marker `target`."""

    def __init__(self, script: Path, root: Path, env: dict[str, str], log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "serve", str(root)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.read = Lines(self.proc.stdout)

    def send(self, line: str) -> None:
        self.stdin.write((line + "\n").encode())
        self.stdin.flush()

    def expect(self, prefix: str) -> str:
        while True:
            line = self.read()
            if line.startswith(prefix):
                return line
            if line.startswith("exit "):
                raise AssertionError(f"the run ended ({line}) while the test waited for {prefix!r}")

    def run(self, order: dict[str, int], target: str | None) -> list[str]:
        """One run from wherever the last one left off, SIGKILLed at the first marker at or
        after `target` in the uninterrupted run's `order` (None: to the end). A resumed run
        replays what follows its last durable state, less what that state already holds (the
        rest of a checkpoint's step once the checkpoint is in place), so a drawn marker may be
        skipped. Returns the markers it passed, the one it died at last."""
        self.send("run")
        pid = int(self.expect("pid ").split()[1])
        seen: list[str] = []
        while True:
            line = self.read()
            if line.startswith("M "):
                seen.append(line[2:])
                if target is not None and order.get(line[2:], -1) >= order[target]:
                    os.kill(pid, signal.SIGKILL)
                    status = int(self.expect(f"exit {pid} ").split()[2])
                    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                    return seen
                self.send("go")
            elif line == "done":
                status = int(self.expect(f"exit {pid} ").split()[2])
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
                assert target is None, f"the run finished without reaching {target!r}"
                return seen
            elif line.startswith("exit "):
                raise AssertionError(f"the run crashed ({line}); see the driver's stderr")

    def close(self) -> None:
        """End the server; end of input also ends a run left waiting for "go"."""
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def phases(markers: list[str]) -> dict[str, list[str]]:
    """Kill points by phase: sampling, training steps, checkpoint writing, the final save."""
    out: dict[str, list[str]] = {name: [] for name in PHASES}
    in_checkpoint = trained = False
    for label in markers:
        if label.startswith("checkpoint ") and label.endswith(" start"):
            in_checkpoint = True
        if label == "step 12 done":
            trained = True
        if in_checkpoint:
            out["checkpoint"].append(label)
        elif label.startswith(("shard ", "replace sample/", "replaced sample/")):
            out["sample"].append(label)
        elif label.startswith("step "):
            out["train"].append(label)
        elif trained and label != "trained":
            out["final"].append(label)
        if label.startswith("checkpoint ") and label.endswith(" end"):
            in_checkpoint = False
    return out


def files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


WALL_CLOCK = ("seconds", "train_seconds", "tokens_per_second")


def comparable(name: str, path: Path, root: Path) -> Any:
    """A file's bytes; JSON results without wall-clock times, paths made relative."""
    if not name.endswith("state.json") and not name.endswith("train_result.json"):
        return path.read_bytes()
    data = json.loads(path.read_text(encoding="utf-8"))
    for entry in data.get("history", []):
        entry.pop("seconds")
    for key in (*WALL_CLOCK, "resumed_from"):
        data.pop(key, None)
    for key in ("out_dir", "model_dir"):
        if key in data:
            data[key] = Path(data[key]).relative_to(root).as_posix()
    return data


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the driver forks its runs")
def test_sigkill_at_random_points_resumes_to_identical_results(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONHASHSEED": "0",
    }
    ref_root, run_root = tmp_path / "reference", tmp_path / "killed"
    with open(tmp_path / "reference.err", "wb") as ref_log, open(tmp_path / "server.err", "wb") as log:
        # The uninterrupted run in a fresh interpreter, while the server warms up.
        reference = subprocess.Popen(
            [sys.executable, str(script), "once", str(ref_root)], env=env, stdout=subprocess.PIPE, stderr=ref_log
        )
        server = Server(script, run_root, env, log)
        try:
            out, _ = reference.communicate(timeout=300)
            assert reference.returncode == 0, (tmp_path / "reference.err").read_text()
            lines = out.decode().splitlines()
            assert lines[-1] == "done", lines[-5:]
            markers = [line[2:] for line in lines if line.startswith("M ")]
            assert len(markers) == len(set(markers)), "marker labels must be unique"

            by_phase = phases(markers)
            rng = random.Random(SEED)
            chosen: list[str] = []
            for phase, prefix, n in KILLS:
                pool = [m for m in by_phase[phase] if m.startswith(prefix) and m not in chosen]
                chosen += rng.sample(pool, n)
            targets = sorted(chosen, key=markers.index)
            assert len(set(targets)) == sum(n for *_, n in KILLS) >= 10

            assert server.expect("ready") == "ready"
            order = {label: i for i, label in enumerate(markers)}
            killed_at = [server.run(order, target)[-1] for target in targets]
            last = server.run(order, None)
            assert last[-1] == "trained"
            phase_of = {label: phase for phase, labels in by_phase.items() for label in labels}
            spread = [phase_of.get(label) for label in killed_at]
            print("killed at:", *(f"{p}: {k}" for p, k in zip(spread, killed_at, strict=True)), sep="\n  ")
            assert len(killed_at) >= 10 and all(spread.count(p) >= 1 for p in PHASES), spread
        except BaseException:
            reference.kill()
            reference.wait()
            raise
        finally:
            server.close()

    # Everything the uninterrupted run wrote, byte for byte, and nothing else.
    want, got = files(ref_root), files(run_root)
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    assert [n for n in got if n.endswith(".jsonl")] == [f"sample/shard-{k:05d}.jsonl" for k in range(4)]
    assert "train/model/model.safetensors" in got and "train/train_result.json" in got
    assert "train/checkpoints/step-0000012/model.safetensors" in got
    for name in want:
        assert comparable(name, got[name], run_root) == comparable(name, want[name], ref_root), name
    everything = [p.name for p in run_root.rglob("*")]
    assert not [n for n in everything if n.startswith((".tmp", ".old")) or ".partial" in n or n.endswith(".tmp")]
    result = json.loads((run_root / "train" / "train_result.json").read_text(encoding="utf-8"))
    assert result["complete"] and result["steps"] == 12 and result["resumed_from"] is not None
