"""Device and dtype selection: cuda, then mps, then cpu; float32 on CPU, bfloat16 on GPU."""

from __future__ import annotations

import torch

from sublens.errors import ConfigError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, or the best one available ("auto" or None)."""
    if requested and requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError as exc:
            raise ConfigError(f"Unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps.") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"Device {requested!r} was asked for but CUDA is not available: use device=cpu or auto.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """float32 on CPU (bfloat16 matmuls are slow there), bfloat16 on accelerators."""
    if requested and requested != "auto":
        if requested not in _DTYPES:
            raise ConfigError(f"Unknown dtype {requested!r}: use one of auto, {', '.join(sorted(_DTYPES))}.")
        return _DTYPES[requested]
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
