"""Families of tasks written once: `tasks/<family>.yaml` with a template and its entries.

A catalogue file holds `entries` (each a task name under the family, with variables) and a `template`
(a task file). Task `<family>/<entry>` is the template with `{name}` (the entry) and the entry's
variables filled into every string, then read like any task file (a closed schema):

    entries:
      biology: {}
      leetcode: {}
    template:
      name: "bright/{name}"
      ...

BEIR predates this and keeps its own form (tasks/beir.yaml).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import InputError
from harness.io.text import brief
from harness.tasks import TASKS_DIR, read_yaml, validation_error


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    entries: dict[str, dict[str, str]] = Field(min_length=1)  # task suffix -> the template's variables
    template: dict[str, Any]  # a task file whose strings hold {name} and the entry's variables


@functools.cache
def catalogues() -> dict[str, Catalogue]:
    """family -> its catalogue: every tasks/*.yaml with a `template` (beir.yaml aside)."""
    out = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        if path.name == "beir.yaml":
            continue
        data = read_yaml(path, "task catalogue")
        if isinstance(data, dict) and "template" in data:
            try:
                out[path.stem] = Catalogue.model_validate(data)
            except ValidationError as exc:
                raise validation_error(path, exc) from exc
    return out


def catalogue_tasks() -> list[str]:
    return [f"{family}/{entry}" for family, cat in catalogues().items() for entry in cat.entries]


def catalogue_task(name: str) -> tuple[Path, dict[str, Any]] | None:
    """The catalogue file and the filled-in task file of `name` (`bright/biology`), or None."""
    family, _, entry = name.partition("/")
    cat = catalogues().get(family)
    if cat is None or entry not in cat.entries:
        return None
    path = TASKS_DIR / f"{family}.yaml"
    variables = {**cat.entries[entry], "name": entry}
    return path, _fill(cat.template, variables, path, "template")


def _fill(value: Any, variables: dict[str, str], path: Path, key: str) -> Any:
    if isinstance(value, str):
        try:
            return value.format(**variables)
        except (KeyError, IndexError, ValueError) as exc:
            raise InputError(path, f"cannot fill {brief(value)} ({type(exc).__name__}: {exc}); the variables are "
                             f"{', '.join(sorted(variables))}", key=key) from exc
    if isinstance(value, dict):
        return {k: _fill(v, variables, path, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, variables, path, f"{key}[{i}]") for i, v in enumerate(value)]
    return value
