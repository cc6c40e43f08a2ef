"""Model families by their `type:`; imported lazily so `import harness` stays light."""

from __future__ import annotations

import difflib
import importlib
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.data import PROJECT_ROOT
from harness.errors import ConfigError, ConfigFileError, HarnessError, InputError
from harness.rerankers.base import ModelConfig, Reranker
from harness.tasks import read_yaml, validation_error
from harness.weights import EXPECTED_FOLDER, ResolvedWeights, Weights, folder_problem, local_folder, resolve_weights

log = logging.getLogger(__name__)

MODELS_DIR = PROJECT_ROOT / "configs" / "models"

# type -> ("module:ConfigClass", "module:RerankerClass")
FAMILIES: dict[str, tuple[str, str]] = {
    "bi-encoder": ("harness.rerankers.biencoder:BiEncoderConfig", "harness.rerankers.biencoder:BiEncoder"),
    "cross-encoder": ("harness.rerankers.seqcls:SeqClsConfig", "harness.rerankers.seqcls:build_cross_encoder"),
    "rank1": ("harness.rerankers.rank1:Rank1Config", "harness.rerankers.rank1:Rank1"),
    "listwise": ("harness.rerankers.listwise:ListwiseConfig", "harness.rerankers.listwise:ListwiseReranker"),
    "monot5": ("harness.rerankers.monot5:MonoT5Config", "harness.rerankers.monot5:MonoT5"),
    "multi-cls": ("harness.rerankers.multicls:MultiClsModelConfig", "harness.rerankers.multicls:MultiClsReranker"),
    "ensemble": ("harness.rerankers.ensemble:EnsembleConfig", "harness.rerankers.ensemble:Ensemble"),
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def available_models() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


# The model config a trained folder carries (`python -m harness train`): `--model FOLDER` reads it.
FOLDER_CONFIG = "model.yaml"


def model_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for folder in (path, PROJECT_ROOT / path):  # a trained folder, from here or from the project
        if (folder / FOLDER_CONFIG).is_file():
            return folder / FOLDER_CONFIG
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
    if kind is None:
        raise InputError(path, f"missing; every model config names its family, one of: {', '.join(FAMILIES)}",
                         key="type")
    if kind not in FAMILIES:
        close = difflib.get_close_matches(str(kind), list(FAMILIES), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InputError(path, f"unknown model type {kind!r}.{hint} Known types: {', '.join(FAMILIES)}", key="type")
    config_cls = _load(FAMILIES[kind][0])
    try:
        config: ModelConfig = config_cls.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(path, exc) from exc
    _check_local_weights(config, path)
    return config


def _check_local_weights(config: ModelConfig, path: Path | str) -> None:
    """A `path:` of weights that is not a model's folder (missing, empty, no config.json, no weight
    file) stops the run when the config is read, before any data or compute is spent."""
    for key in ("weights", "base"):
        weights = getattr(config, key, None)
        if not isinstance(weights, Weights) or not weights.path:
            continue
        problem = folder_problem(local_folder(weights.path))
        if problem:
            raise ConfigFileError(path, f"{weights.path!r} {problem}; {EXPECTED_FOLDER}", key=f"{key}.path")


def load_model_config(name_or_path: str, weights_path: str | None = None) -> ModelConfig:
    """The model config called `name_or_path` (a file in configs/models, or a YAML path)."""
    path = model_config_path(name_or_path)
    raw = read_yaml(path, "model config")
    if weights_path is not None and isinstance(raw, dict):
        problem = folder_problem(local_folder(weights_path))
        if problem:
            raise ConfigError(f"model {path.stem!r} ({path}): the weights folder {weights_path!r} given by --weights "
                              f"(or a stage's `weights:`) in place of the config's {problem}; {EXPECTED_FOLDER}")
        raw = {**raw, "weights": {"path": weights_path}}
    return parse_model_config(raw, path)


def resolve_model_weights(config: ModelConfig) -> ResolvedWeights:
    """A config's weights, resolved; a family without weights of its own (an ensemble: its members')
    resolves them itself (`resolve_own_weights`)."""
    own = getattr(config, "resolve_own_weights", None)
    if callable(own):
        resolved: ResolvedWeights = own()
        return resolved
    return resolve_weights(config.weights, config.name)


def model_revision(config: ModelConfig) -> str | None:
    """The revision of a config's weights on this machine (no download), or None when they are not."""
    from harness.identity import local_revision

    if callable(getattr(config, "resolve_own_weights", None)):
        try:
            return resolve_model_weights(config).revision
        except HarnessError:
            return None
    return local_revision(config.weights, config.name)


def build_reranker(config: ModelConfig, weights: ResolvedWeights | None = None) -> Reranker:
    """The reranker of `config`; `weights` already resolved (by the pipeline) are not resolved again."""
    if config.trust_remote_code:
        # Said where the run shows it; the config, trust_remote_code included, is in the bundle.
        log.warning("model %r: trust_remote_code is on (its config asks for it): Python code shipped with "
                    "the weights will run", config.name)
    cls = _load(FAMILIES[config.type][1])
    reranker: Reranker = cls(config, weights)
    return reranker
