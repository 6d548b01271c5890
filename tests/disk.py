"""Keep the suite's disk use bounded: a run's model weights are the bulk of what a test writes
(a Gemma-3 student is 1.07 GB), and pytest keeps every folder of a session until it ends."""

from __future__ import annotations

from pathlib import Path


def remove_weights(folder: Path) -> None:
    """Delete the model weights under `folder`, keeping records, tables and logs to read after a
    failure. Called when a module-scoped run is no longer needed."""
    for weights in folder.rglob("*.safetensors"):
        weights.unlink(missing_ok=True)
