"""End to end on real data with real (tiny or packaged) models: reranking, cache, bundle, resume."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError
from harness.evaluate import evaluate
from harness.measures import MeasureContext
from harness.pipeline import PipelineSpec, StageSpec, bundle_dir, merge_stage, run_pipeline, safe_name
from harness.records import Judgment, Qrel, ScoredDoc

ROOT = Path(__file__).resolve().parent.parent


def tiny_ce_config(tmp_path: Path, weights: Path, **extra: object) -> Path:
    cfg = {"name": "tiny-ce", "type": "cross-encoder", "weights": {"path": str(weights)},
           "max_length": 128, "batch_size": 16, **extra}
    path = tmp_path / "tiny-ce.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cross_encoder_reranks_and_caches(tmp_path: Path, tiny_cross_encoder: Path, results: Path) -> None:
    config = tiny_ce_config(tmp_path, tiny_cross_encoder)
    pipeline = PipelineSpec.single(str(config))
    first = run_pipeline(pipeline, "trec-dl-2019", depth=20, results=results)
    stats = first.stages[0].stats
    assert stats.items == 43 * 20
    assert stats.computed == 43 * 20 and stats.from_cache == 0
    # the reranked run holds the same documents as the first stage, in the model's order
    for qid, docs in first.final_run.items():
        assert {d.doc_id for d in docs} == {d.doc_id for d in first.first_stage.run[qid]}
    assert first.final_eval is not None
    assert first.final_eval.aggregate["nDCG@10"] != first.first_eval.aggregate["nDCG@10"]
    # a rerun computes nothing and gives the same bytes
    run1 = (first.bundle / "run.trec").read_bytes()  # type: ignore[operator]
    metrics1 = (first.bundle / "metrics.json").read_bytes()  # type: ignore[operator]
    second = run_pipeline(pipeline, "trec-dl-2019", depth=20, results=results)
    assert second.stages[0].stats.computed == 0
    assert second.stages[0].stats.from_cache == 43 * 20
    assert (second.bundle / "run.trec").read_bytes() == run1  # type: ignore[operator]
    assert (second.bundle / "metrics.json").read_bytes() == metrics1  # type: ignore[operator]
    # a different input template is a different cache key
    # (under another name: a config of other content never replaces the first one's bundle)
    other = tiny_ce_config(tmp_path, tiny_cross_encoder, query_template="query: {query}").rename(tmp_path / "ce-q.yaml")
    third = run_pipeline(PipelineSpec.single(str(other)), "trec-dl-2019", depth=20, results=results)
    assert third.stages[0].stats.computed == 43 * 20


def test_bundle_contents(tmp_path: Path, tiny_cross_encoder: Path, results: Path) -> None:
    config = tiny_ce_config(tmp_path, tiny_cross_encoder)
    out = run_pipeline(PipelineSpec.single(str(config)), "trec-dl-2019", depth=5, results=results)
    bundle = out.bundle
    assert bundle is not None
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert set(metrics["first_stage"]) == {"nDCG@10", "AP(rel=2)", "R(rel=2)@100", "RR(rel=2)@10"}
    # a cross-encoder has a probability of relevance: ECE and Brier beside the task's measures (the
    # first stage has none, so no value)
    assert set(metrics["reranked"]) == set(metrics["first_stage"]) | {"ECE", "Brier"}
    prov = metrics["provenance"]
    assert prov["models"][0]["type"] == "cross-encoder"
    assert metrics["stages"][0]["fingerprint"]["revision"].startswith("sha256:")
    assert "msmarco-passage/trec-dl-2019/qrels.dl19-passage.txt" in prov["data_checksums"]
    assert {"ir-measures", "torch", "transformers"} <= set(prov["libraries"])
    rows = (bundle / "per_query.tsv").read_text().splitlines()
    assert len(rows) == 1 + 43 * 6
    judgments = [json.loads(line) for line in (bundle / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 43 * 5
    assert len((bundle / "run.trec").read_text().splitlines()) == 43 * 5


def test_minilm_default_job_small(results: Path) -> None:
    """The packaged all-MiniLM-L6-v2 (real weights) reranks DL19 BM25: it must beat BM25 at depth 20."""
    out = run_pipeline(PipelineSpec.single("minilm-l6"), "trec-dl-2019", depth=20, results=results)
    assert out.final_eval is not None
    fs, rr = out.first_eval.aggregate["nDCG@10"], out.final_eval.aggregate["nDCG@10"]
    assert rr > fs + 0.05, (fs, rr)


def test_merge_stage_keeps_tail_below_head() -> None:
    prev = [ScoredDoc("q", f"d{i}", 10.0 - i) for i in range(5)]
    head = [Judgment("q", "d1", 0.9), Judgment("q", "d0", 0.1)]
    merged = merge_stage(prev, head)
    assert [d.doc_id for d in merged] == ["d1", "d0", "d2", "d3", "d4"]
    assert all(a.score > b.score for a, b in itertools.pairwise(merged))


def test_two_stage_pipeline(tmp_path: Path, tiny_cross_encoder: Path, results: Path) -> None:
    config = tiny_ce_config(tmp_path, tiny_cross_encoder)
    pipeline = PipelineSpec(name="two", stages=[StageSpec(model="minilm-l6"), StageSpec(model=str(config), depth=5)])
    out = run_pipeline(pipeline, "trec-dl-2019", depth=10, results=results)
    assert out.stages[0].stats.items == 430 and out.stages[1].stats.items == 215
    first_stage_of_2 = {qid: {d.doc_id for d in docs[:5]} for qid, docs in
                        _run_of(out.stages[0].judgments).items()}
    for qid, docs in out.final_run.items():
        assert {d.doc_id for d in docs[:5]} == first_stage_of_2[qid]


def _run_of(judgments: list[Judgment]) -> dict[str, list[Judgment]]:
    out: dict[str, list[Judgment]] = {}
    for j in judgments:
        out.setdefault(j.query_id, []).append(j)
    return {q: sorted(js, key=lambda j: (j.score, j.doc_id), reverse=True) for q, js in out.items()}


def test_paired_accuracy_by_hand() -> None:
    pairs = [("p1", "a1", "a2", "x1", "x2"), ("p2", "b1", "b2", "y1", "y2")]
    run = {
        "a1": [ScoredDoc("a1", "x1", 2.0), ScoredDoc("a1", "x2", 1.0)],
        "a2": [ScoredDoc("a2", "x2", 2.0), ScoredDoc("a2", "x1", 1.0)],
        "b1": [ScoredDoc("b1", "y1", 2.0), ScoredDoc("b1", "y2", 1.0)],
        "b2": [ScoredDoc("b2", "y1", 1.0), ScoredDoc("b2", "y2", 1.0)],  # a tie does not count
    }
    qrels = [Qrel(q, d, 1) for _, q1, q2, d1, d2 in pairs for q, d in ((q1, d1), (q2, d2))]
    result = evaluate(run, qrels, ["PairedAccuracy", "nDCG@10"], MeasureContext(qrels, pairs))
    assert result.aggregate["PairedAccuracy"] == 0.5
    assert result.per_unit["PairedAccuracy"] == {"p1": 1.0, "p2": 0.0}
    assert result.unit == {"PairedAccuracy": "pair", "nDCG@10": "query"}
    assert result.details["PairedAccuracy"] == {"pairs": 2, "tied_queries": 1}
    # a measure that needs pairs on a task without them is an error, not a silent 0
    with pytest.raises(ConfigError, match="needs the task's query pairs"):
        evaluate(run, qrels, ["PairedAccuracy"])


def test_nevir_oracle_run_scores_one(results: Path) -> None:
    out = run_pipeline(PipelineSpec.single("none"), "nevir", results=results)
    from harness.taskdata import load_task_data
    from harness.tasks import load_task

    data = load_task_data(load_task("nevir"))
    assert len(data.pairs) == 393
    oracle = {q.query_id: [] for q in data.qrels}
    for q in data.qrels:
        oracle[q.query_id].append(ScoredDoc(q.query_id, q.doc_id, float(q.relevance)))
    ctx = MeasureContext(data.qrels, data.pairs, "nevir")
    assert evaluate(oracle, data.qrels, ["PairedAccuracy"], ctx).aggregate["PairedAccuracy"] == 1.0
    # the BM25 order is a poor NevIR ranker: well under chance of 25%
    assert out.first_eval.aggregate["PairedAccuracy"] < 0.25


def test_safe_names_cannot_escape(tmp_path: Path) -> None:
    assert "/" not in safe_name("../../etc/passwd")
    path = bundle_dir(tmp_path, "../../x", "..", 10, "../evil")
    assert tmp_path.resolve() in path.parents


@pytest.mark.parametrize("argv", [["eval", "--model", "none", "--task", "trec-dl-2020"]])
def test_cli_prints_table(argv: list[str], results: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "harness", *argv, "--results", str(results)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "0.4796" in out.stdout
