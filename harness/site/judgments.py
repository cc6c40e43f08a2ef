"""The judgment reader's records: what a reranker said about each candidate of a query.

`judgment_view` is the one place that reads a judgment (a `judgments.jsonl` row read back as typed
records by `Bundle.judgment_rows`); everything else in the site works from `JudgmentView`.

A disagreement is a candidate whose judgment goes against its qrels grade. With a decision
(rank1, monoT5: p(true) > 0.5): a relevant passage judged not relevant, or a non-relevant one
judged relevant. Without one (a score that only orders): a relevant passage in the lower half of
the reranked candidates, or a non-relevant one in the top `high_cut(n)`. Relevant means at least
the task's relevance threshold (2 on DL, as `rel=2`); grade 0 is non-relevant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.bundle import Bundle
from harness.io.trec import read_run
from harness.records import JudgmentRow, ListwiseRecord, ListwiseWindow, Rank1Record, ScoredDoc
from harness.site.collect import reading
from harness.site.texts import Texts

# Families whose score is a probability of relevance (or its log), and how to read it as p(true).
PROBABILITY: dict[str, str] = {"rank1": "p", "monot5": "log p"}
_REL = re.compile(r"rel=(\d+)")


@dataclass(frozen=True)
class JudgmentView:
    score: float
    fallback: str | None
    reasoning: str | None = None  # reasoning families: the full chain
    finish: str | None = None
    forced: bool = False
    generated_tokens: int | None = None
    prompt_tokens: int | None = None
    windows: list[ListwiseWindow] = field(default_factory=list)  # listwise: the query's windows (its top document)
    other: dict[str, Any] = field(default_factory=dict)  # what other records keep (truncated, a plug-in's keys)


def judgment_view(row: JudgmentRow) -> JudgmentView:
    """A judgments.jsonl row, read back as typed records (harness.records), as the reader shows it."""
    r = row.record
    if isinstance(r, Rank1Record):
        return JudgmentView(row.score, row.fallback, r.reasoning, r.finish, r.forced, r.generated_tokens,
                            r.prompt_tokens, row.windows)
    other = {} if r is None or isinstance(r, ListwiseRecord) else r.row()  # listwise ranks: the page's columns
    return JudgmentView(row.score, row.fallback, windows=row.windows, other=other)


def probability(family: str | None, score: float) -> float | None:
    """p(true) of a family that has one; None for scores that only order, or an unscorable item (< 0)."""
    kind = PROBABILITY.get(family or "")
    if kind == "p":
        return score if 0.0 <= score <= 1.0 else None
    if kind == "log p":
        return math.exp(score) if score <= 0.0 else None
    return None


def relevant_grade(task: Mapping[str, Any], measures: list[str]) -> int:
    """The least grade that counts as relevant: the task's `relevance_threshold` when its file sets one,
    else 2 when a measure says `rel=2` (DL), else 1."""
    threshold = task.get("relevance_threshold")
    if isinstance(threshold, int) and threshold > 0:
        return threshold
    grades = [int(m.group(1)) for s in measures if (m := _REL.search(s))]
    return max(grades, default=1) or 1


def high_cut(n: int) -> int:
    """How many top candidates count as "ranked high" for a score without a decision."""
    return max(1, min(10, n // 2))


@dataclass
class Candidate:
    rank: int
    doc_id: str
    run_score: float
    first_rank: int | None
    grade: int | None  # qrels grade; None: unjudged
    title: str
    text: str | None  # None: the texts are not on this machine
    judgment: JudgmentView | None
    p_true: float | None = None
    disagreement: str = ""

    @property
    def answer(self) -> str | None:
        return None if self.p_true is None else ("true" if self.p_true > 0.5 else "false")


@dataclass
class QueryView:
    query_id: str
    text: str
    candidates: list[Candidate]
    windows: list[ListwiseWindow]
    values: dict[str, tuple[float, float]]  # measure -> (first stage, final)
    judged: bool

    @property
    def disagreements(self) -> list[Candidate]:
        return [c for c in self.candidates if c.disagreement]


class Reader:
    """Builds each query's view of one bundle: candidates in reranked order with their judgments."""

    def __init__(self, bundle: Bundle, texts: Texts) -> None:
        self.bundle = bundle
        self.texts = texts
        m = bundle.metrics
        self.family = m.stages[-1].type if m.stages else None
        self.level = relevant_grade(m.provenance.task, m.measures)
        first = bundle.path / "first_stage.trec"
        self.first_run: dict[str, list[ScoredDoc]] = read_run(first) if first.is_file() else {}
        self.run: dict[str, list[ScoredDoc]] = bundle.run
        self.judgments = {(r.query_id, r.doc_id): judgment_view(r) for r in bundle.judgment_rows()}
        self.values: dict[str, dict[str, tuple[float, float]]] = {}
        with reading(bundle.path / "per_query.tsv"):
            for measure in bundle.measures():
                if bundle.unit(measure) != "query":
                    continue
                fs, final = bundle.values(measure, first_stage=True), bundle.values(measure)
                for qid in fs:
                    self.values.setdefault(qid, {})[measure] = (fs[qid], final.get(qid, math.nan))

    def query_ids(self) -> list[str]:
        return sorted(set(self.run) | set(self.values))

    def query(self, qid: str) -> QueryView:
        docs = self.run.get(qid, [])[: self.bundle.metrics.depth]
        first = {d.doc_id: i + 1 for i, d in enumerate(self.first_run.get(qid, []))}
        candidates = []
        windows: list[ListwiseWindow] = []
        for rank, d in enumerate(docs, start=1):
            doc = self.texts.documents.get(d.doc_id)
            j = self.judgments.get((qid, d.doc_id))
            if j is not None and j.windows:
                windows = j.windows
            c = Candidate(rank, d.doc_id, d.score, first.get(d.doc_id), self.texts.grade(qid, d.doc_id),
                          doc.title if doc else "", doc.text if doc else None, j,
                          probability(self.family, j.score) if j else None)
            c.disagreement = self._disagreement(c, len(docs))
            candidates.append(c)
        return QueryView(qid, self.texts.query(qid), candidates, windows, self.values.get(qid, {}),
                         qid in self.texts.qrels)

    def _disagreement(self, c: Candidate, n: int) -> str:
        if c.grade is None or 0 < c.grade < self.level:
            return ""
        relevant = c.grade >= self.level
        if c.p_true is not None:
            if relevant and c.p_true <= 0.5:
                return f"relevant (grade {c.grade}), judged false: p(true) {c.p_true:.3f}"
            if not relevant and c.p_true > 0.5:
                return f"not relevant, judged true: p(true) {c.p_true:.3f}"
            return ""
        if relevant and c.rank > n - n // 2:
            return f"relevant (grade {c.grade}), ranked {c.rank} of {n}: in the lower half"
        if not relevant and c.rank <= high_cut(n):
            return f"not relevant, ranked {c.rank} of {n}: in the top {high_cut(n)}"
        return ""
