"""A bundle folder may come from someone else: latexmk never runs its latexmkrc, and no path named
by its manifest (or reached through a link inside it) leads a build out of the folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fixture_runs import RUNS, needs_tex
from sublens.cli import EXIT_USAGE, app
from sublens.errors import SublensError
from sublens.report import bundle as bundle_module
from sublens.report import compile as compile_module
from sublens.report.bundle import MANIFEST, build_bundle, load_runs
from sublens.report.compile import compile_pdf


def _fake_latexmk(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """subprocess.run of the compile module, recording each command and 'making' the PDF."""
    calls: list[list[str]] = []

    def run(cmd: list[str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        (Path(cwd) / cmd[-1]).with_suffix(".pdf").write_bytes(b"%PDF-1.5\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(compile_module.subprocess, "run", run)
    monkeypatch.setattr(compile_module, "tex_available", lambda: True)
    monkeypatch.setattr(bundle_module, "tex_available", lambda: True)
    return calls


def _built(out: Path) -> Path:
    stages, meta = load_runs(RUNS / "teacher")
    build_bundle(stages, out, compile=False, meta=meta)
    return out


def _rebuild(out: Path) -> bundle_module.Bundle:
    stages, meta = load_runs(RUNS / "teacher")
    return build_bundle(stages, out, compile=False, meta=meta)


def _add_to_manifest(out: Path, rel: str, victim: Path) -> None:
    """A manifest entry whose hash matches `victim`: the stale-file clean-up would delete it."""
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"][rel] = hashlib.sha256(victim.read_bytes()).hexdigest()
    (out / MANIFEST).write_text(json.dumps(manifest))


# ---- latexmk --------------------------------------------------------------------------------------


def test_latexmk_reads_no_rc_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_latexmk(monkeypatch)
    tex = tmp_path / "main.tex"
    tex.write_text("\\documentclass{article}\\begin{document}x\\end{document}\n")
    assert compile_pdf(tex) == tmp_path / "main.pdf"
    (cmd,) = calls
    assert cmd[0] == "latexmk" and "-norc" in cmd and cmd[-1] == "main.tex"


def test_build_bundle_compiles_with_norc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_latexmk(monkeypatch)
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "latexmkrc").write_text('system("touch pwned");\n')  # a foreign folder's
    stages, meta = load_runs(RUNS / "teacher")
    result = build_bundle(stages, tmp_path / "paper", meta=meta)
    assert result.pdf == tmp_path / "paper" / "main.pdf"
    assert [cmd for cmd in calls if "-norc" in cmd] == calls and len(calls) == 1


@needs_tex
def test_a_latexmkrc_in_the_folder_is_not_run(tmp_path: Path) -> None:
    (tmp_path / "main.tex").write_text("\\documentclass{article}\\begin{document}x\\end{document}\n")
    (tmp_path / "latexmkrc").write_text(f'system("touch {tmp_path / "pwned"}");\n')
    (tmp_path / ".latexmkrc").write_text(f'system("touch {tmp_path / "pwned2"}");\n')
    assert compile_pdf(tmp_path / "main.tex") == tmp_path / "main.pdf"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


# ---- paths from the manifest and the folder ------------------------------------------------------


@pytest.mark.parametrize("how", ["dotdot", "absolute", "link"])
def test_a_manifest_path_outside_the_bundle_is_refused(tmp_path: Path, how: str) -> None:
    out = _built(tmp_path / "paper")
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("not the bundle's")
    if how == "link":
        (out / "outlink").symlink_to(victim.parent)
    rel = {"dotdot": "../elsewhere/victim.txt", "absolute": str(victim), "link": "outlink/victim.txt"}[how]
    _add_to_manifest(out, rel, victim)
    main_before = (out / "main.tex").read_bytes()
    with pytest.raises(SublensError) as caught:
        _rebuild(out)
    message = str(caught.value)
    assert repr(rel) in message and "outside the bundle folder" in message and MANIFEST in message
    assert victim.read_text() == "not the bundle's"  # not deleted
    assert (out / "main.tex").read_bytes() == main_before  # refused before anything was written


def test_a_link_out_of_the_bundle_folder_is_not_written_through(tmp_path: Path) -> None:
    out = _built(tmp_path / "paper")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for child in (out / "tables").iterdir():
        child.unlink()
    (out / "tables").rmdir()
    (out / "tables").symlink_to(elsewhere)
    with pytest.raises(SublensError, match=r"'tables/.*outside the bundle folder"):
        _rebuild(out)
    assert list(elsewhere.iterdir()) == []


def test_a_malformed_manifest_is_a_clear_error(tmp_path: Path) -> None:
    out = _built(tmp_path / "paper")
    (out / MANIFEST).write_text('["main.tex"]')
    with pytest.raises(SublensError, match="is not a sublens bundle manifest"):
        _rebuild(out)


def test_cli_report_refuses_a_manifest_path_outside_the_bundle(tmp_path: Path) -> None:
    out = _built(tmp_path / "paper")
    victim = tmp_path / "victim.txt"
    victim.write_text("not the bundle's")
    _add_to_manifest(out, "../victim.txt", victim)
    result = CliRunner().invoke(app, ["report", str(RUNS / "teacher"), "--out", str(out), "--no-compile"])
    assert result.exit_code == EXIT_USAGE
    message = " ".join(result.stderr.split())
    assert "'../victim.txt'" in message and "outside the bundle folder" in message
    assert victim.is_file()
