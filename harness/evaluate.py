"""Evaluation through ir_measures, with each dataset's official conventions.

Queries of the qrels that a run lacks count as zero for every measure (as `trec_eval -c`) and are
listed, never dropped. NevIR's paired accuracy is computed from the run and the task's pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import ir_measures

from harness.errors import ConfigError
from harness.records import Qrel, Run


@dataclass
class Evaluation:
    aggregate: dict[str, float]  # measure string -> mean over the judged queries
    per_query: dict[str, dict[str, float]]  # query id -> measure -> value
    missing_queries: list[str] = field(default_factory=list)  # judged, absent from the run
    unjudged_queries: list[str] = field(default_factory=list)  # in the run, absent from the qrels
    extra: dict[str, object] = field(default_factory=dict)  # e.g. paired accuracy details


def parse_measures(names: Iterable[str]) -> list[ir_measures.Measure]:
    out = []
    for name in names:
        try:
            out.append(ir_measures.parse_measure(name))
        except (NameError, ValueError, TypeError, SyntaxError) as exc:
            raise ConfigError(
                f"unknown measure {name!r} ({exc}); use ir_measures strings such as nDCG@10, AP(rel=2)"
            ) from exc
    return out


def evaluate(run: Run, qrels: list[Qrel], measures: Iterable[str]) -> Evaluation:
    names = list(measures)
    parsed = parse_measures(names)
    key = {m: n for m, n in zip(parsed, names, strict=True)}
    judged = sorted({q.query_id for q in qrels})
    per_query: dict[str, dict[str, float]] = {q: dict.fromkeys(names, 0.0) for q in judged}
    docs = [d for qid, ds in run.items() if qid in per_query for d in ds]
    for metric in ir_measures.iter_calc(parsed, qrels, docs):
        per_query[metric.query_id][key[metric.measure]] = float(metric.value)
    n = len(judged)
    aggregate = {name: (sum(v[name] for v in per_query.values()) / n if n else 0.0) for name in names}
    judged_set = set(judged)
    return Evaluation(
        aggregate=aggregate,
        per_query=per_query,
        missing_queries=[q for q in judged if q not in run],
        unjudged_queries=sorted(q for q in run if q not in judged_set),
    )


PAIRED_ACCURACY = "PairedAccuracy"


def paired_accuracy(run: Run, pairs: list[tuple[str, str, str, str, str]]) -> tuple[float, dict[str, float], int]:
    """NevIR's official measure: a pair counts when both queries put their own document first.

    `pairs` holds (pair_id, q1, q2, doc1, doc2). A query whose two documents tie, or that lacks
    one of them, does not count as ranking its own document first. Returns the accuracy, the
    per-pair outcomes, and how many queries had tied scores.
    """
    outcomes: dict[str, float] = {}
    ties = 0
    for pair_id, q1, q2, d1, d2 in pairs:
        ok = True
        for qid, own, other in ((q1, d1, d2), (q2, d2, d1)):
            scores = {d.doc_id: d.score for d in run.get(qid, [])}
            if own in scores and other in scores and scores[own] == scores[other]:
                ties += 1
            if not (own in scores and (other not in scores or scores[own] > scores[other])):
                ok = False
        outcomes[pair_id] = 1.0 if ok else 0.0
    acc = sum(outcomes.values()) / len(outcomes) if outcomes else 0.0
    return acc, outcomes, ties


def judged_documents(qrels: list[Qrel]) -> Mapping[str, list[str]]:
    out: dict[str, list[str]] = {}
    for q in qrels:
        out.setdefault(q.query_id, []).append(q.doc_id)
    return out
