"""Run configs (`configs/runs/*.yaml`): several pipelines x tasks in one command."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import InputError
from harness.pipeline import PipelineSpec
from harness.tasks import validation_error


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


def load_run_spec(path: str | Path) -> RunSpec:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "run config does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(path, f"not valid YAML: {exc}", line=mark.line + 1 if mark else None) from exc
    try:
        return RunSpec.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(path, exc) from exc
