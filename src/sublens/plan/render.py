"""The plan as text: human-readable counts, bytes and times, the rows of the task and totals
tables, and the lines under each stage (models, peak memory) that `sublens run --plan`
prints (the JSON form is Plan.to_dict)."""

from __future__ import annotations

from sublens.plan.stages import Plan, StagePlan
from sublens.plan.workloads import PLACEHOLDER_RUN


def human_count(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def human_flops(value: float | None) -> str:
    return "?" if value is None else f"{value:.2e}"


def human_bytes(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value / 2**30:.1f} GiB" if value >= 2**27 else f"{value / 2**20:.0f} MiB"


def human_seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 60:
        return f"{value:.0f} s" if value >= 1 else "<1 s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def short_spec(spec: str) -> str:
    """A spec as a table shows it: a hub id's name, a stage placeholder or run folder's last part."""
    if spec.startswith(str(PLACEHOLDER_RUN)):
        return "stage " + spec.removeprefix(str(PLACEHOLDER_RUN / "stages") + "/")
    return spec.rsplit("/", 1)[-1] if "/" in spec.partition("#")[0] else spec


TASK_COLUMNS = ("task", "model", "kind", "tokens", "FLOPs", "memory", "time")
TOTAL_COLUMNS = ("stage", "models", "params", "generate", "score", "train", "FLOPs", "peak_memory", "time")


def task_rows(stage: StagePlan) -> list[dict[str, str]]:
    return [
        {
            "task": t.task.label,
            "model": short_spec(t.task.model),
            "kind": t.task.kind,
            "tokens": human_count(t.task.tokens),
            "FLOPs": human_flops(t.flops),
            "memory": human_bytes(t.memory.total if t.memory else None),
            "time": human_seconds(t.seconds),
        }
        for t in stage.tasks
    ]


def total_rows(plan: Plan) -> list[dict[str, str]]:
    rows = []
    for s in plan.stages:
        known = any(t.flops is not None for t in s.tasks) or not s.tasks

        def partial(text: str, s: StagePlan = s, known: bool = known) -> str:
            """`?` where nothing is known, `+?` where a model's shape is missing from the sum."""
            return text if s.complete else f"{text} +?" if known else "?"

        rows.append(
            {
                "stage": s.stage,
                "models": ", ".join(short_spec(m.spec) for m in s.models),
                "params": ", ".join(human_count(m.parameters) if m.parameters else "?" for m in s.models),
                "generate": human_count(s.tokens("generate")),
                "score": human_count(s.tokens("score")),
                "train": human_count(s.tokens("train")),
                "FLOPs": partial(human_flops(s.flops)),
                "peak_memory": partial(human_bytes(s.peak_memory)),
                "time": partial(human_seconds(s.seconds)),
            }
        )
    if len(plan.stages) > 1:
        rows.append(
            {
                "stage": "total",
                "models": "",
                "params": "",
                "generate": human_count(plan.tokens("generate")),
                "score": human_count(plan.tokens("score")),
                "train": human_count(plan.tokens("train")),
                "FLOPs": human_flops(plan.flops),
                "peak_memory": human_bytes(plan.peak_memory) + " (max)",
                "time": human_seconds(plan.seconds) + " (sum)",
            }
        )
    return rows


def peak_line(stage: StagePlan) -> str | None:
    """Where a stage's memory peaks and what it is made of."""
    known = [t for t in stage.tasks if t.memory is not None]
    if not known:
        return None
    top = max(known, key=lambda t: t.memory.total if t.memory else 0)
    m = top.memory
    assert m is not None
    parts = [
        ("weights", m.weights),
        ("gradients", m.gradients),
        ("AdamW", m.optimizer),
        ("activations" if top.task.kind == "train" else "KV cache, working set and logits", m.activations),
    ]
    shown = " + ".join(f"{name} {human_bytes(value)}" for name, value in parts if value)
    return (
        f"  peak memory {human_bytes(m.total)} in '{top.task.label}' (batch {min(top.task.batch, top.task.rows)}, "
        f"{top.task.context + top.task.new_tokens + top.task.cached} tokens): {shown}"
    )


def model_lines(stage: StagePlan) -> list[str]:
    lines = []
    for m in stage.models:
        if m.shape is None:
            lines.append(f"  {m.spec}: {m.note or 'shape unknown'}")
        else:
            lines.append(f"  {m.spec}: {m.parameters:,} parameters [{m.source}]" + (f" ({m.note})" if m.note else ""))
    return lines
