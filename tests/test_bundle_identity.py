"""A bundle folder holds one thing: its identity (what decides its content) is recorded, a folder of
other content is never overwritten, and `compare`/`tables` never read a bundle of other content.

The failure this guards against: a run file called `bm25`, or an edited copy of a registered model
config, wrote into the official bundle's folder, and `tables` reported its value as the published
cell's reproduction (seen: "50.58 / 73.84 FAIL").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import HarnessError
from harness.pipeline import PipelineSpec, find_bundle, run_pipeline
from harness.tables import build_table, load_table

ROOT = Path(__file__).resolve().parent.parent
DL19 = "trec-dl-2019"
NONE = PipelineSpec.single("none")


def tiny_ce(folder: Path, weights: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny-ce.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny-ce", "type": "cross-encoder", "weights": {"path": str(weights)},
                                    "max_length": 64, "batch_size": 16}))
    return path


def one_cell_table(tmp_path: Path, model: str, first_stage: str = "bm25", depth: int = 100) -> Path:
    spec = {"name": "t", "title": "t", "source": "test",
            "defaults": {"task": DL19, "first_stage": first_stage, "depth": depth, "scale": 100,
                         "tolerance": {"ok": 0.05, "okish": 0.5}},
            "columns": [{"id": "dl19", "label": "DL19", "measure": "nDCG@10"}],
            "rows": [{"label": "row", "model": model, "published": {"dl19": 50.58}}]}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_run_file_called_like_a_named_stage_leaves_the_official_bundle(tmp_path: Path, data: Path,
                                                                          results: Path) -> None:
    official = run_pipeline(NONE, DL19, results=results)
    assert official.bundle is not None and official.bundle.parent.name == "bm25.top100"
    before = (official.bundle / "metrics.json").read_bytes()
    # RepLLaMA's top 100, saved elsewhere under the name of the task's BM25 first stage
    impostor = tmp_path / "elsewhere" / "bm25"
    impostor.parent.mkdir()
    shutil.copy(data / "msmarco-passage/trec-dl-2019/repllama.top100.json", impostor)
    other = run_pipeline(NONE, DL19, first_stage=str(impostor), results=results)
    assert other.bundle is not None and other.bundle != official.bundle
    assert other.first_stage.name.startswith("bm25-") and len(other.first_stage.name) == len("bm25-") + 8
    assert other.bundle.parent.name == f"{other.first_stage.name}.top100"
    assert (official.bundle / "metrics.json").read_bytes() == before
    assert find_bundle(results, DL19, str(impostor), 100, NONE) == other.bundle
    assert find_bundle(results, DL19, None, 100, NONE) == official.bundle
    # the published table reads the official bundle, and reproduces BM25's 50.58
    cells = {(c.row.label, c.column.id): c for c in build_table(load_table("dear-dl"), results=results,
                                                                   run_missing=False).cells}
    bm25 = cells[("BM25 (first stage)", "dl19")]
    assert bm25.reproduced == pytest.approx(50.58, abs=0.005) and bm25.status == "OK"
    assert bm25.bundle == str(official.bundle)
    metrics = json.loads(before)
    assert metrics["identity"]["first_stage"]["name"] == "bm25" and metrics["identity"]["stages"] == []


def test_an_edited_copy_of_a_registered_config_gets_its_own_folder(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    raw = yaml.safe_load((ROOT / "configs/models/minilm-l6.yaml").read_text())
    names = {}
    for label, change in {"same": {}, "cosmetic": {"batch_size": 4, "description": "a copy"},
                          "short": {"max_length": 64}, "shorter": {"max_length": 32}}.items():
        path = tmp_path / label / "minilm-l6.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump({**raw, **change}))
        names[label] = PipelineSpec.single(str(path)).name
    # what cannot change an output keeps the registered name (and its published bundles' paths)
    assert names["same"] == names["cosmetic"] == "minilm-l6"
    assert names["short"].startswith("minilm-l6-") and names["shorter"].startswith("minilm-l6-")
    assert len({names["short"], names["shorter"]}) == 2
    assert PipelineSpec.single("minilm-l6").name == "minilm-l6"
    assert PipelineSpec.single(str(ROOT / "configs/models/minilm-l6.yaml")).name == "minilm-l6"
    assert PipelineSpec.single("minilm-l6", weights=str(tiny_cross_encoder)).name.startswith("minilm-l6-")


def test_an_edited_registered_config_runs_beside_the_official_bundle(tmp_path: Path, results: Path) -> None:
    raw = yaml.safe_load((ROOT / "configs/models/minilm-l6.yaml").read_text())
    edited = tmp_path / "minilm-l6.yaml"
    edited.write_text(yaml.safe_dump({**raw, "max_length": 32}))
    official = run_pipeline(PipelineSpec.single("minilm-l6"), DL19, depth=1, results=results)
    before = (official.bundle / "metrics.json").read_bytes()  # type: ignore[operator]
    copy = run_pipeline(PipelineSpec.single(str(edited)), DL19, depth=1, results=results)
    assert copy.bundle is not None and copy.bundle.parent == official.bundle.parent  # type: ignore[union-attr]
    assert copy.bundle.name.startswith("minilm-l6-") and copy.bundle != official.bundle
    assert (official.bundle / "metrics.json").read_bytes() == before  # type: ignore[operator]


def test_a_rerun_of_the_same_job_rewrites_its_bundle(tmp_path: Path, tiny_cross_encoder: Path,
                                                     results: Path) -> None:
    config = tiny_ce(tmp_path / "a", tiny_cross_encoder)
    first = run_pipeline(PipelineSpec.single(str(config)), DL19, depth=3, results=results)
    # the same config in another folder, measured with another measure: the same job
    again = tiny_ce(tmp_path / "b", tiny_cross_encoder)
    second = run_pipeline(PipelineSpec.single(str(again)), DL19, depth=3, results=results,
                          measures=["nDCG@10", "P(rel=2)@10"])
    assert second.bundle == first.bundle and first.bundle is not None
    metrics = json.loads((first.bundle / "metrics.json").read_text())
    assert set(metrics["reranked"]) == {"nDCG@10", "P(rel=2)@10"}
    assert metrics["identity"]["stages"][0]["model"]["weights"].startswith("sha256:")


def test_other_weights_under_the_same_config_are_refused(tmp_path: Path, tiny_cross_encoder: Path,
                                                         results: Path) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(tiny_cross_encoder, weights)
    config = tiny_ce(tmp_path, weights)
    pipeline = PipelineSpec.single(str(config))
    made = run_pipeline(pipeline, DL19, depth=3, results=results)
    assert made.bundle is not None
    before = (made.bundle / "metrics.json").read_bytes()
    # Other content in the weights folder; as it cannot even be loaded, only a refusal that comes
    # before any model is built gives the message below.
    (weights / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(HarnessError) as err:
        run_pipeline(pipeline, DL19, depth=3, results=results)
    message = str(err.value)
    assert str(made.bundle) in message and "weights" in message and "--results" in message
    assert "delete" in message and "\n" not in message
    assert (made.bundle / "metrics.json").read_bytes() == before
    # compare and tables do not read it as this config's result
    with pytest.raises(HarnessError, match="weights"):
        find_bundle(results, DL19, "bm25", 3, pipeline)
    (cell,) = build_table(load_table(one_cell_table(tmp_path, str(config), depth=3)), results=results,
                          run_missing=True).cells
    assert cell.reproduced is None and "stale" in cell.reason and "weights" in cell.reason


def test_a_bundle_without_identity_is_neither_overwritten_nor_read(tmp_path: Path, results: Path) -> None:
    out = run_pipeline(NONE, DL19, depth=5, results=results)
    assert out.bundle is not None
    path = out.bundle / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["identity"]  # as the harness wrote bundles before they had one
    path.write_text(json.dumps(metrics))
    with pytest.raises(HarnessError, match="records no identity") as err:
        run_pipeline(NONE, DL19, depth=5, results=results)
    assert str(out.bundle) in str(err.value) and "--results" in str(err.value)
    with pytest.raises(HarnessError, match="records no identity"):
        find_bundle(results, DL19, None, 5, NONE)
    (cell,) = build_table(load_table(one_cell_table(tmp_path, "none", depth=5)), results=results).cells
    assert cell.reproduced is None and "stale" in cell.reason


def test_a_results_path_that_is_a_file_stops_before_any_work(tmp_path: Path) -> None:
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder\n")
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", "minilm-l6", "--task", DL19,
                          "--results", str(a_file), "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "400"})  # one line: no wrapping of the path
    said = out.stdout + out.stderr
    assert out.returncode == 2, said
    assert "Traceback" not in said and "results.txt" in said and "expected a folder" in said
    # tables writes its files there even when it evaluates nothing
    out = subprocess.run([sys.executable, "-m", "harness", "tables", "dear-dl", "--no-run", "--results", str(a_file)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    said = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in said and "expected a folder" in said, said
    # under a file: it cannot be created (tests run as root, so permissions cannot make it unwritable)
    for bad in (a_file, a_file / "sub"):
        with pytest.raises(HarnessError) as err:
            run_pipeline(PipelineSpec.single("minilm-l6"), DL19, results=bad)
        message = str(err.value)
        assert str(bad) in message and "expected a folder" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]
