"""LaTeX building blocks: escaping, consistent number formatting, booktabs tables."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence, Sized

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
# Symbols the claims and numbers write in plain text (a reason such as "the CI lies inside ±0.3"):
# set as mathematics, not as code points.
_SYMBOLS = {
    "×": r"$\times$",
    "±": r"$\pm$",
    "−": r"$-$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "≈": r"$\approx$",
    "→": r"$\rightarrow$",
    "ρ": r"$\rho$",
    "α": r"$\alpha$",
    "‖": r"$\|$",
    "…": r"\ldots{}",
    "–": "--",
    "—": "---",
}


def escape(text: object) -> str:
    """Text safe for pdflatex with T1 fonts.

    LaTeX specials are escaped; Latin-1 letters pass through (T1 has them); any other
    character, e.g. an Arabic-Indic digit, is written as its code point (U+0663), which
    every font can show, so a table of number tokens in any script compiles.
    """
    out = []
    for char in str(text):
        if char in _SPECIAL:
            out.append(_SPECIAL[char])
        elif char in _SYMBOLS:
            out.append(_SYMBOLS[char])
        elif ord(char) < 128 or (ord(char) < 256 and unicodedata.category(char)[0] == "L"):
            out.append(char)
        elif char.isspace():
            out.append(" ")
        else:
            out.append(rf"\texttt{{U+{ord(char):04X}}}")
    return "".join(out)


def fmt(value: float | None, digits: int = 2) -> str:
    """One number, formatted the same way everywhere: fixed point, or a power of ten when tiny."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if math.isinf(value):
        return r"$\infty$" if value > 0 else r"$-\infty$"
    if value != 0 and abs(value) < 10 ** (-digits):
        mantissa, exponent = f"{value:.{max(digits - 1, 1)}e}".split("e")
        return rf"${mantissa}\times10^{{{int(exponent)}}}$"
    return _minus(f"{value:.{digits}f}")


def _minus(number: str) -> str:
    """A negative number in text mode takes a minus sign, not the hyphen '-0.42' would print."""
    return "$-$" + number[1:] if number.startswith("-") else number


def counted(n: int | None, noun: str, plural: str | None = None) -> str:
    """'1 seed', '3 seeds', '1,200 examples', '2 phases': one helper for every count in the prose
    (never 'seed(s)'). An unknown count reads '--'."""
    if n is None:
        return f"-- {plural or noun + 's'}"
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def steps_text(steps: Sequence[int]) -> str:
    """'1 optimizer step', '12 optimizer steps', '12/14 optimizer steps' (one count per student)."""
    if len(steps) == 1:
        return counted(steps[0], "optimizer step")
    return f"{'/'.join(f'{s:,}' for s in steps)} optimizer {'step' if set(steps) == {1} else 'steps'}"


def noun_for(items: Sized, noun: str, plural: str | None = None) -> str:
    """The noun agreeing with how many items follow it ('mode full', 'modes full, freeze-mlp')."""
    return noun if len(items) == 1 else plural or noun + "s"


def fmt_ci(value: float | None, low: float | None, high: float | None, digits: int = 2) -> str:
    """'1.83 [1.52, 2.10]'. The three numbers share one form: where some would be written as a
    power of ten and others in fixed point (-0.0066 [-0.01, -0.00094]), all are fixed point with
    the decimals the smallest needs for two significant digits (at most 6). Without bounds, the
    value alone."""
    if not _finite_values((low, high)):  # no interval: the value alone, not '0.23 [--, --]'
        return fmt(value, digits)
    if _mixed_forms((value, low, high), digits):
        return _fixed_ci(value, low, high, digits)
    return f"{fmt(value, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def fmt_fixed_ci(value: float | None, low: float | None, high: float | None, decimals: int = 2) -> str:
    """'0.11 [$-$0.01, 0.23]': a quantity on a known scale (a fraction of a gap, 0 to 1), where the
    same decimals everywhere are what a reader compares; never a power of ten, and a bound near
    zero does not lengthen the others (as fmt_ci would: 0.1100 [-0.0089, 0.2290])."""

    def one(v: float | None) -> str:
        return fmt(v) if v is None or not math.isfinite(v) else _minus(f"{v:.{decimals}f}")

    if not _finite_values((low, high)):
        return one(value)
    return f"{one(value)} [{one(low)}, {one(high)}]"


def _finite_values(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mixed_forms(values: Sequence[float | None], digits: int) -> bool:
    tiny = [v != 0 and abs(v) < 10 ** (-digits) for v in _finite_values(values)]
    return any(tiny) and not all(tiny)


def _fixed_ci(value: float | None, low: float | None, high: float | None, digits: int) -> str:
    smallest = min(abs(v) for v in _finite_values((value, low, high)) if v != 0)
    decimals = min(max(digits, 1 - math.floor(math.log10(smallest))), 6)

    def one(v: float | None) -> str:
        return fmt(v, digits) if v is None or not math.isfinite(v) else _minus(f"{v:.{decimals}f}")

    return f"{one(value)} [{one(low)}, {one(high)}]"


def ratio_digits(*values: object) -> int:
    """Decimals for a ratio and its CI: x103 [84, 125] reads better than x103.02 [84.14, 124.99];
    ratios of 10 or more keep one decimal, small ratios two."""

    def big(v: object, limit: float) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= limit

    if all(big(v, 50) for v in values):
        return 0
    return 1 if all(big(v, 10) for v in values) else 2


def fmt_p(p: float | None) -> str:
    """p-values: three decimals, or '<0.001'."""
    if p is None or math.isnan(p):
        return "--"
    return r"$<$0.001" if p < 0.001 else f"{p:.3f}"


def constant_column(rows: Sequence[Sequence[str]], index: int, blank: str = "--") -> str | None:
    """The one value every non-blank cell of a column holds (a column that tells the reader
    nothing row by row, e.g. Fisher p = 1.000 in every row), or None when the cells differ or
    all are blank. The caller folds such a column into one sentence (`drop_columns`)."""
    values = {row[index] for row in rows if row[index] != blank}
    return next(iter(values)) if len(values) == 1 else None


def drop_columns(
    header: Sequence[str], rows: Sequence[Sequence[str]], indices: Sequence[int]
) -> tuple[list[str], list[list[str]]]:
    """The header and rows without the columns at `indices` (folded into the text instead)."""
    gone = set(indices)
    return (
        [h for i, h in enumerate(header) if i not in gone],
        [[c for i, c in enumerate(row) if i not in gone] for row in rows],
    )


def booktabs_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    caption: str,
    label: str,
    align: str | None = None,
    wide: bool = False,
    escape_cells: bool = False,
) -> str:
    """A complete table float with booktabs rules. Cells are LaTeX unless escape_cells.

    The tabular sits in sublens-layout's `sublensfit`: should it come out wider than its column
    (or, wide, the page), it is scaled to fit instead of running into the margin, and the log
    says so (the layout check reports a table scaled below MIN_TABLE_SCALE)."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError("every row must have as many cells as the header")
    cell = escape if escape_cells else str
    env = "table*" if wide else "table"
    spec = align or "l" + "r" * (len(header) - 1)
    lines = [
        rf"\begin{{{env}}}[t]",
        r"\centering",
        r"\small",
        r"\begin{sublensfit}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(rf"\textbf{{{escape(h)}}}" for h in header) + r" \\",
        r"\midrule",
        *(" & ".join(cell(c) for c in row) + r" \\" for row in rows),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{sublensfit}",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        rf"\end{{{env}}}",
    ]
    return "\n".join(lines) + "\n"


_HYPHEN_MINUS = re.compile(r"(?<![\w{$^])-(?=\d)")


def minus_signs(text: str) -> str:
    """Text numbers' hyphens as math minus signs: no line break inside '[-1.78, -1.69]'."""
    return _HYPHEN_MINUS.sub("$-$", text)


def p_is(p: float | None) -> str:
    """'$p$ = 0.086' or '$p$ $<$0.001' (fmt_p's own form for tiny p)."""
    text = fmt_p(p)
    return f"$p$ {text}" if text.startswith("$<$") else f"$p$ = {text}"


_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)e([+-]?\d+)\b")


def scientific(text: str) -> str:
    """Python's '9.83e-19' in LaTeX text as $9.83\\times10^{-19}$ (no 'e' notation in the prose)."""
    return _SCIENTIFIC.sub(lambda m: rf"${m.group(1)}\times10^{{{int(m.group(2))}}}$", text)


def tt(text: object) -> str:
    """Typewriter text that may break after - and / (long model names in a column)."""
    breakable = escape(text).replace("-", r"-\allowbreak{}").replace("/", r"/\allowbreak{}")
    return rf"\texttt{{{breakable}}}"
