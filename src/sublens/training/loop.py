"""The training loop: `train` (tokenise, plan, resume or start, freeze or attach adapters,
step loop with checkpoints, merge, save, result) and one optimizer step, `_train_step`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sublens.arch import Adapter, adapter_for
from sublens.errors import ConfigError, SublensError
from sublens.models.device import resolve_mixed_precision
from sublens.runs import atomic_write_json, read_json
from sublens.train_config import TrainConfig
from sublens.training.checkpoints import (
    RESULT_FILE,
    _check_same,
    _remove_leftovers,
    _resume_key,
    _save_adapter,
    _save_final,
    checkpoint_dirs,
    load_checkpoint,
    load_saved_weights,
    save_checkpoint,
)
from sublens.training.freezing import (
    FreezeReport,
    _report,
    freezing,
    requires_grad_scope,
    train_mode,
    trainable_parameters,
    unique_parameters,
)
from sublens.training.lora import LoraAdapters, _is_adapter_parameter, effective_lora, lora_attached
from sublens.training.result import TrainResult, _summary
from sublens.training.steps import Plan, _make_optimizer, answer_loss_sum, lr_factor
from sublens.training.teardown import _process_group_torn_down_on_interrupt
from sublens.training_data import (
    Batch,
    Example,
    TokenizedExample,
    collate,
    data_fingerprint,
    tokenize_examples,
    tokenizer_pad_id,
)

log = logging.getLogger(__name__)

ExtraLoss = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
StepCallback = Callable[[dict[str, Any]], None]


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
        raise ConfigError(f"max_length={config.max_length} exceeds the model's {limit} positions; lower it.")


def _make_accelerator(model: nn.Module, config: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    device = next(model.parameters()).device
    kwargs = {"cpu": device.type == "cpu", "mixed_precision": resolve_mixed_precision(config.mixed_precision, device)}
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
        {
            "config": _resume_key(TrainConfig.model_validate(saved["config"])),
            "data_fingerprint": saved["data_fingerprint"],
            "world_size": saved["world_size"],
        },
        config,
        fingerprint,
        world,
        path,
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
    """Fine-tune `model` in place on prompt -> answer `examples`; see the `sublens.training`
    docstring.

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
    run = _Run(out_dir, config, accelerator, plan, data, tokenizer_pad_id(tokenizer), fingerprint)
    with ExitStack() as stack:
        stack.enter_context(train_mode(model, config.dropout))
        lora, report = _attach_trainable(stack, model, adapter, config)
        prepared = _prepare(stack, model, run)
        start, history, resumed = _resume_or_start(run, prepared)
        bar = _progress_bar(progress and accelerator.is_main_process, plan.total_steps, start)
        stack.callback(bar.close)
        stack.enter_context(_process_group_torn_down_on_interrupt(world, prepared.wrapped))
        _run_steps(run, prepared, start, history, bar, extra_loss, forward_kwargs or {}, callback)
        if lora is not None:
            if config.save_model:
                _save_adapter(accelerator, lora, out_dir)
            lora.merge()  # before the adapters are detached on exit

    model_dir = None
    if config.save_model:
        model_dir = _save_final(accelerator, model, tokenizer, out_dir)
    return _write_result(run, model_dir, history, resumed, report)


@dataclass(frozen=True)
class _Run:
    """What the steps of one `train` call share."""

    out_dir: Path
    config: TrainConfig
    accelerator: Any
    plan: Plan
    data: Sequence[TokenizedExample]
    pad_id: int
    fingerprint: str

    @property
    def world(self) -> int:
        return self.plan.world


@dataclass(frozen=True)
class _Prepared:
    """The trainable parameters, the model as Accelerate wrapped it, optimizer and schedule."""

    params: list[nn.Parameter]
    wrapped: nn.Module
    optimizer: Any
    scheduler: Any


def _attach_trainable(
    stack: ExitStack, model: nn.Module, adapter: Adapter, config: TrainConfig
) -> tuple[LoraAdapters | None, FreezeReport]:
    """Within `stack`: LoRA adapters with the base weights frozen, or the trainable set's
    freezing; the adapters (None without LoRA) and what is trained."""
    lora, lora_config = None, effective_lora(config)
    if lora_config is not None:
        lora = stack.enter_context(lora_attached(model, adapter, config.freeze, lora_config, config.seed))
        base = [p for n, p in unique_parameters(model) if not _is_adapter_parameter(n)]
        stack.enter_context(requires_grad_scope(model, base))
        report = _report(model, adapter, config.freeze)
        report.notes.append(f"LoRA on {len(lora.layers)} linear layers; base weights frozen.")
    else:
        report = stack.enter_context(freezing(model, config.freeze, adapter, config.embeddings))
    log.info(
        "training %s: %.2fM trainable, %.2fM frozen parameters. %s",
        report.mode,
        report.trainable / 1e6,
        report.frozen / 1e6,
        " ".join(report.notes),
    )
    return lora, report


def _prepare(stack: ExitStack, model: nn.Module, run: _Run) -> _Prepared:
    """Optimizer and LR schedule over the trainable parameters, model and optimizer prepared
    by Accelerate (unwrapped again when `stack` closes)."""
    config, total = run.config, run.plan.total_steps
    params = trainable_parameters(model)
    if not params:
        raise ConfigError("Nothing to train: every parameter is frozen.")
    optimizer = _make_optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s, total))
    wrapped, optimizer = run.accelerator.prepare(model, optimizer)
    stack.callback(run.accelerator.unwrap_model, wrapped, keep_fp32_wrapper=False)
    return _Prepared(params, wrapped, optimizer, scheduler)


def _resume_or_start(run: _Run, prepared: _Prepared) -> tuple[int, list[dict[str, Any]], int | None]:
    """(first step, history so far, the step resumed from or None): the newest checkpoint's
    state when there is one (it must belong to this run), else a fresh start seeded."""
    ckpts = checkpoint_dirs(run.out_dir)
    if ckpts:
        saved = read_json(ckpts[-1] / "state.json")
        _check_same(saved, run.config, run.fingerprint, run.world, ckpts[-1])
        state = load_checkpoint(ckpts[-1], run.accelerator, prepared.wrapped, prepared.optimizer, prepared.scheduler)
        return int(state["step"]), list(state["history"]), int(state["step"])
    from accelerate.utils import set_seed

    set_seed(run.config.seed)
    return 0, [], None


def _run_steps(
    run: _Run,
    prepared: _Prepared,
    start: int,
    history: list[dict[str, Any]],
    bar: Any,
    extra_loss: ExtraLoss | None,
    forward_kwargs: dict[str, Any],
    callback: StepCallback | None,
) -> None:
    """Steps `start` .. the last: each appended to `history`, checkpointed every
    checkpoint_every steps, then handed to `callback`."""
    config, total = run.config, run.plan.total_steps
    for step in range(start, total):
        entry = _train_step(
            prepared.wrapped,
            prepared.optimizer,
            prepared.scheduler,
            run.accelerator,
            run.plan,
            step,
            run.data,
            run.pad_id,
            config,
            prepared.params,
            extra_loss,
            forward_kwargs,
        )
        history.append(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{entry['lm_loss']:.4f}", tok_s=f"{entry['tokens'] / entry['seconds']:.0f}")
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            _write_checkpoint(run, prepared, step + 1, history)
        if callback is not None:
            callback({**entry, "total_steps": total})  # the total, for progress elsewhere


def _write_checkpoint(run: _Run, prepared: _Prepared, step: int, history: list[dict[str, Any]]) -> None:
    state = {
        "step": step,
        "epoch": run.plan.steps[step - 1][0],
        "history": history,
        "config": _resume_key(run.config),
        "data_fingerprint": run.fingerprint,
        "world_size": run.world,
    }
    save_checkpoint(
        run.accelerator,
        prepared.wrapped,
        prepared.optimizer,
        prepared.scheduler,
        state,
        run.out_dir,
        run.config.keep_checkpoints,
    )


def _write_result(
    run: _Run, model_dir: Path | None, history: list[dict[str, Any]], resumed: int | None, report: FreezeReport
) -> TrainResult:
    """The run's TrainResult, written to RESULT_FILE (by the main process) once complete."""
    config, accelerator = run.config, run.accelerator
    lora_config = effective_lora(config)
    result = TrainResult(
        out_dir=str(run.out_dir),
        model_dir=str(model_dir) if model_dir else None,
        complete=True,
        steps=len(history),
        total_steps=run.plan.total_steps,
        steps_per_epoch=run.plan.steps_per_epoch,
        resumed_from=resumed,
        freeze=report.to_dict(),
        lora=lora_config.model_dump(mode="json") if lora_config else None,
        n_examples=len(run.data),
        data_fingerprint=run.fingerprint,
        world_size=run.world,
        precision=str(accelerator.mixed_precision),
        history=history,
        config=config.model_dump(mode="json"),
        **_summary(history),
    )
    if accelerator.is_main_process:
        atomic_write_json(run.out_dir / RESULT_FILE, result.model_dump(mode="json"))
    accelerator.wait_for_everyone()
    return result


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def _train_step(
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    plan: Plan,
    step: int,
    data: Sequence[TokenizedExample],
    pad_id: int,
    config: TrainConfig,
    params: list[nn.Parameter],
    extra_loss: ExtraLoss | None,
    forward_kwargs: dict[str, Any],
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
    lm_sum, extra_sum, metrics = _backward(
        model, accelerator, plan.world, mine, n_answer, config, extra_loss, forward_kwargs
    )
    grad_norm = None
    if config.max_grad_norm is not None:
        grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if plan.world > 1:
        lm_sum = accelerator.reduce(lm_sum, reduction="sum")
        if extra_loss is not None:
            extra_sum, metrics = _mean_over_ranks(accelerator, plan.world, extra_sum, metrics)
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


def _backward(
    model: nn.Module,
    accelerator: Any,
    world: int,
    mine: list[Batch],
    n_answer: int,
    config: TrainConfig,
    extra_loss: ExtraLoss | None,
    forward_kwargs: dict[str, Any],
) -> tuple[torch.Tensor, float, dict[str, float]]:
    """Forward and backward over this process's micro-batches, gradients synchronised on the
    last: (sum of answer-token losses, mean extra loss, mean extra metrics) over them."""
    lm_sum = torch.zeros((), device=accelerator.device)
    extra_sum = 0.0
    metrics: dict[str, float] = {}
    for i, batch in enumerate(mine):
        batch = batch.to(accelerator.device)
        sync = i == len(mine) - 1
        with nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
            loss_sum, outputs = answer_loss_sum(model, batch, **forward_kwargs)
            # DDP averages gradients over processes: scale so the result is sum / n_answer.
            loss = loss_sum * world / n_answer
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
    return lm_sum, extra_sum, metrics


def _mean_over_ranks(
    accelerator: Any, world: int, extra_sum: float, metrics: dict[str, float]
) -> tuple[float, dict[str, float]]:
    """Each rank's mean over its micro-batches: their mean over ranks."""
    names = sorted(metrics)
    local = torch.tensor([extra_sum, *(metrics[k] for k in names)], dtype=torch.float64, device=accelerator.device)
    means = (accelerator.reduce(local, reduction="sum") / world).tolist()
    return means[0], dict(zip(names, means[1:], strict=True))
