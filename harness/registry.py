"""Model families by their `type:`; imported lazily so `import harness` stays light."""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.data import PROJECT_ROOT
from harness.errors import ConfigError, InputError
from harness.rerankers.base import ModelConfig, Reranker
from harness.tasks import validation_error
from harness.weights import ResolvedWeights

MODELS_DIR = PROJECT_ROOT / "configs" / "models"

# type -> ("module:ConfigClass", "module:RerankerClass")
FAMILIES: dict[str, tuple[str, str]] = {
    "bi-encoder": ("harness.rerankers.biencoder:BiEncoderConfig", "harness.rerankers.biencoder:BiEncoder"),
    "cross-encoder": ("harness.rerankers.seqcls:SeqClsConfig", "harness.rerankers.seqcls:SequenceClassifier"),
    "rank1": ("harness.rerankers.rank1:Rank1Config", "harness.rerankers.rank1:Rank1"),
    "listwise": ("harness.rerankers.listwise:ListwiseConfig", "harness.rerankers.listwise:ListwiseReranker"),
    "monot5": ("harness.rerankers.monot5:MonoT5Config", "harness.rerankers.monot5:MonoT5"),
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def available_models() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def model_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = MODELS_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and candidate.is_file():
        return candidate
    close = difflib.get_close_matches(name_or_path, available_models(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"Unknown model {name_or_path!r}.{hint} Known: {', '.join(available_models())}")


def parse_model_config(raw: Any, path: Path | str) -> ModelConfig:
    if not isinstance(raw, dict):
        raise InputError(path, "expected a mapping with at least 'name', 'type' and 'weights'")
    kind = raw.get("type")
    if kind not in FAMILIES:
        close = difflib.get_close_matches(str(kind), list(FAMILIES), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InputError(path, f"unknown model type {kind!r}.{hint} Known types: {', '.join(FAMILIES)}", key="type")
    config_cls = _load(FAMILIES[kind][0])
    try:
        config: ModelConfig = config_cls.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(path, exc) from exc
    return config


def load_model_config(name_or_path: str, weights_path: str | None = None) -> ModelConfig:
    """The model config called `name_or_path` (a file in configs/models, or a YAML path)."""
    path = model_config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(path, f"not valid YAML: {exc}", line=mark.line + 1 if mark else None) from exc
    if weights_path is not None and isinstance(raw, dict):
        raw = {**raw, "weights": {"path": weights_path}}
    return parse_model_config(raw, path)


def build_reranker(config: ModelConfig, weights: ResolvedWeights | None = None) -> Reranker:
    """The reranker of `config`; `weights` already resolved (by the pipeline) are not resolved again."""
    cls = _load(FAMILIES[config.type][1])
    reranker: Reranker = cls(config, weights)
    return reranker
