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

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sublens.arch import Adapter
from sublens.errors import ConfigError, SublensError
from sublens.hooks import ActivationCache, capture, hook_names
from sublens.prompts import COMPLETION_SEPARATOR, chat_prompt
from sublens.settings import DEFAULT_KL_DIRECTION, TeacherView
from sublens.shd import (
    EPS,
    FALLBACKS,
    Squeezed,
    alignment_matrices,
    check_direction,
    head_values,
    layer_map,
    merge_schedule,
    project_attention,
    shd_kl,
    squeeze_heads,
    token_spans,
)
from sublens.training_data import Batch, Example, Segment

Span = tuple[int, int]
OUTSIDE: Span = (-2, -1)  # a teacher token with no characters in the student's text
PATTERN = "attn.hook_pattern"


# ---- texts and alignment -------------------------------------------------------------------
@dataclass(frozen=True)
class TextRecord:
    """One training text: ``prompt`` (may be empty: then the whole text is in the LM loss)
    and ``answer``."""

    prompt: str
    answer: str

    @property
    def text(self) -> str:
        """What the student reads (and the teacher reads, maybe framed by its template)."""
        return self.prompt + COMPLETION_SEPARATOR + self.answer if self.prompt else self.answer

    @property
    def answer_start(self) -> int:
        """First character of the answer in `text`."""
        return len(self.prompt) + len(COMPLETION_SEPARATOR) if self.prompt else 0


@dataclass(frozen=True)
class AlignedExample:
    """One text as both models tokenize it. Spans are character ranges of the *student's*
    text; zero-width spans are special tokens (BOS), `OUTSIDE` marks teacher-only tokens."""

    student_ids: tuple[int, ...]
    student_spans: tuple[Span, ...]
    n_prompt: int  # student tokens before the answer (no LM loss on them)
    teacher_ids: tuple[int, ...]
    teacher_spans: tuple[Span, ...]

    @property
    def n_student(self) -> int:
        return len(self.student_ids)

    @property
    def n_teacher(self) -> int:
        return len(self.teacher_ids)

    @property
    def identity(self) -> bool:
        """Same tokens, same spans: the projection is the identity."""
        return self.student_ids == self.teacher_ids and self.student_spans == self.teacher_spans

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q [N_s, N_t], K [N_t, N_s]) of `shd.alignment_matrices`."""
        return alignment_matrices(self.student_spans, self.teacher_spans)

    def example(self) -> Example:
        """The training loop's example: the student's own token ids, split at the answer."""
        ids = list(self.student_ids)
        return Example(prompt=ids[: self.n_prompt], answer=ids[self.n_prompt :])


def encode_spans(tokenizer: Any, text: str, add_special_tokens: bool = True) -> tuple[list[int], list[Span]]:
    """Token ids of `text` and each token's character span (special tokens: empty span)."""
    if add_special_tokens:
        return token_spans(tokenizer, text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = set(getattr(tokenizer, "all_special_ids", []))
    ids = [int(i) for i in encoded["input_ids"]]
    spans = [(0, 0) if i in special else (int(a), int(b))
             for i, (a, b) in zip(ids, encoded["offset_mapping"], strict=True)]
    return ids, spans


def _answer_split(spans: Sequence[Span], answer_start: int, where: str) -> int:
    """Number of tokens before the first answer token (at least 1: the first token of a text
    has no context to be predicted from)."""
    if answer_start == 0:
        first_real = next((i for i, (a, b) in enumerate(spans) if b > a), None)
        if first_real is None or first_real + 1 >= len(spans):
            raise ConfigError(f"{where}: the text has fewer than two tokens; give a longer text.")
        return first_real + 1
    for i, (a, b) in enumerate(spans):
        if b > a and a >= answer_start:
            return i
    raise ConfigError(f"{where}: the answer tokenizes to no tokens of its own; give a non-empty answer.")


def _map_spans(spans: Sequence[Span], segments: Sequence[tuple[int, int, int]]) -> list[Span]:
    """Teacher spans (teacher string) -> student-text spans through (start, end, target)
    segments: characters [start, end) of the teacher string are characters [target, ...) of
    the student's text. Zero-width spans (specials) stay; others outside every segment get
    `OUTSIDE`; a span crossing a segment edge keeps its part inside."""
    out: list[Span] = []
    for a, b in spans:
        if a == b:
            out.append((0, 0))
            continue
        for start, end, target in segments:
            lo, hi = max(a, start), min(b, end)
            if hi > lo:
                out.append((lo - start + target, hi - start + target))
                break
        else:
            out.append(OUTSIDE)
    return out


def teacher_encoding(tokenizer: Any, record: TextRecord, view: TeacherView, where: str = "text") -> tuple[list[int], list[Span], str]:
    """Teacher ids, their spans in the student's text, and the teacher's full input string."""
    if view.format == "plain":
        context = view.system + COMPLETION_SEPARATOR if view.system else ""
        full = context + record.text
        ids, spans = encode_spans(tokenizer, full, add_special_tokens=True)
        return ids, _map_spans(spans, [(len(context), len(full), 0)]), full
    if view.format != "chat":
        raise ConfigError(f"Unknown teacher format {view.format!r}; use plain or chat.")
    if not record.prompt:
        raise ConfigError(
            f"{where}: a chat-format teacher needs prompt/answer records (the prompt is the user "
            "turn, the answer the assistant turn); this one is a plain text. Use "
            "teacher format: plain, or give records with prompt and answer fields."
        )
    rendered = chat_prompt(tokenizer, record.prompt, view.system).text
    at = rendered.rfind(record.prompt)
    if at < 0:
        raise SublensError(
            f"{where}: the teacher's chat template changed the prompt text (e.g. stripped it), so "
            "its tokens cannot be matched to the student's. Use teacher format: plain."
        )
    full = rendered + record.answer
    ids, spans = encode_spans(tokenizer, full, add_special_tokens=False)
    segments = [(at, at + len(record.prompt), 0), (len(rendered), len(full), record.answer_start)]
    return ids, _map_spans(spans, segments), full


def student_encoding(tokenizer: Any, record: TextRecord, where: str = "text") -> tuple[list[int], list[Span], int]:
    """Student ids of the plain text (its own special tokens, e.g. Gemma's <bos>), their
    spans, and the number of prompt tokens (the LM loss covers the rest)."""
    ids, spans = token_spans(tokenizer, record.text)
    return ids, spans, _answer_split(spans, record.answer_start, where)


def align_record(
    record: TextRecord, student_tokenizer: Any, teacher_tokenizer: Any, view: TeacherView,
    where: str = "text",
) -> AlignedExample:
    """Tokenize one text for both models and record where each token's characters are."""
    s_ids, s_spans, n_prompt = student_encoding(student_tokenizer, record, where)
    t_ids, t_spans, _ = teacher_encoding(teacher_tokenizer, record, view, where)
    return AlignedExample(tuple(s_ids), tuple(s_spans), n_prompt, tuple(t_ids), tuple(t_spans))


def aligned_from_ids(ids: Sequence[int], n_prompt: int, teacher_ids: Sequence[int] | None = None) -> AlignedExample:
    """An example given as token ids, read by both models with one tokenization (identity
    alignment): for tiny models without a tokenizer, and for same-tokenizer pairs."""
    teacher = list(ids) if teacher_ids is None else list(teacher_ids)
    if len(teacher) != len(ids):
        raise ConfigError("Identity alignment needs as many teacher as student tokens.")
    spans = tuple((i, i + 1) for i in range(len(ids)))
    return AlignedExample(tuple(int(i) for i in ids), spans, n_prompt, tuple(int(i) for i in teacher), spans)


# ---- layers and windows --------------------------------------------------------------------
def student_layers(adapter: Adapter, layers: Sequence[int] | None) -> list[int]:
    """The distilled student layers (all when None), checked and sorted."""
    chosen = list(range(adapter.n_layers)) if layers is None else sorted(set(int(x) for x in layers))
    if not chosen:
        raise ConfigError("shd.layers is empty: give at least one student layer (or null for all).")
    bad = [x for x in chosen if not 0 <= x < adapter.n_layers]
    if bad:
        raise ConfigError(f"shd.layers {bad} do not exist: the student has layers 0..{adapter.n_layers - 1}.")
    return chosen


def attention_window(adapter: Adapter, layer: int) -> int | None:
    """Sliding-window size of a layer's attention (Gemma3 local layers), None for global."""
    window = getattr(adapter.attn(layer), "sliding_window", None)
    return int(window) if window else None


def window_mask(n: int, window: int | None, device: torch.device | None = None) -> torch.Tensor:
    """[n, n] bool: keys a query may attend to (causal, and within `window` when given:
    key > query − window, as transformers' sliding-window overlay)."""
    idx = torch.arange(n, device=device)
    allowed = idx[None, :] <= idx[:, None]
    if window is not None:
        allowed &= idx[None, :] > idx[:, None] - window
    return allowed


def head_groups(k: int, m: int, fallback: str = "error") -> list[list[int]]:
    """The teacher heads merged into each of the m student heads (`squeeze_heads`' order)."""
    if m > k and fallback == "repeat":
        return [[j % k] for j in range(m)]
    groups = [[h] for h in range(k)]
    for pairs in merge_schedule(k, m):
        merged = [groups[2 * i] + groups[2 * i + 1] for i in range(pairs)]
        groups = merged + groups[2 * pairs :]
    return groups


# ---- teacher side --------------------------------------------------------------------------
@dataclass
class Targets:
    """Squeezed, projected teacher maps for E examples, per distilled student layer."""

    maps: dict[int, torch.Tensor]  # layer -> [E, m, n, n] (rows stochastic where valid)
    valid: dict[int, torch.Tensor]  # layer -> [E, n] bool (rows that count in the loss)
    alphas: dict[int, list[torch.Tensor]]  # layer -> one [E, pairs] tensor per merge phase
    lengths: list[int]  # student tokens per example
    raw: dict[int, Any] = field(default_factory=dict)  # layer -> details when asked (figures)


def pad_stack(maps: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """[m, n_i, n_i] maps -> [E, m, n, n], zero padded on the right and bottom."""
    return torch.stack([F.pad(x, (0, n - x.shape[-1], 0, n - x.shape[-2])) for x in maps])


class ShdTeacher:
    """The teacher side of SHD for one (teacher, student) pair: which teacher layer feeds each
    distilled student layer, and `targets(examples)`."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        student: Adapter,
        layers: Sequence[int] | None = None,
        fallback: str = "error",
        pad_id: int = 0,
    ) -> None:
        if fallback not in FALLBACKS:
            raise ConfigError(f"Unknown SHD fallback {fallback!r}; choose one of {', '.join(FALLBACKS)}.")
        self.model = model
        self.adapter = adapter
        self.k = adapter.n_heads
        self.m = student.n_heads
        if fallback == "error" or self.m <= self.k:
            try:
                self.schedule = merge_schedule(self.k, self.m)
            except SublensError as exc:  # the student has more heads than the teacher
                raise SublensError(f"{exc} (In `sublens run distill`: --set shd.fallback=repeat.)") from exc
        else:
            self.schedule = []
        self.fallback = fallback
        self.pad_id = pad_id
        self.layers = student_layers(student, layers)
        full_map = layer_map(student.n_layers, adapter.n_layers)
        self.teacher_layer = {s: full_map[s] for s in self.layers}
        self.windows = {s: attention_window(student, s) for s in self.layers}

    def describe(self) -> dict[str, Any]:
        return {
            "teacher_heads": self.k,
            "student_heads": self.m,
            "merge_schedule": self.schedule,
            "fallback": self.fallback if self.m > self.k else None,
            "layer_map": {str(s): t for s, t in self.teacher_layer.items()},
            "student_windows": {str(s): w for s, w in self.windows.items() if w},
        }

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, examples: Sequence[AlignedExample]) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """One teacher pass over a right-padded batch: (teacher layer -> (A [E, k, N, N],
        v [E, N, kv, d_head])), real-token mask [E, N])."""
        n = max(ex.n_teacher for ex in examples)
        ids = torch.full((len(examples), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        for e, ex in enumerate(examples):
            ids[e, : ex.n_teacher] = torch.tensor(ex.teacher_ids)
            mask[e, : ex.n_teacher] = 1
        device = self.device
        ids, mask = ids.to(device), mask.to(device)
        wanted = sorted(set(self.teacher_layer.values()))
        names = hook_names([PATTERN, "attn.hook_v"], wanted)
        was_training = self.model.training
        self.model.eval()
        try:
            with capture(self.model, self.adapter, names) as cache:
                self.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        finally:
            self.model.train(was_training)
        out = {t: (cache[f"blocks.{t}.{PATTERN}"], cache[f"blocks.{t}.attn.hook_v"]) for t in wanted}
        return out, mask.bool()

    def squeeze(self, layer: int, A: torch.Tensor, v: torch.Tensor, real: torch.Tensor) -> Squeezed:
        """Squeeze one teacher layer's maps to m heads per sample. Padded queries and keys are
        zeroed first (A rows and X rows), so they take no part in α."""
        A = A.float() * real[:, None, :, None] * real[:, None, None, :]  # [E, k, N, N]
        X = head_values(v.float(), self.adapter.W_O(layer).float(), self.k)  # [E, k, N, d_model]
        X = X * real[:, None, :, None]
        return squeeze_heads(A, X, self.m, self.fallback)

    @torch.no_grad()
    def targets(self, examples: Sequence[AlignedExample], keep_raw: bool = False) -> Targets:
        """Squeeze each mapped teacher layer to m heads (per sample), project onto the
        student's tokens, restrict to each student layer's window and renormalise.
        Layer by layer, so only one layer's X [E, k, N, d_model] is in memory at a time."""
        per_layer, real = self.forward(examples)
        device = self.device
        matrices = [tuple(x.to(device=device, dtype=torch.float32) for x in ex.matrices()) for ex in examples]
        lengths = [ex.n_student for ex in examples]
        n = max(lengths)
        targets = Targets({}, {}, {}, lengths)
        for t, (A, v) in per_layer.items():
            squeezed = self.squeeze(t, A, v, real)
            projected = [
                project_attention(squeezed.maps[e, :, : ex.n_teacher, : ex.n_teacher], Q, K)
                for e, (ex, (Q, K)) in enumerate(zip(examples, matrices, strict=True))
            ]
            for s in (s for s in self.layers if self.teacher_layer[s] == t):
                maps, valid = [], []
                for P, ok in projected:
                    P = P * window_mask(P.shape[-1], self.windows[s], P.device)
                    mass = P.sum(-1, keepdim=True)  # [m, n_s, 1]
                    ok = ok & (mass.squeeze(-1) > EPS).all(dim=0)
                    maps.append(P / mass.clamp_min(EPS))
                    valid.append(F.pad(ok, (0, n - ok.shape[0])))
                targets.maps[s] = pad_stack(maps, n)
                targets.valid[s] = torch.stack(valid)
                targets.alphas[s] = squeezed.alphas
                if keep_raw:
                    targets.raw[s] = {"teacher": A.float(), "squeezed": squeezed.maps}
        targets.maps = dict(sorted(targets.maps.items()))
        return targets


# ---- student side and the loss -------------------------------------------------------------
def _direction(direction: str) -> str:
    try:
        return check_direction(direction)
    except SublensError as exc:
        raise ConfigError(str(exc)) from exc


def student_maps(pattern: torch.Tensor, segments: Sequence[Segment], n: int) -> torch.Tensor:
    """Each example's own map cut out of a batch's pattern [rows, m, T, T] -> [E, m, n, n]
    (one block per segment: padded and packed batches alike)."""
    blocks = [pattern[seg.row, :, seg.start : seg.start + seg.length, seg.start : seg.start + seg.length]
              for seg in segments]
    return pad_stack(blocks, n)


def layer_losses(
    targets: Targets, patterns: dict[int, torch.Tensor], segments: Sequence[Segment], temperature: float,
    direction: str = DEFAULT_KL_DIRECTION,
) -> dict[int, tuple[torch.Tensor, int]]:
    """layer -> (KL in `direction` (`shd.shd_kl`) averaged over valid rows and heads, number of
    valid rows)."""
    n = max(targets.lengths)
    out = {}
    for s, target in targets.maps.items():
        student = student_maps(patterns[s], segments, n).float()
        valid = targets.valid[s].to(student.device)
        out[s] = (shd_kl(target.to(student.device), student, valid, temperature, direction), int(valid.sum()))
    return out


class ShdLoss:
    """The SHD term for `sublens.training.train(..., extra_loss=loss)`:

        with loss.attached(student_model, student_adapter):
            train(student_model, tokenizer, [ex.example() for ex in examples], config, out,
                  extra_loss=loss)

    `examples` are the aligned examples in the order given to `train` (batch segments index
    them). The loss of a batch is the mean over distilled layers of the KL (in `direction`:
    ``student_teacher`` = KL(student ‖ squeezed teacher), ``teacher_student`` = KL(teacher ‖
    student)) averaged over valid rows and heads.
    """

    def __init__(self, teacher: ShdTeacher, examples: Sequence[AlignedExample], temperature: float = 1.0,
                 direction: str = DEFAULT_KL_DIRECTION) -> None:
        if temperature <= 0:
            raise ConfigError(f"SHD temperature must be positive, got {temperature}.")
        self.teacher = teacher
        self.examples = list(examples)
        self.temperature = temperature
        self.direction = _direction(direction)
        self._cache: ActivationCache | None = None

    @property
    def names(self) -> list[str]:
        return hook_names([PATTERN], self.teacher.layers)

    @contextmanager
    def attached(self, model: nn.Module, adapter: Adapter) -> Iterator[ShdLoss]:
        """Capture the student's attention probabilities with their graph (eager attention)
        for the body of the block."""
        if adapter.n_heads != self.teacher.m:
            raise SublensError(f"This loss was built for a student with {self.teacher.m} heads, not {adapter.n_heads}.")
        with capture(model, adapter, self.names, detach=False) as cache:
            self._cache = cache
            try:
                yield self
            finally:
                self._cache = None

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self._cache is None:
            raise SublensError("ShdLoss needs the student's attention: call it inside `with loss.attached(model, adapter):`.")
        examples = [self.examples[seg.example] for seg in batch.segments]
        for seg, ex in zip(batch.segments, examples, strict=True):
            if seg.length != ex.n_student:
                raise SublensError(
                    f"Batch example #{seg.example} has {seg.length} tokens but its aligned text has "
                    f"{ex.n_student}: pass train() the examples in the order of the ShdLoss examples."
                )
        # Taken before the teacher runs (a teacher that is the student model would overwrite them).
        patterns = {s: self._cache[f"blocks.{s}.{PATTERN}"] for s in self.teacher.layers}
        targets = self.teacher.targets(examples)
        losses = layer_losses(targets, patterns, batch.segments, self.temperature, self.direction)
        loss = torch.stack([kl for kl, _ in losses.values()]).mean()
        metrics = {"shd": float(loss.detach())}
        alphas = [a for s in targets.alphas for a in targets.alphas[s]]
        if alphas:
            metrics["alpha_mean"] = float(torch.cat([a.flatten() for a in alphas]).mean())
        for s, (kl, _) in losses.items():
            metrics[f"kl_L{s}"] = float(kl.detach())
        return loss, metrics


# ---- fit of a student to the teacher maps (no training) -------------------------------------
@dataclass
class FitSet:
    """Held-out texts with their teacher targets, computed once and reused for every student
    state (before / after training)."""

    batches: list[tuple[Batch, Targets]]
    teacher: ShdTeacher
    temperature: float
    direction: str = DEFAULT_KL_DIRECTION  # of the KL, as in the training loss

    @classmethod
    def build(cls, teacher: ShdTeacher, examples: Sequence[AlignedExample], batch_size: int,
              temperature: float, pad_id: int = 0, direction: str = DEFAULT_KL_DIRECTION) -> FitSet:
        from sublens.training_data import collate, tokenize_examples

        data = tokenize_examples([ex.example() for ex in examples], None, max(ex.n_student for ex in examples))
        batches = []
        for start in range(0, len(examples), batch_size):
            rows = [[i] for i in range(start, min(start + batch_size, len(examples)))]
            batch = collate(data, rows, pad_id, packed=False)
            batches.append((batch, teacher.targets([examples[r[0]] for r in rows])))
        return cls(batches, teacher, temperature, _direction(direction))

    def alphas(self) -> dict[int, list[torch.Tensor]]:
        """layer -> per phase, all examples' α ([n_examples, pairs])."""
        out: dict[int, list[torch.Tensor]] = {}
        for _, targets in self.batches:
            for s, phases in targets.alphas.items():
                if s not in out:
                    out[s] = [a.cpu() for a in phases]
                else:
                    out[s] = [torch.cat([old, a.cpu()]) for old, a in zip(out[s], phases, strict=True)]
        return out

    def measure(self, model: nn.Module, adapter: Adapter, temperatures: Sequence[float] | None = None) -> dict[str, Any]:
        return measure_fit(model, adapter, {"fit": self}, temperatures)["fit"]


@torch.no_grad()
def measure_fit(
    model: nn.Module, adapter: Adapter, fitsets: Mapping[str, FitSet], temperatures: Sequence[float] | None = None
) -> dict[str, dict[str, Any]]:
    """The KL between the student's maps and the squeezed teacher's, in each fit set's direction
    (that of its training loss; recorded as ``kl_direction``), per layer and averaged over layers
    (each layer: over the valid rows and heads of every example) for each fit set, at its
    training temperature and at 1 (or the given temperatures). Fit sets of the same texts share
    the student's forward."""
    sets = list(fitsets.items())
    first = sets[0][1]
    for name, fs in sets[1:]:
        if len(fs.batches) != len(first.batches) or any(
            not torch.equal(a.input_ids, b.input_ids) for (a, _), (b, _) in zip(fs.batches, first.batches, strict=True)
        ):
            raise SublensError(f"Fit set {name!r} holds other texts than {sets[0][0]!r}; measure them separately.")
    layers = sorted({s for _, fs in sets for s in fs.teacher.layers})
    temps = {name: sorted({fs.temperature, 1.0} if temperatures is None else set(temperatures)) for name, fs in sets}
    sums: dict[tuple[str, float, int], float] = {}
    rows: dict[tuple[str, int], int] = {}
    names = hook_names([PATTERN], layers)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with capture(model, adapter, names) as cache:
            for i, (batch, _) in enumerate(first.batches):
                b = batch.to(device)
                model(**b.model_inputs(), use_cache=False, logits_to_keep=1)
                patterns = {s: cache[f"blocks.{s}.{PATTERN}"] for s in layers}
                for name, fs in sets:
                    targets = fs.batches[i][1]
                    for T in temps[name]:
                        for s, (kl, n) in layer_losses(targets, patterns, b.segments, T, fs.direction).items():
                            sums[(name, T, s)] = sums.get((name, T, s), 0.0) + float(kl) * n
                            if temps[name][0] == T:
                                rows[(name, s)] = rows.get((name, s), 0) + n
    finally:
        model.train(was_training)
    out: dict[str, dict[str, Any]] = {}
    for name, fs in sets:
        result: dict[str, Any] = {"layers": fs.teacher.layers, "kl_direction": fs.direction,
                                  "rows": {str(s): rows[(name, s)] for s in fs.teacher.layers}}
        for T in temps[name]:
            per_layer = {str(s): sums[(name, T, s)] / max(rows[(name, s)], 1) for s in fs.teacher.layers}
            result[f"T={T:g}"] = {"mean": sum(per_layer.values()) / len(per_layer), "per_layer": per_layer}
        out[name] = result
    return out


__all__ = [
    "AlignedExample",
    "FitSet",
    "ShdLoss",
    "ShdTeacher",
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
    "student_encoding",
    "student_layers",
    "student_maps",
    "teacher_encoding",
    "window_mask",
]
