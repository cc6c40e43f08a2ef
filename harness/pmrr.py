"""p-MRR (FollowIR, Weller et al. 2024, arXiv 2403.15246): does a ranking follow a changed instruction?

For each document whose judgment the changed instruction flips, with R_og its rank in the ranking of
the query with the original instruction and R_new its rank with the changed instruction:

    (1/R_og) / (1/R_new) - 1   when R_og >= R_new (the document moved up, or stayed)
    1 - (1/R_new) / (1/R_og)   otherwise (it moved down: the change was followed)

averaged over the query's changed documents, then over queries. As MTEB computes it
(`mteb._evaluators.retrieval_metrics.calculate_pmrr`, `get_rank_from_dict`): a ranking orders its
documents by score, ties by document id descending (trec_eval's order, the harness's run order); a
document missing from a ranking of n documents takes rank n + 1; a query without changed documents
is no unit. One difference, the harness's rule for every measure: a query whose ranking with either
instruction is missing from the run counts 0 (what a ranking left as it was gets) and is listed in
the details, where MTEB leaves it out of the average with a warning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from ir_measures import Metric

from harness.errors import ConfigError
from harness.measures import InstructionPair, MeasureContext, register_measure
from harness.records import Run, ScoredDoc


def ranks(docs: Sequence[ScoredDoc]) -> dict[str, int]:
    """1-based rank of each document: score descending, ties by document id descending (as MTEB)."""
    ordered = sorted(docs, key=lambda d: (d.score, d.doc_id), reverse=True)
    out: dict[str, int] = {}
    for i, d in enumerate(ordered, start=1):
        out.setdefault(d.doc_id, i)
    return out


def rank_score(og_rank: int, new_rank: int) -> float:
    """FollowIR's per-document score (MTEB's `rank_score`, the same arithmetic)."""
    if og_rank >= new_rank:
        return ((1 / og_rank) / (1 / new_rank)) - 1
    return 1 - ((1 / new_rank) / (1 / og_rank))


def pair_value(run: Run, pair: InstructionPair) -> float:
    """The pair's p-MRR; both of its rankings must be in the run."""
    original, changed = ranks(run[pair.original]), ranks(run[pair.changed])
    scores = [rank_score(original.get(d, len(original) + 1), changed.get(d, len(changed) + 1))
              for d in pair.documents]
    return sum(scores) / len(scores)


@register_measure("p-MRR")
class PairwiseMRR:
    """p-MRR per instruction pair (a query and its changed instruction), in [-1, 1]; 0 is no change."""

    name: ClassVar[str] = "p-MRR"
    unit: ClassVar[str] = "instruction pair"

    def units(self, ctx: MeasureContext) -> list[str]:
        return [p.query_id for p in _pairs(ctx)]

    def iter_calc(self, run: Run, ctx: MeasureContext) -> Iterator[Metric]:
        for pair in _pairs(ctx):
            if pair.original in run and pair.changed in run:
                yield Metric(pair.query_id, self.name, pair_value(run, pair))  # type: ignore[arg-type]  # by name

    def details(self, run: Run, ctx: MeasureContext) -> dict[str, Any]:
        pairs = _pairs(ctx)
        missing = sorted(p.query_id for p in pairs if p.original not in run or p.changed not in run)
        absent = 0  # changed documents a ranking lacks: they take its length + 1
        for p in pairs:
            for qid in (p.original, p.changed):
                ranked = {s.doc_id for s in run.get(qid, [])}
                absent += sum(1 for d in p.documents if d not in ranked) if qid in run else 0
        return {"instruction_pairs": len(pairs), "changed_documents": sum(len(p.documents) for p in pairs),
                "queries_missing_from_run": missing, "changed_documents_absent_from_rankings": absent}


def _pairs(ctx: MeasureContext) -> list[InstructionPair]:
    if not ctx.instruction_pairs:
        raise ConfigError(f"p-MRR needs the task's instruction pairs (original and changed instruction, and the "
                          f"documents the change flips), and {ctx.task or 'this task'} has none (a task names them "
                          "under `instruction_following:`)")
    return [p for p in ctx.instruction_pairs if p.documents]
