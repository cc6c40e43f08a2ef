"""`type: ensemble` on tiny BERT cross-encoders and real DL19 candidates: an ensemble of a model with
itself is the model, members run through the cache as themselves, the combination by hand."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.errors import ConfigError
from harness.pipeline import PipelineSpec, run_pipeline
from harness.registry import load_model_config
from harness.rerankers.ensemble import EnsembleRecord, normalized

DEPTH = 8


def config_file(folder: Path, name: str, **fields: Any) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **fields}))
    return str(path)


def member(folder: Path, name: str, weights: Path) -> str:
    return config_file(folder, name, type="cross-encoder", weights={"path": str(weights)}, max_length=96,
                       batch_size=16)


def evaluate(model: str, results: Path) -> Any:
    return run_pipeline(PipelineSpec.single(model), "trec-dl-2019", depth=DEPTH, results=results)


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_bert_cross_encoder

    return build_bert_cross_encoder(tmp_path_factory.mktemp("tiny-ce-2"), dl19_texts, seed=1)


def ranking(outcome: Any) -> dict[str, list[str]]:
    return {q: [d.doc_id for d in docs] for q, docs in outcome.final_run.items()}


def test_an_ensemble_of_a_model_with_itself_is_the_model(tmp_path: Path, tiny_cross_encoder: Path,
                                                         results: Path) -> None:
    single = member(tmp_path, "ce", tiny_cross_encoder)
    alone = evaluate(single, results)
    both = evaluate(config_file(tmp_path, "ce-twice", type="ensemble", members=[single, single]), results)
    assert ranking(both) == ranking(alone)
    assert both.final_eval.aggregate == pytest.approx(alone.final_eval.aggregate)  # ECE and Brier included
    assert {"ECE", "Brier"} <= set(both.final_eval.aggregate)
    stage = both.stages[0]
    assert stage.stats.computed == 0 and stage.stats.from_cache == 43 * DEPTH  # every member output was cached
    for j in stage.judgments:
        assert isinstance(j.record, EnsembleRecord) and j.record.spread == 0.0
    calibration = json.loads((both.bundle / "calibration.json").read_text())
    assert calibration["confidence"]["auroc_wrong"] is None or calibration["confidence"]["pairs"] > 0
    raw = evaluate(config_file(tmp_path, "ce-raw", type="ensemble", members=[single, single], normalize="none"),
                   results)
    scores = {(j.query_id, j.doc_id): j.score for j in alone.stages[0].judgments}
    assert {(j.query_id, j.doc_id): j.score for j in raw.stages[0].judgments} == scores  # exactly the model's


def test_combination_by_hand(tmp_path: Path, tiny_cross_encoder: Path, second_model: Path, results: Path) -> None:
    a, b = member(tmp_path, "a", tiny_cross_encoder), member(tmp_path, "b", second_model)
    out_a, out_b = evaluate(a, results), evaluate(b, results)
    both = evaluate(config_file(tmp_path, "ab", type="ensemble", members=[a, b]), results)
    assert both.stages[0].stats.computed == 0  # the members were evaluated alone before: nothing new

    def per_query(outcome: Any) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for j in outcome.stages[0].judgments:
            out.setdefault(j.query_id, {})[j.doc_id] = j.score
        return out

    sa, sb = per_query(out_a), per_query(out_b)
    for j in both.stages[0].judgments:
        docs = list(sa[j.query_id])
        za = dict(zip(docs, normalized([sa[j.query_id][d] for d in docs], "zscore"), strict=True))
        zb = dict(zip(docs, normalized([sb[j.query_id][d] for d in docs], "zscore"), strict=True))
        assert j.score == pytest.approx((za[j.doc_id] + zb[j.doc_id]) / 2)
        assert isinstance(j.record, EnsembleRecord)
        assert j.record.spread == pytest.approx(statistics.pstdev([za[j.doc_id], zb[j.doc_id]]))
        pa, pb = (1 / (1 + pow(2.718281828459045, -s[j.query_id][j.doc_id])) for s in (sa, sb))
        assert j.record.probability == pytest.approx((pa + pb) / 2, abs=1e-6)
    assert (both.bundle / "selective.png").is_file()
    assert normalized([1.0, 3.0], "minmax") == [0.0, 1.0] and normalized([2.0, 2.0], "zscore") == [0.0, 0.0]


def test_members_are_checked_when_it_runs(tmp_path: Path, tiny_cross_encoder: Path, results: Path) -> None:
    missing = config_file(tmp_path, "gone", type="ensemble", members=[member(tmp_path, "m", tiny_cross_encoder),
                                                                       str(tmp_path / "results/train/not-trained")])
    load_model_config(missing)  # a config names members that may be trained later
    with pytest.raises(ConfigError, match=r"member 2 .*not-trained"):
        evaluate(missing, results)
    trained = config_file(tmp_path, "trained", type="multi-cls", weights={"path": str(tiny_cross_encoder)},
                          trained_on=["trec-dl-2019"])
    with pytest.raises(ConfigError, match="trained on trec-dl-2019"):
        evaluate(config_file(tmp_path, "uses-trained", type="ensemble", members=[trained]), results)
    assert load_model_config("minilm-ce-ensemble").members[0] == "results/train/minilm-ce-k1-s1"


def test_an_ensemble_of_members_without_a_probability_has_none(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    from harness.calibration import probability_map

    with_one = config_file(tmp_path, "with", type="ensemble", members=[member(tmp_path, "m", tiny_cross_encoder)] * 2)
    assert "mean of the members" in probability_map(load_model_config(with_one)).says
    without = config_file(tmp_path, "without", type="ensemble", members=["minilm-l6", member(tmp_path, "m2",
                                                                                             tiny_cross_encoder)])
    stated = probability_map(load_model_config(without))
    assert stated.of is None and "minilm-l6" in stated.says
