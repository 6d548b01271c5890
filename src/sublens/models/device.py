"""Device and dtype selection: cuda, then mps, then cpu; float32 on CPU, bfloat16 on GPU."""

from __future__ import annotations

from pathlib import Path

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


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (avx512_bf16 or AMX flags, Linux).

    Without them PyTorch emulates bf16 matrix products, which is several times slower than
    float32 (measured 9 against 86 GFLOP/s on an AVX2-only EPYC; benchmarks/README.md)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """'auto': bf16 autocast where the hardware has native bf16 (a CUDA GPU that supports it,
    a CPU with avx512_bf16/AMX), else 'no' (float32). Other values pass through."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
