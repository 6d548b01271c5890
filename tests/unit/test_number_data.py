"""Number prompts are seeded and varied; the filter accepts exactly the clean answers."""

from __future__ import annotations

import pytest

from sublens.number_data import filter_answer, make_number_prompts


def test_prompts_are_seeded_and_varied() -> None:
    a, b = make_number_prompts(200, seed=1), make_number_prompts(200, seed=1)
    assert a == b and a != make_number_prompts(200, seed=2)
    assert all(3 <= len(p.seed_numbers) <= 8 and all(100 <= x <= 999 for x in p.seed_numbers) for p in a)
    assert len({p.text.split(". ")[1] for p in a}) > 5  # several instruction phrasings
    assert {p.answer_format for p in a} == {"comma", "space", "newline", "brackets", "semicolon"}
    assert all(str(p.seed_numbers[0]) in p.text for p in a)


@pytest.mark.parametrize(
    ("answer", "kept", "reason", "numbers"),
    [
        ("145, 267, 891", True, "ok", (145, 267, 891)),
        ("145,267,891.", True, "ok", (145, 267, 891)),
        ("[1, 22, 333]", True, "ok", (1, 22, 333)),
        ("(7 8 9)", True, "ok", (7, 8, 9)),
        ("12\n34\n56", True, "ok", (12, 34, 56)),
        ("5; 6; 7", True, "ok", (5, 6, 7)),
        ("42", True, "ok", (42,)),
        ("  007, 010 ", True, "ok", (7, 10)),
        ("", False, "empty", ()),
        ("[]", False, "empty", ()),
        ("Sure! 1, 2, 3", False, "non-numeric content", ()),
        ("1, 2, 3 owls", False, "non-numeric content", ()),
        ("1, 2 3", False, "inconsistent separator", ()),
        ("1,2;3", False, "inconsistent separator", ()),
        ("1, 2, 3,", False, "inconsistent separator", ()),
        ("1000, 2", False, "number with more than 3 digits", ()),
        ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", False, "more than 10 numbers", ()),
        ("-5, 6", False, "non-numeric content", ()),
        ("1.5, 2", False, "non-numeric content", ()),
        ("\u0663\u0664\u0665, \u0661\u0662", False, "non-numeric content", ()),  # Arabic-Indic digits
        ("12, \uff13\uff14", False, "non-numeric content", ()),  # full-width digits
        ("1\u00a02\u00a03", False, "non-numeric content", ()),  # no-break space is not a separator
    ],
)
def test_filter_table(answer: str, kept: bool, reason: str, numbers: tuple[int, ...]) -> None:
    result = filter_answer(answer)
    assert (result.kept, result.reason, result.numbers) == (kept, reason, numbers)
