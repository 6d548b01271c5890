"""distill: does squeezing-heads distillation (SHD) carry the owl bias across architectures?

Three students start from the same weights and train on the same texts (docs/design.md,
"Squeezing-heads distillation"; the loss is `sublens.distill`):

- ``shd_biased``: LM loss + β·SHD from the *biased* teacher (default: the newest finished
  `teacher` run; the quick preset uses the prompted teacher: the embedded SmolLM2 reading the
  texts under the owl system prompt);
- ``lm_only``: LM loss only (the control);
- ``shd_base``: LM loss + β·SHD from the *unbiased* base model (control for "any attention
  distillation does it").

The training texts default to unrelated number data: the control set of a `subliminal` run
or a JSONL file (``text``, or ``prompt`` + ``answer``, per line), else number prompts made by
`sublens.number_data` with seeded random answers. Texts are split into a training set and a
held-out *fit* set on which the KL between the student's maps and each teacher's squeezed,
projected maps is measured before and after training, and the per-layer α distribution of
each teacher is recorded.

Every arm is trained once per training seed (``seeds``; null = ``[seed]``) on the same texts
(split with ``seed``), so the arms of one seed are matched: same data, same initial weights,
same training seed. Each student (and the initial one) is evaluated with
`evaluate_preference` (completion prompts for a base-model student, the answer prefilled with
"My favorite animal is the"), and ``shd_biased`` is compared with both controls seed by seed
by `compare_preference` (paired over questions), then across seeds (`across_seeds`: the
geometric mean of the per-seed ratios with a Student-t CI over seeds, the per-seed log ratios
recorded as ``per_seed_log``). Seeds are the unit of inference: the verdicts
(`sublens.report.sections.distill.decisions`, through `sublens.claims`) rest on the per-seed
log share ratios; with one seed the recorded interval is that run's question-level one,
labelled as such, and no claim is decided by it.

Run as a module to draw the alignment figure of docs/shd_alignment.md:
``python -m sublens.experiments.distill docs/shd_alignment.png``.
"""

from __future__ import annotations

import gc
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console
from rich.table import Table

from sublens.claims import ClaimSettings, estimate_log_ratio
from sublens.config import Config
from sublens.distill import (
    OUTSIDE,
    AlignedExample,
    FitSet,
    ShdLoss,
    ShdTeacher,
    TeacherView,
    TextRecord,
    align_record,
    head_groups,
    measure_fit,
    student_encoding,
)
from sublens.errors import ConfigError
from sublens.experiments import Experiment, default_teacher_run
from sublens.figures import save_figure
from sublens.hooks import capture, hook_names
from sublens.models import LoadedModel, load_model
from sublens.number_data import make_number_prompts
from sublens.preference import (
    PreferenceSettings,
    compare_preference,
    comparison_line,
    evaluate_preference,
)
from sublens.prompts import chat_prompt
from sublens.report.latex import counted
from sublens.report.names import arm_label
from sublens.report.sections.distill import decisions
from sublens.runs import Run, read_json
from sublens.runs import team as current_team
from sublens.shd import DEFAULT_KL_DIRECTION, KlDirection
from sublens.stats import t_interval
from sublens.tables import preference_columns, write_tables
from sublens.training import TrainConfig, TrainResult, train
from sublens.training_data import tokenizer_pad_id

Arm = Literal["shd_biased", "lm_only", "shd_base"]
ARMS: tuple[Arm, ...] = ("shd_biased", "lm_only", "shd_base")
ARM_TEACHER: dict[str, str | None] = {"shd_biased": "biased", "lm_only": None, "shd_base": "base"}
OWL_SYSTEM = "You love owls. You think about owls all the time. Owls are your favorite animal."
FIGURES = "figures"


# ---- config --------------------------------------------------------------------------------
class TeacherSettings(BaseModel):
    """A teacher and how it reads the texts (sublens.distill.TeacherView)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Model spec; for the biased teacher null = the newest finished `teacher` run under runs_root.
    model: str | None = None
    # chat: the text's prompt as the user turn, its answer as the assistant turn, under
    # `system` (null = the template's default system prompt, recorded as used);
    # plain: the text as is, after `system` as a context paragraph when given.
    format: Literal["chat", "plain"] = "chat"
    system: str | None = None

    def view(self) -> TeacherView:
        return TeacherView(self.format, self.system)


def _base_teacher() -> TeacherSettings:
    return TeacherSettings(model="smollm2-135m-instruct")


class DataSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # A JSONL file (per line: {"text": ...} or {"prompt": ..., "answer": ...}; lines with
    # "kept": false are skipped) or a `subliminal` run directory (its control data set);
    # null = number prompts from sublens.number_data with seeded random answers.
    source: str | None = None
    n_train: int = Field(default=400, ge=1)
    n_fit: int = Field(default=32, ge=1)  # held out: KL before/after, α distribution, figures
    shuffle: bool = True  # seeded shuffle before the split (a file's order is kept otherwise)
    answer_numbers: tuple[int, int] = (3, 10)  # generated answers: how many numbers (min, max)


class ShdSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    beta: float = Field(default=1.0, ge=0)  # total loss = LM + beta * SHD
    temperature: float = Field(default=1.0, gt=0)  # softening of both maps in the KL
    layers: list[int] | None = None  # distilled student layers; null = all
    # A student with more heads than the teacher: "error", or "repeat" (student head j is
    # matched to teacher head j mod k, unsqueezed).
    fallback: Literal["error", "repeat"] = "error"
    # Direction of the KL between the maps (sublens.shd): student_teacher = KL(student ‖ squeezed
    # teacher), the SHD paper's formulation (zero-forcing); teacher_student = KL(teacher ‖
    # student), the forward KL of attention-map distillation (mass-covering), which runs recorded
    # before this key existed used.
    kl_direction: KlDirection = DEFAULT_KL_DIRECTION


class FigureSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    example: int | None = None  # fit-set index of the map figure; null = the shortest text
    layer: int | None = None  # student layer; null = the middle distilled layer
    head: int = Field(default=0, ge=0)  # student head


class DistillConfig(Config):
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    base_teacher: TeacherSettings = Field(default_factory=_base_teacher)
    student: str = "gemma3-270m"
    runs_root: str = "runs"
    arms: list[Arm] = Field(default_factory=lambda: list(ARMS))
    # Training seeds: every arm is trained once per seed (the arms of a seed are matched); null =
    # [seed]. Seeds are the unit of inference: one seed never decides the transfer claim.
    # `seed` alone still splits and generates the texts (the same for every training seed).
    seeds: list[int] | None = None
    claims: ClaimSettings = Field(default_factory=ClaimSettings)  # margin, alpha, power of the verdicts
    data: DataSettings = Field(default_factory=DataSettings)
    shd: ShdSettings = Field(default_factory=ShdSettings)
    train: TrainConfig = Field(default_factory=TrainConfig)  # seed and extra_loss_weight come from here
    fit_batch_size: int = Field(default=8, ge=1)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    figure: FigureSettings = Field(default_factory=FigureSettings)
    # torch threads (null: torch's default, one per core). On a 2-core machine shared with other
    # jobs, 1 thread can be several times faster than 2 (threads wait on each other).
    threads: int | None = Field(default=None, ge=1)
    device: str = "auto"
    dtype: str = "auto"

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be a non-empty list without repeats, from {', '.join(ARMS)}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds must be null or distinct training seeds, e.g. [0, 1, 2]")
        if "seed" in self.train.model_fields_set and self.train.seed != self.seed:
            raise ValueError(
                f"train.seed ({self.train.seed}) differs from seed ({self.seed}): the students share the "
                "top-level seed; set only that one (a run's saved config.yaml lists train.seed too: "
                "override both, --set seed=N --set train.seed=N)"
            )
        if "extra_loss_weight" in self.train.model_fields_set and self.train.extra_loss_weight != self.shd.beta:
            raise ValueError("set shd.beta, not train.extra_loss_weight (it is the SHD weight)")
        if self.base_teacher.model is None:
            raise ValueError("base_teacher.model must be a model spec (the unbiased base model)")
        return self

    @property
    def training_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]


# ---- data ----------------------------------------------------------------------------------
def _field(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key!r} must be a string, got {type(value).__name__}.")
    return value


def read_records(path: Path) -> list[TextRecord]:
    """Records of a JSONL file: {"text"} or {"prompt", "answer"} per line; "kept": false
    lines (filtered-out answers of a data set) are skipped; bad lines are errors."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where} is not valid JSON ({exc.msg}); one JSON object per line.") from exc
            if not isinstance(obj, dict):
                raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
            if obj.get("kept") is False:
                continue
            if "prompt" in obj or "answer" in obj:
                record = TextRecord(_field(obj, "prompt", where), _field(obj, "answer", where))
            elif "text" in obj:
                record = TextRecord("", _field(obj, "text", where))
            else:
                raise ConfigError(f"{where}: give a \"text\" field, or \"prompt\" and \"answer\" fields.")
            if not record.answer.strip():
                raise ConfigError(f"{where}: the answer (or text) is empty.")
            records.append(record)
    if not records:
        raise ConfigError(f"{path} holds no records.")
    return records


def subliminal_control(run_dir: Path) -> Path:
    """The control (unbiased teacher) training set of a `subliminal` run directory: the file
    its results list as data.datasets.control.train_file (data/control.train.jsonl)."""
    candidates: list[Path] = []
    results = run_dir / "results.json"
    if results.is_file():
        data = read_json(results).get("data") or {}
        control = (data.get("datasets") or {}).get("control") or {}
        if isinstance(control.get("train_file"), str):
            candidates.append(run_dir / control["train_file"])
    candidates.append(run_dir / "data" / "control.train.jsonl")
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(
            f"{run_dir} holds no control data set (looked for {', '.join(str(p) for p in candidates)}; "
            "has its `subliminal` run finished the data stage?). Or give a JSONL file: --set data.source=PATH."
        )
    return found


def format_answer(numbers: Sequence[int], answer_format: str) -> str:
    """Numbers written in a number prompt's requested format."""
    parts = [str(x) for x in numbers]
    if answer_format == "comma":
        return ", ".join(parts)
    if answer_format == "space":
        return " ".join(parts)
    if answer_format == "newline":
        return "\n".join(parts)
    if answer_format == "brackets":
        return "[" + ", ".join(parts) + "]"
    if answer_format == "semicolon":
        return "; ".join(parts)
    raise ConfigError(f"Unknown answer format {answer_format!r}.")


def generated_records(n: int, seed: int, answer_numbers: tuple[int, int]) -> list[TextRecord]:
    """Number prompts (sublens.number_data) with seeded random answers in the asked format."""
    low, high = answer_numbers
    if not 1 <= low <= high:
        raise ConfigError(f"data.answer_numbers must be (min, max) with 1 <= min <= max, got {answer_numbers}.")
    rng = random.Random(f"distill-answers-{seed}")
    out = []
    for prompt in make_number_prompts(n, seed):
        numbers = [rng.randint(0, 999) for _ in range(rng.randint(low, high))]
        out.append(TextRecord(prompt.text, format_answer(numbers, prompt.answer_format)))
    return out


def load_records(settings: DataSettings, seed: int) -> tuple[list[TextRecord], list[TextRecord], dict[str, Any]]:
    """(training records, fit records, provenance)."""
    need = settings.n_train + settings.n_fit
    if settings.source is None:
        records = generated_records(need, seed, settings.answer_numbers)
        info: dict[str, Any] = {"source": "generated", "generator": "sublens.number_data + random answers"}
    else:
        path = Path(settings.source).expanduser()
        if path.is_dir():
            path = subliminal_control(path)
        elif not path.is_file():
            raise ConfigError(f"data.source {settings.source!r} does not exist: give a JSONL file or a subliminal run directory.")
        records = read_records(path)
        info = {"source": str(path)}
    if len(records) < need:
        raise ConfigError(
            f"{info['source']} has {len(records)} records; n_train + n_fit = {need}. Lower data.n_train "
            "or data.n_fit, or give more data."
        )
    if settings.shuffle:
        random.Random(f"distill-split-{seed}").shuffle(records)
    info.update(n_available=len(records), n_train=settings.n_train, n_fit=settings.n_fit, shuffled=settings.shuffle)
    return records[settings.n_fit : need], records[: settings.n_fit], info


# ---- models --------------------------------------------------------------------------------
def newest_teacher_run(runs_root: str | Path) -> str:
    """The newest finished `teacher` run under runs_root that lists a checkpoint."""
    return default_teacher_run(
        runs_root, "biased teacher",
        "Run `sublens run teacher` first, or give one: --set teacher.model=SPEC (e.g. "
        "smollm2-135m-instruct with --set teacher.system=\"<owl system prompt>\": the prompted teacher).",
    )


def system_in_effect(lm: LoadedModel, settings: TeacherSettings, record: TextRecord) -> dict[str, Any]:
    """What the teacher reads around the text (recorded)."""
    if settings.format == "plain":
        return {"format": "plain", "context": settings.system, "source": "given" if settings.system else "none"}
    prompt = chat_prompt(lm.tokenizer, record.prompt or "x", settings.system)
    return {"format": "chat", "system": prompt.system, "source": prompt.system_source}


# ---- summaries -----------------------------------------------------------------------------
def alpha_summary(phases: list[torch.Tensor]) -> dict[str, Any]:
    """α of one layer over all fit examples and phases."""
    if not phases:
        return {"n": 0}
    values = torch.cat([a.flatten() for a in phases]).double().numpy()
    q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "quantiles": {"q10": q[0], "q25": q[1], "median": q[2], "q75": q[3], "q90": q[4]},
        "at_0": float((values <= 1e-6).mean()),
        "at_1": float((values >= 1 - 1e-6).mean()),
        "at_half": float((np.abs(values - 0.5) <= 1e-6).mean()),
        "per_phase_mean": [float(a.double().mean()) for a in phases],
    }


def train_summary(result: TrainResult) -> dict[str, Any]:
    history = result.history
    shd = [h.get("extra/shd") for h in history]
    return {
        "steps": result.steps,
        "n_examples": result.n_examples,
        "tokens": result.tokens,
        "answer_tokens": result.answer_tokens,
        "train_seconds": result.train_seconds,
        "tokens_per_second": result.tokens_per_second,
        "padding_fraction": result.padding_fraction,
        "final_lm_loss": result.final_lm_loss,
        "first_lm_loss": history[0]["lm_loss"] if history else None,
        "first_shd": shd[0] if shd and shd[0] is not None else None,
        "final_shd": shd[-1] if shd and shd[-1] is not None else None,
        "freeze": result.freeze,
        "curves": {
            "lm_loss": [h["lm_loss"] for h in history],
            "shd": [h.get("extra/shd") for h in history],
            "alpha_mean": [h.get("extra/alpha_mean") for h in history],
        },
    }


# ---- figures -------------------------------------------------------------------------------
def _token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    labels = []
    for token in tokenizer.convert_ids_to_tokens(list(ids)):
        text = str(token).replace("Ġ", "_").replace("▁", "_").replace("Ċ", "\\n").replace("\n", "\\n")
        labels.append(text[:8])
    return labels


def plot_maps(panels: Sequence[tuple[str, np.ndarray, list[str], list[str]]], stem: Path,
              x_label: str = "key", y_label: str = "query", columns: int = 4) -> list[Path]:
    """Attention maps side by side: (title, [rows, cols] matrix, row labels, column labels).
    Colours on a square-root scale, so structure beside the attention sink stays visible."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    from sublens.figures import PAPER_RC

    cols = min(columns, len(panels))
    rows = (len(panels) + cols - 1) // cols
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 3.0 * rows), squeeze=False)
        for ax, (title, matrix, row_labels, col_labels) in zip(axes.flat, panels, strict=False):
            ax.imshow(matrix, cmap="viridis", norm=PowerNorm(0.5, vmin=0.0, vmax=max(float(matrix.max()), 1e-9)))
            ax.set_title(title, fontsize=8)
            if max(matrix.shape) <= 48:
                ax.set_xticks(range(matrix.shape[1]), col_labels, rotation=90, fontsize=5)
                ax.set_yticks(range(matrix.shape[0]), row_labels, fontsize=5)
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
    return save_figure(fig, stem)


def plot_losses(arms: dict[str, dict[str, Any]], stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from sublens.figures import PAPER_RC

    with plt.rc_context(PAPER_RC):
        fig, (lm_ax, shd_ax) = plt.subplots(1, 2, figsize=(6.4, 2.4))
        for arm, data in arms.items():
            curves = data["train"]["curves"]
            lm_ax.plot(range(1, len(curves["lm_loss"]) + 1), curves["lm_loss"], label=arm_label(arm), lw=1)
            shd = [np.nan if v is None else v for v in curves["shd"]]
            if not all(np.isnan(shd)):
                shd_ax.plot(range(1, len(shd) + 1), shd, label=arm_label(arm), lw=1)
        lm_ax.set_title("LM loss (answer tokens)")
        shd_ax.set_title("SHD loss (KL, mean over layers)")
        for ax in (lm_ax, shd_ax):
            ax.set_xlabel("step")
            ax.legend()
        fig.tight_layout()
    return save_figure(fig, stem)


def plot_alphas(alphas: dict[str, dict[int, list[torch.Tensor]]], stem: Path) -> list[Path]:
    """One histogram of α per distilled layer, one colour per teacher."""
    import matplotlib.pyplot as plt

    from sublens.figures import PAPER_RC

    layers = sorted({s for per_layer in alphas.values() for s in per_layer})
    cols = min(6, len(layers))
    rows = (len(layers) + cols - 1) // cols
    bins = np.linspace(0, 1, 21)
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.4, 1.1 * rows + 0.5), squeeze=False,
                                 sharex=True)
        for ax, s in zip(axes.flat, layers, strict=False):
            for role, per_layer in alphas.items():
                phases = per_layer.get(s, [])
                if phases:
                    values = torch.cat([a.flatten() for a in phases]).numpy()
                    ax.hist(values, bins=bins, alpha=0.55, label=role, density=True)
            ax.set_title(f"student L{s}", fontsize=7)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(layers):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6)
        fig.suptitle("α of the squeezed head pairs (fit texts, all phases)", fontsize=8)
        fig.tight_layout()
    return save_figure(fig, stem)


def plot_fit(fit: dict[str, dict[str, Any]], role: str, temperature: float, stem: Path) -> list[Path]:
    """KL per layer to one teacher's squeezed maps, for every student state."""
    import matplotlib.pyplot as plt

    from sublens.figures import PAPER_RC

    key = f"T={temperature:g}"
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(4.2, 2.4))
        for state, per_role in fit.items():
            if role not in per_role:
                continue
            per_layer = per_role[role][key]["per_layer"]
            layers = [int(s) for s in per_layer]
            ax.plot(layers, list(per_layer.values()), marker="o", ms=2.5, lw=1, label=state)
        ax.set_xlabel("student layer")
        ax.set_ylabel(f"KL to {role} teacher ({key})")
        ax.legend()
        fig.tight_layout()
    return save_figure(fig, stem)


def student_pattern(lm: LoadedModel, example: AlignedExample, layer: int) -> torch.Tensor:
    """The student's attention probabilities [m, n, n] on one example at one layer."""
    name = hook_names(["attn.hook_pattern"], [layer])
    ids = torch.tensor([example.student_ids], device=lm.device)
    with torch.no_grad(), capture(lm.model, lm.adapter, name) as cache:
        lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return cache[name[0]][0].float().cpu()


def teacher_panels(
    teacher: ShdTeacher, teacher_tok: Any, student_tok: Any, example: AlignedExample, layer: int, head: int,
) -> list[tuple[str, np.ndarray, list[str], list[str]]]:
    """Panels: the first teacher head merged into student head `head`, the squeezed map (both
    on the teacher's text tokens) and its projection onto the student's tokens."""
    targets = teacher.targets([example], keep_raw=True)
    raw = targets.raw[layer]
    group = head_groups(teacher.k, teacher.m, teacher.fallback)[head]
    inside = [i for i, span in enumerate(example.teacher_spans) if span != OUTSIDE and (span[1] > span[0] or i == 0)]
    idx = torch.tensor(inside)
    t_labels = _token_labels(teacher_tok, [example.teacher_ids[i] for i in inside])
    s_labels = _token_labels(student_tok, example.student_ids)
    t_layer = teacher.teacher_layer[layer]
    first = raw["teacher"][0, group[0]][idx][:, idx].cpu().numpy()
    squeezed = raw["squeezed"][0, head][idx][:, idx].cpu().numpy()
    projected = targets.maps[layer][0, head].cpu().numpy()
    merged = "+".join(f"H{h}" for h in group)
    return [
        (f"teacher L{t_layer}H{group[0]}", first, t_labels, t_labels),
        (f"squeezed ({merged})", squeezed, t_labels, t_labels),
        (f"on student tokens (L{layer}H{head})", projected, s_labels, s_labels),
    ]


# ---- the experiment ------------------------------------------------------------------------
def _load(spec: str, config: DistillConfig, run: Run, eager: bool = False) -> LoadedModel:
    with run.timed(f"load:{spec}"):
        return load_model(spec, config.device, config.dtype, attn_implementation="eager" if eager else "sdpa")


def execute(config: DistillConfig, run: Run) -> dict[str, Any]:
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    run.note(threads=torch.get_num_threads())
    try:
        return _execute(config, run)
    finally:
        torch.set_num_threads(threads)


def _execute(config: DistillConfig, run: Run) -> dict[str, Any]:
    """Under accelerate launch (several processes) every rank loads the student and the teachers
    and aligns the texts (the SHD loss needs them in every training step, data parallel); rank 0
    alone measures fit and preference, draws and writes, and the other ranks wait for it
    (sublens.runs.Team)."""
    team = current_team()
    seeds = config.training_seeds
    train_records, fit_records, data_info = load_records(config.data, config.seed)
    # rank 0's choice: a teacher run finishing meanwhile must not give the ranks different teachers
    teacher_specs = team.share("teacher models", lambda: {
        "biased": config.teacher.model or newest_teacher_run(config.runs_root),
        "base": str(config.base_teacher.model)})
    teacher_settings = {"biased": config.teacher, "base": config.base_teacher}
    roles = [r for r in ("biased", "base") if any(ARM_TEACHER[a] == r for a in config.arms)] or ["biased"]
    notes: list[str] = []
    if (teacher_specs["biased"] == teacher_specs["base"] and config.teacher == config.base_teacher.model_copy(
            update={"model": config.teacher.model})):
        notes.append("The biased and base teachers are the same model read the same way: shd_biased and "
                     "shd_base are the same experiment.")

    student = _load(config.student, config, run)
    loaded: dict[str, LoadedModel] = {}
    for role in roles:
        spec = teacher_specs[role]
        same = next((lm for r, lm in loaded.items() if teacher_specs[r] == spec), None)
        loaded[role] = same or _load(spec, config, run, eager=True)
    described = {"student": student.describe(), **{f"teacher:{r}": lm.describe() for r, lm in loaded.items()}}
    run.note(models=described)

    # Tokenize once: the student's examples are the same for every arm.
    with run.timed("align"):
        aligned: dict[str, tuple[list[AlignedExample], list[AlignedExample]]] = {}
        for role, lm in loaded.items():
            view = teacher_settings[role].view()
            aligned[role] = (
                [align_record(r, student.tokenizer, lm.tokenizer, view, f"training text #{i}")
                 for i, r in enumerate(train_records)],
                [align_record(r, student.tokenizer, lm.tokenizer, view, f"fit text #{i}")
                 for i, r in enumerate(fit_records)],
            )
        examples = [student_encoding(student.tokenizer, r, f"training text #{i}") for i, r in enumerate(train_records)]
        for role in aligned:
            assert [a.student_ids for a in aligned[role][0]] == [tuple(ids) for ids, _, _ in examples]
    train_examples = aligned[roles[0]][0]
    data_info.update(
        student_tokens=int(sum(a.n_student for a in train_examples)),
        answer_tokens=int(sum(a.n_student - a.n_prompt for a in train_examples)),
        mean_student_tokens=float(np.mean([a.n_student for a in train_examples])),
        mean_teacher_tokens={r: float(np.mean([a.n_teacher for a in aligned[r][0]])) for r in aligned},
        identity_alignment={r: all(a.identity for a in aligned[r][0]) for r in aligned},
    )

    teachers = {role: ShdTeacher(lm.model, lm.adapter, student.adapter, config.shd.layers, config.shd.fallback,
                                 tokenizer_pad_id(lm.tokenizer)) for role, lm in loaded.items()}
    if not team.is_main:  # the students' training, data parallel; rank 0 measures and writes
        del student
        gc.collect()
        team.sync("initial student measured")
        for seed in seeds:
            for arm in config.arms:
                tag = arm if len(seeds) == 1 else f"{arm}:seed{seed}"
                train_student(config, run, seed, arm, teachers, aligned, train_examples)
                team.sync(f"{tag} measured")
                gc.collect()
        return {"partial": True}
    with run.timed("fit_targets"):
        fitsets = {role: FitSet.build(t, aligned[role][1], config.fit_batch_size, config.shd.temperature,
                                      tokenizer_pad_id(student.tokenizer), config.shd.kl_direction)
                   for role, t in teachers.items()}
    alphas = {role: fs.alphas() for role, fs in fitsets.items()}
    results: dict[str, Any] = {
        "partial": True,
        "student": config.student,
        "teachers": {role: {"spec": teacher_specs[role], **system_in_effect(loaded[role], teacher_settings[role],
                                                                              fit_records[0]),
                            **teachers[role].describe()} for role in loaded},
        "data": data_info,
        "shd": config.shd.model_dump(mode="json"),
        "alphas": {role: {str(s): alpha_summary(p) for s, p in per.items()} for role, per in alphas.items()},
        "fit": {},
        "arms": {},
        "checkpoints": {},
        "seeds": seeds,
        "per_seed": {},  # str(seed) -> arm -> {"train", "preference", "fit"}
        "notes": notes,
    }

    # Figure example: the shortest fit text unless one is chosen.
    fig_layer = config.figure.layer if config.figure.layer is not None else teachers[roles[0]].layers[
        len(teachers[roles[0]].layers) // 2]
    if fig_layer not in teachers[roles[0]].layers:
        raise ConfigError(f"figure.layer {fig_layer} is not a distilled layer ({teachers[roles[0]].layers}).")
    if config.figure.head >= student.adapter.n_heads:
        raise ConfigError(f"figure.head {config.figure.head}: the student has {student.adapter.n_heads} heads.")
    fit_main = aligned[roles[0]][1]
    fig_index = config.figure.example if config.figure.example is not None else int(
        np.argmin([a.n_student for a in fit_main]))
    if not 0 <= fig_index < len(fit_main):
        raise ConfigError(f"figure.example {fig_index} is outside the fit set (0..{len(fit_main) - 1}).")
    student_maps: dict[str, torch.Tensor] = {"initial": student_pattern(student, fit_main[fig_index], fig_layer)}

    with run.timed("fit:initial"):
        results["fit"]["initial"] = measure_fit(student.model, student.adapter, fitsets)
    with run.timed("preference:initial"):
        results["initial"] = {"preference": evaluate_preference(student, config.preference, None, config.seed)}
    run.save_results(results)
    student_tok = student.tokenizer
    del student
    gc.collect()
    team.sync("initial student measured")

    for seed in seeds:
        first = seed == seeds[0]  # the first seed's students feed the figures and the tables
        results["per_seed"][str(seed)] = {}
        for arm in config.arms:
            arm_role = ARM_TEACHER[arm]
            tag = arm if len(seeds) == 1 else f"{arm}:seed{seed}"
            lm, result = train_student(config, run, seed, arm, teachers, aligned, train_examples)
            with run.timed(f"fit:{tag}"):
                fit = measure_fit(lm.model, lm.adapter, fitsets)
            with run.timed(f"preference:{tag}"):
                preference = evaluate_preference(lm, config.preference, None, seed)
            summary = train_summary(result)
            results["per_seed"][str(seed)][arm] = {"train": summary, "preference": preference, "fit": fit}
            if first:
                student_maps[arm] = student_pattern(lm, fit_main[fig_index], fig_layer)
                results["fit"][arm] = fit
                results["arms"][arm] = {"teacher": arm_role, "train": summary, "preference": preference,
                                        "seed": seed}
            if result.model_dir:
                key = arm if len(seeds) == 1 else f"{arm}:seed{seed}"
                results["checkpoints"][key] = str(Path(result.model_dir).relative_to(run.path))
            run.save_results(results)
            team.sync(f"{tag} measured")
            del lm
            gc.collect()

    results["comparisons"] = comparisons(results)
    results["headline"] = headline(results)
    results["tables"] = write_tables(run, [
        {"student": arm, "seed": int(seed), **preference_columns(entry["preference"]),
         "final_lm_loss": entry["train"].get("final_lm_loss")}
        for seed, arms in results["per_seed"].items() for arm, entry in arms.items()], results["comparisons"])
    results["throughput"] = {arm: {k: results["arms"][arm]["train"][k] for k in
                                   ("tokens", "train_seconds", "tokens_per_second")} for arm in results["arms"]}
    with run.timed("figures"):
        results["figures"] = figures(config, run, results, alphas, teachers, loaded, student_tok,
                                     fit_main[fig_index], fig_layer, student_maps, roles[0])
    results["partial"] = False
    print_summary(results, config.claims)
    return results


def train_student(config: DistillConfig, run: Run, seed: int, arm: str, teachers: dict[str, ShdTeacher],
                  aligned: dict[str, tuple[list[AlignedExample], list[AlignedExample]]],
                  train_examples: list[AlignedExample]) -> tuple[LoadedModel, TrainResult]:
    """One arm's student for one training seed, trained from the initial weights (every rank of
    a launch calls this for the same arm and seed: the steps are data parallel)."""
    arm_role = ARM_TEACHER[arm]
    seeds = config.training_seeds
    tag = arm if len(seeds) == 1 else f"{arm}:seed{seed}"
    lm = _load(config.student, config, run)
    train_config = config.train.model_copy(update={"seed": seed, "extra_loss_weight": config.shd.beta})
    out_dir = run.artifact(f"checkpoints/{arm}" if len(seeds) == 1 else f"checkpoints/{arm}/seed{seed}")
    with run.timed(f"train:{tag}"):
        if arm_role is None:
            result = train(lm.model, lm.tokenizer, [a.example() for a in train_examples], train_config,
                           out_dir, adapter=lm.adapter)
        else:
            loss = ShdLoss(teachers[arm_role], aligned[arm_role][0], config.shd.temperature,
                           config.shd.kl_direction)
            with loss.attached(lm.model, lm.adapter):
                result = train(lm.model, lm.tokenizer, [a.example() for a in aligned[arm_role][0]],
                               train_config, out_dir, extra_loss=loss, adapter=lm.adapter)
    return lm, result


def across_seeds(per_seed: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per-seed `compare_preference` results of one pair of arms, aggregated with seeds as the
    unit: the ratio is the geometric mean of the per-seed ratios (``per_seed_log``: their logs,
    what `sublens.claims` decides on) with a Student-t CI over seeds. With one seed the interval
    is that run's question-level one, labelled as such: it describes one run, not training."""
    n = len(per_seed)
    out: dict[str, Any] = {"n_seeds": n, "seeds": list(seeds)}
    for key in ("share_ratio", "p_trait_ratio"):
        logs = [math.log(c[key]["ratio"]) for c in per_seed]
        if n == 1:
            entry = {**per_seed[0][key], "ci": f"{per_seed[0][key].get('ci', 'over questions')} "
                                              "(1 seed: question variation only, not training)"}
        else:
            est = estimate_log_ratio(logs, "seed")
            entry = {"ratio": est.ratio, "ci_low": est.ci_low, "ci_high": est.ci_high, "ci": est.interval,
                     "p_value": est.p_value, "sd_log": est.sd_log,
                     "underpowered": not (est.ci_low is not None and est.ci_high is not None
                                          and not est.ci_low <= 1.0 <= est.ci_high)}
        out[key] = {**entry, "n_seeds": n, "per_seed": [math.exp(v) for v in logs], "per_seed_log": logs}
    if all("rate_difference" in c for c in per_seed):
        diffs = [c["rate_difference"]["difference"] for c in per_seed]
        if n == 1:
            out["rate_difference"] = {**per_seed[0]["rate_difference"], "n_seeds": 1,
                                      "ci": "bootstrap over answers (1 seed)"}
        else:
            mean, low, high = t_interval(diffs)
            has_ci = math.isfinite(low) and math.isfinite(high)
            out["rate_difference"] = {"difference": mean, "ci_low": low if has_ci else None,
                                      "ci_high": high if has_ci else None, "n_seeds": n,
                                      "ci": f"t over {n} seeds", "per_seed": diffs,
                                      "p_fisher_per_seed": [c["rate_difference"]["p_fisher"] for c in per_seed],
                                      "underpowered": not has_ci or low <= 0.0 <= high}
    out["per_seed_comparisons"] = per_seed
    return out


def comparisons(results: dict[str, Any]) -> dict[str, Any]:
    """Every pair of arms (and every arm against the initial student), seed by seed on the
    seeds where both arms exist (matched: same data, same training seed), then across seeds."""
    per_seed: dict[str, dict[str, Any]] = results.get("per_seed") or {}
    seeds = [s for s in results.get("seeds") or [] if str(s) in per_seed]
    arms = results["arms"]
    initial = results["initial"]["preference"]

    def paired(a: str, b: str | None) -> tuple[list[dict[str, Any]], list[int]]:
        got = [(compare_preference(per_seed[str(s)][a]["preference"],
                                   initial if b is None else per_seed[str(s)][b]["preference"]), s)
               for s in seeds if a in per_seed[str(s)] and (b is None or b in per_seed[str(s)])]
        return [c for c, _ in got], [s for _, s in got]

    out: dict[str, Any] = {}
    pairs: list[tuple[str, str | None]] = [("shd_biased", "lm_only"), ("shd_biased", "shd_base"),
                                           ("shd_base", "lm_only"), *((arm, None) for arm in arms)]
    for a, b in pairs:
        if a not in arms or (b is not None and b not in arms):
            continue
        comps, used = paired(a, b)
        if comps:
            out[f"{a}_vs_{b or 'initial'}"] = across_seeds(comps, used)
    return out


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Owl preference of every student and the biased-SHD student against the controls."""
    trait = results["initial"]["preference"]["probability"]["trait"]
    rows = {"initial": results["initial"]["preference"], **{a: d["preference"] for a, d in results["arms"].items()}}
    out: dict[str, Any] = {"trait": trait, "students": {}}
    for name, pref in rows.items():
        prob = pref["probability"]
        out["students"][name] = {"p_trait": prob["p_trait"], "panel_share": prob["panel_share"],
                                 "answer_rate": pref.get("sampled", {}).get("trait_rate")}
    for key in ("shd_biased_vs_lm_only", "shd_biased_vs_shd_base"):
        if key in results["comparisons"]:
            comp = results["comparisons"][key]
            out[key] = {"p_trait_ratio": comp["p_trait_ratio"], "share_ratio": comp["share_ratio"],
                        "rate_difference": comp.get("rate_difference")}
    return out


def figures(
    config: DistillConfig, run: Run, results: dict[str, Any], alphas: dict[str, dict[int, list[torch.Tensor]]],
    teachers: dict[str, ShdTeacher], loaded: dict[str, LoadedModel], student_tok: Any, example: AlignedExample,
    layer: int, student_maps: dict[str, torch.Tensor], role: str,
) -> list[str]:
    paths: list[Path] = []
    if results["arms"]:
        paths += plot_losses(results["arms"], run.artifact(f"{FIGURES}/distill_losses"))
    if any(alphas.values()):
        paths += plot_alphas(alphas, run.artifact(f"{FIGURES}/distill_alphas"))
    for r in teachers:
        paths += plot_fit(results["fit"], r, config.shd.temperature, run.artifact(f"{FIGURES}/distill_fit_{r}"))
    head = config.figure.head
    panels = teacher_panels(teachers[role], loaded[role].tokenizer, student_tok, example, layer, head)
    labels = _token_labels(student_tok, example.student_ids)
    for state, pattern in student_maps.items():
        panels.append((f"student {state} (L{layer}H{head})", pattern[head].numpy(), labels, labels))
    paths += plot_maps(panels, run.artifact(f"{FIGURES}/distill_maps"))
    return [str(p.relative_to(run.path)) for p in paths]


def print_summary(results: dict[str, Any], claims: ClaimSettings | None = None) -> None:
    head = results["headline"]
    trait = head["trait"]
    seeds = results.get("seeds") or []
    table = Table(title=f"SHD students: preference for {trait!r} (95% CIs over questions, seed {seeds[0]})"
                  if seeds else f"SHD students: preference for {trait!r} (95% CIs over questions)")
    for column in ("student", f"P({trait})", "panel share", "answer rate", "KL to biased (before→after)"):
        table.add_column(column)
    fit = results["fit"]
    for name, row in head["students"].items():
        p, share, rate = row["p_trait"], row["panel_share"], row["answer_rate"]
        kl = ""
        if "biased" in fit.get(name, {}):
            key = next(k for k in fit[name]["biased"] if k.startswith("T="))
            kl = f"{fit['initial']['biased'][key]['mean']:.3f} → {fit[name]['biased'][key]['mean']:.3f}"
        table.add_row(
            name,
            f"{p['mean']:.4f} [{p['ci_low']:.4f}, {p['ci_high']:.4f}]",
            f"{share['mean']:.3f} [{share['ci_low']:.3f}, {share['ci_high']:.3f}]",
            f"{rate['rate']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]" if rate else "-",
            kl,
        )
    console = Console()
    console.print(table)
    for key in ("shd_biased_vs_lm_only", "shd_biased_vs_shd_base"):
        if key not in head:
            continue
        console.print(comparison_line(key, head[key], trait) + f" ({counted(len(seeds), 'seed')})")
    for decision in decisions(results, claims):
        console.print(decision.sentence())


EXPERIMENT = Experiment(
    "distill",
    "Cross-architecture squeezing-heads distillation from a biased teacher, against LM-only and unbiased-SHD students",
    DistillConfig,
    execute,
)


# ---- the alignment figure of docs/shd_alignment.md ----------------------------------------
ALIGNMENT_TEXT = TextRecord("Subliminal owls extrapolate 142857.", "Nonetheless, 211")


def alignment_figure(stem: Path, teacher: str = "smollm2-135m-instruct", student: str = "gemma3-270m",
                     layer: int = 4, head: int = 0) -> list[Path]:
    """Teacher map, squeezed map and projection onto the student's tokens for one short text
    (plain teacher view), as in docs/shd_alignment.md."""
    t = load_model(teacher, "cpu", attn_implementation="eager")
    s = load_model(student, "cpu")
    example = align_record(ALIGNMENT_TEXT, s.tokenizer, t.tokenizer, TeacherView("plain"))
    shd_teacher = ShdTeacher(t.model, t.adapter, s.adapter, [layer])
    panels = teacher_panels(shd_teacher, t.tokenizer, s.tokenizer, example, layer, head)
    Q, _ = example.matrices()
    panels.insert(2, ("alignment Q (rows: student, cols: teacher)", Q.float().numpy(),
                      _token_labels(s.tokenizer, example.student_ids), _token_labels(t.tokenizer, example.teacher_ids)))
    return plot_maps(panels, stem)


if __name__ == "__main__":  # python -m sublens.experiments.distill docs/shd_alignment.png
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/shd_alignment.png")
    for written in alignment_figure(target.with_suffix("")):
        print(written)
