"""Model specs -> shapes (ShapeResolver), read from config.json files only: the sublens cache, the
local Hugging Face cache, checkpoint and run folders, `tiny:` specs, or the shipped shapes."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sublens.plan.shapes import (
    KNOWN_TYPES,
    ModelShape,
    ShapeError,
    parameter_count,
    shape_from_config,
    shipped_shapes,
)


def cache_root() -> Path:
    """The sublens cache (as sublens.models.cache.cache_root, without its transformers import)."""
    import os

    return Path(os.environ.get("SUBLENS_CACHE", Path.home() / ".cache" / "sublens")).expanduser()


def _hf_cached_config(hub_id: str) -> Path | None:
    """config.json of a hub model in the local Hugging Face cache (never the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    try:
        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # a malformed id: the run would say so
        return None
    return Path(found) if isinstance(found, str) else None


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec and the shape found for it (None: unknown, see note)."""

    spec: str
    shape: ModelShape | None
    source: str  # where the shape came from
    note: str = ""
    problem: str = ""  # what the run itself would refuse when it loads this spec

    @property
    def parameters(self) -> int | None:
        return parameter_count(self.shape) if self.shape is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "parameters": self.parameters,
            "source": self.source,
            "note": self.note,
            "problem": self.problem,
            "shape": asdict(self.shape) if self.shape is not None else None,
        }


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ShapeResolver:
    """Model specs -> shapes, the way sublens.models.resolve classifies specs (embedded name, run
    folder, checkpoint folder, .gguf file, hub id), reading config.json only.

    `aliases` maps specs that do not exist yet (the paper chain's stage folders) to the spec of
    the model they will be a fine-tuned copy of, with a reason.
    """

    def __init__(self, aliases: dict[str, tuple[str, str]] | None = None) -> None:
        self.aliases = dict(aliases or {})
        self._seen: dict[str, ResolvedModel] = {}

    def add(self, spec: str, shape: ModelShape | None, source: str = "given") -> ResolvedModel:
        """Register a spec's shape (a test, or a caller that knows it)."""
        self._seen[spec] = ResolvedModel(spec, shape, source)
        return self._seen[spec]

    def resolve(self, spec: str) -> ResolvedModel:
        if spec not in self._seen:
            self._seen[spec] = self._resolve(spec, depth=0)
        return self._seen[spec]

    def _resolve(self, spec: str, depth: int) -> ResolvedModel:
        if depth > 4:
            return ResolvedModel(spec, None, "-", "shape unknown: run folders refer to each other")
        if spec in self.aliases:
            target, why = self.aliases[spec]
            found = self._resolve(target, depth + 1)
            return replace(found, spec=spec, source=f"{why} from {target}; {found.source}")
        if spec.startswith("tiny:"):
            return self._tiny(spec)
        from sublens.models import EMBEDDED, looks_like_path  # torch: imported by the CLI anyway

        if spec in EMBEDDED:
            config = cache_root() / "models" / spec / "config.json"
            if config.is_file():
                return self._from_file(spec, config, "sublens cache")
            return self._shipped(spec, f"embedded, not converted yet (`sublens fetch {spec}`)")
        folder, _, name = spec.partition("#")
        path = Path(folder).expanduser()
        if (path / "record.json").is_file() and not (path / "config.json").is_file():
            return self._run_folder(spec, path, name, depth)
        if path.is_dir() and not name:
            if (path / "config.json").is_file():
                return self._from_file(spec, path / "config.json", "checkpoint folder")
            return ResolvedModel(spec, None, "-", "shape unknown", f"{folder} has no config.json (not a checkpoint)")
        if path.is_file() and path.suffix == ".gguf":
            return ResolvedModel(spec, None, "GGUF file", "shape unknown: a GGUF file is read when converted")
        if looks_like_path(spec) or path.exists():
            return ResolvedModel(spec, None, "-", "shape unknown", f"no such run folder, checkpoint or file: {spec}")
        if _HUB_ID.match(spec):
            cached = _hf_cached_config(spec)
            if cached is not None:
                return self._from_file(spec, cached, "Hugging Face cache")
            return self._shipped(spec, "not in the local Hugging Face cache")
        found = self._shipped(spec, "")
        canonical = shipped_shapes().get(spec, (None,))[0]
        hint = f" (use {canonical})" if canonical and canonical != spec else ""
        return replace(
            found, problem=f"{spec!r} is not a hub id (owner/name), an embedded model or a path: loading it fails{hint}"
        )

    def _from_file(self, spec: str, config: Path, source: str) -> ResolvedModel:
        try:
            shape = shape_from_config(json.loads(config.read_text(encoding="utf-8")))
        except (OSError, ValueError, ShapeError) as exc:
            return ResolvedModel(spec, None, str(config), f"shape unknown: {exc}")
        note = "" if shape.model_type in KNOWN_TYPES else f"model type {shape.model_type!r}: Llama-like layout assumed"
        return ResolvedModel(spec, shape, f"{source}: {config}", note)

    def _tiny(self, spec: str) -> ResolvedModel:
        """A `tiny:` spec states its shape; its vocabulary is its borrowed tokenizer's."""
        from sublens.errors import ModelSpecError
        from sublens.models.tiny import parse_tiny

        try:
            tiny = parse_tiny(spec)
        except ModelSpecError as exc:
            return ResolvedModel(spec, None, "-", "shape unknown", str(exc))
        tokenizer = self.resolve(tiny.tokenizer).shape
        if tokenizer is None:
            return ResolvedModel(spec, None, "tiny spec", f"shape unknown: the vocabulary of {tiny.tokenizer}")
        config = {
            "model_type": {"gemma3": "gemma3_text"}.get(tiny.family, tiny.family),
            "hidden_size": tiny.hidden,
            "num_hidden_layers": tiny.layers,
            "num_attention_heads": tiny.heads,
            "num_key_value_heads": tiny.kv_heads,
            "head_dim": tiny.head_dim,
            "intermediate_size": tiny.mlp,
            "vocab_size": tokenizer.vocab,
            "tie_word_embeddings": tiny.tied,
            "max_position_embeddings": tiny.context,
        }
        if tiny.family == "gpt2":  # GPT-2's config names
            config |= {
                "n_embd": tiny.hidden,
                "n_layer": tiny.layers,
                "n_head": tiny.heads,
                "n_inner": tiny.mlp,
                "n_positions": tiny.context,
            }
        return ResolvedModel(spec, shape_from_config(config), "tiny spec (random weights)")

    def _shipped(self, spec: str, why: str) -> ResolvedModel:
        entry = shipped_shapes().get(spec)
        if entry is None:
            return ResolvedModel(spec, None, "-", f"shape unknown: {why}, and not in sublens/data/model_shapes.json")
        hub_id, config = entry
        return ResolvedModel(
            spec, shape_from_config(config), f"shipped config of {hub_id}" + (f"; {why}" if why else "")
        )

    def _run_folder(self, spec: str, run_dir: Path, name: str, depth: int) -> ResolvedModel:
        """A run folder is a model spec: its checkpoint's config.json, or (not written yet) the
        shape of the model the run fine-tunes (its config's `base`)."""
        import yaml

        try:
            results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            results = {}
        checkpoints = results.get("checkpoints") or {}
        if name and checkpoints and name not in checkpoints:
            return ResolvedModel(spec, None, "-", "shape unknown", f"run {run_dir} has no checkpoint {name!r}")
        if checkpoints:
            checkpoint = run_dir / checkpoints[name or next(iter(checkpoints))]
            if (checkpoint / "config.json").is_file():
                return self._from_file(spec, checkpoint / "config.json", f"checkpoint of run {run_dir}")
        try:
            base = (yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("base")
        except (OSError, ValueError, AttributeError):
            base = None
        problem = "" if checkpoints else f"run {run_dir} lists no checkpoint (unfinished?): loading it fails"
        if not isinstance(base, str):
            return ResolvedModel(spec, None, "-", "shape unknown: the run names no base model", problem)
        found = self._resolve(base, depth + 1)
        return replace(
            found,
            spec=spec,
            source=f"fine-tuned copy of {base} (run {run_dir}; {found.source})",
            problem=problem or found.problem,
        )
