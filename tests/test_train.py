"""`python -m harness train` on a tiny BERT built here and real TREC DL 2020 judgments: the loss goes
down, the folder loads in `eval`, training resumes and reuses, and never touches its evaluation task."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from harness.errors import ConfigError, ConfigFileError, HarnessError, InputError
from harness.train import TrainConfig, load_train_config, task_pairs, train

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, name: str, **fields: Any) -> Path:
    config = {"name": name, "base": {"path": str(fields.pop("base"))}, "facets": 2,
              "data": {"task": "trec-dl-2020", "max_pairs": 48}, "evaluate_on": ["trec-dl-2019"], "max_length": 48,
              "batch_size": 16, "epochs": 3, "learning_rate": 2e-3, "warmup_ratio": 0.0, "seed": 3,
              "output": str(tmp_path / name), **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def mean_loss(model: Any, tokenizer: Any, config: TrainConfig) -> float:
    pairs = task_pairs(config)
    enc = tokenizer(pairs.queries, pairs.documents, truncation=True, max_length=config.max_length - config.facets,
                    padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return float(model(**enc, labels=torch.tensor(pairs.labels)).loss)


@pytest.fixture(scope="module")
def trained(tiny_cross_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    tmp = tmp_path_factory.mktemp("train")
    config = load_train_config(write(tmp, "tiny-k2", base=tiny_cross_encoder, save_steps=3))
    return tmp, (config, train(config, size="full", progress=False))


def test_training_lowers_the_loss(trained: tuple[Path, Any], tiny_cross_encoder: Path) -> None:
    from transformers import AutoTokenizer

    from harness.rerankers.multicls_model import MultiClsForSequenceClassification, from_encoder

    _, (config, done) = trained
    record = json.loads((done.folder / "train.json").read_text())
    assert record["steps"] == 9 and record["data"]["pairs"] == 48 and record["data"]["relevance_threshold"] == 2
    assert 0 < record["data"]["relevant"] < 48 and record["facet_layers"] == [1]  # 2 layers: a third, two thirds
    tokenizer = AutoTokenizer.from_pretrained(done.folder / "model")
    start = from_encoder(str(tiny_cross_encoder), AutoTokenizer.from_pretrained(tiny_cross_encoder), num_facets=2,
                         seed=config.seed)  # the model training started from (same seed)
    after = MultiClsForSequenceClassification.from_pretrained(done.folder / "model")
    before_loss, after_loss = mean_loss(start, tokenizer, config), mean_loss(after, tokenizer, config)
    assert after_loss < before_loss - 0.02, (before_loss, after_loss)
    assert record["losses"][0]["step"] == 1 and math.isfinite(record["train_loss"])


def test_the_folder_is_what_eval_loads(trained: tuple[Path, Any], results: Path) -> None:
    from harness.pipeline import PipelineSpec, run_pipeline

    _, (_, done) = trained
    config = yaml.safe_load((done.folder / "model.yaml").read_text())
    assert config["type"] == "multi-cls" and config["trained_on"] == ["trec-dl-2020"] and config["max_length"] == 48
    outcome = run_pipeline(PipelineSpec.single(str(done.folder)), "trec-dl-2019", depth=5, results=results)
    assert outcome.bundle is not None and outcome.bundle.name == "tiny-k2"
    assert outcome.final_eval is not None and set(outcome.final_eval.aggregate) >= {"nDCG@10", "ECE", "Brier"}
    assert (outcome.bundle / "reliability.png").is_file() and (outcome.bundle / "selective.png").is_file()
    confidence = json.loads((outcome.bundle / "calibration.json").read_text())["confidence"]
    assert confidence["pairs"] > 0 and len(confidence["selective_queries"]["curve"]) == 43
    # never evaluated on the task that trained it
    with pytest.raises(ConfigError, match="trained on trec-dl-2020"):
        run_pipeline(PipelineSpec.single(str(done.folder)), "trec-dl-2020", depth=5, results=results)


def test_resume_and_reuse(trained: tuple[Path, Any], tiny_cross_encoder: Path) -> None:
    from safetensors.torch import load_file

    tmp, (config, done) = trained
    again = train(config, size="full", progress=False)
    assert again.reused and again.seconds == 0.0
    weights = load_file(done.folder / "model" / "model.safetensors")
    # a kill after the last checkpoint: the final files are missing, the checkpoints are there
    (done.folder / "model.yaml").unlink()
    (done.folder / "train.json").unlink()
    resumed = train(config, size="full", progress=False)
    record = json.loads((resumed.folder / "train.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-9") and record["steps"] == 9
    reloaded = load_file(done.folder / "model" / "model.safetensors")
    assert all(torch.equal(weights[k], reloaded[k]) for k in weights)
    other = load_train_config(write(tmp, "tiny-k2", base=tiny_cross_encoder, save_steps=3, learning_rate=1e-3))
    with pytest.raises(HarnessError, match=r"another config .*learning_rate"):
        train(other, size="full", progress=False)


def test_never_trains_on_the_evaluation_task(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    path = write(tmp_path, "bad", base=tiny_cross_encoder, evaluate_on=["trec-dl-2019", "trec-dl-2020"])
    with pytest.raises(ConfigFileError) as err:
        load_train_config(path)
    assert err.value.key == "evaluate_on.1"
    assert "training never reads the task it will be evaluated on" in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "harness", "train", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "evaluate_on.1" in proc.stderr + proc.stdout
    assert not (tmp_path / "bad").exists()  # nothing was read or written


def test_sizes(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    config = load_train_config(write(tmp_path, "sized", base=tiny_cross_encoder,
                                     reduced={"max_pairs": 10, "max_length": 32, "epochs": 1}))
    small = config.at_size("reduced")
    assert (small.data.max_pairs, small.max_length, small.epochs, small.reduced) == (10, 32, 1, None)
    assert config.at_size("full") == config
    assert TrainConfig.model_validate({**config.model_dump(), "reduced": None}).at_size("reduced").max_length == 48
    with pytest.raises(InputError, match=r"data\.task is needed"):
        load_train_config(write(tmp_path, "nodata", base=tiny_cross_encoder, data={"source": "task"}))
