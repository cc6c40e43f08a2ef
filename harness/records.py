"""Small typed records with the IR field names; qrels and scored docs are ir_measures' own.

A judgment carries a typed `record` of what its family keeps beside the score (reasoning, token
counts, finish status, ranks); a listwise query keeps its windows on its `Ranking`. The record's
fields are the keys of the judgment's row in judgments.jsonl (`judgment_row`), and `read_judgment_row`
turns a row back into the same records, so the bundle is written and read by one set of models.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from ir_measures import Qrel, ScoredDoc
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import InputError

__all__ = [
    "Document",
    "GenericRecord",
    "Judgment",
    "JudgmentRow",
    "ListwiseRecord",
    "ListwiseWindow",
    "Qrel",
    "Rank1Pass",
    "Rank1Record",
    "Ranking",
    "Record",
    "Run",
    "ScoredDoc",
    "TruncationRecord",
    "generated_tokens",
    "judgment_row",
    "read_judgment_row",
    "sort_trec",
]

# A run: query id -> scored documents, best first.
Run = dict[str, list[ScoredDoc]]


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    title: str = ""


class Record(BaseModel):
    """What a family keeps beside a judgment's score. Its fields are the judgment's keys in
    judgments.jsonl; a family outside the package may subclass it for its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def row(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class TruncationRecord(Record):
    """A pointwise input cut to the model's length (the judgment's fallback is `truncated-passage`)."""

    truncated: Literal[True] = True


class Rank1Pass(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    finish: str  # "stop" | "eos" | "length"
    tokens: int


class Rank1Record(Record):
    """A rank1 chain: the reasoning text (every pass, as the prompt of the last one continues it)."""

    reasoning: str
    generated_tokens: int  # every pass, and the forced answer's token
    prompt_tokens: int
    finish: str  # the chain's finish, or "forced" when the answer was forced
    chain_finish: str  # "stop" | "eos" | "length", of the last pass
    forced: bool
    passes: list[Rank1Pass]


class ListwiseRecord(Record):
    listwise_rank: int  # 1-based, after every window
    input_rank: int  # 1-based, in the previous stage's order


class ListwiseWindow(Record):
    """One window of a listwise query: what went in, what the model wrote, how it was read."""

    span: tuple[int, int]  # [start, end) positions in the order the window saw
    input: list[str]  # doc ids, in the window's input order
    output: str  # the raw generated text
    order: list[int]  # 1-based identifiers as applied (a permutation of the window)
    counts: dict[str, int]  # parse problems of this window (RerankStats.fallbacks names)
    finish: str  # "stop" | "length"
    prompt_tokens: int
    new_tokens: int
    cached: bool


class GenericRecord(Record):
    """A row's own keys when no record of the package fits: a family defined outside it."""

    model_config = ConfigDict(extra="allow", frozen=True)


# The records of the built-in families, tried in this order when a row is read back. Their key
# sets differ, and extra keys are refused, so at most one fits a row.
JUDGMENT_RECORDS: tuple[type[Record], ...] = (Rank1Record, ListwiseRecord, TruncationRecord)


@dataclass
class Judgment:
    """What a reranker said about one document of one query.

    `record` is what the family keeps beside the score; `fallback` names the fallback taken, if
    any, so that it is counted; `cached`: the output came from the cache.
    """

    query_id: str
    doc_id: str
    score: float
    record: Record | None = None
    fallback: str | None = None
    cached: bool = False


@dataclass
class Ranking(Sequence[Judgment]):
    """A query's judgments in the order of its request, with what the family keeps per query
    (a listwise query's windows)."""

    query_id: str
    judgments: list[Judgment]
    windows: list[ListwiseWindow] | None = None  # a listwise query's, in the order they ran

    @overload
    def __getitem__(self, index: int) -> Judgment: ...

    @overload
    def __getitem__(self, index: slice) -> list[Judgment]: ...

    def __getitem__(self, index: int | slice) -> Judgment | list[Judgment]:
        return self.judgments[index]

    def __len__(self) -> int:
        return len(self.judgments)

    def __iter__(self) -> Iterator[Judgment]:
        return iter(self.judgments)


WINDOWS_KEY = "listwise_windows"  # the row of a listwise query's first judgment carries its windows
COMMON_KEYS = ("stage", "query_id", "doc_id", "score", "fallback")


def judgment_row(stage: str, judgment: Judgment, windows: Sequence[ListwiseWindow] | None = None) -> dict[str, Any]:
    """The judgments.jsonl row of a judgment (and of its query's windows, on the query's first)."""
    row: dict[str, Any] = {"stage": stage, "query_id": judgment.query_id, "doc_id": judgment.doc_id,
                           "score": judgment.score, "fallback": judgment.fallback}
    if judgment.record is not None:
        row.update(judgment.record.row())
    if windows is not None:
        row[WINDOWS_KEY] = [w.row() for w in windows]
    return row


@dataclass(frozen=True)
class JudgmentRow:
    """One row of judgments.jsonl, read back."""

    stage: str
    query_id: str
    doc_id: str
    score: float
    fallback: str | None
    record: Record | None
    windows: list[ListwiseWindow]


def read_judgment_row(row: Mapping[str, Any], path: str | Path, line: int) -> JudgmentRow:
    """A judgments.jsonl row as typed records; a row that fits none names its file and line."""
    missing = [k for k in COMMON_KEYS if k not in row]
    if missing:
        raise InputError(path, f"a judgment row lacks {', '.join(missing)}", line=line)
    rest = {k: v for k, v in row.items() if k not in COMMON_KEYS and k != WINDOWS_KEY}
    try:
        windows = [ListwiseWindow.model_validate(w) for w in row.get(WINDOWS_KEY) or []]
        record: Record | None = None
        if rest:
            record = next((r for r in (_fits(cls, rest) for cls in JUDGMENT_RECORDS) if r is not None), None)
            if record is None:
                record = GenericRecord.model_validate(rest)
        score = float(row["score"])
    except (ValidationError, TypeError, ValueError) as exc:
        raise InputError(path, f"not a judgment row: {exc}", line=line) from exc
    return JudgmentRow(str(row["stage"]), str(row["query_id"]), str(row["doc_id"]), score, row["fallback"],
                       record, windows)


def _fits(cls: type[Record], values: dict[str, Any]) -> Record | None:
    try:
        return cls.model_validate(values)
    except ValidationError:
        return None


def generated_tokens(records: Sequence[Record | None]) -> list[int]:
    """The generated-token counts of the records that have them (reasoning chains)."""
    return [r.generated_tokens for r in records if isinstance(r, Rank1Record)]


def sort_trec(docs: list[ScoredDoc]) -> list[ScoredDoc]:
    """Order as trec_eval does: score descending, ties by doc id descending."""
    return sorted(docs, key=lambda d: (d.score, d.doc_id), reverse=True)
