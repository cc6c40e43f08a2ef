"""Measures that ir_measures lacks, behind one interface, beside ir_measures' own.

A measure here yields per-unit values in ir_measures' shape (`Metric(query_id, measure, value)`,
where the unit is a query, or a pair of queries for NevIR), so that the evaluation, the bundle's
`per_query.tsv`, significance, `compare` and `tables` treat it like any ir_measures measure.

A measure registers itself under the name users write in `measures:` (a task file, `--measures`):

    @register_measure("PairedAccuracy")
    class PairedAccuracy: ...

Built-in measures are listed in `BUILTIN` and imported only when named; a measure defined outside
the package registers when its module is imported (a task or run config can name that module).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ir_measures import Metric

from harness.errors import ConfigError
from harness.records import Qrel, Run

Pair = tuple[str, str, str, str, str]  # (pair_id, query 1, query 2, document of q1, document of q2)


@dataclass(frozen=True)
class InstructionPair:
    """A query asked with its original instruction and with a changed one (two query ids of the run),
    and the documents whose judgment the change flips (FollowIR's and mFollowIR's qrel_diff)."""

    query_id: str
    original: str
    changed: str
    documents: tuple[str, ...]


@dataclass(frozen=True)
class MeasureContext:
    """What a measure may read beside the run: the qrels, and what the task adds (NevIR's pairs, the
    instruction pairs of FollowIR-style tasks)."""

    qrels: list[Qrel]
    pairs: list[Pair] = field(default_factory=list)
    task: str = ""
    instruction_pairs: list[InstructionPair] = field(default_factory=list)
    relevance_threshold: int = 1  # the task's: a grade >= it is relevant (binary measures: calibration)
    # The final stage's probability of relevance per query and document (harness.calibration), when
    # its family has one; None for the first stage and for families without one.
    probabilities: Mapping[str, Mapping[str, float]] | None = None


class Measure(Protocol):
    """A measure ir_measures lacks. `unit` names what a per-unit value is about (query, pair).

    Optional: `aggregate(run, ctx) -> float`, the value over every unit pooled where that is not the
    mean of the per-unit values (calibration errors over all judged pairs), and `higher_is_better =
    False` for a measure that is better lower (the significance marks read it).
    """

    name: ClassVar[str]
    unit: ClassVar[str]

    def units(self, ctx: MeasureContext) -> list[str]:
        """Every unit the measure is averaged over (a unit the run lacks counts as 0)."""
        ...

    def iter_calc(self, run: Run, ctx: MeasureContext) -> Iterator[Metric]:
        """Per-unit values, in ir_measures' shape."""
        ...

    def details(self, run: Run, ctx: MeasureContext) -> dict[str, Any]:
        """What the bundle shows beside the value (counts of ties, of skipped units)."""
        ...


_REGISTERED: dict[str, type] = {}
# name -> module that registers it: imported when the name is first used (keeps `import harness` light)
BUILTIN: dict[str, str] = {"PairedAccuracy": "harness.measures", "p-MRR": "harness.pmrr",
                           "ECE": "harness.calibration", "Brier": "harness.calibration",
                           "LogLoss": "harness.calibration"}


def register_measure(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in _REGISTERED and _REGISTERED[name] is not cls:
            raise ConfigError(f"two measures register the name {name!r}: {_REGISTERED[name]} and {cls}")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTERED[name] = cls
        return cls
    return add


def custom_measure(name: str) -> Measure | None:
    """The registered measure called `name`, or None when ir_measures should parse it."""
    if name not in _REGISTERED and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    cls = _REGISTERED.get(name)
    return cls() if cls is not None else None


def is_custom(name: str) -> bool:
    return name in _REGISTERED or name in BUILTIN


def higher_is_better(name: str) -> bool:
    """False for a measure that says so (`higher_is_better = False`: calibration errors); ir_measures'
    measures are all better higher."""
    measure = custom_measure(name) if is_custom(name) else None
    return bool(getattr(measure, "higher_is_better", True))


@register_measure("PairedAccuracy")
class PairedAccuracy:
    """NevIR's official measure: a pair counts when both of its queries put their own document first.

    A query whose two documents tie, or that lacks its own document, does not rank it first (the
    official NevIR code counts such a pair wrong; MTEB's answer would depend on document-id order).
    """

    name: ClassVar[str] = "PairedAccuracy"
    unit: ClassVar[str] = "pair"

    def units(self, ctx: MeasureContext) -> list[str]:
        _need_pairs(ctx)
        return [p[0] for p in ctx.pairs]

    def iter_calc(self, run: Run, ctx: MeasureContext) -> Iterator[Metric]:
        _need_pairs(ctx)
        for pair_id, q1, q2, d1, d2 in ctx.pairs:
            ok = _first(run, q1, d1, d2) and _first(run, q2, d2, d1)
            yield Metric(pair_id, self.name, 1.0 if ok else 0.0)  # type: ignore[arg-type]  # by name

    def details(self, run: Run, ctx: MeasureContext) -> dict[str, Any]:
        ties = 0
        for _, q1, q2, d1, d2 in ctx.pairs:
            for qid in (q1, q2):
                scores = _scores(run, qid)
                if d1 in scores and d2 in scores and scores[d1] == scores[d2]:
                    ties += 1
        return {"pairs": len(ctx.pairs), "tied_queries": ties}


def _need_pairs(ctx: MeasureContext) -> None:
    if not ctx.pairs:
        raise ConfigError(f"PairedAccuracy needs the task's query pairs, and {ctx.task or 'this task'} has none "
                          "(a task file names them under `pairs:`)")


def _scores(run: Run, qid: str) -> Mapping[str, float]:
    return {d.doc_id: d.score for d in run.get(qid, [])}


def _first(run: Run, qid: str, own: str, other: str) -> bool:
    scores = _scores(run, qid)
    return own in scores and (other not in scores or scores[own] > scores[other])
