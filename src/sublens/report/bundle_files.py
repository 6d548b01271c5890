"""Writing a bundle: its files, the manifest of what was written (`MANIFEST`: a file the author
edited since is kept aside, a stale one removed), the layout check, the style files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from sublens.errors import SublensError
from sublens.report.bundle_draft import _Draft
from sublens.report.compile import LAYOUT_PACKAGE, install_style, style_source
from sublens.report.layout import LayoutReport
from sublens.runs import atomic_write_bytes, read_json

MANIFEST = ".sublens-bundle.json"


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
