"""Squeezing-heads distillation as a training loss: teacher maps per batch, squeezed to the
student's head count, projected onto the student's tokens, compared with the student's maps.

The SHD mathematics (closed-form α, the k → m merge schedule, the layer map, character-span
alignment, the temperature-softened KL) lives in `sublens.shd`; this module wires it to real
models and to the training loop:

1. **Texts.** A training text is a `TextRecord` (prompt, answer). The student reads the plain
   text ``prompt + "\\n\\n" + answer`` (the completion format of `sublens.prompts`; its LM
   loss covers the answer tokens), the teacher reads the same characters, either plainly
   (``plain``: an optional context paragraph first) or inside its chat template (``chat``:
   the prompt as the user turn, optionally under a system prompt, the answer as the assistant
   turn). `align_record` tokenizes both and gives every teacher token its character span *in
   the student's text*; template and context tokens get a span outside the text, so they
   overlap nothing: their keys drop out of the projected maps (rows renormalised) and their
   query rows are not projected.
2. **Teacher side** (`ShdTeacher`, no gradient, eager attention): per mapped teacher layer the
   attention probabilities A [E, k, N_t, N_t] and X_i = V_group(i) W_O_i [E, k, N_t, d]
   (padding zeroed: padded queries and keys take no part in α), squeezed per sample to the
   student's m heads, projected to the student's positions through `alignment_matrices` /
   `project_attention`, restricted to the student layer's attention window (Gemma3's
   sliding-window layers) and renormalised.
3. **Student side** (`ShdLoss`): its attention probabilities with gradients, captured with
   `hooks.capture(..., detach=False)` on ``attn.hook_pattern`` while the training loop runs
   (`ShdLoss.attached`), cut per example out of the (padded or packed) batch.
4. **Loss.** `shd.shd_kl` per student layer (temperature-softened KL over valid rows and
   heads, in the direction ``kl_direction``: KL(student ‖ squeezed teacher) by default, as in
   the SHD paper, or KL(teacher ‖ student)), averaged over layers; the training loop adds it
   as ``extra_loss_weight · SHD`` (β) to the student's LM loss. The fit of a student to the
   teacher maps (`measure_fit`) is measured in the same direction as its training loss.
"""

from __future__ import annotations

from sublens.distill.alignment import (
    align_record,
    encode_spans,
    student_encoding,
    teacher_encoding,
)
from sublens.distill.examples import OUTSIDE, AlignedExample, Span, TextRecord, aligned_from_ids
from sublens.distill.fit import FitSet, measure_fit
from sublens.distill.layers import attention_window, head_groups, student_layers, window_mask
from sublens.distill.loss import ShdLoss, layer_losses, student_maps
from sublens.distill.teacher import PATTERN, ShdTeacher, Targets, pad_stack
from sublens.settings import TeacherView

__all__ = [
    "OUTSIDE",
    "PATTERN",
    "AlignedExample",
    "FitSet",
    "ShdLoss",
    "ShdTeacher",
    "Span",
    "Targets",
    "TeacherView",
    "TextRecord",
    "align_record",
    "aligned_from_ids",
    "attention_window",
    "encode_spans",
    "head_groups",
    "layer_losses",
    "measure_fit",
    "pad_stack",
    "student_encoding",
    "student_layers",
    "student_maps",
    "teacher_encoding",
    "window_mask",
]
