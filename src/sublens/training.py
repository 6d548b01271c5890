"""One small fine-tuning loop for every training experiment (teacher, students, distillation).

    result = train(lm.model, lm.tokenizer, examples, TrainConfig(lr=1e-4, epochs=2), out_dir)

- Built on Accelerate: ``accelerate launch`` runs it data-parallel unchanged; mixed precision
  is one config key. Micro-batches are planned globally and dealt round-robin to processes.
- Loss on answer tokens only: the sum of their cross-entropies over an optimizer step divided
  by their count in that step, so neither padding, packing, the split into micro-batches nor
  the number of processes changes it. Logits are computed at answer positions only.
- Trainable sets (``full``, ``freeze-attention``, ``freeze-mlp``, layer ranges such as
  ``layers.0-5.mlp``; grammar in `sublens.trainable`): parameters outside the set get
  ``requires_grad=False`` (autograd then skips their weight gradients) and are left out of the
  optimizer; ``freezing()`` restores every flag on exit, also on an exception.
- Optional LoRA (hand-written, no peft): low-rank adapters on the linear layers of the
  set's components (``train.lora``, or a ``+loraR`` set); merged into the weights at the end.
- Checkpoints every N steps (model safetensors, optimizer, scheduler, RNG states, step, loss
  history), written atomically; rerunning with the same ``out_dir`` resumes and reproduces the
  uninterrupted run (and removes what a killed run left half written or half deleted);
  rerunning a finished run loads its final weights and returns its result.
- An optional ``extra_loss(model, batch) -> (loss, metrics)`` is added with a weight (SHD).

The model is trained in place: after ``train`` returns it holds the fine-tuned weights (LoRA
merged), which are also saved with ``save_pretrained`` (plus the tokenizer) under
``out_dir/model`` so ``load_model(out_dir / "model")`` reads them back.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from sublens.arch import Adapter, adapter_for
from sublens.errors import ConfigError, SublensError
from sublens.models.device import resolve_mixed_precision
from sublens.result_records import TrainingSummary
from sublens.runs import atomic_write_json, read_json
from sublens.train_config import FREEZE_MODES, LoraConfig, TrainConfig
from sublens.trainable import (
    TrainableSet,
    parse_trainable,
)
from sublens.training_data import (
    Batch,
    Example,
    MicroBatch,
    TokenizedExample,
    chat_example,
    collate,
    data_fingerprint,
    plan_epoch,
    tokenize_examples,
    tokenizer_pad_id,
)

ExtraLoss = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
StepCallback = Callable[[dict[str, Any]], None]

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"  # a LoRA run's adapters alone (peft format), beside the merged model
RESULT_FILE = "train_result.json"
# Config keys that may change between an interrupted run and its resumption.
_RESUME_FREE = ("checkpoint_every", "keep_checkpoints", "save_model")


# ---- freezing ------------------------------------------------------------------------------
@dataclass
class FreezeReport:
    mode: str
    trainable: int  # parameters (unique tensors; tied weights counted once)
    frozen: int
    trainable_tensors: int
    frozen_tensors: int
    tied_embeddings: bool
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def trained_modules(adapter: Adapter, trainable: TrainableSet) -> list[nn.Module]:
    """The attention / MLP modules a trainable set trains, layer by layer (LoRA targets)."""
    modules: list[nn.Module] = []
    for layer in trainable.layer_range(adapter.n_layers):
        if "attention" in trainable.components:
            modules.append(adapter.attn(layer))
        if "mlp" in trainable.components:
            modules.append(adapter.mlp(layer))
    return modules


def _embedding_parameters(adapter: Adapter) -> dict[str, nn.Parameter]:
    found: dict[str, nn.Parameter] = {}
    for module in (adapter.embed(), adapter.lm_head()):
        weight = module.weight
        assert isinstance(weight, nn.Parameter)
        found[adapter.module_name(module) + ".weight"] = weight
    return found


def frozen_parameters(adapter: Adapter, mode: str, embeddings: str = "trained") -> dict[str, nn.Parameter]:
    """The parameters a trainable set (sublens.trainable) holds fixed, by name, plus the token
    embeddings and the LM head when `embeddings` is "frozen".

    Sets over every layer freeze the components they leave out (everything else, norms
    included, trains). A layer range trains only what it names: the whole layers (norms too),
    or their attention or MLP modules; every other parameter is frozen except the embeddings
    and LM head, which follow `embeddings` in every arm so that arms differ only in the set.
    """
    trainable = parse_trainable(mode)
    frozen: dict[str, nn.Parameter] = {}
    if trainable.every_layer:
        if "attention" not in trainable.components:
            frozen.update(adapter.attention_parameters())
        if "mlp" not in trainable.components:
            frozen.update(adapter.mlp_parameters())
    else:
        chosen = ([adapter.layer(i) for i in trainable.layer_range(adapter.n_layers)]
                  if trainable.whole_layers else trained_modules(adapter, trainable))
        trained = {id(p) for module in chosen for p in module.parameters()}
        embedding_ids = {id(p) for p in _embedding_parameters(adapter).values()}
        frozen.update({name: p for name, p in unique_parameters(adapter.model)
                       if id(p) not in trained and id(p) not in embedding_ids})
    if embeddings == "frozen":
        frozen.update(_embedding_parameters(adapter))
    return frozen


def unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) once per tensor (tied weights appear under their first name)."""
    return list(model.named_parameters(remove_duplicate=True))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, p in unique_parameters(model) if p.requires_grad]


def _report(model: nn.Module, adapter: Adapter, mode: str) -> FreezeReport:
    params = [p for _, p in unique_parameters(model)]
    trainable = [p for p in params if p.requires_grad]
    frozen = [p for p in params if not p.requires_grad]
    tied = adapter.tied_embeddings
    notes = []
    if tied:
        notes.append(
            "embed and lm_head share one tensor: training it moves both (counted once)."
            if adapter.embed().weight.requires_grad
            else "embed and lm_head share one tensor (frozen, counted once)."
        )
    if parse_trainable(mode).every_layer and mode != "full" and adapter.post_norm_residual:
        notes.append(
            "post-attention / post-MLP norms sit outside the attention and MLP modules and "
            "follow the rest of the model (trainable unless LoRA is used)."
        )
    return FreezeReport(
        mode=mode,
        trainable=sum(p.numel() for p in trainable),
        frozen=sum(p.numel() for p in frozen),
        trainable_tensors=len(trainable),
        frozen_tensors=len(frozen),
        tied_embeddings=tied,
        notes=notes,
    )


@contextmanager
def requires_grad_scope(model: nn.Module, frozen: Sequence[nn.Parameter]) -> Iterator[None]:
    """Set requires_grad=False on `frozen` (True elsewhere); restore every flag on exit."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    frozen_ids = {id(p) for p in frozen}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) not in frozen_ids)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextmanager
def freezing(model: nn.Module, mode: str, adapter: Adapter | None = None,
             embeddings: str = "trained") -> Iterator[FreezeReport]:
    """Freeze a component (`freeze-attention`, `freeze-mlp`) or nothing (`full`), and the
    embeddings/LM head when asked, for the body of the with-block; every parameter's
    requires_grad is restored afterwards."""
    adapter = adapter or adapter_for(model)
    frozen = list(frozen_parameters(adapter, mode, embeddings).values())
    with requires_grad_scope(model, frozen):
        yield _report(model, adapter, mode)


@contextmanager
def train_mode(model: nn.Module, training: bool = True) -> Iterator[None]:
    """model.train(training) for the block; every module's own flag restored afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.train(training)
        yield
    finally:
        for m, flag in saved:
            m.training = flag


# ---- LoRA ----------------------------------------------------------------------------------
def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # transformers GPT-2


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


class LoraAdapters:
    """The LoRA adapters peft injected into a model (one `peft` LoRA layer per adapted linear
    layer, keyed by the adapted module's name)."""

    def __init__(self, model: nn.Module, layers: dict[str, Any], peft_config: Any) -> None:
        self.model = model
        self.layers = layers
        self.peft_config = peft_config

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The adapters' own parameters, named as in the model ('...q_proj.lora_A.default.weight')."""
        for name, param in self.model.named_parameters():
            if _is_adapter_parameter(name):
                yield name, param

    def merge(self) -> None:
        """Add every update (alpha/rank)·B·A into its base layer's weight; the base layers keep
        it when the adapters are removed."""
        for layer in self.layers.values():
            layer.merge()

    def save(self, folder: Path) -> Path:
        """The adapters alone, in peft's format (adapter_config.json, adapter_model.safetensors):
        `peft.PeftModel.from_pretrained(base_model, folder)` loads them onto the base model."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        # keys as PeftModel.save_pretrained writes them (its wrapper adds "base_model.model.")
        state = get_peft_model_state_dict(self.model, adapter_name=PEFT_ADAPTER)
        tensors = {f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        self.peft_config.save_pretrained(str(folder))
        return folder


PEFT_ADAPTER = "default"


def _is_adapter_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def effective_lora(config: TrainConfig) -> LoraConfig | None:
    """The adapters a run trains: `config.lora`, with the rank a `+loraR` trainable set names
    (with no `lora` section such a set gets alpha = rank, the original recipe's scale of 1)."""
    rank = parse_trainable(config.freeze).lora_rank
    if rank is None:
        return config.lora
    if config.lora is None:
        return LoraConfig(rank=rank, alpha=float(rank))
    return config.lora.model_copy(update={"rank": rank})


def lora_targets(adapter: Adapter, mode: str, cfg: LoraConfig) -> dict[str, nn.Module]:
    """Linear layers to adapt: inside the components the trainable set `mode` trains,
    matching cfg.targets."""
    components = trained_modules(adapter, parse_trainable(mode))
    found: dict[str, nn.Module] = {}
    suffixes: set[str] = set()
    for component in components:
        prefix = adapter.module_name(component)
        for name, module in component.named_modules():
            if isinstance(module, nn.Linear) or _is_conv1d(module):
                suffixes.add(name.rsplit(".", 1)[-1])
                if not cfg.targets or name.rsplit(".", 1)[-1] in cfg.targets:
                    found[f"{prefix}.{name}"] = module
    if not found:
        raise ConfigError(
            f"lora.targets {list(cfg.targets)} match no linear layer of the trained components "
            f"(freeze={mode}); available: {', '.join(sorted(suffixes))}."
        )
    return found


@contextmanager
def lora_attached(
    model: nn.Module, adapter: Adapter, mode: str, cfg: LoraConfig, seed: int
) -> Iterator[LoraAdapters]:
    """Attach LoRA adapters with peft (`inject_adapter_in_model`) to the linear layers of the
    trained components; they are removed again on exit, the base layers put back. Call
    `.merge()` inside the block to keep what was learned. The adapters' initial A matrices are
    drawn from `seed` (peft's Kaiming-uniform init; B starts at zero), so a run is reproducible
    and a resumed one re-creates the same adapters before loading their saved state."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    if any(isinstance(m, LoraLayer) for m in model.modules()):
        raise SublensError("This model already has LoRA adapters attached.")
    targets = lora_targets(adapter, mode, cfg)
    peft_config = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # a float scales as peft computes alpha / r
        lora_dropout=cfg.dropout, target_modules=sorted(targets),
        fan_in_fan_out=any(_is_conv1d(m) for m in targets.values()), bias="none")
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config, model, adapter_name=PEFT_ADAPTER)
    for name, param in model.named_parameters():  # peft froze the rest; our freezing rules decide
        if not _is_adapter_parameter(name):
            param.requires_grad_(requires_grad[name.replace(".base_layer.", ".")])
    layers: dict[str, Any] = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    try:
        yield LoraAdapters(model, layers, peft_config)
    finally:
        for name, layer in layers.items():
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, layer.get_base_layer())


# ---- loss ----------------------------------------------------------------------------------
def answer_loss_sum(
    model: nn.Module, batch: Batch, **forward_kwargs: Any
) -> tuple[torch.Tensor, Any]:
    """(sum of answer-token cross-entropies, model outputs). Logits only at answer positions."""
    keep = batch.target_mask()  # [rows, T]
    outputs = model(**batch.model_inputs(), logits_to_keep=keep, use_cache=False, **forward_kwargs)
    logits = outputs.logits
    if logits.dim() == 3:  # a model that ignores a boolean logits_to_keep
        logits = logits[keep]
    # logits: [n_answer, vocab]
    loss = F.cross_entropy(logits.float(), batch.targets(), reduction="sum")
    return loss, outputs


def answer_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of one batch."""
    total, _ = answer_loss_sum(model, batch)
    return total / batch.n_answer


# ---- schedule and plan ---------------------------------------------------------------------
def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """Multiplier of config.lr at optimizer step `step` (0-based) of `total`."""
    warm = config.warmup_steps
    if step < warm:
        return (step + 1) / (warm + 1)
    if config.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if config.schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Plan:
    """Which micro-batches make each optimizer step (a pure function of config and data)."""

    def __init__(self, data: Sequence[TokenizedExample], config: TrainConfig, world: int) -> None:
        self.data = data
        self.config = config
        self.world = world
        self.per_step = config.grad_accum * world
        self.lengths = [ex.n_tokens for ex in data]
        self._epochs: dict[int, list[MicroBatch]] = {}
        self.steps: list[tuple[int, int]] = []  # step -> (epoch, first micro-batch)
        epoch = 0
        while True:
            batches = self.epoch(epoch)
            starts = range(0, len(batches), self.per_step)
            self.steps.extend((epoch, start) for start in starts)
            epoch += 1
            if config.max_steps is None and epoch >= config.epochs:
                break
            if config.max_steps is not None and len(self.steps) >= config.max_steps:
                del self.steps[config.max_steps :]
                break
        self.steps_per_epoch = math.ceil(len(self.epoch(0)) / self.per_step)

    def epoch(self, epoch: int) -> list[MicroBatch]:
        if epoch not in self._epochs:
            cfg = self.config
            batches = plan_epoch(self.lengths, cfg.layout, cfg.batch_size, cfg.batch_tokens,
                                 cfg.max_length, cfg.seed, epoch)
            if self.world > 1:  # every process needs a micro-batch in every step
                batches = batches[: len(batches) // self.world * self.world]
                if not batches:
                    raise ConfigError(
                        f"Too little data for {self.world} processes: fewer micro-batches than "
                        "processes. Lower batch_size / batch_tokens or use fewer processes."
                    )
            self._epochs.clear()  # keep one epoch's plan in memory
            self._epochs[epoch] = batches
        return self._epochs[epoch]

    @property
    def total_steps(self) -> int:
        return len(self.steps)

    def step(self, step: int) -> tuple[int, list[MicroBatch]]:
        """(epoch, the step's micro-batches over all processes)."""
        epoch, start = self.steps[step]
        return epoch, self.epoch(epoch)[start : start + self.per_step]


# ---- checkpoints ---------------------------------------------------------------------------
def _resume_key(config: TrainConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    for key in _RESUME_FREE:
        data.pop(key, None)
    return data


def _check_same(saved: dict[str, Any], config: TrainConfig, fingerprint: str, world: int,
                where: Path) -> None:
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


def save_checkpoint(accelerator: Any, model: nn.Module, optimizer: Any, scheduler: Any,
                    state: dict[str, Any], out_dir: Path, keep: int) -> Path:
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


def load_checkpoint(path: Path, accelerator: Any, model: nn.Module, optimizer: Any,
                    scheduler: Any) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this process's RNG from a checkpoint."""
    # Multi-process CPU runs use the device "cpu:0", which safetensors and torch.load refuse.
    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    missing, unexpected = load_model(accelerator.unwrap_model(model), path / "model.safetensors",
                                     strict=True, device=device)
    assert not missing and not unexpected
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device,
                                         weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return dict(read_json(path / "state.json"))


def load_saved_weights(model: nn.Module, folder: Path) -> None:
    """Load a save_pretrained folder's safetensors into `model` (tied weights may be absent)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = (sorted({folder / f for f in read_json(index)["weight_map"].values()})
             if index.is_file() else [folder / "model.safetensors"])
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


# ---- result --------------------------------------------------------------------------------
class TrainResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out_dir: str
    model_dir: str | None
    complete: bool
    steps: int
    total_steps: int
    steps_per_epoch: int
    resumed_from: int | None
    freeze: dict[str, Any]
    lora: dict[str, Any] | None
    n_examples: int
    data_fingerprint: str
    world_size: int
    precision: str = "no"  # the mixed precision in effect ("no": float32 throughout)
    tokens: int  # real tokens processed (this session and before a resume)
    answer_tokens: int
    padded_tokens: int
    padding_fraction: float
    train_seconds: float
    tokens_per_second: float
    final_lm_loss: float | None
    history: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def lm_losses(self) -> list[float]:
        return [float(h["lm_loss"]) for h in self.history]


def _summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(int(h["tokens"]) for h in history)
    padded = sum(int(h["padded_tokens"]) for h in history)
    seconds = sum(float(h["seconds"]) for h in history)
    return {
        "tokens": tokens,
        "answer_tokens": sum(int(h["answer_tokens"]) for h in history),
        "padded_tokens": padded,
        "padding_fraction": 1.0 - tokens / padded if padded else 0.0,
        "train_seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "final_lm_loss": history[-1]["lm_loss"] if history else None,
    }


def train_summary(result: TrainResult) -> TrainingSummary:
    """What results.json keeps of a training run: totals, the loss curve as [step, loss] pairs,
    and every other logged series (history keys ``extra/<name>``) aligned with it."""
    history = result.history
    extra_names = sorted({k.removeprefix("extra/") for h in history for k in h if k.startswith("extra/")})
    return TrainingSummary(
        steps=result.steps,
        epochs=result.config.get("epochs"),
        n_examples=result.n_examples,
        tokens=result.tokens,
        answer_tokens=result.answer_tokens,
        tokens_per_second=result.tokens_per_second,
        train_seconds=result.train_seconds,
        padding_fraction=result.padding_fraction,
        resumed_from=result.resumed_from,
        freeze=result.freeze,
        first_lm_loss=history[0]["lm_loss"] if history else None,
        final_lm_loss=result.final_lm_loss,
        loss_curve=[(int(h["step"]), float(h["lm_loss"])) for h in history],
        extra_curves={name: [h.get(f"extra/{name}") for h in history] for name in extra_names},
        data_fingerprint=result.data_fingerprint,
        precision=result.precision,
        world_size=result.world_size,
        config=result.config,
    )


# ---- the loop ------------------------------------------------------------------------------
def _check_model(model: nn.Module, config: TrainConfig) -> None:
    if getattr(model, "hf_quantizer", None) is not None:
        raise SublensError(
            "This model carries a quantization config (e.g. loaded straight from a GGUF file), so "
            "it cannot be trained or saved. Load it with sublens.models.load_model, which "
            "de-quantizes it, or call model.hf_quantizer.remove_quantization_config(model)."
        )
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit is not None and config.max_length > int(limit):
        raise ConfigError(
            f"max_length={config.max_length} exceeds the model's {limit} positions; lower it."
        )


def _param_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum; the fused kernel where torch has one (CPU and CUDA): ~3x
    faster on CPU, where the optimizer step of a 135M model otherwise costs as much as a short
    batch's backward."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(_param_groups(params, config.weight_decay), lr=config.lr,
                               momentum=config.sgd_momentum, fused=fused or None)
    return torch.optim.AdamW(
        _param_groups(params, config.weight_decay), lr=config.lr, betas=config.adam_betas,
        eps=config.adam_eps, fused=fused or None)


def _make_accelerator(model: nn.Module, config: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    device = next(model.parameters()).device
    kwargs = {"cpu": device.type == "cpu",
              "mixed_precision": resolve_mixed_precision(config.mixed_precision, device)}
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        # Accelerate keeps one process-wide state; a single process may change its
        # mixed-precision setting between runs (a distributed one must not).
        if "already been initialized" not in str(exc) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        return Accelerator(**kwargs)


def _finished(out_dir: Path, config: TrainConfig, fingerprint: str, world: int) -> TrainResult | None:
    path = out_dir / RESULT_FILE
    if not path.is_file():
        return None
    saved = read_json(path)
    _check_same(
        {"config": _resume_key(TrainConfig.model_validate(saved["config"])),
         "data_fingerprint": saved["data_fingerprint"], "world_size": saved["world_size"]},
        config, fingerprint, world, path,
    )
    if not saved.get("complete") or not saved.get("model_dir"):
        return None
    if not (Path(saved["model_dir"]) / "config.json").is_file():
        return None
    return TrainResult.model_validate(saved)


def train(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    config: TrainConfig,
    out_dir: Path | str,
    *,
    extra_loss: ExtraLoss | None = None,
    adapter: Adapter | None = None,
    callback: StepCallback | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    accelerator: Any = None,
) -> TrainResult:
    """Fine-tune `model` in place on prompt -> answer `examples`; see the module docstring.

    extra_loss(model, batch) -> (loss, metrics) is added as config.extra_loss_weight · loss;
    batch.outputs holds the LM forward's outputs (ask for more with forward_kwargs, e.g.
    {"output_attentions": True} with an eager model). callback(entry) runs after every step
    (and after its checkpoint); raising from it interrupts the run, which a rerun resumes.
    """
    out_dir = Path(out_dir)
    adapter = adapter or adapter_for(model)
    _check_model(model, config)
    vocab = int(adapter.embed().weight.shape[0])
    data = tokenize_examples(examples, tokenizer, config.max_length, vocab_size=vocab)
    fingerprint = data_fingerprint(data)
    accelerator = accelerator or _make_accelerator(model, config)
    world = int(accelerator.num_processes)

    done = _finished(out_dir, config, fingerprint, world)
    if done is not None:
        assert done.model_dir is not None
        load_saved_weights(model, Path(done.model_dir))
        return done

    if accelerator.is_main_process:
        _remove_leftovers(out_dir, config.keep_checkpoints)
    accelerator.wait_for_everyone()
    plan = Plan(data, config, world)
    pad_id = tokenizer_pad_id(tokenizer)
    with ExitStack() as stack:
        stack.enter_context(train_mode(model, config.dropout))
        lora, lora_config = None, effective_lora(config)
        if lora_config is not None:
            lora = stack.enter_context(
                lora_attached(model, adapter, config.freeze, lora_config, config.seed))
            base = [p for n, p in unique_parameters(model) if not _is_adapter_parameter(n)]
            stack.enter_context(requires_grad_scope(model, base))
            report = _report(model, adapter, config.freeze)
            report.notes.append(f"LoRA on {len(lora.layers)} linear layers; base weights frozen.")
        else:
            report = stack.enter_context(freezing(model, config.freeze, adapter, config.embeddings))
        log.info("training %s: %.2fM trainable, %.2fM frozen parameters. %s", report.mode,
                 report.trainable / 1e6, report.frozen / 1e6, " ".join(report.notes))
        params = trainable_parameters(model)
        if not params:
            raise ConfigError("Nothing to train: every parameter is frozen.")
        optimizer = _make_optimizer(params, config)
        total = plan.total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(config, s, total))
        wrapped, optimizer = accelerator.prepare(model, optimizer)
        stack.callback(accelerator.unwrap_model, wrapped, keep_fp32_wrapper=False)

        start, history, resumed = 0, [], None
        ckpts = checkpoint_dirs(out_dir)
        if ckpts:
            saved = read_json(ckpts[-1] / "state.json")
            _check_same(saved, config, fingerprint, world, ckpts[-1])
            state = load_checkpoint(ckpts[-1], accelerator, wrapped, optimizer, scheduler)
            start, history, resumed = int(state["step"]), list(state["history"]), int(state["step"])
        else:
            from accelerate.utils import set_seed

            set_seed(config.seed)

        def write_state(step: int) -> None:
            state = {"step": step, "epoch": plan.steps[step - 1][0], "history": history,
                     "config": _resume_key(config), "data_fingerprint": fingerprint,
                     "world_size": world}
            save_checkpoint(accelerator, wrapped, optimizer, scheduler, state, out_dir,
                            config.keep_checkpoints)

        bar = _progress_bar(progress and accelerator.is_main_process, total, start)
        stack.callback(bar.close)
        stack.enter_context(_process_group_torn_down_on_interrupt(world, wrapped))
        for step in range(start, total):
            entry = _train_step(
                wrapped, optimizer, scheduler, accelerator, plan, step, data, pad_id, config,
                params, extra_loss, forward_kwargs or {})
            history.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{entry['lm_loss']:.4f}",
                            tok_s=f"{entry['tokens'] / entry['seconds']:.0f}")
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                write_state(step + 1)
            if callback is not None:
                callback({**entry, "total_steps": total})  # the total, for progress elsewhere
        if lora is not None:
            if config.save_model:
                _save_adapter(accelerator, lora, out_dir)
            lora.merge()  # before the adapters are detached on exit

    model_dir = None
    if config.save_model:
        model_dir = _save_final(accelerator, model, tokenizer, out_dir)
    result = TrainResult(
        out_dir=str(out_dir), model_dir=str(model_dir) if model_dir else None, complete=True,
        steps=len(history), total_steps=total, steps_per_epoch=plan.steps_per_epoch,
        resumed_from=resumed, freeze=report.to_dict(),
        lora=lora_config.model_dump(mode="json") if lora_config else None,
        n_examples=len(data), data_fingerprint=fingerprint, world_size=world,
        precision=str(accelerator.mixed_precision), history=history, config=config.model_dump(mode="json"), **_summary(history),
    )
    if accelerator.is_main_process:
        atomic_write_json(out_dir / RESULT_FILE, result.model_dump(mode="json"))
    accelerator.wait_for_everyone()
    return result


@contextmanager
def _process_group_torn_down_on_interrupt(world: int, wrapped: nn.Module) -> Iterator[None]:
    """Leave data-parallel training cleanly when a step or callback raises (Ctrl-C included).

    Left alone, a rank exits with its gloo process group alive: at interpreter exit the group's
    worker threads can still be joinable when their owners are destroyed ("terminate called
    without an active exception", SIGABRT), and destroying the DDP reducer while a worker
    still finishes a collective deadlocks (the worker needs the GIL the destructor holds). So,
    in order: wait for every rank and every queued collective (a barrier, GIL released), drop
    the DDP reducer, destroy the group. The run is over for every rank anyway; the last
    checkpoint is what a rerun resumes from.

    That barrier is only safe when every rank is leaving too (Ctrl-C reaches them all; a
    callback raising at the same step on every rank). A rank that failed alone would meet the
    others inside the step's gradient all-reduce instead, and both would wait there for good.
    So each rank first counts itself in through the process group's store and waits up to
    TEARDOWN_WAIT_SECONDS for the others; when they do not come, it leaves the group as it is
    and raises: its exit closes its connections, which fails the others' collective at once."""
    try:
        yield
    except BaseException:
        if world > 1:
            if _everyone_leaving(world):
                _tear_down_process_group(wrapped)
            else:
                log.warning("training failed in this process alone: leaving without waiting for the others "
                            "(they stop when this process exits)")
        raise


TEARDOWN_WAIT_SECONDS = 15.0
_teardowns = 0


def _everyone_leaving(world: int) -> bool:
    """Whether every rank reached the teardown (each counts itself in under a key numbered per
    teardown), waiting up to TEARDOWN_WAIT_SECONDS; False when the store cannot be asked."""
    import torch.distributed as dist

    global _teardowns
    if not (dist.is_available() and dist.is_initialized()):
        return True
    _teardowns += 1
    key = f"sublens/train-teardown/{_teardowns}"
    try:
        store = dist.distributed_c10d._get_default_store()
        store.add(key, 1)
        deadline = time.monotonic() + TEARDOWN_WAIT_SECONDS
        while int(store.add(key, 0)) < world:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    except Exception as exc:  # no store (or it is gone with a dead launcher): nobody to wait for
        log.warning("cannot tell whether the other ranks are leaving training: %s", exc)
        return False
    return True


def _tear_down_process_group(wrapped: nn.Module) -> None:
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    if dist.is_available() and dist.is_initialized():
        log.warning("training interrupted: waiting for the other ranks, then leaving the process group")
        try:
            dist.barrier()  # gloo's barrier also waits for every collective queued before it
        except Exception as exc:  # a peer that already died: nothing left to wait for
            log.warning("barrier failed while leaving data-parallel training: %s", exc)
        if hasattr(wrapped, "reducer"):
            del wrapped.reducer  # its last reference: freed now, while the workers are idle
        dist.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step",
                dynamic_ncols=True)


def _train_step(
    model: nn.Module, optimizer: Any, scheduler: Any, accelerator: Any, plan: Plan, step: int,
    data: Sequence[TokenizedExample], pad_id: int, config: TrainConfig,
    params: list[nn.Parameter], extra_loss: ExtraLoss | None, forward_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """One optimizer step over this process's share of the step's micro-batches."""
    began = time.perf_counter()
    epoch, micro = plan.step(step)
    packed = config.layout == "pack"
    # Counts over all processes' micro-batches; n_answer is the loss's denominator.
    n_answer = sum(data[i].n_loss for mb in micro for row in mb for i in row)
    n_real = sum(data[i].n_tokens for mb in micro for row in mb for i in row)
    n_padded = sum(len(mb) * max(sum(data[i].n_tokens for i in row) for row in mb) for mb in micro)
    mine = [collate(data, mb, pad_id, packed) for mb in micro[accelerator.process_index :: plan.world]]
    lr = scheduler.get_last_lr()[0]
    lm_sum = torch.zeros((), device=accelerator.device)
    extra_sum = 0.0
    metrics: dict[str, float] = {}
    for i, batch in enumerate(mine):
        batch = batch.to(accelerator.device)
        sync = i == len(mine) - 1
        with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
            loss_sum, outputs = answer_loss_sum(model, batch, **forward_kwargs)
            # DDP averages gradients over processes: scale so the result is sum / n_answer.
            loss = loss_sum * plan.world / n_answer
            lm_sum += loss_sum.detach()
            if extra_loss is not None:
                batch.outputs = outputs
                extra, extra_metrics = extra_loss(model, batch)
                loss = loss + config.extra_loss_weight * extra / len(mine)
                extra_sum += float(extra.detach()) / len(mine)
                for key, value in extra_metrics.items():
                    metrics[f"extra/{key}"] = metrics.get(f"extra/{key}", 0.0) + value / len(mine)
            del outputs
        accelerator.backward(loss)
    grad_norm = None
    if config.max_grad_norm is not None:
        grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if plan.world > 1:
        lm_sum = accelerator.reduce(lm_sum, reduction="sum")
        if extra_loss is not None:  # each rank's mean over its micro-batches: their mean over ranks
            names = sorted(metrics)
            local = torch.tensor([extra_sum, *(metrics[k] for k in names)], dtype=torch.float64,
                                 device=accelerator.device)
            means = (accelerator.reduce(local, reduction="sum") / plan.world).tolist()
            extra_sum, metrics = means[0], dict(zip(names, means[1:], strict=True))
    seconds = time.perf_counter() - began
    return {
        "step": step + 1,
        "epoch": epoch,
        "lm_loss": float(lm_sum) / n_answer,
        "extra_loss": extra_sum if extra_loss is not None else None,
        **metrics,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": n_real,
        "answer_tokens": n_answer,
        "padded_tokens": n_padded,
        "seconds": seconds,
    }


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


__all__ = [
    "FREEZE_MODES",
    "Batch",
    "Example",
    "ExtraLoss",
    "FreezeReport",
    "LoraAdapters",
    "LoraConfig",
    "TrainConfig",
    "TrainResult",
    "answer_loss",
    "answer_loss_sum",
    "chat_example",
    "checkpoint_dirs",
    "freezing",
    "frozen_parameters",
    "lora_attached",
    "lr_factor",
    "requires_grad_scope",
    "train",
    "train_mode",
    "train_summary",
    "trainable_parameters",
]
