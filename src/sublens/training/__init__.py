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
- Optional LoRA through peft (`lora`): low-rank adapters on the linear layers of the set's
  components (``train.lora``, or a ``+loraR`` set); merged into the weights at the end and
  also saved alone in peft's format (``adapter/``).
- Checkpoints every N steps (model safetensors, optimizer, scheduler, RNG states, step, loss
  history), written atomically; rerunning with the same ``out_dir`` resumes and reproduces the
  uninterrupted run (and removes what a killed run left half written or half deleted);
  rerunning a finished run loads its final weights and returns its result.
- An optional ``extra_loss(model, batch) -> (loss, metrics)`` is added with a weight (SHD).

The model is trained in place: after ``train`` returns it holds the fine-tuned weights (LoRA
merged), which are also saved with ``save_pretrained`` (plus the tokenizer) under
``out_dir/model`` so ``load_model(out_dir / "model")`` reads them back.

Modules: `freezing` (trainable sets), `lora` (adapters via peft), `steps` (loss, schedule, plan
of micro-batches, optimizer), `checkpoints` (checkpoints, resume, saved weights), `loop`
(`train` and one step), `teardown` (leaving data-parallel training on an error), `result`
(`TrainResult`, `train_summary`).
"""

from sublens.train_config import FREEZE_MODES, LoraConfig, TrainConfig
from sublens.training.checkpoints import checkpoint_dirs, load_saved_weights
from sublens.training.freezing import (
    FreezeReport,
    freezing,
    frozen_parameters,
    requires_grad_scope,
    train_mode,
    trainable_parameters,
    trained_modules,
    unique_parameters,
)
from sublens.training.loop import ExtraLoss, StepCallback, train
from sublens.training.lora import LoraAdapters, effective_lora, lora_attached, lora_targets
from sublens.training.result import TrainResult, train_summary
from sublens.training.steps import answer_loss, answer_loss_sum, lr_factor
from sublens.training_data import Batch, Example, chat_example

__all__ = [
    "FREEZE_MODES",
    "Batch",
    "Example",
    "ExtraLoss",
    "FreezeReport",
    "LoraAdapters",
    "LoraConfig",
    "StepCallback",
    "TrainConfig",
    "TrainResult",
    "answer_loss",
    "answer_loss_sum",
    "chat_example",
    "checkpoint_dirs",
    "effective_lora",
    "freezing",
    "frozen_parameters",
    "load_saved_weights",
    "lora_attached",
    "lora_targets",
    "lr_factor",
    "requires_grad_scope",
    "train",
    "train_mode",
    "train_summary",
    "trainable_parameters",
    "trained_modules",
    "unique_parameters",
]
