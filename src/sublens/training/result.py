"""The result of a training run (`TrainResult`, kept as train_result.json) and the summary every
training experiment writes of it (`train_summary`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from sublens.result_records import TrainingSummary


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
