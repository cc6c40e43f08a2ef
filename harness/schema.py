"""The bundle's files as typed records: `metrics.json` and `execution.json` are written and read
through these pydantic models, by the pipeline, `compare`, `tables` and the report alike.

A bundle of another schema version is refused with an error that names the file and both versions;
unknown keys are errors too (a file edited by hand, or written by another harness), never ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import HarnessError, InputError

SCHEMA_VERSION: Literal[2] = 2


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueryCounts(_Record):
    judged: int
    missing_from_first_stage: list[str]
    missing_from_reranked: list[str] | None
    unjudged_in_run: int


class StageRecord(_Record):
    model: str
    type: str
    depth: int
    items: int
    fingerprint: dict[str, Any]
    generated_tokens_mean: float | None = None
    generated_tokens_max: int | None = None


class FirstStageRecord(_Record):
    name: str
    description: str
    depth: int
    notes: list[str]


class Provenance(_Record):
    task: dict[str, Any]
    pipeline: dict[str, Any]
    models: list[dict[str, Any]]
    first_stage: FirstStageRecord
    data_checksums: dict[str, str]
    data_unverified: list[str]
    data_notes: list[str]  # topics, qrels, corpus: a byte-order mark, CRLF line ends, as first-stage notes
    libraries: dict[str, str]
    code: Any


class Metrics(_Record):
    """metrics.json: what a bundle measured and what produced it; byte-identical across reruns."""

    schema_version: Literal[2]
    task: str
    pipeline: str
    first_stage_name: str
    depth: int
    identity: dict[str, Any]
    measures: list[str]  # in the task's order: the first is the headline (JSON objects below are sorted)
    first_stage: dict[str, float]  # measure -> value
    reranked: dict[str, float] | None  # None: the first stage alone
    units: dict[str, str]  # measure -> what its per-unit values are about ("query", "pair")
    details: dict[str, dict[str, dict[str, Any]]]  # "first_stage" | "reranked" -> measure -> details
    queries: QueryCounts
    fallbacks: dict[str, int]
    significance: dict[str, Any] | None
    stages: list[StageRecord]
    provenance: Provenance

    @property
    def final(self) -> dict[str, float]:
        """The values of the final run: reranked, or the first stage's for `none`."""
        return self.reranked if self.reranked is not None else self.first_stage

    @property
    def headline(self) -> str:
        return self.measures[0]


class WorkerExecution(_Record):
    """One Ray worker of a stage (`--workers N`, harness.workers): where it ran and what it computed."""

    worker: int
    model: str
    node: str
    node_ip: str
    node_id: str
    pid: int
    devices: list[str]  # the GPU ids Ray gave it; none for a CPU replica
    chunks: int
    items: int
    seconds: dict[str, float]  # load, model (timed on the worker), busy (dispatch to result, on the driver)
    status: str  # ready | died | starting (never answered)
    lost_items: int  # items of its chunks in flight when it died, computed again by another worker


class StageExecution(_Record):
    model: str
    seconds: float
    items: int
    from_cache: int
    computed: int
    fallbacks: dict[str, int]
    seconds_split: dict[str, float] | None = None  # build, load, model, cache
    peak_rss_mb: float | None
    peak_gpu_mb: float | None
    # How the items were computed: None in one process; with Ray workers, the mode (what may differ
    # from one process) and the workers.
    mode: str | None = None
    workers: list[WorkerExecution] | None = None

    @property
    def fully_computed(self) -> bool:
        return self.computed == self.items and self.from_cache == 0


class Execution(_Record):
    """execution.json: what varies between runs of the same job: times, cache hits, memory."""

    schema_version: Literal[2]
    finished: str
    seconds: float
    phases: dict[str, float]
    machine: dict[str, Any]
    stages: list[StageExecution]


R = TypeVar("R", bound=BaseModel)


def dump(record: BaseModel) -> str:
    return json.dumps(record.model_dump(mode="json", exclude_none=False), indent=2, sort_keys=True,
                      ensure_ascii=False) + "\n"


def read(path: Path, cls: type[R]) -> R:
    """A bundle file read back through its model; a clear error for another schema version."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc.msg}", line=exc.lineno) from exc
    if not isinstance(raw, dict):
        raise InputError(path, f"expected a JSON object ({cls.__name__})")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise HarnessError(
            f"{path}: a bundle of schema version {version!r}; this harness reads version {SCHEMA_VERSION}. "
            "Re-run the evaluation that made it to write it anew (its model outputs are in the cache).")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        from harness.tasks import validation_error

        raise validation_error(path, exc) from exc
