"""Tied scores are ordered as trec_eval orders them, whichever ir_measures provider computes a measure.

trec_eval (and pytrec_eval, and the harness's own run.trec) sort a query's documents by score
descending, then by document id descending. ir_measures hands RR@k to its msmarco provider, which
breaks ties the other way. Each value here is checked against pytrec_eval itself, query by query,
on the real DL19 qrels with runs full of ties.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import pytrec_eval

from harness.evaluate import evaluate
from harness.io.trec import read_run
from harness.records import Qrel, Run, ScoredDoc
from harness.taskdata import load_task_data
from harness.tasks import load_task

# ir_measures string -> (trec_eval measure, relevance level, cutoff applied to recip_rank)
REFERENCE: dict[str, tuple[str, int, int | None]] = {
    "nDCG@10": ("ndcg_cut_10", 1, None),
    "nDCG": ("ndcg", 1, None),
    "AP": ("map", 1, None),
    "AP(rel=2)": ("map", 2, None),
    "R@100": ("recall_100", 1, None),
    "R(rel=2)@100": ("recall_100", 2, None),
    "P@10": ("P_10", 1, None),
    "P(rel=2)@10": ("P_10", 2, None),
    "RR": ("recip_rank", 1, None),
    "RR@10": ("recip_rank", 1, 10),
    "RR(rel=2)@10": ("recip_rank", 2, 10),
}


@pytest.fixture(scope="module")
def qrels() -> list[Qrel]:
    return load_task_data(load_task("trec-dl-2019")).qrels


def with_scores(run: Run, score: dict[str, float] | None = None, digits: int | None = None) -> Run:
    """The run with each score rounded to `digits`, or replaced by `score[qid]`; list order kept."""
    out: Run = {}
    for qid, docs in run.items():
        out[qid] = [ScoredDoc(qid, d.doc_id, score[qid] if score else round(d.score, digits)) for d in docs]
    return out


def trec_eval(qrels: list[Qrel], run: Run) -> dict[str, dict[str, float]]:
    """Every measure of REFERENCE per query, computed by pytrec_eval alone (trec_eval's C code)."""
    judged: dict[str, dict[str, int]] = {}
    for q in qrels:
        judged.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    scored = {qid: {d.doc_id: d.score for d in docs} for qid, docs in run.items() if qid in judged}
    by_level = {level: pytrec_eval.RelevanceEvaluator(judged, {"map", "recip_rank", "P", "recall", "ndcg_cut",
                                                                "ndcg"}, relevance_level=level).evaluate(scored)
                for level in (1, 2)}
    out: dict[str, dict[str, float]] = {}
    for qid in scored:
        values = {}
        for name, (measure, level, cutoff) in REFERENCE.items():
            value = by_level[level][qid][measure]
            if cutoff is not None and value < 1 / cutoff:  # the first relevant document ranks below k
                value = 0.0
            values[name] = value
        out[qid] = values
    return out


def assert_like_trec_eval(run: Run, qrels: list[Qrel]) -> None:
    ours = evaluate(run, qrels, list(REFERENCE))
    reference = trec_eval(qrels, run)
    assert set(reference) == set(ours.judged_queries)  # every judged query is in these runs
    for qid, values in reference.items():
        for name, value in values.items():
            assert ours.per_unit[name][qid] == pytest.approx(value, abs=1e-12), (qid, name)
    for name in REFERENCE:
        mean = sum(v[name] for v in reference.values()) / len(reference)
        assert ours.aggregate[name] == pytest.approx(mean, abs=1e-12), name


def test_reference_covers_the_task_and_beir_measures() -> None:
    wanted = set(load_task("trec-dl-2019").measures) | set(load_task("beir/scifact").measures)
    assert wanted <= set(REFERENCE) and {"RR@10", "nDCG@10", "AP", "P@10"} <= set(REFERENCE)


def test_repllama_run_as_published(data: Path, qrels: list[Qrel]) -> None:
    """Its scores have three decimals: 43 queries hold tied documents, some of them relevant."""
    run = read_run(data / "msmarco-passage/trec-dl-2019/repllama.top100.trec")
    assert_like_trec_eval(run, qrels)
    # the figure `trec_eval -c -l 2 -m recip_rank` gives on this run cut at 10
    assert round(evaluate(run, qrels, ["RR(rel=2)@10"]).aggregate["RR(rel=2)@10"], 4) == 0.9138


@pytest.mark.parametrize("digits", [1, 0])
def test_repllama_with_rounded_scores(data: Path, qrels: list[Qrel], digits: int) -> None:
    run = with_scores(read_run(data / "msmarco-passage/trec-dl-2019/repllama.top100.trec"), digits=digits)
    assert_like_trec_eval(run, qrels)


def test_every_score_equal(data: Path, qrels: list[Qrel]) -> None:
    """Only the document ids order the run; DL19's ids are digits of unequal length ('9' > '10')."""
    run = read_run(data / "msmarco-passage/trec-dl-2019/repllama.top100.trec")
    assert_like_trec_eval(with_scores(run, score=dict.fromkeys(run, 1.0)), qrels)


def test_long_run_with_ties_in_any_list_order(data: Path, qrels: list[Qrel]) -> None:
    """1,000 documents a query (the measures with a cutoff read only the top), scores rounded to
    integers, each query's list shuffled: the list order must not matter, only scores and ids."""
    run = with_scores(read_run(data / "msmarco-passage/trec-dl-2019/bm25.top1000.trec"), digits=0)
    rng = random.Random(0)
    for docs in run.values():
        rng.shuffle(docs)
    assert_like_trec_eval(run, qrels)
