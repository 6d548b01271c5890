"""distill: the attention maps of the figures: the held-out text, layer and head of the map
figure (`map_example`, `MapExample`) and the student's map there (`student_map`), the figures
drawn at the end of a run (`draw_figures`, with the teacher's panels, `teacher_panels`), and the
alignment figure of docs/shd_alignment.md (`alignment_figure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublens.distill import (
    OUTSIDE,
    AlignedExample,
    ShdTeacher,
    TextRecord,
    align_record,
    head_groups,
)
from sublens.errors import ConfigError
from sublens.experiments.distill.figures import MapPanel, make_figures, maps_figure
from sublens.experiments.distill.loading import Setup, Teacher
from sublens.experiments.distill.results import DistillResults
from sublens.hooks import capture, hook_names
from sublens.models import LoadedModel, load_model
from sublens.report.names import arm_label
from sublens.runs import Run
from sublens.settings import TeacherView

FIGURES = "figures"


@dataclass(frozen=True)
class MapExample:
    """The held-out text, student layer and head of the map figure, and whose maps it shows."""

    text: AlignedExample
    layer: int
    head: int
    teacher: Teacher
    student_tokenizer: Any


def map_example(setup: Setup, student: LoadedModel) -> MapExample:
    """The map figure's text (the shortest fit text unless one is chosen), layer and head."""
    chosen = setup.config.figure
    teacher = next(iter(setup.teachers.values()))
    layers = teacher.shd.layers
    layer = chosen.layer if chosen.layer is not None else layers[len(layers) // 2]
    if layer not in layers:
        raise ConfigError(f"figure.layer {layer} is not a distilled layer ({layers}).")
    if chosen.head >= student.adapter.n_heads:
        raise ConfigError(f"figure.head {chosen.head}: the student has {student.adapter.n_heads} heads.")
    index = chosen.example if chosen.example is not None else int(np.argmin([a.n_student for a in teacher.fit]))
    if not 0 <= index < len(teacher.fit):
        raise ConfigError(f"figure.example {index} is outside the fit set (0..{len(teacher.fit) - 1}).")
    return MapExample(teacher.fit[index], layer, chosen.head, teacher, student.tokenizer)


def student_map(lm: LoadedModel, example: MapExample) -> np.ndarray:
    """The student's attention probabilities [n, n] on the example at its layer and head."""
    name = hook_names(["attn.hook_pattern"], [example.layer])
    ids = torch.tensor([example.text.student_ids], device=lm.device)
    with torch.no_grad(), capture(lm.model, lm.adapter, name) as cache:
        lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return cache[name[0]][0, example.head].float().cpu().numpy()


# ---- figures ---------------------------------------------------------------------------------
def draw_figures(results: DistillResults, run: Run, example: MapExample, maps: dict[str, np.ndarray]) -> list[str]:
    """The figures, relative to the run; the map figure from the maps captured on the way."""
    labels = token_labels(example.student_tokenizer, example.text.student_ids)
    t = example.teacher
    panels = teacher_panels(t.shd, t.lm.tokenizer, example.student_tokenizer, example.text, example.layer, example.head)
    panels += [MapPanel(_student_title(state), matrix, labels, labels) for state, matrix in maps.items()]
    title = f"student layer {example.layer}, head {example.head}"
    return [str(p.relative_to(run.path)) for p in make_figures(results, run.path / FIGURES, panels, title)]


def _student_title(state: str) -> str:
    """'initial student', 'LM-only student': the arm's label as a compound adjective."""
    return "initial student" if state == "initial" else f"{arm_label(state).replace(' ', '-')} student"


def token_labels(tokenizer: Any, ids: Any) -> list[str]:
    """Tokens as short axis labels (space and newline markers spelled out)."""
    if tokenizer is None:
        return [str(i) for i in ids]
    labels = []
    for token in tokenizer.convert_ids_to_tokens(list(ids)):
        text = str(token).replace("Ġ", "_").replace("▁", "_").replace("Ċ", "\\n").replace("\n", "\\n")
        labels.append(text[:8])
    return labels


def _heads(group: list[int]) -> str:
    """Merged teacher heads: 'H0–H3' for a run of adjacent heads, else 'H0+H5'."""
    if len(group) > 1 and group == list(range(group[0], group[-1] + 1)):
        return f"H{group[0]}–H{group[-1]}"
    return "+".join(f"H{h}" for h in group)


def teacher_panels(
    teacher: ShdTeacher, teacher_tok: Any, student_tok: Any, example: AlignedExample, layer: int, head: int
) -> list[MapPanel]:
    """The first teacher head merged into student head `head`, the squeezed map (both on the
    teacher's text tokens) and its projection onto the student's tokens."""
    targets = teacher.targets([example], keep_raw=True)
    raw = targets.raw[layer]
    group = head_groups(teacher.k, teacher.m, teacher.fallback)[head]
    inside = [i for i, span in enumerate(example.teacher_spans) if span != OUTSIDE and (span[1] > span[0] or i == 0)]
    idx = torch.tensor(inside)
    t_labels = token_labels(teacher_tok, [example.teacher_ids[i] for i in inside])
    s_labels = token_labels(student_tok, example.student_ids)
    first = raw["teacher"][0, group[0]][idx][:, idx].cpu().numpy()
    squeezed = raw["squeezed"][0, head][idx][:, idx].cpu().numpy()
    projected = targets.maps[layer][0, head].cpu().numpy()
    return [
        MapPanel(f"teacher L{teacher.teacher_layer[layer]}H{group[0]}", first, t_labels, t_labels),
        MapPanel(f"squeezed {_heads(group)}", squeezed, t_labels, t_labels),
        MapPanel("on student tokens", projected, s_labels, s_labels),
    ]


# ---- the alignment figure of docs/shd_alignment.md ----------------------------------------
ALIGNMENT_TEXT = TextRecord("Subliminal owls extrapolate 142857.", "Nonetheless, 211")


def alignment_figure(
    stem: Path, teacher: str = "smollm2-135m-instruct", student: str = "gemma3-270m", layer: int = 4, head: int = 0
) -> list[Path]:
    """Teacher map, squeezed map and projection onto the student's tokens for one short text
    (plain teacher view), with the alignment matrix, as in docs/shd_alignment.md."""
    from sublens.figures import save_figure

    t = load_model(teacher, "cpu", attn_implementation="eager")
    s = load_model(student, "cpu")
    example = align_record(ALIGNMENT_TEXT, s.tokenizer, t.tokenizer, TeacherView("plain"))
    shd_teacher = ShdTeacher(t.model, t.adapter, s.adapter, [layer])
    panels = teacher_panels(shd_teacher, t.tokenizer, s.tokenizer, example, layer, head)
    Q, _ = example.matrices()
    panels.insert(
        2,
        MapPanel(
            "alignment Q",
            Q.float().numpy(),
            token_labels(s.tokenizer, example.student_ids),
            token_labels(t.tokenizer, example.teacher_ids),
            "teacher token",
            "student token",
        ),
    )
    return save_figure(maps_figure(panels, f"student layer {layer}, head {head}", columns=2), stem)
