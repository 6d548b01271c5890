"""Checkpoints and saved weights: checkpoints every N steps (model safetensors, optimizer,
scheduler, RNG states, step, loss history), written atomically; what a rerun resumes from; the
cleanup of what a killed run left half written or half deleted; the final model and adapters."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from sublens.errors import SublensError
from sublens.runs import atomic_write_json, read_json
from sublens.train_config import TrainConfig
from sublens.training.lora import LoraAdapters

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"  # a LoRA run's adapters alone (peft format), beside the merged model
RESULT_FILE = "train_result.json"
# Config keys that may change between an interrupted run and its resumption.
_RESUME_FREE = ("checkpoint_every", "keep_checkpoints", "save_model")


def _resume_key(config: TrainConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    for key in _RESUME_FREE:
        data.pop(key, None)
    return data


def _check_same(saved: dict[str, Any], config: TrainConfig, fingerprint: str, world: int, where: Path) -> None:
    mine = _resume_key(config)
    theirs = saved.get("config", {})
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    problems = []
    if diff:
        problems.append(f"config differs in {', '.join(diff)}")
    if saved.get("data_fingerprint") != fingerprint:
        problems.append("the training data differ")
    if saved.get("world_size", world) != world:
        problems.append(f"it ran on {saved.get('world_size')} processes, this on {world}")
    if problems:
        raise SublensError(
            f"{where} belongs to a different training run ({'; '.join(problems)}). "
            "Use a new out_dir, or delete that folder to start over."
        )


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoints (state.json written last), oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place; an existing one is swapped out, then removed."""
    old = final.with_name(f".old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_checkpoint(
    accelerator: Any, model: nn.Module, optimizer: Any, scheduler: Any, state: dict[str, Any], out_dir: Path, keep: int
) -> Path:
    """Write checkpoints/step-N atomically (state.json last); keep the `keep` newest."""
    root = Path(out_dir) / CHECKPOINTS
    name = f"step-{state['step']:07d}"
    tmp = root / f".tmp-{name}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    final = root / name
    if accelerator.is_main_process:
        atomic_write_json(tmp / "state.json", state)
        _replace_dir(tmp, final)
        for old in checkpoint_dirs(out_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _remove_leftovers(out_dir: Path, keep: int) -> None:
    """Remove what a run killed mid-write leaves behind: temporary and swapped-out folders
    (``.tmp-*``, ``.old-*``), the result file's temporary copy, and checkpoints it was deleting
    (torn: state.json gone) or had yet to delete (older than the `keep` newest)."""
    root = out_dir / CHECKPOINTS
    stale = [*out_dir.glob(f".{RESULT_FILE}.*.tmp"), *out_dir.glob(".tmp-*"), *out_dir.glob(".old-*")]
    if root.is_dir():
        complete = checkpoint_dirs(out_dir)
        stale += [*root.glob(".tmp-*"), *root.glob(".old-*"), *complete[:-keep]]
        stale += [p for p in root.glob("step-*") if p not in complete]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def load_checkpoint(path: Path, accelerator: Any, model: nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this process's RNG from a checkpoint."""
    # Multi-process CPU runs use the device "cpu:0", which safetensors and torch.load refuse.
    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    missing, unexpected = load_model(
        accelerator.unwrap_model(model), path / "model.safetensors", strict=True, device=device
    )
    assert not missing and not unexpected
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return dict(read_json(path / "state.json"))


def load_saved_weights(model: nn.Module, folder: Path) -> None:
    """Load a save_pretrained folder's safetensors into `model` (tied weights may be absent)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = (
        sorted({folder / f for f in read_json(index)["weight_map"].values()})
        if index.is_file()
        else [folder / "model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    names = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(names[k]) for k in state if k in names}
    really_missing = [k for k in missing if k not in names or id(names[k]) not in loaded]
    if really_missing or unexpected:
        raise SublensError(
            f"{folder} does not match this model (missing {really_missing[:3]}, unexpected "
            f"{list(unexpected)[:3]}). Delete the folder to retrain, or use another out_dir."
        )


def _save_adapter(accelerator: Any, lora: LoraAdapters, out_dir: Path) -> Path:
    """The trained adapters alone (peft format) in ADAPTER_DIR, beside the merged model."""
    final = out_dir / ADAPTER_DIR
    if accelerator.is_main_process:
        tmp = out_dir / f".tmp-{ADAPTER_DIR}"
        if tmp.exists():
            shutil.rmtree(tmp)
        lora.save(tmp)
        _replace_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _save_final(accelerator: Any, model: Any, tokenizer: Any, out_dir: Path) -> Path:
    final = out_dir / MODEL_DIR
    if accelerator.is_main_process:
        tmp = out_dir / f".tmp-{MODEL_DIR}"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final
