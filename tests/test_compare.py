"""`compare`, and significance marks in eval/run output, on real runs and real (tiny) models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.bundle import read_bundle
from harness.compare import compare, resolve_side, write_report
from harness.pipeline import PipelineSpec, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "harness", *argv, "--no-progress"], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_bm25_vs_repllama_is_a_large_significant_difference(results: Path) -> None:
    out = cli("compare", "none@bm25", "none@repllama", "--task", "trec-dl-2019", "--results", str(results))
    folder = results / "compare" / "none@repllama__vs__none@bm25"
    assert "significant" in out.stdout and str(folder / "report.md") in out.stdout.replace("\n", "")
    data = json.loads((folder / "compare.json").read_text())
    (task,) = data["tasks"]
    assert task["n"] == 43
    assert task["mean_a"] == pytest.approx(0.5058, abs=5e-5)  # the official BM25 nDCG@10
    assert task["mean_b"] == pytest.approx(0.7384, abs=5e-5)  # the RepLLaMA run file's
    assert task["delta"] == pytest.approx(0.2326, abs=1e-4)
    assert task["p_t"] < 1e-6 and task["p_t_holm"] < 1e-6
    assert task["p_randomization"] < 0.001
    assert task["p_tost"] > 0.99 and not data["equivalent"]
    assert 0 < task["kendall_tau_mean"] < 0.5  # two very different orders
    assert task["flips"] is None  # first stages make no true/false decision
    for png in ("delta.png", "scatter.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (folder / "report.md").read_text()
    assert "| trec-dl-2019 | nDCG@10 | 43 | 0.5058 | 0.7384 | +0.2326" in report
    assert "![delta](delta.png)" in report


def test_a_run_compared_with_itself(results: Path) -> None:
    bundle = run_pipeline(PipelineSpec.single("none"), "trec-dl-2019", first_stage="bm25", results=results).bundle
    assert bundle is not None
    side = resolve_side(str(bundle), [], first_stage=None, depth=100, results=results, run_missing=False)
    c = compare(side, side, labels=("bm25", "bm25"), margin=0.01)
    (row,) = c.tasks
    assert all(x == y for x, y in zip(row.a, row.b, strict=True))
    assert row.test.delta == 0.0 and row.test.p_t == 1.0 and row.test.p_randomization == 1.0
    assert row.p_t_holm == 1.0
    assert row.test.p_tost == 0.0 and c.equivalent()
    assert row.tau_mean == 1.0 and row.untied_queries == 43
    write_report(c, results / "self")
    assert "Significant differences (t-test, Holm): none" in (results / "self" / "report.md").read_text()


def test_holm_across_tasks(results: Path) -> None:
    sides = [resolve_side(s, ["trec-dl-2019", "trec-dl-2020"], first_stage="bm25", depth=20, results=results,
                          run_missing=True) for s in ("none", "none")]
    c = compare(sides[0], sides[1], labels=("a", "b"))
    assert [r.task for r in c.tasks] == ["trec-dl-2019", "trec-dl-2020"]
    assert c.pooled is not None and c.pooled.n == 43 + 54


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_t5

    return build_t5(tmp_path_factory.mktemp("t5"), dl19_texts)


def test_quantized_tiny_model_against_its_full_precision_twin(tmp_path: Path, tiny_t5: Path, results: Path) -> None:
    """End to end on CPU: monoT5 (tiny, random weights) against the same checkpoint quantized to
    int8 by optimum-quanto while loading; 430 DL19 query-passage pairs each."""
    full = {"name": "tiny-t5", "type": "monot5", "weights": {"path": str(tiny_t5)}, "batch_size": 16}
    quant = {**full, "name": "tiny-t5-int8", "quantization": {"method": "quanto", "weights": "int8"}}
    for cfg in (full, quant):
        (tmp_path / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
    out = cli("compare", str(tmp_path / "tiny-t5.yaml"), str(tmp_path / "tiny-t5-int8.yaml"), "--task",
              "trec-dl-2019", "--first-stage", "bm25", "--depth", "10", "--results", str(results))
    folder = results / "compare" / "tiny-t5-int8__vs__tiny-t5"
    data = json.loads((folder / "compare.json").read_text())
    (task,) = data["tasks"]
    assert task["n"] == 43 and task["decisions"] == 430
    assert task["flips"] is not None and 0 <= task["flips"] <= 430
    assert "decision flips" in out.stdout
    # Real quantization: the scores move, but the order barely does.
    a_bundle, b_bundle = (read_bundle(Path(p)) for p in data["bundles"]["trec-dl-2019"])
    sa = {(j["query_id"], j["doc_id"]): j["score"] for j in a_bundle.judgments()}
    sb = {(j["query_id"], j["doc_id"]): j["score"] for j in b_bundle.judgments()}
    assert sa.keys() == sb.keys() and len(sa) == 430
    assert max(abs(sa[k] - sb[k]) for k in sa) > 1e-6
    assert task["kendall_tau_mean"] > 0.5
    for cost in task["cost"]:
        assert cost["computed"] == 430 and cost["seconds_per_100"] > 0 and cost["peak_rss_mb"] > 0
    report = (folder / "report.md").read_text()
    assert "| A | trec-dl-2019 | 430 | 430 |" in report and "| B | trec-dl-2019 | 430 | 430 |" in report
    assert b_bundle.metrics.provenance.models[0]["quantization"] == {"method": "quanto", "weights": "int8"}


def test_quanto_replaces_the_linear_layers(tiny_t5: Path) -> None:
    from optimum.quanto import QLinear

    from harness.registry import build_reranker, parse_model_config

    config = parse_model_config({"name": "q", "type": "monot5", "weights": {"path": str(tiny_t5)},
                                 "quantization": {"method": "quanto", "weights": "int8"}}, "test")
    model = build_reranker(config).model
    layers = [m for m in model.modules() if isinstance(m, QLinear)]
    assert layers and all(str(m.weight_qtype.name) == "qint8" for m in layers)


def test_eval_marks_significance_against_first_stage_and_baseline(tmp_path: Path, tiny_cross_encoder: Path,
                                                                   results: Path) -> None:
    base = {"name": "ce-a", "type": "cross-encoder", "weights": {"path": str(tiny_cross_encoder)}, "batch_size": 32}
    other = {**base, "name": "ce-b", "query_template": "question: {query}"}
    for cfg in (base, other):
        (tmp_path / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
    common = ["--task", "trec-dl-2019", "--depth", "10", "--results", str(results)]
    cli("eval", "--model", str(tmp_path / "ce-a.yaml"), *common)
    out = cli("eval", "--model", str(tmp_path / "ce-b.yaml"), "--baseline", "ce-a", *common)
    # 4 measures against the first stage and ce-a, and ECE and Brier (added for a family with a
    # probability of relevance) against ce-a alone: the first stage has none
    assert "Holm over 10 tests" in out.stdout and "▲a/▼a ce-a" in out.stdout
    metrics = json.loads((results / "trec-dl-2019/bm25.top10/ce-b/metrics.json").read_text())
    sig = metrics["significance"]
    assert sig["tests"] == 10 and set(sig["against"]) == {"first stage", "ce-a"}
    assert set(sig["against"]["ce-a"]) - set(sig["against"]["first stage"]) == {"ECE", "Brier"}
    for ref in sig["against"].values():
        for m, t in ref.items():
            assert t["n"] == 43 and t["p_holm"] >= t["p"]
            assert t["significant"] == (t["p_holm"] < 0.05)
            assert m in metrics["reranked"]
    # The delta is the data's: reranked minus the reference, per measure.
    ce_a = json.loads((results / "trec-dl-2019/bm25.top10/ce-a/metrics.json").read_text())
    got = sig["against"]["ce-a"]["nDCG@10"]["delta"]
    assert got == pytest.approx(metrics["reranked"]["nDCG@10"] - ce_a["reranked"]["nDCG@10"], abs=1e-12)


def test_missing_baseline_stops_before_compute(results: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", "minilm-l6", "--task", "trec-dl-2019",
                          "--baseline", "never-ran", "--results", str(results), "--no-progress"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "baseline 'never-ran' has no result bundle" in out.stdout + out.stderr
    assert not (results / "cache.sqlite").exists()


def test_run_config_runs_baselines_first(tmp_path: Path, tiny_cross_encoder: Path, results: Path) -> None:
    (tmp_path / "ce-a.yaml").write_text(yaml.safe_dump(
        {"name": "ce-a", "type": "cross-encoder", "weights": {"path": str(tiny_cross_encoder)}}))
    spec = {"name": "t", "tasks": ["trec-dl-2019"], "models": [str(tmp_path / "ce-a.yaml"), "none"],
            "baselines": ["none"], "depth": 5}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    cli("run", str(tmp_path / "run.yaml"), "--results", str(results))
    # ce-a is listed first but tested against none's bundle: none ran before it.
    metrics = json.loads((results / "trec-dl-2019/bm25.top5/ce-a/metrics.json").read_text())
    assert "none" in metrics["significance"]["against"]
    bad = {**spec, "baselines": ["nope"]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    out2 = subprocess.run([sys.executable, "-m", "harness", "run", str(tmp_path / "bad.yaml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert out2.returncode == 2 and "baselines ['nope'] are not among the models" in out2.stdout + out2.stderr


def test_marks_survive_a_round_trip_through_metrics_json() -> None:
    from harness.significance import FIRST_STAGE, legend, marks, significance

    base = {"m": {str(q): float(q % 3) for q in range(30)}}
    better = {"m": {str(q): float(q % 3) + 1.0 + 0.01 * q for q in range(30)}}
    block = significance(better, {FIRST_STAGE: base, "ce-a": base}, ["m"])
    read_back = json.loads(json.dumps(block, sort_keys=True))  # bundles write sorted keys
    assert marks(block, "m") == marks(read_back, "m") == "▲▲a"
    assert legend(read_back).endswith("▲/▼ the first stage, ▲a/▼a ce-a")


def test_partly_cached_cost_has_no_rate() -> None:
    from harness.compare import SideCost

    assert SideCost(100, 100, 5.0, None, None).per_100 == 5.0
    assert SideCost(100, 40, 5.0, None, None).per_100 is None  # the 60 cached ones would hide cost


def test_a_bundle_made_from_a_run_file_is_found_again(results: Path) -> None:
    from harness.compare import find_or_run

    run_file = ROOT / "tests/bad_inputs/run_crlf.trec"
    made = run_pipeline(PipelineSpec.single("none"), "novel-eval-2306", first_stage=str(run_file), results=results,
                        allow_unmatched=True)  # its ids are DL19's: nothing is judged on this task
    found = find_or_run("none", "novel-eval-2306", str(run_file), 100, results, run_missing=False)
    assert found.path == made.bundle
