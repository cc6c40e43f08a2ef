"""Configs are closed schemas; every shipped config validates; offline data gets a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError, DataNotFoundError, InputError
from harness.registry import available_models, load_model_config
from harness.runspec import load_run_spec
from harness.tasks import available_tasks, load_task

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", available_models())
def test_every_model_config_validates(name: str) -> None:
    config = load_model_config(name)
    assert config.name == name


@pytest.mark.parametrize("name", available_tasks())
def test_every_task_validates(name: str) -> None:
    task = load_task(name)
    assert task.default_first_stage[0] in task.first_stages


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "runs").glob("*.yaml")))
def test_every_run_config_validates(path: Path) -> None:
    spec = load_run_spec(path)
    trained = spec.trained_folders()  # made by the run's `train:` entries: absent until it runs
    for pipeline in spec.pipelines():
        for stage in pipeline.stages:
            if Path(stage.model).resolve() not in trained:
                load_model_config(stage.model)
    for task in spec.tasks:
        load_task(task)


def write_cfg(tmp_path: Path, cfg: dict) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, {"name": "x", "type": "bi-encoder", "weights": {"path": "."}, "batchsize": 3})
    with pytest.raises(InputError) as err:
        load_model_config(str(path))
    assert err.value.key == "batchsize" and "unknown key" in str(err.value)


def test_unknown_type_suggests(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, {"name": "x", "type": "bi-encodr", "weights": {"path": "."}})
    with pytest.raises(InputError, match="Did you mean bi-encoder"):
        load_model_config(str(path))


def test_wrong_type_names_key(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, {"name": "x", "type": "cross-encoder", "weights": {"path": "."}, "max_length": "long"})
    with pytest.raises(InputError) as err:
        load_model_config(str(path))
    assert err.value.key == "max_length"


def test_unknown_model_and_task_suggest() -> None:
    with pytest.raises(ConfigError, match="Did you mean minilm-l6"):
        load_model_config("minilm-l7")
    with pytest.raises(ConfigError, match="beir/scifact"):
        load_task("beir/scifac")


def test_missing_weights_path(tmp_path: Path) -> None:
    from harness.registry import build_reranker

    path = write_cfg(tmp_path, {"name": "x", "type": "cross-encoder", "weights": {"path": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match="is not a folder"):
        build_reranker(load_model_config(str(path)))


def test_hub_model_offline_says_how_to_point_at_a_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness.registry import build_reranker

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError) as err:
        build_reranker(load_model_config("ms-marco-minilm-l6-ce"))
    assert "path: DIR" in str(err.value) and "huggingface-cli download cross-encoder/ms-marco-MiniLM-L-6-v2" in str(
        err.value)


def test_absent_beir_dataset_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness.pipeline import PipelineSpec, run_pipeline

    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError) as err:
        run_pipeline(PipelineSpec.single("none"), "beir/nfcorpus", results=tmp_path)
    message = str(err.value)
    assert "beir/nfcorpus/queries.jsonl" in message
    assert "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/nfcorpus.zip" in message


def test_download_failure_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With downloads allowed but no network, the error still says what to fetch."""
    from harness.data import DataFile, resolve

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("harness.data.DOWNLOAD_TIMEOUT_S", 2)
    file = DataFile(path="beir/none/corpus.jsonl", format="beir-jsonl", url="http://127.0.0.1:9/none.zip",
                    member="none/corpus.jsonl")
    with pytest.raises(DataNotFoundError, match="download failed"):
        resolve(file, "test")


def test_import_is_light() -> None:
    code = "import sys, harness, harness.cli, harness.tasks, harness.pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dry_run_computes_nothing(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", "minilm-l6", "--task", "trec-dl-2019",
                          "--dry-run", "--results", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "inputs: 4300" in out.stdout and "context: 256" in out.stdout
    assert "over_context: 3" in out.stdout  # the 3 passages the real run reports as truncated
    assert not (tmp_path / "cache.sqlite").exists()
    assert not list(tmp_path.rglob("metrics.json"))


def test_data_formats_are_a_closed_set_checked_per_role() -> None:
    """A task file's `format:` is one of the harness's readers, and one that suits the file's role."""
    from pydantic import ValidationError

    from harness.tasks import TaskSpec

    spec = load_task("trec-dl-2019").model_dump()
    bad_format = {**spec, "qrels": [{**spec["qrels"][0], "format": "trec-qrels"}]}
    with pytest.raises(ValidationError, match="trec-qrels"):
        TaskSpec.model_validate(bad_format)
    wrong_role = {**spec, "queries": [{**spec["queries"][0], "format": "rankgpt-json"}]}
    with pytest.raises(ValidationError, match=r"queries\[0\].*'rankgpt-json'; queries are read as tsv or beir-jsonl"):
        TaskSpec.model_validate(wrong_role)
    run_as_topics = {**spec, "first_stages": {"bm25": {"files": [{"path": "x.tsv", "format": "tsv"}]}}}
    with pytest.raises(ValidationError, match="a run is read as trec or rankgpt-json or mteb-json"):
        TaskSpec.model_validate(run_as_topics)
