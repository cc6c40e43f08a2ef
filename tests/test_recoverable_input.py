"""Recoverable input: a query without text, a byte-order mark, CRLF: accepted, kept, and said."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.pipeline import PipelineSpec, StageSpec, run_pipeline
from harness.registry import parse_model_config


def test_query_without_text_is_kept_and_counted(tmp_path: Path, tiny_cross_encoder: Path, results: Path) -> None:
    lines = [f"0 Q0 0-{i} {i + 1} {20 - i} bm25" for i in range(5)]
    lines += [f"1 Q0 1-{i} {i + 1} {20 - i} bm25" for i in range(5)]
    lines += ["zzz Q0 0-7 1 3.0 bm25", "zzz Q0 0-8 2 2.0 bm25"]
    run_file = tmp_path / "run.trec"
    run_file.write_text("\n".join(lines) + "\n")
    config = parse_model_config({"name": "tiny", "type": "cross-encoder",
                                 "weights": {"path": str(tiny_cross_encoder)}}, "test")
    outcome = run_pipeline(PipelineSpec(name="tiny", stages=[StageSpec(model="tiny")]), "novel-eval-2306",
                           first_stage=str(run_file), depth=5, results=results, configs=[config])
    (stage,) = outcome.stages
    assert stage.stats.fallbacks["query-without-text"] == 1
    assert stage.stats.items == 10  # the two known queries' five passages each
    assert [d.doc_id for d in outcome.final_run["zzz"]] == ["0-7", "0-8"]  # untouched
    assert outcome.bundle is not None
    assert '"tiny:query-without-text": 1' in (outcome.bundle / "metrics.json").read_text()


def test_byte_order_mark_and_crlf_are_said_in_the_bundle(results: Path) -> None:
    import json

    root = Path(__file__).parent / "bad_inputs"
    for name, said in (("run_crlf.trec", "CRLF line ends"), ("run_bom.trec", "byte-order mark")):
        outcome = run_pipeline(PipelineSpec(name="none"), "novel-eval-2306", first_stage=str(root / name),
                               results=results, allow_unmatched=True)  # DL19 ids: nothing judged here
        assert outcome.bundle is not None
        notes = json.loads((outcome.bundle / "metrics.json").read_text())["provenance"]["first_stage"]["notes"]
        assert any(said in n for n in notes), notes


def test_topics_and_qrels_notes_reach_the_bundle(tmp_path: Path, data: Path, results: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror whose NevIR queries have CRLF line ends and whose qrels start with a byte-order mark
    (neither file pins a sha256): read as they are, and said in metrics.json as first-stage notes are."""
    import json

    mirror = tmp_path / "mirror" / "nevir"
    shutil.copytree(data / "nevir", mirror)
    queries = mirror / "queries.jsonl"
    queries.write_bytes(queries.read_bytes().replace(b"\n", b"\r\n"))
    qrels = mirror / "qrels" / "test.tsv"
    qrels.write_bytes(b"\xef\xbb\xbf" + qrels.read_bytes())
    monkeypatch.setenv("HARNESS_DATA_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    outcome = run_pipeline(PipelineSpec(name="none"), "nevir", results=results)
    assert outcome.bundle is not None
    notes = json.loads((outcome.bundle / "metrics.json").read_text())["provenance"]["data_notes"]
    assert any("queries.jsonl" in n and "CRLF" in n for n in notes), notes
    assert any("test.tsv" in n and "byte-order mark" in n for n in notes), notes
    # the same values as the clean mirror's: nothing was lost to the odd bytes
    monkeypatch.delenv("HARNESS_DATA_MIRROR")
    clean = run_pipeline(PipelineSpec(name="none"), "nevir", results=tmp_path / "clean")
    assert clean.first_eval.aggregate == outcome.first_eval.aggregate
