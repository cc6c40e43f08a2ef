"""What the site shows, found under a results folder: bundles, published tables, comparisons.

Anything that looks like one of them and cannot be read is kept with the reason, never dropped:
a bundle folder without metrics.json (unfinished, or copied in part), of another schema version,
with a damaged file; a table or comparison file that is not valid JSON or lacks a key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.bundle import Bundle, read_bundle
from harness.errors import HarnessError, InputError

BUNDLE_FILES = ("metrics.json", "run.trec", "first_stage.trec", "per_query.tsv", "judgments.jsonl", "execution.json")
NOT_BUNDLES = ("tables", "compare")  # top-level folders of a results folder that hold other outputs
MARKER = ".harness-site"  # in a site folder: the report may replace it, and looks for no bundle in it
# What reading a damaged or unreadable file raises once `reading` has named the file.
READ_ERRORS = (HarnessError, OSError)


def problem_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """What a damaged file raises while it is parsed (bad JSON, a missing key, a value of the wrong
    type) as an InputError naming it. Keep the block to the parsing: a bug elsewhere must still raise."""
    try:
        yield
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(path, f"cannot be read: {type(exc).__name__}: {exc}") from exc


@dataclass
class FoundBundle:
    path: Path
    rel: str  # the folder relative to the results folder, with '/': the bundle's id in the site
    bundle: Bundle | None
    problem: str = ""


def find_bundles(results: Path, skip: Path | None = None) -> list[FoundBundle]:
    """Every folder holding a bundle file, read through its typed records, sorted by path."""
    found = []
    skip = skip.resolve() if skip else None
    for folder, dirs, files in os.walk(results):
        here = Path(folder)
        if MARKER in files:  # a site written here before
            dirs[:] = []
            continue
        top = here == results
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and d in NOT_BUNDLES)
                         and (skip is None or (here / d).resolve() != skip))
        if not any(f in files for f in BUNDLE_FILES):
            continue
        dirs[:] = []  # bundles do not nest
        rel = here.relative_to(results).as_posix()
        try:
            found.append(FoundBundle(here, rel, read_bundle(here)))
        except READ_ERRORS as exc:
            found.append(FoundBundle(here, rel, None, problem_text(exc)))
    return sorted(found, key=lambda f: f.rel)


@dataclass
class TableCell:
    status: str
    published: float | None
    reproduced: float | None
    delta: float | None
    reason: str
    bundle: str | None
    measure: str
    conditions: dict[str, Any]
    digits: int = 1  # the table's, or as many as the published value is written with

    @property
    def values(self) -> str:
        """published / reproduced (delta), the published value as written, the others to its decimals."""
        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.{self.digits}f}"

        text = f"{num(self.published)} / {num(self.reproduced)}"
        if self.delta is not None:
            text += f" ({round(self.delta, self.digits) + 0.0:+.{self.digits}f})"
        return text


def _decimals(value: float | None) -> int:
    text = repr(value)
    return 0 if value is None or "e" in text or "." not in text else len(text.split(".")[1].rstrip("0"))


@dataclass
class TableView:
    name: str
    path: Path
    title: str = ""
    source: str = ""
    summary: dict[str, int] = field(default_factory=dict)
    columns: list[tuple[str, str]] = field(default_factory=list)  # (id, label)
    rows: list[tuple[str, dict[str, TableCell]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digits: int = 1
    problem: str = ""


def read_tables(results: Path) -> list[TableView]:
    folder = results / "tables"
    views = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        view = TableView(path.stem, path)
        try:
            with reading(path):
                _fill_table(view, json.loads(path.read_text(encoding="utf-8")))
        except READ_ERRORS as exc:
            view.problem = problem_text(exc)
        views.append(view)
    return views


def _fill_table(view: TableView, raw: dict[str, Any]) -> None:
    view.name, view.title, view.source = raw["name"], raw["title"], raw["source"]
    view.summary = dict(raw["summary"])
    labels: dict[str, str] = {}
    try:  # the spec gives the column labels, order and notes; the JSON alone gives ids
        from harness.tables import load_table

        if "." in view.path.stem:  # load_table reads a name with a suffix as a path
            raise HarnessError(f"{view.path.stem!r} is not a table name")
        spec = load_table(view.path.stem)
        labels = {c.id: c.label for c in spec.columns}
        view.notes, view.digits = list(spec.notes), spec.digits
    except HarnessError as exc:  # a table whose config is gone still shows, with its column ids as labels
        view.notes = [f"column labels and notes unavailable ({exc}): columns are named by their ids"]
    rows: dict[str, dict[str, TableCell]] = {}
    order: list[str] = []
    for c in raw["cells"]:
        for key in ("published", "reproduced", "delta"):
            if c[key] is not None and not isinstance(c[key], int | float):
                raise TypeError(f"cells[].{key}: expected a number or null, found {c[key]!r}")
        if c["column"] not in order:
            order.append(c["column"])
        rows.setdefault(c["row"], {})[c["column"]] = TableCell(
            c["status"], c["published"], c["reproduced"], c["delta"], c["reason"], c["bundle"],
            c["conditions"].get("measure", ""), c["conditions"], max(view.digits, _decimals(c["published"])))
    ids = [i for i in labels if i in order] + [i for i in order if i not in labels]
    view.columns = [(i, labels.get(i, i)) for i in ids]
    view.rows = list(rows.items())


@dataclass
class CompareView:
    name: str
    path: Path
    raw: dict[str, Any] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    report: str = ""
    problem: str = ""


def read_compares(results: Path) -> list[CompareView]:
    folder = results / "compare"
    views = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        view = CompareView(sub.name, sub)
        path = sub / "compare.json"
        try:
            with reading(path):
                view.raw = json.loads(path.read_text(encoding="utf-8"))
                _check_compare(view.raw)
        except READ_ERRORS as exc:
            view.problem = problem_text(exc)
        view.plots = [p for p in (sub / "delta.png", sub / "scatter.png") if p.is_file()]
        report = sub / "report.md"
        view.report = report.read_text(encoding="utf-8", errors="replace") if report.is_file() else ""
        views.append(view)
    return views


def _check_compare(raw: Any) -> None:
    """The keys the comparison page reads, with their types: a damaged compare.json is listed, never half shown."""
    if not isinstance(raw, dict):
        raise TypeError("expected a JSON object")
    for key in ("a", "b", "tasks", "bundles", "margin", "alpha"):
        if key not in raw:
            raise KeyError(key)
    for t in raw["tasks"]:
        for key in ("task", "measure", "n", "mean_a", "mean_b", "delta", "ci_low", "ci_high", "p_t", "p_t_holm",
                    "p_randomization", "p_randomization_holm", "p_tost", "kendall_tau_mean", "per_unit"):
            if key not in t:
                raise KeyError(f"tasks[].{key}")
        for unit, pair in t["per_unit"].items():
            if len(pair) != 2 or not all(isinstance(x, int | float) for x in pair):
                raise TypeError(f"tasks[].per_unit[{unit!r}]: expected [A, B] numbers, found {pair!r}")
