"""The paper chain's progress lines: the time left, scaled by the measured speed of the stages
that ran, and a heartbeat that prints it while a long stage runs (sublens.experiments.paper)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from sublens.experiments.paper import PaperConfig


def _eta(
    config: PaperConfig,
    remaining: list[str],
    speed: float,
    elapsed_in_first: float = 0.0,
    spent: float = 0.0,
    estimated: float = 0.0,
) -> str:
    """Time left: the remaining stages' estimates scaled by the measured speed so far (actual /
    estimated minutes of the stages that ran: `spent` / `estimated`), less what the running
    stage has already taken. A running stage past its scaled estimate shows the chain is slower
    than measured: the speed is re-measured with it included, and the figure is what the later
    stages need ('after <stage>'), since how long the running one still takes is unknown."""
    minutes = sum(config.stages[s].estimate_minutes for s in remaining) * speed
    if not (remaining and elapsed_in_first):
        return _minutes_left(minutes)
    first = config.stages[remaining[0]].estimate_minutes
    if elapsed_in_first <= first * speed:
        return _minutes_left(minutes - elapsed_in_first)
    if len(remaining) == 1:  # nothing after it to estimate
        return f"{remaining[0]} is the last stage (then the bundle, under a minute)"
    slower = (spent + elapsed_in_first) / (estimated + first)
    rest = sum(config.stages[s].estimate_minutes for s in remaining[1:]) * slower
    return _minutes_left(rest) + f" after {remaining[0]}"


def _minutes_left(minutes: float) -> str:
    return f"~{minutes:.0f} min left" if minutes >= 1 else "<1 min left"


class _Heartbeat:
    """Prints where the chain stands every `every` seconds while a stage runs, so the time-left
    estimate moves with the clock (and says when a stage has run past its estimate)."""

    def __init__(self, console: Console, every: float = 120.0) -> None:
        self.console, self.every = console, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, stage: str, estimate: float, eta: Callable[[float], str]) -> None:
        started = time.perf_counter()

        def beat() -> None:
            while not self._stop.wait(self.every):
                elapsed = (time.perf_counter() - started) / 60
                over = f", past its estimate of {estimate:.0f} min" if elapsed > estimate else ""
                self.console.print(f"[dim]paper: {stage} running for {elapsed:.0f} min{over}; {eta(elapsed)}[/]")

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="paper-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
