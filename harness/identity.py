"""A result bundle's identity: what decides its content, recorded in its metrics.json.

A bundle's folder is named by task, first stage, depth and pipeline, and names collide: a run file
called `bm25` anywhere on disk, a model config whose weights folder now holds other weights. The
identity is what the names stand for: the task's data checksums, the first stage (name, depth, the
checksums of its files, its BM25 parameters) and each stage's depth and model (every config field
that decides an output, and the revision of the weights: hub commit or sha256 of the files).

It is computed from configs and resolved weights alone, never by building a reranker (monoT5 loads
its model when built), so `run_pipeline` checks it before any compute and `find_bundle` can check
it without running anything. Library versions and prompt code stay out: a rerun after an upgrade is
the same evaluation redone (they are in each stage's fingerprint and the provenance), and the
cache keys on them, so nothing stale is reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cache import stable_hash
from harness.errors import ConfigError, HarnessError

if TYPE_CHECKING:
    from harness.firststage import FirstStage
    from harness.rerankers.base import ModelConfig
    from harness.tasks import TaskSpec
    from harness.weights import Weights

# Config fields that cannot change an output (the families' fingerprints leave the same out):
# names, batch size, device and memory hints. `weights` is replaced by the resolved revision.
NOT_DECIDING = {"name", "description", "batch_size", "cache_every", "device", "gpu_memory_gb",
                "gpu_memory_utilization", "max_num_seqs"}
ADVICE = "evaluate into another results folder (--results DIR), or delete {folder} to replace it"


class StaleBundleError(HarnessError):
    """A finished bundle sits where the asked evaluation's bundle would be, but of other content."""

    def __init__(self, folder: Path, differences: list[str]) -> None:
        self.folder = folder
        self.differences = differences
        self.reason = f"stale bundle ({'; '.join(differences)}); delete {folder} to evaluate again"
        super().__init__(f"{folder} is a result bundle of other content than asked: {'; '.join(differences)}. "
                         f"It is not used: delete it to evaluate again, or use another results folder "
                         "(--results DIR).")


def config_identity(config: ModelConfig) -> dict[str, Any]:
    """The fields of a model config that decide its outputs, weights as the config names them."""
    return config.model_dump(mode="json", exclude=NOT_DECIDING)


def model_identity(config: ModelConfig, revision: str | None) -> dict[str, Any]:
    """A stage's model: the deciding config fields and the weights' revision (None: not known here)."""
    out = config_identity(config)
    out["weights"] = revision  # where the weights are does not decide an output; what they are does
    base = getattr(config, "base", None)
    if base is not None and base.path:  # a local base folder: its content, like the weights'
        out["base_revision"] = local_revision(base, config.name)
    return out


def local_revision(weights: Weights, name: str) -> str | None:
    """The revision of weights on this machine (no download is tried), or None when they are not."""
    from harness.weights import resolve_weights

    if weights.hub is None:
        try:
            return resolve_weights(weights, name).revision
        except HarnessError:
            return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(weights.hub, revision=weights.revision, local_files_only=True)).name
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None


def model_folder_name(model: str, weights: str | None = None) -> str:
    """The pipeline name of one model: its config name, or a YAML path's stem.

    A config that takes the name of a registered one (configs/models/<stem>.yaml) but differs from it
    in a field that decides an output, or in its weights (`--weights`), gets `<stem>-<8 hex>`, so it
    never lands in the registered config's folder, where the published tables read. Other names are
    kept as given (`--baseline NAME` finds them); their bundles are guarded by the identity.
    """
    from harness.registry import MODELS_DIR, load_model_config

    # A YAML path is named by its stem; a trained model's folder (a path that is no YAML file: its
    # model.yaml, harness.train) by its own name, known before the folder exists (a run trains it).
    is_path = model.endswith((".yaml", ".yml")) or "/" in model
    stem = Path(model).stem if model.endswith((".yaml", ".yml")) else Path(model).name
    registered = MODELS_DIR / f"{stem}.yaml"
    if (not is_path and weights is None) or not registered.is_file():
        return stem
    try:
        given = config_identity(load_model_config(model, weights))
        official = config_identity(load_model_config(str(registered)))
    except HarnessError:
        return stem  # the run reads the config again and stops with the error, before any work
    return stem if given == official else f"{stem}-{stable_hash(given)[:8]}"


def first_stage_spec(task: TaskSpec, name: str) -> dict[str, Any] | None:
    """What decides a named first stage besides its files (BM25 parameters); None for a run file."""
    spec = task.first_stages.get(name)
    if spec is None:
        return None
    return spec.model_dump(mode="json", include={"kind", "bm25s", "mteb_subset", "mteb_split"})


def bundle_identity(task: TaskSpec, data_files: dict[str, str], stage0: FirstStage,
                    stages: list[tuple[int | None, dict[str, Any]]]) -> dict[str, Any]:
    """The identity of an evaluation: `stages` holds each stage's depth and `model_identity`.

    A run file is identified by its checksum, not its path: the same file elsewhere is the same job.
    """
    out: dict[str, Any] = {
        "task": task.name,
        "data": {path: sha for path, sha in sorted(data_files.items()) if path not in stage0.files},
        "first_stage": {"name": stage0.name, "depth": stage0.depth, "checksums": sorted(stage0.files.values()),
                        "spec": first_stage_spec(task, stage0.name)},
        "stages": [{"depth": depth, "model": model} for depth, model in stages],
    }
    out["hash"] = stable_hash(out)
    return out


def differences(recorded: dict[str, Any], asked: dict[str, Any], labels: list[str]) -> list[str]:
    """What differs between a bundle's identity and the asked one, said for a person.

    A part that `asked` leaves out, or a value it gives as None, was not known and is not compared.
    `labels` names the asked stages (their model names) for the message.
    """
    out = []
    if "task" in asked and recorded.get("task") != asked["task"]:
        out.append(f"task {recorded.get('task')!r} in the bundle, {asked['task']!r} asked")
    if "data" in asked:
        old, new = recorded.get("data", {}), asked["data"]
        for path in sorted(set(old) | set(new)):
            if old.get(path) != new.get(path):
                out.append(f"data file {path}: checksum {_short(old.get(path))} in the bundle, "
                           f"{_short(new.get(path))} now")
    old_fs, new_fs = recorded.get("first_stage", {}), asked.get("first_stage", {})
    for key, what in (("name", "first stage"), ("depth", "first-stage depth"),
                      ("checksums", "first-stage run file checksum"), ("spec", "first-stage parameters")):
        if new_fs.get(key) is not None and old_fs.get(key) != new_fs[key]:
            out.append(f"{what} {_short(old_fs.get(key))} in the bundle, {_short(new_fs[key])} asked")
    old_st, new_st = recorded.get("stages", []), asked.get("stages", [])
    if len(old_st) != len(new_st):
        return [*out, f"{len(old_st)} reranking stage(s) in the bundle, {len(new_st)} asked"]
    for i, (old, new) in enumerate(zip(old_st, new_st, strict=True)):
        label = f"stage {i + 1} ({labels[i]})" if i < len(labels) else f"stage {i + 1}"
        if "depth" in new and old.get("depth") != new["depth"]:
            out.append(f"{label} depth {old.get('depth')} in the bundle, {new['depth']} asked")
        old_m, new_m = old.get("model", {}), new["model"]
        for key in sorted(set(old_m) | set(new_m)):
            if key in ("weights", "base_revision") and new_m.get(key) is None:
                continue  # not on this machine: cannot be told
            if old_m.get(key) != new_m.get(key):
                what = "weights revision" if key == "weights" else f"model config key {key!r}"
                out.append(f"{label} {what}: {_short(old_m.get(key))} in the bundle, {_short(new_m.get(key))} now")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def recorded_identity(folder: Path) -> dict[str, Any] | None:
    """The identity of the finished bundle in `folder`; None when there is no finished bundle.

    A finished bundle that records none (an older harness wrote it) is of unknown identity.
    """
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = {}
    identity = metrics.get("identity") if isinstance(metrics, dict) else None
    return identity if isinstance(identity, dict) else {}


def check_replaceable(folder: Path, identity: dict[str, Any], labels: list[str]) -> None:
    """Refuse to replace a finished bundle of other (or unknown) content; the same job rewrites it."""
    recorded = recorded_identity(folder)
    if recorded is None or recorded.get("hash") == identity["hash"]:
        return
    if not recorded:
        raise HarnessError(f"{folder} holds a finished result bundle that records no identity (an older harness, "
                           "or a damaged metrics.json), so whether it is this evaluation cannot be told. It is not "
                           f"overwritten: {ADVICE.format(folder=folder)}.")
    diffs = differences(recorded, identity, labels) or ["its recorded identity"]
    raise HarnessError(f"{folder} holds a finished result bundle of other content than this evaluation: "
                       f"{'; '.join(diffs)}. It is not overwritten: {ADVICE.format(folder=folder)}.")


def check_found(folder: Path, asked: dict[str, Any], labels: list[str]) -> None:
    """A bundle found by name is used only if its identity fits what is known of the asked one."""
    recorded = recorded_identity(folder)
    if recorded is None:
        return
    if not recorded:
        raise StaleBundleError(folder, ["it records no identity: an older harness wrote it"])
    diffs = differences(recorded, asked, labels)
    if diffs:
        raise StaleBundleError(folder, diffs)


def check_results_folder(results: Path) -> None:
    """A results path that is a file, or that cannot be created or written, stops a run before any
    work: otherwise the cache or the bundle fails to open after the data is read or the model ran."""
    import os

    results = Path(results)
    what = "expected a folder (--results DIR, or `results:` in a run config) for the bundles and the cache"
    if results.exists() and not results.is_dir():
        raise ConfigError(f"results folder {results}: is a file; {what}")
    existing = results
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"results folder {results}: cannot be created, {existing} is a file; {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"results folder {results}: cannot be written ({existing} is not writable); {what}")
