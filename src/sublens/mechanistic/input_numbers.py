"""The numbers the mechanistic analysis is run on: one categorised set of a finished
entanglement run (``read_entanglement_numbers``), each number with its category and bias ratio
(``NumberItem``); the set is chosen automatically when none is named, and the numbers are
compared with the run's results.json.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sublens.entanglement import is_tuned_set
from sublens.mechanistic.errors import MechanisticError
from sublens.runs import check_upstream_finished, read_json

_TWO_DIGITS = re.compile(r"^[0-9]{2}$")


# ---------------------------------------------------------------------------------------------
# input numbers


@dataclass(frozen=True)
class NumberItem:
    number: str
    category: str | None = None
    bias_ratio: float | None = None


def _auto_set(rows: pd.DataFrame, sets: list[str]) -> str:
    """The categorised set to use when none is named: the only one; else the set whose numbers
    are all two-digit (the autoregressive 2-digit set); else the vocabulary set. Sets categorised
    by the fine-tuned teachers (``ar2@tuned``) are chosen only when named."""
    sets = [s for s in sets if not is_tuned_set(s)] or sets
    if len(sets) == 1:
        return sets[0]
    two_digit = [
        s for s in sets if rows.loc[rows["set"] == s, "number"].map(lambda n: bool(_TWO_DIGITS.match(n))).all()
    ]
    if two_digit:
        return two_digit[0]
    vocab = [s for s in sets if "vocab" in s.lower()]
    if vocab:
        return vocab[0]
    raise MechanisticError(
        f"Cannot tell which entanglement set to analyse: it has {', '.join(sets)}. "
        "Name one with entanglement_set=<set>."
    )


def _read_numbers_table(path: Path, table_path: Path) -> pd.DataFrame:
    """The run's numbers.parquet with set and number as text. Every way it can be unusable (not
    there, the run unfinished, torn, not an entanglement table) is a `MechanisticError` that
    says what to do, checked in that order so the first message names the real cause."""
    if not table_path.is_file():
        raise MechanisticError(
            f"{str(path)!r} has no numbers.parquet: give the run directory of a finished "
            "entanglement run (`sublens run entanglement ...`), or list the numbers in the config."
        )
    check_upstream_finished(path, "entanglement")
    try:
        table = pd.read_parquet(table_path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise MechanisticError(
            f"{table_path} cannot be read as a table ({type(exc).__name__}: {exc}): it is torn or not "
            "an entanglement table. Rerun the entanglement run that wrote it."
        ) from exc
    missing = {"set", "category", "number"} - set(table.columns)
    if missing:
        raise MechanisticError(
            f"{table_path} lacks the column(s) {', '.join(sorted(missing))}: is it an entanglement run?"
        )
    return table.assign(set=table["set"].astype(str), number=table["number"].astype(str))


def _number_items(selected: pd.DataFrame, has_ratio: bool) -> list[NumberItem]:
    """One item per row; a missing bias ratio (no column, or NaN in it) becomes None."""
    items = []
    for _, row in selected.iterrows():
        ratio = row["bias_ratio"] if has_ratio else None
        ratio_value = None if ratio is None or pd.isna(ratio) else float(ratio)
        items.append(NumberItem(str(row["number"]), str(row["category"]), ratio_value))
    return items


def read_entanglement_numbers(
    run_dir: str | Path, set_name: str | None = None
) -> tuple[list[NumberItem], dict[str, Any]]:
    """The categorised numbers of one set of an entanglement run, with their bias ratios.

    Reads ``numbers.parquet`` (columns set, category, number, bias_ratio, ...); rows with a null
    category are not part of any category and are skipped. ``set_name=None`` picks the set as
    ``_auto_set`` says. When results.json lists ``categories[set][category] = [numbers]``, the
    two are compared and the outcome recorded (``matches_results_json``).
    """
    path = Path(run_dir).expanduser()
    table_path = path / "numbers.parquet"
    table = _read_numbers_table(path, table_path)
    rows = table[table["category"].notna()]
    sets = sorted(rows["set"].unique())
    if not sets:
        raise MechanisticError(f"{table_path} has no categorised numbers (every category is null).")
    chosen = set_name if set_name is not None else _auto_set(rows, sets)
    if chosen not in sets:
        raise MechanisticError(f"The entanglement run has no categorised set {chosen!r}; it has: {', '.join(sets)}.")
    selected = rows[rows["set"] == chosen]
    duplicated = selected["number"][selected["number"].duplicated()].tolist()
    if duplicated:
        raise MechanisticError(
            f"Set {chosen!r} lists the number(s) {', '.join(duplicated[:5])} more than once: "
            "categories must be disjoint."
        )
    has_ratio = "bias_ratio" in selected.columns
    items = _number_items(selected, has_ratio)
    info: dict[str, Any] = {
        "entanglement_run": str(path),
        "set": chosen,
        "set_chosen": "given" if set_name is not None else "auto",
        "sets_available": sets,
        "bias_ratio_column": has_ratio,
        "matches_results_json": _matches_results(path, chosen, items),
    }
    return items, info


def _matches_results(path: Path, set_name: str, items: list[NumberItem]) -> bool | None:
    results_path = path / "results.json"
    if not results_path.is_file():
        return None
    categories = read_json(results_path).get("categories")
    listed = categories.get(set_name) if isinstance(categories, dict) else None
    if not isinstance(listed, dict):
        return None
    ours: dict[str, set[str]] = defaultdict(set)
    for item in items:
        ours[str(item.category)].add(item.number)
    theirs = {str(cat): {str(n) for n in numbers} for cat, numbers in listed.items()}
    return dict(ours) == theirs
