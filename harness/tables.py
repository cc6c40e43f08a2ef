"""Published tables as data (`configs/tables/*.yaml`), regenerated from result bundles.

A table has rows (a model config, a pipeline, `none` for the first stage alone, or nothing for a
reference row the harness has no model for) and columns; every cell's run conditions are the
table's `defaults`, overridden by its column, its row, then the row's `cells` entry: task, first
stage, depth, measure, scale and tolerance. `build_table` reads each cell's bundle, evaluates the
missing ones it can (unless told not to), and writes Markdown and LaTeX with published /
reproduced / delta / OK, OKish or FAIL per cell, or "not run" with the reason.

A cell's measure is an ir_measures string, or a cost (`harness.costs`: time, throughput, GPU
memory from the bundle's execution record; size and parameters from the weights on disk). An
aggregate cell (`aggregate: [column ids]`) averages the row's cells of those columns: its
published value is checked against the mean of theirs (INCONSISTENT beyond rounding), and it is
reproduced when all of them are.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness import costs
from harness.data import PROJECT_ROOT
from harness.errors import ConfigError, DataNotFoundError, HarnessError
from harness.identity import StaleBundleError
from harness.pipeline import PipelineSpec, find_bundle, safe_name
from harness.tasks import read_yaml, validation_error

log = logging.getLogger(__name__)

TABLES_DIR = PROJECT_ROOT / "configs" / "tables"


class Tolerance(BaseModel):
    """|reproduced - published| in the table's units: <= ok reads OK, <= okish reads OKish, else FAIL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: float = Field(ge=0)
    okish: float = Field(ge=0)
    relative: bool = False  # a share of the published value (timings), not absolute points


class Conditions(BaseModel):
    """What decides a cell; unset fields come from the enclosing level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str | None = None
    first_stage: str | None = None
    depth: int | None = Field(default=None, ge=1)
    measure: str | None = None
    scale: float | None = None
    tolerance: Tolerance | None = None
    unavailable: str | None = None  # why the harness cannot run this cell at all
    # The column ids whose cells (in the same row) this cell averages. Never guessed from a label:
    # "BEIR (Avg)" may cover datasets the table does not show.
    aggregate: list[str] | None = Field(default=None, min_length=1)


class Column(Conditions):
    id: str
    label: str


class Row(Conditions):
    label: str
    model: str | None = None  # a model config, 'none' (the first stage), or unset: a reference row
    pipeline: PipelineSpec | None = None  # a chain of stages instead of one model
    published: dict[str, float | None] = {}
    cells: dict[str, Conditions] = {}


class TableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str
    source: str
    units: str = "nDCG@10 x 100"
    digits: int = 1
    defaults: Conditions = Conditions(depth=100, scale=100.0, tolerance=Tolerance(ok=0.5, okish=1.5))
    columns: list[Column] = Field(min_length=1)
    rows: list[Row] = Field(min_length=1)
    notes: list[str] = []

    @model_validator(mode="after")
    def _consistent(self) -> TableSpec:
        ids = [c.id for c in self.columns]
        if len(set(ids)) != len(ids):
            raise ValueError(f"column ids repeat: {ids}")
        for row in self.rows:
            for key in (*row.published, *row.cells):
                if key not in ids:
                    raise ValueError(f"row {row.label!r} names column {key!r}; the columns are {ids}")
            if row.model and row.pipeline:
                raise ValueError(f"row {row.label!r} has both model and pipeline")
        aggregates = {c.id for c in self.columns if c.aggregate}
        levels = [(f"column {c.id!r}", c.id, c.aggregate) for c in self.columns]
        levels += [(f"row {r.label!r}, column {k!r}", k, v.aggregate) for r in self.rows for k, v in r.cells.items()]
        for where, own, covered in levels:
            for key in covered or []:
                if key not in ids:
                    raise ValueError(f"{where} averages column {key!r}; the columns are {ids}")
                if key == own or key in aggregates:
                    raise ValueError(f"{where} averages column {key!r}, itself an aggregate")
        return self


@dataclass
class Cell:
    row: Row
    column: Column
    conditions: dict[str, Any]
    published: float | None
    reproduced: float | None = None
    status: Literal["OK", "OKish", "FAIL", "INCONSISTENT", "not run", "no reference"] = "not run"
    reason: str = ""
    bundle: str | None = None
    published_mean: float | None = None  # an aggregate: the mean of the published cells it covers
    consistent: bool | None = None  # an aggregate: published == published_mean within rounding

    @property
    def delta(self) -> float | None:
        if self.published is None or self.reproduced is None:
            return None
        return self.reproduced - self.published


@dataclass
class BuiltTable:
    spec: TableSpec
    cells: list[Cell]
    markdown: str = ""
    latex: str = ""
    paths: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells:
            out[c.status] = out.get(c.status, 0) + 1
        return out


def available_tables() -> list[str]:
    return sorted(p.stem for p in TABLES_DIR.glob("*.yaml"))


def load_table(name_or_path: str | Path) -> TableSpec:
    path = Path(name_or_path)
    if not path.suffix:
        path = TABLES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"no table {name_or_path!r}; known tables: {', '.join(available_tables())}")
    raw = read_yaml(path, "table config")  # refuses tags and keys given twice, like every config
    try:
        return TableSpec.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(path, exc) from exc


def _merge(*levels: Conditions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in levels:
        for key, value in level.model_dump(exclude_none=True).items():
            out[key] = value
    return out


def _pipeline(row: Row) -> PipelineSpec | None:
    if row.pipeline is not None:
        return row.pipeline
    if row.model is None:
        return None
    return PipelineSpec.single(row.model)


def cells_of(spec: TableSpec) -> list[Cell]:
    out = []
    for row in spec.rows:
        for col in spec.columns:
            cond = _merge(spec.defaults, col, row, row.cells.get(col.id, Conditions()))
            out.append(Cell(row, col, cond, row.published.get(col.id)))
    return out


def _gpu_available() -> bool:
    """HARNESS_ASSUME_GPU=1 or 0 decides without asking torch (tests, and machines where CUDA is
    visible but not to be used); otherwise torch says."""
    assumed = os.environ.get("HARNESS_ASSUME_GPU")
    if assumed in ("0", "1"):
        return assumed == "1"
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _why_not_runnable(pipeline: PipelineSpec, *, needs_gpu: bool = True) -> str | None:
    """No GPU for a model that needs one, weights not on this machine: the reasons, or None."""
    from harness.registry import load_model_config
    from harness.weights import missing_locally

    reasons = []
    for stage in pipeline.stages:
        try:
            config = load_model_config(stage.model, stage.weights)
        except HarnessError as exc:
            return f"no usable model config {stage.model!r}: {exc}"
        if needs_gpu and config.gpu_memory_gb and not _gpu_available():
            reasons.append(f"no GPU ({config.name} needs one with ~{config.gpu_memory_gb:g} GB)")
        absent = missing_locally(config.weights)
        if absent:
            reasons.append(f"{config.name}: {absent}")
    return "; ".join(reasons) or None


def _value(bundle_path: Path, measure: str) -> tuple[float | None, str]:
    from harness.bundle import read_bundle

    bundle = read_bundle(bundle_path)
    if measure in costs.FROM_EXECUTION:
        return costs.from_execution(bundle, measure)
    value = bundle.aggregate(measure)
    if value is None:
        return None, f"the bundle has no {measure}; re-run with --measures including it"
    return value, ""


def fill(cell: Cell, results: Path, run_missing: bool, also: list[str] | None = None) -> None:
    """Find (or compute) a cell's reproduced value, or the reason it has none. `also`: the other
    measures the table asks of the same bundle, computed with it so that one run serves them all."""
    from harness.pipeline import run_pipeline
    from harness.tasks import load_task

    cond = cell.conditions
    if cond.get("unavailable"):
        cell.reason = cond["unavailable"]
        return
    pipeline = _pipeline(cell.row)
    if pipeline is None:
        cell.reason = "reference row: the harness has no config for this model"
        return
    if cond.get("measure") in costs.FROM_WEIGHTS:
        _fill_from_weights(cell, pipeline)
        return
    if "task" not in cond or "measure" not in cond:
        raise ConfigError(f"table cell ({cell.row.label}, {cell.column.label}) names no task or measure")
    try:
        spec = load_task(cond["task"])
    except HarnessError as exc:
        cell.reason = f"task {cond['task']!r} is not available: {str(exc).splitlines()[0]}"
        return
    first_stage = cond.get("first_stage")
    if first_stage and first_stage not in spec.first_stages and not Path(first_stage).is_file():
        cell.reason = (f"{spec.name} has no first stage {first_stage!r} in the harness "
                       f"(it has: {', '.join(spec.first_stages)})")
        return
    depth = cond.get("depth", 100)
    # Costs from the execution record are read only from a bundle whose outputs were all computed:
    # re-run one that used the cache, with a fresh cache.
    fresh_needed = cond["measure"] in costs.FROM_EXECUTION
    try:
        path = find_bundle(results, cond["task"], first_stage, depth, pipeline)
    except StaleBundleError as exc:  # of other content than this row's: never read as its value
        cell.reason, cell.bundle = exc.reason, str(exc.folder)
        return
    value, why = _value(path, cond["measure"]) if path else (None, "no result bundle yet (--no-run)")
    if path is None or (value is None and _rerun_helps(path, cond["measure"])):
        blocker = _why_not_runnable(pipeline)
        if blocker:
            cell.reason = blocker
            return
        if not run_missing:
            cell.reason = why
            return
        quality = [m for m in [cond["measure"], *(also or [])] if not costs.is_cost(m)] or ["nDCG@10"]
        measures = list(dict.fromkeys(m for q in quality for m in _measures(cond["task"], q)))
        try:
            with tempfile.TemporaryDirectory() as fresh:
                cache = Path(fresh) / "cache.sqlite" if fresh_needed else None
                outcome = run_pipeline(pipeline, cond["task"], first_stage=first_stage, depth=depth,
                                       results=results, measures=measures, cache_path=cache)
        except DataNotFoundError as exc:
            cell.reason = _absent_data(str(exc))
            return
        except HarnessError as exc:
            cell.reason = f"failed: {str(exc).splitlines()[0]}"
            return
        assert outcome.bundle is not None
        path = outcome.bundle
        value, why = _value(path, cond["measure"])
    cell.bundle = str(path)
    if value is None:
        cell.reason = why
        return
    cell.reproduced = value * cond.get("scale", 1.0)
    _judge(cell)


def _rerun_helps(path: Path, measure: str) -> bool:
    """A bundle lacks a quality measure (computed with another table), or its costs are unusable
    because outputs came from the cache; a missing GPU peak would stay missing."""
    from harness.bundle import read_bundle

    if not costs.is_cost(measure):
        return True
    return measure in costs.FROM_EXECUTION and costs.used_cache(read_bundle(path))


def _fill_from_weights(cell: Cell, pipeline: PipelineSpec) -> None:
    """A size or parameter count: the weights of the row's models on this machine (no GPU, no run)."""
    from harness.registry import load_model_config
    from harness.weights import resolve_weights

    blocker = _why_not_runnable(pipeline, needs_gpu=False)
    if blocker:
        cell.reason = blocker
        return
    if not pipeline.stages:
        cell.reason = "the first stage alone has no weights"
        return
    folders = []
    for stage in pipeline.stages:
        config = load_model_config(stage.model, stage.weights)
        folders.append(Path(resolve_weights(config.weights, config.name).local_dir))
    value, why = costs.from_weights(list(dict.fromkeys(folders)), cell.conditions["measure"])
    if value is None:
        cell.reason = why
        return
    cell.bundle = ", ".join(map(str, dict.fromkeys(folders)))
    cell.reproduced = value * cell.conditions.get("scale", 1.0)
    _judge(cell)


def _absent_data(message: str) -> str:
    path = re.search(r"(\S+) is not in the mirror", message)
    url = re.search(r"Download (\S+?)[,.]? ", message)
    if not path:
        return f"data not present: {message.splitlines()[0]}"
    return f"data not present: {path.group(1)}" + (f" (from {url.group(1)})" if url else "")


def _measures(task: str, measure: str) -> list[str]:
    """The task's measures plus the cell's, so one bundle serves every column of a row."""
    from harness.tasks import load_task

    names = list(load_task(task).measures)
    if measure not in names:
        names.append(measure)
    return names


def _judge(cell: Cell) -> None:
    if cell.published is None or cell.delta is None:
        cell.status = "no reference"
        return
    tol: dict[str, Any] = cell.conditions.get("tolerance") or {"ok": 0.5, "okish": 1.5}
    size = abs(cell.delta) / abs(cell.published) if tol.get("relative") and cell.published else abs(cell.delta)
    cell.status = "OK" if size <= tol["ok"] + 1e-9 else "OKish" if size <= tol["okish"] + 1e-9 else "FAIL"


def _decimals(value: float) -> int:
    """Decimals of a published value as YAML gave it (74.50 reads 74.5: trailing zeros are lost)."""
    text = f"{value!r}"
    return 0 if "e" in text or "." not in text else len(text.split(".")[1].rstrip("0"))


def check_aggregate(cell: Cell, row: Mapping[str, Cell]) -> None:
    """An aggregate cell: the mean of the row's cells it names (`row`: the row's cells by column id).

    Its published value is checked against the mean of their published values, allowing for
    rounding: each value is taken to be rounded to the finest precision the row is written in
    (10^-d), so the two may differ by half a unit from the cells' rounding and half from the
    aggregate's, 10^-d in all. Beyond that the cell reads INCONSISTENT, whatever was reproduced.
    """
    covered = [row[key] for key in cell.conditions["aggregate"]]
    published = [c.published for c in covered]
    if cell.published is not None and all(p is not None for p in published):
        values = [p for p in published if p is not None]
        cell.published_mean = sum(values) / len(values)
        allowance = 10.0 ** -max(_decimals(v) for v in [cell.published, *values])
        cell.consistent = abs(cell.published - cell.published_mean) <= allowance + 1e-9
    missing = [c.column.label for c in covered if c.reproduced is None]
    if cell.conditions.get("unavailable"):
        cell.reason = cell.conditions["unavailable"]
    elif missing:
        cell.reason = f"needs every cell it averages; not reproduced: {', '.join(missing)}"
    else:
        cell.reproduced = sum(c.reproduced for c in covered if c.reproduced is not None) / len(covered)
        _judge(cell)
    if cell.consistent is False:
        cell.status = "INCONSISTENT"


def _bundle_key(cell: Cell) -> tuple[Any, ...]:
    pipeline = _pipeline(cell.row)
    cond = cell.conditions
    return (cond.get("task"), cond.get("first_stage"), cond.get("depth", 100), pipeline.name if pipeline else None)


def build_table(spec: TableSpec, *, results: Path = Path("results"), run_missing: bool = True,
                out: Path | None = None) -> BuiltTable:
    cells = cells_of(spec)
    # Every measure the table asks of one bundle (a row's nDCG@10, nDCG@20 and MAP): a run made for
    # one cell computes them all.
    wanted: dict[tuple[Any, ...], list[str]] = {}
    for cell in cells:
        if cell.conditions.get("measure") and not cell.conditions.get("aggregate"):
            wanted.setdefault(_bundle_key(cell), []).append(cell.conditions["measure"])
    for cell in cells:
        if not cell.conditions.get("aggregate"):
            fill(cell, results, run_missing, wanted.get(_bundle_key(cell)))
    n = len(spec.columns)
    for r in range(len(spec.rows)):
        row = {c.column.id: c for c in cells[r * n : (r + 1) * n]}
        for cell in row.values():
            if cell.conditions.get("aggregate"):
                check_aggregate(cell, row)
    built = BuiltTable(spec, cells)
    built.markdown = to_markdown(built)
    built.latex = to_latex(built)
    folder = out or results / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    name = safe_name(spec.name)
    built.paths = [folder / f"{name}.md", folder / f"{name}.tex", folder / f"{name}.json"]
    built.paths[0].write_text(built.markdown, encoding="utf-8")
    built.paths[1].write_text(built.latex, encoding="utf-8")
    built.paths[2].write_text(json.dumps(as_json(built), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return built


# -- rendering ------------------------------------------------------------------------------------


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _signed(x: float, digits: int) -> str:
    return f"{round(x, digits) + 0.0:+.{digits}f}"  # + 0.0: no "-0.00"


def _cell_text(cell: Cell, digits: int, footnote: int | None) -> str:
    pub = _num(cell.published, digits)
    if cell.status == "INCONSISTENT":
        pub += f" (mean of its cells {_num(cell.published_mean, digits)})"
    if cell.reproduced is None:
        return f"{pub} / not run [{footnote}]" + (" INCONSISTENT" if cell.status == "INCONSISTENT" else "")
    rep = _num(cell.reproduced, digits)
    if cell.status == "no reference":
        return f"- / {rep}"
    delta = "-" if cell.delta is None else _signed(cell.delta, digits)
    return f"{pub} / {rep} ({delta}) {cell.status}"


def _footnotes(built: BuiltTable) -> tuple[dict[int, int], list[str]]:
    """Footnote numbers for the cells without a reproduced value, one per distinct reason."""
    reasons: list[str] = []
    of_cell: dict[int, int] = {}
    for i, cell in enumerate(built.cells):
        if cell.reproduced is not None:
            continue
        if cell.reason not in reasons:
            reasons.append(cell.reason)
        of_cell[i] = reasons.index(cell.reason) + 1
    return of_cell, reasons


def _aggregate_lines(built: BuiltTable) -> list[str]:
    """For each aggregate cell: which cells it averages, and whether its published value is their mean."""
    spec, out = built.spec, []
    labels = {c.id: c.label for c in spec.columns}
    for cell in built.cells:
        if not cell.conditions.get("aggregate"):
            continue
        line = (f"{cell.row.label}, {cell.column.label}: the mean of "
                f"{', '.join(labels[k] for k in cell.conditions['aggregate'])}")
        if cell.consistent is None:
            line += "; not checked (no published aggregate, or a cell it averages has no published value)"
        else:
            mean, pub = _num(cell.published_mean, spec.digits + 2), _num(cell.published, spec.digits)
            line += (f"; published {pub}, the mean of the published cells {mean}" if cell.consistent else
                     f"; INCONSISTENT: the published {pub} is not the mean of the published cells it averages "
                     f"({mean}), beyond rounding")
        out.append(line)
    return out


def _summary(built: BuiltTable) -> str:
    counts = built.counts()
    order = ["OK", "OKish", "FAIL", "INCONSISTENT", "no reference", "not run"]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


def to_markdown(built: BuiltTable) -> str:
    spec = built.spec
    of_cell, reasons = _footnotes(built)
    lines = [f"## {spec.title}", "", f"Source: {spec.source}. Values: {spec.units}; each cell reads "
             "published / reproduced (delta) status.", ""]
    lines.append("| " + " | ".join(["", *(c.label for c in spec.columns)]) + " |")
    lines.append("|" + "---|" * (len(spec.columns) + 1))
    n = len(spec.columns)
    for r, row in enumerate(spec.rows):
        texts = [_cell_text(built.cells[r * n + c], spec.digits, of_cell.get(r * n + c)) for c in range(n)]
        lines.append("| " + " | ".join([row.label, *texts]) + " |")
    lines += ["", f"Summary: {_summary(built)}.", ""]
    if reasons:
        lines += ["Not run:", *(f"[{i}] {reason}" for i, reason in enumerate(reasons, start=1)), ""]
    for note in spec.notes:
        lines.append(f"- {note}")
    if spec.notes:
        lines.append("")
    aggregates = _aggregate_lines(built)
    if aggregates:
        lines += ["Aggregates:", *(f"- {line}" for line in aggregates), ""]
    used = list(dict.fromkeys(c.conditions["measure"] for c in built.cells
                              if costs.is_cost(c.conditions.get("measure", "")) and not c.conditions.get("aggregate")))
    if used:
        lines += ["Cost cells measure:", *(f"- `{m}`: {costs.COST_MEASURES[m]}" for m in used), ""]
    lines += ["### Cells", "", "| row | column | model | task | first stage | depth | measure | tolerance (OK / OKish) "
              "| published | reproduced | delta | status | bundle or reason |", "|" + "---|" * 13]
    for cell in built.cells:
        cond = cell.conditions
        pipeline = _pipeline(cell.row)
        tol = cond.get("tolerance") or {}
        tol_text = f"{tol.get('ok', '-')} / {tol.get('okish', '-')}{' rel.' if tol.get('relative') else ''}"
        lines.append("| " + " | ".join([
            cell.row.label, cell.column.label, pipeline.name if pipeline else "-", cond.get("task", "-"),
            cond.get("first_stage") or "(task default)", str(cond.get("depth", "-")), cond.get("measure", "-"),
            tol_text, _num(cell.published, spec.digits), _num(cell.reproduced, spec.digits),
            "-" if cell.delta is None else _signed(cell.delta, spec.digits), cell.status,
            f"`{cell.bundle}`" if cell.bundle else cell.reason]) + " |")
    return "\n".join(lines) + "\n"


_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text).replace("↳", r"$\hookrightarrow$")


def to_latex(built: BuiltTable) -> str:
    spec = built.spec
    of_cell, reasons = _footnotes(built)
    n = len(spec.columns)
    lines = [r"% generated by `python -m harness tables " + spec.name + "`; needs \\usepackage{booktabs}",
             r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "c" * n + "}", r"\toprule",
             " & ".join(["", *(tex_escape(c.label) for c in spec.columns)]) + r" \\", r"\midrule"]
    for r, row in enumerate(spec.rows):
        texts = []
        for c in range(n):
            cell = built.cells[r * n + c]
            text = _cell_text(cell, spec.digits, of_cell.get(r * n + c))
            texts.append(tex_escape(text).replace(" / ", "/"))
        lines.append(" & ".join([tex_escape(row.label), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = (f"{spec.title}. Published/reproduced (delta) status; {spec.units}. Source: {spec.source}. "
               f"{_summary(built)}.")
    if reasons:
        caption += " Not run: " + "; ".join(f"[{i}] {r}" for i, r in enumerate(reasons, start=1)) + "."
    flagged = [line for line in _aggregate_lines(built) if "INCONSISTENT" in line]
    if flagged:
        caption += " " + "; ".join(flagged) + "."
    lines += [r"\caption{" + tex_escape(caption) + "}", r"\label{tab:" + safe_name(spec.name) + "}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def as_json(built: BuiltTable) -> dict[str, Any]:
    return {"name": built.spec.name, "title": built.spec.title, "source": built.spec.source,
            "summary": built.counts(),
            "cells": [{"row": c.row.label, "column": c.column.id, "conditions": c.conditions,
                       "model": (p.name if (p := _pipeline(c.row)) else None), "published": c.published,
                       "reproduced": c.reproduced, "delta": c.delta, "status": c.status, "reason": c.reason,
                       "bundle": c.bundle, "measured_as": costs.COST_MEASURES.get(c.conditions.get("measure", "")),
                       "aggregate": _aggregate_json(c)} for c in built.cells]}


def _aggregate_json(cell: Cell) -> dict[str, Any] | None:
    if not cell.conditions.get("aggregate"):
        return None
    return {"of": cell.conditions["aggregate"], "published_mean": cell.published_mean, "consistent": cell.consistent}
