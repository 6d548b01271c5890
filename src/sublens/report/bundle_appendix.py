"""The end of the draft: the Limitations (data-driven where the runs say something) and the
reproducibility appendix (the runs, models and package versions, each run's config verbatim)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from sublens.report.bundle_draft import _Draft
from sublens.report.bundle_runs import _ordered
from sublens.report.latex import booktabs_table, escape, fmt
from sublens.report.names import display_name
from sublens.report.stages import StageRun

VERBATIM_WIDTH = 90  # characters of \scriptsize Courier that fit the one-column appendix

# Model families cited where their runs used them (substring of the model spec -> key).
_MODEL_CITATIONS = (
    ("smollm2", "allal2025smollm2"),
    ("gemma", "gemmateam2025gemma3"),
    ("llama", "grattafiori2024llama3"),
    ("gpt2", "radford2019language"),
)


# ---- limitations (data-driven where the runs say something) -----------------------------------


def _models(run: StageRun) -> list[dict[str, Any]]:
    models = run.record.get("models") or {}
    return [models[role] for role in sorted(models) if isinstance(models[role], dict)]


def _autocast_precisions(results: Any) -> set[str]:
    """The autocast precisions a stage's training ran under, read from its results (every
    training summary writes `precision`; "no" is float32 throughout and is left out)."""
    if isinstance(results, dict):
        own = results.get("precision")
        found = {own} if isinstance(own, str) and own != "no" else set()
        return found.union(*(_autocast_precisions(v) for v in results.values()))
    if isinstance(results, list):
        return set().union(*(_autocast_precisions(v) for v in results))
    return set()


def _autocast_words(runs: list[StageRun]) -> str:
    """', except that the training of teacher and distill ran under bf16 autocast (...)', or ''
    when every stage trained in the models' own precision: the weights' dtype alone would hide it."""
    mixed = {run.stage: found for run in runs if (found := _autocast_precisions(run.results))}
    if not mixed:
        return ""
    precisions = _join(escape(p) for p in sorted(set().union(*mixed.values())))
    return (
        f", except that the training of {_join(escape(stage) for stage in mixed)} ran under {precisions} "
        "autocast (float32 master weights and optimizer state)"
    )


def _training_seeds(config: dict[str, Any]) -> list[Any]:
    seeds = config.get("seeds")
    return list(seeds) if isinstance(seeds, list) and seeds else [config.get("seed")]


def _limitations(stages: dict[str, StageRun], unfinished: list[str]) -> str:
    runs = [stages[s] for s in _ordered(stages)]
    models = [m for run in runs for m in _models(run)]
    facts: list[str] = []
    specs = sorted({str(m.get("spec")) for m in models if not _is_local(m)})  # local: fine-tuned copies
    if specs:
        cites = sorted({key for spec in specs for part, key in _MODEL_CITATIONS if part in spec.lower()})
        cite = rf" \citep{{{','.join(cites)}}}" if cites else ""
        embedded = all(m.get("source") == "embedded" for m in models if not _is_local(m))
        size = "the small models that sublens embeds for CPU runs, " if embedded else ""
        used = _join(escape(n) for n in sorted({display_name(spec) for spec in specs}))
        facts.append(
            rf"\textbf{{Scale.}} The runs used {size}{used}{cite}; "
            r"whether the effects hold at the scale of the original study \citep{cloud2025subliminal}"
            " is not tested here."
        )
    trained = [(run.stage, _training_seeds(run.config)) for run in runs if "train" in run.config]
    if trained:
        counts = {len(seeds) for _, seeds in trained}
        stage_list = _join(escape(stage) for stage, _ in trained)
        if counts == {1}:
            facts.append(
                rf"\textbf{{Seeds.}} Each training stage ({stage_list}) used a single training seed, so the "
                r"confidence intervals cover prompt and sampling variation, not variation between training runs."
            )
        else:
            per = _join(f"{escape(stage)}: {len(seeds)}" for stage, seeds in trained)
            facts.append(rf"\textbf{{Seeds.}} Training seeds per stage: {per}.")
    devices = sorted({str(m.get("device")) for m in models if m.get("device")})
    dtypes = sorted({str(m.get("dtype")) for m in models if m.get("dtype")})
    cpus = sorted({int(c) for run in runs if isinstance(c := (run.record.get("host") or {}).get("cpus"), int)})
    if devices:
        where = "CPU" if devices == ["cpu"] else _join(escape(d) for d in devices)
        cores = f" ({_join(str(c) for c in cpus)} cores)" if devices == ["cpu"] and cpus else ""
        facts.append(
            rf"\textbf{{Compute.}} All runs executed on {where}{cores} in {_join(escape(d) for d in dtypes)}"
            f"{_autocast_words(runs)}; sample sizes were chosen to fit that budget."
        )
    if unfinished:
        facts.append(
            rf"\textbf{{Unfinished stages.}} {_join(escape(s) for s in unfinished)} did not finish; "
            "their sections are incomplete."
        )
    return "\n".join(
        [
            r"\section*{Limitations}",
            *(f"{fact}\n" for fact in facts),
            "% TODO(author): the limitations of the argument itself.",
            r"\textit{[Author: add the limitations of the argument and of the measurements.]}",
            "",
        ]
    )


def _tt(text: object) -> str:
    """A name in typewriter text; sublens-layout breaks typewriter text after - and _, this after /."""
    breakable = escape(text).replace("/", r"/\allowbreak{}")
    return rf"\texttt{{{breakable}}}"


def _join(items: Iterable[str]) -> str:
    parts = list(items)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


# ---- reproducibility appendix ----------------------------------------------------------------


def _is_local(model: dict[str, Any]) -> bool:
    spec = str(model.get("spec") or "")
    return model.get("source") == "folder" or spec.startswith(("/", "~", "."))


def _short_path(value: str, known: dict[Path, str]) -> str:
    """A path as `<run ID>/rest` when it lies in a known run, else `.../name`."""
    found = _in_known_run(value, known)
    if found is not None:
        return found
    path, _, suffix = value.partition("#")
    return f".../{Path(path).expanduser().name}" + (f"#{suffix}" if suffix else "")


def _in_known_run(value: str, known: dict[Path, str]) -> str | None:
    """`<run ID>/rest#suffix` for a path inside a known run: an absolute path below the run's
    folder, or a relative one as the run recorded it (relative to where it ran, so it is matched
    by the run folder's trailing names, at least two of them: `runs/<id>/stages/teacher`)."""
    path, _, suffix = value.partition("#")
    suffix = f"#{suffix}" if suffix else ""
    given = Path(path).expanduser()
    for root, run_id in sorted(known.items(), key=lambda item: -len(str(item[0]))):
        rest: tuple[str, ...] | None = None
        if given.is_absolute():
            if given == root or root in given.parents:
                rest = given.relative_to(root).parts
        else:
            rest = _after_trailing_match(root.parts, given.parts)
        if rest is not None:
            return f"<run {run_id}>" + "".join(f"/{part}" for part in rest) + suffix
    return None


# A run folder's name (runs/run.py, new_run_dir): a time stamp, the experiment, a random hex tag.
_RUN_FOLDER = re.compile(r"^\d{8}(-\d{6})?_[\w-]+_[0-9a-f]{6}$")


def _after_trailing_match(root: tuple[str, ...], given: tuple[str, ...]) -> tuple[str, ...] | None:
    """What follows in `given` once it starts with the last k >= 2 names of `root` (longest k);
    or once it holds, after a prefix, a tail of `root` that includes the run folder's name (unique),
    so that `runs/<id>/stages/teacher` still names the run after the folder has moved from `runs/`."""
    for start in range(len(root) - 1):
        tail = root[start:]
        if given[: len(tail)] == tail:
            return given[len(tail) :]
    for start in range(len(root)):
        tail = root[start:]
        if not _RUN_FOLDER.match(tail[0]):
            continue
        for offset in range(1, len(given) - len(tail) + 1):
            if given[offset : offset + len(tail)] == tail:
                return given[offset + len(tail) :]
    return None


def _model_name(model: dict[str, Any], known: dict[Path, str]) -> str:
    spec = str(model.get("spec") or "?")
    if spec.startswith(("/", "~")):
        return _short_path(spec, known)
    return _in_known_run(spec, known) or spec  # a relative run folder, or a hub id / embedded name


def _known_runs(stages: dict[str, StageRun]) -> dict[Path, str]:
    return {run.path.resolve(): run.run_id for run in stages.values()}


def _wall(seconds: Any) -> str:
    return fmt(seconds / 60, 1) if isinstance(seconds, int | float) else "--"


def _commit(record: dict[str, Any]) -> str:
    git = record.get("git") or {}
    commit = str(git.get("commit") or "")[:7]
    if not commit:
        return "--"
    return rf"\texttt{{{escape(commit)}}}" + ("+dirty" if git.get("dirty") else "")


def _here(table: str) -> str:
    """An appendix table placed where it stands (the one-column appendix has room)."""
    return table.replace("[t]", "[!htbp]", 1)


def _runs_table(stages: dict[str, StageRun], expected: list[str], meta: dict[str, Any]) -> str:
    entries = (meta.get("paper") or {}).get("stages") or {}
    rows = []
    for stage in _ordered(set(expected) | set(stages)):
        run, entry = stages.get(stage), entries.get(stage) or {}
        if run is None:
            rows.append([escape(stage), "--", escape(entry.get("status", "not run")), "--", "--", "--"])
            continue
        record = run.record
        rows.append(
            [
                escape(stage),
                rf"\texttt{{{escape(run.run_id)}}}",
                escape(record.get("status") or "unknown"),  # not "reused": the runs, not how they were found
                escape(record.get("seed", "--")),
                _wall(record.get("wall_seconds")),
                _commit(record),
            ]
        )
    return _here(
        booktabs_table(
            ["Stage", "Run", "Status", "Seed", "Wall (min)", "Commit"],
            rows,
            "The run directories behind every number in this paper (commit: short hash of the sublens "
            "source; +dirty: uncommitted changes).",
            "tab:repro-runs",
            align="lllrrl",
        )
    )


def _models_table(stages: dict[str, StageRun], known: dict[Path, str]) -> str | None:
    rows = []
    for stage in _ordered(stages):
        models = stages[stage].record.get("models") or {}
        for role in sorted(models):
            m = models[role]
            if not isinstance(m, dict):
                continue
            shape = f"{m.get('n_layers', '?')} / {m.get('n_heads', '?')} / {m.get('n_kv_heads', '?')}"
            rows.append(
                [
                    escape(stage),
                    escape(role),
                    rf"\texttt{{{escape(_model_name(m, known))}}}",
                    shape,
                    f"{escape(m.get('dtype', '--'))}, {escape(m.get('device', '--'))}",
                ]
            )
    if not rows:
        return None
    return _here(
        booktabs_table(
            ["Stage", "Role", "Model", "Shape", "Dtype, device"],  # a short header: the page is 455 pt wide
            rows,
            r"Models loaded by each run, as recorded in its \texttt{record.json}, by the spec that loads them "
            "(shape: layers / attention heads / key-value heads).",
            "tab:repro-models",
            align="lllll",
        )
    )


def _versions_table(stages: dict[str, StageRun]) -> str | None:
    seen: dict[str, dict[str, list[str]]] = {}  # package -> version -> stages
    for stage in _ordered(stages):
        for package, version in sorted((stages[stage].record.get("versions") or {}).items()):
            if version is not None:
                seen.setdefault(package, {}).setdefault(str(version), []).append(stage)
    if not seen:
        return None
    rows = []
    for package in sorted(seen):
        versions = seen[package]
        if len(versions) == 1:
            cell = escape(next(iter(versions)))
        else:
            cell = "; ".join(f"{escape(v)} ({_join(escape(s) for s in versions[v])})" for v in sorted(versions))
        rows.append([rf"\texttt{{{escape(package)}}}", cell])
    return _here(
        booktabs_table(
            ["Package", "Version"], rows, "Package versions recorded by the runs.", "tab:repro-versions", align="ll"
        )
    )


def _portable(value: Any, known: dict[Path, str]) -> Any:
    """The config with absolute paths shortened (anonymous, and the same on every machine)."""
    if isinstance(value, dict):
        return {k: _portable(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, known) for v in value]
    if isinstance(value, str) and value.startswith(("/", "~")):
        return _short_path(value, known)
    return value


def _config_yaml(run: StageRun, known: dict[Path, str]) -> str:
    config = _portable(run.config, known)
    header = f"# config of run {run.run_id} (stage {run.stage})"
    if config != run.config:
        header += "; absolute paths shortened (the run's config.yaml has them in full)"
    return (
        header
        + "\n"
        + yaml.safe_dump(
            config,
            sort_keys=False,
            allow_unicode=True,
            width=80,
            default_flow_style=None,  # short lists inline
        )
    )


def _verbatim_lines(text: str, width: int = VERBATIM_WIDTH) -> list[str]:
    """Lines for a verbatim block: ASCII only (pdflatex), none longer than `width`."""
    out: list[str] = []
    for raw in text.expandtabs(2).splitlines():
        line = "".join(c if ord(c) < 128 else f"<U+{ord(c):04X}>" for c in raw)
        line = line.replace(r"\end{verbatim}", r"\end {verbatim}")
        out.append(line[:width])
        out += ["  ... " + line[i : i + width - 6] for i in range(width, len(line), width - 6)]
    return out


def _appendix(stages: dict[str, StageRun], expected: list[str], meta: dict[str, Any], draft: _Draft) -> str:
    known = _known_runs(stages)
    paper = meta.get("paper") or {}
    origin = ""
    if paper:
        preset = meta.get("preset")
        preset_text = rf", preset \texttt{{{escape(preset)}}}" if preset else ""
        origin = rf" They were run by the paper run \texttt{{{escape(paper.get('run_id', ''))}}}{preset_text}."
    lines = [
        r"\appendix",
        r"\onecolumn",
        r"\section{Reproducibility}",
        r"\label{sec:reproducibility}",
        r"Every number, table and figure of this paper was produced by \texttt{sublens} from the run "
        rf"directories in Table~\ref{{tab:repro-runs}}.{origin} \texttt{{sublens report}} rebuilds this draft "
        "from them in seconds; each run's config is reproduced below and lies in the bundle as "
        r"\texttt{configs/<stage>.yaml}.",
        "",
        _runs_table(stages, expected, meta),
    ]
    lines += [t for t in (_models_table(stages, known), _versions_table(stages)) if t is not None]
    lines += [r"\subsection{Configurations}", ""]
    for stage in _ordered(stages):
        run = stages[stage]
        config = _config_yaml(run, known)
        draft.add_text(f"configs/{stage}.yaml", config, stage)
        lines += [
            rf"\paragraph{{{escape(stage)}}} (run \texttt{{{escape(run.run_id)}}},"
            rf" \texttt{{configs/{escape(stage)}.yaml}})",
            r"{\scriptsize",
            r"\begin{verbatim}",
            *_verbatim_lines(config),
            r"\end{verbatim}",
            "}",
            "",
        ]
    return "\n".join(lines)
