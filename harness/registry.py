"""Model families by their `type:`; imported lazily so `import harness` stays light.

The built-in families are `FAMILIES` (lazy "module:Class" references). A family outside the package
is one module and one YAML: the module calls `register_family(type, ConfigClass, RerankerClass)` when
imported, and a config names it with `module:` (a dotted module, or a .py file relative to the
config), or an installed package names it in the entry-point group `harness.families` (the entry
point's name is the type, its value the module). Nothing central is edited to add one.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Callable
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
ENTRY_POINTS = "harness.families"

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

# Builds the reranker of a config (a class, or a function that picks one: cross-encoder backends).
Builder = Callable[[Any, ResolvedWeights | None], Reranker]
# type -> (config class, builder), of families registered by their own modules
REGISTERED: dict[str, tuple[type[ModelConfig], Builder]] = {}


def register_family(kind: str, config: type[ModelConfig], reranker: Builder) -> None:
    """Make `type: kind` known; called by a family's module when it is imported. Registering the same
    classes again (a module imported twice) is harmless; another family under a taken name is an error."""
    if kind in FAMILIES:
        raise ConfigError(f"family type {kind!r} is built in ({FAMILIES[kind][1]}); register yours under another name")
    known = REGISTERED.get(kind)
    if known is not None and (known[0].__qualname__, getattr(known[1], "__qualname__", None)) != (
            config.__qualname__, getattr(reranker, "__qualname__", None)):
        raise ConfigError(f"family type {kind!r} is registered already, by {known[1]!r}")
    REGISTERED[kind] = (config, reranker)


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)}


def family(kind: str) -> tuple[type[ModelConfig], Builder] | None:
    """The config class and builder of a type: built in, registered, or named by an entry point."""
    if kind in FAMILIES:
        return _load(FAMILIES[kind][0]), _load(FAMILIES[kind][1])
    if kind not in REGISTERED and kind in (points := _entry_points()):
        points[kind].load()  # importing the module registers the family
    return REGISTERED.get(kind)


def known_types() -> list[str]:
    return [*FAMILIES, *sorted(set(REGISTERED) | set(_entry_points()) - set(FAMILIES))]


def import_family_module(module: str, config_path: Path | str) -> None:
    """Import a config's `module:`: a dotted module, or a .py file (relative to the config's folder).
    A file is imported once per process, under a name of its own."""
    try:
        if module.endswith(".py") or "/" in module:
            file = (Path(config_path).parent / module).resolve()
            if not file.is_file():
                raise InputError(config_path, f"{module!r}: no such file ({file}); expected a Python module "
                                 "that calls harness.registry.register_family", key="module")
            name = f"harness_family_{file.stem}_{hashlib.sha256(str(file).encode()).hexdigest()[:8]}"
            if name in sys.modules:
                return
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is None or spec.loader is None:
                raise InputError(config_path, f"{module!r} cannot be imported as a Python module", key="module")
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[name] = loaded  # before running it: pydantic and dataclasses look themselves up there
            try:
                spec.loader.exec_module(loaded)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            importlib.import_module(module)
    except InputError:
        raise
    except Exception as exc:  # whatever the module raised: the config names it, the cause is chained
        raise InputError(config_path, f"importing the family module {module!r} failed: "
                         f"{type(exc).__name__}: {exc}", key="module") from exc


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
        raise InputError(path, f"missing; every model config names its family, one of: {', '.join(known_types())}",
                         key="type")
    if isinstance(raw.get("module"), str):
        import_family_module(raw["module"], path)
    found = family(str(kind))
    if found is None:
        known = known_types()
        close = difflib.get_close_matches(str(kind), known, n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        where = f" (the module {raw['module']!r} registers no such type)" if raw.get("module") else ""
        raise InputError(path, f"unknown model type {kind!r}{where}.{hint} Known types: {', '.join(known)}; "
                         "a family of your own names its module with `module:`", key="type")
    config_cls = found[0]
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
    found = family(config.type)
    if found is None:
        raise ConfigError(f"model {config.name!r}: no family of type {config.type!r} is registered in this process; "
                          f"known types: {', '.join(known_types())}")
    return found[1](config, weights)
