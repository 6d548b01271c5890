"""The paper bundle: assembled from the fixture runs, deterministic, compiles, never loses work."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fixture_runs import RUNS, needs_tex
from sublens.cli import app
from sublens.errors import SublensError
from sublens.report import bundle as bundle_module
from sublens.report import bundle_draft
from sublens.report.bundle import (
    VERBATIM_WIDTH,
    _short_path,
    _verbatim_lines,
    build_bundle,
    load_runs,
    references_bib,
    style_settings,
)
from sublens.report.bundle_appendix import _model_name
from sublens.report.sections import CITATION_KEYS
from sublens.report.stages import STAGE_ORDER

needs_pdffonts = pytest.mark.skipif(shutil.which("pdffonts") is None, reason="pdffonts (poppler-utils) missing")

FAKE_ACL = r"""\NeedsTeXFormat{LaTeX2e}
\ProvidesPackage{acl}[2099/01/01 a stand-in for the official acl.sty]
\newif\ifaclfinal
\DeclareOption{review}{\aclfinalfalse}
\DeclareOption{final}{\aclfinaltrue}
\DeclareOption{preprint}{\aclfinaltrue}
\ProcessOptions\relax
\RequirePackage[twocolumn,margin=2.5cm]{geometry}
\RequirePackage[round]{natbib}
\bibliographystyle{plainnat}
\RequirePackage{booktabs}
\RequirePackage{graphicx}
\newcommand{\acltestmarker}{FAKE-ACL-STYLE}
\AtEndDocument{\par\acltestmarker}
"""


def _copy_runs(tmp_path: Path, name: str = "runs", stages: tuple[str, ...] = STAGE_ORDER) -> Path:
    folder = tmp_path / name
    for stage in stages:
        shutil.copytree(RUNS / stage, folder / stage)
    return folder


def _fail_run(run_dir: Path, error: str) -> None:
    record = json.loads((run_dir / "record.json").read_text())
    record.update(status="failed", error=error)
    (run_dir / "record.json").write_text(json.dumps(record))


def _text_files(folder: Path) -> dict[str, str]:
    names = ["main.tex", "summary.txt", "references.bib"]
    names += [p.relative_to(folder).as_posix() for p in sorted(folder.glob("tables/*.tex"))]
    names += [p.relative_to(folder).as_posix() for p in sorted(folder.glob("configs/*.yaml"))]
    return {name: (folder / name).read_text(encoding="utf-8") for name in names}


@pytest.fixture(scope="module")
def fixture_bundle(tmp_path_factory: pytest.TempPathFactory) -> bundle_module.Bundle:
    """The fixture runs as they are, without LaTeX (the compile test builds its own)."""
    stages, meta = load_runs(RUNS)
    return build_bundle(stages, tmp_path_factory.mktemp("bundle") / "paper", compile=False, meta=meta)


# ---- loading ------------------------------------------------------------------------------------


def test_a_folder_of_runs_gives_every_stage() -> None:
    stages, meta = load_runs(RUNS)
    assert sorted(stages) == sorted(STAGE_ORDER)
    assert stages["pruning"].run_id == "pruning" and stages["pruning"].ok
    assert meta["expected"] == list(STAGE_ORDER) and meta["notes"] == []


def test_a_folder_keeps_the_newest_ok_run_per_stage(tmp_path: Path) -> None:
    for name in ("20260101-000000_teacher_a", "20260102-000000_teacher_b", "20260103-000000_teacher_c"):
        shutil.copytree(RUNS / "teacher", tmp_path / name)
    _fail_run(tmp_path / "20260103-000000_teacher_c", "RuntimeError: out of memory")
    other = tmp_path / "20260104-000000_evaluate_d"
    shutil.copytree(RUNS / "teacher", other)
    record = json.loads((other / "record.json").read_text())
    (other / "record.json").write_text(json.dumps(record | {"experiment": "evaluate"}))
    stages, meta = load_runs(tmp_path)
    assert list(stages) == ["teacher"] and stages["teacher"].run_id == "20260102-000000_teacher_b"
    assert "teacher: several runs; using 20260102-000000_teacher_b, not 20260103-000000_teacher_c." in meta["notes"]
    assert any("evaluate" in note and "ignored" in note for note in meta["notes"])


def test_a_single_run_gives_that_stage_only() -> None:
    stages, meta = load_runs(RUNS / "hybrid")
    assert list(stages) == ["hybrid"] and meta["expected"] == ["hybrid"]


def test_a_paper_run_gives_its_stages_preset_and_style(tmp_path: Path) -> None:
    paper = tmp_path / "20260101-000000_paper_abc123"
    _copy_runs(paper, "stages", ("teacher", "pruning"))
    (paper / "record.json").write_text(json.dumps({"experiment": "paper", "status": "ok"}))
    (paper / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "style": "final", "acl_sty": None}))
    (paper / "results.json").write_text(
        json.dumps(
            {
                "preset": "quick",
                "stages": {
                    "pruning": {"path": "stages/pruning", "status": "ok", "reused": True, "wall_seconds": 3004.1},
                    "teacher": {"path": "stages/teacher", "status": "ok", "reused": False, "wall_seconds": 4037.3},
                    "distill": {"path": "stages/missing", "status": "failed", "reused": False, "wall_seconds": None},
                },
            }
        )
    )
    stages, meta = load_runs(paper)
    assert list(stages) == ["teacher", "pruning"]  # the paper's order, not the file's
    assert meta["preset"] == "quick" and meta["paper"]["run_id"] == paper.name
    assert any("distill" in note and "stages/missing" in note for note in meta["notes"])
    assert style_settings(meta, None, None) == ("final", None)
    assert style_settings(meta, "preprint", "my/acl.sty") == ("preprint", "my/acl.sty")
    assert list(load_runs(tmp_path)[0]) == ["teacher", "pruning"]  # a folder of paper runs: the newest

    result = build_bundle(stages, paper / "paper", compile=False, meta=meta)
    main = result.main_tex.read_text()
    assert r"paper run \texttt{20260101-000000\_paper\_abc123}, preset \texttt{quick}" in main
    assert "ok (reused)" not in main  # how a stage was found is not part of the paper
    # distill: recorded as failed by the paper run, no run directory
    assert r"(status \texttt{failed})" in main and "distill: did not finish (no run)" in result.headline


def test_not_a_run_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SublensError, match="neither a run directory nor a folder of run directories"):
        load_runs(tmp_path)
    with pytest.raises(SublensError, match="is not a folder"):
        load_runs(tmp_path / "nowhere")


# ---- the draft ----------------------------------------------------------------------------------


def test_draft_structure_from_the_fixture_runs(fixture_bundle: bundle_module.Bundle) -> None:
    folder, main = fixture_bundle.folder, fixture_bundle.main_tex.read_text()
    assert fixture_bundle.ok, fixture_bundle.message
    assert main.startswith("% main.tex") and r"\usepackage[review]{sublens-acl}" in main
    assert main.count("TODO(author)") >= 4 and r"\textit{[Author: write the abstract." in main
    # sections in the paper's order, each stage's tables written and \input
    positions = [main.index(rf"\label{{sec:{stage}}}") for stage in STAGE_ORDER]
    assert positions == sorted(positions)
    for stem in re.findall(r"\\input\{tables/([^}]+)\}", main):
        assert (folder / "tables" / f"{stem}.tex").is_file()
    assert (folder / "tables" / "pruning_sweep.tex").is_file()
    # figures copied under <stage>-<stem>, referenced with their labels
    for name in re.findall(r"\\includegraphics\[[^]]*\]\{figures/([^}]+)\}", main):
        assert (folder / "figures" / name).is_file()
    assert (folder / "figures" / "pruning-pruning_retention.pdf").read_bytes() == (
        RUNS / "pruning" / "figures" / "pruning_retention.pdf"
    ).read_bytes()
    assert r"\label{fig:pruning-pruning_retention}" in main
    # the abstract's notes and summary.txt are the sections' headline lines
    summary = (folder / "summary.txt").read_text().splitlines()
    assert summary == fixture_bundle.headline and any(line.startswith("pruning:") for line in summary)
    assert "Limitations" in main and r"\bibliography{references}" in main and r"\appendix" in main


def test_limitations_and_appendix_come_from_the_records(fixture_bundle: bundle_module.Bundle) -> None:
    main = fixture_bundle.main_tex.read_text()
    limitations = main[main.index(r"\section*{Limitations}") : main.index(r"\bibliography")]
    assert "Gemma-3-270M and SmolLM2-135M-Instruct" in limitations  # the names a paper uses, not the specs
    assert "allal2025smollm2" in limitations and "gemmateam2025gemma3" in limitations
    assert "single training seed" in limitations and "teacher, subliminal and distill" in limitations
    assert "executed on CPU (2 cores) in float32" in limitations
    appendix = main[main.index(r"\appendix") :]
    # teacher: 4037.294 s = 67.3 min, commit 92fe04d..., dirty; hybrid: clean 775a4d3
    assert r"teacher & \texttt{teacher} & ok & 0 & 67.3 & \texttt{92fe04d}+dirty \\" in appendix
    assert r"\texttt{775a4d3} \\" in appendix
    assert r"distill & teacher:biased & \texttt{smollm2-135m-instruct} & 30 / 9 / 3 & float32, cpu \\" in appendix
    assert r"\texttt{torch} & 2.13.0+cpu \\" in appendix
    for stage in STAGE_ORDER:
        assert f"configs/{stage}.yaml" in appendix and (fixture_bundle.folder / "configs" / f"{stage}.yaml").is_file()


def test_the_compute_line_names_training_that_ran_under_autocast(tmp_path: Path) -> None:
    """The models' dtype is float32 under bf16 autocast too: the training precision each stage's
    training summaries record must reach the Limitations, and float32 training adds nothing."""
    from sublens.report.bundle_appendix import _limitations
    from sublens.report.stages import StageRun

    model = {"spec": "smollm2-135m-instruct", "device": "cpu", "dtype": "float32"}

    def run(stage: str, precision: str) -> StageRun:
        summary = {"precision": precision, "world_size": 1}
        results = {"students": {"owl-full": {"seed0": {"train": summary}}}, "history": [{"train": summary}]}
        return StageRun(stage, tmp_path / stage, {}, {"models": {"m": model}, "host": {"cpus": 2}}, results)

    def compute(*runs: StageRun) -> str:
        text = _limitations({r.stage: r for r in runs}, [])
        return text[text.index("Compute.") : text.index("budget")]

    assert compute(run("teacher", "no"), run("distill", "no")) == (
        "Compute.} All runs executed on CPU (2 cores) in float32; sample sizes were chosen to fit that "
    )
    assert compute(run("teacher", "bf16"), run("subliminal", "no"), run("distill", "bf16")) == (
        "Compute.} All runs executed on CPU (2 cores) in float32, except that the training of teacher "
        "and distill ran under bf16 autocast (float32 master weights and optimizer state); sample sizes "
        "were chosen to fit that "
    )


def test_no_absolute_paths_and_short_verbatim_lines(fixture_bundle: bundle_module.Bundle) -> None:
    folder = fixture_bundle.folder
    texts = _text_files(folder)
    assert not any("/tmp/" in text for text in texts.values())
    hybrid = yaml.safe_load(texts["configs/hybrid.yaml"])
    assert hybrid["biased"] == ".../owl-full"
    assert yaml.safe_load((RUNS / "hybrid" / "config.yaml").read_text())["biased"] == "/tmp/hy/owl-full"
    main = texts["main.tex"]
    for block in re.findall(r"\\begin\{verbatim\}\n(.*?)\\end\{verbatim\}", main, flags=re.S):
        assert all(len(line) <= VERBATIM_WIDTH and line.isascii() for line in block.splitlines())


def test_verbatim_lines_are_wrapped_and_ascii() -> None:
    lines = _verbatim_lines("key: " + "x" * 200 + "\nprompt: ٣ owls\n")
    assert all(len(line) <= VERBATIM_WIDTH for line in lines)
    assert "".join(line.removeprefix("  ... ") for line in lines[:3]) == "key: " + "x" * 200
    assert lines[-1] == "prompt: <U+0663> owls"


def test_paths_inside_a_run_become_run_ids() -> None:
    known = {Path("/data/runs/20260101_teacher_ab"): "20260101_teacher_ab"}
    assert _short_path("/data/runs/20260101_teacher_ab#teacher", known) == "<run 20260101_teacher_ab>#teacher"
    assert _short_path("/data/runs/20260101_teacher_ab/checkpoints/x", known) == (
        "<run 20260101_teacher_ab>/checkpoints/x"
    )
    assert _short_path("/home/alice/models/owl-full", known) == ".../owl-full"


def test_relative_run_folders_recorded_as_specs_become_run_ids() -> None:
    """A stage loads `runs/<paper run>/stages/teacher#control_teacher` relative to where it ran:
    matched by the run folder's trailing names; hub ids and embedded names stay as they are."""
    known = {Path("/work/demo/runs/20261202_paper_7686b5/stages/teacher"): "teacher"}
    spec = "runs/20261202_paper_7686b5/stages/teacher#control_teacher"
    assert _model_name({"spec": spec}, known) == "<run teacher>#control_teacher"
    deeper = "20261202_paper_7686b5/stages/teacher/checkpoints/teacher"
    assert _model_name({"spec": deeper}, known) == "<run teacher>/checkpoints/teacher"
    assert _model_name({"spec": "HuggingFaceTB/SmolLM2-135M-Instruct"}, known) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _model_name({"spec": "smollm2-135m-instruct"}, known) == "smollm2-135m-instruct"
    assert _model_name({"spec": "other/teacher"}, known) == "other/teacher"  # one shared name is not a match
    # the runs copied elsewhere (from a cluster, say) and rebuilt there: the run ID still matches
    moved = {Path("/tmp/copy/20261202-155918_paper_d30459/stages/teacher"): "teacher"}
    recorded = "runs/20261202-155918_paper_d30459/stages/teacher#control_teacher"
    assert _model_name({"spec": recorded}, moved) == "<run teacher>#control_teacher"
    other_run = "runs/20261203-101010_paper_abcdef/stages/teacher"  # another run's stage of the same name
    assert _model_name({"spec": other_run}, moved) == other_run


def test_every_citation_is_in_the_bibliography(fixture_bundle: bundle_module.Bundle) -> None:
    bib_keys = re.findall(r"^@\w+\{([^,]+),", references_bib(), flags=re.M)
    assert sorted(bib_keys) == sorted(CITATION_KEYS)
    assert (fixture_bundle.folder / "references.bib").read_text() == references_bib()
    cited: set[str] = set()
    for text in _text_files(fixture_bundle.folder).values():
        for keys in re.findall(r"\\cite[tp]?\*?(?:\[[^]]*\])*\{([^}]*)\}", text):
            cited |= {key.strip() for key in keys.split(",")}
    assert cited and cited <= set(bib_keys), cited - set(bib_keys)


def test_rebuilding_gives_byte_identical_files(tmp_path: Path) -> None:
    """Same runs at two other absolute paths, built twice: the same bytes every time."""
    built = []
    for where in ("a", "b/deeper"):
        runs = _copy_runs(tmp_path / where)
        stages, meta = load_runs(runs)
        first = build_bundle(stages, runs / "paper", compile=False, meta=meta)
        files = _text_files(first.folder)
        again = build_bundle(stages, runs / "paper", compile=False, meta=meta)
        assert _text_files(again.folder) == files and not list(first.folder.glob("*.edited*"))
        built.append(files)
    assert built[0] == built[1]


def test_an_edited_main_tex_is_kept_and_stale_tables_removed(tmp_path: Path) -> None:
    runs = _copy_runs(tmp_path, stages=("teacher", "pruning"))
    stages, meta = load_runs(runs)
    out = tmp_path / "paper"
    build_bundle(stages, out, compile=False, meta=meta)
    assert (out / "tables" / "pruning_sweep.tex").is_file()
    (out / "main.tex").write_text((out / "main.tex").read_text().replace("[Author: write the title]", "Owls"))
    (out / "notes.txt").write_text("mine")
    del stages["pruning"]
    again = build_bundle(stages, out, compile=False, meta=meta)
    assert r"\title{\textit{Owls}}" not in (out / "main.tex").read_text()
    assert r"\title{\textit{Owls}}" in (out / "main.tex.edited").read_text()
    assert "main.tex was edited since the last build; kept as main.tex.edited." in again.message
    assert not (out / "tables" / "pruning_sweep.tex").exists()  # written by us, no longer part of it
    assert (out / "notes.txt").read_text() == "mine"  # never ours: untouched


def test_a_failing_section_builder_is_reported_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bundle_draft.builder

    def flaky(stage: str):  # type: ignore[no-untyped-def]
        if stage == "hybrid":

            def broken(run):  # type: ignore[no-untyped-def]
                raise KeyError("hybrids")

            return broken
        return real(stage)

    monkeypatch.setattr(bundle_draft, "builder", flaky)  # the sections are built there
    stages, meta = load_runs(RUNS)
    result = build_bundle(stages, tmp_path / "paper", compile=False, meta=meta)
    assert not result.ok and "hybrid: no section from run hybrid (KeyError: 'hybrids')." in result.problems
    main = result.main_tex.read_text()
    assert r"\label{sec:hybrid}" in main and "No text could be generated for this stage" in main
    assert r"\label{sec:pruning}" in main and (tmp_path / "paper" / "tables" / "pruning_sweep.tex").is_file()


def test_without_tex_the_bundle_is_written_and_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_module, "tex_available", lambda: False)
    stages, meta = load_runs(RUNS / "teacher")
    result = build_bundle(stages, tmp_path / "paper", meta=meta)
    assert result.pdf is None and result.ok and result.main_tex.is_file()
    assert "apt-get install texlive-latex-base" in result.message and "latexmk" in result.message
    assert (tmp_path / "paper" / "sublens-acl.sty").is_file()


def test_bad_arguments_fail_before_anything_is_written(tmp_path: Path) -> None:
    stages, meta = load_runs(RUNS / "teacher")
    with pytest.raises(SublensError, match="choose one of review, final, preprint"):
        build_bundle(stages, tmp_path / "a", mode="camera-ready", meta=meta)
    with pytest.raises(SublensError, match="is not a .sty file"):
        build_bundle(stages, tmp_path / "b", acl_sty=str(tmp_path / "acl.sty"), meta=meta)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- compiling (TeX) ----------------------------------------------------------------------------


@needs_tex
def test_full_bundle_with_a_failed_and_a_missing_stage_compiles(tmp_path: Path) -> None:
    runs = _copy_runs(tmp_path, stages=tuple(s for s in STAGE_ORDER if s != "hybrid"))
    _fail_run(runs / "pruning", "KeyboardInterrupt: stopped at 40% kept & 3_000 steps")
    stages, meta = load_runs(runs)
    result = build_bundle(stages, runs / "paper", meta=meta)
    assert result.ok, result.message
    assert result.pdf == runs / "paper" / "main.pdf" and result.pdf.stat().st_size > 10_000
    main = result.main_tex.read_text()
    assert (
        r"\textbf{This stage did not finish} (run \texttt{pruning}, status \texttt{failed}: "
        r"KeyboardInterrupt: stopped at 40\% kept \& 3\_000 steps)." in main
    )
    hybrid = main[main.index(r"\label{sec:hybrid}") :]
    assert hybrid.index("did not finish") < hybrid.index(r"\section")  # the sentence sits in its own section
    assert {"pruning: did not finish (failed)", "hybrid: did not finish (no run)"} <= set(result.headline)
    log = (runs / "paper" / "main.log").read_text(errors="replace")
    assert not re.search(r"(Citation|Reference) `[^']*' on page \d+ undefined", log)
    if shutil.which("pdffonts"):
        fonts = subprocess.run(["pdffonts", str(result.pdf)], capture_output=True, text=True, check=True).stdout
        assert "Type 3" not in fonts


@needs_tex
def test_cli_report_with_a_user_acl_sty(tmp_path: Path) -> None:
    runs = _copy_runs(tmp_path, stages=("teacher",))
    sty_dir = tmp_path / "acl-style-files"
    sty_dir.mkdir()
    (sty_dir / "acl.sty").write_text(FAKE_ACL)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        app, ["report", str(runs), "--out", str(out), "--acl-sty", str(sty_dir / "acl.sty"), "--mode", "final"]
    )
    assert result.exit_code == 0, result.output
    assert f"PDF: {out / 'main.pdf'}" in result.output and "teacher: P(owl)" in result.output
    assert (out / "acl.sty").read_text() == FAKE_ACL
    assert r"\usepackage[final]{acl}" in (out / "main.tex").read_text()
    text = subprocess.run(["pdftotext", str(out / "main.pdf"), "-"], capture_output=True, text=True).stdout
    assert "FAKE-ACL-STYLE" in text


# ---- command line ----------------------------------------------------------------------------


def test_cli_errors_exit_2_with_a_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "neither a run directory" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["report", str(RUNS / "teacher"), "--acl-sty", str(tmp_path / "x.txt")])
    assert result.exit_code == 2 and "is not a .sty file" in " ".join(result.output.split())


def test_report_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sublens.cli import app\n"
        f"r = CliRunner().invoke(app, ['report', {str(RUNS)!r}, '--out', {str(tmp_path / 'p')!r}, '--no-compile'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (tmp_path / "p" / "main.tex").is_file()


def test_spec_labels_keep_machine_paths_out_of_the_text() -> None:
    from sublens.report.stages import spec_label

    assert spec_label("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert spec_label("meta-llama/Llama-3.2-1B-Instruct") == "meta-llama/Llama-3.2-1B-Instruct"
    assert spec_label("/tmp/x/20261125-182234_paper_938f62/stages/teacher/") == (
        "20261125-182234_paper_938f62/stages/teacher"
    )
    assert spec_label("runs/20261125-161300_teacher_4f87f6") == "runs/20261125-161300_teacher_4f87f6"
    assert spec_label("/home/me/ckpt/owl-full") == "owl-full"
    assert spec_label(None) == "?"
