"""Published tables as data: every table loads, first-stage cells reproduce, the rest say why not."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.registry import available_models
from harness.tables import available_tables, build_table, cells_of, check_aggregate, load_table
from harness.tasks import available_tasks

ROOT = Path(__file__).resolve().parents[1]
CARD_TABLES = {"dear-card-ranknet-benchmarks", "dear-card-ranknet-dl", "dear-card-ranknet-efficiency",
               "dear-card-ranknet-comparison", "dear-card-listwise-lora-dl", "dear-card-listwise-lora-noveleval",
               "dear-card-listwise-lora-vs-full", "dear-card-3b-lora-models", "dear-card-3b-lora-efficiency"}
EXPECTED = {"rank1-table1-bright", "rank1-table2-nevir", "rank1-table3-mfollowir-crosslingual",
            "rank1-table4-mfollowir", "rank1-table5-dl19", "rank1-table6-beir", "rank1-table7-awq", "dear-dl",
            "dear-beir", "dear-noveleval", "dear-efficiency", *CARD_TABLES}


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
    for cell in cells_of(spec):
        cond = cell.conditions
        if cond.get("unavailable") or cond.get("aggregate") or cond.get("measure") in ("disk GB", "parameters B"):
            continue  # no task: a size is read from the weights, an aggregate from its cells
        task = cond.get("task")
        assert task in tasks or task.startswith("beir/"), f"{name}: cell {cell.column.id} names task {task!r}"


def cells(results: Path, name: str) -> dict[tuple[str, str], dict]:
    data = json.loads((results / "tables" / f"{name}.json").read_text())
    return {(c["row"], c["column"]): c for c in data["cells"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m harness tables` for the tables whose first stages are on this machine, as a machine
    without a GPU sees it (on a GPU machine too: CUDA hidden, and the harness told to assume none)."""
    results = tmp_path_factory.mktemp("tables")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "HARNESS_ASSUME_GPU": "0"}
    out = subprocess.run([sys.executable, "-m", "harness", "tables", "rank1-table5-dl19", "dear-dl",
                          "rank1-table2-nevir", "rank1-table7-awq", "dear-card-ranknet-benchmarks",
                          "dear-card-listwise-lora-dl", "dear-card-3b-lora-efficiency", "--results", str(results)],
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
    assert "no GPU (rank1-7b needs one" in awq[("Rank1-7B", "biology")]["reason"]  # BRIGHT is a task now


def test_markdown_and_latex_are_written(built: Path) -> None:
    md = (built / "tables" / "rank1-table5-dl19.md").read_text()
    # Judged@10 91.9: the RepLLaMA run's tied scores in trec_eval's order (doc id descending); 92.3
    # was ir_measures' order (ascending) before evaluation followed trec_eval's (6be3d3b).
    assert "| RepLLaMA (first stage) | - / 91.9 | 73.8 / 73.8 (+0.0) OK |" in md
    assert "66.1 / not run [" in md and "### Cells" in md
    tex = (built / "tables" / "rank1-table5-dl19.tex").read_text()
    assert r"\begin{tabular}{lccc}" in tex and r"\bottomrule" in tex
    assert "RepLLaMA (first stage) & -/91.9 & 73.8/73.8 (+0.0) OK" in tex
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
    # The same bundle's other costs: per 100 documents (5 per query here), its inverse, and a GPU
    # peak that a CPU run does not have.
    spec["columns"] += [{"id": "t100", "label": "s/100", "measure": "seconds/100 docs", "scale": 1},
                        {"id": "dps", "label": "docs/s", "measure": "docs/s", "scale": 1},
                        {"id": "gpu", "label": "GB", "measure": "peak GPU GB", "scale": 1}]
    (tmp_path / "time.yaml").write_text(yaml.safe_dump(spec))
    got = {c.column.id: c for c in build_table(load_table(tmp_path / "time.yaml"), results=results,
                                                run_missing=False).cells}
    assert got["t"].reproduced == pytest.approx(cell.reproduced)  # the re-timed bundle, read again
    assert got["t100"].reproduced == pytest.approx(cell.reproduced * 100 / 5)
    assert got["dps"].reproduced == pytest.approx(100 / got["t100"].reproduced)
    if execution["stages"][0]["peak_gpu_mb"] is None:
        assert got["gpu"].status == "not run" and "no GPU peak" in got["gpu"].reason
    else:  # a GPU machine: torch's peak, in 10^9 bytes
        assert got["gpu"].reproduced == pytest.approx(execution["stages"][0]["peak_gpu_mb"] * 2**20 / 1e9)


# -- the model cards' own tables, aggregates, cost cells ------------------------------------------


def test_card_tables_are_listed() -> None:
    out = subprocess.run([sys.executable, "-m", "harness", "tables", "--list"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = {line.split(":", 1)[0] for line in out.stdout.splitlines()}
    assert listed >= CARD_TABLES


def test_card_beir_average_is_flagged_inconsistent(built: Path) -> None:
    """The RankNet card's 'BEIR (Avg) 45.2' is not the mean of its own eight BEIR figures (61.0)."""
    card = cells(built, "dear-card-ranknet-benchmarks")
    avg = card[("DeAR-P-8B-RankNet", "beir-avg")]
    assert avg["status"] == "INCONSISTENT" and avg["published"] == 45.2
    assert avg["aggregate"]["published_mean"] == pytest.approx(61.025)
    assert avg["aggregate"]["of"] == ["msmarco-dev", "nq", "hotpotqa", "fiqa", "arguana", "scifact", "trec-covid",
                                      "nfcorpus"]
    md = (built / "tables" / "dear-card-ranknet-benchmarks.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| DeAR-P-8B-RankNet |"))
    assert re.search(r"\| 45\.2 \(mean of its cells 61\.0\) / not run \[\d+\] INCONSISTENT \|$", row)
    assert "INCONSISTENT: the published 45.2 is not the mean of the published cells it averages (61.0" in md
    tex = (built / "tables" / "dear-card-ranknet-benchmarks.tex").read_text()
    assert re.search(r"45\.2 \(mean of its cells 61\.0\)/not run \[\d+\] INCONSISTENT \\\\$", tex, re.M)
    summary = json.loads((built / "tables" / "dear-card-ranknet-benchmarks.json").read_text())["summary"]
    assert summary["INCONSISTENT"] == 1


def test_a_consistent_aggregate_is_not_flagged(built: Path) -> None:
    dl = cells(built, "dear-dl")
    bm25 = dl[("BM25 (first stage)", "avg")]  # 49.27 = (50.58 + 47.96) / 2, and reproduced from both cells
    assert bm25["status"] == "OK" and bm25["reproduced"] == pytest.approx(49.27, abs=0.005)
    assert bm25["aggregate"]["consistent"] is True
    monot5 = dl[("MonoT5-3B", "avg")]  # 70.36 = (71.83 + 68.89) / 2; its cells need a GPU
    assert monot5["status"] == "not run" and monot5["aggregate"]["consistent"] is True
    assert "not reproduced: DL19, DL20" in monot5["reason"]
    assert dl[("DeAR-P-8B", "avg")]["aggregate"]["consistent"] is None  # nothing published to check
    lora = cells(built, "dear-card-listwise-lora-dl")
    assert {lora[(row, "avg")]["status"] for row in ("LoRA", "Full", "RankGPT-4")} == {"not run"}


def test_rank1_table6_averages_are_checked_against_their_cells() -> None:
    """The rank1 paper's Avg column: MonoT5's 44.7 is the mean of its nine cells; Rank1-32B's 41.7 is not (43.4)."""
    table = cells_of(load_table("rank1-table6-beir"))
    for cell in table:
        if cell.conditions.get("aggregate"):
            check_aggregate(cell, {c.column.id: c for c in table if c.row is cell.row})
    cells6 = {(c.row.label, c.column.id): c for c in table}
    assert cells6[("MonoT5-3B", "avg")].consistent is True
    rank1 = cells6[("Rank1-32B", "avg")]
    assert rank1.consistent is False and rank1.status == "INCONSISTENT"
    assert rank1.published_mean == pytest.approx(391.0 / 9)


def test_card_model_cells_say_why_they_did_not_run(built: Path) -> None:
    card = cells(built, "dear-card-ranknet-benchmarks")
    for column in ("dl19", "msmarco-dev", "nq"):
        cell = card[("DeAR-P-8B-RankNet", column)]
        assert cell["status"] == "not run" and cell["reproduced"] is None
        assert cell["reason"], column
    dl19 = card[("DeAR-P-8B-RankNet", "dl19")]["reason"]
    assert "no GPU (dear-8b-ranknet needs one" in dl19
    assert "weights not present (abdoelsayed/dear-8b-reranker-ranknet-v1" in dl19
    assert "bm25-flat" in card[("DeAR-P-8B-RankNet", "nq")]["reason"]


def test_cost_cells_name_what_they_measure(built: Path) -> None:
    eff = cells(built, "dear-card-3b-lora-efficiency")
    time = eff[("DeAR-3B-LoRA", "time")]
    assert time["conditions"]["measure"] == "seconds/100 docs" and time["published"] == 1.5
    assert "per 100 documents" in time["measured_as"] and time["status"] == "not run"
    size = eff[("DeAR-3B-LoRA", "disk")]
    assert "weights not present (abdoelsayed/dear-3b-reranker-ranknet-lora-v1" in size["reason"]
    assert "no GPU" not in size["reason"]  # a size needs no GPU
    md = (built / "tables" / "dear-card-3b-lora-efficiency.md").read_text()
    assert "- `seconds/100 docs`: wall time of the reranking stages, model loading excluded" in md
    assert "- `peak GPU GB`: the largest peak torch CUDA allocation" in md


def test_a_size_cell_reads_the_weights_on_disk(tmp_path: Path, tiny_cross_encoder: Path, results: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = tmp_path / "tiny-ce.yaml"
    model.write_text(yaml.safe_dump({"name": "tiny-ce", "type": "cross-encoder",
                                     "weights": {"path": str(tiny_cross_encoder)}}))
    spec = {"name": "size", "title": "t", "source": "test", "digits": 3, "defaults": {},
            "columns": [{"id": "mb", "label": "Size (MB)", "measure": "disk GB", "scale": 1000,
                         "tolerance": {"ok": 0.1, "okish": 0.25, "relative": True}},
                        {"id": "params", "label": "Params (M)", "measure": "parameters B"}],
            "rows": [{"label": "tiny", "model": str(model), "published": {"mb": 1.0}},
                     {"label": "absent", "model": "dear-3b-ranknet-lora", "published": {"mb": 40}}]}
    (tmp_path / "size.yaml").write_text(yaml.safe_dump(spec))
    built = build_table(load_table(tmp_path / "size.yaml"), results=results, run_missing=False)
    got = {(c.row.label, c.column.id): c for c in built.cells}
    on_disk = (tiny_cross_encoder / "model.safetensors").stat().st_size
    assert got[("tiny", "mb")].reproduced == pytest.approx(on_disk / 1e6)  # cost values take the cell's scale
    assert got[("tiny", "mb")].status in ("OK", "OKish", "FAIL")
    params = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder).num_parameters()
    assert got[("tiny", "params")].reproduced == pytest.approx(params / 1e9)
    assert got[("absent", "mb")].status == "not run"
    assert got[("absent", "mb")].reason.startswith("dear-3b-ranknet-lora: weights not present")


def test_an_aggregate_naming_an_unknown_column_is_a_config_error(tmp_path: Path) -> None:
    from harness.errors import HarnessError

    path = write_table(tmp_path, 50.0)
    raw = yaml.safe_load(path.read_text())
    raw["columns"].append({"id": "avg", "label": "Avg", "aggregate": ["dl19", "dl21"]})
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(HarnessError, match="averages column 'dl21'"):
        load_table(path)


def test_one_bundle_serves_every_measure_of_a_row(tmp_path: Path, results: Path) -> None:
    """nDCG@20 and MAP beside nDCG@10 (the RankNet card's DL table): the run made for the row's first
    cell computes them all, and a bundle made without one of them is evaluated again."""
    path = write_table(tmp_path, 50.58)
    raw = yaml.safe_load(path.read_text())
    raw["columns"] = [{"id": "ndcg10", "label": "nDCG@10"}, {"id": "ndcg20", "label": "nDCG@20", "measure": "nDCG@20"},
                      {"id": "p5", "label": "P@5", "measure": "P(rel=2)@5"}]
    raw["rows"][0]["published"] = {"ndcg10": 50.58}
    path.write_text(yaml.safe_dump(raw))
    built = build_table(load_table(path), results=results)
    assert [c.status for c in built.cells] == ["OK", "no reference", "no reference"]
    assert len({c.bundle for c in built.cells}) == 1
    raw["columns"].append({"id": "rr", "label": "RR@5", "measure": "RR(rel=2)@5"})  # not in that bundle
    path.write_text(yaml.safe_dump(raw))
    built = build_table(load_table(path), results=results)
    assert built.cells[-1].status == "no reference" and 0 < built.cells[-1].reproduced < 100


def test_a_table_config_with_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    from harness.errors import InputError
    from harness.tables import load_table

    path = tmp_path / "dup.yaml"
    path.write_text("title: first\ntitle: second\n")
    with pytest.raises(InputError, match=r"key 'title' appears twice in one mapping \(lines 1 and 2\)"):
        load_table(path)
