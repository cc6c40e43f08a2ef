"""Significance marks of a reranked run against its first stage and named baselines.

Each reranked score is tested against each reference with the paired t-test over the task's
units (queries; what a measure of harness.measures averages over, e.g. NevIR pairs), two-sided.
The p-values of one bundle (every measure against every reference) are Holm-corrected together,
so a mark survives the number of tests the table shows. The randomization test's p is stored beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness import stats
from harness.evaluate import Evaluation
from harness.measures import higher_is_better

Values = dict[str, dict[str, float]]  # measure -> unit id -> value

FIRST_STAGE = "first stage"


def unit_values(evaluation: Evaluation) -> Values:
    """Per-unit values of every measure: queries, or what the measure's units are (NevIR pairs)."""
    return {m: dict(v) for m, v in evaluation.per_unit.items()}


def significance(system: Values, references: Mapping[str, Values], measures: list[str],
                 alpha: float = stats.ALPHA) -> dict[str, Any]:
    """Paired tests of `system` against each reference, Holm-corrected over all of them."""
    rows: list[tuple[str, str, stats.Paired]] = []
    for ref, values in references.items():
        for m in measures:
            if m not in system or m not in values:
                continue
            units = sorted(set(system[m]) & set(values[m]))
            if not units:  # the measure does not apply to the reference (calibration of a first stage)
                continue
            test = stats.paired([values[m][u] for u in units], [system[m][u] for u in units])
            rows.append((ref, m, test))
    adjusted = stats.holm([t.p_t for _, _, t in rows])
    against: dict[str, dict[str, Any]] = {}
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    symbol = {ref: "" if ref == FIRST_STAGE else next(letters) for ref in references}
    for (ref, m, t), p_holm in zip(rows, adjusted, strict=True):
        against.setdefault(ref, {})[m] = {
            "n": t.n, "delta": t.delta, "p": t.p_t, "p_holm": p_holm, "p_randomization": t.p_randomization,
            "significant": bool(p_holm < alpha),
            "direction": "better" if (t.delta > 0) == higher_is_better(m) else "worse",
            "mark": symbol[ref],
        }
    return {"test": "paired t-test, two-sided, Holm-corrected over every test of this bundle",
            "alpha": alpha, "tests": len(rows), "against": against}


def marks(block: Mapping[str, Any] | None, measure: str) -> str:
    """`▲`/`▼` for a significant gain/loss against the first stage, `▲a`, `▼b` against baselines."""
    if not block:
        return ""
    out = []
    for tests in sorted(block["against"].values(), key=_mark_of):
        t = tests.get(measure)
        if not t or not t["significant"]:
            continue
        out.append(("▲" if t["direction"] == "better" else "▼") + t["mark"])
    return "".join(out)


def _mark_of(tests: Mapping[str, Any]) -> str:
    return next(iter(tests.values()))["mark"] if tests else ""


def legend(block: Mapping[str, Any] | None) -> str:
    if not block or not block["tests"]:
        return ""
    parts = []
    for ref, tests in sorted(block["against"].items(), key=lambda kv: _mark_of(kv[1])):
        mark = _mark_of(tests)
        parts.append("▲/▼ the first stage" if ref == FIRST_STAGE else f"▲{mark}/▼{mark} {ref}")
    return (f"significant (paired t-test, Holm over {block['tests']} tests, alpha {block['alpha']}) "
            "against: " + ", ".join(parts))
