"""python -m sublens.experiments.distill [docs/shd_alignment.png]: the alignment figure of
docs/shd_alignment.md (also writes a .pdf beside it)."""

from __future__ import annotations

import sys
from pathlib import Path

from sublens.experiments.distill.maps import alignment_figure

if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/shd_alignment.png")
    for written in alignment_figure(target.with_suffix("")):
        print(written)
