"""Tables of results for people: first stage vs reranked, with counts and fallbacks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.records import generated_tokens
from harness.significance import legend, marks

if TYPE_CHECKING:
    from harness.pipeline import Outcome


def fmt(value: float | None) -> str:
    """A value; "-" for none, and for NaN: a measure that does not apply (calibration of a first stage)."""
    return "-" if value is None or value != value else f"{value:.4f}"


def outcome_rows(outcome: Outcome) -> tuple[list[str], list[list[str]], list[str]]:
    measures = list(outcome.first_eval.aggregate)
    header = ["system", *measures]
    first = outcome.first_eval.aggregate
    rows = [[f"first stage ({outcome.first_stage.name})", *(fmt(first[m]) for m in measures)]]
    if outcome.final_eval is not None:
        final = outcome.final_eval.aggregate
        rows.append([f"reranked ({outcome.pipeline.name})",
                     *(f"{fmt(final[m])}{marks(outcome.significance, m)}" for m in measures)])
    notes = [f"judged queries: {len(outcome.first_eval.judged_queries)}"]
    if outcome.significance:
        notes.append(legend(outcome.significance))
    if outcome.first_eval.missing_queries:
        missing = len(outcome.first_eval.missing_queries)
        notes.append(f"queries judged but absent from the first stage (scored 0): {missing}")
    for note in outcome.first_stage.notes:
        notes.append(f"note: {note}")
    if outcome.stages and outcome.final_eval is not None and getattr(outcome, "scored", None) is None:
        from harness.calibration import probability_map

        last = outcome.stages[-1].config  # a family without a probability says so, and gets no calibration
        reason = probability_map(last).says.removeprefix("none: ")
        notes.append(f"calibration (ECE, Brier): none for {last.name}, which states no probability of relevance: "
                     f"{reason}")
    for st in outcome.stages:
        s = st.stats
        line = (f"{st.config.name}: {s.items} items, {s.from_cache} from cache, {s.computed} computed, "
                f"{st.seconds:.1f}s")
        if s.fallbacks:
            line += "; fallbacks: " + ", ".join(f"{k} {v}" for k, v in sorted(s.fallbacks.items()))
        else:
            line += "; fallbacks: none"
        tokens = generated_tokens([j.record for j in st.judgments])
        if tokens:
            line += f"; mean generated (reasoning) tokens {sum(tokens) / len(tokens):.1f}"
        notes.append(line)
    return header, rows, notes
