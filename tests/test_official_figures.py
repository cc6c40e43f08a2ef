"""`--model none` on the official first stages reproduces the official figures to 4 decimals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.evaluate import evaluate
from harness.io.trec import read_qrels, read_run
from harness.pipeline import PipelineSpec, run_pipeline

NONE = PipelineSpec.single("none")


def test_dl19_bm25_top1000(results: Path) -> None:
    out = run_pipeline(NONE, "trec-dl-2019", first_stage="bm25-top1000", depth=1000, results=results)
    assert round(out.first_eval.aggregate["AP(rel=2)"], 4) == 0.3013
    assert round(out.first_eval.aggregate["nDCG@10"], 4) == 0.5058
    assert round(out.first_eval.aggregate["R(rel=2)@100"], 4) == 0.4910
    metrics = json.loads((out.bundle / "metrics.json").read_text())  # type: ignore[operator]
    assert metrics["first_stage"]["AP(rel=2)"] == pytest.approx(0.3013, abs=5e-5)
    assert metrics["reranked"] is None
    assert "data_checksums" in metrics["provenance"]


def test_dl19_default_bm25_top100(results: Path) -> None:
    out = run_pipeline(NONE, "trec-dl-2019", results=results)
    assert out.first_stage.name == "bm25"
    assert round(out.first_eval.aggregate["nDCG@10"], 4) == 0.5058


def test_dl20_bm25_top100(results: Path) -> None:
    out = run_pipeline(NONE, "trec-dl-2020", results=results)
    assert round(out.first_eval.aggregate["nDCG@10"], 4) == 0.4796
    assert len(out.first_eval.judged_queries) == 54


def test_trec_covid_bm25_flat(results: Path) -> None:
    out = run_pipeline(NONE, "beir/trec-covid", first_stage="bm25-flat", results=results)
    assert round(out.first_eval.aggregate["nDCG@10"], 4) == 0.5947


def test_scifact_bm25s(results: Path) -> None:
    # PROVENANCE.md: bm25s (k1 1.5, b 0.75, English stemmer and stopwords, title + text) -> 0.686.
    out = run_pipeline(NONE, "beir/scifact", results=results)
    assert out.first_stage.name == "bm25s"  # rank1's run files are not mirrored here
    assert out.first_stage.notes and "rank1-runs" in out.first_stage.notes[0]
    assert round(out.first_eval.aggregate["nDCG@10"], 3) == 0.686


def test_missing_queries_count_as_zero(data: Path) -> None:
    qrels = read_qrels(data / "msmarco-passage/trec-dl-2019/qrels.dl19-passage.txt")
    run = read_run(data / "msmarco-passage/trec-dl-2019/bm25.top1000.trec")
    full = evaluate(run, qrels, ["nDCG@10"])
    dropped = sorted(run)[:3]
    partial = evaluate({q: d for q, d in run.items() if q not in dropped}, qrels, ["nDCG@10"])
    assert partial.missing_queries == dropped
    assert len(partial.judged_queries) == 43
    lost = sum(full.per_unit["nDCG@10"][q] for q in dropped) / 43
    assert partial.aggregate["nDCG@10"] == pytest.approx(full.aggregate["nDCG@10"] - lost)


def test_novel_eval_and_nevir_first_stages(results: Path) -> None:
    novel = run_pipeline(NONE, "novel-eval-2306", results=results)
    assert all(len(docs) == 20 for docs in novel.first_stage.run.values())
    assert len(novel.first_eval.judged_queries) == 21
    nevir = run_pipeline(NONE, "nevir", results=results)
    assert len(nevir.first_eval.judged_queries) == 786
    assert all(len(docs) == 2 for docs in nevir.first_stage.run.values())
    assert "PairedAccuracy" in nevir.first_eval.aggregate
