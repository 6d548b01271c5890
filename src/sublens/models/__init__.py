"""Model specs and loading: everything downstream gets a LoadedModel and never cares where
it came from (embedded package, hub id, local folder, GGUF file, run folder, or a `tiny:` spec:
a random model of a chosen geometry with a borrowed real tokenizer, see sublens.models.tiny)."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from sublens.arch import Adapter, adapter_for
from sublens.errors import ModelSpecError
from sublens.models.cache import convert_gguf, gguf_entry, is_complete, remove_stale_partials
from sublens.models.device import dtype_name, pick_device, pick_dtype
from sublens.models.embedded import EMBEDDED, EmbeddedModel
from sublens.models.tiny import borrow_tokenizer, build_tiny, is_tiny, parse_tiny

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_RUN_NAME = re.compile(r"^\d{8}-\d{6}_[\w-]+_[0-9a-f]+$")  # runs/<timestamp>_<experiment>_<id>


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel (causal LM)
    tokenizer: PreTrainedTokenizerBase
    adapter: Adapter
    spec: str
    source: str  # "embedded", "folder", "gguf", "run", "hub" or "tiny"
    path: str  # where the weights were read from (tiny: the spec with every key spelt out)
    device: torch.device
    dtype: torch.dtype

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "source": self.source,
            "path": self.path,
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "chat_template": self.has_chat_template,
            **self.adapter.describe(),
        }


def ensure_embedded(name: str) -> Path:
    """Converted safetensors folder of an embedded model (converting it once if needed)."""
    entry = EMBEDDED[name]
    dest = gguf_entry(Path(), name)
    remove_stale_partials(dest.parent)  # also when this model is converted already
    if is_complete(dest):
        return dest
    return convert_gguf(entry.locate(), dest, entry.architecture)


def _run_checkpoint(spec: str) -> Path | None:
    """A model written by a sublens run: `RUN_DIR` (its only or first checkpoint) or `RUN_DIR#name`.

    Runs that produce models list them in results.json as {"checkpoints": {name: relative path}}.
    """
    folder, _, name = spec.partition("#")
    run_dir = Path(folder).expanduser()
    if not (run_dir / "record.json").is_file() or (run_dir / "config.json").is_file():
        return None
    results = run_dir / "results.json"
    checkpoints = json.loads(results.read_text()).get("checkpoints", {}) if results.is_file() else {}
    if not checkpoints:
        raise ModelSpecError(
            f"The run directory {folder!r} holds no model checkpoint (its results.json lists none: "
            "did the run finish?). Give a run that trains or edits a model, or a checkpoint folder."
        )
    if name and name not in checkpoints:
        raise ModelSpecError(f"Run {folder!r} has no checkpoint {name!r}; it has: {', '.join(checkpoints)}.")
    return run_dir / checkpoints[name or next(iter(checkpoints))]


def looks_like_path(spec: str) -> bool:
    """Whether a spec names something on disk rather than a hub id (`owner/name`: one slash).

    A path: starts with `.`, `/` or `~`; ends with `.gguf`; has a `#checkpoint` suffix (run
    folders only); has more than one `/` or a backslash; its first component is `runs` or an
    existing directory; or a component is a run folder name (`<timestamp>_<experiment>_<id>`)."""
    folder = spec.partition("#")[0]
    parts = folder.replace("\\", "/").split("/")
    return (
        spec.startswith((".", "/", "~"))
        or folder.endswith(".gguf")
        or "#" in spec
        or "\\" in spec
        or spec.count("/") > 1
        or ("/" in folder and (parts[0] == "runs" or Path(parts[0]).expanduser().is_dir()))
        or any(_RUN_NAME.match(part) for part in parts)
    )


def _nearest(path: Path) -> tuple[Path | None, list[str]]:
    """The deepest existing folder above `path` and its entries closest to the missing name."""
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return None, []
    missing = path.relative_to(parent).parts[0] if path.is_relative_to(parent) else path.name
    try:
        names = [p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return parent, []
    return parent, difflib.get_close_matches(missing, names, n=3)


def check_spec(spec: str) -> str:
    """Validate a spec without loading or converting anything: one that looks like a path (see
    looks_like_path) must exist, so that a mistyped run folder is never sent to the hub. Full
    checks (checkpoint inside a run, config.json in a folder) happen when it is resolved.
    A `tiny:` spec is parsed (its grammar and geometry checked)."""
    if is_tiny(spec):
        parse_tiny(spec)
        return spec
    if spec in EMBEDDED or not looks_like_path(spec):
        return spec
    folder = spec.partition("#")[0]
    path = Path(folder).expanduser()
    if path.exists():
        return spec
    parent, nearest = _nearest(path)
    kind = "model file" if folder.endswith(".gguf") else "run folder or checkpoint folder"
    hint = ""
    if nearest and parent is not None:
        hint = f" Nearest in {parent}: {', '.join(str(parent / n) for n in nearest)}."
    elif parent is not None and parent != Path(".") and str(parent) not in ("/", "."):
        hint = f" Nothing like it in {parent}."
    raise ModelSpecError(
        f"No such {kind}: {spec!r} ({path} does not exist).{hint} A spec is an existing run folder "
        "(RUN_DIR or RUN_DIR#checkpoint), a checkpoint folder, a .gguf file, a hub id (owner/name), "
        f"an embedded model ({', '.join(EMBEDDED)}) or a tiny random model (tiny:FAMILY?KEY=VALUE&...)."
    )


def resolve(spec: str) -> tuple[str, str]:
    """(source, path or hub id) for a spec, or a ModelSpecError saying what would work.
    A `tiny:` spec resolves to ("tiny", the spec with every key spelt out): nothing to read."""
    if is_tiny(spec):
        return "tiny", parse_tiny(spec).canonical()
    if spec in EMBEDDED:
        return "embedded", str(ensure_embedded(spec))
    run_checkpoint = _run_checkpoint(spec)
    if run_checkpoint is not None:
        return "run", str(run_checkpoint)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", str(convert_gguf(path, gguf_entry(path)))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(
                f"The folder {spec!r} has no config.json, so it is not a model checkpoint. "
                "Give a folder written by save_pretrained (or by a sublens run), a .gguf file, "
                f"a hub id, or an embedded model ({', '.join(EMBEDDED)})."
            )
        return "folder", str(path)
    check_spec(spec)  # a path-like spec that does not exist: say so (nearest names), never the hub
    if looks_like_path(spec) or path.exists():
        raise ModelSpecError(
            f"The model path {spec!r} does not exist (or is not a .gguf file or a checkpoint folder). "
            f"Check the path, or use an embedded model: {', '.join(EMBEDDED)}."
        )
    if "/" in spec and _HUB_ID.match(spec):
        return "hub", spec
    raise ModelSpecError(
        f"Unknown model spec {spec!r}. A spec is an embedded model ({', '.join(EMBEDDED)}; "
        "`sublens models` lists them), a hub id such as meta-llama/Llama-3.2-1B-Instruct, "
        "a local checkpoint folder, a .gguf file, or a tiny random model such as "
        "tiny:llama?layers=2&heads=32&kv_heads=8 (see sublens.models.tiny)."
    )


def load_model(
    spec: str,
    device: str | None = None,
    dtype: str | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load a model spec onto a device (auto: cuda, mps, cpu) in a dtype (auto: fp32 on CPU)."""
    source, where = resolve(spec)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if source == "tiny":
        return _load_tiny(spec, where, dev, dt, attn_implementation)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dt, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        if source != "hub":
            raise ModelSpecError(f"Could not load the model at {where!r}: {exc}") from exc
        raise ModelSpecError(
            f"Could not load {spec!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). The hub may be unreachable from "
            "this machine, the id misspelt, or the model gated (log in with `hf auth login` and "
            "accept its licence). Offline, use a local folder, a .gguf file or an embedded model "
            f"({', '.join(EMBEDDED)})."
        ) from exc
    if tokenizer.pad_token is None:  # GPT-2 has none; padding is always masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev)  # type: ignore[arg-type]  # transformers types .to() narrowly
    model.eval()
    return LoadedModel(model, tokenizer, adapter_for(model), spec, source, where, dev, dt)


def _load_tiny(spec: str, canonical: str, dev: torch.device, dt: torch.dtype, attn_implementation: str) -> LoadedModel:
    """A `tiny:` spec: a random model built for the borrowed tokenizer (sublens.models.tiny)."""
    tiny = parse_tiny(spec)
    tokenizer = borrow_tokenizer(tiny)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = build_tiny(tiny, tokenizer, attn_implementation)
    model.to(device=dev, dtype=dt)
    return LoadedModel(model, tokenizer, adapter_for(model), spec, "tiny", canonical, dev, dt)


__all__ = [
    "EMBEDDED",
    "EmbeddedModel",
    "LoadedModel",
    "check_spec",
    "ensure_embedded",
    "load_model",
    "looks_like_path",
    "parse_tiny",
    "resolve",
]
