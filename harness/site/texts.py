"""Query and passage texts and qrels for the judgment reader, from the task's data on this machine.

A bundle stores ids only. The texts come from where the pipeline took them: the first stage's file
when it carries them (RankGPT JSON), else the task's corpus. The report never downloads: a file
that is not in the local mirror or the download cache makes the texts absent, with the reason on
the page, and the rest of the bundle is still shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.bundle import Bundle
from harness.data import locate
from harness.errors import HarnessError
from harness.records import Document
from harness.taskdata import TaskData, load_task_data
from harness.tasks import load_task

RUN_FILE = "run file "  # how firststage.load_first_stage describes a first stage read from a path


@dataclass
class Texts:
    """What the reader shows beside a bundle's ids; `missing` says why a part is absent."""

    queries: Mapping[str, str] = field(default_factory=dict)
    documents: Mapping[str, Document] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)  # query -> doc -> grade
    missing: list[str] = field(default_factory=list)

    def query(self, qid: str) -> str:
        return self.queries.get(qid, "")

    def grade(self, qid: str, doc_id: str) -> int | None:
        return self.qrels.get(qid, {}).get(doc_id)


class TextSource:
    """Loads each task's data once for every bundle of a site (several bundles share a task)."""

    def __init__(self) -> None:
        self._tasks: dict[str, tuple[TaskData, Texts]] = {}
        # (task, first stage) -> passages, query texts the first stage carries, why the passages are absent
        self._stages: dict[tuple[str, str], tuple[Mapping[str, Document], Mapping[str, str], str]] = {}

    def for_bundle(self, bundle: Bundle) -> Texts:
        m = bundle.metrics
        try:
            data, base = self._task(m.task)
        except HarnessError as exc:
            return Texts(missing=[f"no query texts or qrels: {exc}"])
        key = (m.task, m.first_stage_name)
        if key not in self._stages:
            try:
                self._stages[key] = (*_documents(data, m.first_stage_name, m.provenance.first_stage.description,
                                                 m.provenance.data_checksums), "")
            except HarnessError as exc:
                self._stages[key] = ({}, {}, str(exc))
        documents, queries, why = self._stages[key]
        # Query texts as the pipeline took them: the task's, then those the first stage carries.
        merged = {**queries, **base.queries} if queries else base.queries
        return Texts(merged, documents, base.qrels, [f"no passage texts: {why}"] if why else [])

    def queries(self, task: str) -> Mapping[str, str]:
        """The task's query texts, or none when its data is not on this machine."""
        try:
            return self._task(task)[1].queries
        except HarnessError:
            return {}

    def _task(self, name: str) -> tuple[TaskData, Texts]:
        if name not in self._tasks:
            spec = load_task(name)
            for role in (spec.queries, spec.qrels):
                if role and not any(locate(f) is not None for f in role):
                    raise HarnessError(f"{role[0].path} is not on this machine (the report downloads nothing)")
            data = load_task_data(spec)
            qrels: dict[str, dict[str, int]] = {}
            for q in data.qrels:
                qrels.setdefault(q.query_id, {})[q.doc_id] = q.relevance
            self._tasks[name] = (data, Texts(dict(data.queries), {}, qrels))
        return self._tasks[name]


def _documents(data: TaskData, stage: str, description: str,
               checksums: Mapping[str, str]) -> tuple[Mapping[str, Document], Mapping[str, str]]:
    """The passages (and query texts) the pipeline read: the first stage's file when it carries them,
    else the corpus. A run file named by path must still be the one the bundle was made from."""
    from harness.data import checksum
    from harness.firststage import read_any_run

    spec = data.spec
    stage_spec = spec.first_stages.get(stage)
    if stage_spec is not None and stage_spec.kind == "file":
        for file in stage_spec.files:
            path = locate(file)
            if path is not None and file.format == "rankgpt-json":
                _, documents, queries = read_any_run(path, file.format)
                return documents or {}, queries or {}
    elif stage_spec is None and description.startswith(RUN_FILE):
        path = Path(description.removeprefix(RUN_FILE))
        if not path.is_file() or checksum(path) != checksums.get(str(path)):
            raise HarnessError(f"the run file {path} is gone or changed since the bundle was made")
        _, documents, queries = read_any_run(path)
        if documents:
            return documents, queries or {}
    if not spec.corpus:
        raise HarnessError(f"first stage {stage!r} carries none and {spec.name} names no corpus")
    if not any(locate(f) is not None for f in spec.corpus):
        paths = ", ".join(f.path for f in spec.corpus)
        raise HarnessError(f"first stage {stage!r} carries none and the corpus ({paths}) is not on this machine "
                           "(the report downloads nothing)")
    return data.corpus, {}
