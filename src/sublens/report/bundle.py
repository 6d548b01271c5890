"""The paper bundle: an ACL draft assembled from run directories (never from a model).

    <out>/main.tex            the draft: author placeholders + one section per experiment
    <out>/tables/<stem>.tex   every section's tables (\\input by main.tex)
    <out>/figures/<stage>-<stem>.pdf (+ .png)   the runs' figures, copied
    <out>/configs/<stage>.yaml                  each run's config (typeset in the appendix)
    <out>/references.bib, <out>/<style>.sty, <out>/sublens-layout.sty, <out>/summary.txt (the headline lines)
    <out>/main.pdf            when TeX is installed; its layout check (overfull lines and tables,
                              floats after the References) is in the message and in the manifest

Rebuilding from the same runs gives byte-identical files: nothing depends on the date, the
machine or absolute paths. A file the author edited since the last build is kept as
`<name>.edited` instead of being overwritten (hashes of what was written live in
`.sublens-bundle.json`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sublens.errors import SublensError
from sublens.report.compile import (
    LAYOUT_PACKAGE,
    TEX_INSTALL_HINT,
    LayoutReport,
    compile_tex,
    install_style,
    style_source,
    tex_available,
)
from sublens.report.latex import booktabs_table, escape, fmt
from sublens.report.names import display_name
from sublens.report.sections import Figure, Section, builder, figure_label
from sublens.report.stages import STAGE_ORDER, StageRun, load_stage
from sublens.report.verdicts import claim_text
from sublens.runs import atomic_write_bytes, read_json

MODES = ("review", "final", "preprint")
MANIFEST = ".sublens-bundle.json"
VERBATIM_WIDTH = 90  # characters of \scriptsize Courier that fit the one-column appendix

# Section titles for stages whose builder gave no Section (missing run, builder failure).
_TITLES = {
    "teacher": "The biased teacher",
    "entanglement": "Token entanglement",
    "mechanistic": "Where the bias lives: residual stream and heads",
    "pruning": "Head pruning",
    "subliminal": "Subliminal transfer",
    "distill": "Cross-architecture transfer by attention distillation",
    "hybrid": "Head-swap hybrids and component transplants",
}

# Model families cited where their runs used them (substring of the model spec -> key).
_MODEL_CITATIONS = (
    ("smollm2", "allal2025smollm2"),
    ("gemma", "gemmateam2025gemma3"),
    ("llama", "grattafiori2024llama3"),
    ("gpt2", "radford2019language"),
)


@dataclass(frozen=True)
class Bundle:
    folder: Path
    main_tex: Path
    pdf: Path | None
    headline: list[str]
    message: str
    problems: list[str] = field(default_factory=list)  # LaTeX or section failures; empty when all went well
    layout: LayoutReport | None = None  # the compiled PDF's layout check; None without a PDF

    @property
    def ok(self) -> bool:
        return not self.problems


# ---- loading runs ------------------------------------------------------------------------

def load_runs(run_dir: Path) -> tuple[dict[str, StageRun], dict[str, Any]]:
    """A paper run, one experiment's run, or a folder of run directories -> stages and meta.

    meta: `expected` (the stages the draft has a section for), `notes` (what was skipped),
    and for a paper run `paper` (its run id, record and per-stage entries), `preset`, `config`.
    """
    if not run_dir.is_dir():
        raise SublensError(f"{run_dir} is not a folder; give a run directory or a folder of run directories.")
    record_file = run_dir / "record.json"
    if record_file.is_file():
        record = read_json(record_file)
        if record.get("experiment") == "paper":
            return _load_paper(run_dir, record)
        run = load_stage(run_dir)
        return {run.stage: run}, {"expected": [run.stage], "notes": []}
    return _load_folder(run_dir)


def _load_paper(run_dir: Path, record: dict[str, Any]) -> tuple[dict[str, StageRun], dict[str, Any]]:
    results_file, config_file = run_dir / "results.json", run_dir / "config.yaml"
    results = read_json(results_file) if results_file.is_file() else {}
    config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    entries: dict[str, Any] = results.get("stages") or {}
    stages: dict[str, StageRun] = {}
    notes: list[str] = []
    for stage in _ordered(entries):
        entry = entries[stage] or {}
        path = run_dir / entry["path"] if entry.get("path") else None
        if path is None or not (path / "record.json").is_file() or not (path / "config.yaml").is_file():
            notes.append(
                f"{stage}: no run directory at {entry.get('path') or '(none recorded)'} "
                f"(status {entry.get('status', 'unknown')}); skipped."
            )
            continue
        stages[stage] = load_stage(path, stage)
    meta = {
        "expected": list(STAGE_ORDER),
        "notes": notes,
        "paper": {"run_id": run_dir.name, "record": record, "stages": entries},
        "preset": results.get("preset"),
        "config": config,
    }
    return stages, meta


def _load_folder(folder: Path) -> tuple[dict[str, StageRun], dict[str, Any]]:
    """Each subfolder that is a run directory; per stage the newest ok run (names start with a timestamp)."""
    runs = [load_stage(p) for p in sorted(folder.iterdir()) if _is_run_dir(p)]
    if not runs:
        raise SublensError(
            f"{folder} is neither a run directory nor a folder of run directories "
            "(folders holding record.json and config.yaml)."
        )
    papers = [r for r in runs if r.stage == "paper"]
    if papers and not any(r.stage in STAGE_ORDER for r in runs):  # a folder of paper runs: the newest
        return _load_paper(papers[-1].path, papers[-1].record)
    notes = [f"{r.run_id}: a paper run; run `sublens report {r.path}` for its bundle." for r in papers]
    notes += [
        f"{r.run_id}: the paper has no section for {r.stage!r}; ignored."
        for r in runs
        if r.stage != "paper" and r.stage not in STAGE_ORDER
    ]
    stages: dict[str, StageRun] = {}
    for run in (r for r in runs if r.stage in STAGE_ORDER):
        previous = stages.get(run.stage)
        if previous is None or run.ok or not previous.ok:
            stages[run.stage] = run
        if previous is not None:
            kept = stages[run.stage]
            dropped = previous if kept is run else run
            notes.append(f"{run.stage}: several runs; using {kept.run_id}, not {dropped.run_id}.")
    return stages, {"expected": list(STAGE_ORDER), "notes": notes}


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "record.json").is_file() and (path / "config.yaml").is_file()


def _ordered(stages: Iterable[str]) -> list[str]:
    """The paper's order first, then any other stage by name."""
    names = set(stages)
    return [s for s in STAGE_ORDER if s in names] + sorted(names - set(STAGE_ORDER))


def style_settings(meta: dict[str, Any], mode: str | None, acl_sty: str | None) -> tuple[str, str | None]:
    """Mode and acl.sty: the command line first, then the paper run's config (`style`, `acl_sty`)."""
    config = meta.get("config") or {}
    return mode or config.get("style") or "review", acl_sty or config.get("acl_sty")


# ---- the draft -----------------------------------------------------------------------------

@dataclass
class _Draft:
    """Everything the bundle will hold, built in memory first so writing is one careful step."""

    texts: dict[str, str] = field(default_factory=dict)    # bundle-relative path -> content
    copies: dict[str, Path] = field(default_factory=dict)  # bundle-relative path -> source file
    headline: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    measured: dict[str, str] = field(default_factory=dict)  # a section's shared definition -> the stage that printed it

    def add_text(self, rel: str, text: str, owner: str) -> None:
        if rel in self.texts and self.texts[rel] != text:
            self.problems.append(f"{owner}: {rel} is already written by another stage; kept the first.")
            return
        self.texts[rel] = text


def _build_section(stage: str, run: StageRun, draft: _Draft) -> Section | None:
    try:
        build = builder(stage)
        return build(run) if build is not None else None
    except Exception as exc:  # one section's failure must not lose the whole draft; reported
        draft.problems.append(f"{stage}: no section from run {run.run_id} ({type(exc).__name__}: {exc}).")
        return None


def _unfinished(stage: str, run: StageRun | None, meta: dict[str, Any]) -> str:
    """The sentence an author must not miss: this stage has no (complete) result."""
    if run is None:
        entry = ((meta.get("paper") or {}).get("stages") or {}).get(stage) or {}
        status = entry.get("status", "not run")
        return (
            rf"\textbf{{This stage did not finish}}: the bundle has no run directory for it "
            rf"(status \texttt{{{escape(status)}}}). Run \texttt{{sublens run {escape(stage)}}} "
            r"and rebuild the bundle with \texttt{sublens report}."
        )
    status = run.record.get("status") or "unknown"
    error = str(run.record.get("error") or "").strip().splitlines()
    detail = f": {escape(_clip(error[0], 300))}" if error else ""
    partial = " The text below uses its partial results." if run.results else ""
    return (
        rf"\textbf{{This stage did not finish}} (run \texttt{{{escape(run.run_id)}}}, "
        rf"status \texttt{{{escape(status)}}}{detail}).{partial} Resume it with "
        rf"\texttt{{sublens run {escape(stage)} -{{}}-resume RUN\_DIR}} and rebuild the bundle."
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _figure_tex(stage: str, run: StageRun, figure: Figure, draft: _Draft) -> list[str]:
    source = run.figures().get(figure.stem)
    if source is None:
        draft.problems.append(f"{stage}: figure {figure.stem!r} is not among the figures of run {run.run_id}.")
        return [f"% figure {figure.stem} missing from run {run.run_id}", ""]
    name = f"{stage}-{figure.stem}"
    draft.copies[f"figures/{name}.pdf"] = source
    if source.with_suffix(".png").is_file():
        draft.copies[f"figures/{name}.png"] = source.with_suffix(".png")
    env, width = ("figure*", r"\textwidth") if figure.wide else ("figure", r"\columnwidth")
    return [
        rf"\begin{{{env}}}[t]",
        r"\centering",
        rf"\includegraphics[width={width},height=0.45\textheight,keepaspectratio]{{figures/{name}.pdf}}",
        rf"\caption{{{figure.caption}}}",
        rf"\label{{{figure_label(stage, figure.stem)}}}",
        rf"\end{{{env}}}",
        "",
    ]


def _stage_tex(stage: str, run: StageRun | None, meta: dict[str, Any], draft: _Draft) -> str:
    section = _build_section(stage, run, draft) if run is not None else None
    title = section.title if section is not None else escape(_TITLES.get(stage, stage.capitalize()))
    lines = [rf"\section{{{title}}}", rf"\label{{sec:{stage}}}", ""]
    if run is None or not run.ok:
        lines += [_unfinished(stage, run, meta), ""]
        status = "no run" if run is None else (run.record.get("status") or "unknown")
        draft.headline.append(f"{stage}: did not finish ({status})")
    if section is None or run is None:
        if run is not None and run.ok:
            lines += [
                r"\textit{[No text could be generated for this stage: see the message of"
                r" \texttt{sublens report}.]}",
                "",
            ]
        return "\n".join(lines)
    lines += [r"\paragraph{Setup.}", _methods_tex(stage, section, draft), ""]
    lines += [r"\paragraph{Results.}", section.results.strip(), ""]
    for stem, table in section.tables.items():
        draft.add_text(f"tables/{stem}.tex", table, stage)
        lines.append(rf"\input{{tables/{stem}}}")
    if section.tables:
        lines.append("")
    for figure in section.figures:
        lines += _figure_tex(stage, run, figure, draft)
    draft.headline += section.headline
    return "\n".join(lines)


def _methods_tex(stage: str, section: Section, draft: _Draft) -> str:
    """The section's methods, then its shared definition (`Section.measurement`): in full in the
    first section that has it, as a reference to that section in every later one."""
    methods = section.methods.strip()
    if not section.measurement:
        return methods
    first = draft.measured.setdefault(section.measurement, stage)
    if first == stage:
        return f"{methods} {section.measurement.strip()}"
    return (f"{methods} The three measures (P(owl), the panel share $s$ and the answer rate) are defined "
            rf"in Section~\ref{{sec:{first}}}.")


_TIMES = re.compile(r"(?<![\w.\\])x(?=\d)")


def headline_item(line: str) -> str:
    """A plain-text headline line (terminal wording: x1.37, 9.83e-19, ×) as LaTeX for the
    abstract's notes: $\times$1.37, $9.83\times10^{-19}$."""
    return _TIMES.sub(lambda _: r"$\times$", claim_text(line))


def _preamble(package: str, mode: str, headline: list[str]) -> str:
    items = [rf"\item {headline_item(line)}" for line in headline]
    notes = ["{\\raggedright", r"\begin{itemize}", *items, r"\end{itemize}", r"\par}"] if headline else []
    return "\n".join([
        "% main.tex -- generated by `sublens report` from the run directories listed in the appendix.",
        "% Rebuilding rewrites this file; a copy you edited is kept as main.tex.edited.",
        "% Parts marked TODO(author) are yours to write; everything else says what the runs measured.",
        r"\documentclass[11pt]{article}",
        rf"\usepackage[{mode}]{{{package}}}",
        "% sublens-acl loads these already; repeated so the draft also works with the official acl.sty.",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage{times}",
        r"\usepackage{latexsym}",
        r"\usepackage{graphicx}",
        r"\usepackage{booktabs}",
        r"\usepackage{amsmath}",
        r"\usepackage{url}",
        "% sublens-layout: lines and tables kept inside their column, floats before the References,",
        "% and the markers with which `sublens report` checks that in the compiled PDF.",
        rf"\usepackage{{{LAYOUT_PACKAGE}}}",
        "",
        "% TODO(author): title and authors.",
        r"\title{\textit{[Author: write the title]}}",
        r"\author{\textit{[Author: names and affiliations]}}",
        "",
        r"\begin{document}",
        r"\maketitle",
        "",
        r"\begin{abstract}",
        "% TODO(author): write the abstract; the measured headline results below are notes for you.",
        r"\textit{[Author: write the abstract. Measured headline results, as notes:]}",
        *notes,
        r"\end{abstract}",
        "",
        r"\section{Introduction}",
        r"\label{sec:introduction}",
        "% TODO(author): write the introduction.",
        r"\textit{[Author: write the introduction. Background: subliminal learning \citep{cloud2025subliminal}"
        r" and the token-entanglement explanation \citep{zur2025owl}. Each section below tests one claim"
        r" and says, from the measured numbers, whether this run supports it.]}",
        "",
    ])


def _conclusion() -> str:
    return "\n".join([
        r"\section{Conclusion}",
        r"\label{sec:conclusion}",
        "% TODO(author): write the conclusion from the results paragraphs above.",
        r"\textit{[Author: write the conclusion. The results paragraphs above state which claims"
        r" the measured numbers support, contradict, or leave open.]}",
        "",
    ])


# ---- limitations (data-driven where the runs say something) -----------------------------------

def _models(run: StageRun) -> list[dict[str, Any]]:
    models = run.record.get("models") or {}
    return [models[role] for role in sorted(models) if isinstance(models[role], dict)]


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
            rf"\textbf{{Compute.}} All runs executed on {where}{cores} in {_join(escape(d) for d in dtypes)}; "
            "sample sizes were chosen to fit that budget."
        )
    if unfinished:
        facts.append(
            rf"\textbf{{Unfinished stages.}} {_join(escape(s) for s in unfinished)} did not finish; "
            "their sections are incomplete."
        )
    return "\n".join([
        r"\section*{Limitations}",
        *(f"{fact}\n" for fact in facts),
        "% TODO(author): the limitations of the argument itself.",
        r"\textit{[Author: add the limitations of the argument and of the measurements.]}",
        "",
    ])


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
    """An absolute path as `<run ID>/rest` when it lies in a known run, else `.../name`."""
    path, _, suffix = value.partition("#")
    suffix = f"#{suffix}" if suffix else ""
    resolved = Path(path).expanduser()
    for root, run_id in sorted(known.items(), key=lambda item: -len(str(item[0]))):
        if resolved == root or root in resolved.parents:
            rest = resolved.relative_to(root).as_posix()
            return f"<run {run_id}>" + ("" if rest == "." else f"/{rest}") + suffix
    return f".../{resolved.name}{suffix}"


def _model_name(model: dict[str, Any], known: dict[Path, str]) -> str:
    spec = str(model.get("spec") or "?")
    return _short_path(spec, known) if spec.startswith(("/", "~")) else spec


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
        rows.append([
            escape(stage),
            rf"\texttt{{{escape(run.run_id)}}}",
            escape(record.get("status") or "unknown"),  # not "reused": the runs, not how they were found
            escape(record.get("seed", "--")),
            _wall(record.get("wall_seconds")),
            _commit(record),
        ])
    return _here(booktabs_table(
        ["Stage", "Run", "Status", "Seed", "Wall (min)", "Commit"],
        rows,
        "The run directories behind every number in this paper (commit: short hash of the sublens "
        "source; +dirty: uncommitted changes).",
        "tab:repro-runs",
        align="lllrrl",
    ))


def _models_table(stages: dict[str, StageRun], known: dict[Path, str]) -> str | None:
    rows = []
    for stage in _ordered(stages):
        models = stages[stage].record.get("models") or {}
        for role in sorted(models):
            m = models[role]
            if not isinstance(m, dict):
                continue
            shape = f"{m.get('n_layers', '?')} / {m.get('n_heads', '?')} / {m.get('n_kv_heads', '?')}"
            rows.append([
                escape(stage),
                escape(role),
                rf"\texttt{{{escape(_model_name(m, known))}}}",
                shape,
                f"{escape(m.get('dtype', '--'))}, {escape(m.get('device', '--'))}",
            ])
    if not rows:
        return None
    return _here(booktabs_table(
        ["Stage", "Role", "Model", "Shape", "Dtype, device"],  # a short header: the page is 455 pt wide
        rows,
        r"Models loaded by each run, as recorded in its \texttt{record.json}, by the spec that loads them "
        "(shape: layers / attention heads / key-value heads).",
        "tab:repro-models",
        align="lllll",
    ))


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
    return _here(booktabs_table(
        ["Package", "Version"], rows, "Package versions recorded by the runs.", "tab:repro-versions", align="ll"
    ))


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
    return header + "\n" + yaml.safe_dump(
        config, sort_keys=False, allow_unicode=True, width=80, default_flow_style=None  # short lists inline
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


def _main_tex(stages: dict[str, StageRun], meta: dict[str, Any], package: str, mode: str, draft: _Draft) -> str:
    expected = _ordered(meta.get("expected") or STAGE_ORDER)
    body = [_stage_tex(stage, stages.get(stage), meta, draft) for stage in expected]
    unfinished = [s for s in expected if s not in stages or not stages[s].ok]
    return "\n".join([
        _preamble(package, mode, draft.headline),
        *body,
        _conclusion(),
        _limitations({s: stages[s] for s in expected if s in stages}, unfinished),
        r"\sublensflushfloats % every table and figure of the paper before the References",
        r"\bibliography{references}",
        "",
        _appendix({s: stages[s] for s in expected if s in stages}, expected, meta, draft),
        r"\end{document}",
        "",
    ])


def _assemble(stages: dict[str, StageRun], meta: dict[str, Any], package: str, mode: str) -> _Draft:
    draft = _Draft()
    main = _main_tex(stages, meta, package, mode, draft)
    draft.texts["main.tex"] = main
    draft.texts["references.bib"] = references_bib()
    draft.texts["summary.txt"] = "".join(f"{line}\n" for line in draft.headline)
    return draft


def references_bib() -> str:
    return resources.files("sublens.report").joinpath("references.bib").read_text(encoding="utf-8")


# ---- writing -----------------------------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _keep_edited(path: Path) -> Path:
    """Move a file the author edited out of the way: <name>.edited, .edited2, ..."""
    target, n = path.with_name(path.name + ".edited"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.edited{n}")
    path.rename(target)
    return target


def _inside(out: Path, rel: str, named_by: str) -> Path:
    """`out / rel`, refused when it resolves outside the bundle folder (a `..`, an absolute path,
    a link that leads out): a bundle folder may come from elsewhere, and what we write, move
    aside or delete there must stay there."""
    path = out / rel
    root, resolved = out.resolve(), path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise SublensError(
            f"{named_by} names the path {rel!r}, which resolves to {resolved}, outside the bundle folder "
            f"{root}; refusing to use it. Build the bundle into a new folder with --out."
        )
    return path


def _read_manifest(out: Path) -> dict[str, str]:
    """The hashes the last build wrote, by bundle-relative path; every path checked to lie inside
    `out` (the stale-file clean-up deletes what the manifest names)."""
    manifest_file = out / MANIFEST
    if not manifest_file.is_file():
        return {}
    try:
        files = read_json(manifest_file).get("files", {})
    except (ValueError, AttributeError):  # not JSON, or not an object
        files = None
    if not isinstance(files, dict) or not all(isinstance(h, str) for h in files.values()):
        raise SublensError(
            f"{manifest_file} is not a sublens bundle manifest (a JSON object with 'files': path -> sha256); "
            "remove it, or build the bundle into a new folder with --out."
        )
    for rel in files:
        _inside(out, rel, f"The bundle manifest {manifest_file}")
    return files


def _targets(draft: _Draft, acl_sty: str | None) -> list[str]:
    """Every bundle-relative path a build writes: the draft's files and the style files."""
    style = style_source(acl_sty)
    extras = sorted(p.name for p in style.parent.glob("*.bst")) if acl_sty else []
    return [*draft.texts, *draft.copies, style.name, f"{LAYOUT_PACKAGE}.sty", *extras, MANIFEST]


def _write(out: Path, draft: _Draft, previous: dict[str, str]) -> list[str]:
    """Write the draft; files edited since the last build are kept aside, stale ones removed.
    `previous`: the last build's manifest (`_read_manifest`, its paths already checked)."""
    manifest_file = out / MANIFEST
    files = {rel: text.encode("utf-8") for rel, text in draft.texts.items()}
    files |= {rel: source.read_bytes() for rel, source in draft.copies.items()}
    notes: list[str] = []
    for rel in sorted(files):
        path, data = out / rel, files[rel]
        if path.is_file():
            current = _sha(path.read_bytes())
            if current == _sha(data):
                continue
            if current != previous.get(rel):
                notes.append(f"{rel} was edited since the last build; kept as {_keep_edited(path).name}.")
        atomic_write_bytes(path, data)
    for rel in sorted(set(previous) - set(files)):
        path = out / rel
        if path.is_file() and _sha(path.read_bytes()) == previous[rel]:
            path.unlink()
    manifest = {"files": {rel: _sha(files[rel]) for rel in sorted(files)}}
    atomic_write_bytes(manifest_file, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return notes


def _record_layout(out: Path, layout: LayoutReport) -> None:
    """The layout check of the PDF, next to the hashes in the manifest (rewritten by every build,
    so a build without LaTeX leaves no stale check behind)."""
    manifest_file = out / MANIFEST
    manifest = read_json(manifest_file) | {"layout": layout.as_dict()}
    atomic_write_bytes(manifest_file, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def _install_style(out: Path, acl_sty: str | None) -> str:
    """The style next to main.tex; a user's acl.sty brings its bibliography styles (*.bst)."""
    package = install_style(out, acl_sty)
    if acl_sty:
        for bst in sorted(Path(acl_sty).expanduser().parent.glob("*.bst")):
            shutil.copyfile(bst, out / bst.name)
    return package


# ---- the bundle ----------------------------------------------------------------------------------

def build_bundle(
    stages: dict[str, StageRun],
    out: Path,
    *,
    mode: str = "review",
    acl_sty: str | None = None,
    compile: bool = True,
    meta: dict[str, Any] | None = None,
) -> Bundle:
    """Write the bundle into `out` and compile it when TeX is present.

    A LaTeX failure does not lose the written bundle: it is reported in `message` and
    `problems` (so is a section that could not be built); SublensError is raised only for
    bad arguments (mode, acl_sty) and for a manifest or draft path that would lead out of `out`,
    before anything is written.
    """
    if mode not in MODES:
        raise SublensError(f"mode={mode!r}: choose one of {', '.join(MODES)}.")
    meta = meta or {"expected": _ordered(stages), "notes": []}
    package = style_source(acl_sty).stem  # validates acl_sty before anything is written
    draft = _assemble(stages, meta, package, mode)
    # Before anything is written: no path of the manifest or of the draft may lead out of `out`.
    for rel in _targets(draft, acl_sty):
        _inside(out, rel, "The bundle")
    previous = _read_manifest(out)
    out.mkdir(parents=True, exist_ok=True)
    _install_style(out, acl_sty)
    notes = [*meta.get("notes", []), *_write(out, draft, previous)]
    main_tex = out / "main.tex"
    problems = list(draft.problems)
    pdf, layout = None, None
    if not compile:
        notes.append("LaTeX not run (--no-compile).")
    elif not tex_available():
        notes.append(TEX_INSTALL_HINT)
    else:
        try:
            compiled = compile_tex(main_tex)
        except SublensError as exc:
            problems.append(f"The bundle is written, but the PDF is not: {exc}")
        else:
            if compiled is not None:
                pdf, layout = compiled.pdf, compiled.layout
                notes += layout.problems()  # warnings: the PDF is there, an author can fix these
                _record_layout(out, layout)
    message = "\n".join([*problems, *notes])
    return Bundle(out, main_tex, pdf, list(draft.headline), message, problems, layout)
