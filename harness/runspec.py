"""Run configs (`configs/runs/*.yaml`): several pipelines x tasks in one command."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import ConfigError, ConfigFileError, InputError
from harness.pipeline import PipelineSpec
from harness.registry import load_model_config, model_config_path
from harness.tasks import TaskSpec, load_task, read_yaml, validation_error


class ComparePair(BaseModel):
    """`compare A B` after the run's evaluations (A, B: what `--model` takes), on its tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    a: str
    b: str
    measure: str | None = None  # default: each task's headline


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    tasks: list[str] = Field(min_length=1)
    models: list[str | PipelineSpec] = Field(min_length=1)  # a model name, 'none', or a pipeline
    first_stage: str | None = None
    depth: int = Field(default=100, ge=1)
    measures: list[str] | None = None
    results: str = "results"
    baselines: list[str] = []  # models of this run the others are tested against (they run first)
    allow_unmatched: bool = False  # evaluate a first stage that matches nothing judged (every measure 0)
    # Ray workers (harness.workers): compute on this many model replicas, each with this many GPUs
    # (None: the model's tensor_parallel_size where the cluster has GPUs); `--workers` overrides.
    workers: int | None = Field(default=None, ge=1)
    gpus_per_worker: float | None = Field(default=None, ge=0)
    # Training configs (`python -m harness train`) run first; their folders may be models of the run.
    train: list[str] = []
    compare: list[ComparePair] = []

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str | PipelineSpec]) -> list[str | PipelineSpec]:
        names = [m if isinstance(m, str) else m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"model names repeat: {names}")
        return v

    @model_validator(mode="after")
    def _known_baselines(self) -> RunSpec:
        names = [PipelineSpec.single(m).name if isinstance(m, str) else m.name for m in self.models]
        unknown = [b for b in self.baselines if b not in names]
        if unknown:
            raise ValueError(f"baselines {unknown} are not among the models {names}")
        return self

    def pipelines(self) -> list[PipelineSpec]:
        pipelines = [PipelineSpec.single(m) if isinstance(m, str) else m for m in self.models]
        # Baselines first: the other models are tested against their bundles.
        return sorted(pipelines, key=lambda p: p.name not in self.baselines)

    def jobs(self) -> list[tuple[PipelineSpec, str]]:
        return [(p, t) for t in self.tasks for p in self.pipelines()]

    def trained_folders(self) -> set[Path]:
        """The model folders the run's `train:` entries write (resolved paths)."""
        from harness.train import load_train_config

        return {load_train_config(file).output_dir().resolve() for file in self.train}


def load_run_spec(path: str | Path) -> RunSpec:
    """A run config, checked through: its tasks, first stage and models exist (each error names the
    file and key), so that a typo stops the run before the first job spends any compute."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "run config does not exist")
    raw = read_yaml(path, "run config")
    try:
        spec = RunSpec.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(path, exc) from exc
    tasks: list[TaskSpec] = []
    for i, name in enumerate(spec.tasks):
        try:
            tasks.append(load_task(name))
        except ConfigError as exc:
            raise ConfigFileError(path, str(exc), key=f"tasks.{i}") from exc
    if spec.first_stage is not None and not Path(spec.first_stage).is_file():
        for task in tasks:
            if spec.first_stage not in task.first_stages:
                raise ConfigFileError(
                    path, f"{spec.first_stage!r} is neither a first stage of {task.name} "
                    f"({', '.join(task.first_stages)}) nor an existing run file", key="first_stage")
    produced = _trained_folders(spec, path)  # made by the run's training: not there before it runs
    for i, model in enumerate(spec.models):
        stages = [(f"models.{i}", model, None)] if isinstance(model, str) else [
            (f"models.{i}.stages.{j}.model", stage.model, stage.weights) for j, stage in enumerate(model.stages)]
        for key, name, weights in stages:
            if name == "none" or Path(name).resolve() in produced:
                continue
            try:
                model_config_path(name)
            except ConfigError as exc:
                raise ConfigFileError(path, str(exc), key=key) from exc
            load_model_config(name, weights)  # its own errors name the model's file
    for i, pair in enumerate(spec.compare):
        for side in ("a", "b"):
            name = getattr(pair, side)
            if name.partition("@")[0] in ("none", *map(str, spec.models)) or Path(name).resolve() in produced:
                continue
            try:
                model_config_path(name.partition("@")[0])
            except ConfigError as exc:
                raise ConfigFileError(path, str(exc), key=f"compare.{i}.{side}") from exc
    return spec


def _trained_folders(spec: RunSpec, path: Path) -> set[Path]:
    """What the run's training writes; a training config that is missing or invalid names the run's key."""
    from harness.train import load_train_config

    for i, file in enumerate(spec.train):
        try:
            load_train_config(file)
        except InputError as exc:
            if Path(exc.path) == Path(file):
                raise ConfigFileError(path, str(exc), key=f"train.{i}") from exc
            raise
    return spec.trained_folders()
