"""Calibration measures: by hand on fixed inputs, against scikit-learn, through the evaluation and the
bundle (a tiny cross-encoder and the tiny rank1 on real DL19 candidates), and which families have a
probability of relevance at all."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ir_measures import Qrel, ScoredDoc

from harness.calibration import (
    auroc,
    brier,
    default_measures,
    ece,
    equal_mass_bins,
    log_loss,
    probability_map,
    reliability,
    selective,
)
from harness.evaluate import evaluate
from harness.measures import MeasureContext, higher_is_better
from harness.records import Judgment
from harness.registry import load_model_config, parse_model_config
from harness.report import outcome_rows


def test_by_hand_on_fixed_inputs() -> None:
    p = [0.1, 0.2, 0.8, 0.9]
    y = [0, 1, 1, 1]
    # Brier: (0.01 + 0.64 + 0.04 + 0.01) / 4
    assert brier(p, y) == pytest.approx(0.175)
    # log loss: -(log 0.9 + log 0.2 + log 0.8 + log 0.9) / 4
    assert log_loss(p, y) == pytest.approx(-(2 * math.log(0.9) + math.log(0.2) + math.log(0.8)) / 4)
    # two equal-mass bins: {0.1, 0.2} (mean p 0.15, 1 of 2 relevant), {0.8, 0.9} (0.85, 2 of 2)
    assert ece(p, y, bins=2) == pytest.approx(0.5 * abs(0.5 - 0.15) + 0.5 * abs(1.0 - 0.85))
    # one bin per pair: the mean absolute error
    assert ece(p, y, bins=4) == pytest.approx((0.1 + 0.8 + 0.2 + 0.1) / 4)
    # a perfectly calibrated bin has no error
    assert ece([0.5, 0.5], [0, 1], bins=1) == 0.0
    # bins are equal-mass, not equal-width: 10 pairs in 3 bins hold 4, 3, 3, sorted by probability
    assert [len(b) for b in equal_mass_bins([0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.7, 0.6, 0.4, 0.05], 3)] == [4, 3, 3]
    bins = reliability(p, y, bins=2)
    assert bins[0] == {"pairs": 2, "mean_probability": pytest.approx(0.15), "fraction_relevant": 0.5,
                       "low": 0.1, "high": 0.2}
    # log loss clips at the float64 epsilon, as scikit-learn does: a confident mistake is finite
    assert math.isfinite(log_loss([0.0, 1.0], [1, 0]))
    assert math.isnan(ece([], [])) and math.isnan(brier([], []))


def test_against_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(7)
    p = rng.uniform(0.01, 0.99, 200)
    y = (rng.uniform(size=200) < p ** 1.5).astype(int)  # miscalibrated on purpose
    assert brier(p, y) == pytest.approx(sklearn_metrics.brier_score_loss(y, p), abs=1e-12)
    assert log_loss(p, y) == pytest.approx(sklearn_metrics.log_loss(y, p), abs=1e-12)
    # scikit-learn's quantile bins are our equal-mass bins when probabilities are distinct and the
    # count divides: ECE = mean over bins of |fraction relevant - mean probability|
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
    assert len(frac) == 10
    assert ece(p, y, bins=10) == pytest.approx(float(np.mean(np.abs(frac - mean))), abs=1e-12)
    for (f, m), b in zip(zip(frac, mean, strict=True), reliability(p, y, bins=10), strict=True):
        assert (b["fraction_relevant"], b["mean_probability"]) == pytest.approx((f, m))
    wrong = rng.uniform(size=200) < 0.3
    spread = rng.normal(size=200) + wrong  # informative
    assert auroc(spread, wrong) == pytest.approx(sklearn_metrics.roc_auc_score(wrong, spread), abs=1e-12)
    ties = np.round(spread)  # many ties: they count half, as in scikit-learn
    assert auroc(ties, wrong) == pytest.approx(sklearn_metrics.roc_auc_score(wrong, ties), abs=1e-12)
    assert auroc([1.0, 2.0], [True, True]) is None


def test_selective_curve() -> None:
    curve = selective([0.3, 0.1, 0.2], [0.0, 1.0, 0.5])  # least spread first: 1.0, 0.5, 0.0
    assert [c["coverage"] for c in curve] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [c["value"] for c in curve] == pytest.approx([1.0, 0.75, 0.5])


def context(probabilities: dict[str, dict[str, float]]) -> MeasureContext:
    qrels = [Qrel("q1", "a", 3), Qrel("q1", "b", 1), Qrel("q1", "c", 0), Qrel("q2", "d", 2), Qrel("q2", "e", 0),
             Qrel("q3", "f", 2)]
    return MeasureContext(qrels, relevance_threshold=2, probabilities=probabilities)


def test_measures_through_the_evaluation() -> None:
    probs = {"q1": {"a": 0.9, "b": 0.6, "c": 0.2, "x": 0.7}, "q2": {"d": 0.4, "e": 0.1}}  # x: unjudged
    run = {q: [ScoredDoc(q, d, p) for d, p in docs.items()] for q, docs in probs.items()}
    ctx = context(probs)
    result = evaluate(run, ctx.qrels, ["nDCG@10", "ECE", "Brier", "LogLoss"], ctx)
    # relevance >= 2: a (3) and d (2) are relevant, b (1) is not; x is unjudged and left out
    p, y = [0.9, 0.6, 0.2, 0.4, 0.1], [1, 0, 0, 1, 0]
    assert result.aggregate["Brier"] == pytest.approx(brier(p, y))  # over all judged pairs pooled
    assert result.aggregate["ECE"] == pytest.approx(ece(p, y))
    assert result.aggregate["LogLoss"] == pytest.approx(log_loss(p, y))
    assert result.per_unit["Brier"] == pytest.approx({"q1": brier(p[:3], y[:3]), "q2": brier(p[3:], y[3:])})
    assert set(result.per_unit["ECE"]) == {"q1", "q2"}  # q3 has no scored pair: no value, not 0
    assert result.details["ECE"] == {"pairs": 5, "relevant": 2, "queries": 2, "unjudged_left_out": 1,
                                     "relevance_threshold": 2}
    assert not higher_is_better("ECE") and higher_is_better("nDCG@10")
    first = evaluate(run, ctx.qrels, ["nDCG@10", "ECE"], MeasureContext(ctx.qrels))  # no probabilities
    assert math.isnan(first.aggregate["ECE"]) and first.per_unit["ECE"] == {}


def test_which_families_have_a_probability(tiny_cross_encoder: Path) -> None:
    def judgment(score: float) -> Judgment:
        return Judgment("q", "d", score)

    weights = {"path": str(tiny_cross_encoder)}
    rank1 = probability_map(parse_model_config({"name": "r", "type": "rank1", "weights": weights}, "t"))
    assert rank1.of is not None and rank1.of(judgment(0.8)) == 0.8
    assert rank1.of(judgment(-1.0)) is None  # unscorable
    monot5 = probability_map(parse_model_config({"name": "m", "type": "monot5", "weights": weights}, "t"))
    assert monot5.of is not None and monot5.of(judgment(math.log(0.25))) == pytest.approx(0.25)
    ce = probability_map(parse_model_config({"name": "c", "type": "cross-encoder", "weights": weights}, "t"))
    assert ce.of is not None and ce.of(judgment(0.0)) == 0.5 and ce.of(judgment(2.0)) == pytest.approx(0.8807971)
    minilm = load_model_config("minilm-l6")
    assert probability_map(minilm).of is None and "similarity" in probability_map(minilm).says
    assert default_measures(minilm, None) == []  # make eval prints what it printed before


def run_tiny(config: dict[str, Any], results: Path, depth: int) -> Any:
    import yaml

    from harness.pipeline import PipelineSpec, run_pipeline

    path = results.parent / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_pipeline(PipelineSpec.single(str(path)), "trec-dl-2019", depth=depth, results=results)


def test_cross_encoder_bundle_has_calibration(tiny_cross_encoder: Path, results: Path, data: Path) -> None:
    outcome = run_tiny({"name": "tiny-ce", "type": "cross-encoder", "weights": {"path": str(tiny_cross_encoder)},
                        "max_length": 128}, results, depth=10)
    header, rows, _ = outcome_rows(outcome)
    assert header[:2] == ["system", "nDCG@10"] and header[-2:] == ["ECE", "Brier"]
    assert rows[0][-2:] == ["-", "-"]  # the first stage has no probability
    bundle = outcome.bundle
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert "ECE" not in metrics["first_stage"] and 0 < metrics["reranked"]["ECE"] < 1
    assert metrics["details"]["reranked"]["Brier"]["relevance_threshold"] == 2
    record = json.loads((bundle / "calibration.json").read_text())
    assert record["probability"] == "the sigmoid of the logit" and record["confidence"] is None
    assert record["Brier"] == pytest.approx(metrics["reranked"]["Brier"])
    assert sum(b["pairs"] for b in record["reliability"]) == record["pairs"]
    assert (bundle / "reliability.png").stat().st_size > 1000 and not (bundle / "selective.png").exists()
    per_query = [line.split("\t") for line in (bundle / "per_query.tsv").read_text().splitlines()[1:]]
    ece_rows = [r for r in per_query if r[1] == "ECE"]
    assert len(ece_rows) == 43 and all(r[2] == "nan" for r in ece_rows)
    # independent: the pooled Brier and log loss from judgments.jsonl and the qrels file, by scikit-learn
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    qrels = {}
    for line in (data / "msmarco-passage/trec-dl-2019/qrels.dl19-passage.txt").read_text().splitlines():
        q, _, d, r = line.split()
        qrels[(q, d)] = int(r)
    rows = [json.loads(line) for line in (bundle / "judgments.jsonl").read_text().splitlines()]
    judged = [(1 / (1 + math.exp(-r["score"])), int(qrels[(r["query_id"], r["doc_id"])] >= 2)) for r in rows
              if (r["query_id"], r["doc_id"]) in qrels]
    assert len(judged) == record["pairs"] and len(rows) - len(judged) == record["unjudged_left_out"]
    p, y = [x for x, _ in judged], [x for _, x in judged]
    assert record["Brier"] == pytest.approx(sklearn_metrics.brier_score_loss(y, p), abs=1e-9)
    assert record["LogLoss"] == pytest.approx(sklearn_metrics.log_loss(y, p), abs=1e-9)


def test_rank1_prints_ece_and_brier(tmp_path: Path, dl19_texts: list[str], results: Path) -> None:
    from harness.tiny import build_causal_lm

    weights = build_causal_lm(tmp_path / "qwen", dl19_texts, "qwen2")
    outcome = run_tiny({"name": "tiny-rank1", "type": "rank1", "weights": {"path": str(weights)},
                        "backend": "transformers", "dtype": "float32", "max_new_tokens": 4, "context_size": 2048,
                        "batch_size": 16}, results, depth=1)
    header, rows, _ = outcome_rows(outcome)
    assert header[1] == "nDCG@10" and header[-2:] == ["ECE", "Brier"]
    record = json.loads((outcome.bundle / "calibration.json").read_text())
    assert record["family"] == "rank1" and record["pairs"] + record["unjudged_left_out"] <= 43
    assert rows[1][-2] == f"{record['ECE']:.4f}"


def test_a_family_without_a_probability_says_so(results: Path) -> None:
    from harness.pipeline import PipelineSpec, run_pipeline

    outcome = run_pipeline(PipelineSpec.single("minilm-l6"), "trec-dl-2019", depth=3, results=results)
    header, _, notes = outcome_rows(outcome)
    assert "ECE" not in header and "Brier" not in header  # no calibration row
    assert any("calibration (ECE, Brier): none for minilm-l6" in n and "similarity" in n for n in notes)
    assert not (outcome.bundle / "calibration.json").exists()


def test_compare_reports_both_sides(tmp_path: Path) -> None:
    from harness.calibration_report import compare_json, compare_plots, compare_section, compare_summary

    def side(name: str, auc: float | None) -> str:
        folder = tmp_path / name
        folder.mkdir()
        curve = [{"coverage": c / 4, "value": 1 - c / 8} for c in range(1, 5)]
        conf = None if auc is None else {"auroc_wrong": auc, "accuracy": 0.7, "selective_pairs": curve,
                                         "selective_queries": {"measure": "nDCG@10", "curve": curve, "area": 0.8,
                                                               "all": 0.75}}
        (folder / "calibration.json").write_text(json.dumps({"ECE": 0.1, "Brier": 0.2, "LogLoss": 0.6, "pairs": 10,
                                                             "relevance_threshold": 2, "probability": "p",
                                                             "confidence": conf}))
        return str(folder)

    bundles = {"trec-dl-2019": (side("a", None), side("b", 0.625))}
    section = "\n".join(compare_section("A", "B", bundles))
    assert "| trec-dl-2019 | A | A | 0.1000 | 0.2000 | 0.6000 | 10 | - | - | - |" in section
    assert "| trec-dl-2019 | B | B | 0.1000 | 0.2000 | 0.6000 | 10 | 0.625 | 0.7000 | 0.8000 (0.7500) |" in section
    assert compare_json(bundles)["trec-dl-2019"]["b"]["spread_auroc"] == 0.625
    assert "spread AUROC 0.625" in compare_summary(bundles)[0]
    assert compare_plots("A", "B", bundles, tmp_path) == [tmp_path / "selective.png"]
    assert compare_section("A", "B", {"t": (str(tmp_path), str(tmp_path))}) == []  # no calibration: no section
