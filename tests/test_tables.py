"""Published tables as data: every table loads, first-stage cells reproduce, the rest say why not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.registry import available_models
from harness.tables import available_tables, build_table, load_table
from harness.tasks import available_tasks

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"rank1-table2-nevir", "rank1-table5-dl19", "rank1-table6-beir", "rank1-table7-awq", "dear-dl",
            "dear-beir", "dear-noveleval", "dear-efficiency"}


def test_every_published_table_is_data() -> None:
    assert set(available_tables()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_table_names_real_models_and_tasks(name: str) -> None:
    spec = load_table(name)
    models = set(available_models()) | {"none"}
    for row in spec.rows:
        stages = [s.model for s in row.pipeline.stages] if row.pipeline else [row.model] if row.model else []
        for model in stages:
            assert model in models, f"{name}: row {row.label!r} names unknown model {model!r}"
        assert row.published or row.model == "none", f"{name}: row {row.label!r} has no published value"
    tasks = set(available_tasks())
    for col in spec.columns:
        task = col.task or spec.defaults.task
        if not col.unavailable:
            assert task in tasks or task.startswith("beir/"), f"{name}: column {col.id} names task {task!r}"


def cells(results: Path, name: str) -> dict[tuple[str, str], dict]:
    data = json.loads((results / "tables" / f"{name}.json").read_text())
    return {(c["row"], c["column"]): c for c in data["cells"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m harness tables` for the tables whose first stages are on this machine (as CI sees it)."""
    results = tmp_path_factory.mktemp("tables")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HARNESS_ASSUME_GPU", None)
    out = subprocess.run([sys.executable, "-m", "harness", "tables", "rank1-table5-dl19", "dear-dl",
                          "rank1-table2-nevir", "rank1-table7-awq", "--results", str(results)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Summary:" in out.stdout
    return results


def test_first_stage_cells_reproduce(built: Path) -> None:
    t5 = cells(built, "rank1-table5-dl19")
    repllama = t5[("RepLLaMA (first stage)", "original")]
    assert repllama["status"] == "OK" and repllama["reproduced"] == pytest.approx(73.84, abs=0.005)
    assert t5[("RepLLaMA (first stage)", "judged")]["status"] == "no reference"
    dl = cells(built, "dear-dl")
    assert dl[("BM25 (first stage)", "dl19")]["reproduced"] == pytest.approx(50.58, abs=0.005)
    assert dl[("BM25 (first stage)", "dl20")]["reproduced"] == pytest.approx(47.96, abs=0.005)
    assert {dl[("BM25 (first stage)", c)]["status"] for c in ("dl19", "dl20")} == {"OK"}


def test_gpu_cells_say_why_they_did_not_run(built: Path) -> None:
    t5 = cells(built, "rank1-table5-dl19")
    rank1 = t5[("Rank1-7B", "original")]
    assert rank1["status"] == "not run" and rank1["reproduced"] is None and rank1["published"] == 66.1
    assert "no GPU (rank1-7b needs one" in rank1["reason"]
    assert "weights not present (jhu-clsp/rank1-7b" in rank1["reason"]
    assert "re-annotated" in t5[("Rank1-7B", "fixed")]["reason"]
    assert t5[("RankLlama 13B", "original")]["reason"].startswith("reference row")
    awq = cells(built, "rank1-table7-awq")
    assert "rank1-7b-awq" in awq[("↳ AWQ", "scifact")]["reason"] or awq[("↳ AWQ", "scifact")]["status"] == "not run"
    assert "BRIGHT" in awq[("Rank1-7B", "biology")]["reason"]


def test_markdown_and_latex_are_written(built: Path) -> None:
    md = (built / "tables" / "rank1-table5-dl19.md").read_text()
    assert "| RepLLaMA (first stage) | - / 92.3 | 73.8 / 73.8 (+0.0) OK |" in md
    assert "66.1 / not run [" in md and "### Cells" in md
    tex = (built / "tables" / "rank1-table5-dl19.tex").read_text()
    assert r"\begin{tabular}{lccc}" in tex and r"\bottomrule" in tex
    assert "RepLLaMA (first stage) & -/92.3 & 73.8/73.8 (+0.0) OK" in tex
    nevir = cells(built, "rank1-table2-nevir")
    first = nevir[("bm25s pair order (first stage)", "acc")]
    assert first["status"] == "no reference" and 0 <= first["reproduced"] < 10


def write_table(tmp_path: Path, published: float, tolerance: dict | None = None) -> Path:
    spec = {"name": "t", "title": "t", "source": "test", "digits": 2,
            "defaults": {"task": "trec-dl-2019", "first_stage": "bm25", "depth": 100, "measure": "nDCG@10",
                         "scale": 100, "tolerance": tolerance or {"ok": 0.05, "okish": 0.5}},
            "columns": [{"id": "dl19", "label": "DL19"}],
            "rows": [{"label": "BM25", "model": "none", "published": {"dl19": published}}]}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(("published", "status"), [(50.58, "OK"), (50.90, "OKish"), (60.0, "FAIL")])
def test_status_is_decided_by_the_tolerance(tmp_path: Path, results: Path, published: float, status: str) -> None:
    built = build_table(load_table(write_table(tmp_path, published)), results=results)
    (cell,) = built.cells
    assert cell.status == status
    assert cell.delta == pytest.approx(50.58 - published, abs=0.006)


def test_no_run_reads_bundles_only(tmp_path: Path, results: Path) -> None:
    built = build_table(load_table(write_table(tmp_path, 50.58)), results=results, run_missing=False)
    assert built.cells[0].status == "not run" and "no result bundle yet" in built.cells[0].reason
    assert not (results / "trec-dl-2019").exists()


def test_bad_table_config_names_the_key(tmp_path: Path) -> None:
    from harness.errors import HarnessError

    path = write_table(tmp_path, 50.0)
    raw = yaml.safe_load(path.read_text())
    raw["rows"][0]["published"] = {"dl20": 47.96}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(HarnessError, match="names column 'dl20'"):
        load_table(path)


def test_a_time_is_taken_from_a_fully_computed_run(tmp_path: Path, tiny_cross_encoder: Path, results: Path) -> None:
    """A bundle whose outputs came from the cache has no usable time; `tables` re-times it with a fresh cache."""
    from harness.pipeline import PipelineSpec, run_pipeline

    model = tmp_path / "tiny-ce.yaml"
    model.write_text(yaml.safe_dump({"name": "tiny-ce", "type": "cross-encoder",
                                     "weights": {"path": str(tiny_cross_encoder)}}))
    for _ in range(2):  # the second run reads every output from the cache
        run_pipeline(PipelineSpec.single(str(model)), "trec-dl-2019", first_stage="bm25", depth=5, results=results)
    spec = {"name": "time", "title": "t", "source": "test", "digits": 3,
            "defaults": {"task": "trec-dl-2019", "first_stage": "bm25", "depth": 5},
            "columns": [{"id": "t", "label": "s/query", "measure": "seconds/query", "scale": 1,
                         "tolerance": {"ok": 0.25, "okish": 1.0, "relative": True}}],
            "rows": [{"label": "tiny", "model": str(model), "published": {"t": 2.2}}]}
    (tmp_path / "time.yaml").write_text(yaml.safe_dump(spec))
    table = load_table(tmp_path / "time.yaml")
    (cell,) = build_table(table, results=results, run_missing=False).cells
    assert cell.status == "not run" and "from the cache" in cell.reason
    (cell,) = build_table(table, results=results).cells
    execution = json.loads((Path(cell.bundle) / "execution.json").read_text())
    assert execution["stages"][0]["computed"] == execution["stages"][0]["items"] == 215
    assert cell.reproduced is not None and 0 < cell.reproduced < 2.2 and cell.status in ("OKish", "FAIL")
