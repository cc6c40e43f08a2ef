"""Evaluation through ir_measures, with each dataset's official conventions.

Tied scores are ordered as trec_eval orders them (document id descending) for every measure,
whichever provider ir_measures picks. Queries of the qrels that a run lacks count as zero for every
measure (as `trec_eval -c`) and are listed, never dropped. Measures ir_measures lacks (NevIR's
PairedAccuracy) come from `harness.measures`, per unit, in the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress, islice
from operator import itemgetter
from typing import Any

import ir_measures

from harness.errors import ConfigError, InputError
from harness.io.text import gc_paused
from harness.measures import BUILTIN, MeasureContext, custom_measure, is_custom
from harness.records import Qrel, Run

log = logging.getLogger(__name__)

_DOC_AND_SCORE = itemgetter(1, 2)  # ScoredDoc(query_id, doc_id, score) -> (doc_id, score)


@dataclass
class Evaluation:
    """Every measure's value per unit (queries; NevIR pairs for PairedAccuracy) and its mean."""

    aggregate: dict[str, float]  # measure string -> mean over its units
    per_unit: dict[str, dict[str, float]]  # measure -> unit id -> value
    unit: dict[str, str] = field(default_factory=dict)  # measure -> what its units are ("query", "pair")
    judged_queries: list[str] = field(default_factory=list)
    missing_queries: list[str] = field(default_factory=list)  # judged, absent from the run
    unjudged_queries: list[str] = field(default_factory=list)  # in the run, absent from the qrels
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # measure -> what it shows beside its value

    def query_measures(self) -> list[str]:
        return [m for m in self.aggregate if self.unit.get(m, "query") == "query"]


def parse_measures(names: Iterable[str]) -> list[ir_measures.Measure]:
    out = []
    for name in names:
        try:
            out.append(ir_measures.parse_measure(name))
        except (NameError, ValueError, TypeError, SyntaxError) as exc:
            raise ConfigError(
                f"unknown measure {name!r} ({exc}); use ir_measures strings such as nDCG@10, AP(rel=2), "
                f"or a measure of the harness ({', '.join(sorted(BUILTIN))})"
            ) from exc
    return out


def check_measures(names: Iterable[str]) -> None:
    """Stop on a measure name neither the harness nor ir_measures knows, before any work."""
    parse_measures([n for n in names if not is_custom(n)])


def evaluate(run: Run, qrels: list[Qrel], measures: Iterable[str], context: MeasureContext | None = None) -> Evaluation:
    """Every measure over the run: ir_measures' own, and those of `harness.measures` (in the order given)."""
    names = list(measures)
    custom = {n: m for n in names if (m := custom_measure(n)) is not None}
    standard = [n for n in names if n not in custom]
    per_query, judged = _ir_measures(run, qrels, standard)
    per_unit: dict[str, dict[str, float]] = {n: {} for n in names}
    for qid, row in per_query.items():
        for n, value in row.items():
            per_unit[n][qid] = value
    unit = dict.fromkeys(standard, "query")
    details: dict[str, dict[str, Any]] = {}
    ctx = context or MeasureContext(qrels)
    pooled: dict[str, float] = {}  # measures whose value is not the mean of their units' (calibration)
    for name, measure in custom.items():
        values = dict.fromkeys(measure.units(ctx), 0.0)
        for metric in measure.iter_calc(run, ctx):
            values[metric.query_id] = float(metric.value)
        per_unit[name] = dict(sorted(values.items()))
        unit[name] = measure.unit
        details[name] = measure.details(run, ctx)
        if callable(own := getattr(measure, "aggregate", None)):
            pooled[name] = float(own(run, ctx))
    aggregate = {n: pooled[n] if n in pooled else (sum(per_unit[n].values()) / len(per_unit[n]) if per_unit[n] else 0.0)
                 for n in names}
    # A changed-instruction query (FollowIR) has no qrels of its own: p-MRR reads it, so it is not unjudged.
    judged_set = set(judged) | {p.changed for p in ctx.instruction_pairs}
    unjudged = sorted(q for q in run if q not in judged_set)
    if unjudged:
        log.warning("%d queries of the run are not in the qrels and are not evaluated (e.g. %s)",
                    len(unjudged), ", ".join(unjudged[:5]))
    return Evaluation(
        aggregate=aggregate,
        per_unit=per_unit,
        unit=unit,
        judged_queries=judged,
        missing_queries=[q for q in judged if q not in run],
        unjudged_queries=unjudged,
        details=details,
    )


def _ir_measures(run: Run, qrels: list[Qrel], names: list[str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Per query, the values of ir_measures' measures; a judged query the run lacks counts as 0."""
    parsed = parse_measures(names)
    key = {m: n for m, n in zip(parsed, names, strict=True)}
    judged = sorted({q.query_id for q in qrels})
    per_query: dict[str, dict[str, float]] = {q: dict.fromkeys(names, 0.0) for q in judged}
    if not names:
        return per_query, judged
    whole = [m for m in parsed if _top_depth(m) is None]
    top = [m for m in parsed if _top_depth(m) is not None]
    depth = max((_top_depth(m) or 0 for m in top), default=None)
    # ir_measures' own input form {qid: {docid: score}}, built in C: a million documents in a tenth
    # of a second (from a flat list of ScoredDoc, ir_measures would build it in a Python loop).
    with gc_paused():
        scored = {qid: dict(map(_DOC_AND_SCORE, docs)) for qid, docs in run.items() if docs and qid in per_query}
        grades = _grades(qrels)
        ranked = {qid: _ranking(docs, grades[qid], depth) for qid, docs in scored.items()}
    batches = [(_one_pass_order(whole), {qid: r[0] for qid, r in ranked.items()})] if whole else []
    if top:
        batches.append((top, {qid: r[1] for qid, r in ranked.items()}))
    for batch, docs in batches:
        for metric in ir_measures.iter_calc(batch, qrels, docs):
            per_query[metric.query_id][key[metric.measure]] = float(metric.value)
    return per_query, judged


# Measures that, given a cutoff k, read nothing but the first k documents of the ranking (and the qrels).
_TOP_ONLY = frozenset({"nDCG", "RR", "P", "R", "AP", "Success", "Judged"})


def _top_depth(measure: ir_measures.Measure) -> int | None:
    """The cutoff of a measure that reads only the top of each ranking, else None.

    Such measures are given each query's documents scoring at least its k-th best score (all ties
    of the k-th kept), a set that holds the first k of the ranking under any tie-breaking rule, in
    the same order: the values are those of the whole run. It matters for a long run: ir_measures
    hands RR@10 to a provider that sorts every document of a query in Python (0.7 s per million).
    `judged_only` measures skip unjudged documents and so may read below k: they get the whole run.
    """
    cutoff = measure.params.get("cutoff")
    if measure.NAME in _TOP_ONLY and isinstance(cutoff, int) and cutoff >= 1 and not measure.params.get("judged_only"):
        return cutoff
    return None


Grades = dict[str, set[tuple[str, int]]]  # document id -> its (iteration, relevance) judgments


def _grades(qrels: list[Qrel]) -> dict[str, Grades]:
    out: dict[str, Grades] = {}
    for q in qrels:
        out.setdefault(q.query_id, {}).setdefault(q.doc_id, set()).add((q.iteration, q.relevance))
    return out


def _ranking(docs: dict[str, float], grades: Grades,
             depth: int | None) -> tuple[dict[str, float], dict[str, float]]:
    """One query's documents as every provider must rank them: all of them, and the top for
    `depth`, the deepest cutoff of the measures that read only the top (see `_top_depth`).

    ir_measures' providers break tied scores their own way (msmarco, which computes RR@k, by
    document id ascending), while trec_eval, pytrec_eval and the harness's run.trec order them by
    document id descending (`records.sort_trec`). Where that matters, the query is given the scores
    n, n-1, ..., 1 in trec_eval's order: measures read the order, not the scores. It matters only
    where a tie holds documents judged differently (one unjudged and one judged, or two grades):
    every measure reads a ranking as its sequence of judgments, which reordering the documents of
    one judgment leaves as it is. A query without such ties keeps its scores, at the cost of a numpy
    sort of them.
    """
    import numpy as np

    n = len(docs)
    scores = np.fromiter(docs.values(), dtype=np.float64, count=n)
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    tied = ranked[1:] == ranked[:-1]  # (a NaN score, which the readers refuse, sorts last)
    if tied.any():
        # Each run of equal scores is order[a:b]. Only those that hold a judged document may hold
        # two judgments, and only those are put in trec_eval's order (the others' order is moot).
        edges = np.flatnonzero(np.diff(np.concatenate(([False], tied, [False])).astype(np.int8))).tolist()
        judged_scores = {docs[d] for d in grades if d in docs}
        groups = [(a, b + 1) for a, b in zip(edges[::2], edges[1::2], strict=True)
                  if float(ranked[a]) in judged_scores]
        ids = list(docs) if groups else []
        if not all(_one_judgment([grades.get(ids[i]) for i in order[a:b].tolist()]) for a, b in groups):
            positions = order.tolist()
            for a, b in groups:
                positions[a:b] = sorted(positions[a:b], key=ids.__getitem__, reverse=True)
            untied = dict(zip([ids[i] for i in positions], np.arange(n, 0, -1, dtype=np.float64).tolist(),
                              strict=True))
            return untied, (untied if depth is None else dict(islice(untied.items(), depth)))
    if depth is None or n <= depth or np.isnan(ranked[-1]):
        return docs, docs
    kth = ranked[depth - 1]  # the depth-th best score
    return docs, {d: docs[d] for d in compress(docs, (scores >= kth).tolist())}


def _one_judgment(judgments: list[set[tuple[str, int]] | None]) -> bool:
    return all(j == judgments[0] for j in judgments)


def _one_pass_order(measures: list[ir_measures.Measure]) -> list[ir_measures.Measure]:
    """The same measures, those with a relevance level first.

    ir_measures runs pytrec_eval once per relevance level, and puts an nDCG without custom gains
    (which no level changes) into the first run it has planned. Given [nDCG, AP(rel=2)] it plans
    two passes over the whole run; given [AP(rel=2), nDCG], one. The values are the same.
    """
    def level_free(m: ir_measures.Measure) -> bool:
        return m.NAME == "nDCG" and "gains" not in m.params

    return sorted(measures, key=level_free)


def judged_documents(qrels: list[Qrel]) -> Mapping[str, list[str]]:
    out: dict[str, list[str]] = {}
    for q in qrels:
        out.setdefault(q.query_id, []).append(q.doc_id)
    return out


def refuse_unmatched(run: Run, judged: Mapping[str, list[str]], *, task: str, label: str, path: str | None) -> None:
    """Stop a run that matches nothing judged: none of its queries is in the qrels, or none of the
    documents it ranks for them is. Such a run (ids with a prefix, another collection's query ids)
    scores 0.0 on every measure, which reads as a result. One judged document is enough to pass.
    `label` says what the run is ("the run", "first stage 'bm25'"); `path` is its file, if any.
    """
    queries = sorted(q for q in run if q in judged)
    if queries:
        judged_sets = {q: set(judged[q]) for q in queries}
        if any(d.doc_id in judged_sets[q] for q in queries for d in run[q]):
            return
        documents = sum(len(run[q]) for q in queries)
        problem = f"none of the {documents} documents it ranks for its {len(queries)} judged queries is judged"
        example = next((q for q in queries if run[q]), None)
        if example is not None:
            problem += (f" (query {example!r}: run doc {run[example][0].doc_id!r} "
                        f"vs qrels doc {judged[example][0]!r})")
    else:
        problem = (f"none of its {len(run)} queries is among the {len(judged)} judged queries "
                   f"(run query {min(run, default='')!r} vs qrels query {min(judged, default='')!r})")
    message = (f"{label} matches nothing judged in {task}'s qrels: {problem}, so every measure would "
               "be 0. Check that the run and the qrels use the same ids, or pass --allow-unmatched "
               "(allow_unmatched: true in a run config) to evaluate it anyway")
    if path is not None:
        raise InputError(path, message)
    raise ConfigError(message)
